"""
The TLS channel binding both sides put into the SPAKE2+ context: the TLS
keying-material exporter (RFC 5705 / RFC 8446 section 7.5). Shared by the client
and the server, so neither imports the other's package for it.
"""

from __future__ import annotations

from twistchat.crypto.spake2plus import EXPORTER_LABEL, EXPORTER_LENGTH


def tls_exporter(transport: object) -> bytes:
    """
    The exporter value for this connection, bound into the SPAKE2+ context: a
    man in the middle who terminates TLS sees two different values on its two
    legs.
    """
    connection = transport.getHandle()  # type: ignore[attr-defined]
    return bytes(connection.export_keying_material(EXPORTER_LABEL, EXPORTER_LENGTH))


__all__ = ["tls_exporter"]
