"""
Device vouches: an identity key already pinned for a name says that another key
speaks for the same name in the same room (docs/protocol.md, section 12.8).

A person with a terminal and a browser has two identity keys. With a vouch made
by the first, members who pinned the first see "a new device of alice" instead of
"alice's key changed". Whether the voucher key is pinned for the name is the
caller's question (L{twistchat.client.pins.Pins}); this module checks the bytes.

Formats
=======

All integers are unsigned big-endian; C{str(x)} is C{x} in UTF-8 preceded by its
length as 2 bytes.

The signed statement::

    "twistchat/2 device vouch\\0"        (25 bytes, the label)
    str(room) || str(name)
    voucher (32)                         the Ed25519 public key that signs
    new key (32)                         the key vouched for
    not_after (8)                        seconds since the Unix epoch

The vouch (L{VOUCH_BYTES} = 104 bytes, base64 on the wire and when copied)::

    voucher (32) || not_after (8) || signature (64)

The new key, the room and the name are not in the vouch: the receiver takes them
from the presence that carries it, so a vouch moved to another key, name or room
does not verify. A vouch whose C{not_after} has passed is refused; the voucher
cannot vouch for itself.

No Twisted, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from twistchat.crypto.identity import (
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    Identity,
    check_public_key,
    verify,
)
from twistchat.crypto.seal import encode_field
from twistchat.errors import BadSignature

__all__ = [
    "DEFAULT_DAYS",
    "MAX_DAYS",
    "MAX_NOT_AFTER",
    "VOUCH_BYTES",
    "Vouch",
    "check_vouch",
    "decode_vouch",
    "make_vouch",
    "not_after_days",
    "statement",
]

#: Bytes of an encoded vouch.
VOUCH_BYTES = PUBLIC_KEY_BYTES + 8 + SIGNATURE_BYTES
#: Days a vouch made by the client lasts unless told otherwise, and at most.
DEFAULT_DAYS = 30
MAX_DAYS = 365
#: Largest C{not_after}.
MAX_NOT_AFTER = 2**63 - 1

_LABEL = b"twistchat/2 device vouch\x00"
_DAY = 86400


@dataclass(frozen=True)
class Vouch:
    """
    A decoded vouch, its signature not yet checked (L{check_vouch} does).
    """

    voucher: bytes
    not_after: int
    signature: bytes

    def encode(self) -> bytes:
        """
        The 104 bytes of the vouch.
        """
        return self.voucher + self.not_after.to_bytes(8, "big") + self.signature


def _not_after(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_NOT_AFTER:
        raise ValueError("not_after out of range")
    return value


def statement(room: str, name: str, voucher: bytes, new_key: bytes, not_after: int) -> bytes:
    """
    The bytes a vouch's signature covers (module docstring).

    @raise ValueError: a room or name longer than 65535 bytes of UTF-8, a key that
        is not 32 bytes, C{not_after} outside [0, 2^63 - 1].
    @raise TypeError: the room or name is not a string.
    """
    for what, key in (("voucher", voucher), ("new key", new_key)):
        if not isinstance(key, (bytes, bytearray)) or len(key) != PUBLIC_KEY_BYTES:
            raise ValueError(f"the {what} must be a {PUBLIC_KEY_BYTES}-byte public key")
    return b"".join([
        _LABEL, encode_field("room", room), encode_field("name", name),
        bytes(voucher), bytes(new_key), _not_after(not_after).to_bytes(8, "big"),
    ])


def make_vouch(identity: Identity, room: str, name: str, new_key: bytes,
               not_after: int) -> bytes:
    """
    Vouch, with C{identity}, that C{new_key} also speaks for C{name} in C{room}
    until C{not_after} (seconds since the Unix epoch).

    @return: the 104-byte vouch.
    @raise BadSignature: C{new_key} is not a valid Ed25519 public key.
    @raise ValueError: C{new_key} is the voucher's own key, or as for L{statement}.
    """
    new_key = check_public_key(new_key)
    if new_key == identity.public_key:
        raise ValueError("a key cannot vouch for itself")
    signed = statement(room, name, identity.public_key, new_key, not_after)
    return Vouch(identity.public_key, not_after, identity.sign(signed)).encode()


def not_after_days(now: float, days: int) -> int:
    """
    The C{not_after} of a vouch made at C{now} to last C{days} days.

    @raise ValueError: C{days} is not between 1 and L{MAX_DAYS}.
    """
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise ValueError(f"a vouch lasts 1 to {MAX_DAYS} days")
    return int(now) + days * _DAY


def decode_vouch(data: bytes) -> Vouch:
    """
    Split a vouch into its parts.

    @raise BadSignature: it is not 104 bytes.
    """
    if not isinstance(data, (bytes, bytearray)) or len(data) != VOUCH_BYTES:
        raise BadSignature(f"a vouch is {VOUCH_BYTES} bytes")
    data = bytes(data)
    return Vouch(
        data[:PUBLIC_KEY_BYTES],
        int.from_bytes(data[PUBLIC_KEY_BYTES:PUBLIC_KEY_BYTES + 8], "big"),
        data[PUBLIC_KEY_BYTES + 8:],
    )


def check_vouch(data: bytes, room: str, name: str, new_key: bytes, now: float) -> Vouch:
    """
    Check that C{data} is a vouch, valid at C{now}, for C{new_key} as C{name} in
    C{room}. Whether its voucher is pinned for C{name} is the caller's question.

    @return: the vouch (its C{voucher} is the key that signed it).
    @raise BadSignature: not 104 bytes, made by the key it vouches for, expired,
        or its signature does not verify for this room, name and key.
    @raise ValueError: C{room}, C{name} or C{new_key} themselves are invalid (a bug
        in the caller, which has them from a checked frame).
    """
    vouch = decode_vouch(data)
    if vouch.voucher == bytes(new_key):
        raise BadSignature("the vouch is made by the key it vouches for")
    if now > vouch.not_after:
        raise BadSignature("the vouch has expired")
    signed = statement(room, name, vouch.voucher, new_key, vouch.not_after)
    try:
        verify(vouch.voucher, signed, vouch.signature)
    except BadSignature:
        raise BadSignature("the vouch's signature does not verify") from None
    return vouch
