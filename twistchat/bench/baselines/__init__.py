"""
Baselines for twistchat-bench: the relays a user might otherwise pick,
measured by the same load processes in the same run. They ship with the
package, so that an installed twistchat-bench can run them, but neither the
twistchat server nor its client imports them.

  - L{bare_relay}: a bare Twisted C{Int32StringReceiver} relay over TLS, with
    no handshake and no sealing (the framework floor);
  - L{threaded_relay}: a thread per client with plain sockets and C{ssl}, which
    decrypts each message and re-encrypts it for every recipient with
    pycryptodome AES-GCM (the design twistchat replaces).

Each listens on 127.0.0.1 (port 0 by default), prints C{listening on port N}
and serves until it is terminated. Both use the same ECDSA P-256 certificate
and TLS settings as twistchat, so that only the relay differs.
"""
