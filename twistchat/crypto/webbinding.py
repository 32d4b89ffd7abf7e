"""
The channel binding a browser puts into the SPAKE2+ context.

A page's scripts cannot read a TLS exporter value nor see the server's certificate,
so a browser cannot bind what the terminal client binds
(L{twistchat.crypto.spake2plus.context} with the exporter and the certificate hash). The
proposal (an open question, docs/browser.md) binds instead::

    "twistchat/2 web binding\\0"           (24 bytes)
    || nonce                               (32 bytes, sent by the server on this
                                            WebSocket connection)
    || SHA-256(server certificate, DER)    (32 bytes, as the server states it)
    || len(origin) (2, big-endian) || origin (UTF-8, the page's origin)

The result is passed to L{twistchat.crypto.spake2plus.context}. It is longer than the
terminal client's 64-byte binding and starts with its own label, so a browser's
transcript can never equal a terminal client's. The nonce and the certificate hash come
from the server, so they do not stop a man in the middle who relays them; only the
origin is something the page knows by itself (docs/browser.md says what this weakens).

The page's copy of this function is C{webBinding} in web/src/spake2plus.js; the tests
check both give the same bytes.
"""

from __future__ import annotations

from twistchat.crypto.seal import encode_field

__all__ = ["CERT_HASH_BYTES", "NONCE_BYTES", "WEB_BINDING_LABEL", "web_binding"]

#: The label that starts a browser's channel binding.
WEB_BINDING_LABEL = b"twistchat/2 web binding\x00"
#: Bytes of the server's per-connection nonce.
NONCE_BYTES = 32
#: Bytes of the certificate hash (SHA-256).
CERT_HASH_BYTES = 32


def web_binding(origin: str, nonce: bytes, cert_sha256: bytes) -> bytes:
    """
    The browser's channel binding (module docstring).

    @raise ValueError: the nonce or the certificate hash is not 32 bytes, or the
        origin is longer than 65535 bytes of UTF-8.
    @raise TypeError: the origin is not a string.
    """
    if not isinstance(nonce, (bytes, bytearray)) or len(nonce) != NONCE_BYTES:
        raise ValueError(f"nonce must be {NONCE_BYTES} bytes")
    if not isinstance(cert_sha256, (bytes, bytearray)) or len(cert_sha256) != CERT_HASH_BYTES:
        raise ValueError(f"certificate hash must be {CERT_HASH_BYTES} bytes")
    return WEB_BINDING_LABEL + bytes(nonce) + bytes(cert_sha256) + encode_field("origin", origin)
