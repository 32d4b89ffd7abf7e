"""
The TLS channel binding both sides put into the SPAKE2+ context (see
L{twistchat.crypto.spake2plus.context}): the TLS keying-material exporter
(RFC 5705 / RFC 8446 section 7.5) followed by the SHA-256 of the server's
certificate (DER). Shared by the client and the server, so neither imports the
other's package for it.

A man in the middle who terminates TLS sees two different exporter values on its
two legs, and presents its own certificate to the client: either way the two
sides compute different contexts, and the login fails without revealing anything
about the password. (TLS 1.3, which both sides insist on, already puts the
certificate into the handshake transcript the exporter comes from; hashing it in
as well keeps the binding explicit and independent of that.)
"""

from __future__ import annotations

import hashlib
import weakref
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from twistchat.crypto.spake2plus import EXPORTER_LABEL, EXPORTER_LENGTH


def tls_exporter(transport: Any) -> bytes:
    """
    The exporter value for this connection (label L{EXPORTER_LABEL},
    L{EXPORTER_LENGTH} bytes).
    """
    connection = transport.getHandle()
    return bytes(connection.export_keying_material(EXPORTER_LABEL, EXPORTER_LENGTH))


def _digest(certificate: Any) -> bytes:
    if certificate is None:
        raise ValueError("the TLS connection has no server certificate")
    return hashlib.sha256(certificate.public_bytes(Encoding.DER)).digest()


#: The SHA-256 of the certificate each server TLS context presents.
_served: weakref.WeakKeyDictionary[Any, bytes] = weakref.WeakKeyDictionary()


def server_binding(transport: Any) -> bytes:
    """
    The server's channel binding: the exporter, then the SHA-256 of the
    certificate it presented.
    """
    connection = transport.getHandle()
    # One digest per TLS context (the certificate a context presents does not
    # change), not one per login: about 11 us of each login's server CPU.
    context = connection.get_context()
    digest = _served.get(context)
    if digest is None:
        digest = _served[context] = _digest(connection.get_certificate(as_cryptography=True))
    return tls_exporter(transport) + digest


def client_binding(transport: Any) -> bytes:
    """
    The client's channel binding: the exporter, then the SHA-256 of the
    certificate the server presented.
    """
    connection = transport.getHandle()
    return tls_exporter(transport) + _digest(
        connection.get_peer_certificate(as_cryptography=True)
    )


__all__ = ["client_binding", "server_binding", "tls_exporter"]
