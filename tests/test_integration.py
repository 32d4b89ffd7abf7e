"""
Several clients and a relay over real loopback TLS, through the client library.
"""

from __future__ import annotations

import socket
import ssl as stdlib_ssl
import struct
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twistchat import errors, wire
from twistchat.client import TrustOnFirstUse, connect
from twistchat.client.api import ChatMessage
from twistchat.crypto.verifier import make_verifier
from twistchat.server.room import Rooms
from twistchat.server.service import ChatServerFactory
from twistchat.server.tls import TLSEndpoint, create_self_signed, load_certificate, server_options
from twisted.internet import protocol, reactor
from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    wrapClientTLS,
)
from twisted.internet.ssl import CertificateOptions

from .conftest import OTHER_PASSWORD, PASSWORD, Recorder, RunningServer, stop_server, until


def join(server: Any, name: str, known_hosts: Path, password: str = PASSWORD, **kw: Any):
    listener = kw.pop("listener", None) or Recorder()
    d = connect(
        reactor, "127.0.0.1", server.port, name, password,
        listener=listener, trust=TrustOnFirstUse(known_hosts), **kw,
    )
    return d.addCallback(lambda session: (session, listener))


def is_message(text: str):
    return lambda e: isinstance(e, ChatMessage) and e.text == text


@pytest_twisted.ensureDeferred
async def test_two_members_chat_both_ways(server: Any, known_hosts: Path) -> None:
    alice, alice_events = await join(server, "alice", known_hosts)
    assert alice.members == []
    bob, bob_events = await join(server, "bob", known_hosts)
    assert [m.name for m in bob.members] == ["alice"]
    joined = await alice_events.wait_for(lambda e: e[0] == "joined" if isinstance(e, tuple) else False)
    assert joined[1].name == "bob" and joined[1].addr.startswith("127.0.0.1:")

    alice.send("Hello world")
    bob.send("hi alice")
    got = await bob_events.wait_for(is_message("Hello world"))
    assert got.sender == "alice"
    got = await alice_events.wait_for(is_message("hi alice"))
    assert got.sender == "bob"
    assert [m.name for m in await alice.who()] == ["alice", "bob"]

    await bob.leave()
    left = await alice_events.wait_for(lambda e: isinstance(e, tuple) and e[0] == "left")
    assert left[1].name == "bob"
    await alice.leave()
    assert alice_events.events.count(("disconnected", None)) == 1


@pytest_twisted.ensureDeferred
async def test_wrong_password_refused_nobody_told(server: Any, known_hosts: Path) -> None:
    alice, events = await join(server, "alice", known_hosts)
    with pytest.raises(errors.WrongPassword, match="wrong password"):
        await join(server, "mallory", known_hosts, password=OTHER_PASSWORD)
    assert len(server.rooms.get("main")) == 1
    # The room hears of joins in order: once it hears of bob, who came after
    # mallory, it would have heard of mallory already.
    bob, _ = await join(server, "bob", known_hosts)
    await events.wait_for(lambda e: isinstance(e, tuple) and e[0] == "joined")
    joined = [e[1].name for e in events.events if isinstance(e, tuple) and e[0] == "joined"]
    assert joined == ["bob"]
    await bob.leave()
    await alice.leave()


@pytest_twisted.ensureDeferred
async def test_name_taken(server: Any, known_hosts: Path) -> None:
    alice, _ = await join(server, "alice", known_hosts)
    with pytest.raises(errors.NameTaken):
        await join(server, "alice", known_hosts)
    await alice.leave()


@pytest_twisted.ensureDeferred
async def test_server_without_verifier_is_refused(certificate: Any, known_hosts: Path) -> None:
    """
    A server holding another verifier for the room cannot prove it knows the
    room, so the client refuses it (mutual authentication).
    """
    impostor = ChatServerFactory(Rooms([make_verifier(OTHER_PASSWORD, "main")]), reactor)
    port = await SSL4ServerEndpoint(
        reactor, 0, server_options(certificate), interface="127.0.0.1"
    ).listen(impostor)
    try:
        with pytest.raises(errors.ServerNotAuthenticated, match="could not prove"):
            await connect(
                reactor, "127.0.0.1", port.getHost().port, "alice", PASSWORD,
                trust=TrustOnFirstUse(known_hosts),
            )
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_certificate_change_refused(server: Any, known_hosts: Path) -> None:
    known_hosts.write_text(f"127.0.0.1:{server.port} SHA256:00:11\n")
    with pytest.raises(errors.FingerprintChanged) as info:
        await join(server, "alice", known_hosts)
    assert "CHANGED" in str(info.value) and str(known_hosts) in str(info.value)
    assert len(server.rooms.get("main")) == 0


@pytest_twisted.ensureDeferred
async def test_first_use_pins_fingerprint(server: Any, known_hosts: Path) -> None:
    session, _ = await join(server, "alice", known_hosts)
    await session.leave()
    (line,) = known_hosts.read_text().splitlines()
    assert line.startswith(f"127.0.0.1:{server.port} ")
    session, _ = await join(server, "alice", known_hosts)
    await session.leave()
    assert len(known_hosts.read_text().splitlines()) == 1


class Relay(protocol.Protocol):
    """
    One leg of a man in the middle: TLS terminated on both sides, bytes copied.
    """

    peer: Any = None
    pending: list[bytes]

    def connectionMade(self) -> None:
        self.pending = []

    def dataReceived(self, data: bytes) -> None:
        if self.peer is None:
            self.pending.append(data)
        else:
            self.peer.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        if self.peer is not None:
            self.peer.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_tls_terminating_man_in_the_middle_cannot_complete(
    server: Any, known_hosts: Path, tmp_path: Path, no_logged_errors: list[Any]
) -> None:
    """
    A proxy with its own certificate (accepted on first use by a fresh client)
    relays every byte, yet the password handshake fails: it is bound to the TLS
    exporter, which differs on the two legs.
    """
    create_self_signed(tmp_path / "mitm.pem", tmp_path / "mitm.key")
    mitm_cert = load_certificate(tmp_path, tmp_path / "mitm.pem", tmp_path / "mitm.key")

    class Front(Relay):
        def connectionMade(self) -> None:
            super().connectionMade()
            back_factory = protocol.Factory.forProtocol(Relay)
            endpoint = wrapClientTLS(
                CertificateOptions(verify=False),
                TCP4ClientEndpoint(reactor, "127.0.0.1", server.port),
            )

            def linked(back: Relay) -> None:
                back.peer, self.peer = self, back
                for data in self.pending:
                    back.transport.write(data)

            endpoint.connect(back_factory).addCallback(linked)

    mitm = await SSL4ServerEndpoint(
        reactor, 0, server_options(mitm_cert), interface="127.0.0.1"
    ).listen(protocol.Factory.forProtocol(Front))
    try:
        with pytest.raises(errors.AuthFailed):
            await connect(
                reactor, "127.0.0.1", mitm.getHost().port, "alice", PASSWORD,
                trust=TrustOnFirstUse(known_hosts),
            )
    finally:
        await mitm.stopListening()
    assert len(server.rooms.get("main")) == 0
    # The proxy's certificate was not pinned: only a successful login pins.
    assert not known_hosts.exists()


@pytest_twisted.ensureDeferred
async def test_non_tls_bytes_and_huge_frames_do_not_disturb_room(
    server: Any, known_hosts: Path
) -> None:
    alice, alice_events = await join(server, "alice", known_hosts)
    bob, bob_events = await join(server, "bob", known_hosts)

    def attack() -> tuple[bytes, bytes]:
        plain = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        plain.sendall(b"GET / HTTP/1.0\r\n\r\n" + b"\x00" * 1000)
        first = plain.recv(4096)
        plain.close()
        context = stdlib_ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = stdlib_ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            with context.wrap_socket(raw) as tls:
                tls.sendall(struct.pack(">I", 0xFFFFFFF0) + b"x" * 64)
                reply = b""
                while True:
                    chunk = tls.recv(4096)
                    if not chunk:
                        break
                    reply += chunk
        return first, reply

    from twisted.internet.threads import deferToThread

    _, reply = await deferToThread(attack)
    assert b"frame-too-long" in reply
    alice.send("after the attack")
    got = await bob_events.wait_for(is_message("after the attack"))
    assert got.sender == "alice"
    await alice.leave()
    await bob.leave()


@pytest_twisted.ensureDeferred
async def test_tampered_relay_is_rejected_not_shown(server: Any, known_hosts: Path) -> None:
    """
    A server that alters a sealed message, or re-attributes it, or replays it,
    gets it rejected by the receiver and reported instead of shown.
    """
    alice, _ = await join(server, "alice", known_hosts)
    bob, bob_events = await join(server, "bob", known_hosts)
    room = server.rooms.get("main")
    original = room.send_to
    from twistchat import wire

    def evil(recipients: Any, data: bytes, ack: Any = None) -> None:
        msg = wire.decode(data[4:], wire.FROM_SERVER)
        if msg.type != "msg":
            return original(recipients, data, ack)
        fields = dict(msg.fields)

        def send(frame: bytes, ack: Any = None) -> None:
            original(recipients, wire.prefixed(frame), ack)

        send(data[4:], ack)  # genuine
        send(data[4:])  # replay
        send(wire.encode("msg", **{**fields, "from": "carol"}))  # re-attributed
        ct = bytearray(fields["ct"])
        ct[0] ^= 1
        send(wire.encode("msg", **{**fields, "ct": bytes(ct), "n": fields["n"] + 1}))

    room.send_to = evil  # type: ignore[method-assign]
    alice.send("only once")
    await bob_events.wait_for(is_message("only once"))
    await bob_events.wait_for(lambda e: isinstance(e, tuple) and e[0] == "rejected"
                              and e[1] == "alice" and "could not be opened" in e[2])
    rejected = [e for e in bob_events.events if isinstance(e, tuple) and e[0] == "rejected"]
    assert [e[1] for e in rejected] == ["alice", "carol", "alice"]
    assert "repeats" in rejected[0][2]
    shown = [e for e in bob_events.events if isinstance(e, ChatMessage)]
    assert [m.text for m in shown] == ["only once"]
    room.send_to = original  # type: ignore[method-assign]
    await alice.leave()
    await bob.leave()


@pytest_twisted.ensureDeferred
async def test_connection_refused_and_timeout(known_hosts: Path) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(Exception) as info:
        await connect(reactor, "127.0.0.1", port, "alice", PASSWORD,
                      trust=TrustOnFirstUse(known_hosts))
    assert "refused" in str(info.value).lower()

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)
    try:
        with pytest.raises(errors.TwistchatError, match="no answer"):
            await connect(reactor, "127.0.0.1", silent.getsockname()[1], "alice",
                          PASSWORD, trust=TrustOnFirstUse(known_hosts), timeout=0.5)
    finally:
        silent.close()


def _nodelay(tls: Any) -> int:
    # The TLS wrapper's handle is the OpenSSL connection; the socket is below.
    sock = tls.transport.getHandle()
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


@pytest_twisted.ensureDeferred
async def test_tcp_nodelay_on_both_ends(server: Any, known_hosts: Path) -> None:
    """
    Nagle's algorithm is off on the server's accepted connections and on the
    client's: a small frame written while an earlier one is unacknowledged is
    not held back for the peer's delayed ACK (about 40 ms on Linux).
    """
    alice, _ = await join(server, "alice", known_hosts)
    [accepted] = server.factory.connections
    assert _nodelay(accepted.transport) != 0
    assert _nodelay(alice._protocol.transport) != 0
    await alice.leave()



def _in_kernel(tls: Any) -> bool:
    # Nothing waits in the TCP transport's buffer, nor does the reactor
    # watch it for writing: what was written is in the kernel already.
    tcp = tls.transport
    waiting = tcp._tempDataLen + len(tcp.dataBuffer) - tcp.offset
    return waiting == 0 and tcp not in reactor.getWriters()


def _sent_at_once(tls: Any) -> bool:
    # Twisted's TLS transport gathers one reactor turn's writes and hands them
    # to TCP on the next turn; flush them now, then look at TCP.
    tls._aggregator.flush()
    return _in_kernel(tls)


@pytest_twisted.ensureDeferred
async def test_writes_leave_at_once_on_both_ends(server: Any, known_hosts: Path) -> None:
    """
    A frame written on a connection with nothing queued goes to the socket
    as soon as TLS hands it to TCP, not on a later turn of the reactor
    (twistchat.writenow).
    """
    alice, _ = await join(server, "alice", known_hosts)
    [accepted] = server.factory.connections
    await until(lambda: _sent_at_once(accepted.transport))
    accepted.sendString(wire.encode("notice", code="history", text="0 earlier messages replayed"))
    assert _sent_at_once(accepted.transport)
    await until(lambda: _sent_at_once(alice._protocol.transport))
    alice._protocol.sendString(wire.encode("who"))
    assert _sent_at_once(alice._protocol.transport)
    await alice.leave()


@pytest_twisted.ensureDeferred
async def test_the_relays_own_tls_writes_each_frame_at_once(
        certificate: Any, verifier: Any, known_hosts: Path) -> None:
    """
    The TLS the plugin listens with when rooms are batched (TLSEndpoint with
    whole_writes): a frame is encrypted and in the kernel when its write
    returns, with no turn of the reactor in between.
    """
    factory = ChatServerFactory(Rooms([verifier]), reactor)
    plain = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port = await TLSEndpoint(server_options(certificate), plain, whole_writes=True).listen(factory)
    try:
        alice, _ = await join(RunningServer(factory, port), "alice", known_hosts)
        [accepted] = factory.connections
        await until(lambda: _in_kernel(accepted.transport))
        accepted.sendString(wire.encode("notice", code="history", text="0 earlier messages"))
        assert _in_kernel(accepted.transport)
        await alice.leave()
    finally:
        await stop_server(factory, port)
