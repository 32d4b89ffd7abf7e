"""
twistchat: an end-to-end encrypted group chat on Twisted.

A relay server (``twistd -n socketchat``) admits members who prove knowledge of the
room password with SPAKE2+ (RFC 9383) bound to the TLS connection, then relays
messages that members seal with AES-256-GCM under a key the server never learns.
"""

__version__ = "0.1.0"
