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

With C{reconnect=Reconnect()} a session outlives a dropped connection: when the
connection ends for a reason that may pass (connection lost, server shutting
down, ping timeout, ...) it logs in again with exponential backoff, rejoins the
room and reports who left or joined meanwhile; messages sent meanwhile are
queued (up to L{Reconnect.max_queued}) and sent after the rejoin. Final reasons
(L{is_final}: wrong password, banned address, certificate changed, a server
that breaks the protocol, ...) end the session as without it.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

from twisted.application.internet import backoffPolicy
from twisted.internet import defer, task, threads
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from twistchat import wire
from twistchat.client.keyring import Keyring
from twistchat.client.protocol import HANDSHAKE_TIMEOUT, ChatClientProtocol, State
from twistchat.client.trust import CertificateAuthority, TrustOnFirstUse
from twistchat.crypto.kdf import PasswordSecrets, ScryptParams, derive_secrets
from twistchat.errors import (
    ProtocolError,
    Rejected,
    Replayed,
    TrustError,
    TwistchatError,
    Undecryptable,
)
from twistchat.ratelimit import TokenBucket
from twistchat.tlsbinding import client_binding
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
    history; live messages have None. C{history} is true for a message the
    server replayed from its history when we joined (or rejoined) rather than
    relayed as it was sent.
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
        """
        A member's message, opened and checked; each message once.

        At the login the server replays the room's recent history (marked
        C{message.history}), then L{history_end}, then live messages. It
        replays its history again at every rejoin after a reconnect: there
        the session passes on only the replayed messages it has not already
        delivered (or sent itself), that is, what was said while it was away,
        and L{history_end} follows as usual. (It remembers the last
        L{REMEMBERED} messages for that.)
        """

    def member_joined(self, member: Member) -> None:
        """Someone entered the room (or, after a reconnect, entered while we were away)."""

    def member_left(self, member: Member) -> None:
        """Someone left the room (or, after a reconnect, left while we were away)."""

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
        """A notice from the server."""

    def message_refused(self, reason: str) -> None:
        """
        The server refused to relay at least one message this session sent
        (it says so for sending too fast); C{reason} is its notice. The server
        does not say which message, nor how many more it drops before it
        disconnects us. By default the notice goes to L{notice}.
        """
        self.notice(reason)

    def reconnecting(self, attempt: int, delay: float, reason: str) -> None:
        """
        The connection was lost (C{attempt} 1) or reconnect attempt
        C{attempt - 1} failed, because of C{reason}; attempt C{attempt} starts in
        C{delay} seconds. Only with C{reconnect}. Each outage numbers its
        attempts from 1. When L{ChatSession.flapping} is above 0 the connection
        keeps dropping soon after each rejoin, and that is why C{delay} is
        longer than the outage's attempt number alone would make it.
        """

    def reconnected(self) -> None:
        """
        Back in the room after a reconnect; L{member_left} and L{member_joined}
        follow for the changes while away, then queued messages are sent.
        """

    def disconnected(self, reason: str | None) -> None:
        """The session ended: C{None} after L{ChatSession.leave}, else why."""


#: A rejoined connection that drops sooner than this many seconds is flapping:
#: it counts as a failed attempt, so a server that welcomes and then drops us
#: is retried ever more slowly (and L{Reconnect.max_attempts} still applies).
#: A connection that lasted longer ends the flapping: the next outage starts
#: again from the first delay.
STABLE_AFTER = 10.0

#: How many messages (sender, session id, counter) a session remembers having
#: delivered to its listener or sent itself, so that the history the server
#: replays at each rejoin shows only what was missed.
REMEMBERED = 4096

#: The client sends at this share of the server's rate, and keeps this many of
#: the burst's tokens spare: the server also counts the client's pongs, pings
#: and who requests, and messages sent evenly can arrive bunched together.
PACE = 0.9
SPARE = 2


def pacing(rate: float, burst: int, now: float) -> TokenBucket:
    """
    The bucket the client sends by, for the server's announced C{rate} and
    C{burst}: a little slower and shallower than the server's own.
    """
    return TokenBucket(rate * PACE, max(1, burst - SPARE), now)


def is_final(failure: Failure, reconnecting: bool = True) -> bool:
    """
    Whether a login failure or a session's end rules out trying again.

    Connection errors (refused, timed out, reset) may pass; a L{TwistchatError}
    is final if its class says so (C{final}: the password or the server's
    identity is wrong, the server broke the protocol, ...), or, at the first
    login (C{reconnecting} false), if its class is retried only while
    reconnecting (C{retry_only_when_reconnecting}: C{name-taken}, which our
    own previous connection may hold until its ping timeout, and C{penalty},
    which someone else behind the same address may have earned and which
    ends). The table is in docs/protocol.md, section 10.1.
    """
    error = failure.value
    if not isinstance(error, TwistchatError):
        return False
    if error.final:
        return True
    return error.retry_only_when_reconnecting and not reconnecting


def describe(failure: Failure) -> str:
    """
    A one-line reason for a failed connection or login.
    """
    error = failure.value
    if isinstance(error, TwistchatError):
        return error.message
    if isinstance(error, DNSLookupError):
        return "host not found"
    if isinstance(error, CancelledError):
        return "timed out"
    if isinstance(error, ConnectError):
        # osError is the errno (an int) when set: the OS's text is the message,
        # e.g. "Connection refused". Without one, the error's own description.
        text = error.args[0] if error.args and error.args[0] else error
        return str(text).strip().rstrip(".") or error.__class__.__name__
    return failure.getErrorMessage()


@dataclass(frozen=True)
class Reconnect:
    """
    How a session reconnects: exponential backoff with jitter (Twisted's
    L{backoffPolicy}): C{initial_delay} doubling (C{factor}) up to C{max_delay},
    plus C{jitter()} seconds, so that clients dropped together do not all come
    back at once.

    @ivar max_attempts: give up after this many failed attempts in a row (None:
        never give up); a rejoined connection that drops within
        L{STABLE_AFTER} seconds counts as a failed attempt.
    @ivar max_queued: messages kept while disconnected; more are refused.
    """

    initial_delay: float = 1.0
    max_delay: float = 60.0
    factor: float = 2.0
    max_attempts: int | None = None
    max_queued: int = 100
    jitter: Callable[[], float] = field(default=random.random, compare=False)

    def delay(self, attempt: int) -> float:
        """
        Seconds to wait before attempt number C{attempt} (1, 2, ...).
        """
        policy = backoffPolicy(self.initial_delay, self.max_delay, self.factor, self.jitter)
        return policy(attempt - 1)


class ChatSession:
    """
    A member's presence in a room, after a successful login; with C{reconnect},
    across as many connections as it takes.
    """

    def __init__(self, protocol: ChatClientProtocol, welcome: wire.Message,
                 listener: ChatListener, clock: Any, connector: _Connector | None = None,
                 reconnect: Reconnect | None = None) -> None:
        self._clock = clock
        self._listener = listener
        self._connector = connector
        self._policy = reconnect if connector is not None else None
        self._outbox: deque[str] = deque()
        self._flush_call: Any = None
        self._who: list[Deferred[list[Member]]] = []
        self._leaving = False
        #: The pending wait or login of a reconnect, while one is under way.
        self._retry: Deferred[Any] | None = None
        self.reconnecting = False
        #: Queued messages dropped, not sent, when the session ended.
        self.unsent = 0
        # When the last rejoin happened.
        self._rejoined_at = float("-inf")
        #: Rejoined connections in a row that dropped within L{STABLE_AFTER}
        #: seconds: each counts as a failed attempt of the outages after it.
        self.flapping = 0
        # What was delivered to the listener or sent, oldest first (bounded).
        self._seen: dict[tuple[str, bytes, int], None] = {}
        self._attach(protocol, welcome)
        #: Fires with the reason (None after leave()) when the session ends.
        self.ended: Deferred[str | None] = Deferred()

    def _attach(self, protocol: ChatClientProtocol, welcome: wire.Message) -> None:
        self._protocol = protocol
        # Keep to the server's message rate: send at once while the bucket has
        # tokens, queue (in order) otherwise, so piped input is not refused.
        rate = welcome.get("rate")
        self._bucket = (
            pacing(rate, welcome.get("burst", 1), self._clock.seconds()) if rate else None
        )
        # The name and room the password handshake proved (the protocol
        # refuses a welcome naming others): never what the server says.
        self.name: str = protocol.name
        self.room: str = protocol.room
        #: Our address as the server sees it.
        self.address: str = welcome["addr"]
        self.max_text: int = welcome.get("max_text", wire.MAX_TEXT_BYTES)
        self._members = {
            m["name"]: Member(m["name"], m["addr"])
            for m in welcome["members"] if m["name"] != self.name
        }

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
        Seal C{text} with the room key and send it to the other members. While
        reconnecting, it is queued and sent after the rejoin.

        @raise ValueError: if the text is longer than the server accepts.
        @raise ProtocolError: if the session has ended, or it is reconnecting
            and L{Reconnect.max_queued} messages already wait.
        """
        if len(text.encode("utf-8")) > self.max_text:
            raise ValueError(f"message longer than {self.max_text} bytes")
        if self._leaving or self.ended.called:
            raise ProtocolError("not connected to a room")
        if self.reconnecting:
            assert self._policy is not None
            if len(self._outbox) >= self._policy.max_queued:
                raise ProtocolError(
                    f"not connected, and {len(self._outbox)} messages already wait "
                    "to be sent"
                )
            self._outbox.append(text)
            return
        if not self.connected:
            raise ProtocolError("not connected to a room")
        self._outbox.append(text)
        self._flush()

    @property
    def pending(self) -> int:
        """
        Messages queued (to keep within the server's rate, or while
        reconnecting), not yet sent.
        """
        return len(self._outbox)

    def _flush(self) -> None:
        self._flush_call = None
        while self._outbox and self.connected:
            if self._bucket is not None and not self._bucket.take(self._clock.seconds()):
                self._flush_call = self._clock.callLater(1 / self._bucket.rate, self._flush)
                return
            sid, n = self._protocol.send_text(self._outbox.popleft())
            self._first_time((self.name, sid, n))
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
        While reconnecting, the session ends at once; messages still queued are
        not sent, and the reason says how many.
        """
        d: Deferred[str | None] = Deferred()

        def relay(result: str | None) -> str | None:
            d.callback(result)
            return result  # self.ended keeps its result for other waiters

        if self.ended.called:
            return succeed(None)
        self.ended.addCallback(relay)
        self._leaving = True
        if self.reconnecting:
            retry, self._retry = self._retry, None
            if retry is not None:
                retry.cancel()
            if not self.ended.called:
                self._end(None)
        elif self._flush_call is None:
            self._flush()  # closes once the queued messages are sent
        return d

    # --- from the protocol -----------------------------------------------------

    def _call(self, method: str, *args: Any) -> None:
        try:
            getattr(self._listener, method)(*args)
        except Exception:
            log.failure("listener {method} raised", method=method)

    def _first_time(self, key: tuple[str, bytes, int]) -> bool:
        """
        Remember a message as delivered or sent; whether it was new.
        """
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > REMEMBERED:
            del self._seen[next(iter(self._seen))]
        return True

    def _message(self, sender: str, text: str, message: wire.Message) -> None:
        if not self._first_time((sender, bytes(message["sid"]), message["n"])):
            # History replayed at a rejoin repeats what we already have; a
            # live message must never repeat (each connection's opener only
            # catches repeats within that connection).
            if not message.get("hist"):
                self._call("message_rejected", sender, Replayed().message)
            return
        self._call(
            "message_received",
            ChatMessage(sender, text, message.get("ts"), message.get("hist", False)),
        )

    def _rejected(self, sender: str, error: Rejected, message: wire.Message) -> None:
        if message.get("hist") and isinstance(error, Undecryptable):
            if self._first_time((sender, bytes(message["sid"]), message["n"])):
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
            elif message["code"] == "rate":
                self._call("message_refused", message["text"])
            else:
                self._call("notice", message["text"])

    def _closed(self, error: TwistchatError | None) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        pending, self._who = self._who, []
        for d in pending:
            d.errback(ProtocolError("disconnected"))
        if self._leaving and error is None:
            self._end(None)
            return
        reason = error.message if error is not None else "the server closed the connection"
        if (self._policy is not None and not self._leaving
                and (error is None or not is_final(Failure(error)))):
            self.reconnecting = True
            self._retry = defer.ensureDeferred(self._reconnect(reason))
            self._retry.addErrback(self._reconnect_failed)
            return
        self._end(reason)

    def _end(self, reason: str | None) -> None:
        self.reconnecting = False
        if self._outbox:
            self.unsent = len(self._outbox)
            unsent = f"{len(self._outbox)} queued message(s) were not sent"
            reason = unsent if reason is None else f"{reason}; {unsent}"
            self._outbox.clear()
        if self._connector is not None:
            self._connector.keyring.forget()
        self._call("disconnected", reason)
        self.ended.callback(reason)

    # --- reconnecting -------------------------------------------------------------

    def _reconnect_failed(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            return  # leave() stopped it
        log.failure("reconnecting failed", failure)
        if not self.ended.called:
            self._end("reconnecting failed")

    async def _reconnect(self, reason: str) -> None:
        """
        Wait, log in again, repeat with growing delays until it works, the
        failure is final, L{Reconnect.max_attempts} is reached or we leave.
        """
        assert self._policy is not None and self._connector is not None
        # Each outage numbers its attempts from 1; a rejoined connection that
        # did not last counts as one more failed attempt for the delay and the
        # limit, so a flapping connection backs off.
        if self._clock.seconds() - self._rejoined_at < STABLE_AFTER:
            self.flapping += 1
        else:
            self.flapping = 0
        attempt = 0
        while True:
            attempt += 1
            limit = self._policy.max_attempts
            if limit is not None and self.flapping + attempt > limit:
                self._end(f"{reason} (gave up after {limit} attempts to reconnect"
                          f"{'; the connection keeps dropping' if self.flapping else ''})")
                return
            delay = self._policy.delay(self.flapping + attempt)
            self._call("reconnecting", attempt, delay, reason)
            if self.ended.called:
                return  # the listener left
            try:
                await task.deferLater(self._clock, delay, lambda: None)
                if self.ended.called:
                    return
                login = self._connector.login()
                protocol, welcome, handler = await login
            except CancelledError:
                return  # leave() ended the session
            except Exception:
                failure = Failure()
                if is_final(failure):
                    self._end(describe(failure))
                    return
                reason = describe(failure)
                continue
            break
        if self.ended.called:
            protocol.transport.loseConnection()  # left while logging in
            return
        self._retry = None
        self.reconnecting = False
        self._rejoined_at = self._clock.seconds()
        before = self._members
        self._attach(protocol, welcome)
        handler.attach(self)
        self._call("reconnected")
        # Report the changes while away one by one, as live presence would be,
        # so that the member list a listener reads is right at each step:
        # arrivals first, so the room never looks empty in between.
        after, self._members = self._members, dict(before)
        for name, member in after.items():
            if name not in before:
                self._members[name] = member
                self._call("member_joined", member)
        for name, member in before.items():
            if name not in after:
                del self._members[name]
                self._call("member_left", member)
        self._flush()


class _Login:
    """
    The protocol's handler: first for the login, then forwarding to the session.
    """

    def __init__(self) -> None:
        self.result: Deferred[tuple[ChatClientProtocol, wire.Message, _Login]] = Deferred()
        self.session: ChatSession | None = None

    def attach(self, session: ChatSession) -> None:
        self.session = session

    def logged_in(self, protocol: ChatClientProtocol, welcome: wire.Message) -> None:
        if not self.result.called:
            self.result.callback((protocol, welcome, self))

    def login_failed(self, failure: Failure) -> None:
        if not self.result.called:
            self.result.errback(failure)

    # The session attaches itself in the callbacks of result, which run inside
    # logged_in: nothing can arrive before it.

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


class _Connector:
    """
    Opens one connection and logs in: for the first login and each reconnect.
    """

    def __init__(self, reactor: Any, host: str, port: int, name: str, room: str,
                 keyring: Keyring, trust: TrustOnFirstUse | CertificateAuthority,
                 timeout: float) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.name = name
        self.room = room
        self.keyring = keyring
        self.trust = trust
        self.timeout = timeout

    def login(self) -> Deferred[tuple[ChatClientProtocol, wire.Message, _Login]]:
        login = _Login()
        factory = Factory.forProtocol(
            partial(
                ChatClientProtocol,
                login,
                self.name,
                self.room,
                self.keyring,
                client_binding,
                self.trust.check,
                self.reactor,
                self.timeout,
            )
        )
        try:
            creator = self.trust.connection_creator(self.host, self.port)
        except TwistchatError:
            return fail()
        endpoint = wrapClientTLS(
            creator, HostnameEndpoint(self.reactor, self.host, self.port, timeout=self.timeout)
        )
        connected: list[ChatClientProtocol] = []
        connecting = endpoint.connect(factory)
        connecting.addCallbacks(connected.append, login.login_failed)

        def done(result: Any) -> Any:
            if not isinstance(result, Failure):
                try:
                    self.trust.remember()
                except TwistchatError:
                    result = Failure()
            if isinstance(result, Failure):
                if result.check(TrustError) and isinstance(self.trust, CertificateAuthority):
                    # Say which CAs were trusted, for a refused certificate.
                    result = Failure(TrustError(
                        f"{result.value.message}; trusted: {self.trust.source}"
                    ))
                if connected:
                    # Connected, but the login failed: drop the connection.
                    connected[0].transport.abortConnection()
                elif not connecting.called:
                    connecting.cancel()
            return result

        def cancel(d: Deferred[Any]) -> None:
            login.login_failed(Failure(CancelledError()))

        result: Deferred[tuple[ChatClientProtocol, wire.Message, _Login]] = Deferred(cancel)
        login.result.addBoth(done).chainDeferred(result)
        return result


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
    timeout: float = HANDSHAKE_TIMEOUT,
    reconnect: Reconnect | None = None,
) -> Deferred[ChatSession]:
    """
    Connect over TLS, prove knowledge of the room password, and join the room.

    The password is kept only until scrypt has run; the session keeps the keys
    derived from it (L{twistchat.client.keyring}).

    @param trust: how to trust the server's certificate; by default its
        fingerprint is pinned on first use in C{~/.config/twistchat/known_hosts}.
    @param timeout: seconds for the TCP connection, and again from the TCP
        connection to the end of the login (TLS and password handshake).
    @param reconnect: reconnect after a connection is lost (see L{Reconnect});
        the first login is never retried.
    @return: a Deferred firing with a L{ChatSession}, or failing with a
        L{TwistchatError} (e.g. L{WrongPassword}, L{ServerNotAuthenticated},
        L{NameTaken}, L{FingerprintChanged}) or a Twisted connection error.
    """
    listener = listener or ChatListener()
    trust = trust or TrustOnFirstUse()
    keyring = Keyring(password, room, thread_deriver(reactor))
    del password
    connector = _Connector(reactor, host, port, name, room, keyring, trust, timeout)

    def logged_in(result: tuple[ChatClientProtocol, wire.Message, _Login]) -> ChatSession:
        protocol, welcome, login = result
        session = ChatSession(protocol, welcome, listener, reactor, connector, reconnect)
        login.attach(session)
        return session

    def failed(failure: Failure) -> Failure:
        keyring.forget()
        return failure

    return connector.login().addCallbacks(logged_in, failed)
