"""
Property-based fuzzing (hypothesis) of every decoder of untrusted input: any
input either decodes or raises twistchat's own error type (a subclass of
TwistchatError, with the specific class noted per decoder), never anything else.

| Decoder | Test |
|---------|------|
| wire.decode, both schemas, any bytes | tests/test_wire.py::test_any_bytes_decode_or_bad_message |
| wire.decode, both schemas, JSON objects of known fields | tests/test_wire.py::test_structured_garbage_decodes_or_bad_message |
| wire.decode, JSON text: duplicate keys, deep nesting, huge numbers | test_json_text_decodes_or_bad_message |
| Verifier.from_json (a verifier file's object) | test_verifier_object_loads_or_config_error, test_mutated_verifier_loads_or_config_error |
| verifiers.load_verifier (a verifier file's bytes) | test_verifier_file_loads_or_config_error |
| Opener.open (a sealed payload: sender, sid, n, ct) | test_opener_opens_or_rejects; see also tests/test_crypto_seal.py::test_property_* |
| decode_point (a peer's X or Y share) | test_decode_point_or_bad_point |
| VerifierSession.respond (the server's use of X) | test_server_share_handling_or_auth_error |
| Prover.finish (the client's use of Y and the server's MAC) | test_client_verify_handling_or_auth_error |
| ChatClientProtocol, any frame from the server in any state | test_client_survives_any_server_frame, test_client_survives_any_server_bytes |
| ChatServerProtocol, any bytes from a client before or after login | test_server_survives_any_client_bytes; over real TLS: tests/test_hostile.py |
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twistchat import wire
from twistchat.client.keyring import Keyring, RoomKeys
from twistchat.client.protocol import ChatClientProtocol, State
from twistchat.crypto.kdf import DEFAULT_PARAMS
from twistchat.crypto.seal import Opener, Sealer
from twistchat.crypto.spake2plus import (
    ORDER,
    G,
    Prover,
    VerifierKey,
    VerifierSession,
    context,
    decode_point,
    encode_point,
)
from twistchat.crypto.verifier import Verifier
from twistchat.errors import (
    AuthFailed,
    BadMessage,
    BadPoint,
    ConfigError,
    Rejected,
    TwistchatError,
)
from twistchat.server.limits import Limits
from twistchat.server.room import Rooms
from twistchat.server.service import ChatServerFactory
from twistchat.server.verifiers import load_verifier
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from .test_server_protocol import BINDING, Peer

KEY = bytes(range(32))
SCALARS = st.integers(min_value=1, max_value=ORDER - 1)

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


# --- wire.decode on JSON text that json.dumps would never write --------------------


@st.composite
def json_texts(draw: Any) -> bytes:
    kind = draw(st.sampled_from(sorted(set(wire.FROM_CLIENT) | set(wire.FROM_SERVER))))
    parts = [f'"type":{json.dumps(kind)}']
    for _ in range(draw(st.integers(0, 5))):
        key = draw(st.sampled_from(["type", "v", "name", "room", "n", "X", "mac", "ct",
                                    "sid", "id", "members", "from"]))
        value = draw(st.one_of(
            st.integers().map(str),
            st.integers(min_value=1, max_value=5000).map(lambda k: "9" * k),
            st.integers(min_value=1, max_value=3000).map(lambda k: "[" * k + "]" * k),
            st.integers(min_value=1, max_value=3000).map(lambda k: "[" * k),
            st.sampled_from(["1e999", "-1e999", "NaN", "Infinity", "1.5", "-0", "true",
                             '"\\ud800"', '"\\u001b[31m"', '"\\u202e"', "null", "{}"]),
            _json.map(json.dumps),
        ))
        parts.append(f"{json.dumps(key)}:{value}")
    body = "{" + ",".join(draw(st.permutations(parts))) + "}"
    return body.encode("utf-8", "surrogatepass")


@settings(max_examples=300, deadline=None)
@given(json_texts())
def test_json_text_decodes_or_bad_message(frame: bytes) -> None:
    for schema in (wire.FROM_CLIENT, wire.FROM_SERVER):
        try:
            message = wire.decode(frame, schema)
        except BadMessage:
            continue
        assert message.type in schema


# --- verifier files ---------------------------------------------------------------------


def _valid_verifier() -> dict[str, Any]:
    w0, w1 = 12345, 67890
    return Verifier("main", b"s" * 16, DEFAULT_PARAMS, w0, encode_point(G * w1)).to_json()


VALID = _valid_verifier()


def test_valid_verifier_loads() -> None:
    assert Verifier.from_json(VALID).room == "main"


@settings(max_examples=300, deadline=None)
@given(_json)
def test_verifier_object_loads_or_config_error(obj: Any) -> None:
    try:
        Verifier.from_json(obj)
    except ConfigError:
        pass


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(sorted(VALID) + ["extra"]),
    st.one_of(_json, st.just(None), st.sampled_from(["", "0" * 64, "f" * 64, "f" * 130,
                                                     "04" + "0" * 128, "AAAA", "\u00e9"])),
    st.sampled_from(["replace", "delete", "scrypt"]),
)
def test_mutated_verifier_loads_or_config_error(key: str, value: Any, how: str) -> None:
    obj = json.loads(json.dumps(VALID))
    if how == "delete":
        obj.pop(key, None)
    elif how == "scrypt":
        obj["scrypt"][key[:1]] = value
    else:
        obj[key] = value
    try:
        Verifier.from_json(obj)
    except ConfigError:
        pass


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(
    st.binary(max_size=300),
    json_texts(),
    st.integers(min_value=1, max_value=100000).map(lambda k: b"[" * k),
    st.binary(max_size=40).map(lambda junk: json.dumps(VALID).encode()[:-1] + junk),
))
def test_verifier_file_loads_or_config_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "room.json"
    path.write_bytes(data)
    try:
        load_verifier(path)
    except ConfigError as e:
        assert str(path) in e.message


def test_deeply_nested_verifier_file_is_a_config_error(tmp_path: Path) -> None:
    # Found by the fuzzing above: json raised RecursionError, not ValueError.
    path = tmp_path / "room.json"
    path.write_bytes(b"[" * 100000)
    with pytest.raises(ConfigError, match="is not JSON"):
        load_verifier(path)


# --- sealed payloads ----------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    sender=st.text(max_size=40),
    sid=st.binary(max_size=40),
    n=st.integers(min_value=-(2**70), max_value=2**70),
    ct=st.binary(max_size=300),
    genuine=st.booleans(),
)
def test_opener_opens_or_rejects(sender: str, sid: bytes, n: int, ct: bytes,
                                 genuine: bool) -> None:
    opener = Opener(KEY, "main")
    if genuine and len(sid) == 16:
        sealer = Sealer(KEY, "main", "alice", sid=sid)
        opener.open("alice", *sealer.seal("genuine"))
    try:
        text = opener.open(sender, sid, n, ct)
    except Rejected:
        return
    assert isinstance(text, str)


# --- SPAKE2+ shares from a peer -----------------------------------------------------------


def _points() -> Any:
    on_curve = SCALARS.map(lambda k: encode_point(G * k))
    return st.one_of(
        st.binary(max_size=80),
        st.binary(min_size=64, max_size=64).map(lambda b: b"\x04" + b),
        on_curve,
        st.tuples(on_curve, st.integers(0, 64), st.integers(1, 255)).map(
            lambda t: t[0][: t[1]] + bytes([t[0][t[1]] ^ t[2]]) + t[0][t[1] + 1 :]
            if t[1] < len(t[0]) else t[0]
        ),
    )


@settings(max_examples=300, deadline=None)
@given(_points())
def test_decode_point_or_bad_point(data: bytes) -> None:
    try:
        point = decode_point(data)
    except BadPoint:
        return
    assert encode_point(point) == data


@settings(max_examples=100, deadline=None)
@given(_points(), SCALARS, SCALARS)
def test_server_share_handling_or_auth_error(share: bytes, w0: int, w1: int) -> None:
    key = VerifierKey(w0, encode_point(G * w1))
    session = VerifierSession(key, context(b"\x01" * 32), b"mallory", b"main")
    try:
        share_v, confirm_v = session.respond(share)
    except AuthFailed:
        return
    assert len(share_v) == 65 and len(confirm_v) == 32


@settings(max_examples=100, deadline=None)
@given(_points(), st.binary(max_size=40), SCALARS, SCALARS)
def test_client_verify_handling_or_auth_error(share: bytes, mac: bytes, w0: int,
                                              w1: int) -> None:
    prover = Prover(context(b"\x01" * 32), b"alice", b"main", w0, w1)
    prover.share()
    with pytest.raises(AuthFailed):
        # Nobody but a server knowing the verifier can produce a valid MAC.
        prover.finish(share, mac)


# --- the client's handling of server frames ----------------------------------------------


class Handler:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def logged_in(self, protocol: Any, welcome: Any) -> None:
        self.calls.append(("logged_in", welcome))

    def login_failed(self, error: Any) -> None:
        self.calls.append(("login_failed", error.value))

    def message(self, sender: str, opened: Any, message: Any) -> None:
        self.calls.append(("message", opened.text))

    def rejected(self, sender: str, error: Rejected) -> None:
        self.calls.append(("rejected", error))

    def event(self, message: Any) -> None:
        self.calls.append(("event", message))

    def closed(self, reason: Any) -> None:
        self.calls.append(("closed", reason))


def client_in(state: State) -> ChatClientProtocol:
    proto = ChatClientProtocol(
        Handler(), "alice", "main",
        Keyring("password", "main", derive=lambda password, salt, params: Deferred()),
        channel_binding=lambda transport: b"\x01" * 32,
        clock=Clock(),
    )
    proto.makeConnection(StringTransport())
    proto.state = state
    if state is State.VERIFY:
        proto._prover = Prover(context(b"\x01" * 32), b"alice", b"main", 5, 7)
        proto._prover.share()
    if state is State.WELCOME:
        proto._keys = RoomKeys(5, 7, b"c" * 32)
    if state is State.MEMBER:
        proto._sealer = Sealer(KEY, "main", "alice")
        proto._opener = Opener(KEY, "main")
    return proto


def _server_frames() -> Any:
    kinds = sorted(wire.FROM_SERVER)
    valid_ish = st.tuples(
        st.sampled_from(kinds),
        st.dictionaries(
            st.sampled_from(["salt", "n", "r", "p", "Y", "mac", "name", "room", "addr",
                             "members", "from", "sid", "ct", "code", "text", "id", "ts",
                             "hist", "max_text", "rate", "burst"]),
            st.one_of(_json, st.binary(max_size=80), st.integers(0, 2**31)),
            max_size=6,
        ),
    ).map(lambda t: wire.encode(t[0], **t[1]))
    return st.one_of(st.binary(max_size=200), valid_ish, json_texts())


def _check_client(proto: ChatClientProtocol, data: bytes) -> None:
    proto.dataReceived(data)  # nothing may raise out of here
    if proto._error is not None:
        assert isinstance(proto._error, TwistchatError)
        assert proto.transport.disconnecting or proto.transport.disconnected
    proto.connectionLost(None)
    for call, value in proto.handler.calls:
        if call in ("login_failed", "closed") and value is not None:
            assert isinstance(value, TwistchatError)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([State.PARAMS, State.VERIFY, State.WELCOME, State.MEMBER]),
       _server_frames())
def test_client_survives_any_server_frame(state: State, frame: bytes) -> None:
    _check_client(client_in(state), struct.pack(">I", len(frame)) + frame)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([State.PARAMS, State.VERIFY, State.WELCOME, State.MEMBER]),
       st.binary(max_size=300))
def test_client_survives_any_server_bytes(state: State, data: bytes) -> None:
    _check_client(client_in(state), data)


# --- the server's handling of client frames -----------------------------------------------


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.booleans(), st.one_of(
    st.binary(max_size=300),
    st.lists(st.one_of(st.binary(max_size=60), json_texts()), max_size=4).map(
        lambda bodies: b"".join(struct.pack(">I", len(b)) + b for b in bodies)),
))
def test_server_survives_any_client_bytes(verifier: Any, no_logged_errors: list[Any],
                                          member: bool, data: bytes) -> None:
    """
    Whatever a client sends, before or after login, the server either carries
    on or answers with an error and closes; it never raises or logs a traceback.
    """
    factory = ChatServerFactory(Rooms([verifier]), Clock(), Limits(),
                                channel_binding=lambda transport: BINDING)
    peer = Peer(factory, 4000)
    if member:
        assert peer.login("mallory")[0].type == "welcome"
    peer.proto.dataReceived(data)
    if peer.transport.disconnecting:
        assert peer.received()[-1].type == "error"
    peer.proto.connectionLost(None)
    assert no_logged_errors == []
    assert factory.preauth_total == 0 and len(factory.rooms.get("main")) == 0
