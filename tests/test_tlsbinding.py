"""
The server's channel binding over real TLS 1.3 connections (pyOpenSSL in
memory): the exporter, then the SHA-256 of the certificate the connection's
context presents, the digest worked out once per context and still right for
each connection and each context.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL
from twistchat.crypto.spake2plus import EXPORTER_LABEL, EXPORTER_LENGTH
from twistchat.server.tls import load_certificate, server_options
from twistchat.tlsbinding import client_binding, server_binding


class Handle:
    """
    The one thing the binding asks of a Twisted TLS transport.
    """

    def __init__(self, connection: SSL.Connection) -> None:
        self.connection = connection

    def getHandle(self) -> SSL.Connection:
        return self.connection


def handshake(server_context: SSL.Context) -> tuple[SSL.Connection, SSL.Connection]:
    server = SSL.Connection(server_context, None)
    server.set_accept_state()
    client_context = SSL.Context(SSL.TLS_METHOD)
    client_context.set_min_proto_version(SSL.TLS1_3_VERSION)
    client = SSL.Connection(client_context, None)
    client.set_connect_state()
    for _ in range(10):
        for side, other in ((client, server), (server, client)):
            try:
                side.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                other.bio_write(side.bio_read(65536))
            except SSL.WantReadError:
                pass
    assert server.get_protocol_version_name() == "TLSv1.3"
    return server, client


def test_binding_per_connection_and_per_context(tmp_path: Path) -> None:
    contexts = [server_options(load_certificate(tmp_path / d)).getContext() for d in "ab"]
    for context in contexts:
        der = context_certificate(context)
        for _ in range(2):
            server, client = handshake(context)
            exporter = server.export_keying_material(EXPORTER_LABEL, EXPORTER_LENGTH)
            binding = server_binding(Handle(server))
            assert binding == exporter + hashlib.sha256(der).digest()
            assert binding == client_binding(Handle(client))
    assert server_binding(Handle(handshake(contexts[0])[0]))[32:] != server_binding(
        Handle(handshake(contexts[1])[0])
    )[32:]


def context_certificate(context: SSL.Context) -> bytes:
    certificate = SSL.Connection(context, None).get_certificate(as_cryptography=True)
    assert certificate is not None
    return certificate.public_bytes(Encoding.DER)
