"""
A member's presence in a room (L{ChatSession}), across as many connections as
it takes.

Its life cycle is L{ChatSession.table} (docs/protocol.md, section 4): in the
room (CONNECTED), leaving after the queued messages are sent (LEAVING), and,
with C{reconnect}, waiting before an attempt to log in again (WAITING) and
logging in (LOGGING_IN), until it has ENDED. Inputs are the calls of the
application (C{leave()}), how a connection ended, the end of a wait, and how a
login went. Each outage numbers its attempts from 1; a rejoined connection
that drops within L{STABLE_AFTER} seconds is flapping and counts as a failed
attempt, so the delays grow and L{Reconnect.max_attempts} still applies.

The session also keeps who said what: the member's chain and what it knows
of the others' (L{twistchat.client.transcript.Transcript}, in the profile),
the pinned identity keys (L{twistchat.client.pins.Pins}), and the server's
acknowledgements; leaving waits up to L{ACK_WAIT} seconds for those.

An input that arrives while another's outputs run (the listener calls
C{leave()} from L{ChatListener.reconnecting}, say) runs after them: the
listener is never called from inside a half-made transition.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from typing import Any, ParamSpec, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from twistchat import wire
from twistchat.client.events import ChatListener, ChatMessage, Member
from twistchat.client.pins import Pins, Seen
from twistchat.client.policy import STABLE_AFTER, Reconnect, describe, is_final, pacing
from twistchat.client.protocol import ChatClientProtocol
from twistchat.client.table import Row, Serial, Table, rows
from twistchat.client.transcript import Transcript
from twistchat.crypto.safety import room_safety_code, safety_number
from twistchat.crypto.signed import SignedMessage, UnsignedMessage
from twistchat.crypto.vouch import DEFAULT_DAYS, check_vouch, make_vouch, not_after_days
from twistchat.errors import (
    BadSignature,
    ConfigError,
    ProtocolError,
    Rejected,
    TwistchatError,
    Undecryptable,
)

log = Logger()

P = ParamSpec("P")

#: How many messages (sender, session id, counter) a session remembers having
#: delivered to its listener or sent itself, so that the history the server
#: replays at each rejoin shows only what was missed.
REMEMBERED = 4096
#: Seconds a leaving session waits for the server to acknowledge what it sent.
ACK_WAIT = 5.0
#: Seconds at most between receiving a message (or an acknowledgement) and
#: writing the transcript state file (docs/protocol.md, section 12.5).
SAVE_DELAY = 1.0


class SessionState(enum.Enum):
    CONNECTED = "in the room"
    LEAVING = "leaving: sending what is queued, then closing"
    WAITING = "waiting to reconnect"
    LOGGING_IN = "logging in again"
    ENDED = "ended"


#: The session's inputs.
LEAVE = "leave()"
LOST = "lost (may pass)"
ENDS = "lost (for good)"
WAIT_OVER = "wait over"
GIVE_UP = "attempts used up"
LOGGED_IN = "logged in"
LOGIN_FAILED = "login failed (may pass)"
LOGIN_REFUSED = "login failed (for good)"


class Connector(Protocol):
    """
    What a session needs to log in again (L{twistchat.client.connector}).
    """

    keyring: Any

    def login(self) -> Deferred[Any]:
        """
        Open a connection and log in: fires with (protocol, welcome, handler),
        the handler having C{attach(session)}; cancelling it closes what it
        opened.
        """


class ChatSession:
    """
    A member's presence in a room, after a successful login; with C{reconnect},
    across as many connections as it takes.

    @ivar state: where the session is in its life cycle (L{SessionState}).
    """

    def __init__(self, protocol: ChatClientProtocol, welcome: wire.Message,
                 listener: ChatListener, clock: IReactorTime, connector: Connector | None = None,
                 reconnect: Reconnect | None = None, *, transcript: Transcript | None = None,
                 pins: Pins | None = None, server: str = "") -> None:
        self.state = SessionState.CONNECTED
        #: Our chain and what we keep of the others' (in memory if not given).
        self.transcript = transcript if transcript is not None else Transcript(
            None, protocol.name, protocol.identity.public_key
        )
        self._pins = pins
        self._server = server
        # (name, key) whose key change was reported in this session.
        self._warned: set[tuple[str, bytes]] = set()
        # Keys seen for a name in this session (signatures or presence), when
        # there is no pin file, and further devices vouched for.
        self._keys: dict[str, bytes] = {}
        self._devices: dict[str, set[bytes]] = {}
        self._ack_wait: Any = None
        self._inputs = Serial(self)
        self._clock = clock
        self._listener = listener
        self._connector = connector
        self._policy = reconnect if connector is not None else None
        self._outbox: deque[str] = deque()
        self._flush_call: Any = None
        self._save_call: Any = None
        self._who: list[Deferred[list[Member]]] = []
        # The outage under way: why, its attempt number, and the pending
        # wait (WAITING) or login (LOGGING_IN).
        self._reason = ""
        self._attempt = 0
        self._wait: Any = None
        self._login: Deferred[Any] | None = None
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
            m["name"]: Member(m["name"], m["addr"], m["key"], m.get("vouch", b""))
            for m in welcome["members"] if m["name"] != self.name
        }
        self.transcript.new_connection()
        self._check_keys([(m.name, m.key, m.vouch) for m in self._members.values()])

    # --- identity keys ------------------------------------------------------------------

    @property
    def key(self) -> bytes:
        """
        Our identity public key.
        """
        return self._protocol.identity.public_key

    def _check_key(self, name: str, key: bytes) -> bool:
        """
        Compare C{key} with the one pinned for C{name} (pinning it on first
        sight); report a change once per session. Whether it is the pinned key.
        """
        return self._check_keys([(name, key, b"")])[0] if key else True

    def _check_keys(self, keys: list[tuple[str, bytes, bytes]]) -> list[bool]:
        """
        L{_check_key} for each (name, key, vouch), reading and writing the pins
        once. A key not pinned yet whose vouch (docs/protocol.md, section 12.8)
        verifies under a key pinned for the name is pinned as another device.
        """
        keys = [(name, key, vouch) for name, key, vouch in keys if key]
        try:
            vouchers, refused = self._check_vouches(keys)
            if self._pins is None:
                seen = [self._see_in_memory(name, key, vouchers.get((name, key)))
                        for name, key, _ in keys]
            else:
                seen = self._pins.see_all(self._server, self.room,
                                          [(name, key) for name, key, _ in keys], vouchers)
        except ConfigError as e:
            self._tell(self._listener.notice, e.message)
            return [False] * len(keys)
        result = []
        for (name, key, vouch), how in zip(keys, seen):
            if name == self.name and key == self.key:
                how = Seen.PINNED
            result.append(how is not Seen.CHANGED)
            if how is Seen.DEVICE:
                self._tell(self._listener.member_new_device, name, key, vouchers[name, key])
            elif how is Seen.CHANGED and (name, key) not in self._warned:
                self._warned.add((name, key))
                self._tell(self._listener.member_key_changed, name, self._old_key(name, key), key)
                if vouch:
                    reason = refused.get(
                        (name, key), f"it was made by a key you have not pinned for {name}"
                    )
                    self._tell(self._listener.vouch_refused, name, key, reason)
        return result

    def _pinned_keys(self, name: str) -> tuple[bytes, ...] | None:
        """
        The keys pinned for C{name} (None: none yet).

        @raise ConfigError: the pin file cannot be read.
        """
        if self._pins is None:
            first = self._keys.get(name)
            return None if first is None else (first, *self._devices.get(name, ()))
        pin = self._pins.get(self._server, self.room, name)
        return None if pin is None else pin.keys

    def _check_vouches(self, keys: list[tuple[str, bytes, bytes]]
                       ) -> tuple[dict[tuple[str, bytes], bytes], dict[tuple[str, bytes], str]]:
        """
        Check the vouches that matter: for keys not pinned yet, of names that
        have a pin. Which key made each good one, and why each other was
        refused.

        @raise ConfigError: the pin file cannot be read.
        """
        vouchers: dict[tuple[str, bytes], bytes] = {}
        refused: dict[tuple[str, bytes], str] = {}
        for name, key, vouch in keys:
            pinned = self._pinned_keys(name) if vouch else None
            if pinned is None or key in pinned:
                continue
            try:
                made = check_vouch(vouch, self.room, name, key, self._clock.seconds())
            except BadSignature as e:
                refused[name, key] = e.message
            else:
                vouchers[name, key] = made.voucher
        return vouchers, refused

    def _see_in_memory(self, name: str, key: bytes, voucher: bytes | None) -> Seen:
        """
        L{Pins.see} without a pin file: what this session has seen.
        """
        old = self._keys.setdefault(name, key)
        devices = self._devices.setdefault(name, set())
        if old == key or key in devices:
            return Seen.PINNED
        if voucher is not None and (voucher == old or voucher in devices):
            devices.add(key)
            return Seen.DEVICE
        return Seen.CHANGED

    def _old_key(self, name: str, key: bytes) -> bytes:
        if self._pins is None:
            return self._keys.get(name, key)
        pin = self._pins.get(self._server, self.room, name)
        return pin.key if pin is not None else key

    def _their_key(self, name: str) -> bytes:
        if self._pins is not None:
            pin = self._pins.get(self._server, self.room, name)
            if pin is not None:
                return pin.key
        key = self._keys.get(name)
        if key is None:
            member = self._members.get(name)
            if member is None or not member.key:
                raise KeyError(name)
            key = member.key
        return key

    def devices(self, name: str) -> list[bytes]:
        """
        The keys pinned for C{name}, one per device (docs/protocol.md, section
        12.8), the first pinned first; without a pin, the key it announced.

        @raise KeyError: no key is known for C{name}.
        @raise ConfigError: the pin file cannot be read.
        """
        if name == self.name:
            raise KeyError(name)
        pinned = self._pinned_keys(name)
        return list(pinned) if pinned is not None else [self._their_key(name)]

    def vouch_for(self, key: bytes, days: int = DEFAULT_DAYS) -> bytes:
        """
        A vouch, by our identity key, that C{key} also speaks for our name in
        this room for C{days} days (docs/protocol.md, section 12.8): give it to
        that device (C{twistchat --vouch}, C{connect(..., vouch=...)}).

        @raise BadSignature: C{key} is not an Ed25519 public key.
        @raise ValueError: C{key} is our own key, or C{days} is not between 1
            and L{twistchat.crypto.vouch.MAX_DAYS}.
        """
        not_after = not_after_days(self._clock.seconds(), days)
        return make_vouch(self._protocol.identity, self.room, self.name, key, not_after)

    def in_use(self, name: str) -> bytes | None:
        """
        The key C{name} is present with, if it is present and has announced one.
        """
        member = self._members.get(name)
        return member.key if member is not None and member.key else None

    def verify(self, name: str, key: bytes | None = None) -> str:
        """
        The safety number of us and C{name} (60 digits in groups of 5), the
        same on both sides: compare it in person or over another channel.
        Safety numbers are per device: C{key} is one of L{devices}; by default
        the key pinned for C{name} that it is present with, else the first
        pinned.

        @raise KeyError: no key is known for C{name}, or C{key} is not pinned
            for it.
        """
        if name == self.name:
            raise KeyError(name)
        devices = self.devices(name)
        if key is None:
            present = self.in_use(name)
            key = present if present in devices else self._their_key(name)
        elif key not in devices:
            raise KeyError(name)
        return safety_number(self.name, self.key, name, key)

    def safety(self) -> str:
        """
        The room's safety code (30 digits in groups of 5) over the room's name,
        a commitment to its key and every present member's name and key, as
        the server announced them. Everyone in the room sees the same code
        exactly when they share the room key, the member list and the keys.
        """
        members = [(self.name, self.key)]
        members += [(m.name, m.key) for m in self._members.values() if m.key]
        return room_safety_code(self.room, self._protocol.commitment, members)

    def accept(self, name: str) -> bool:
        """
        Trust C{name}'s new identity key from now on (after checking it, e.g.
        with L{verify}... of the new key, in person).

        @return: whether a changed key was waiting to be accepted.
        @raise ConfigError: the pin file cannot be written.
        """
        if self._pins is None:
            member = self._members.get(name)
            if member is None or not member.key or member.key in (self._pinned_keys(name) or ()):
                return False
            self._keys[name] = member.key
            self._devices.pop(name, None)  # a change replaces every device
            return True
        return self._pins.accept(self._server, self.room, name) is not None

    def changed_key(self, name: str) -> bool:
        """
        Whether C{name}'s key differs from the pinned one, not yet accepted.
        """
        if self._pins is None:
            member = self._members.get(name)
            return member is not None and member.key not in (
                self._pinned_keys(name) or (member.key,))
        pin = self._pins.get(self._server, self.room, name)
        return pin is not None and pin.changed is not None

    @property
    def members(self) -> list[Member]:
        """
        The other members, as of the latest presence notices.
        """
        return list(self._members.values())

    @property
    def protocol(self) -> ChatClientProtocol:
        """
        The current connection's protocol (a new one after each reconnect),
        for diagnostics, benchmarks and tests: its C{transport}, its C{state}.
        """
        return self._protocol

    @property
    def connected(self) -> bool:
        return self._protocol.state.is_member

    @property
    def reconnecting(self) -> bool:
        """
        Whether the session is waiting to reconnect or logging in again.
        """
        return self.state in (SessionState.WAITING, SessionState.LOGGING_IN)

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
        if self.state in (SessionState.LEAVING, SessionState.ENDED):
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
            fields = self.transcript.next_fields(self._outbox.popleft())
            sent = self._protocol.send_signed(fields)
            self.transcript.sent(fields, sent.sid, sent.n, sent.hash)
            self._first_time((self.name, sent.sid, sent.n))
        if self.state is SessionState.LEAVING and self.connected:
            self._close_when_acknowledged()

    def _close_when_acknowledged(self) -> None:
        """
        Leaving: close once the server has acknowledged what we sent, or
        after L{ACK_WAIT} seconds (what is left is then not delivered).
        """
        if not self.transcript.in_flight:
            self._cancel_ack_wait()
            self._protocol.transport.loseConnection()
        elif self._ack_wait is None:
            self._ack_wait = self._clock.callLater(
                ACK_WAIT, self._protocol.transport.loseConnection
            )

    def _cancel_ack_wait(self) -> None:
        wait, self._ack_wait = self._ack_wait, None
        if wait is not None and wait.active():
            wait.cancel()

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
        if self.state is SessionState.ENDED:
            return succeed(None)
        d: Deferred[str | None] = Deferred()

        def relay(result: str | None) -> str | None:
            d.callback(result)
            return result  # self.ended keeps its result for other waiters

        self.ended.addCallback(relay)
        self._inputs.feed(LEAVE)
        return d

    # --- to the listener ----------------------------------------------------------

    def _tell(self, method: Callable[P, object], *args: P.args, **kwargs: P.kwargs) -> None:
        """
        Call one of the listener's methods (L{ChatListener}); log what it raises.
        """
        try:
            method(*args, **kwargs)
        except Exception:
            log.failure("listener {method} raised",
                        method=getattr(method, "__name__", repr(method)))

    # --- from the protocol -----------------------------------------------------

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

    def _message(self, sender: str, opened: SignedMessage | UnsignedMessage,
                  message: wire.Message) -> None:
        if isinstance(opened, SignedMessage):
            self._signed(sender, opened, message)
            return
        if not message.get("hist"):
            # Any member can seal a version 1 message under any name: only
            # history from before identity keys may hold them.
            self._tell(self._listener.message_rejected, sender,
                       "an unsigned message (without an identity key) was refused")
            return
        text = opened.text
        if not self._first_time((sender, bytes(message["sid"]), message["n"])):
            # History replayed at a rejoin repeats what we already have
            # (a live unsigned message was refused above).
            return
        self._tell(
            self._listener.message_received,
            ChatMessage(sender, text, message.get("ts"), True, signed=False, trusted=False),
        )

    def _signed(self, sender: str, opened: SignedMessage, message: wire.Message) -> None:
        history = bool(message.get("hist"))
        pinned = self._check_key(sender, opened.key)
        if pinned and self._pins is None:
            self._keys.setdefault(sender, opened.key)
        verdict = self.transcript.receive(sender, opened, history)
        self._save_soon()
        for alarm in verdict.alarms:
            self._tell(self._listener.transcript_alarm, alarm)
        # Shown once per session: the history replayed at a rejoin repeats
        # what this session showed; a new session (a restart) shows the
        # history it overlaps again, as history.
        first = self._first_time((sender, bytes(message["sid"]), message["n"]))
        if verdict.show or (verdict.overlap and first):
            self._tell(
                self._listener.message_received,
                ChatMessage(sender, opened.text, message.get("ts"), history,
                            trusted=pinned and verdict.trusted),
            )

    def _rejected(self, sender: str, error: Rejected, message: wire.Message) -> None:
        if message.get("hist") and isinstance(error, Undecryptable):
            if self._first_time((sender, bytes(message["sid"]), message["n"])):
                self._tell(self._listener.history_unreadable,
                           ChatMessage(sender, "", message.get("ts"), True))
        else:
            self._tell(self._listener.message_rejected, sender, error.message)

    def _event(self, message: wire.Message) -> None:
        if message.type == "ack":
            self.transcript.acked(bytes(message["sid"]), message["n"])
            self._save_soon()
            if self.state is SessionState.LEAVING and not self._outbox and self.connected:
                self._close_when_acknowledged()
        elif message.type == "joined":
            member = Member(message["name"], message["addr"], message["key"],
                            message.get("vouch", b""))
            self._members[member.name] = member
            self._tell(self._listener.member_joined, member)
            self._check_keys([(member.name, member.key, member.vouch)])
        elif message.type == "left":
            gone = self._members.pop(message["name"], None)
            member = gone or Member(
                message["name"], message["addr"]
            )
            self._tell(self._listener.member_left, member)
        elif message.type == "members":
            everyone = [Member(m["name"], m["addr"], m["key"], m.get("vouch", b""))
                        for m in message["members"]]
            self._members = {m.name: m for m in everyone if m.name != self.name}
            # (What the server says about our own key is not checked: our
            # messages carry it, signed.)
            self._check_keys([(m.name, m.key, m.vouch) for m in everyone if m.name != self.name])
            if self._who:
                self._who.pop(0).callback(everyone)
        elif message.type == "notice":
            if message["code"] == "history":
                self._tell(self._listener.history_end)
            elif message["code"] == "rate":
                self._tell(self._listener.message_refused, message["text"])
            else:
                self._tell(self._listener.notice, message["text"])

    def _closed(self, error: TwistchatError | None) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self._cancel_ack_wait()
        pending, self._who = self._who, []
        for d in pending:
            d.errback(ProtocolError("disconnected"))
        try:
            undelivered = self.transcript.connection_lost()
        except ConfigError as e:
            undelivered = 0
            self._tell(self._listener.notice, e.message)
        self._save_now()
        if undelivered:
            self._tell(self._listener.message_undelivered, undelivered)
        if self._policy is not None and (error is None or not is_final(Failure(error))):
            self._inputs.feed(LOST, error)
        else:
            self._inputs.feed(ENDS, error)

    # --- outputs --------------------------------------------------------------------

    def _send_then_close(self, *args: Any) -> None:
        if self._flush_call is None:
            self._flush()  # closes once the queued messages are sent

    def _save_soon(self) -> None:
        """
        Write the transcript state within L{SAVE_DELAY} seconds, not for each
        message received (what a crash loses: docs/protocol.md, section 12.5).
        """
        if self.transcript.dirty and self._save_call is None:
            self._save_call = self._clock.callLater(SAVE_DELAY, self._save_now)

    def _save_now(self) -> None:
        """
        Write the transcript state if it changed; cancel a pending write.
        """
        call, self._save_call = self._save_call, None
        if call is not None and call.active():
            call.cancel()
        try:
            self.transcript.flush()
        except ConfigError as e:
            self._tell(self._listener.notice, e.message)

    def _end(self, reason: str | None) -> None:
        self._save_now()
        if self._outbox:
            self.unsent = len(self._outbox)
            unsent = f"{len(self._outbox)} queued message(s) were not sent"
            reason = unsent if reason is None else f"{reason}; {unsent}"
            self._outbox.clear()
        if self._connector is not None:
            self._connector.keyring.forget()
        self._tell(self._listener.disconnected, reason)
        self.ended.callback(reason)

    def _end_lost(self, error: TwistchatError | None) -> None:
        self._end(error.message if error is not None else "the server closed the connection")

    def _end_left(self, error: TwistchatError | None) -> None:
        self._end(error.message if error is not None else None)

    def _end_left_now(self) -> None:
        self._end(None)

    def _count_outage(self, error: TwistchatError | None) -> None:
        self._reason = error.message if error is not None else "the server closed the connection"
        # Each outage numbers its attempts from 1; a rejoined connection that
        # did not last counts as one more failed attempt for the delay and the
        # limit, so a flapping connection backs off.
        if self._clock.seconds() - self._rejoined_at < STABLE_AFTER:
            self.flapping += 1
        else:
            self.flapping = 0
        self._attempt = 0

    def _note_failure(self, failure: Failure) -> None:
        self._login = None
        self._reason = describe(failure)

    def _next_attempt(self, *args: Any) -> None:
        assert self._policy is not None
        self._attempt += 1
        limit = self._policy.max_attempts
        if limit is not None and self.flapping + self._attempt > limit:
            self._inputs.feed(GIVE_UP)
            return
        delay = self._policy.delay(self.flapping + self._attempt)
        self._wait = self._clock.callLater(delay, self._inputs.feed, WAIT_OVER)
        self._tell(self._listener.reconnecting, self._attempt, delay, self._reason)

    def _give_up(self) -> None:
        assert self._policy is not None
        self._end(f"{self._reason} (gave up after {self._policy.max_attempts} attempts to "
                  f"reconnect{'; the connection keeps dropping' if self.flapping else ''})")

    def _cancel_wait(self) -> None:
        wait, self._wait = self._wait, None
        if wait is not None and wait.active():
            wait.cancel()

    def _log_in(self) -> None:
        assert self._connector is not None
        self._wait = None
        login = self._login = self._connector.login()

        def failed(failure: Failure) -> None:
            self._inputs.feed(LOGIN_REFUSED if is_final(failure) else LOGIN_FAILED, failure)

        login.addCallbacks(lambda result: self._inputs.feed(LOGGED_IN, result), failed)

    def _cancel_login(self) -> None:
        login, self._login = self._login, None
        if login is not None:
            login.cancel()  # the connector closes what it opened

    def _end_refused(self, failure: Failure) -> None:
        self._login = None
        self._end(describe(failure))

    def _rejoin(self, result: tuple[ChatClientProtocol, wire.Message, Any]) -> None:
        protocol, welcome, handler = result
        self._login = None
        self._rejoined_at = self._clock.seconds()
        before = self._members
        self._attach(protocol, welcome)
        handler.attach(self)
        self._tell(self._listener.reconnected)
        # Report the changes while away one by one, as live presence would be,
        # so that the member list a listener reads is right at each step:
        # arrivals first, so the room never looks empty in between.
        after, self._members = self._members, dict(before)
        for name, member in after.items():
            if name not in before:
                self._members[name] = member
                self._tell(self._listener.member_joined, member)
        for name, member in before.items():
            if name not in after:
                del self._members[name]
                self._tell(self._listener.member_left, member)
        self._flush()

    def _close_late_login(self, result: tuple[ChatClientProtocol, wire.Message, Any]) -> None:
        result[0].transport.loseConnection()  # left while logging in

    def _nothing(self, *args: Any) -> None:
        pass

    #: The session's life cycle. States without C{reconnect} are CONNECTED,
    #: LEAVING and ENDED: every end of a connection is then "for good".
    table: Table[SessionState] = Table([
        Row(SessionState.CONNECTED, LEAVE, SessionState.LEAVING, (_send_then_close,),
            "sends what is queued (within the rate), then closes"),
        Row(SessionState.LEAVING, LEAVE, None, (_send_then_close,), "(as above)"),
        Row(SessionState.CONNECTED, LOST, SessionState.WAITING,
            (_count_outage, _next_attempt),
            "counts the outage (flapping or not), then as below"),
        Row(SessionState.CONNECTED, ENDS, SessionState.ENDED, (_end_lost,),
            "reports disconnected(why)"),
        *rows([SessionState.LEAVING], [LOST, ENDS], SessionState.ENDED, (_end_left,),
              "reports disconnected(None), or why if the connection failed"),
        Row(SessionState.WAITING, WAIT_OVER, SessionState.LOGGING_IN, (_log_in,), "logs in"),
        Row(SessionState.WAITING, GIVE_UP, SessionState.ENDED, (_give_up,),
            "reports disconnected(why; gave up after max_attempts)"),
        Row(SessionState.WAITING, LEAVE, SessionState.ENDED, (_cancel_wait, _end_left_now),
            "stops waiting; reports disconnected(None, or how many were not sent)"),
        Row(SessionState.LOGGING_IN, LOGGED_IN, SessionState.CONNECTED, (_rejoin,),
            "reports reconnected, who came and went, then sends what is queued"),
        Row(SessionState.LOGGING_IN, LOGIN_FAILED, SessionState.WAITING,
            (_note_failure, _next_attempt),
            "next attempt: gives up past max_attempts, else waits and reports reconnecting"),
        Row(SessionState.LOGGING_IN, LOGIN_REFUSED, SessionState.ENDED, (_end_refused,),
            "reports disconnected(why)"),
        Row(SessionState.LOGGING_IN, LEAVE, SessionState.ENDED, (_cancel_login, _end_left_now),
            "cancels the login; reports disconnected(None, or how many were not sent)"),
        Row(SessionState.ENDED, LOGGED_IN, None, (_close_late_login,),
            "closes the new connection"),
        *rows([SessionState.ENDED], [LOGIN_FAILED, LOGIN_REFUSED], None, (_nothing,)),
    ])
