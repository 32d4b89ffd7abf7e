"""
The twistchat client library: a Deferred-based API.

    from twistchat.client import connect, ChatListener

    class Printer(ChatListener):
        def message_received(self, message):
            print(f"{message.sender}: {message.text}")

    session = await connect(reactor, "chat.example.org", 7777, "alice",
                            password, listener=Printer())
    session.send("Hello world")
    print([m.name for m in await session.who()])
    await session.leave()

C{connect} fires with a L{ChatSession} once the password handshake has succeeded
(or fails with a L{twistchat.errors.TwistchatError} subclass such as
L{WrongPassword}, or a Twisted connection error). Events arrive through the
methods of a L{ChatListener}. The reactor is passed in; nothing here starts or
stops it (see L{twistchat.client.blocking} for scripts without a reactor).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import Any

from twisted.internet import threads
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from twistchat import wire
from twistchat.client.protocol import ChatClientProtocol, State
from twistchat.client.trust import CertificateAuthority, TrustOnFirstUse
from twistchat.crypto.kdf import PasswordSecrets, ScryptParams, derive_secrets
from twistchat.errors import ProtocolError, Rejected, TwistchatError, Undecryptable
from twistchat.server.limits import TokenBucket
from twistchat.server.tls import tls_exporter
from twistchat.config import DEFAULT_ROOM

log = Logger()


@dataclass(frozen=True)
class Member:
    """
    A member of the room: name and address as the server sees it.
    """

    name: str
    addr: str


@dataclass(frozen=True)
class ChatMessage:
    """
    A message opened with the room key. C{time} is the server's time for
    history; live messages have None.
    """

    sender: str
    text: str
    time: float | None = None
    history: bool = False


class ChatListener:
    """
    Receives a session's events. Override the methods you need; each is optional.

    A listener's exception is logged and does not affect the session.
    """

    def message_received(self, message: ChatMessage) -> None:
        """A member's message, opened and checked."""

    def member_joined(self, member: Member) -> None:
        """Someone entered the room."""

    def member_left(self, member: Member) -> None:
        """Someone left the room."""

    def message_rejected(self, sender: str, reason: str) -> None:
        """A message that could not be opened, or a replay; it is not shown as chat."""

    def history_unreadable(self, message: ChatMessage) -> None:
        """
        A replayed message that the room key does not open: it was sealed under
        an earlier password of the room. C{message.text} is empty.
        """

    def history_end(self) -> None:
        """The replayed history is over: what follows is live."""

    def notice(self, text: str) -> None:
        """A notice from the server (for example a rate warning)."""

    def disconnected(self, reason: str | None) -> None:
        """The session ended: C{None} after L{ChatSession.leave}, else why."""


class ChatSession:
    """
    A member's connection to a room, after a successful login.
    """

    def __init__(self, protocol: ChatClientProtocol, welcome: wire.Message,
                 listener: ChatListener, clock: Any) -> None:
        self._protocol = protocol
        self._clock = clock
        # Keep to the server's message rate: send at once while the bucket has
        # tokens, queue (in order) otherwise, so piped input is not refused.
        rate = welcome.get("rate")
        self._bucket = (
            TokenBucket(rate, welcome.get("burst", 1), clock.seconds()) if rate else None
        )
        self._outbox: deque[str] = deque()
        self._flush_call: Any = None
        self._listener = listener
        self.name: str = welcome["name"]
        self.room: str = welcome["room"]
        #: Our address as the server sees it.
        self.address: str = welcome["addr"]
        self.max_text: int = welcome.get("max_text", wire.MAX_TEXT_BYTES)
        self._members = {m["name"]: Member(m["name"], m["addr"]) for m in welcome["members"]}
        self._who: list[Deferred[list[Member]]] = []
        self._leaving = False
        #: Fires with the reason (None after leave()) when the session ends.
        self.ended: Deferred[str | None] = Deferred()

    @property
    def members(self) -> list[Member]:
        """
        The other members, as of the latest presence notices.
        """
        return list(self._members.values())

    @property
    def connected(self) -> bool:
        return self._protocol.state is State.MEMBER

    def send(self, text: str) -> None:
        """
        Seal C{text} with the room key and send it to the other members.

        @raise ValueError: if the text is longer than the server accepts.
        @raise ProtocolError: if the session has ended.
        """
        if len(text.encode("utf-8")) > self.max_text:
            raise ValueError(f"message longer than {self.max_text} bytes")
        if not self.connected or self._leaving:
            raise ProtocolError("not connected to a room")
        self._outbox.append(text)
        self._flush()

    @property
    def pending(self) -> int:
        """
        Messages queued to keep within the server's rate, not yet sent.
        """
        return len(self._outbox)

    def _flush(self) -> None:
        self._flush_call = None
        while self._outbox and self.connected:
            if self._bucket is not None and not self._bucket.take(self._clock.seconds()):
                self._flush_call = self._clock.callLater(1 / self._bucket.rate, self._flush)
                return
            self._protocol.send_text(self._outbox.popleft())
        if self._leaving and self.connected:
            self._protocol.transport.loseConnection()

    def who(self) -> Deferred[list[Member]]:
        """
        Ask the server who is in the room (everyone, including us).
        """
        if not self.connected:
            raise ProtocolError("not connected to a room")
        d: Deferred[list[Member]] = Deferred()
        self._who.append(d)
        self._protocol.send_message("who")
        return d

    def leave(self) -> Deferred[str | None]:
        """
        Leave the room: pending messages are sent, then the connection closes.
        """
        if self.ended.called:
            return succeed(None)
        self._leaving = True
        if self._flush_call is None:
            self._flush()  # closes once the queued messages are sent
        d: Deferred[str | None] = Deferred()

        def relay(result: str | None) -> str | None:
            d.callback(result)
            return result  # self.ended keeps its result for other waiters

        self.ended.addCallback(relay)
        return d

    # --- from the protocol -----------------------------------------------------

    def _call(self, method: str, *args: Any) -> None:
        try:
            getattr(self._listener, method)(*args)
        except Exception:
            log.failure("listener {method} raised", method=method)

    def _message(self, sender: str, text: str, message: wire.Message) -> None:
        self._call(
            "message_received",
            ChatMessage(sender, text, message.get("ts"), message.get("hist", False)),
        )

    def _rejected(self, sender: str, error: Rejected, message: wire.Message) -> None:
        if message.get("hist") and isinstance(error, Undecryptable):
            self._call("history_unreadable", ChatMessage(sender, "", message.get("ts"), True))
        else:
            self._call("message_rejected", sender, error.message)

    def _event(self, message: wire.Message) -> None:
        if message.type == "joined":
            member = Member(message["name"], message["addr"])
            self._members[member.name] = member
            self._call("member_joined", member)
        elif message.type == "left":
            member = self._members.pop(message["name"], None) or Member(
                message["name"], message["addr"]
            )
            self._call("member_left", member)
        elif message.type == "members":
            everyone = [Member(m["name"], m["addr"]) for m in message["members"]]
            self._members = {m.name: m for m in everyone if m.name != self.name}
            if self._who:
                self._who.pop(0).callback(everyone)
        elif message.type == "notice":
            if message["code"] == "history":
                self._call("history_end")
            else:
                self._call("notice", message["text"])

    def _closed(self, error: TwistchatError | None) -> None:
        reason = None if (self._leaving and error is None) else (
            error.message if error is not None else "the server closed the connection"
        )
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        pending, self._who = self._who, []
        for d in pending:
            d.errback(ProtocolError("disconnected"))
        self._call("disconnected", reason)
        self.ended.callback(reason)


class _Login:
    """
    The protocol's handler: first for the login, then forwarding to the session.
    """

    def __init__(self, listener: ChatListener, clock: Any) -> None:
        self.listener = listener
        self.clock = clock
        self.result: Deferred[ChatSession] = Deferred()
        self.session: ChatSession | None = None

    def logged_in(self, protocol: ChatClientProtocol, welcome: wire.Message) -> None:
        self.session = ChatSession(protocol, welcome, self.listener, self.clock)
        if not self.result.called:
            self.result.callback(self.session)

    def login_failed(self, failure: Failure) -> None:
        if not self.result.called:
            self.result.errback(failure)

    def message(self, sender: str, text: str, message: wire.Message) -> None:
        assert self.session is not None
        self.session._message(sender, text, message)

    def rejected(self, sender: str, error: Rejected, message: wire.Message) -> None:
        assert self.session is not None
        self.session._rejected(sender, error, message)

    def event(self, message: wire.Message) -> None:
        assert self.session is not None
        self.session._event(message)

    def closed(self, reason: TwistchatError | None) -> None:
        if self.session is not None:
            self.session._closed(reason)


def thread_deriver(reactor: Any):
    """
    Run scrypt in the reactor's thread pool, so the reactor never blocks on it.
    """

    def derive(password: str, salt: bytes, params: ScryptParams) -> Deferred[PasswordSecrets]:
        return threads.deferToThreadPool(
            reactor, reactor.getThreadPool(), derive_secrets, password, salt, params
        )

    return derive


def connect(
    reactor: Any,
    host: str,
    port: int,
    name: str,
    password: str,
    *,
    room: str = DEFAULT_ROOM,
    listener: ChatListener | None = None,
    trust: TrustOnFirstUse | CertificateAuthority | None = None,
    timeout: float = 30.0,
) -> Deferred[ChatSession]:
    """
    Connect over TLS, prove knowledge of the room password, and join the room.

    @param trust: how to trust the server's certificate; by default its
        fingerprint is pinned on first use in C{~/.config/twistchat/known_hosts}.
    @param timeout: seconds for the whole login (TCP, TLS, password handshake).
    @return: a Deferred firing with a L{ChatSession}, or failing with a
        L{TwistchatError} (e.g. L{WrongPassword}, L{ServerNotAuthenticated},
        L{NameTaken}, L{FingerprintChanged}) or a Twisted connection error.
    """
    listener = listener or ChatListener()
    trust = trust or TrustOnFirstUse()
    login = _Login(listener, reactor)
    factory = Factory.forProtocol(
        partial(
            ChatClientProtocol,
            login,
            name,
            room,
            password,
            thread_deriver(reactor),
            tls_exporter,
            trust.check,
        )
    )
    try:
        creator = trust.connection_creator(host, port)
    except TwistchatError:
        return fail()
    endpoint = wrapClientTLS(creator, HostnameEndpoint(reactor, host, port, timeout=timeout))
    connected: list[ChatClientProtocol] = []
    connecting = endpoint.connect(factory)
    connecting.addCallbacks(connected.append, login.login_failed)

    def too_slow() -> None:
        connecting.cancel()
        login.login_failed(
            Failure(TwistchatError(
                f"no answer from the server within {timeout:g} seconds", code="timeout"
            ))
        )

    timer = reactor.callLater(timeout, too_slow)

    def done(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        if not isinstance(result, Failure):
            trust.remember()
        if isinstance(result, Failure) and connected:
            # Connected, but the login failed or took too long: drop the connection.
            connected[0].transport.abortConnection()
        return result

    return login.result.addBoth(done)
