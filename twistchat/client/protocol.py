"""
The client side of one connection: the SPAKE2+ handshake as prover (announcing
the member's identity key in C{confirm}), then signing and sealing outgoing and
opening incoming messages (L{twistchat.crypto.signed}).

Its life cycle is L{ChatClientProtocol.table}, a L{twistchat.client.table.Table}
that the protocol runs (docs/protocol.md, section 4, prints it). Inputs are the
type of each frame from the server, after the frame itself (C{frame}), and the
events of the connection: TLS up, keys derived, the timer, connection lost. An
C{error} frame, an invalid frame or one the state has no row for aborts the
connection; the state becomes CLOSED when the connection is lost.

The protocol reports to a L{ClientHandler} (L{twistchat.client.connector.Login},
which forwards to the session); it reports only from a row's outputs, once the
row's next state is set.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, Protocol

from service_identity import VerificationError
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from twistchat import wire
from twistchat.client.keyring import Keyring, RoomKeys
from twistchat.client.table import Row, Table, rows
from twistchat.crypto.identity import Identity
from twistchat.crypto.kdf import ScryptParams, check_params
from twistchat.crypto.safety import room_commitment
from twistchat.crypto.seal import Opener, Sealer
from twistchat.crypto.signed import (
    NO_HASH,
    Fields,
    Sent,
    SignedMessage,
    UnsignedMessage,
    open_message,
    seal_signed,
)
from twistchat.crypto.spake2plus import Prover, context
from twistchat.errors import (
    BadPoint,
    ConnectionClosed,
    FrameTooLong,
    ProtocolError,
    Rejected,
    Timeout,
    TLSFailed,
    TrustError,
    TwistchatError,
    UnexpectedMessage,
    from_code,
)
from twistchat.framing import LinearInt32StringReceiver, no_delay
from twistchat.writenow import write_at_once


class State(enum.Enum):
    TLS = "waiting for the TLS handshake"
    PARAMS = "waiting for the password parameters"
    DERIVING = "deriving keys from the password"
    VERIFY = "waiting for the server's proof"
    WELCOME = "waiting for the welcome"
    MEMBER = "member"
    PINGED = "member, waiting for an answer to a ping"
    CLOSED = "closed"

    @property
    def is_member(self) -> bool:
        """
        Whether the login succeeded and the connection is up.
        """
        return self in _MEMBER_STATES


_MEMBER_STATES = frozenset({State.MEMBER, State.PINGED})
#: The states before the welcome.
LOGGING_IN = (State.TLS, State.PARAMS, State.DERIVING, State.VERIFY, State.WELCOME)

#: The inputs other than a frame's type.
TLS_UP = "TLS up"
KEYS_DERIVED = "keys derived"
FRAME = "frame"
TIMER = "timer runs out"
LOST = "connection lost"


class ClientHandler(Protocol):
    """
    What the protocol reports to.
    """

    def logged_in(self, protocol: ChatClientProtocol, welcome: wire.Message) -> None: ...
    def login_failed(self, error: Failure) -> None: ...
    def message(self, sender: str, opened: SignedMessage | UnsignedMessage,
                message: wire.Message) -> None: ...
    def rejected(self, sender: str, error: Rejected, message: wire.Message) -> None: ...
    def event(self, message: wire.Message) -> None: ...
    def closed(self, reason: TwistchatError | None) -> None: ...


#: Seconds the server has, once TCP is up, to complete TLS and the login.
HANDSHAKE_TIMEOUT = 30.0
#: Seconds of silence from the server, once a member, before the client pings
#: it, and seconds it then has to answer (anything it sends counts). A server
#: that stays silent is taken for gone (code "timeout": with --reconnect, the
#: client reconnects), e.g. after a network change left a half-open connection.
KEEPALIVE = (60.0, 20.0)


@implementer(IHandshakeListener)
class ChatClientProtocol(LinearInt32StringReceiver, TimeoutMixin):
    """
    One connection to a twistchat server, as a member-to-be named C{name}.

    @param keyring: gives the room's keys for the salt the server names.
    @param identity: the member's identity key (announced in C{confirm}, signs
        every message); by default a new one, for this connection only.
    @param vouch: a vouch for that key by another device of the name, sent in
        C{confirm} (docs/protocol.md, section 12.8); empty for none.
    @param clock: the reactor (or a L{task.Clock} in tests) for the deadline.
    @param timeout: seconds from the TCP connection to the welcome; a server
        that takes longer (or never answers) is dropped.
    """

    log = Logger()
    MAX_LENGTH = wire.MAX_FRAME_FROM_SERVER

    def __init__(
        self,
        handler: ClientHandler,
        name: str,
        room: str,
        keyring: Keyring,
        channel_binding: Callable[[Any], bytes],
        check_peer: Callable[[Any], None] = lambda transport: None,
        clock: IReactorTime | None = None,
        timeout: float | None = HANDSHAKE_TIMEOUT,
        keepalive: tuple[float, float] | None = KEEPALIVE,
        identity: Identity | None = None,
        vouch: bytes = b"",
    ) -> None:
        self.handler = handler
        self.identity = identity if identity is not None else Identity.generate()
        self.vouch = vouch
        # The chain of messages sent with send_text (the session keeps its own).
        self._chain = (0, NO_HASH)
        self.name = name
        self.room = room
        self._keyring = keyring
        self._clock = clock
        self._timeout = timeout
        self._keepalive = keepalive
        self._channel_binding = channel_binding
        self._check_peer = check_peer
        self.state = State.TLS
        self._prover: Prover | None = None
        self._keys: RoomKeys | None = None
        self._sealer: Sealer | None = None
        self._opener: Opener | None = None
        self.commitment = b""
        self._error: TwistchatError | None = None

    # --- connection life cycle -------------------------------------------------

    def callLater(self, period: float, func: Callable[[], object]) -> Any:
        # TimeoutMixin schedules through this: keep the deadline on our clock.
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = reactor
        return self._clock.callLater(period, func)

    def connectionMade(self) -> None:
        # Under TLS this runs when TCP is up: the deadline covers TLS and login.
        no_delay(self.transport)
        write_at_once(self.transport)
        self.setTimeout(self._timeout)

    def _input(self, input: str, *args: Any) -> None:
        """
        Run C{input} through the table; a peer's mistake aborts the connection.
        """
        try:
            self.table.step(self, input, *args)
        except TwistchatError as error:
            # Abort rather than close: a broken or hostile server need not
            # answer the TLS close (Twisted issue 7926), and nothing more is
            # sent to it.
            self._abandon(error)

    def timeoutConnection(self) -> None:
        self._input(TIMER)

    def handshakeCompleted(self) -> None:
        """
        TLS is up: check the server's certificate, then say hello.
        """
        try:
            self._check_peer(self.transport)
        except TwistchatError as error:
            self._abandon(error)
            return
        self._input(TLS_UP)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.setTimeout(None)
        self._keys = None
        self._prover = None
        if self.hasPartialFrame() and self._error is None:
            self._error = ConnectionClosed(
                "the server closed the connection in the middle of a frame"
            )
        self.table.step(self, LOST, reason)

    def lengthLimitExceeded(self, length: int) -> None:
        self.discardBuffer()
        self._abandon(FrameTooLong(f"the server sent a frame of {length} bytes"))

    def _abandon(self, error: TwistchatError) -> None:
        """
        Give up on this connection because of C{error} (reported when it closes).
        """
        if self._error is None:
            self._error = error
        self.setTimeout(None)
        self.transport.abortConnection()

    def stringReceived(self, frame: bytes) -> None:
        if self.state is State.CLOSED or self._error is not None:
            return
        try:
            self.table.step(self, FRAME)
            message = wire.decode(frame, wire.FROM_SERVER)
            if message.type == "error":
                raise from_code(message["code"], message["text"])
            check = self._checks.get(message.type)
            if check is not None:
                check(self, message)
            if self.table.find(self.state, message.type) is None:
                raise UnexpectedMessage(
                    f"the server sent {message.type!r} while {self.state.value}"
                )
        except TwistchatError as error:
            self._abandon(error)
            return
        self._input(message.type, message)

    # --- checks: a frame that fails one is a protocol error, in any state --------

    def _check_params(self, message: wire.Message) -> None:
        check_params(ScryptParams(message["n"], message["r"], message["p"]))

    def _check_welcome(self, message: wire.Message) -> None:
        if message["name"] != self.name or message["room"] != self.room:
            # The name and room are the identities the password handshake
            # proved. A server that welcomes us under another name would have
            # us seal under it, and our words shown as someone else's.
            raise ProtocolError(
                f"the server welcomed us as {message['name']!r} in room "
                f"{message['room']!r}, not as {self.name!r} in room {self.room!r} "
                "as we logged in: it may be trying to pass our messages off as "
                "someone else's"
            )

    _checks: dict[str, Callable[[ChatClientProtocol, wire.Message], None]] = {
        "params": _check_params,
        "welcome": _check_welcome,
    }

    # --- outputs ----------------------------------------------------------------

    def _send_hello(self) -> None:
        self.sendString(
            wire.encode("hello", v=wire.PROTOCOL_VERSION, room=self.room, name=self.name)
        )

    def _derive(self, message: wire.Message) -> None:
        params = ScryptParams(message["n"], message["r"], message["p"])
        d = self._keyring.keys(message["salt"], params)
        d.addCallbacks(lambda keys: self._input(KEYS_DERIVED, keys), self._derive_failed)

    def _derive_failed(self, failure: Failure) -> None:
        if isinstance(failure.value, TwistchatError):
            self._abandon(failure.value)
            return
        self.log.failure("deriving keys from the password failed", failure)
        self._abandon(TwistchatError("could not derive keys from the password"))

    def _send_share(self, keys: RoomKeys) -> None:
        self._keys = keys
        self._prover = Prover(
            context(self._channel_binding(self.transport)),
            self.name.encode("utf-8"),
            self.room.encode("utf-8"),
            keys.w0,
            keys.w1,
        )
        self.sendString(wire.encode("share", X=self._prover.share()))

    def _ignore(self, *args: Any) -> None:
        pass

    def _send_confirm(self, message: wire.Message) -> None:
        assert self._prover is not None
        prover, self._prover = self._prover, None
        try:
            confirm_p, _ = prover.finish(message["Y"], message["mac"])
        except BadPoint as e:
            raise BadPoint(f"the server's handshake share is invalid: {e.message}") from None
        vouch = {"vouch": self.vouch} if self.vouch else {}
        self.sendString(wire.encode("confirm", mac=confirm_p, key=self.identity.public_key,
                                    **vouch))

    def _become_member(self, message: wire.Message) -> None:
        assert self._keys is not None
        key = self._keys.content_key
        self._keys = None
        self.setTimeout(None if self._keepalive is None else self._keepalive[0])
        self._sealer = Sealer(key, self.room, self.name)
        self._opener = Opener(key, self.room)
        #: A one-way commitment to the room key, for the room's safety code.
        self.commitment = room_commitment(key, self.room)
        self.handler.logged_in(self, message)

    def _deadline_passed(self) -> None:
        self._abandon(Timeout(f"no answer from the server within {self._timeout:g} seconds"))

    def _heard_from_server(self) -> None:
        if self._keepalive is not None:
            self.setTimeout(self._keepalive[0])

    def _ping(self) -> None:
        assert self._keepalive is not None
        self.sendString(wire.encode("ping"))
        self.setTimeout(self._keepalive[1])

    def _ping_unanswered(self) -> None:
        assert self._keepalive is not None
        self._abandon(Timeout(
            f"no answer from the server to a ping within {self._keepalive[1]:g} seconds"
        ))

    def _open(self, message: wire.Message) -> None:
        assert self._opener is not None
        sender = message["from"]
        try:
            opened = open_message(self._opener, sender, message["sid"], message["n"],
                                  message["ct"])
        except Rejected as error:
            self.handler.rejected(sender, error, message)
            return
        self.handler.message(sender, opened, message)

    def _report_event(self, message: wire.Message) -> None:
        self.handler.event(message)

    def _pong(self, message: wire.Message) -> None:
        self.sendString(wire.encode("pong", **message.fields))

    def _report_login_failed(self, reason: Failure | None) -> None:
        self.handler.login_failed(Failure(self._error or _lost_reason(reason)))

    def _report_closed(self, reason: Failure | None) -> None:
        self.handler.closed(self._error)

    def _report_kept_error(self, reason: Failure | None) -> None:
        if self._error is not None:
            self.handler.login_failed(Failure(self._error))

    #: The connection's life cycle. A subclass (or an instance, in a test or
    #: benchmark) may use a variant made with L{Table.replace}.
    table: Table[State] = Table(
        [
            Row(State.TLS, TLS_UP, State.PARAMS, (_send_hello,), "sends hello"),
            Row(State.PARAMS, "params", State.DERIVING, (_derive,),
                "asks the keyring for the keys (scrypt runs in a thread the first time)"),
            Row(State.DERIVING, KEYS_DERIVED, State.VERIFY, (_send_share,), "sends share"),
            Row(State.CLOSED, KEYS_DERIVED, None, (_ignore,), "(closed meanwhile)"),
            Row(State.VERIFY, "verify", State.WELCOME, (_send_confirm,),
                "checks the server's proof, sends confirm"),
            Row(State.WELCOME, "welcome", State.MEMBER, (_become_member,),
                "the login succeeds; starts the keepalive timer"),
            *rows(LOGGING_IN, [FRAME], None, (), "the deadline stands"),
            Row(State.MEMBER, FRAME, None, (_heard_from_server,), "restarts the keepalive timer"),
            Row(State.PINGED, FRAME, State.MEMBER, (_heard_from_server,),
                "(any frame answers) restarts the keepalive timer"),
            Row(State.MEMBER, "msg", None, (_open,), "opens it, reports it or its rejection"),
            *rows([State.MEMBER], ["joined", "left", "members", "notice", "pong", "ack"], None,
                  (_report_event,), "reports it"),
            Row(State.MEMBER, "ping", None, (_pong,), "sends pong"),
            *rows(LOGGING_IN, [TIMER], None, (_deadline_passed,),
                  "aborts: timeout (the login deadline)"),
            Row(State.MEMBER, TIMER, State.PINGED, (_ping,),
                "(server silent KEEPALIVE[0] s) sends ping"),
            Row(State.PINGED, TIMER, None, (_ping_unanswered,),
                "(silent KEEPALIVE[1] s more) aborts: timeout"),
            *rows(LOGGING_IN, [LOST], State.CLOSED, (_report_login_failed,),
                  "reports the login failed, and why"),
            *rows([State.MEMBER, State.PINGED], [LOST], State.CLOSED, (_report_closed,),
                  "reports the end (the server's error, if any)"),
            Row(State.CLOSED, LOST, None, (_report_kept_error,),
                "reports a kept error as a failed login"),
        ],
        footer="any  --error frame, invalid frame, or a type the state has no row for-->"
               "  (stays)  aborts; CLOSED when lost",
    )

    # --- outgoing -----------------------------------------------------------------

    def send_signed(self, fields: Fields) -> Sent:
        """
        Sign C{fields} (the text and its place in our chain), seal the envelope
        and send it to the room.

        @return: the message's session id, counter, ciphertext and hash.
        @raise ValueError: if the text is longer than the protocol allows, or a
            field breaks the envelope format.
        @raise ProtocolError: if not connected to a room.
        """
        if not self.state.is_member or self._sealer is None:
            raise ProtocolError("not connected to a room")
        sent = seal_signed(self._sealer, self.identity, fields)
        self.sendString(wire.encode("send", sid=sent.sid, n=sent.n, ct=sent.ciphertext))
        return sent

    def send_text(self, text: str) -> tuple[bytes, int]:
        """
        Sign and send C{text} in a chain of this connection's own, for
        callers without a session (benchmarks, tests); a session keeps its
        chain across connections and restarts (L{send_signed}).

        @return: the message's session id and counter.
        @raise ValueError: if it is longer than the protocol allows.
        @raise ProtocolError: if not connected to a room.
        """
        seq, prev = self._chain
        sent = self.send_signed(Fields(seq=seq + 1, prev=prev, seen=NO_HASH, text=text))
        self._chain = (seq + 1, sent.hash)
        return sent.sid, sent.n

    def send_message(self, kind: str, **fields: Any) -> None:
        self.sendString(wire.encode(kind, **fields))


def _identity(mismatch: Any) -> str:
    found = getattr(mismatch, "mismatched_id", mismatch)
    for attribute in ("hostname", "ip"):
        value = getattr(found, attribute, None)
        if value is not None:
            return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    return str(found)


def _lost_reason(reason: Failure | None) -> TwistchatError:
    if reason is None:
        return ConnectionClosed()
    if isinstance(reason.value, VerificationError):
        # service_identity refused the host name (--ca). (OpenSSL no longer
        # shows the refused certificate here, so its names cannot be listed.)
        wanted = ", ".join(_identity(e) for e in reason.value.errors) or "this host"
        return TrustError(f"the server's certificate is not valid for {wanted}")
    text = reason.getErrorMessage() or type(reason.value).__name__
    if "certificate verify failed" in text:
        return TrustError(
            "the server's certificate is not signed by a trusted certificate authority "
            "(certificate verify failed)"
        )
    if "SSL" in type(reason.value).__name__ or "ssl" in text.lower():
        return TLSFailed(f"TLS failed: {text}")
    return ConnectionClosed(f"the server closed the connection during the handshake ({text})")
