"""
Safety numbers: short digit strings people compare aloud to check identity keys.

Two are defined, both independent of the server's TLS certificate (so a room reached
through another node, or from a browser, shows the same values):

  - L{safety_number}: for a pair of members, from both names and identity keys. 60
    digits; both sides compute the same string.
  - L{room_safety_code}: for a whole room, from the room's name, a commitment to its
    content key (L{room_commitment}) and every present member's name and identity key.
    30 digits, so a room can read one code aloud; equal codes mean everyone holds the
    same room key and sees the same member list with the same keys.

Formats
=======

All hashes are SHA-512; C{||} is concatenation; C{str(x)} is C{x} in UTF-8 preceded
by its length as 2 bytes big-endian; keys are 32-byte Ed25519 public keys.

Digits from a digest: its first 5*g bytes are cut into g chunks of 5 bytes; each
chunk, read as a big-endian integer, modulo 100000, gives 5 decimal digits (with
leading zeros). The bias of 2^40 mod 100000 is below 10^-7 per chunk.

Stretching (a fixed cost to anyone grinding for keys whose numbers collide, as in
Signal's numeric fingerprints)::

    stretch(input, tail): h = SHA-512(input);
                          repeat ITERATIONS (5200) times: h = SHA-512(h || tail)

Pair safety number::

    half(name, key) = digits(stretch("twistchat/2 safety number\\0" || str(name) || key,
                                     key), 6)                      (30 digits)
    safety_number = the two halves, the smaller (as a string) first: 60 digits

Room commitment and room safety code::

    room_commitment = HKDF-SHA256(content_key, salt = none,
                                  info = "twistchat/2 room commitment\\0" || room, 32)
    members         = the (name, key) pairs sorted by the bytes of the UTF-8 name
                      (no name twice)
    input           = "twistchat/2 room safety code\\0" || str(room)
                      || room_commitment (32) || count (4, big-endian)
                      || for each member: str(name) || key
    room_safety_code = digits(stretch(input, room_commitment), 6)   (30 digits)

Both are shown in groups of five digits separated by single spaces.

The commitment is a one-way function of the content key, so showing the code reveals
nothing about the key; it is bound to the room's name, so two rooms with one password
get different codes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from twistchat.crypto.identity import PUBLIC_KEY_BYTES
from twistchat.crypto.kdf import hkdf_sha256
from twistchat.crypto.seal import encode_field

__all__ = [
    "ITERATIONS",
    "ROOM_CODE_DIGITS",
    "SAFETY_NUMBER_DIGITS",
    "room_commitment",
    "room_safety_code",
    "safety_number",
]

#: SHA-512 iterations in each stretch (about 3 ms of CPU).
ITERATIONS = 5200
#: Digits in a pair's safety number.
SAFETY_NUMBER_DIGITS = 60
#: Digits in a room's safety code.
ROOM_CODE_DIGITS = 30

_NUMBER_LABEL = b"twistchat/2 safety number\x00"
_ROOM_LABEL = b"twistchat/2 room safety code\x00"
_COMMITMENT_INFO = b"twistchat/2 room commitment\x00"
_GROUP = 5
_CHUNK_BYTES = 5


def _key(what: str, value: bytes) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != PUBLIC_KEY_BYTES:
        raise ValueError(f"{what} must be a {PUBLIC_KEY_BYTES}-byte public key")
    return bytes(value)


def _stretch(data: bytes, tail: bytes) -> bytes:
    h = hashlib.sha512(data).digest()
    for _ in range(ITERATIONS):
        h = hashlib.sha512(h + tail).digest()
    return h


def _digits(digest: bytes, chunks: int) -> str:
    return "".join(
        format(int.from_bytes(digest[i * _CHUNK_BYTES : (i + 1) * _CHUNK_BYTES], "big") % 100000,
               "05d")
        for i in range(chunks)
    )


def _half(name: str, key: bytes) -> str:
    chunks = SAFETY_NUMBER_DIGITS // 2 // _GROUP
    return _digits(_stretch(_NUMBER_LABEL + encode_field("name", name) + key, key), chunks)


def _grouped(digits: str) -> str:
    return " ".join(digits[i : i + _GROUP] for i in range(0, len(digits), _GROUP))


def safety_number(name_a: str, key_a: bytes, name_b: str, key_b: bytes) -> str:
    """
    The 60-digit safety number of members C{name_a} (identity key C{key_a}) and
    C{name_b} (C{key_b}), in 12 groups of 5 digits separated by spaces. Symmetric:
    swapping the two members gives the same string.

    @raise ValueError: a key is not 32 bytes, or a name is longer than 65535 bytes of
        UTF-8.
    @raise TypeError: a name is not a string.
    """
    halves = sorted(
        [_half(name_a, _key("key_a", key_a)), _half(name_b, _key("key_b", key_b))]
    )
    return _grouped("".join(halves))


def room_commitment(content_key: bytes, room: str) -> bytes:
    """
    A 32-byte commitment to a room's content key, bound to the room's name, for
    L{room_safety_code}: HKDF-SHA256 of the key with info
    C{"twistchat/2 room commitment\\0" || room}. Reveals nothing usable about the key.

    @raise ValueError: C{content_key} is not 32 bytes.
    """
    if not isinstance(content_key, (bytes, bytearray)) or len(content_key) != 32:
        raise ValueError("a content key is 32 bytes")
    if not isinstance(room, str):
        raise TypeError("room must be str")
    return hkdf_sha256(bytes(content_key), _COMMITMENT_INFO + room.encode("utf-8"), 32)


def room_safety_code(
    room: str, commitment: bytes, members: Iterable[tuple[str, bytes]]
) -> str:
    """
    The 30-digit safety code of a room as one member sees it: over the room's name,
    its L{room_commitment} and every present member's name and identity key
    (yourself included; the order of C{members} does not matter), in 6 groups of 5
    digits separated by spaces.

    @raise ValueError: the commitment or a key is not 32 bytes, a name appears
        twice, or a name is longer than 65535 bytes of UTF-8.
    @raise TypeError: a name or the room is not a string.
    """
    if not isinstance(commitment, (bytes, bytearray)) or len(commitment) != 32:
        raise ValueError("a room commitment is 32 bytes")
    commitment = bytes(commitment)
    encoded = sorted(
        (encode_field("name", name)[2:], _key("a member's key", key)) for name, key in members
    )
    names = [name for name, _ in encoded]
    if len(set(names)) != len(names):
        raise ValueError("a member name appears twice")
    data = b"".join(
        [
            _ROOM_LABEL,
            encode_field("room", room),
            commitment,
            len(encoded).to_bytes(4, "big"),
            *(len(name).to_bytes(2, "big") + name + key for name, key in encoded),
        ]
    )
    return _grouped(_digits(_stretch(data, commitment), ROOM_CODE_DIGITS // _GROUP))
