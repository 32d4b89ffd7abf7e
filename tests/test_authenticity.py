"""
Authenticity of who speaks, against a hostile server: the server cannot relabel
a member (issue: "the server can relabel senders"), and the TLS channel the
login is bound to is TLS 1.3 on both sides, never 1.2 (whose exporter a man in
the middle can make both legs share).
"""

from __future__ import annotations

import socket
import ssl as stdlib_ssl
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import protocol, reactor, ssl
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.threads import deferToThread

from twistchat import errors, wire
from twistchat.client import TrustOnFirstUse, connect
from twistchat.crypto import spake2plus

from .conftest import PASSWORD
from .test_client_hostile import Scripted, login_error
from .test_integration import is_message, join


def welcome_as(name: str, room: str) -> Any:
    """
    A confirm step that checks the client's proof, as an honest server would,
    then welcomes it under C{name} in C{room}.
    """

    def step(server: Scripted, message: wire.Message | None) -> None:
        assert server.spake is not None and message is not None
        server.spake.finish(message["mac"])
        server.send("welcome", name=name, room=room, addr="127.0.0.1:1", members=[])

    return step


@pytest.mark.parametrize("name, room", [("bob", "main"), ("alice", "other"), ("Alice", "main")])
@pytest_twisted.ensureDeferred
async def test_welcome_under_another_name_or_room_is_refused(
    certificate: Any, verifier: Any, known_hosts: Path, name: str, room: str
) -> None:
    """
    alice proves her name and room in the password handshake; a server that
    then welcomes her as someone else (even only differing in case) would have
    her seal under that name, and every member would read her words as
    theirs. The login fails instead, as a protocol error.
    """
    error = await login_error(certificate, verifier, known_hosts,
                              confirm=welcome_as(name, room))
    assert isinstance(error, errors.ProtocolError)
    assert f"welcomed us as {name!r} in room {room!r}" in error.message
    assert "not as 'alice' in room 'main'" in error.message


@pytest_twisted.ensureDeferred
async def test_session_seals_under_the_proved_name(server: Any, known_hosts: Path) -> None:
    """
    With an honest server, the session's name and room are the ones proved,
    and what it sends is relayed from that name.
    """
    alice, _ = await join(server, "alice", known_hosts)
    bob, bob_events = await join(server, "bob", known_hosts)
    assert (alice.name, alice.room) == ("alice", "main")
    alice.send("signed, alice")
    got = await bob_events.wait_for(is_message("signed, alice"), timeout=5)
    assert got.sender == "alice"
    await alice.leave()
    await bob.leave()


def test_context_binds_version_exporter_and_certificate() -> None:
    binding = bytes(range(64))
    assert spake2plus.context(binding) == (
        b"twistchat/%d SPAKE2+-P256-SHA256-HKDF-SHA256-HMAC-SHA256\x00" % wire.PROTOCOL_VERSION
        + binding
    )


# --- TLS 1.3 only -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_server_refuses_a_tls12_client(server: Any) -> None:
    """
    A client that offers at most TLS 1.2 gets no TLS session from the server.
    """

    def handshake(highest: stdlib_ssl.TLSVersion) -> str:
        context = stdlib_ssl.SSLContext(stdlib_ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = stdlib_ssl.CERT_NONE
        context.maximum_version = highest
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            try:
                with context.wrap_socket(raw) as tls:
                    return f"completed {tls.version()}"
            except stdlib_ssl.SSLError as e:
                return f"refused: {e.reason}"

    outcome = await deferToThread(handshake, stdlib_ssl.TLSVersion.TLSv1_2)
    assert outcome.startswith("refused"), outcome
    # The same client allowed TLS 1.3 gets it.
    assert await deferToThread(handshake, stdlib_ssl.TLSVersion.TLSv1_3) == "completed TLSv1.3"


@pytest_twisted.ensureDeferred
async def test_client_refuses_a_tls12_server(certificate: Any, known_hosts: Path) -> None:
    """
    A server that speaks at most TLS 1.2 is refused by the client before any
    password handshake, with a clear TLS error, and nothing is pinned.
    """
    options = ssl.CertificateOptions(
        privateKey=certificate.privateKey.original.to_cryptography_key(),
        certificate=certificate.original.to_cryptography(),
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        lowerMaximumSecurityTo=ssl.TLSVersion.TLSv1_2,
    )
    heard: list[bytes] = []

    class Listen(protocol.Protocol):
        def dataReceived(self, data: bytes) -> None:
            heard.append(data)

    port = await SSL4ServerEndpoint(reactor, 0, options, interface="127.0.0.1").listen(
        protocol.Factory.forProtocol(Listen))
    try:
        with pytest.raises(errors.TwistchatError) as info:
            await connect(reactor, "127.0.0.1", port.getHost().port, "alice", PASSWORD,
                          trust=TrustOnFirstUse(known_hosts), timeout=10)
    finally:
        await port.stopListening()
    assert info.value.code == "tls", info.value
    assert "TLS failed" in info.value.message
    assert heard == []
    assert not known_hosts.exists()
