"""
The message schema: strict decoding, and fuzzing of every decoder.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twistchat import wire
from twistchat.errors import BadMessage

SID = b"\x01" * 16
POINT = b"\x04" + b"\x02" * 64
MAC = b"\x03" * 32
KEY = b"\x05" * 32

EXAMPLES = [
    (wire.FROM_CLIENT, "hello", {"v": 1, "room": "main", "name": "alice"}),
    (wire.FROM_CLIENT, "share", {"X": POINT}),
    (wire.FROM_CLIENT, "confirm", {"mac": MAC, "key": KEY}),
    (wire.FROM_CLIENT, "send", {"sid": SID, "n": 1, "ct": b"\x00" * 48}),
    (wire.FROM_CLIENT, "who", {}),
    (wire.FROM_CLIENT, "ping", {"id": 3}),
    (wire.FROM_SERVER, "params", {"salt": b"s" * 16, "n": 32768, "r": 8, "p": 1}),
    (wire.FROM_SERVER, "verify", {"Y": POINT, "mac": MAC}),
    (wire.FROM_SERVER, "welcome", {"name": "alice", "room": "main", "addr": "127.0.0.1:1",
                                   "members": [{"name": "bob", "addr": "[::1]:2", "key": KEY}]}),
    (wire.FROM_SERVER, "msg", {"from": "bob", "sid": SID, "n": 2, "ct": b"\x00" * 48}),
    (wire.FROM_SERVER, "msg", {"from": "bob", "sid": SID, "n": 2, "ct": b"\x00" * 48,
                               "ts": 1.5, "hist": True}),
    (wire.FROM_SERVER, "joined", {"name": "bob", "addr": "127.0.0.1:2", "key": KEY}),
    (wire.FROM_SERVER, "ack", {"sid": SID, "n": 2, "seq": 2**63 - 1}),
    (wire.FROM_SERVER, "left", {"name": "bob", "addr": "127.0.0.1:2"}),
    (wire.FROM_SERVER, "members", {"members": []}),
    (wire.FROM_SERVER, "notice", {"code": "rate", "text": "slow down"}),
    (wire.FROM_SERVER, "error", {"code": "wrong-password", "text": "wrong password"}),
]


@pytest.mark.parametrize("schema, kind, fields", EXAMPLES)
def test_round_trip(schema, kind, fields) -> None:
    message = wire.decode(wire.encode(kind, **fields), schema)
    assert message.type == kind
    assert dict(message.fields) == fields


def _obj(**kw):
    return json.dumps(kw).encode()


@pytest.mark.parametrize(
    "frame, why",
    [
        (b"", "not a UTF-8 JSON object"),
        (b"\xc3\x28", "not a UTF-8 JSON object"),
        (b"1", "not a UTF-8 JSON object"),
        (b'{"v":1}', "no type"),
        (b'{"type":5}', "no type"),
        (_obj(type="welcome"), "unknown message type"),
        (_obj(type="hello", v=1, room="main"), "lacks field 'name'"),
        (_obj(type="hello", v=True, room="main", name="a"), "expected an integer"),
        (_obj(type="hello", v=1.0, room="main", name="a"), "expected an integer"),
        (_obj(type="hello", v=1, room="main", name="a", extra=1), "unknown field"),
        (_obj(type="hello", v=1, room="main", name="a\x1b[31m"), "control characters"),
        (_obj(type="hello", v=1, room="main", name="a\u202e"), "control characters"),
        (_obj(type="hello", v=1, room="main", name="x" * 33), "longer than"),
        (b'{"type":"hello","v":1,"room":"main","name":"\\ud800"}', "control characters"),
        (b'{"type":"ping","id":NaN}', "not a UTF-8 JSON object"),
        (_obj(type="share", X="!!!"), "invalid base64"),
        (_obj(type="share", X="AAAA"), "expected 65..65 bytes"),
        (_obj(type="send", sid="AA==", n=1, ct="AA=="), "expected 16..16 bytes"),
        (_obj(type="send", sid="AQEBAQEBAQEBAQEBAQEBAQ==", n=-1, ct="A" * 24), "out of range"),
        (_obj(type="send", sid="AQEBAQEBAQEBAQEBAQEBAQ==", n=1, ct="A" * 40000), "longer than"),
        (b"[" * 5000 + b"]" * 5000, "not a UTF-8 JSON object"),
        (b'{"type":"send","type":"who"}', "repeats a JSON member"),
        (b'{"type":"ping","id":1,"id":2}', "repeats a JSON member"),
        (b'{"type":"members","members":[{"name":"a","addr":"b","name":"c"}]}',
         "repeats a JSON member"),
    ],
)
def test_rejects(frame: bytes, why: str) -> None:
    with pytest.raises(BadMessage, match=why.replace("(", r"\(").replace("[", r"\[")):
        wire.decode(frame, wire.FROM_CLIENT)


def test_encode_is_ascii_and_compact() -> None:
    frame = wire.encode("notice", code="x", text="caf\u00e9")
    assert frame == b'{"type":"notice","code":"x","text":"caf\\u00e9"}'


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_any_bytes_decode_or_bad_message(data: bytes) -> None:
    for schema in (wire.FROM_CLIENT, wire.FROM_SERVER):
        try:
            wire.decode(data, schema)
        except BadMessage:
            pass


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(sorted(set(wire.FROM_CLIENT) | set(wire.FROM_SERVER))),
    st.dictionaries(
        st.sampled_from(["v", "room", "name", "X", "mac", "sid", "n", "ct", "id", "salt",
                         "r", "p", "Y", "members", "from", "addr", "code", "text", "ts",
                         "hist", "max_text", "zzz"]),
        _json,
        max_size=6,
    ),
)
def test_structured_garbage_decodes_or_bad_message(kind: str, fields: dict) -> None:
    frame = json.dumps({"type": kind, **fields}).encode()
    for schema in (wire.FROM_CLIENT, wire.FROM_SERVER):
        try:
            message = wire.decode(frame, schema)
        except BadMessage:
            continue
        # whatever decodes re-encodes to something that decodes the same
        assert wire.decode(wire.encode(message.type, **message.fields), schema) == message


@pytest.mark.parametrize("max_frame", [1024, 4096, 20000, wire.MAX_FRAME])
def test_max_text_fits_the_frame_limit(max_frame: int) -> None:
    """
    The longest text allowed for a frame limit, signed with the most lost
    numbers an envelope carries and sealed at the highest counter, makes a
    send frame within the limit; the limit is never more than 16 KiB.
    """
    from twistchat.crypto.identity import Identity
    from twistchat.crypto.seal import MAX_COUNTER, Sealer
    from twistchat.crypto.signed import MAX_LOST, MAX_SEQ, Fields, seal_signed

    longest = wire.max_text_for(max_frame)
    assert 0 < longest <= wire.MAX_TEXT_BYTES
    sealer = Sealer(b"k" * 32, "main", "alice")
    sealer._next = MAX_COUNTER
    fields = Fields(MAX_SEQ, b"\x01" * 32, b"\x02" * 32, "é" * (longest // 2),
                    tuple(range(1, MAX_LOST + 1)))
    sent = seal_signed(sealer, Identity.generate(), fields)
    frame = wire.encode("send", sid=sent.sid, n=sent.n, ct=sent.ciphertext)
    assert len(frame) <= max_frame
    if longest < wire.MAX_TEXT_BYTES:
        # Not far below what would fit: within two padding blocks.
        assert len(frame) > max_frame - 4 * 32 * 4 // 3 - wire.messages.SEND_OVERHEAD


def test_welcome_announces_the_text_limit_for_the_frame_limit() -> None:
    assert wire.max_text_for(wire.MAX_FRAME) == wire.MAX_TEXT_BYTES
    assert wire.max_text_for(4096) < wire.max_text_for(8192) < wire.MAX_TEXT_BYTES


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def _walked(value: Any) -> Any:
    """
    Bytes anywhere in C{value} as base64 text (what L{wire.encode} promises).
    """
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, list):
        return [_walked(item) for item in value]
    if isinstance(value, dict):
        return {key: _walked(item) for key, item in value.items()}
    return value


@given(fields=st.dictionaries(st.text().filter(lambda k: k != "type"), _json_values, max_size=5))
def test_encode_turns_bytes_anywhere_into_base64(fields: dict[str, Any]) -> None:
    """
    The encoder's own hook converts bytes at any depth (a member list's keys):
    the same text as converting them first, then encoding.
    """
    expected = json.dumps({"type": "x", **_walked(fields)}, separators=(",", ":"))
    assert wire.encode("x", **fields) == expected.encode("ascii")


def test_encode_refuses_what_json_cannot_carry() -> None:
    with pytest.raises(TypeError, match="a set cannot be sent"):
        wire.encode("x", members=[{"key": {1}}])


@settings(max_examples=300, deadline=None)
@given(
    sender=st.text(max_size=40),
    sid=st.binary(min_size=16, max_size=16),
    n=st.integers(0, wire.messages.MAX_COUNTER),
    ct=st.binary(min_size=16, max_size=600),
    seq=st.integers(0, 2**63 - 1),
    order=st.permutations(["sid", "n", "ct"]),
    spaced=st.booleans(),
    escape_slash=st.booleans(),
)
def test_relayed_and_acknowledged_are_what_encode_gives(
    sender: str, sid: bytes, n: int, ct: bytes, seq: int, order: list[str], spaced: bool,
    escape_slash: bool,
) -> None:
    # The send as a client may write it: any member order, spacing, "\/".
    values = {"sid": base64.b64encode(sid).decode(), "n": n, "ct": base64.b64encode(ct).decode()}
    text = json.dumps({"type": "send", **{k: values[k] for k in order}},
                      separators=(", ", ": ") if spaced else (",", ":"))
    if escape_slash:
        text = text.replace("/", "\\/")
    send = wire.decode(text.encode(), wire.FROM_CLIENT)
    assert wire.relayed(sender, send) == wire.encode(
        "msg", **{"from": sender}, sid=values["sid"], n=n, ct=values["ct"])
    assert wire.acknowledged(send, seq) == wire.encode(
        "ack", sid=values["sid"], n=n, seq=seq)
    relayed = wire.decode(wire.relayed("alice", send), wire.FROM_SERVER)
    assert (relayed["from"], relayed["sid"], relayed["n"], relayed["ct"]) == ("alice", sid, n, ct)


def test_only_a_send_is_relayed_or_acknowledged() -> None:
    who = wire.decode(wire.encode("who"), wire.FROM_CLIENT)
    with pytest.raises(ValueError):
        wire.relayed("alice", who)
    with pytest.raises(ValueError):
        wire.acknowledged(who, 1)
