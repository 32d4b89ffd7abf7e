"""
The twistchat message schema: strict encode and decode, no I/O.

Every frame body is one UTF-8 JSON object with a C{"type"} member. Each type has a
fixed set of fields, each of a fixed kind; binary fields travel as standard base64.
Decoding is strict: invalid UTF-8, invalid JSON, a repeated member, an unknown type, a missing,
extra or ill-typed field, a string holding control characters, or a value out of range all
raise L{BadMessage}, and nothing else escapes L{decode}. docs/protocol.md describes
each message with an example.
"""

from __future__ import annotations

import binascii
import dataclasses
import json
import math
import unicodedata
from collections.abc import Callable, Mapping
from json.encoder import encode_basestring_ascii
from typing import Any

from twistchat.crypto.identity import PUBLIC_KEY_BYTES
from twistchat.crypto.kdf import MAX_SALT_BYTES, MIN_SALT_BYTES
from twistchat.crypto.seal import (  # MAX_CIPHERTEXT: version 1's limit, kept for reference
    MAX_CIPHERTEXT as MAX_CIPHERTEXT,
)
from twistchat.crypto.seal import (
    MAX_COUNTER,
    MAX_TEXT_BYTES,
    PAD_BLOCK,
    SID_BYTES,
    TAG_BYTES,
)
from twistchat.crypto.signed import MAX_ENVELOPE_BYTES, MAX_SIGNED_CIPHERTEXT
from twistchat.crypto.spake2plus import MAC_BYTES, POINT_BYTES
from twistchat.crypto.vouch import VOUCH_BYTES
from twistchat.crypto.webbinding import CERT_HASH_BYTES, NONCE_BYTES
from twistchat.errors import BadMessage

# Sizes fixed by the cryptography (session id, tag, points, MACs, counters, padding,
# the largest text and ciphertext, salts) are defined in twistchat.crypto and only
# checked here.

#: Version 3: members have identity keys (sent in C{confirm}, relayed with
#: presence), every message is a signed envelope, and the server acknowledges
#: each message it accepted (C{ack}). Version 2 bound the server certificate's
#: SHA-256 into the SPAKE2+ context and spoke only TLS 1.3. Messages sealed
#: before version 3 still open (shown as unsigned).
PROTOCOL_VERSION = 3

#: Largest frame a client may send before it has authenticated (bytes).
MAX_FRAME_PREAUTH = 4096
#: Largest frame a member may send once authenticated (bytes): a sealed signed
#: envelope of MAX_SIGNED_CIPHERTEXT bytes is about 22 KiB once base64-encoded.
MAX_FRAME = 32768
#: Bytes of a C{send} frame other than the base64 ciphertext, at most (the
#: counter written out in full).
SEND_OVERHEAD = 128


def max_text_for(max_frame: int) -> int:
    """
    The largest text (UTF-8 bytes) whose C{send} frame fits in C{max_frame}
    bytes once padded, sealed and base64-encoded; at most L{MAX_TEXT_BYTES}.
    """
    sealed = (max_frame - SEND_OVERHEAD) // 4 * 3
    envelope = (sealed - TAG_BYTES - PAD_BLOCK) // PAD_BLOCK * PAD_BLOCK
    # The signed envelope around the text, with the most lost numbers it may carry.
    text = envelope - (MAX_ENVELOPE_BYTES - MAX_TEXT_BYTES)
    return max(0, min(MAX_TEXT_BYTES, text))


#: Largest frame a client accepts from the server (member lists can be long:
#: 10000 members with the longest names, addresses, their keys and vouches fit).
MAX_FRAME_FROM_SERVER = 4 << 20

MAX_NAME = 32
MAX_ROOM = 64
MAX_TEXT_FIELD = 1024
MAX_MEMBERS_LISTED = 10000


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """
    A decoded message: its type and its fields (already validated), and the
    fields as they came in the JSON (base64 text for binary fields), so a relay
    can pass validated values on without encoding them again.
    """

    type: str
    fields: Mapping[str, Any]
    raw: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)


# --- field kinds --------------------------------------------------------------
# Each kind is a function (name, raw JSON value) -> Python value, raising BadMessage.

Kind = Callable[[str, Any], Any]


def _fail(field: str, why: str) -> BadMessage:
    return BadMessage(f"field {field!r}: {why}")


def text(max_chars: int) -> Kind:
    """
    A string of at most C{max_chars} characters with no control characters and no
    unpaired surrogates (so it is safe to log and print).
    """

    def check(field: str, value: Any) -> str:
        if type(value) is not str:
            raise _fail(field, "expected a string")
        if len(value) > max_chars:
            raise _fail(field, f"longer than {max_chars} characters")
        if not value.isprintable():
            for ch in value:
                if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
                    raise _fail(field, "contains control characters")
        return value

    return check


def integer(low: int, high: int) -> Kind:
    def check(field: str, value: Any) -> int:
        if type(value) is not int:
            raise _fail(field, "expected an integer")
        if not low <= value <= high:
            raise _fail(field, f"out of range {low}..{high}")
        return value

    return check


def number(field: str, value: Any) -> float:
    if type(value) not in (int, float):
        raise _fail(field, "expected a number")
    try:
        result = float(value)
    except OverflowError:  # an integer too large for a float
        raise _fail(field, "out of range") from None
    if not math.isfinite(result):  # e.g. 1e400, which JSON parses as infinity
        raise _fail(field, "out of range")
    return result


def boolean(field: str, value: Any) -> bool:
    if type(value) is not bool:
        raise _fail(field, "expected true or false")
    return value


def binary(low: int, high: int | None = None) -> Kind:
    """
    Base64 of between C{low} and C{high} bytes (exactly C{low} if C{high} is None).
    """
    high = low if high is None else high

    def check(field: str, value: Any) -> bytes:
        if type(value) is not str:
            raise _fail(field, "expected base64 text")
        # Cheap bound before decoding: base64 is 4 characters per 3 bytes.
        if len(value) > 4 * ((high + 2) // 3):
            raise _fail(field, f"longer than {high} bytes")
        try:
            raw = binascii.a2b_base64(value, strict_mode=True)
        except (binascii.Error, ValueError):
            raise _fail(field, "invalid base64") from None
        if not low <= len(raw) <= high:
            raise _fail(field, f"expected {low}..{high} bytes, got {len(raw)}")
        return raw

    return check


_key = binary(PUBLIC_KEY_BYTES)
#: A device's vouch for the key beside it (docs/protocol.md, section 12.8).
_vouch = binary(VOUCH_BYTES)
_MEMBER_FIELDS = {"name", "addr", "key"}


def _member(field: str, value: Any) -> dict[str, Any]:
    if type(value) is not dict or not _MEMBER_FIELDS <= set(value) <= _MEMBER_FIELDS | {"vouch"}:
        raise _fail(field, "expected members as {name, addr, key[, vouch]} objects")
    member = {
        "name": text(MAX_NAME)(field, value["name"]),
        "addr": text(64)(field, value["addr"]),
        "key": _key(field, value["key"]),
    }
    if "vouch" in value:
        member["vouch"] = _vouch(field, value["vouch"])
    return member


def members(field: str, value: Any) -> list[dict[str, Any]]:
    if type(value) is not list or len(value) > MAX_MEMBERS_LISTED:
        raise _fail(field, "expected a list of members")
    return [_member(field, item) for item in value]


# --- the schema -----------------------------------------------------------------
# type -> (required fields, optional fields); each a mapping of field -> kind.

Schema = Mapping[str, tuple[Mapping[str, Kind], Mapping[str, Kind]]]

_name = text(MAX_NAME)
_room = text(MAX_ROOM)
_addr = text(64)
_sid = binary(SID_BYTES)
_counter = integer(0, MAX_COUNTER)
_ciphertext = binary(TAG_BYTES, MAX_SIGNED_CIPHERTEXT)
_point = binary(POINT_BYTES)
_mac = binary(MAC_BYTES)
_token = integer(0, 2**31 - 1)
_position = integer(0, 2**63 - 1)

#: Messages a client sends.
FROM_CLIENT: Schema = {
    "hello": ({"v": integer(0, 2**16), "room": _room, "name": _name}, {}),
    "share": ({"X": _point}, {}),
    "confirm": ({"mac": _mac, "key": _key}, {"vouch": _vouch}),
    "send": ({"sid": _sid, "n": _counter, "ct": _ciphertext}, {}),
    "who": ({}, {}),
    "ping": ({}, {"id": _token}),
    "pong": ({}, {"id": _token}),
}

#: Messages a server sends.
FROM_SERVER: Schema = {
    "params": (
        {
            "salt": binary(MIN_SALT_BYTES, MAX_SALT_BYTES),
            "n": integer(2, 2**30),
            "r": integer(1, 1024),
            "p": integer(1, 1024),
        },
        {},
    ),
    "verify": ({"Y": _point, "mac": _mac}, {}),
    "welcome": (
        {"name": _name, "room": _room, "addr": _addr, "members": members},
        {"max_text": integer(0, 2**31), "rate": number, "burst": integer(0, 2**31)},
    ),
    "msg": (
        {"from": _name, "sid": _sid, "n": _counter, "ct": _ciphertext},
        {"ts": number, "hist": boolean},
    ),
    "joined": ({"name": _name, "addr": _addr, "key": _key}, {"vouch": _vouch}),
    "left": ({"name": _name, "addr": _addr}, {}),
    "members": ({"members": members}, {}),
    "ack": ({"sid": _sid, "n": _counter, "seq": _position}, {}),
    "notice": ({"code": text(32), "text": text(MAX_TEXT_FIELD)}, {}),
    "error": ({"code": text(32), "text": text(MAX_TEXT_FIELD)}, {}),
    "ping": ({}, {"id": _token}),
    "pong": ({}, {"id": _token}),
    # Only on a WebSocket, as its first frame: what the page binds its login to
    # (twistchat.crypto.webbinding).
    "web-hello": ({"nonce": binary(NONCE_BYTES), "cert": binary(CERT_HASH_BYTES)}, {}),
}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A member named twice is refused: parsers disagree on which one counts
    # (first or last), and a relay or a log must never read another value than
    # the receiver.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise BadMessage("frame repeats a JSON member name")
    return obj


_decoder = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_unique_members)


def decode(frame: bytes, schema: Schema) -> Message:
    """
    Decode and validate one frame body against C{schema}.

    @raise BadMessage: for anything but a valid message of a type in C{schema}.
    """
    try:
        obj = _decoder.decode(frame.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadMessage("frame is not a UTF-8 JSON object") from None
    if type(obj) is not dict:
        raise BadMessage("frame is not a UTF-8 JSON object")
    kind = obj.pop("type", None)
    if type(kind) is not str:
        raise BadMessage("message has no type")
    spec = schema.get(kind)
    if spec is None:
        raise BadMessage(f"unknown message type {kind[:32]!r}")
    required, optional = spec
    fields: dict[str, Any] = {}
    for field, check in required.items():
        if field not in obj:
            raise BadMessage(f"{kind} message lacks field {field!r}")
        fields[field] = check(field, obj[field])
    for field, check in optional.items():
        if field in obj:
            fields[field] = check(field, obj[field])
    if len(obj) != len(fields):
        extra = sorted(set(obj) - set(fields))[0]
        raise BadMessage(f"{kind} message has unknown field {extra[:32]!r}")
    return Message(kind, fields, obj)


def _base64_text(value: Any) -> str:
    """
    The JSON encoder's hook for what it cannot encode itself: bytes become
    base64 text, anything else is refused.

    @raise TypeError: C{value} is not bytes, bytearray or memoryview.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        return binascii.b2a_base64(value, newline=False).decode("ascii")
    raise TypeError(f"a {type(value).__name__} cannot be sent in a message")


# The C encoder walks the message itself and calls the hook only for bytes, so
# a member list costs no Python call per member (a welcome into a room of 100
# encoded 2.6 times faster than with a walk of our own: 157 -> 61 us).
_encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=_base64_text)


def prefixed(body: bytes) -> bytes:
    """
    C{body} as one frame on the wire: its 4-byte big-endian length, then it.
    """
    return len(body).to_bytes(4, "big") + body


def encode(kind: str, **fields: Any) -> bytes:
    """
    Encode one message; C{bytes} values become base64 text.

    Encoding does not validate: the sender builds its own messages. Tests check that
    everything this module encodes decodes again under the schema.
    """
    return _encoder.encode({"type": kind, **fields}).encode("ascii")


# The two frames the server writes for every message it accepts, built from
# the decoded send without a walk of the encoder: the base64 text and the
# counter of a decoded send are valid JSON as they are (only base64 letters;
# a plain integer), so each frame is its fixed parts around them, the same
# bytes as encode() gives (tests compare the two). Taking the decoded
# L{Message} keeps them to values the schema has checked.


def relayed(sender: str, send: Message) -> bytes:
    """
    The C{msg} frame that relays C{send} (a decoded C{send} message) from
    member C{sender}: the bytes of C{encode("msg", from=sender, sid=..., n=...,
    ct=...)} with the sealed parts as they came in.

    @raise ValueError: C{send} is not a C{send} message.
    """
    if send.type != "send":
        raise ValueError(f"a {send.type!r} message is not relayed")
    raw = send.raw
    return (
        f'{{"type":"msg","from":{encode_basestring_ascii(sender)},"sid":"{raw["sid"]}",'
        f'"n":{raw["n"]:d},"ct":"{raw["ct"]}"}}'
    ).encode("ascii")


def acknowledged(send: Message, seq: int) -> bytes:
    """
    The C{ack} frame for C{send} (a decoded C{send} message) at position
    C{seq}: the bytes of C{encode("ack", sid=..., n=..., seq=seq)}.

    @raise ValueError: C{send} is not a C{send} message.
    """
    if send.type != "send":
        raise ValueError(f"a {send.type!r} message is not acknowledged")
    raw = send.raw
    return ack_of(raw["sid"], raw["n"], seq)


def ack_of(sid: str, n: int, seq: int) -> bytes:
    """
    The C{ack} frame for message C{n} of sender session C{sid} (the base64
    text of a C{send} or C{msg} already validated or encoded by this
    server) at position C{seq}: the bytes of C{encode("ack", sid=..., n=n,
    seq=seq)}.
    """
    return f'{{"type":"ack","sid":"{sid}","n":{n:d},"seq":{seq:d}}}'.encode("ascii")
