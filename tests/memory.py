"""
The real server protocol and the real client protocol, connected in memory.

L{MemoryRelay} is a L{ChatServerFactory} on a L{MemoryReactorClock}: its
C{login} and C{connect} make real L{ChatClientProtocol}s, each joined to a
server connection by a pair of C{iosim.FakeTransport}s, with no socket and no
TLS (both sides get the same fixed channel binding, and the test says when
"TLS" is up). Nothing moves until the test calls L{MemoryRelay.flush}; time
passes only with L{MemoryRelay.advance}, so deadlines are tested in a few
microseconds and always the same way.

Each L{Link} records what crossed it, decoded (L{Wire}: what the server
wrote to the client and what the client wrote to the server), and what the
client protocol reported to its handler (L{Events}). It can also stop the
client reading (the transport pauses the server as a full socket buffer
would) or cut the network under a connection (a half-open connection: each
side finds out only by its own deadlines).

scrypt runs once per password and salt for the whole test session
(L{cached_deriver}); it is tested on its own in test_crypto_kdf.py.

L{MemoryStore} stands in for the SQLite L{HistoryStore} where the store is not
what is tested: the same five operations, each a Deferred that fires at once,
or, when the test holds them, when the test answers (or fails) it.

    relay = MemoryRelay([verifier])
    alice, bob = relay.login("alice"), relay.login("bob")
    bob.client.send_text("hi")
    relay.flush()
    assert alice.events.messages() == [("bob", "hi")]
"""

from __future__ import annotations

import functools
import itertools
import struct
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from twistchat import wire
from twistchat.client.keyring import Keyring
from twistchat.client.protocol import HANDSHAKE_TIMEOUT, KEEPALIVE, ChatClientProtocol
from twistchat.crypto.kdf import PasswordSecrets, ScryptParams, derive_secrets
from twistchat.errors import Rejected, TwistchatError
from twistchat.server.history import Row
from twistchat.server.limits import Limits
from twistchat.server.room import Rooms
from twistchat.server.service import ChatServerFactory
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport

#: The TLS channel binding both sides use in memory.
BINDING = b"\x01" * 64
#: The address the relay listens on.
RELAY_ADDRESS = IPv4Address("TCP", "127.0.0.1", 7777)


def binding(transport: Any) -> bytes:
    return BINDING


@functools.cache
def _derive(password: str, salt: bytes, params: ScryptParams) -> PasswordSecrets:
    return derive_secrets(password, salt, params)


def cached_deriver(password: str, salt: bytes, params: ScryptParams) -> Deferred[PasswordSecrets]:
    """
    A keyring's deriver that runs scrypt once per (password, salt, cost) for
    the whole test session, synchronously (the keyring takes any deriver).
    """
    return succeed(_derive(password, bytes(salt), params))


class Wire:
    """
    The frames that went one way over a connection, decoded as their reader
    decodes them (a frame that does not decode is kept as its bytes).
    """

    def __init__(self, direction: Any) -> None:
        self._direction = direction
        self._buffer = b""
        self.frames: list[wire.Message | bytes] = []

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= 4:
            (length,) = struct.unpack(">I", self._buffer[:4])
            if len(self._buffer) < 4 + length:
                return
            frame, self._buffer = self._buffer[4 : 4 + length], self._buffer[4 + length :]
            try:
                self.frames.append(wire.decode(frame, self._direction))
            except TwistchatError:
                self.frames.append(frame)

    def types(self) -> list[str]:
        return [f.type if isinstance(f, wire.Message) else "?" for f in self.frames]

    def of(self, kind: str) -> list[wire.Message]:
        return [f for f in self.frames if isinstance(f, wire.Message) and f.type == kind]

    def last(self) -> wire.Message:
        frame = self.frames[-1]
        assert isinstance(frame, wire.Message), frame
        return frame


class Events:
    """
    The client protocol's handler: records what it reports, in order.

    Each event is a tuple: C{("logged-in", welcome)}, C{("login-failed",
    error)}, C{("message", sender, text)}, C{("rejected", sender, error)},
    C{(type, message)} for the other frames it passes on (joined, left,
    members, notice, pong), and C{("closed", error or None)}.
    """

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def logged_in(self, protocol: ChatClientProtocol, welcome: wire.Message) -> None:
        self.events.append(("logged-in", welcome))

    def login_failed(self, error: Failure) -> None:
        self.events.append(("login-failed", error.value))

    def message(self, sender: str, opened: Any, message: wire.Message) -> None:
        self.events.append(("message", sender, opened.text))

    def rejected(self, sender: str, error: Rejected, message: wire.Message) -> None:
        self.events.append(("rejected", sender, error))

    def event(self, message: wire.Message) -> None:
        self.events.append((message.type, message))

    def closed(self, reason: TwistchatError | None) -> None:
        self.events.append(("closed", reason))

    def kinds(self) -> list[str]:
        return [e[0] for e in self.events]

    def messages(self) -> list[tuple[str, str]]:
        return [(e[1], e[2]) for e in self.events if e[0] == "message"]

    def presence(self) -> list[str]:
        return [f"{e[1]['name']} {e[0]}" for e in self.events if e[0] in ("joined", "left")]

    def ending(self) -> Any:
        """
        The error the connection ended with (login failed or session closed).
        """
        (end,) = [e for e in self.events if e[0] in ("login-failed", "closed")]
        return end[1]


class _Transport(FakeTransport):
    """
    iosim's transport, which also remembers an abort: what was written and
    not yet read is then lost, as with a real abort.
    """

    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class Link:
    """
    One client connection to the relay, over two in-memory transports.

    @ivar to_client: what the server wrote to this client (delivered or not).
    @ivar to_server: what the client wrote to the server.
    """

    def __init__(self, client: ChatClientProtocol, server: Any, events: Events,
                 address: IPv4Address) -> None:
        self.client = client
        self.server = server
        self.events = events
        self.client_io = _Transport(client, False, address, RELAY_ADDRESS)
        self.server_io = _Transport(server, True, RELAY_ADDRESS, address)
        self.to_client = Wire(wire.FROM_SERVER)
        self.to_server = Wire(wire.FROM_CLIENT)
        #: False while the client does not read: what the server writes waits.
        self.reading = True
        #: True once the network is cut: nothing more arrives either way, and
        #: neither side is told the connection is gone.
        self.cut = False
        self._unread = b""
        server.makeConnection(self.server_io)
        client.makeConnection(self.client_io)

    @property
    def closed(self) -> bool:
        """
        Whether the client side of the connection has closed.
        """
        return bool(self.client_io.disconnected)

    def tls_up(self) -> None:
        """
        Say that the TLS handshake is done, as the TLS layer does.
        """
        self.client.handshakeCompleted()

    def stop_reading(self) -> None:
        """
        The client stops reading: from now on what the server writes waits,
        and the server's transport pauses it, as a full socket buffer does.
        """
        self.reading = False
        producer = self.server_io.producer
        if producer is not None:
            producer.pauseProducing()

    def resume_reading(self) -> None:
        self.reading = True
        producer = self.server_io.producer
        if producer is not None:
            producer.resumeProducing()

    def cut_network(self) -> None:
        """
        Lose every packet from now on, both ways, silently.
        """
        self.cut = True

    def pump(self) -> bool:
        """
        Move what each side wrote to the other, then any closing; return
        whether anything happened.
        """
        moved = False
        data = self.server_io.getOutBuffer()
        if data:
            moved = True
            self.to_client.feed(data)
            if not self.cut:
                self._unread += data
        if self._unread and self.reading and not self.client_io.disconnected:
            data, self._unread = self._unread, b""
            self.client_io.bufferReceived(data)
        data = self.client_io.getOutBuffer()
        if data:
            moved = True
            self.to_server.feed(data)
            if not self.cut and not self.server_io.disconnected:
                self.server_io.bufferReceived(data)
        for near, far in ((self.server_io, self.client_io), (self.client_io, self.server_io)):
            if near.disconnecting and not near.disconnected:
                if near.stream:
                    continue  # what it wrote before closing goes first
                if near is self.server_io and self._unread:
                    if not near.aborted:
                        continue  # a clean close waits until the client has read
                    self._unread = b""
                moved = True
                near.disconnected = True
                near.reportDisconnect()
                if not self.cut and not far.disconnected:
                    far.disconnecting = True
        return moved


class MemoryRelay:
    """
    A relay (the real server factory) and its clients, all in memory.

    @param verifiers: the rooms' verifiers.
    @param deriver: the clients' scrypt (default: L{cached_deriver}).
    @param batch_window: the rooms' batch window in seconds (C{--batch-window}).
    """

    def __init__(self, verifiers: Iterable[Any], limits: Limits = Limits(),
                 history: Any = None, reactor: MemoryReactorClock | None = None,
                 deriver: Callable[..., Deferred[PasswordSecrets]] = cached_deriver,
                 batch_window: float = 0.0) -> None:
        self.reactor = reactor or MemoryReactorClock()
        self.factory = ChatServerFactory(
            Rooms(list(verifiers), self.reactor, batch_window), self.reactor, limits,
            channel_binding=binding,
            history=history,
        )
        self.deriver = deriver
        self.links: list[Link] = []
        self._ports = itertools.count(40000)

    @property
    def limits(self) -> Limits:
        return self.factory.limits

    def connect(self, name: str, password: str, room: str = "main",
                host: str = "127.0.0.1", tls: bool = True,
                timeout: float | None = HANDSHAKE_TIMEOUT,
                keepalive: tuple[float, float] | None = KEEPALIVE) -> Link:
        """
        Open a connection for C{name} (and, with C{tls}, say TLS is up, so the
        client starts its login); nothing is delivered until L{flush}.
        """
        address = IPv4Address("TCP", host, next(self._ports))
        events = Events()
        client = ChatClientProtocol(
            events, name, room, Keyring(password, room, self.deriver), binding,
            clock=self.reactor, timeout=timeout, keepalive=keepalive,
        )
        link = Link(client, self.factory.buildProtocol(address), events, address)
        self.links.append(link)
        if tls:
            link.tls_up()
        return link

    def login(self, name: str, password: str, room: str = "main", **kw: Any) -> Link:
        """
        Connect and log in; fail unless the client was welcomed.
        """
        link = self.connect(name, password, room, **kw)
        self.flush()
        assert link.events.kinds()[:1] == ["logged-in"], link.events.events
        return link

    def flush(self) -> None:
        """
        Deliver everything there is to deliver (and run what is due now).
        """
        for _ in range(10_000):
            self.reactor.advance(0)
            if not any([link.pump() for link in self.links]):
                return
        raise AssertionError("the connections never went quiet")

    def advance(self, seconds: float) -> None:
        """
        Let C{seconds} pass, then deliver what that caused.
        """
        self.reactor.advance(seconds)
        self.flush()


class MemoryStore:
    """
    The history store's interface (C{open}, C{append}, C{recent}, C{expire},
    C{close}) on a list in memory.

    By default each operation's Deferred has fired when it is returned. With
    C{hold=True} operations wait in L{pending} until the test runs them with
    L{answer} (or L{fail}); each computes its result when it is answered.

    @ivar rows: what is stored, oldest first.
    """

    path = Path("memory")

    def __init__(self, hold: bool = False) -> None:
        self.hold = hold
        self.rows: list[Row] = []
        self.closed = False
        self._ids = itertools.count(1)
        #: Operations asked for and not answered yet: (name, run, Deferred).
        self.pending: deque[tuple[str, Callable[[], Any], Deferred[Any]]] = deque()

    def _ask(self, name: str, run: Callable[[], Any]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append((name, run, d))
        if not self.hold:
            self.answer()
        return d

    def _take(self, name: str | None) -> tuple[str, Callable[[], Any], Deferred[Any]]:
        for item in self.pending:
            if name is None or item[0] == name:
                self.pending.remove(item)
                return item
        raise AssertionError(f"no {name or 'operation'} pending: {list(self.pending)}")

    def answer(self, name: str | None = None) -> Any:
        """
        Run the oldest pending operation (called C{name}, if given) and fire
        its Deferred with the result, which is returned too.
        """
        _, run, d = self._take(name)
        result = run()
        d.callback(result)
        return result

    def fail(self, error: Exception, name: str | None = None) -> None:
        """
        Fail the oldest pending operation (called C{name}, if given).
        """
        _, _, d = self._take(name)
        d.errback(Failure(error))

    def open(self) -> Deferred[None]:
        return self._ask("open", lambda: None)

    def append(self, rows: Iterable[tuple[str, str, float, bytes, int, bytes]]) -> Deferred[list[int]]:
        rows = list(rows)

        def run() -> list[int]:
            stored = [Row(next(self._ids), *row) for row in rows]
            self.rows.extend(stored)
            return [row.id for row in stored]

        return self._ask("append", run)

    def recent(self, room: str, limit: int) -> Deferred[list[Row]]:
        return self._ask(
            "recent", lambda: [r for r in self.rows if r.room == room][-limit:] if limit else []
        )

    def expire(self, before: float) -> Deferred[int]:
        def run() -> int:
            kept = [r for r in self.rows if r.ts >= before]
            count, self.rows = len(self.rows) - len(kept), kept
            return count

        return self._ask("expire", run)

    def close(self) -> None:
        self.closed = True
