"""
The server side of one connection: the SPAKE2+ handshake, then room membership.

The connection runs the table of L{twistchat.server.lifecycle}: every event
(a frame, a timer, the room, the transport) is one L{Input}, and the row for
the connection's L{Stage} and that input says which stage comes next and which
of the C{_NAME} methods below (its outputs) run, in order. In short:

    HELLO    --hello-->    SHARE     (server sends params: salt and scrypt cost)
    SHARE    --share-->    CONFIRM   (server sends verify: its share and MAC)
    SHARE    --share-->    QUEUED    (too many guesses in progress from this address)
    QUEUED   --slot free-->  CONFIRM (server sends verify, in a reactor turn of its own)
    CONFIRM  --confirm-->  MEMBER    (server sends welcome; room hears joined)
    MEMBER   --send | who | ping | pong-->  MEMBER
    any      --error / timeout / lost-->    CLOSED

Anything else is a protocol error: the peer gets an C{error} message naming it
and is disconnected. Nothing a peer sends can raise out of L{stringReceived}:
a peer's mistake becomes a refusal with its code, a bug of ours a logged
traceback and an C{internal} error (L{ChatServerProtocol._guarded}).

What a connection needs from its server is L{ConnectionServices}; this module
imports nothing from the service module.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from twistchat import wire
from twistchat.crypto.kdf import ScryptParams
from twistchat.crypto.spake2plus import VerifierKey, VerifierSession, context
from twistchat.errors import (
    FrameTooLong,
    InternalError,
    NameTaken,
    Penalised,
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
from twistchat.server.lifecycle import FRAMES, TABLE, Input, Stage
from twistchat.server.limits import Limits, source
from twistchat.server.room import Member, Room, Rooms, check_name
from twistchat.server.tls import release_buffers
from twistchat.writenow import write_at_once


class State(enum.Enum):
    """
    The phase of a connection, as peers (in errors) and logs name it; each
    L{Stage} of the life cycle refines one.
    """

    HELLO = "waiting for hello"
    SHARE = "waiting for the password share"
    QUEUED = "waiting for other password checks from this address to finish"
    CONFIRM = "waiting for key confirmation"
    MEMBER = "member"
    CLOSED = "closed"


#: The phase each stage refines.
PHASES: dict[Stage, State] = {stage: State[stage.phase] for stage in Stage}


class ConnectionServices(Protocol):
    """
    What a connection needs from its server (the factory provides it).
    """

    clock: IReactorTime
    limits: Limits
    rooms: Rooms

    def channel_binding(self, transport: Any) -> bytes:
        """
        The TLS exporter value the handshake binds to C{transport}'s channel.
        """

    def decoy(self, room: str) -> tuple[bytes, ScryptParams, VerifierKey]:
        """
        Salt, scrypt cost and a verifier nobody knows for an unknown C{room}.
        """

    def connection_made(self, connection: ChatServerProtocol) -> TwistchatError | None:
        """
        Admit a new connection, or return why it is refused.
        """

    def connection_lost(self, connection: ChatServerProtocol) -> None:
        """
        C{connection} is gone.
        """

    def penalty(self, host: str) -> Penalised | None:
        """
        The refusal for an address serving a failed-login penalty, if it is.
        """

    def guess_slot_free(self, host: str) -> bool:
        """
        Whether C{host} may start one more password check now.
        """

    def take_guess_slot(self, connection: ChatServerProtocol) -> None:
        """
        Take one of the address's password-check slots.
        """

    def queue_guess(self, connection: ChatServerProtocol) -> None:
        """
        Wait for a slot: C{connection.slot_granted} is called when one frees up.
        """

    def guess_unqueued(self, connection: ChatServerProtocol) -> None:
        """
        Give up a place in the queue for a slot.
        """

    def guess_ended(self, connection: ChatServerProtocol) -> None:
        """
        Give back a slot (the next connection waiting gets it).
        """

    def login_failed(self, connection: ChatServerProtocol) -> None:
        """
        Count a wrong password against the connection's address.
        """

    def logged_in(self, connection: ChatServerProtocol) -> None:
        """
        C{connection} no longer counts as a connection not logged in.
        """

    def join(self, room: Room, member: Member) -> None:
        """
        Add C{member} to C{room} and tell the others.
        """

    def leave(self, room: Room, member: Member) -> None:
        """
        Remove C{member} from C{room}, if it is in it, and tell the others.
        """

    def member_joined(self, room: Room, member: Member) -> None:
        """
        C{member} has been welcomed: replay the room's history to it.
        """

    def relay(self, room: Room, sender: Member, frame: bytes, message: wire.Message) -> None:
        """
        Relay one sealed message, already encoded as C{frame}, to the room.
        """


class Refusal(NamedTuple):
    """
    What a refusal says, and whether it is logged as one.
    """

    error: TwistchatError
    quiet: bool = False


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
    factory: ConnectionServices

    def __init__(self) -> None:
        self._stage = Stage.HELLO
        #: The stage the last transition left (its outputs run after the move).
        self._left = Stage.HELLO
        self.name = ""
        self.addr = ""
        #: The identity public key the member announced in its confirm.
        self.key = b""
        #: The vouch for that key it presented in its confirm, or empty.
        self.vouch = b""
        self._peer = ""
        self.room: Room | None = None
        self._share = b""
        self._room_name = ""
        self._spake: VerifierSession | None = None
        self._grace: IDelayedCall | None = None
        self.sent_messages = 0
        self.sent_bytes = 0
        self.host = ""
        self._bucket: TokenBucket | None = None
        self._too_fast = 0
        self._queued = 0

    @property
    def state(self) -> State:
        """
        The phase the connection is in.
        """
        return PHASES[self._stage]

    @property
    def stage(self) -> Stage:
        """
        Where the connection is in its life cycle.
        """
        return self._stage

    @property
    def queued(self) -> int:
        """
        Bytes waiting for a member whose transport is full (0 when it reads).
        """
        return self._queued

    # --- running the table --------------------------------------------------------

    def _input(self, event: Input, arg: Any = None) -> None:
        """
        Feed one input to the life cycle (see L{_guarded}).
        """
        try:
            self._feed(event, arg)
        except Exception as error:
            self._refused(error)

    def _feed(self, event: Input, arg: Any) -> None:
        """
        Run the row for the current stage and C{event}: its check (which may
        raise, or divert to another input's row), the move, then its outputs.
        """
        next, check, outputs = _RUN[self._stage, event]
        while check is not None:
            diverted = check(self, arg)
            if diverted is None:
                break
            event, arg = diverted
            next, check, outputs = _RUN[self._stage, event]
        self._left, self._stage = self._stage, next
        for output in outputs:
            output(self, arg)

    def _guarded(self, step: Callable[..., None], *args: Any) -> None:
        """
        Run one step of the protocol: the peer's mistakes become a refusal,
        our own bugs a logged traceback and an C{internal} error.
        """
        try:
            step(*args)
        except Exception as error:
            self._refused(error)

    def _refused(self, error: Exception) -> None:
        """
        Refuse the peer after C{error}, from inside the C{except} block that
        caught it (so that a bug's traceback can be logged).
        """
        if isinstance(error, TwistchatError):
            self._feed(Input.REFUSE, Refusal(error))
        else:
            # A bug of ours, not the peer's mistake: keep the traceback.
            self.log.failure("internal error on a frame from ({peer})", peer=self._peer)
            self._feed(Input.REFUSE, Refusal(InternalError()))

    # --- events -------------------------------------------------------------------

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:
        # TimeoutMixin uses this; keep every timer on the factory's clock.
        return self.factory.clock.callLater(period, func)

    def connectionMade(self) -> None:
        no_delay(self.transport)
        write_at_once(self.transport)
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
        self._input(Input.LOST)

    def timeoutConnection(self) -> None:
        self._input(Input.TIMEOUT)

    def lengthLimitExceeded(self, length: int) -> None:
        self._input(Input.TOO_LONG, length)

    def stringReceived(self, frame: bytes) -> None:
        self._guarded(self._frame, frame)

    def _frame(self, frame: bytes) -> None:
        if PHASES[self._stage] is State.CLOSED:
            return  # not even decoded
        message = wire.decode(frame, wire.FROM_CLIENT)
        self._feed(FRAMES[message.type], message)

    def fail(self, error: TwistchatError, quiet: bool = False) -> None:
        """
        Tell the peer what went wrong (and log it, unless C{quiet}), then
        close the connection.
        """
        self._input(Input.REFUSE, Refusal(error, quiet))

    def shut_down(self, frame: bytes) -> None:
        """
        The server stops: send C{frame} (its error) and close.
        """
        self._input(Input.SHUTDOWN, frame)

    def slot_granted(self) -> None:
        """
        A queued share got a password-check slot (another check from this
        address ended): it is answered in a reactor turn of its own.
        """
        self._input(Input.SLOT)

    def room_closed(self) -> None:
        """
        The operator removed this connection's room: members are told so;
        logins in progress fail as a wrong password would a moment later, but
        are not counted against their address (the room went, not a guess).
        """
        self._input(Input.ROOM_CLOSED)

    def deliver(self, data: bytes) -> None:
        """
        Queue one length-prefixed frame (from the room) for this member.

        A room delivers each of its frames to every member, so where the
        table's row for a delivery only writes (L{_WRITE_ONLY}: a member
        whose transport takes more) it is run here without the generic
        dispatch; what happens is the row's, as L{_feed} would run it.
        """
        if self._stage in _WRITE_ONLY:
            self._left = self._stage
            try:
                self.transport.write(data)
            except Exception as error:
                self._refused(error)
        else:
            self._input(Input.DELIVER, data)

    # IPushProducer: the transport tells us when its buffer is full or drained.

    def pauseProducing(self) -> None:
        self._input(Input.PAUSE)

    def resumeProducing(self) -> None:
        self._input(Input.RESUME)

    def stopProducing(self) -> None:
        self._input(Input.PAUSE)

    # --- checks: raise the peer's mistake, or divert to another input ----------------

    def _check_hello(self, message: wire.Message) -> None:
        if message["v"] != wire.PROTOCOL_VERSION:
            raise VersionMismatch(
                f"this server speaks protocol version {wire.PROTOCOL_VERSION}, "
                f"not {message['v']}"
            )
        # Checked again here, where a guess starts, so that connections opened
        # before a penalty began cannot be used to go on guessing.
        self._check_penalty(None)
        check_name(message["name"])

    def _check_penalty(self, arg: object) -> None:
        blocked = self.factory.penalty(self.host)
        if blocked is not None:
            raise blocked

    def _check_share(self, message: wire.Message) -> tuple[Input, Any] | None:
        # Answering a share lets the client test one password guess: check the
        # penalty again (hellos may have been sent before it began), and answer
        # only a few shares per address at once; the others wait their turn.
        self._check_penalty(None)
        if self.factory.guess_slot_free(self.host):
            return None
        return Input.SHARE_WAITS, message

    def _check_confirm(self, message: wire.Message) -> tuple[Input, Any] | None:
        spake, self._spake = self._spake, None
        assert spake is not None
        try:
            spake.finish(message["mac"])
            if self.room is None:
                raise AssertionError("decoy handshake confirmed")  # pragma: no cover
        except TwistchatError as error:
            return Input.WRONG_PASSWORD, error.message
        # The password was right: a refusal from here on is not a failed guess.
        self.key = message["key"]
        self.vouch = message.get("vouch", b"")
        limits = self.factory.limits
        if len(self.room) >= limits.max_members:
            return Input.TURNED_AWAY, Refusal(
                RoomFull(f"the room is full ({limits.max_members} members)")
            )
        if self.room.taken(self.name):
            return Input.TURNED_AWAY, Refusal(
                NameTaken(f"the name {self.name!r} is already taken in this room")
            )
        return None

    def _check_rate(self, message: wire.Message) -> tuple[Input, Any] | None:
        """
        Take a token for a message or a request (who, ping, pong): a request
        gets an answer or costs a decode, so a flood of them is held to the
        same rate. Past the rate: a notice, then a disconnect.
        """
        now = self.factory.clock.seconds()
        if self._bucket is None:
            # Made on a member's first message or request, full: one made when
            # it joined would have filled up to the same burst by then.
            limits = self.factory.limits
            self._bucket = TokenBucket(limits.message_rate, limits.message_burst, now)
        if self._bucket.take(now):
            self._too_fast = 0
            return None
        return Input.OVER_RATE, None

    def _check_queue(self, data: bytes) -> tuple[Input, Any] | None:
        if self._queued + len(data) > self.factory.limits.max_send_queue:
            return Input.SLOW, data
        return None

    def _unexpected(self, message: wire.Message) -> None:
        raise UnexpectedMessage(
            f"a {message.type!r} message is not allowed while {self.state.value}"
        )

    def _bug(self, arg: object) -> None:
        raise AssertionError(f"no transition from {self._stage.name} for this input")

    # --- outputs: logging in ------------------------------------------------------

    def _start_handshake(self, message: wire.Message) -> None:
        self.name = message["name"]
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
        self.sendString(
            wire.encode("params", salt=salt, n=params.n, r=params.r, p=params.p)
        )

    def _take_slot(self, message: wire.Message) -> None:
        self.factory.take_guess_slot(self)

    def _queue_share(self, message: wire.Message) -> None:
        self.factory.queue_guess(self)

    def _keep_share(self, message: wire.Message) -> None:
        self._share = message["X"]

    def _schedule_answer(self, arg: object) -> None:
        self.callLater(0, lambda: self._input(Input.ANSWER))

    def _answer_share(self, arg: object) -> None:
        assert self._spake is not None
        share_v, confirm_v = self._spake.respond(self._share)
        self._share = b""
        self.sendString(wire.encode("verify", Y=share_v, mac=confirm_v))

    def _release_slot(self, arg: object) -> None:
        self.factory.guess_ended(self)

    def _leave_queue(self, arg: object) -> None:
        # Closing while waiting for a slot: give up the place in the queue.
        self.factory.guess_unqueued(self)

    def _count_wrong_password(self, reason: str) -> None:
        self._login_failed(reason)

    def _count_unconfirmed(self, arg: object) -> None:
        self._login_failed("wrong password (key confirmation not completed)")

    def _count_abandoned(self, arg: object) -> None:
        self._login_failed("wrong password (the client gave up at key confirmation)")

    def _login_failed(self, reason: str) -> None:
        """
        Count and log one failed password attempt (at most one per
        connection: only rows leaving CONFIRM count one).
        """
        self.factory.login_failed(self)
        self.log.info(
            "({peer}) failed to join room {room!r} as {name}: {reason}",
            event="twistchat.login_failed",
            peer=self._peer,
            room=self._room_name,
            name=self.name,
            reason=reason,
        )

    def _join_room(self, message: wire.Message) -> None:
        assert self.room is not None
        self.factory.join(self.room, self)
        self.factory.logged_in(self)

    def _start_membership(self, message: wire.Message) -> None:
        limits = self.factory.limits
        self.MAX_LENGTH = limits.max_frame
        self.setTimeout(limits.idle_timeout)
        self.transport.registerProducer(self, True)

    def _send_welcome(self, message: wire.Message) -> None:
        assert self.room is not None
        limits = self.factory.limits
        self.sendString(
            wire.encode(
                "welcome",
                name=self.name,
                room=self.room.name,
                addr=self.addr,
                members=self.room.roster(exclude=self),
                max_text=wire.max_text_for(limits.max_frame),
                rate=limits.message_rate,
                burst=limits.message_burst,
            )
        )

    def _replay_history(self, message: wire.Message) -> None:
        assert self.room is not None
        self.factory.member_joined(self.room, self)

    def _release_buffers(self, arg: object) -> None:
        # A member is idle most of its life: its TLS connection need not keep
        # the capacity of the handshake's and the welcome's flights.
        release_buffers(self.transport)

    def _log_connected(self, message: wire.Message) -> None:
        assert self.room is not None
        self.log.info(
            "{name} ({peer}) connected to room {room!r}",
            event="twistchat.login",
            name=self.name,
            peer=self._peer,
            room=self.room.name,
        )

    # --- outputs: membership --------------------------------------------------------

    def _reset_idle(self, arg: object) -> None:
        self.resetTimeout()

    def _end_ping(self, arg: object) -> None:
        self.setTimeout(self.factory.limits.idle_timeout)

    def _send_ping(self, arg: object) -> None:
        self.sendString(wire.encode("ping"))
        self.setTimeout(self.factory.limits.ping_timeout)

    def _relay(self, message: wire.Message) -> None:
        assert self.room is not None
        self.sent_messages += 1
        self.sent_bytes += len(message["ct"])
        # The sealed parts travel on as the base64 text that was just validated.
        self.factory.relay(self.room, self, wire.relayed(self.name, message), message)

    def _send_members(self, message: wire.Message) -> None:
        assert self.room is not None
        self.sendString(wire.encode("members", members=self.room.roster()))

    def _pong(self, message: wire.Message) -> None:
        self.sendString(wire.encode("pong", **message.fields))

    def _over_rate(self, arg: object) -> None:
        limits = self.factory.limits
        self._too_fast += 1
        if self._too_fast == 1:
            self.log.info("{name} ({peer}) is over the message rate",
                          name=self.name, peer=self._peer)
            self.sendString(wire.encode(
                "notice",
                code="rate",
                text=f"too fast: messages are not relayed above {limits.message_rate:g} "
                f"per second (bursts of {limits.message_burst}); slow down or be disconnected",
            ))
        elif self._too_fast > limits.message_burst:
            self.fail(TooFast())

    def _write(self, data: bytes) -> None:
        self.transport.write(data)

    def _count_queued(self, data: bytes) -> None:
        self._queued += len(data)

    def _forget_queue(self, arg: object) -> None:
        self._queued = 0

    def _log_slow(self, data: bytes) -> None:
        self.log.info(
            "{name} ({peer}) is not reading: {size} bytes queued",
            name=self.name, peer=self._peer, size=self._queued,
        )

    def _tell_slow(self, data: bytes) -> None:
        self._tell(SlowReader())

    # --- outputs: refusing and closing ------------------------------------------------

    def _tell(self, error: TwistchatError) -> None:
        # Every error a peer is sent (and so every refusal and disconnection
        # by the server) is this one event: metrics count it by its code.
        self.log.debug("({peer}) sent error {code}", event="twistchat.error_sent",
                       peer=self._peer, code=error.code)
        self.sendString(wire.encode("error", code=error.code, text=error.message))

    def _refuse(self, refusal: Refusal) -> None:
        error = refusal.error
        if not refusal.quiet:
            self.log.info(
                "({peer}) {who}refused: {reason}",
                peer=self._peer,
                who=f"{self.name} " if self.name else "",
                reason=error.message,
            )
        self._tell(error)

    def _log_timed_out(self, arg: object) -> None:
        self.log.info(
            "({peer}) timed out in state {state}", peer=self._peer,
            state=PHASES[self._left].value,
        )

    def _refuse_late_handshake(self, arg: object) -> None:
        self._refuse(Refusal(Timeout(
            f"handshake not completed within "
            f"{self.factory.limits.handshake_timeout:g} seconds"
        )))

    def _log_no_pong(self, arg: object) -> None:
        self.log.info("{name} ({peer}) did not answer a ping", name=self.name, peer=self._peer)

    def _tell_ping_timeout(self, arg: object) -> None:
        limits = self.factory.limits
        self._tell(Timeout(f"no answer to a ping within {limits.ping_timeout:g} seconds"))

    def _refuse_too_long(self, length: int) -> None:
        self.log.info(
            "({peer}) sent a frame of {length} bytes, over the limit of {limit}",
            peer=self._peer,
            length=length,
            limit=self.MAX_LENGTH,
        )
        # Forget the buffered bytes: nothing after an oversize header is read.
        self.discardBuffer()
        self._tell(
            FrameTooLong(f"frame of {length} bytes exceeds the limit of {self.MAX_LENGTH} bytes")
        )

    def _discard_buffer(self, length: int) -> None:
        self.discardBuffer()

    def _tell_wrong_password(self, arg: object) -> None:
        # The client is told no more than "wrong password", whatever failed.
        self._tell(WrongPassword())

    def _tell_room_closed(self, arg: object) -> None:
        self._tell(RoomClosed())

    def _write_frame(self, frame: bytes) -> None:
        self.sendString(frame)

    def _stop_timer(self, arg: object) -> None:
        self.setTimeout(None)

    def _leave_room(self, arg: object) -> None:
        # Leave now, so nobody relays to a closing connection.
        assert self.room is not None
        self.factory.leave(self.room, self)

    def _unregister(self, arg: object) -> None:
        # TLS sends its close alert only once no producer is registered:
        # without this, every member closed by the server hung until the
        # abort after close_grace.
        self.transport.unregisterProducer()

    def _close_transport(self, arg: object) -> None:
        """
        Close cleanly, and abort if the peer does not finish the TLS close soon.
        """
        self.transport.loseConnection()
        if self._grace is None:
            self._grace = self.callLater(
                self.factory.limits.close_grace, lambda: self._input(Input.ABORT)
            )

    def _abort(self, arg: object) -> None:
        self._cancel_abort(arg)
        self.log.info("({peer}) did not finish closing: aborted", peer=self._peer)
        self.transport.abortConnection()

    def _cancel_abort(self, arg: object) -> None:
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        self._grace = None

    def _log_disconnected(self, arg: object) -> None:
        assert self.room is not None
        self.log.info(
            "{name} ({peer}) disconnected from room {room!r} "
            "after {count} messages, {size} bytes",
            event="twistchat.logout",
            name=self.name,
            peer=self._peer,
            room=self.room.name,
            count=self.sent_messages,
            size=self.sent_bytes,
        )

    def _connection_lost(self, arg: object) -> None:
        self._spake = None
        self.factory.connection_lost(self)


def _method(name: str | None) -> Callable[[ChatServerProtocol, Any], Any] | None:
    return None if name is None else getattr(ChatServerProtocol, "_" + name)


#: The table with its names looked up once (a delivery runs a row per member).
_RUN = {
    key: (row.next, _method(row.check), tuple(getattr(ChatServerProtocol, "_" + o)
                                              for o in row.outputs))
    for key, row in TABLE.items()
}

#: The stages whose delivery row stays in the stage, checks nothing and
#: only writes: L{ChatServerProtocol.deliver} runs them directly.
_WRITE_ONLY = frozenset(
    stage for stage in Stage
    if _RUN[stage, Input.DELIVER] == (stage, None, (ChatServerProtocol._write,))
)


__all__ = ["ChatServerProtocol", "ConnectionServices", "PHASES", "State", "format_address"]
