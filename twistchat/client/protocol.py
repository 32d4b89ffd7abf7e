"""
The client side of one connection: the SPAKE2+ handshake as prover, then sealing
outgoing and opening incoming messages.

States and the messages each accepts (the whole transition table):

    TLS       --TLS handshake done (certificate trusted)-->  PARAMS (sends hello)
    PARAMS    --params-->   DERIVING  (keys from the keyring: scrypt runs in a
                                       thread the first time; then sends share)
    VERIFY    --verify-->   WELCOME   (server proved it knows the room; sends confirm)
    WELCOME   --welcome-->  MEMBER    (the login Deferred fires; a welcome that
                                       names another name or room than the ones
                                       proved is refused as a protocol error)
    MEMBER    --msg | joined | left | members | notice | ping | pong-->  MEMBER
    MEMBER    --server silent for KEEPALIVE[0] s-->  MEMBER (sends ping)
    MEMBER    --and silent for KEEPALIVE[1] s more-->  CLOSED (aborted, "timeout")
    any       --error-->    CLOSED    (the server's reason is reported)
    any       --invalid, oversize or out-of-place frame-->  CLOSED  (aborted)
    before MEMBER  --handshake deadline passes-->  CLOSED  (aborted)

The protocol reports to a L{ClientHandler} (the session in L{twistchat.client.api});
it never calls user code from inside a state transition.
"""

from __future__ import annotations

import enum
from typing import Any, Callable, Protocol

from service_identity import VerificationError
from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from twistchat import wire
from twistchat.client.keyring import Keyring, RoomKeys
from twistchat.crypto.kdf import ScryptParams, check_params
from twistchat.crypto.seal import Opener, Sealer
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


class State(enum.Enum):
    TLS = "waiting for the TLS handshake"
    PARAMS = "waiting for the password parameters"
    DERIVING = "deriving keys from the password"
    VERIFY = "waiting for the server's proof"
    WELCOME = "waiting for the welcome"
    MEMBER = "member"
    CLOSED = "closed"


class ClientHandler(Protocol):
    """
    What the protocol reports to.
    """

    def logged_in(self, protocol: ChatClientProtocol, welcome: wire.Message) -> None: ...
    def login_failed(self, error: Failure) -> None: ...
    def message(self, sender: str, text: str, message: wire.Message) -> None: ...
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
        clock: Any = None,
        timeout: float | None = HANDSHAKE_TIMEOUT,
        keepalive: tuple[float, float] | None = KEEPALIVE,
    ) -> None:
        self.handler = handler
        self.name = name
        self.room = room
        self._keyring = keyring
        self._clock = clock
        self._timeout = timeout
        self._keepalive = keepalive
        self._pinged = False
        self._channel_binding = channel_binding
        self._check_peer = check_peer
        self.state = State.TLS
        self._prover: Prover | None = None
        self._keys: RoomKeys | None = None
        self._sealer: Sealer | None = None
        self._opener: Opener | None = None
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
        self.setTimeout(self._timeout)

    def timeoutConnection(self) -> None:
        if self.state is State.MEMBER and self._keepalive is not None:
            idle, answer = self._keepalive
            if not self._pinged:
                self._pinged = True
                self.sendString(wire.encode("ping"))
                self.setTimeout(answer)
                return
            self._abandon(Timeout(
                f"no answer from the server to a ping within {answer:g} seconds"
            ))
            return
        self._abandon(Timeout(f"no answer from the server within {self._timeout:g} seconds"))

    def handshakeCompleted(self) -> None:
        """
        TLS is up: check the server's certificate, then say hello.
        """
        try:
            self._check_peer(self.transport)
        except TwistchatError as error:
            self._abandon(error)
            return
        self.state = State.PARAMS
        self.sendString(
            wire.encode("hello", v=wire.PROTOCOL_VERSION, room=self.room, name=self.name)
        )

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        was = self.state
        self.state = State.CLOSED
        self.setTimeout(None)
        self._keys = None
        self._prover = None
        if (self._unprocessed or self._needed) and self._error is None:
            self._error = ConnectionClosed(
                "the server closed the connection in the middle of a frame"
            )
        if was is State.MEMBER:
            self.handler.closed(self._error)
        elif was is not State.CLOSED or self._error is not None:
            error = self._error or _lost_reason(reason)
            self.handler.login_failed(Failure(error))

    def lengthLimitExceeded(self, length: int) -> None:
        self._unprocessed = b""
        self._abandon(FrameTooLong(f"the server sent a frame of {length} bytes"))

    def _abandon(self, error: TwistchatError) -> None:
        """
        Give up on this connection because of C{error} (reported when it closes).
        """
        if self._error is None:
            self._error = error
        self.setTimeout(None)
        self.transport.abortConnection()

    # --- frames -----------------------------------------------------------------

    def stringReceived(self, frame: bytes) -> None:
        if self.state is State.CLOSED or self._error is not None:
            return
        if self.state is State.MEMBER and self._keepalive is not None:
            # Any frame shows the server is there.
            self._pinged = False
            self.setTimeout(self._keepalive[0])
        try:
            message = wire.decode(frame, wire.FROM_SERVER)
            if message.type == "error":
                raise from_code(message["code"], message["text"])
            handler = self._transitions[self.state].get(message.type)
            if handler is None:
                raise UnexpectedMessage(
                    f"the server sent {message.type!r} while {self.state.value}"
                )
            handler(self, message)
        except TwistchatError as error:
            # Abort rather than close: a broken or hostile server need not
            # answer the TLS close (Twisted issue 7926), and nothing more is
            # sent to it.
            self._abandon(error)

    def _on_params(self, message: wire.Message) -> None:
        params = ScryptParams(message["n"], message["r"], message["p"])
        check_params(params)
        self.state = State.DERIVING
        d = self._keyring.keys(message["salt"], params)
        d.addCallbacks(self._derived, self._derive_failed)

    def _derive_failed(self, failure: Failure) -> None:
        if failure.check(TwistchatError):
            self._abandon(failure.value)
            return
        self.log.failure("deriving keys from the password failed", failure)
        self._abandon(TwistchatError("could not derive keys from the password"))

    def _derived(self, keys: RoomKeys) -> None:
        if self.state is not State.DERIVING:
            return  # closed meanwhile
        self._keys = keys
        self._prover = Prover(
            context(self._channel_binding(self.transport)),
            self.name.encode("utf-8"),
            self.room.encode("utf-8"),
            keys.w0,
            keys.w1,
        )
        self.state = State.VERIFY
        self.sendString(wire.encode("share", X=self._prover.share()))

    def _on_verify(self, message: wire.Message) -> None:
        assert self._prover is not None
        prover, self._prover = self._prover, None
        try:
            confirm_p, _ = prover.finish(message["Y"], message["mac"])
        except BadPoint as e:
            raise BadPoint(f"the server's handshake share is invalid: {e.message}") from None
        self.state = State.WELCOME
        self.sendString(wire.encode("confirm", mac=confirm_p))

    def _on_welcome(self, message: wire.Message) -> None:
        assert self._keys is not None
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
        key = self._keys.content_key
        self._keys = None
        self.setTimeout(None if self._keepalive is None else self._keepalive[0])
        self._sealer = Sealer(key, self.room, self.name)
        self._opener = Opener(key, self.room)
        self.state = State.MEMBER
        self.handler.logged_in(self, message)

    def _on_msg(self, message: wire.Message) -> None:
        assert self._opener is not None
        sender = message["from"]
        try:
            text = self._opener.open(sender, message["sid"], message["n"], message["ct"])
        except Rejected as error:
            self.handler.rejected(sender, error, message)
            return
        self.handler.message(sender, text, message)

    def _on_event(self, message: wire.Message) -> None:
        self.handler.event(message)

    def _on_ping(self, message: wire.Message) -> None:
        self.sendString(wire.encode("pong", **message.fields))

    _transitions: dict[State, dict[str, Callable[[ChatClientProtocol, wire.Message], None]]] = {
        State.TLS: {},
        State.PARAMS: {"params": _on_params},
        State.DERIVING: {},
        State.VERIFY: {"verify": _on_verify},
        State.WELCOME: {"welcome": _on_welcome},
        State.MEMBER: {
            "msg": _on_msg,
            "joined": _on_event,
            "left": _on_event,
            "members": _on_event,
            "notice": _on_event,
            "pong": _on_event,
            "ping": _on_ping,
        },
        State.CLOSED: {},
    }

    # --- outgoing -----------------------------------------------------------------

    def send_text(self, text: str) -> tuple[bytes, int]:
        """
        Seal C{text} and send it to the room.

        @return: the message's session id and counter.

        @raise ValueError: if it is longer than the protocol allows.
        """
        if self.state is not State.MEMBER or self._sealer is None:
            raise ProtocolError("not connected to a room")
        sid, n, ciphertext = self._sealer.seal(text)
        self.sendString(wire.encode("send", sid=sid, n=n, ct=ciphertext))
        return sid, n

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
    if reason.check(VerificationError):
        # service_identity refused the host name (--ca). (OpenSSL no longer
        # shows the refused certificate here, so its names cannot be listed.)
        wanted = ", ".join(_identity(e) for e in reason.value.errors) or "this host"
        return TrustError(f"the server's certificate is not valid for {wanted}")
    text = reason.getErrorMessage() or reason.type.__name__
    if "certificate verify failed" in text:
        return TrustError(
            "the server's certificate is not signed by a trusted certificate authority "
            "(certificate verify failed)"
        )
    if "SSL" in reason.type.__name__ or "ssl" in text.lower():
        return TLSFailed(f"TLS failed: {text}")
    return ConnectionClosed(f"the server closed the connection during the handshake ({text})")
