"""
The client side of one connection: the SPAKE2+ handshake as prover, then sealing
outgoing and opening incoming messages.

States and the messages each accepts (the whole transition table):

    TLS       --TLS handshake done (certificate trusted)-->  PARAMS (sends hello)
    PARAMS    --params-->   DERIVING  (scrypt runs in a thread; then sends share)
    VERIFY    --verify-->   WELCOME   (server proved it knows the room; sends confirm)
    WELCOME   --welcome-->  MEMBER    (the login Deferred fires)
    MEMBER    --msg | joined | left | members | notice | ping | pong-->  MEMBER
    any       --error-->    CLOSED    (the server's reason is reported)

The protocol reports to a L{ClientHandler} (the session in L{twistchat.client.api});
it never calls user code from inside a state transition.
"""

from __future__ import annotations

import enum
from typing import Any, Callable, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from twistchat import wire
from twistchat.crypto.kdf import PasswordSecrets, ScryptParams, check_params, content_key
from twistchat.crypto.seal import Opener, Sealer
from twistchat.crypto.spake2plus import Prover, context
from twistchat.errors import (
    FrameTooLong,
    ProtocolError,
    Rejected,
    TwistchatError,
    UnexpectedMessage,
    from_code,
)


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


Deriver = Callable[[str, bytes, ScryptParams], "Deferred[PasswordSecrets]"]


@implementer(IHandshakeListener)
class ChatClientProtocol(Int32StringReceiver):
    """
    One connection to a twistchat server, as a member-to-be named C{name}.
    """

    log = Logger()
    MAX_LENGTH = wire.MAX_FRAME_FROM_SERVER

    def __init__(
        self,
        handler: ClientHandler,
        name: str,
        room: str,
        password: str,
        derive: Deriver,
        channel_binding: Callable[[Any], bytes],
        check_peer: Callable[[Any], None] = lambda transport: None,
    ) -> None:
        self.handler = handler
        self.name = name
        self.room = room
        self._password: str | None = password
        self._derive = derive
        self._channel_binding = channel_binding
        self._check_peer = check_peer
        self.state = State.TLS
        self._prover: Prover | None = None
        self._secrets: PasswordSecrets | None = None
        self._sealer: Sealer | None = None
        self._opener: Opener | None = None
        self._error: TwistchatError | None = None

    # --- connection life cycle -------------------------------------------------

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
        self._password = None
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
        self.transport.abortConnection()

    # --- frames -----------------------------------------------------------------

    def stringReceived(self, frame: bytes) -> None:
        if self.state is State.CLOSED or self._error is not None:
            return
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
            self._error = error
            self.transport.loseConnection()

    def _on_params(self, message: wire.Message) -> None:
        params = ScryptParams(message["n"], message["r"], message["p"])
        check_params(params)
        assert self._password is not None
        self.state = State.DERIVING
        d = self._derive(self._password, message["salt"], params)
        d.addCallbacks(self._derived, self._derive_failed)

    def _derive_failed(self, failure: Failure) -> None:
        self.log.failure("deriving keys from the password failed", failure)
        self._abandon(TwistchatError("could not derive keys from the password"))

    def _derived(self, secrets: PasswordSecrets) -> None:
        if self.state is not State.DERIVING:
            return  # closed meanwhile
        self._secrets = secrets
        self._password = None
        self._prover = Prover(
            context(self._channel_binding(self.transport)),
            self.name.encode("utf-8"),
            self.room.encode("utf-8"),
            secrets.w0,
            secrets.w1,
        )
        self.state = State.VERIFY
        self.sendString(wire.encode("share", X=self._prover.share()))

    def _on_verify(self, message: wire.Message) -> None:
        assert self._prover is not None
        prover, self._prover = self._prover, None
        confirm_p, _ = prover.finish(message["Y"], message["mac"])
        self.state = State.WELCOME
        self.sendString(wire.encode("confirm", mac=confirm_p))

    def _on_welcome(self, message: wire.Message) -> None:
        assert self._secrets is not None
        key = content_key(self._secrets.content_secret, self.room)
        self._secrets = None
        self.name = message["name"]
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

    def send_text(self, text: str) -> None:
        """
        Seal C{text} and send it to the room.

        @raise ValueError: if it is longer than the protocol allows.
        """
        if self.state is not State.MEMBER or self._sealer is None:
            raise ProtocolError("not connected to a room")
        sid, n, ciphertext = self._sealer.seal(text)
        self.sendString(wire.encode("send", sid=sid, n=n, ct=ciphertext))

    def send_message(self, kind: str, **fields: Any) -> None:
        self.sendString(wire.encode(kind, **fields))


def _lost_reason(reason: Failure | None) -> TwistchatError:
    if reason is None:
        return TwistchatError("connection closed", code="closed")
    text = reason.getErrorMessage() or reason.type.__name__
    if "SSL" in reason.type.__name__ or "ssl" in text.lower():
        return TwistchatError(f"TLS failed: {text}", code="tls")
    return TwistchatError(
        f"the server closed the connection during the handshake ({text})", code="closed"
    )
