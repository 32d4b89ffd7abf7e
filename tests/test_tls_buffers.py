"""
An idle member's TLS connection gives back its memory BIOs' capacity
(twistchat.server.tls.release_buffers): real OpenSSL connections through
pyOpenSSL, in memory and over real loopback TLS with the real client.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from OpenSSL import SSL
from twistchat.client import TrustOnFirstUse, connect
from twistchat.client.api import ChatMessage
from twistchat.server import protocol as server_protocol
from twistchat.server.limits import Limits
from twistchat.server.room import Rooms
from twistchat.server.service import ChatServerFactory
from twistchat.server.tls import release_buffers, server_options
from twisted.internet import reactor
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.testing import StringTransport

from .conftest import PASSWORD, Recorder, RunningServer, stop_server, until


class Handle:
    """
    What release_buffers asks of a transport: its TLS connection.
    """

    def __init__(self, connection: SSL.Connection) -> None:
        self.connection = connection

    def getHandle(self) -> SSL.Connection:
        return self.connection


def _move(source: SSL.Connection, sink: SSL.Connection) -> bool:
    try:
        data = source.bio_read(1 << 20)
    except SSL.WantReadError:
        return False
    sink.bio_write(data)
    return True


def _pump(server: SSL.Connection, client: SSL.Connection) -> None:
    while _move(client, server) | _move(server, client):
        pass


def tls_pair(certificate: Any) -> tuple[SSL.Connection, SSL.Connection]:
    """
    A server connection with the relay's own TLS options and a client, both
    on memory BIOs as Twisted uses them, after a TLS 1.3 handshake.
    """
    server = SSL.Connection(server_options(certificate).getContext(), None)
    server.set_accept_state()
    client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    client.set_connect_state()
    for _ in range(10):
        for side in (client, server):
            try:
                side.do_handshake()
            except SSL.WantReadError:
                pass
        _pump(server, client)
    assert server.get_protocol_version_name() == "TLSv1.3"
    return server, client


def _exchange(server: SSL.Connection, client: SSL.Connection, size: int) -> None:
    # size bytes each way, read in full at the other end.
    for sender, receiver in ((server, client), (client, server)):
        payload = bytes(range(256)) * (size // 256)
        sent = 0
        while sent < len(payload):
            sent += sender.send(payload[sent:sent + 16384])
        _pump(server, client)
        received = b""
        while len(received) < len(payload):
            received += receiver.recv(1 << 16)
        assert received == payload


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]


def _heap_in_use() -> int:
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def test_the_bios_capacity_is_given_back_and_the_connection_goes_on(certificate: Any) -> None:
    """
    After 16 KiB each way, each connection's two memory BIOs hold the
    capacity of that flight; giving them back frees at least 16 KiB of C
    heap per connection (glibc's own count of bytes in use), and both ends
    go on sending and receiving over the same TLS session.
    """
    pairs = [tls_pair(certificate) for _ in range(40)]
    for server, client in pairs:
        _exchange(server, client, 16384)
    in_use = _heap_in_use()
    for server, _ in pairs:
        old = (server._into_ssl, server._from_ssl)  # type: ignore[attr-defined]
        assert release_buffers(Handle(server))
        assert (server._into_ssl, server._from_ssl) != old  # type: ignore[attr-defined]
    freed = (in_use - _heap_in_use()) / len(pairs)
    assert freed >= 16384, f"{freed:.0f} bytes freed per connection"
    for server, client in pairs:
        _exchange(server, client, 1024)
        _exchange(server, client, 32768)


def test_nothing_is_replaced_while_a_bio_holds_bytes(certificate: Any) -> None:
    server, client = tls_pair(certificate)
    server.send(b"not yet read out of the send BIO")
    old = (server._into_ssl, server._from_ssl)  # type: ignore[attr-defined]
    assert not release_buffers(Handle(server))
    assert (server._into_ssl, server._from_ssl) == old  # type: ignore[attr-defined]
    _pump(server, client)
    assert client.recv(100) == b"not yet read out of the send BIO"
    client.send(b"not yet read by OpenSSL")
    _move(client, server)
    assert not release_buffers(Handle(server))
    assert server.recv(100) == b"not yet read by OpenSSL"
    assert release_buffers(Handle(server))


@pytest.mark.parametrize("transport", [StringTransport(), object()])
def test_a_transport_without_memory_bios_is_left_alone(transport: Any) -> None:
    assert release_buffers(transport) is False


@pytest_twisted.async_yield_fixture
async def quick_pings(certificate: Any, verifier: Any) -> Any:
    """
    A relay over real loopback TLS that pings a member quiet for 0.3 s.
    """
    factory = ChatServerFactory(Rooms([verifier]), reactor,
                                Limits(idle_timeout=0.3, ping_timeout=5))
    port = await SSL4ServerEndpoint(
        reactor, 0, server_options(certificate), interface="127.0.0.1").listen(factory)
    yield RunningServer(factory, port)
    await stop_server(factory, port)


@pytest_twisted.ensureDeferred
async def test_a_member_gives_back_its_buffers_on_joining_and_when_pinged(
        quick_pings: Any, known_hosts: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The relay, over real loopback TLS with the real client: a member's
    connection is given new BIOs when it has joined (after the welcome and
    the history) and when it has been quiet long enough to be pinged; the
    room chats on afterwards.
    """
    released: list[tuple[str, bool]] = []

    def spy(transport: Any) -> bool:
        done = release_buffers(transport)
        released.append((transport.getHandle().get_protocol_version_name(), done))
        return done

    monkeypatch.setattr(server_protocol, "release_buffers", spy)
    server = quick_pings
    sessions = []
    for name in ("alice", "bob"):
        listener = Recorder()
        session = await connect(reactor, "127.0.0.1", server.port, name, PASSWORD,
                                listener=listener, trust=TrustOnFirstUse(known_hosts))
        sessions.append((session, listener))
    assert released == [("TLSv1.3", True)] * 2
    await until(lambda: len(released) >= 4)  # both pinged (0.3 s quiet)
    assert released[2:4] == [("TLSv1.3", True)] * 2
    (alice, _), (bob, heard) = sessions
    alice.send("after both were given new buffers")
    await heard.wait_for(lambda e: isinstance(e, ChatMessage)
                         and e.text == "after both were given new buffers")
    for session, _ in sessions:
        await session.leave()
