"""
Writes that go to the socket at once (twistchat.writenow), on real loopback
TCP connections accepted by the real reactor.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest_twisted
from twistchat.writenow import write_at_once
from twisted.internet import defer, protocol, reactor, threads
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import StringTransport

from .conftest import deferLater, until


class Accepted(protocol.Protocol):
    def __init__(self) -> None:
        self.lost: defer.Deferred[Any] = defer.Deferred()

    def connectionMade(self) -> None:
        self.factory.accepted.callback(self)

    def connectionLost(self, reason: Any) -> None:
        self.lost.callback(reason.value)  # the exception, not an errback


class Pair:
    """
    A connection accepted by the reactor (C{server}, its protocol) and a plain
    blocking socket at the other end (C{peer}).
    """

    def __init__(self, server: Accepted, peer: socket.socket) -> None:
        self.server = server
        self.peer = peer

    @property
    def tcp(self) -> Any:
        return self.server.transport

    def buffered(self) -> int:
        tcp = self.tcp
        return tcp._tempDataLen + len(tcp.dataBuffer) - tcp.offset


@pytest_twisted.async_yield_fixture
async def pair() -> AsyncIterator[Pair]:
    factory = protocol.ServerFactory.forProtocol(Accepted)
    factory.accepted = defer.Deferred()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    peer = socket.socket()
    # The peer takes little, so the server's writes soon outrun the kernel.
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    peer.settimeout(10)
    peer.setblocking(False)
    try:
        peer.connect(("127.0.0.1", port.getHost().port))
    except BlockingIOError:
        pass
    server = await factory.accepted
    peer.setblocking(True)
    peer.settimeout(10)
    yield Pair(server, peer)
    peer.close()
    if server.transport.connected:
        server.transport.abortConnection()
    await server.lost
    await port.stopListening()


def read_exactly(sock: socket.socket, count: int) -> bytes:
    chunks, got = [], 0
    while got < count:
        chunk = sock.recv(min(65536, count - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


@pytest_twisted.ensureDeferred
async def test_a_write_with_nothing_buffered_leaves_at_once(pair: Pair) -> None:
    assert write_at_once(pair.server.transport)
    pair.tcp.write(b"hello")
    # No reactor turn since the write: the bytes are already in the kernel.
    assert pair.tcp not in reactor.getWriters()
    assert pair.buffered() == 0
    assert read_exactly(pair.peer, 5) == b"hello"


@pytest_twisted.ensureDeferred
async def test_bytes_keep_their_order_when_the_kernel_takes_only_part(pair: Pair) -> None:
    """
    Once the kernel refuses part of a write, the rest is buffered and every
    later write queues behind it until the reactor has sent it all.
    """
    write_at_once(pair.server.transport)
    pair.tcp.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    # 96 numbered chunks of 3 sizes (1 MiB in all), over several reactor turns.
    chunks = [struct.pack(">I", i) * (size // 4)
              for i, size in enumerate([16384, 4, 1000] * 32)]
    seen_buffered = False
    for i, chunk in enumerate(chunks):
        pair.tcp.write(chunk)
        seen_buffered = seen_buffered or pair.buffered() > 0
        if i % 8 == 7:
            await deferLater(0)
    assert seen_buffered, "the test never filled the kernel's buffer"
    expected = b"".join(chunks)
    received = await threads.deferToThread(read_exactly, pair.peer, len(expected))
    assert received == expected
    await until(lambda: pair.buffered() == 0)
    # With the buffer empty again, writes go out at once again.
    pair.tcp.write(b"again")
    assert pair.buffered() == 0
    assert read_exactly(pair.peer, 5) == b"again"


@pytest_twisted.ensureDeferred
async def test_a_write_to_a_reset_peer_loses_the_connection_the_usual_way(pair: Pair) -> None:
    write_at_once(pair.server.transport)
    pair.peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    pair.peer.close()  # a reset, sent before the reactor turns again
    pair.tcp.write(b"into the void")  # the direct send fails: no exception here
    reason = await pair.server.lost
    assert not pair.tcp.connected
    assert isinstance(reason, (ConnectionLost, ConnectionDone))


def test_transports_without_tcp_are_left_alone() -> None:
    memory = StringTransport()
    assert not write_at_once(memory)
    memory.write(b"x")
    assert memory.value() == b"x"


@pytest_twisted.ensureDeferred
async def test_asking_twice_changes_nothing_more(pair: Pair) -> None:
    assert write_at_once(pair.server.transport)
    cls = type(pair.tcp)
    assert write_at_once(pair.server.transport)
    assert type(pair.tcp) is cls
    pair.tcp.write(b"once")
    assert read_exactly(pair.peer, 4) == b"once"


@pytest_twisted.ensureDeferred
async def test_a_unix_socket_is_left_to_its_own_writes(tmp_path: Any) -> None:
    """
    A UNIX connection sends with sendmsg (it may pass file descriptors): it
    keeps Twisted's own write path.
    """
    factory = protocol.ServerFactory.forProtocol(Accepted)
    factory.accepted = defer.Deferred()
    path = str(tmp_path / "socket")
    port = reactor.listenUNIX(path, factory)
    peer = socket.socket(socket.AF_UNIX)
    peer.setblocking(False)
    try:
        peer.connect(path)
        server = await factory.accepted
        cls = type(server.transport)
        assert not write_at_once(server.transport)
        assert type(server.transport) is cls
        server.transport.write(b"still works")
        await until(lambda: server.transport not in reactor.getWriters())
        peer.setblocking(True)
        peer.settimeout(10)
        assert read_exactly(peer, 11) == b"still works"
        peer.close()
        await server.lost
    finally:
        peer.close()
        await port.stopListening()
