"""
One exception hierarchy for twistchat: one class per wire error code.

Every error a peer can cause is a L{TwistchatError}. Each class carries, as
class attributes, its short machine readable C{code} (sent on the wire in an
C{error} message), whether it is C{final} for a reconnecting client (trying
again cannot help or must not be tried), whether it is retried only while
reconnecting (C{retry_only_when_reconnecting}: final at the first login), and
the C{default_message} used when none is given. Messages are safe to show to
the peer and to log: they never contain message text, passwords or key
material. They are plain strings, never docstrings, so they survive
C{python -OO}.

No two classes share a code: L{CODES} maps each code to its class, and
L{from_code} rebuilds the error a server reported. docs/protocol.md (section
10.1) lists the same table; a test keeps the two in step.
"""

from __future__ import annotations

#: Every error code and its class (filled in as the classes are defined).
CODES: dict[str, type[TwistchatError]] = {}


def _register(cls: type[TwistchatError]) -> None:
    """
    Record C{cls} in L{CODES}.

    @raise TypeError: if C{cls} does not set its own C{code} and
        C{default_message}, or another class already has its code.
    """
    for attribute in ("code", "default_message"):
        if attribute not in cls.__dict__:
            raise TypeError(f"{cls.__name__} must set its own {attribute}")
    if cls.code in CODES:
        raise TypeError(
            f"{cls.__name__} reuses the code {cls.code!r} of {CODES[cls.code].__name__}"
        )
    CODES[cls.code] = cls


class TwistchatError(Exception):
    """
    Base of every error twistchat raises on purpose, and what a code nobody
    knows is rebuilt as (keeping that code).
    """

    #: The code sent in an C{error} message.
    code = "error"
    #: Whether a reconnecting client gives up on this error instead of trying again.
    final = False
    #: Whether it is retried only on a reconnect: final at the first login.
    retry_only_when_reconnecting = False
    #: The message when none is given.
    default_message = "Base of every error twistchat raises on purpose."

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        _register(cls)

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.default_message)

    @property
    def message(self) -> str:
        return str(self.args[0])


_register(TwistchatError)


# --- wire level -------------------------------------------------------------


class ProtocolError(TwistchatError):
    """
    The peer broke the protocol.
    """

    code = "protocol"
    final = True
    default_message = "The peer broke the protocol."


class FrameTooLong(ProtocolError):
    """
    A frame was longer than the limit (the server's limit for the client's
    frames, or the client's for the server's).
    """

    code = "frame-too-long"
    final = True
    default_message = "A frame was longer than the limit."


class BadMessage(ProtocolError):
    """
    A frame did not decode to a valid message.
    """

    code = "bad-message"
    final = True
    default_message = "A frame did not decode to a valid message."


class UnexpectedMessage(ProtocolError):
    """
    A valid message arrived at a point of the protocol where it is not allowed.
    """

    code = "unexpected-message"
    final = True
    default_message = (
        "A valid message arrived at a point of the protocol where it is not allowed."
    )


class VersionMismatch(ProtocolError):
    """
    The peer speaks a protocol version we do not.
    """

    code = "version"
    final = True
    default_message = "The peer speaks a protocol version we do not."


# --- authentication ---------------------------------------------------------


class AuthFailed(TwistchatError):
    """
    The password handshake failed.
    """

    code = "auth-failed"
    final = True
    default_message = "The password handshake failed."


class WrongPassword(AuthFailed):
    """
    The client's key confirmation was wrong: it does not know the password.
    """

    code = "wrong-password"
    final = True
    default_message = "wrong password"


class ServerNotAuthenticated(WrongPassword):
    """
    The server's key confirmation was wrong: a wrong password, or a server
    that lacks the room's verifier.
    """

    # The client checks the server's key confirmation first (RFC 9383): with a
    # wrong password it fails exactly as it does against a server that lacks the
    # room's verifier, and answering anyway would let an impostor server test
    # password guesses offline. So the two cases share one message.
    code = "server-not-authenticated"
    final = True
    default_message = "wrong password, or the server could not prove it knows this room"


class WeakParameters(AuthFailed):
    """
    The password hashing parameters are outside the allowed range.
    """

    code = "weak-parameters"
    final = True
    default_message = (
        "the server asked for password hashing parameters outside the allowed range"
    )


class SaltChanged(AuthFailed):
    """
    On a reconnect, the server names another password salt or cost than at the
    first login.
    """

    # Raised only inside the client, on a reconnect: it keeps the keys derived
    # for the first salt, not the password (twistchat.client.keyring).
    code = "salt-changed"
    final = True
    default_message = (
        "the server now asks for another password salt than when this session logged in "
        "(was the room password changed?); start the client again with the current password"
    )


class BadPoint(AuthFailed):
    """
    A handshake value is not a valid point on the curve.
    """

    code = "bad-point"
    final = True
    default_message = "a handshake value is not a valid point on the curve"


# --- room level -------------------------------------------------------------


class Refused(TwistchatError):
    """
    The server refused the request.
    """

    code = "refused"
    default_message = "The server refused the request."


class NameInvalid(Refused):
    """
    The member name does not follow the name rules.
    """

    code = "name-invalid"
    final = True
    default_message = "invalid name"


class NameTaken(Refused):
    """
    The member name is in use in the room (perhaps by our own previous
    connection, until its ping timeout).
    """

    code = "name-taken"
    retry_only_when_reconnecting = True
    default_message = "name already taken in this room"


class RoomFull(Refused):
    """
    The room has as many members as it may.
    """

    code = "room-full"
    default_message = "the room is full"


class RoomClosed(Refused):
    """
    The operator removed the room while the member was in it.
    """

    code = "room-closed"
    final = True
    default_message = "the room was closed by the server operator"


class LimitExceeded(Refused):
    """
    A limit was exceeded: too many connections not logged in from the address.
    """

    code = "limit"
    default_message = "a limit was exceeded"


class Busy(LimitExceeded):
    """
    The server has as many connections not logged in as it takes.
    """

    code = "busy"
    default_message = "the server is busy: try again later"


class Penalised(LimitExceeded):
    """
    The address is blocked for a while after repeated failed logins (perhaps
    earned by someone else behind the same address).
    """

    code = "penalty"
    retry_only_when_reconnecting = True
    default_message = "too many failed logins from your address"


class TooFast(LimitExceeded):
    """
    A member kept sending over its rate after being warned.
    """

    code = "rate"
    final = True
    default_message = "disconnected for sending too fast"


class SlowReader(LimitExceeded):
    """
    A member stopped reading and too much was queued for it.
    """

    code = "slow"
    default_message = "disconnected: you stopped reading and too much was queued for you"


# --- the connection ---------------------------------------------------------


class Timeout(TwistchatError):
    """
    The peer did not answer in time: the handshake took too long, or a ping
    was not answered.
    """

    code = "timeout"
    default_message = "no answer in time"


class ServerShutdown(TwistchatError):
    """
    The server is stopping.
    """

    code = "shutdown"
    default_message = "the server is shutting down"


class InternalError(TwistchatError):
    """
    A bug in the server (its traceback goes only to the server's log).
    """

    code = "internal"
    default_message = "internal server error"


class ConnectionClosed(TwistchatError):
    """
    The connection closed during the login or in the middle of a frame.
    """

    code = "closed"
    default_message = "connection closed"


class TLSFailed(TwistchatError):
    """
    The TLS handshake failed.
    """

    code = "tls"
    final = True
    default_message = "TLS failed"


# --- sealed messages --------------------------------------------------------


class Rejected(TwistchatError):
    """
    A sealed message was rejected by the receiver.
    """

    code = "rejected"
    default_message = "A sealed message was rejected by the receiver."


class Undecryptable(Rejected):
    """
    A sealed message could not be opened.
    """

    code = "undecryptable"
    default_message = (
        "the message could not be opened: it was altered, attributed to another sender, "
        "or sealed under another room key"
    )


class Replayed(Rejected):
    """
    A sealed message repeats or precedes one already received from the same
    sender session.
    """

    code = "replayed"
    default_message = (
        "the message repeats or precedes one already received from the same sender session"
    )


# --- trust ------------------------------------------------------------------


class TrustError(TwistchatError):
    """
    The server's certificate could not be trusted.
    """

    code = "trust"
    final = True
    default_message = "The server's certificate could not be trusted."


class FingerprintChanged(TrustError):
    """
    The server's certificate is not the one pinned for its address.
    """

    code = "fingerprint-changed"
    final = True
    default_message = "the server's certificate fingerprint changed since the last connection"


class ConfigError(TwistchatError):
    """
    A configuration file or option is unusable.
    """

    code = "config"
    final = True
    default_message = "A configuration file or option is unusable."


def from_code(code: str, text: str) -> TwistchatError:
    """
    Rebuild the error a peer reported in an C{error} message: an instance of
    the class of C{code}, or for a code we do not know a L{TwistchatError}
    that keeps it (not final).
    """
    cls = CODES.get(code)
    if cls is not None:
        return cls(text)
    error = TwistchatError(text)
    error.code = code
    return error
