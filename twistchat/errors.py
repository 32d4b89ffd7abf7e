"""
One exception hierarchy for twistchat.

Every error a peer can cause is a L{TwistchatError}. Each carries a short machine
readable C{code} (sent on the wire in an C{error} message) and a human readable
message that is safe to show to the peer and to log: it never contains message
text, passwords or key material.
"""


class TwistchatError(Exception):
    """
    Base of every error twistchat raises on purpose.
    """

    code = "error"

    def __init__(self, message: str = "", code: str | None = None) -> None:
        super().__init__(message or self.__class__.__doc__.strip().splitlines()[0])
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0])


# --- wire level -------------------------------------------------------------


class ProtocolError(TwistchatError):
    """
    The peer broke the protocol.
    """

    code = "protocol"


class FrameTooLong(ProtocolError):
    """
    A frame was longer than the limit.
    """

    code = "frame-too-long"


class BadMessage(ProtocolError):
    """
    A frame did not decode to a valid message.
    """

    code = "bad-message"


class UnexpectedMessage(ProtocolError):
    """
    A valid message arrived at a point of the protocol where it is not allowed.
    """

    code = "unexpected-message"


class VersionMismatch(ProtocolError):
    """
    The peer speaks a protocol version we do not.
    """

    code = "version"


# --- authentication ---------------------------------------------------------


class AuthFailed(TwistchatError):
    """
    The password handshake failed.
    """

    code = "auth-failed"


class WrongPassword(AuthFailed):
    """
    wrong password
    """

    code = "wrong-password"


class ServerNotAuthenticated(WrongPassword):
    """
    wrong password, or the server could not prove it knows this room
    """

    # The client checks the server's key confirmation first (RFC 9383): with a
    # wrong password it fails exactly as it does against a server that lacks the
    # room's verifier, and answering anyway would let an impostor server test
    # password guesses offline. So the two cases share one message.
    code = "server-not-authenticated"


class WeakParameters(AuthFailed):
    """
    the server asked for password hashing parameters outside the allowed range
    """

    code = "weak-parameters"


class SaltChanged(AuthFailed):
    """
    the server now asks for another password salt than when this session logged in (was the room password changed?); start the client again with the current password
    """

    # Raised only inside the client, on a reconnect: it keeps the keys derived
    # for the first salt, not the password (twistchat.client.keyring).
    code = "salt-changed"


class BadPoint(AuthFailed):
    """
    a handshake value is not a valid point on the curve
    """

    code = "bad-point"


# --- room level -------------------------------------------------------------


class Refused(TwistchatError):
    """
    The server refused the request.
    """

    code = "refused"


class NameInvalid(Refused):
    """
    invalid name
    """

    code = "name-invalid"


class NameTaken(Refused):
    """
    name already taken in this room
    """

    code = "name-taken"


class RoomFull(Refused):
    """
    the room is full
    """

    code = "room-full"


class LimitExceeded(Refused):
    """
    a limit was exceeded
    """

    code = "limit"


# --- sealed messages --------------------------------------------------------


class Rejected(TwistchatError):
    """
    A sealed message was rejected by the receiver.
    """

    code = "rejected"


class Undecryptable(Rejected):
    """
    the message could not be opened: it was altered, attributed to another sender, or sealed under another room key
    """

    code = "undecryptable"


class Replayed(Rejected):
    """
    the message repeats or precedes one already received from the same sender session
    """

    code = "replayed"


# --- trust ------------------------------------------------------------------


class TrustError(TwistchatError):
    """
    The server's certificate could not be trusted.
    """

    code = "trust"


class FingerprintChanged(TrustError):
    """
    the server's certificate fingerprint changed since the last connection
    """

    code = "fingerprint-changed"


class ConfigError(TwistchatError):
    """
    A configuration file or option is unusable.
    """

    code = "config"


def _subclasses(cls: type[TwistchatError]) -> list[type[TwistchatError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found.extend(_subclasses(sub))
    return found


def from_code(code: str, text: str) -> TwistchatError:
    """
    Rebuild the error a peer reported in an C{error} message, by its code.
    """
    for cls in _subclasses(TwistchatError):
        if cls.code == code:
            return cls(text)
    return TwistchatError(text, code=code)


# --- member identity (twistchat.crypto.identity, twistchat.crypto.signed) -----


class BadSignature(Rejected):
    """
    the message's signature does not verify under the sender's identity key
    """

    code = "bad-signature"
    default_message = "the message's signature does not verify under the sender's identity key"


class BadEnvelope(Rejected):
    """
    the signed message inside the sealed payload is malformed
    """

    code = "bad-envelope"
    default_message = "the signed message inside the sealed payload is malformed"
