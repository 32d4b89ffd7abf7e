"""
The server side of one connection: the SPAKE2+ handshake, then room membership.

States and the messages each accepts (the whole transition table):

    HELLO    --hello-->    SHARE     (server sends params: salt and scrypt cost)
    SHARE    --share-->    CONFIRM   (server sends verify: its share and MAC)
    SHARE    --share-->    QUEUED    (too many guesses in progress from this address)
    QUEUED   --slot free-->  CONFIRM (server sends verify)
    CONFIRM  --confirm-->  MEMBER    (server sends welcome; room hears joined)
    MEMBER   --send | who | ping | pong-->  MEMBER
    any      --error / timeout / lost-->    CLOSED

Anything else is a protocol error: the peer gets an C{error} message naming it
and is disconnected. Nothing a peer sends can raise out of L{stringReceived}.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from twistchat import wire
from twistchat.crypto.spake2plus import VerifierSession, context
from twistchat.errors import (
    FrameTooLong,
    InternalError,
    RoomClosed,
    RoomFull,
    SlowReader,
    Timeout,
    TooFast,
    TwistchatError,
    UnexpectedMessage,
    VersionMismatch,
    WrongPassword,
)
from twistchat.framing import LinearInt32StringReceiver, no_delay
from twistchat.ratelimit import TokenBucket
from twistchat.server.limits import source
from twistchat.server.room import Room, check_name

if TYPE_CHECKING:
    from twistchat.server.service import ChatServerFactory


class State(enum.Enum):
    HELLO = "waiting for hello"
    SHARE = "waiting for the password share"
    QUEUED = "waiting for other password checks from this address to finish"
    CONFIRM = "waiting for key confirmation"
    MEMBER = "member"
    CLOSED = "closed"


def format_address(address: Any) -> tuple[str, str]:
    """
    Return (log form, wire form) of a peer address: C{("127.0.0.1, 5000")},
    C{"127.0.0.1:5000"}; IPv6 hosts are bracketed in the wire form.
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None:
        return str(address), str(address)
    wire_form = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"{host}, {port}", wire_form


@implementer(IPushProducer)
class ChatServerProtocol(LinearInt32StringReceiver, TimeoutMixin):
    """
    One client connection, from TLS handshake to disconnect.

    Once a member, it is also the producer feeding its own transport: when the
    transport's buffer fills (the member does not read), deliveries are counted
    instead, and past C{max_send_queue} bytes the member is disconnected.
    """

    log = Logger()
    factory: ChatServerFactory

    def __init__(self) -> None:
        self.state = State.HELLO
        self.name = ""
        self.addr = ""
        self._peer = ""
        self.room: Room | None = None
        self.joined = False
        self._attempt_counted = False
        self._guessing = False
        self._share = b""
        self._room_name = ""
        self._spake: VerifierSession | None = None
        self._abort: IDelayedCall | None = None
        self.sent_messages = 0
        self.sent_bytes = 0
        self.host = ""
        self._pinged = False
        self._bucket: TokenBucket | None = None
        self._too_fast = 0
        self._paused = False
        self._queued = 0

    # --- connection life cycle -------------------------------------------------

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:
        # TimeoutMixin uses this; keep every timer on the factory's clock.
        return self.factory.clock.callLater(period, func)

    def connectionMade(self) -> None:
        no_delay(self.transport)
        limits = self.factory.limits
        self.MAX_LENGTH = limits.max_frame_preauth
        peer = self.transport.getPeer()
        # Per-address limits count IPv6 peers by their /64 (see limits.source).
        self.host = source(getattr(peer, "host", str(peer)))
        self._peer, self.addr = format_address(peer)
        self.setTimeout(limits.handshake_timeout)
        refusal = self.factory.connection_made(self)
        if refusal is not None:
            self.fail(refusal)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._closed("wrong password (the client gave up at key confirmation)")
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        self._abort = None
        self._spake = None
        if self.joined and self.room is not None:
            self.factory.leave(self.room, self)
            self.log.info(
                "{name} ({peer}) disconnected from room {room!r} "
                "after {count} messages, {size} bytes",
                name=self.name,
                peer=self._peer,
                room=self.room.name,
                count=self.sent_messages,
                size=self.sent_bytes,
            )
        self.factory.connection_lost(self)

    def timeoutConnection(self) -> None:
        limits = self.factory.limits
        if self.state is State.MEMBER:
            if not self._pinged:
                self._pinged = True
                self.sendString(wire.encode("ping"))
                self.setTimeout(limits.ping_timeout)
                return
            self.log.info("{name} ({peer}) did not answer a ping", name=self.name, peer=self._peer)
            self.fail(
                Timeout(f"no answer to a ping within {limits.ping_timeout:g} seconds"),
                quiet=True,
            )
            return
        self.log.info(
            "({peer}) timed out in state {state}", peer=self._peer, state=self.state.value
        )
        self.fail(
            Timeout(
                f"handshake not completed within "
                f"{self.factory.limits.handshake_timeout:g} seconds"
            )
        )

    def lengthLimitExceeded(self, length: int) -> None:
        if self.state is State.CLOSED:
            self._unprocessed = b""
            return
        self.log.info(
            "({peer}) sent a frame of {length} bytes, over the limit of {limit}",
            peer=self._peer,
            length=length,
            limit=self.MAX_LENGTH,
        )
        # Forget the buffered bytes: nothing after an oversize header is read.
        self._unprocessed = b""
        self.fail(
            FrameTooLong(f"frame of {length} bytes exceeds the limit of {self.MAX_LENGTH} bytes"),
            quiet=True,
        )

    def fail(self, error: TwistchatError, quiet: bool = False) -> None:
        """
        Tell the peer what went wrong, then close the connection.
        """
        if self.state is State.CLOSED:
            return
        if not quiet:
            self.log.info(
                "({peer}) {who}refused: {reason}",
                peer=self._peer,
                who=f"{self.name} " if self.name else "",
                reason=error.message,
            )
        self.sendString(wire.encode("error", code=error.code, text=error.message))
        self.close()

    def close(self) -> None:
        """
        Close cleanly, and abort if the peer does not finish the TLS close soon.
        """
        if self.joined and self.room is not None:
            # Leave now, so nobody relays to a closing connection.
            self.factory.leave(self.room, self)
        self._closed("wrong password (key confirmation not completed)")
        if self.joined:
            # TLS sends its close alert only once no producer is registered:
            # without this, every member closed by the server hung until the
            # abort after close_grace.
            self.transport.unregisterProducer()
        self.transport.loseConnection()
        if self._abort is None:
            self._abort = self.callLater(self.factory.limits.close_grace, self._abort_now)

    def _closed(self, unconfirmed: str) -> None:
        """
        Leave whatever state the connection was in for CLOSED: give up a
        password-check slot or queue place, stop the timer, and count a
        handshake the client abandoned after our key confirmation (it has seen
        it, so it could test one guess against it) as a failed attempt,
        logged with C{unconfirmed}.
        """
        if self.state is State.CONFIRM:
            self._login_failed(unconfirmed)
        self._guess_ended()
        self.state = State.CLOSED
        self.setTimeout(None)

    def _abort_now(self) -> None:
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        self._abort = None
        self.log.info("({peer}) did not finish closing: aborted", peer=self._peer)
        self.transport.abortConnection()

    # --- frames -----------------------------------------------------------------

    def stringReceived(self, frame: bytes) -> None:
        if self.state is State.CLOSED:
            return
        if self.state is State.MEMBER:
            if self._pinged:
                self._pinged = False
                self.setTimeout(self.factory.limits.idle_timeout)
            else:
                self.resetTimeout()
        self._guarded(self._dispatch, frame)

    def _dispatch(self, frame: bytes) -> None:
        message = wire.decode(frame, wire.FROM_CLIENT)
        handler = self._transitions[self.state].get(message.type)
        if handler is None:
            raise UnexpectedMessage(
                f"a {message.type!r} message is not allowed while {self.state.value}"
            )
        handler(self, message)

    def _guarded(self, step: Callable[..., None], *args: Any) -> None:
        """
        Run one step of the protocol: the peer's mistakes become a refusal,
        our own bugs a logged traceback and an C{internal} error.
        """
        try:
            step(*args)
        except TwistchatError as error:
            self.fail(error)
        except Exception:
            # A bug of ours, not the peer's mistake: keep the traceback.
            self.log.failure("internal error on a frame from ({peer})", peer=self._peer)
            self.fail(InternalError())

    # --- handshake ----------------------------------------------------------------

    def _on_hello(self, message: wire.Message) -> None:
        if message["v"] != wire.PROTOCOL_VERSION:
            raise VersionMismatch(
                f"this server speaks protocol version {wire.PROTOCOL_VERSION}, "
                f"not {message['v']}"
            )
        # Checked again here, where a guess starts, so that connections opened
        # before a penalty began cannot be used to go on guessing.
        blocked = self.factory.penalty(self.host)
        if blocked is not None:
            raise blocked
        self.name = check_name(message["name"])
        self._room_name = message["room"]
        self.room = self.factory.rooms.get(self._room_name)
        if self.room is None:
            # An unknown room looks exactly like a known one with a password the
            # client does not have: stable decoy salt, and a handshake that fails.
            salt, params, key = self.factory.decoy(self._room_name)
        else:
            verifier = self.room.verifier
            salt, params, key = verifier.salt, verifier.params, self.room.key
        self._spake = VerifierSession(
            key,
            context(self.factory.channel_binding(self.transport)),
            self.name.encode("ascii"),
            self._room_name.encode("utf-8"),
        )
        self.state = State.SHARE
        self.sendString(
            wire.encode("params", salt=salt, n=params.n, r=params.r, p=params.p)
        )

    def _on_share(self, message: wire.Message) -> None:
        # Answering a share lets the client test one password guess: check the
        # penalty again (hellos may have been sent before it began), and answer
        # only a few shares per address at once; the others wait their turn.
        blocked = self.factory.penalty(self.host)
        if blocked is not None:
            raise blocked
        self._share = message["X"]
        if self.factory.guess_slot(self):
            self._answer_share()
        else:
            self.state = State.QUEUED

    def guess_granted(self) -> None:
        """
        A queued share got a slot (another check from this address ended):
        answer it in a reactor turn of its own.
        """
        self._guessing = True
        self.callLater(0, lambda: self._guarded(self._answer_share))

    def _answer_share(self) -> None:
        if self.state is State.QUEUED:
            blocked = self.factory.penalty(self.host)
            if blocked is not None:
                raise blocked
        elif self.state is not State.SHARE:
            return  # closed while queued
        assert self._spake is not None
        self._guessing = True
        share_v, confirm_v = self._spake.respond(self._share)
        self._share = b""
        self.state = State.CONFIRM
        self.sendString(wire.encode("verify", Y=share_v, mac=confirm_v))

    def _on_confirm(self, message: wire.Message) -> None:
        assert self._spake is not None
        self._guess_ended()
        spake, self._spake = self._spake, None
        try:
            spake.finish(message["mac"])
            if self.room is None:
                raise AssertionError("decoy handshake confirmed")  # pragma: no cover
        except TwistchatError as error:
            self._login_failed(error.message)
            # The client is told no more than "wrong password", whatever failed.
            self.fail(WrongPassword(), quiet=True)
            return
        # The password was right: a refusal from here on is not a failed guess.
        self._attempt_counted = True
        room = self.room
        limits = self.factory.limits
        if len(room) >= limits.max_members:
            raise RoomFull(f"the room is full ({limits.max_members} members)")
        roster = room.roster()
        self.factory.join(room, self)  # NameTaken propagates as a refusal
        self.joined = True
        self.state = State.MEMBER
        self.factory.logged_in(self)
        self.MAX_LENGTH = limits.max_frame
        self.setTimeout(limits.idle_timeout)
        self._bucket = TokenBucket(
            limits.message_rate, limits.message_burst, self.factory.clock.seconds()
        )
        self.transport.registerProducer(self, True)
        self.sendString(
            wire.encode(
                "welcome",
                name=self.name,
                room=room.name,
                addr=self.addr,
                members=roster,
                max_text=wire.max_text_for(limits.max_frame),
                rate=limits.message_rate,
                burst=limits.message_burst,
            )
        )
        self.factory.member_joined(room, self)
        self.log.info(
            "{name} ({peer}) connected to room {room!r}",
            name=self.name,
            peer=self._peer,
            room=room.name,
        )

    def _guess_ended(self) -> None:
        if self.state is State.QUEUED:
            # Closing while waiting for a slot: give up the place in the queue.
            self.factory.guess_unqueued(self)
        self._share = b""
        if self._guessing:
            self._guessing = False
            self.factory.guess_ended(self)

    def room_closed(self) -> None:
        """
        The operator removed this connection's room: members are told so;
        logins in progress fail as a wrong password would a moment later, but
        are not counted against their address (the room went, not a guess).
        """
        if self.joined:
            self.fail(RoomClosed(), quiet=True)
        else:
            self._attempt_counted = True
            self.fail(WrongPassword(), quiet=True)

    def _login_failed(self, reason: str) -> None:
        """
        Count and log one failed password attempt (at most once per connection).
        """
        if self._attempt_counted:
            return
        self._attempt_counted = True
        self.factory.login_failed(self)
        self.log.info(
            "({peer}) failed to join room {room!r} as {name}: {reason}",
            peer=self._peer,
            room=self._room_name,
            name=self.name,
            reason=reason,
        )

    # --- membership -------------------------------------------------------------

    def _on_send(self, message: wire.Message) -> None:
        assert self.room is not None
        if not self._within_rate():
            return
        self.sent_messages += 1
        self.sent_bytes += len(message["ct"])
        # The sealed parts travel on as the base64 text that was just validated.
        raw = message.raw
        self.factory.relay(
            self.room,
            self,
            wire.encode("msg", **{"from": self.name}, sid=raw["sid"], n=raw["n"], ct=raw["ct"]),
            message,
        )

    def _sending_too_fast(self) -> None:
        limits = self.factory.limits
        self._too_fast += 1
        if self._too_fast == 1:
            self.log.info("{name} ({peer}) is over the message rate", name=self.name, peer=self._peer)
            self.sendString(wire.encode(
                "notice",
                code="rate",
                text=f"too fast: messages are not relayed above {limits.message_rate:g} "
                f"per second (bursts of {limits.message_burst}); slow down or be disconnected",
            ))
        elif self._too_fast > limits.message_burst:
            self.fail(TooFast())

    def _within_rate(self) -> bool:
        """
        Take a token for a message or a request (who, ping, pong): a request
        gets an answer or costs a decode, so a flood of them is held to the
        same rate. Past the rate: a notice, then a disconnect.
        """
        assert self._bucket is not None
        if self._bucket.take(self.factory.clock.seconds()):
            self._too_fast = 0
            return True
        self._sending_too_fast()
        return False

    def _on_who(self, message: wire.Message) -> None:
        assert self.room is not None
        if self._within_rate():
            self.sendString(wire.encode("members", members=self.room.roster()))

    def _on_ping(self, message: wire.Message) -> None:
        if self._within_rate():
            self.sendString(wire.encode("pong", **message.fields))

    def _on_pong(self, message: wire.Message) -> None:
        self._within_rate()

    def deliver(self, data: bytes) -> None:
        """
        Queue one length-prefixed frame (from the room) for this member.
        """
        if self.state is State.CLOSED:
            return
        if self._paused:
            self._queued += len(data)
            if self._queued > self.factory.limits.max_send_queue:
                self.log.info(
                    "{name} ({peer}) is not reading: {size} bytes queued",
                    name=self.name, peer=self._peer, size=self._queued,
                )
                self.fail(SlowReader(), quiet=True)
                self._abort_now()
                return
        self.transport.write(data)

    # IPushProducer: the transport tells us when its buffer is full or drained.

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._queued = 0

    def stopProducing(self) -> None:
        self._paused = True

    _transitions: dict[State, dict[str, Callable[[ChatServerProtocol, wire.Message], None]]] = {
        State.HELLO: {"hello": _on_hello},
        State.SHARE: {"share": _on_share},
        State.QUEUED: {},
        State.CONFIRM: {"confirm": _on_confirm},
        State.MEMBER: {
            "send": _on_send,
            "who": _on_who,
            "ping": _on_ping,
            "pong": _on_pong,
        },
        State.CLOSED: {},
    }


__all__ = ["ChatServerProtocol", "State", "format_address"]
