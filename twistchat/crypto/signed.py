"""
Signed messages: who said what, and where it sits in its sender's chain.

Every member holds the room key, so sealing alone cannot tell members apart. From
protocol version 2 the sealed payload is a I{signed envelope}: the text together
with the sender's identity public key (L{twistchat.crypto.identity}), the sender's
position in its own chain of messages in this room, and an Ed25519 signature. The
envelope is padded and sealed exactly as the text was (L{twistchat.crypto.seal}), but
under the associated-data prefix C{"twistchat/2 msg\\0"}, so the server sees neither
the key nor the signature and cannot strip or swap them.

All integers are unsigned big-endian. Sizes in bytes.

The envelope
============

::

    offset      size        field
    0           32          key    the sender's Ed25519 public key
    32          8           seq    the sender's sequence number in this room,
                                   1, 2, 3, ... across sessions and restarts;
                                   1 <= seq <= 2^63 - 1
    40          32          prev   message hash (below) of the sender's message
                                   seq - 1 in this room; 32 zero bytes iff seq = 1
    72          32          seen   message hash of the last message the sender had
                                   accepted from the room (any member, itself
                                   included) when it wrote this one; 32 zero bytes
                                   if none
    104         1           k      number of lost sequence numbers, 0 <= k <= 16
    105         8*k         lost   k of the sender's own earlier sequence numbers
                                   that the server never acknowledged, strictly
                                   increasing, each in [1, seq - 1]
    105+8k      2           m      length of the text, 0 <= m <= 16384
    107+8k      m           text   the text, UTF-8 (strict: no surrogates)
    107+8k+m    64          sig    Ed25519 signature (RFC 8032) by key over the
                                   to-be-signed bytes below

and nothing after it. The I{body} is the envelope without C{sig} (its first
107 + 8k + m bytes). The largest envelope is L{MAX_ENVELOPE_BYTES} (299 bytes more than
the largest text), and its ciphertext L{MAX_SIGNED_CIPHERTEXT} bytes.

What is signed
==============

::

    "twistchat/2 signed message\\0"      (27 bytes, the label, with the version)
    len(room)   (2) || room   (UTF-8)
    len(sender) (2) || sender (UTF-8)    the name the message is attributed to
    sid (16) || n (8)                    the sender session and its counter
    body                                 every field of the envelope but sig

The label separates these signatures from any other use of the key; room and sender
stop a message from being moved to another room or attributed to another name; sid
and n stop it from being moved to another session slot (and so from being replayed
under a fresh counter). Every field is of fixed size or length-prefixed, so the
encoding is unambiguous.

The message hash
================

::

    message_hash(sid, n, envelope) =
        SHA-256("twistchat/2 message hash\\0" || sid (16) || n (8) || envelope)

over the whole envelope, signature included. C{prev} and C{seen} hold such hashes. RFC
8032 verification refuses S >= L (L{twistchat.crypto.identity.verify}), so a valid
envelope cannot be altered into another valid one with another hash.

Who checks what
===============

L{decode_signed} checks the format and the signature under the key the envelope
names. It does not decide whether that key is the right one for the sender: the
caller compares L{SignedMessage.key} with the key pinned for (server, room, sender),
and follows C{prev}, C{seen} and C{lost} (docs/protocol.md, section 12). Without that comparison a
member could sign with its own key under another member's name.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import NamedTuple

from twistchat.crypto.identity import (
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    Identity,
    verify,
)
from twistchat.crypto.seal import (
    MAX_COUNTER,
    MAX_TEXT_BYTES,
    PAD_BLOCK,
    SID_BYTES,
    TAG_BYTES,
    Opened,
    Opener,
    Sealer,
    encode_field,
)
from twistchat.errors import BadEnvelope

__all__ = [
    "HASH_BYTES",
    "MAX_ENVELOPE_BYTES",
    "MAX_LOST",
    "MAX_SEQ",
    "MAX_SIGNED_CIPHERTEXT",
    "MIN_OVERHEAD",
    "NO_HASH",
    "Fields",
    "Sent",
    "SignedMessage",
    "UnsignedMessage",
    "decode_signed",
    "encode_signed",
    "message_hash",
    "open_message",
    "seal_signed",
    "to_be_signed",
]

#: Bytes of a message hash (C{prev}, C{seen}).
HASH_BYTES = 32
#: The hash that stands for "no message" (C{prev} of seq 1, C{seen} before any).
NO_HASH = b"\x00" * HASH_BYTES
#: Most lost sequence numbers one envelope may carry.
MAX_LOST = 16
#: Largest sequence number.
MAX_SEQ = 2**63 - 1

_SIGN_LABEL = b"twistchat/2 signed message\x00"
_HASH_LABEL = b"twistchat/2 message hash\x00"

_KEY_END = PUBLIC_KEY_BYTES
_SEQ_END = _KEY_END + 8
_PREV_END = _SEQ_END + HASH_BYTES
_SEEN_END = _PREV_END + HASH_BYTES
_FIXED = _SEEN_END + 1  # up to and including k
#: Bytes of an envelope around its text when nothing is lost.
MIN_OVERHEAD = _FIXED + 2 + SIGNATURE_BYTES
#: Largest envelope: the fixed fields, 16 lost numbers, the largest text, signature.
MAX_ENVELOPE_BYTES = MIN_OVERHEAD + 8 * MAX_LOST + MAX_TEXT_BYTES
#: Largest sealed signed envelope: padded, plus the GCM tag.
MAX_SIGNED_CIPHERTEXT = (MAX_ENVELOPE_BYTES // PAD_BLOCK + 1) * PAD_BLOCK + TAG_BYTES


@dataclass(frozen=True)
class Fields:
    """
    What a sender puts into a message besides the text's attribution (room, sender,
    sid, n): see the module docstring for each field's meaning.
    """

    seq: int
    prev: bytes
    seen: bytes
    text: str
    lost: tuple[int, ...] = ()


@dataclass(frozen=True)
class SignedMessage:
    """
    A decoded envelope whose signature verified under C{key}.

    C{hash} is its L{message_hash}, for the chain checks; C{signature} is kept so the
    envelope can be stored and shown again. The repr shows neither text nor signature.
    """

    key: bytes
    seq: int
    prev: bytes
    seen: bytes
    lost: tuple[int, ...]
    text: str = field(repr=False)
    signature: bytes = field(repr=False)
    hash: bytes


@dataclass(frozen=True)
class UnsignedMessage:
    """
    A version 1 message (sealed before identity keys): attributed by the room key
    only, so any member could have written it.
    """

    text: str = field(repr=False)


class Sent(NamedTuple):
    """
    A sealed signed message: its attribution (sid, n), the ciphertext, and the
    L{message_hash} the sender's next message names as C{prev}.
    """

    sid: bytes
    n: int
    ciphertext: bytes
    hash: bytes


def _slot(sid: bytes, n: int) -> bytes:
    if not isinstance(sid, (bytes, bytearray)) or len(sid) != SID_BYTES:
        raise ValueError(f"sid must be {SID_BYTES} bytes")
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_COUNTER:
        raise ValueError("n out of range")
    return bytes(sid) + n.to_bytes(8, "big")


def to_be_signed(room: str, sender: str, sid: bytes, n: int, body: bytes) -> bytes:
    """
    The bytes the envelope's signature covers (module docstring, "What is signed").

    @raise ValueError: a name longer than 65535 bytes of UTF-8, a sid that is not 16
        bytes, n outside [0, 2^63 - 1].
    """
    return (
        _SIGN_LABEL + encode_field("room", room) + encode_field("sender", sender)
        + _slot(sid, n) + body
    )


def message_hash(sid: bytes, n: int, data: bytes) -> bytes:
    """
    The 32-byte hash of the envelope C{data} sent as message C{n} of session C{sid}
    (module docstring, "The message hash").

    @raise ValueError: a sid that is not 16 bytes, n outside [0, 2^63 - 1].
    """
    return hashlib.sha256(_HASH_LABEL + _slot(sid, n) + bytes(data)).digest()


def _check_hash(what: str, value: bytes) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != HASH_BYTES:
        raise ValueError(f"{what} must be {HASH_BYTES} bytes")
    return bytes(value)


def _is_seq(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_SEQ


def encode_signed(
    identity: Identity, room: str, sender: str, sid: bytes, n: int, fields: Fields
) -> bytes:
    """
    Build and sign the envelope of message C{n} of session C{sid}, attributed to
    C{sender} in C{room}.

    @return: the envelope (to be sealed as a version 2 payload: L{seal_signed}).
    @raise ValueError: a field breaks the format: seq outside [1, 2^63 - 1]; prev or
        seen not 32 bytes; prev zero for seq > 1 or not zero for seq 1; more than 16
        lost numbers, or ones not strictly increasing within [1, seq - 1]; a text
        longer than 16384 bytes of UTF-8 or not encodable (lone surrogates); bad sid,
        n or names as for L{to_be_signed}.
    """
    seq = fields.seq
    if not _is_seq(seq):
        raise ValueError("seq out of range")
    prev = _check_hash("prev", fields.prev)
    seen = _check_hash("seen", fields.seen)
    if (seq == 1) != (prev == NO_HASH):
        raise ValueError("prev must be zero exactly for seq 1")
    lost = tuple(fields.lost)
    if len(lost) > MAX_LOST:
        raise ValueError(f"at most {MAX_LOST} lost sequence numbers")
    if not all(_is_seq(x) for x in lost) or list(lost) != sorted(set(lost)) or (
        lost and lost[-1] >= seq
    ):
        raise ValueError("lost must be strictly increasing sequence numbers below seq")
    if not isinstance(fields.text, str):
        raise TypeError("text must be str")
    text = fields.text.encode("utf-8")
    if len(text) > MAX_TEXT_BYTES:
        raise ValueError(f"text longer than {MAX_TEXT_BYTES} bytes")
    body = b"".join(
        [
            identity.public_key,
            seq.to_bytes(8, "big"),
            prev,
            seen,
            bytes([len(lost)]),
            *(x.to_bytes(8, "big") for x in lost),
            len(text).to_bytes(2, "big"),
            text,
        ]
    )
    return body + identity.sign(to_be_signed(room, sender, sid, n, body))


def decode_signed(room: str, sender: str, sid: bytes, n: int, data: bytes) -> SignedMessage:
    """
    Parse the envelope of message C{n} of session C{sid}, attributed to C{sender} in
    C{room}, and verify its signature under the key it names.

    Does not check that key against the one pinned for the sender: the caller must.

    @raise BadEnvelope: C{data} breaks the format (module docstring): too short, a
        field out of range (seq 0 or above 2^63 - 1, prev zero for seq > 1 or not zero
        for seq 1, more than 16 lost numbers or ones not strictly increasing within
        [1, seq - 1], text longer than 16384 bytes), invalid UTF-8, or bytes after
        the signature.
    @raise BadSignature: the key is not a valid Ed25519 public key, or the signature
        does not verify for this room, sender, sid and n.
    @raise ValueError: C{sid}, C{n}, C{room} or C{sender} themselves are invalid (a
        bug in the caller, which has them from a message that opened).
    """
    if not isinstance(data, (bytes, bytearray)):
        raise BadEnvelope("a signed envelope must be bytes")
    data = bytes(data)
    if len(data) < MIN_OVERHEAD:
        raise BadEnvelope("signed envelope too short")
    key = data[:_KEY_END]
    seq = int.from_bytes(data[_KEY_END:_SEQ_END], "big")
    prev = data[_SEQ_END:_PREV_END]
    seen = data[_PREV_END:_SEEN_END]
    k = data[_SEEN_END]
    if not 1 <= seq <= MAX_SEQ:
        raise BadEnvelope("signed envelope: seq out of range")
    if (seq == 1) != (prev == NO_HASH):
        raise BadEnvelope("signed envelope: prev must be zero exactly for seq 1")
    if k > MAX_LOST:
        raise BadEnvelope(f"signed envelope: more than {MAX_LOST} lost sequence numbers")
    at = _FIXED
    if len(data) < at + 8 * k + 2 + SIGNATURE_BYTES:
        raise BadEnvelope("signed envelope too short")
    lost = tuple(int.from_bytes(data[at + 8 * i : at + 8 * i + 8], "big") for i in range(k))
    at += 8 * k
    if any(not 1 <= x < seq for x in lost) or any(a >= b for a, b in zip(lost, lost[1:])):
        raise BadEnvelope(
            "signed envelope: lost must be strictly increasing sequence numbers below seq"
        )
    m = int.from_bytes(data[at : at + 2], "big")
    at += 2
    if m > MAX_TEXT_BYTES:
        raise BadEnvelope(f"signed envelope: text longer than {MAX_TEXT_BYTES} bytes")
    end = at + m
    if len(data) != end + SIGNATURE_BYTES:
        raise BadEnvelope("signed envelope: wrong length")
    try:
        text = data[at:end].decode("utf-8")
    except UnicodeDecodeError:
        raise BadEnvelope("signed envelope: text is not UTF-8") from None
    signature = data[end:]
    verify(key, to_be_signed(room, sender, sid, n, data[:end]), signature)
    return SignedMessage(
        key=key,
        seq=seq,
        prev=prev,
        seen=seen,
        lost=lost,
        text=text,
        signature=signature,
        hash=message_hash(sid, n, data),
    )


def seal_signed(sealer: Sealer, identity: Identity, fields: Fields) -> Sent:
    """
    Sign C{fields} for the sealer's next message and seal the envelope as a version 2
    payload (L{twistchat.crypto.seal.Sealer.seal_payload}).

    @raise ValueError: as for L{encode_signed} (the counter is not used up).
    @raise OverflowError: the session has used up its counters.
    """
    envelopes: list[bytes] = []

    def build(sid: bytes, n: int) -> bytes:
        envelope = encode_signed(identity, sealer.room, sealer.sender, sid, n, fields)
        envelopes.append(envelope)
        return envelope

    sid, n, ciphertext = sealer.seal_payload(build)
    return Sent(sid, n, ciphertext, message_hash(sid, n, envelopes[0]))


def open_message(
    opener: Opener, sender: str, sid: bytes, n: int, ciphertext: bytes
) -> SignedMessage | UnsignedMessage:
    """
    Open message C{n} of session C{sid} attributed to C{sender}: a version 2 payload
    is decoded and verified (L{decode_signed}); a version 1 payload (sealed before
    identity keys) is returned as an L{UnsignedMessage}. A message that fails
    L{decode_signed} does not update the opener's replay state.

    @raise Undecryptable: as for L{twistchat.crypto.seal.Opener.open_payload}.
    @raise Replayed: as for L{twistchat.crypto.seal.Opener.open_payload}.
    @raise BadEnvelope: a version 2 payload breaks the envelope format.
    @raise BadSignature: a version 2 payload's signature does not verify.
    """
    decoded: list[SignedMessage | UnsignedMessage] = []

    def check(opened: Opened) -> None:
        if opened.version == 1:
            decoded.append(UnsignedMessage(opened.payload.decode("utf-8")))
        else:
            decoded.append(decode_signed(opener.room, sender, sid, n, opened.payload))

    opener.open_payload(sender, sid, n, ciphertext, check=check)
    return decoded[0]
