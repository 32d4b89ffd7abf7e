"""
The page's cryptography and codec (web/src, bundled into
twistchat/web/static/twistchat.js) against the Python implementation, byte for byte.

L{test_javascript_matches_python} writes vectors made with the real Python code (the
RFC 9383 and RFC 7914 vectors too) into a JSON file, runs
C{node web/test/vectors.mjs FILE} on the shipped bundle, and checks that the
JavaScript reproduces every value, opens and verifies what Python sealed and signed,
refuses what Python refuses with the same message, and that Python opens and verifies
what the JavaScript sealed and signed. L{test_bundle_is_what_the_lockfile_builds}
rebuilds the bundle from the lockfile in a scratch directory and compares.

Node (and, for the rebuild, npm with the registry or its cache) must be installed:
without them these tests fail with a message saying so; they never skip.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from twistchat import wire
from twistchat.client import pins as pinning
from twistchat.crypto import kdf, safety, seal, signed, spake2plus
from twistchat.crypto.identity import Identity
from twistchat.crypto.vouch import check_vouch, make_vouch
from twistchat.crypto.webbinding import web_binding
from twistchat.errors import TwistchatError

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "web"
BUNDLE = ROOT / "twistchat" / "web" / "static" / "twistchat.js"
#: The page's own code (web/src/page), which imports the bundle.
PAGE = BUNDLE.with_name("app.js")
VECTORS = Path(__file__).resolve().parent / "vectors"
#: Largest bundle we accept without a second look (bytes).
MAX_BUNDLE_BYTES = 150_000


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: the browser code's tests need Node.js 18 or newer"
            " (sh tests/system-packages.sh installs it)"
        )
    return path


def _outcome(fn: Callable[[], Any]) -> dict[str, Any]:
    try:
        return {"ok": fn()}
    except (TwistchatError, ValueError, TypeError, OverflowError) as error:
        return {"error": type(error).__name__, "message": str(error)}


def _plain(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return {"hex": bytes(value).hex()}
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return {"int": str(value)}
    if isinstance(value, float):
        return {"float": value}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return {k: _plain(v) for k, v in value.items()}


def _signed_view(m: signed.SignedMessage | signed.UnsignedMessage) -> dict[str, Any]:
    if isinstance(m, signed.UnsignedMessage):
        return {"signed": False, "text": m.text}
    return {
        "signed": True, "key": m.key.hex(), "seq": str(m.seq), "prev": m.prev.hex(),
        "seen": m.seen.hex(), "lost": [str(x) for x in m.lost], "text": m.text,
        "signature": m.signature.hex(), "hash": m.hash.hex(),
    }


# --- the vectors, made with the Python code ---------------------------------------------

ROOM = "Lobby ☕"
SENDER = "alice"
SEED = bytes(range(32))
SID = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
PLAN: list[dict[str, Any]] = [
    {"version": 1, "text": "unsigned, from before identity keys"},
    {"version": 2, "text": "hello <b>world</b>", "seq": 1, "lost": []},
    {"version": 2, "text": "", "seq": 2, "lost": []},
    {"version": 2, "text": "émoji 🎉 and ‮bidi‬", "seq": 5, "lost": [3, 4]},
    {"version": 2, "text": "x" * 300, "seq": 6, "lost": []},
]


def _fields(m: dict[str, Any]) -> signed.Fields:
    return signed.Fields(seq=m["seq"], prev=bytes.fromhex(m["prev"]), seen=bytes.fromhex(m["seen"]),
                         text=m["text"], lost=tuple(m["lost"]))


def _chain(plan: list[dict[str, Any]]) -> None:
    """Fill in prev and seen so each envelope is valid (prev links don't need to match)."""
    for i, m in enumerate(plan):
        if m["version"] == 2:
            m["prev"] = (b"\x00" * 32 if m["seq"] == 1 else hashlib.sha256(bytes([i])).digest()).hex()
            m["seen"] = hashlib.sha256(b"seen" + bytes([i])).digest().hex()


_chain(PLAN)


def _login_vectors() -> dict[str, Any]:
    password = "correct horse ☕ café"
    salt = bytes(range(16))
    params = kdf.DEFAULT_PARAMS
    secrets = kdf.derive_secrets(password, salt, params)
    name, room, origin = "alice", ROOM, "https://chat.example:8443"
    nonce = hashlib.sha256(b"nonce").digest()
    cert = hashlib.sha256(b"certificate").digest()
    binding = web_binding(origin, nonce, cert)
    context = spake2plus.context(binding)
    x = int.from_bytes(hashlib.sha256(b"x").digest(), "big") % spake2plus.ORDER
    y = int.from_bytes(hashlib.sha256(b"y").digest(), "big") % spake2plus.ORDER
    key = spake2plus.VerifierKey(secrets.w0, spake2plus.encode_point(spake2plus.G * secrets.w1))
    prover = spake2plus.Prover(context, name.encode(), room.encode(), secrets.w0, secrets.w1, x=x)
    server = spake2plus.VerifierSession(key, context, name.encode(), room.encode(), y=y)
    share_v, confirm_v = server.respond(prover.share())
    confirm_p, k_shared = prover.finish(share_v, confirm_v)
    assert server.finish(confirm_p) == k_shared
    good = bytearray(share_v)
    bad_share_v = [
        share_v[:64].hex(),
        (b"\x02" + share_v[1:33]).hex() + "00" * 32,
        (b"\x04" + b"\xff" * 64).hex(),
        (b"\x04" + b"\x00" * 64).hex(),
        (bytes(good[:64]) + bytes([good[64] ^ 1])).hex(),
        spake2plus.encode_point(spake2plus.N * secrets.w0).hex(),
    ]
    expected_bad = []
    for s in bad_share_v:
        p = spake2plus.Prover(context, name.encode(), room.encode(), secrets.w0, secrets.w1, x=x)
        expected_bad.append(_outcome(lambda p=p, s=s: p.finish(bytes.fromhex(s), confirm_v) and None))
    return {
        "vectors": {
            "password": password,
            "passwordNfd": "correct horse ☕ cafe\u0301",
            "salt": salt.hex(),
            "params": {"n": params.n, "r": params.r, "p": params.p},
            "name": name, "room": room, "origin": origin, "nonce": nonce.hex(),
            "certSha256": cert.hex(), "x": str(x), "shareV": share_v.hex(),
            "confirmV": confirm_v.hex(), "badShareV": bad_share_v,
        },
        "expected": {
            "w0": str(secrets.w0), "w1": str(secrets.w1),
            "contentSecret": secrets.content_secret.hex(), "binding": binding.hex(),
            "context": context.hex(), "shareP": prover.share().hex(),
            "confirmP": confirm_p.hex(), "K_shared": k_shared.hex(),
            "contentKey": kdf.content_key(secrets.content_secret, room).hex(),
            "badShareV": expected_bad, "nfc": str(secrets.w0),
        },
        "key": key,
        "context": context,
    }


def _seal_vectors() -> dict[str, Any]:
    content_key = hashlib.sha256(b"content key").digest()
    identity = Identity.from_seed(SEED)
    sealer = seal.Sealer(content_key, ROOM, SENDER, sid=SID)
    sealed, same = [], []
    for m in PLAN:
        if m["version"] == 1:
            sid, n, ct = sealer.seal(m["text"])
            digest = None
        else:
            sid, n, ct, h = signed.seal_signed(sealer, identity, _fields(m))
            digest = h.hex()
        sealed.append({"sender": SENDER, "sid": sid.hex(), "n": str(n), "ct": ct.hex()})
        same.append({"n": str(n), "ct": ct.hex(), "hash": digest})
    first, second = sealed[1], sealed[2]
    tampered = dict(second, ct=bytes([bytes.fromhex(second["ct"])[0] ^ 1]).hex() + second["ct"][2:])
    refused = [
        {"before": [first], **first},  # the same message twice
        {"before": [second], **first},  # an earlier counter after a later one
        {"before": [], **tampered},
        {"before": [], **dict(first, sender="bob")},
        {"before": [], **dict(first, n="9")},
    ]
    opener = seal.Opener(content_key, ROOM)
    expected_opened = [
        _outcome(lambda m=m: _signed_view(signed.open_message(
            opener, m["sender"], bytes.fromhex(m["sid"]), int(m["n"]), bytes.fromhex(m["ct"]))))
        for m in sealed
    ]
    expected_refused = []
    for r in refused:
        fresh = seal.Opener(content_key, ROOM)
        for b in r["before"]:
            signed.open_message(fresh, b["sender"], bytes.fromhex(b["sid"]), int(b["n"]),
                                bytes.fromhex(b["ct"]))
        expected_refused.append(_outcome(lambda r=r, fresh=fresh: _signed_view(signed.open_message(
            fresh, r["sender"], bytes.fromhex(r["sid"]), int(r["n"]), bytes.fromhex(r["ct"])))))
    pad_cases = [b"", b"a", b"x" * 31, b"x" * 32, b"\x80" * 40]
    unpad_cases = [seal.pad(c) for c in pad_cases] + [
        b"", b"\x00" * 32, b"a" * 32, b"a" * 31 + b"\x80" + b"\x00" * 32, b"\x80" + b"\x00" * 30,
    ]
    ad_cases = [[ROOM, SENDER, "1", 1], [ROOM, SENDER, str(2**63 - 1), 2], ["", "bob", "0", 1]]
    return {
        "vectors": {
            "contentKey": content_key.hex(), "sid": SID.hex(), "room": ROOM, "sender": SENDER,
            "seed": SEED.hex(), "plan": PLAN, "sealed": sealed, "refused": refused,
            "padCases": [c.hex() for c in pad_cases], "unpadCases": [c.hex() for c in unpad_cases],
            "adCases": ad_cases,
        },
        "expected": {
            "sessionKey": seal.session_key(content_key, SID).hex(),
            "pad": [seal.pad(c).hex() for c in pad_cases],
            "unpad": [_outcome(lambda c=c: seal.unpad(c).hex()) for c in unpad_cases],
            "ad": [seal.associated_data(r, s, SID, int(n), v).hex() for r, s, n, v in ad_cases],
            "opened": expected_opened, "refused": expected_refused, "same": same,
        },
        "contentKey": content_key,
    }


def _envelope_vectors() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    identity = Identity.from_seed(SEED)
    fields = signed.Fields(seq=3, prev=b"\x01" * 32, seen=b"\x02" * 32, text="hi ☕", lost=(1, 2))
    good = signed.encode_signed(identity, ROOM, SENDER, SID, 7, fields)
    body, sig = good[:-64], good[-64:]
    order = 2**252 + 27742317777372353535851937790883648493
    s = int.from_bytes(sig[32:], "little")
    malleated = body + sig[:32] + (s + order).to_bytes(32, "little")

    def resign(new_body: bytes) -> bytes:
        return new_body + identity.sign(signed.to_be_signed(ROOM, SENDER, SID, 7, new_body))

    key = identity.public_key
    seq = (3).to_bytes(8, "big")
    fixed = key + seq + b"\x01" * 32 + b"\x02" * 32
    small_order = bytes.fromhex("01" + "00" * 31)  # the neutral element
    cases = [
        good, good[:100], good + b"\x00", good[:-1] + bytes([good[-1] ^ 1]), malleated,
        resign(key + (0).to_bytes(8, "big") + body[40:]),
        resign(key + (1).to_bytes(8, "big") + body[40:]),
        resign(fixed + b"\x11" + body[105:]),
        resign(fixed + b"\x02" + (2).to_bytes(8, "big") + (1).to_bytes(8, "big") + body[121:]),
        resign(fixed + b"\x01" + (3).to_bytes(8, "big") + b"\x00\x00"),
        resign(fixed + b"\x00" + b"\x00\x02\xff\xfe"),
        resign(fixed + b"\x00" + b"\x40\x01" + b"a" * 10),
        small_order + good[32:],
        b"\xff" * 32 + good[32:],
    ]
    envelopes = []
    for data in cases:
        envelopes.append({"room": ROOM, "sender": SENDER, "sid": SID.hex(), "n": "7", "data": data.hex()})
    envelopes.append({"room": "other", "sender": SENDER, "sid": SID.hex(), "n": "7", "data": good.hex()})
    envelopes.append({"room": ROOM, "sender": "bob", "sid": SID.hex(), "n": "7", "data": good.hex()})
    envelopes.append({"room": ROOM, "sender": SENDER, "sid": SID.hex(), "n": "8", "data": good.hex()})
    zero = "00" * 32
    encode_errors = [
        {"seq": 0, "prev": zero, "seen": zero, "text": "", "lost": []},
        {"seq": 2, "prev": zero, "seen": zero, "text": "", "lost": []},
        {"seq": 1, "prev": "01" * 32, "seen": zero, "text": "", "lost": []},
        {"seq": 5, "prev": "01" * 32, "seen": zero, "text": "", "lost": [2, 2]},
        {"seq": 5, "prev": "01" * 32, "seen": zero, "text": "", "lost": [5]},
        {"seq": 30, "prev": "01" * 32, "seen": zero, "text": "", "lost": list(range(1, 18))},
        {"seq": 2, "prev": "01" * 32, "seen": zero, "text": "y" * 16385, "lost": []},
        {"seq": 2, "prev": "01" * 31, "seen": zero, "text": "", "lost": []},
        {"seq": 2, "prev": "01" * 32, "seen": zero, "text": "fine", "lost": [1]},
    ]
    return envelopes, encode_errors


def _frames() -> list[list[str]]:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    sid, ct, point, mac = b64(SID), b64(b"\x00" * 48), b64(b"\x04" * 65), b64(b"\x01" * 32)
    server = [
        wire.encode("params", salt=bytes(16), n=2**15, r=8, p=1),
        wire.encode("verify", Y=b"\x04" * 65, mac=b"\x01" * 32),
        wire.encode("welcome", name="alice", room=ROOM, addr="127.0.0.1", members=[
            {"name": "bob", "addr": "::1", "key": bytes(range(32))}], max_text=16000, rate=2.5,
            burst=10),
        wire.encode("msg", **{"from": "bob"}, sid=SID, n=2**63 - 1, ct=b"\x00" * 48, ts=1.5e9,
                    hist=True),
        wire.encode("joined", name="bob", addr="1.2.3.4", key=bytes(range(32))),
        wire.encode("joined", name="bob", addr="1.2.3.4"),
        wire.encode("joined", name="bob", addr="1.2.3.4", key=bytes(range(32)),
                    vouch=bytes(range(104))),
        wire.encode("joined", name="bob", addr="1.2.3.4", key=bytes(range(32)),
                    vouch=bytes(range(103))),
        wire.encode("welcome", name="alice", room=ROOM, addr="127.0.0.1", members=[
            {"name": "bob", "addr": "::1", "key": bytes(range(32)), "vouch": bytes(104)},
            {"name": "eve", "addr": "::2", "key": bytes(32)}]),
        wire.encode("members", members=[
            {"name": "bob", "addr": "::1", "key": bytes(32), "vouch": bytes(32)}]),
        wire.encode("members", members=[
            {"name": "bob", "addr": "::1", "key": bytes(32), "vouch": bytes(104), "x": 1}]),
        wire.encode("members", members=[
            {"name": "bob", "addr": "::1", "vouch": bytes(104), "x": 1}]),
        wire.encode("ack", sid=SID, n=2**63 - 1, seq=2**63 - 1),
        wire.encode("ack", sid=SID, n=1, seq=2**63),
        wire.encode("msg", **{"from": "bob"}, sid=SID, n=1, ct=b"\x00" * 16720),
        wire.encode("msg", **{"from": "bob"}, sid=SID, n=1, ct=b"\x00" * 16721),
        wire.encode("left", name="bob", addr="1.2.3.4"),
        wire.encode("members", members=[]),
        wire.encode("notice", code="x", text="t"),
        wire.encode("error", code="wrong-password", text="wrong password"),
        wire.encode("ping", id=3), wire.encode("pong"),
        b'{"type":"ping","id":1,"id":2}',
        b'{"type":"ping","x":{"a":1,"a":2}}',
        b'{"type":"ping","a":1,"a":2,}',
        b'\xef\xbb\xbf{"type":"pong"}',
        b'{"type":"pong"} x',
        b'{"type":"pong"',
        b'["pong"]',
        b'{"type":"p\\u00f6ng\\nxyz\\ud800 \'"}',
        b'{"type":"' + ("q" * 40).encode() + b'"}',
        b'{"type":1}',
        b'{"typ":"pong"}',
        b'\xff\xfe',
        b'{"type":"ping","id":1.0}',
        b'{"type":"ping","id":-1}',
        b'{"type":"ping","id":2147483648}',
        b'{"type":"ping","id":NaN}',
        b'{"type":"pong","zz":1,"\xc3\xa9":2,"\xf0\x9f\x98\x80":3,"\xef\xbd\x81":4}',
        b'{"type":"welcome","name":"a","room":"r","addr":"x","members":[],"rate":1e400}',
        b'{"type":"welcome","name":"a","room":"r","addr":"x","members":[],"rate":1' + b"0" * 400 + b"}",
        b'{"type":"welcome","name":"a","room":"r","addr":"x","members":[],"rate":-0.25}',
        b'{"type":"welcome","name":"a","room":"r","addr":"x","members":[{"name":"b"}]}',
        b'{"type":"welcome","name":"a","room":"r","addr":"x","members":[{"name":"b",'
        b'"addr":"x","key":"AAAA"}]}',
        b'{"type":"welcome","name":"a","room":"r","addr":"x","members":{}}',
        b'{"type":"welcome","name":"a\\u202eb","room":"r","addr":"x","members":[]}',
        b'{"type":"welcome","name":"' + "\U0001f600".encode() * 32 + b'","room":"r","addr":"x","members":[]}',
        b'{"type":"welcome","name":"' + "\U0001f600".encode() * 33 + b'","room":"r","addr":"x","members":[]}',
        b'{"type":"welcome","name":"a\\u0000","room":"r","addr":"x","members":[]}',
        b'{"type":"welcome","name":"a\x01","room":"r","addr":"x","members":[]}',
        b'{"type":"msg","from":"b","sid":"' + sid.encode() + b'","n":9223372036854775808,"ct":"'
        + ct.encode() + b'"}',
        b'{"type":"msg","from":"b","sid":"' + sid.encode() + b'","n":9007199254740993,"ct":"'
        + ct.encode() + b'"}',
        b'{"type":"msg","from":"b","sid":"AAAA","n":1,"ct":"' + ct.encode() + b'"}',
        b'{"type":"msg","from":"b","sid":"' + sid[:-2].encode() + b'=","n":1,"ct":"' + ct.encode() + b'"}',
        b'{"type":"msg","from":"b","sid":"' + sid.encode() + b'","n":1,"ct":"' + ct.encode() + b'","hist":1}',
        b'{"type":"params","salt":"QR==QR==QR==QR==QR==QR==","n":32768,"r":8,"p":1}',
        b'{"type":"params","salt":"' + b"Q" * 200 + b'","n":32768,"r":8,"p":1}',
        b'{"type":"verify","Y":"' + point.encode() + b'","mac":"' + mac.encode() + b'","mac2":1}',
        b'{"type":"verify","mac":"' + mac.encode() + b'"}',
        b' \t\n{"type" : "pong" , "id" : 0 }\r\n',
        b'{"type":"notice","code":"c","text":"\\"\\\\\\/\\b"}',
        b'{"type":"notice","code":"c","text":"' + b"[" * 600 + b'"}',
        b'{"type":"notice","code":"c","text":' + b"[" * 100 + b"]" * 100 + b"}",
    ]
    client = [
        wire.encode("hello", v=3, room=ROOM, name="alice"),
        wire.encode("share", X=b"\x04" * 65), wire.encode("confirm", mac=b"\x00" * 32),
        wire.encode("confirm", mac=b"\x00" * 32, key=bytes(32)),
        wire.encode("confirm", mac=b"\x00" * 32, key=bytes(32), vouch=bytes(range(104))),
        wire.encode("confirm", mac=b"\x00" * 32, key=bytes(32), vouch=b""),
        wire.encode("send", sid=SID, n=1, ct=b"\x00" * 48), wire.encode("who"),
        b'{"type":"hello","v":65537,"room":"r","name":"n"}',
        b'{"type":"verify","Y":"","mac":""}',
    ]
    return [["FROM_SERVER", f.hex()] for f in server] + [["FROM_CLIENT", f.hex()] for f in client]


ENCODE_CASES: list[tuple[str, dict[str, Any]]] = [
    ("hello", {"v": 3, "room": ROOM, "name": "al\"i\\ce\x7f\x00\U0001f600"}),
    ("share", {"X": b"\x04" * 65}),
    ("confirm", {"mac": bytes(range(32)), "key": bytes(range(32, 64))}),
    ("confirm", {"mac": bytes(range(32)), "key": bytes(range(32, 64)),
                 "vouch": bytes(range(104))}),
    ("send", {"sid": SID, "n": 2**63 - 1, "ct": bytes(range(48))}),
    ("who", {}),
    ("ping", {"id": 7}),
]


def _schema(schema: wire.messages.Schema) -> dict[str, list[list[str]]]:
    return {kind: [list(req), list(opt)] for kind, (req, opt) in schema.items()}


CHECK_PARAMS = [
    {"n": 2**15, "r": 8, "p": 1}, {"n": 2**14, "r": 8, "p": 1}, {"n": 2**15, "r": 7, "p": 1},
    {"n": 2**15, "r": 8, "p": 0}, {"n": 3 * 2**14, "r": 8, "p": 1}, {"n": 2**21, "r": 8, "p": 1},
    {"n": 2**15, "r": 17, "p": 1}, {"n": 2**15, "r": 8, "p": 5}, {"n": 2**20, "r": 16, "p": 1},
    {"n": 2**20, "r": 8, "p": 2}, {"n": 2**16, "r": 8, "p": 4},
]


VOUCHER = Identity.from_seed(bytes(range(100, 132)))
DEVICE = Identity.from_seed(bytes(range(140, 172))).public_key
NOT_AFTER = 1_800_000_000


def _vouch_vectors() -> tuple[dict[str, Any], dict[str, Any]]:
    """
    Vouches (docs/protocol.md 12.8): made from a fixed key, byte for byte; checked
    for their own room, name and key, and refused for others, alike.
    """
    make = [[ROOM, "alice", DEVICE.hex(), str(NOT_AFTER)],
            ["\U0001f600 room", "zoë", DEVICE.hex(), str(2**63 - 1)],
            [ROOM, "alice", VOUCHER.public_key.hex(), str(NOT_AFTER)]]
    good = make_vouch(VOUCHER, ROOM, "alice", DEVICE, NOT_AFTER)
    altered = bytearray(good)
    altered[50] ^= 1
    check = [
        [good.hex(), ROOM, "alice", DEVICE.hex(), NOT_AFTER - 1],
        [good.hex(), ROOM, "alice", DEVICE.hex(), NOT_AFTER],
        [good.hex(), ROOM, "alice", DEVICE.hex(), NOT_AFTER + 1],
        [good.hex(), "other", "alice", DEVICE.hex(), 0],
        [good.hex(), ROOM, "Alice", DEVICE.hex(), 0],
        [good.hex(), ROOM, "alice", VOUCHER.public_key.hex(), 0],
        [good.hex(), ROOM, "alice", bytes(32).hex(), 0],
        [bytes(altered).hex(), ROOM, "alice", DEVICE.hex(), 0],
        [good[:-1].hex(), ROOM, "alice", DEVICE.hex(), 0],
        [(Identity.from_seed(bytes(32)).public_key + good[32:]).hex(), ROOM, "alice",
         DEVICE.hex(), 0],
    ]

    def checked(data: str, room: str, name: str, key: str, now: int) -> dict[str, Any]:
        v = check_vouch(bytes.fromhex(data), room, name, bytes.fromhex(key), now)
        return {"voucher": v.voucher.hex(), "notAfter": str(v.not_after)}

    expected = {
        "make": [_outcome(lambda m=m: make_vouch(VOUCHER, m[0], m[1], bytes.fromhex(m[2]),
                                                 int(m[3])).hex()) for m in make],
        "check": [_outcome(lambda c=c: checked(*c)) for c in check],
    }
    return {"seed": bytes(range(100, 132)).hex(), "make": make, "check": check}, expected


_K = [bytes([i]) * 32 for i in range(6)]
#: Pin steps (docs/protocol.md 12.8): ["see", name, key, voucher or None] or
#: ["accept", name], keys by index into _K.
PIN_STEPS: list[list[Any]] = [
    ["see", "alice", 1, None], ["see", "alice", 1, None], ["see", "alice", 2, None],
    ["see", "alice", 2, 1], ["see", "alice", 2, None], ["see", "alice", 3, 2],
    ["see", "alice", 4, 5], ["see", "alice", 5, 1], ["accept", "alice"],
    ["see", "alice", 1, None], ["see", "alice", 3, 4], ["see", "bob", 2, 1],
    ["accept", "bob"], ["see", "bob", 3, 3],
]


def _pin_steps() -> list[list[Any]]:
    """
    What L{pinning.see} and accepting make of L{PIN_STEPS}: after each step, how
    the key compared (or the key accepted) and the name's pin.
    """
    pins: dict[str, pinning.Pin] = {}
    result = []
    for step in PIN_STEPS:
        name = step[1]
        if step[0] == "see":
            voucher = None if step[3] is None else _K[step[3]]
            pins[name], seen = pinning.see(pins.get(name), _K[step[2]], voucher)
            outcome: Any = seen.name.lower()
        else:
            pin = pins.get(name)
            outcome = None if pin is None or pin.changed is None else pin.changed.hex()
            if outcome is not None:
                assert pin is not None and pin.changed is not None
                pins[name] = pinning.Pin(pin.changed)
        pin = pins.get(name)
        result.append([outcome, None if pin is None else {
            "key": pin.key.hex(), "changed": pin.changed.hex() if pin.changed else None,
            "devices": [[d.hex(), v.hex()] for d, v in pin.devices]}])
    return result


def _make_vectors() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    rfc9383 = json.loads((VECTORS / "rfc9383_spake2plus_p256.json").read_text())
    rfc7914 = [v for v in json.loads((VECTORS / "rfc7914_scrypt.json").read_text())["scrypt"]
               if not v["slow"]]
    login = _login_vectors()
    sealed = _seal_vectors()
    envelopes, encode_errors = _envelope_vectors()
    members = [
        [name, Identity.from_seed(hashlib.sha256(name.encode()).digest()).public_key.hex()]
        for name in ["alice", "Bob", "ève", "zoë", "\U0001f600", "ｅ"]
    ]
    room_codes = [
        {"room": ROOM, "contentKey": sealed["contentKey"].hex(), "members": members},
        {"room": ROOM, "contentKey": sealed["contentKey"].hex(), "members": members[::-1]},
        {"room": "solo", "contentKey": "11" * 32, "members": members[:1]},
        {"room": "empty", "contentKey": "11" * 32, "members": []},
        {"room": "twice", "contentKey": "11" * 32, "members": [members[0], members[0]]},
    ]
    pairs = [[members[0][0], members[0][1], members[1][0], members[1][1]],
             [members[4][0], members[4][1], members[0][0], members[0][1]]]
    message_hashes = [[SID.hex(), "1", ""], [SID.hex(), str(2**63 - 1), "ab" * 100]]
    vouches, vouches_expected = _vouch_vectors()
    vectors = {
        "pinSteps": [[*step[:2], *(None if k is None else _K[k].hex() for k in step[2:])]
                     for step in PIN_STEPS],
        "vouches": vouches,
        "rfc9383": rfc9383,
        "rfc7914": rfc7914,
        "checkParams": CHECK_PARAMS,
        "login": login["vectors"],
        "seal": sealed["vectors"],
        "envelopes": envelopes,
        "encodeErrors": encode_errors,
        "messageHash": message_hashes,
        "safetyNumbers": pairs,
        "roomCodes": room_codes,
        "frames": _frames(),
        "encode": [[kind, [[k, _plain(v) if isinstance(v, (bytes, int)) else v]
                           for k, v in fields.items()]] for kind, fields in ENCODE_CASES],
    }
    expected = {
        "rfc9383": {k: rfc9383[k] for k in (
            "shareP", "Z", "V", "TT", "K_main", "K_confirmP", "K_confirmV", "confirmP", "K_shared")},
        "rfc7914": [v["dk"] for v in rfc7914],
        "checkParams": [
            _outcome(lambda p=p: kdf.check_params(kdf.ScryptParams(p["n"], p["r"], p["p"])))
            for p in CHECK_PARAMS
        ],
        "login": login["expected"],
        "seal": sealed["expected"],
        "vouches": vouches_expected,
        "pinSteps": _pin_steps(),
        "envelopes": [
            _outcome(lambda e=e: _signed_view(signed.decode_signed(
                e["room"], e["sender"], bytes.fromhex(e["sid"]), int(e["n"]),
                bytes.fromhex(e["data"]))))
            for e in envelopes
        ],
        "messageHash": [signed.message_hash(bytes.fromhex(s), int(n), bytes.fromhex(d)).hex()
                        for s, n, d in message_hashes],
        "safetyNumbers": [safety.safety_number(a, bytes.fromhex(ka), b, bytes.fromhex(kb))
                          for a, ka, b, kb in pairs],
        "roomCommitments": [safety.room_commitment(bytes.fromhex(r["contentKey"]), r["room"]).hex()
                            for r in room_codes],
        "roomCodes": [
            _outcome(lambda r=r: safety.room_safety_code(
                r["room"], safety.room_commitment(bytes.fromhex(r["contentKey"]), r["room"]),
                [(n, bytes.fromhex(k)) for n, k in r["members"]]))
            for r in room_codes
        ],
        "schemas": {"FROM_CLIENT": _schema(wire.FROM_CLIENT), "FROM_SERVER": _schema(wire.FROM_SERVER)},
        "decoded": [
            _outcome(lambda s=s, f=f: _plain({"type": (m := wire.decode(bytes.fromhex(f),
                                                                         getattr(wire, s))).type,
                                               "fields": dict(m.fields)}))
            for s, f in _frames()
        ],
        "encoded": [wire.encode(kind, **fields).hex() for kind, fields in ENCODE_CASES],
    }
    extra = {"contentKey": sealed["contentKey"], "login": login}
    return vectors, expected, extra


def _run_node(vectors: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    node = _tool("node")
    path = tmp_path / "vectors.json"
    path.write_text(json.dumps(vectors))
    result = subprocess.run(
        [node, str(WEB / "test" / "vectors.mjs"), str(path)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, f"node failed:\n{result.stderr[-3000:]}"
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, dict]:
    vectors, expected, extra = _make_vectors()
    return _run_node(vectors, tmp_path_factory.mktemp("web")), expected, extra


def test_rfc_vectors(results: tuple[dict, dict, dict]) -> None:
    got, expected, _ = results
    assert got["rfc9383"] == expected["rfc9383"]
    assert got["rfc7914"] == expected["rfc7914"]


def test_scrypt_parameters_refused_alike(results: tuple[dict, dict, dict]) -> None:
    got, expected, _ = results
    python = [{"ok": None} if "ok" in o else {"error": "WeakParameters", "message": o["message"]}
              for o in expected["checkParams"]]
    assert got["checkParams"] == python
    assert [i for i, o in enumerate(python) if "ok" in o] == [0, 10]
    assert got["deriveRefused"] == {
        "error": "WeakParameters", "message": "scrypt N=16384 is below the minimum 32768"}


def test_login_matches_python(results: tuple[dict, dict, dict]) -> None:
    got, expected, extra = results
    login = dict(got["login"])
    assert login.pop("wrongConfirmV") == {
        "error": "ServerNotAuthenticated",
        "message": "wrong password, or the server could not prove it knows this room"}
    shares = login.pop("randomShares")
    assert login == expected["login"]
    # a prover without a given x draws a fresh one: two valid, different shares
    assert shares[0] != shares[1]
    for share in shares:
        spake2plus.decode_point(bytes.fromhex(share))
    assert all(o["error"] == "BadPoint" for o in got["login"]["badShareV"])


def test_javascript_login_accepted_by_python_verifier(results: tuple[dict, dict, dict]) -> None:
    """The page's confirmP, over the page's transcript, is what the Python server checks."""
    got, _, extra = results
    login = extra["login"]
    y = int.from_bytes(hashlib.sha256(b"y").digest(), "big") % spake2plus.ORDER
    server = spake2plus.VerifierSession(login["key"], login["context"], b"alice", ROOM.encode(), y=y)
    server.respond(bytes.fromhex(got["login"]["shareP"]))
    assert server.finish(bytes.fromhex(got["login"]["confirmP"])).hex() == got["login"]["K_shared"]


def test_sealing_matches_python(results: tuple[dict, dict, dict]) -> None:
    got, expected, _ = results
    seal_got = {k: v for k, v in got["seal"].items() if k not in ("own", "ownKey")}
    assert seal_got == expected["seal"]
    assert [o["ok"]["text"] for o in expected["seal"]["opened"]] == [m["text"] for m in PLAN]
    assert [o.get("error") for o in expected["seal"]["refused"]] == [
        "Replayed", "Replayed", "Undecryptable", "Undecryptable", "Undecryptable"]


def test_python_opens_what_javascript_sealed(results: tuple[dict, dict, dict]) -> None:
    got, _, extra = results
    opener = seal.Opener(extra["contentKey"], ROOM)
    own = got["seal"]["own"]
    assert len({m["sid"] for m in own}) == 1 and own[0]["sid"] != SID.hex()
    for m, sent in zip(PLAN, own):
        opened = signed.open_message(opener, SENDER, bytes.fromhex(sent["sid"]), int(sent["n"]),
                                     bytes.fromhex(sent["ct"]))
        assert opened.text == m["text"]
        if m["version"] == 1:
            assert isinstance(opened, signed.UnsignedMessage)
        else:
            assert isinstance(opened, signed.SignedMessage)
            assert opened.key.hex() == got["seal"]["ownKey"]
            assert (opened.seq, opened.lost) == (m["seq"], tuple(m["lost"]))
            assert opened.hash.hex() == sent["hash"]


def test_envelopes_decoded_alike(results: tuple[dict, dict, dict]) -> None:
    got, expected, _ = results
    # case 12 names the neutral element (a small-order point) as the key: both
    # accept it as a point and refuse the signature
    for i, (js, py) in enumerate(zip(got["envelopes"], expected["envelopes"])):
        assert js == py, f"envelope case {i}"
    assert len(got["envelopes"]) == len(expected["envelopes"])
    assert "ok" in expected["envelopes"][0]
    assert got["messageHash"] == expected["messageHash"]
    python_errors = []
    for e in _envelope_vectors()[1]:
        outcome = _outcome(lambda e=e: signed.encode_signed(
            Identity.from_seed(bytes(32)), "room", "alice", bytes(16), 1, _fields(e)).hex())
        python_errors.append(outcome)
    for js, py in zip(got["encodeErrors"], python_errors, strict=True):
        if "ok" in py:
            assert js == py
        else:
            assert js["message"] == py["message"]


def test_pins_decide_as_python(results: tuple[dict, dict, dict]) -> None:
    """
    The page's pins (pins.js) see a key, a vouched device and a change, and
    accept a change, as the terminal's (client/pins.py) do, step for step.
    """
    got, expected, _ = results
    assert got["pinSteps"] == expected["pinSteps"]
    assert [o for o, _ in expected["pinSteps"]] == [
        "new", "pinned", "changed", "device", "pinned", "device", "changed", "device",
        _K[4].hex(), "changed", "device", "new", None, "changed"]


def test_vouches_match_python(results: tuple[dict, dict, dict]) -> None:
    got, expected, _ = results
    py_make = expected["vouches"]["make"]
    # The same bytes from the same key; the refusal of a self-vouch alike
    # (RangeError in the page, ValueError here).
    assert got["vouches"]["make"][:2] == py_make[:2]
    assert got["vouches"]["make"][2]["message"] == py_make[2]["message"]
    assert got["vouches"]["check"] == expected["vouches"]["check"]
    # Python accepts what the page made with its own fresh key.
    own = got["vouches"]["own"]
    made = check_vouch(bytes.fromhex(own["data"]), own["room"], own["name"],
                       bytes.fromhex(own["newKey"]), NOT_AFTER)
    assert made.voucher.hex() == own["voucher"]
    assert made.voucher != VOUCHER.public_key


def test_safety_numbers_match(results: tuple[dict, dict, dict]) -> None:
    got, expected, _ = results
    assert got["safetyNumbers"] == expected["safetyNumbers"]
    assert got["roomCommitments"] == expected["roomCommitments"]
    js_codes = [o if "ok" in o else {"error": "ValueError", "message": o["message"]}
                for o in got["roomCodes"]]
    assert js_codes == expected["roomCodes"]


def test_wire_codec_matches_python(results: tuple[dict, dict, dict]) -> None:
    got, expected, _ = results
    assert got["schemas"] == expected["schemas"], "the page's schema differs from twistchat.wire"
    assert got["encoded"] == expected["encoded"]
    for (schema, frame), js, py in zip(_frames(), got["decoded"], expected["decoded"], strict=True):
        if "error" in py:
            py = {"error": "BadMessage", "message": py["message"]}
        assert js == py, f"{schema} {bytes.fromhex(frame)[:120]!r}"
    assert sum("ok" in o for o in expected["decoded"]) >= 12


def test_bundle_is_small_and_csp_safe() -> None:
    data = BUNDLE.read_bytes()
    assert len(data) <= MAX_BUNDLE_BYTES, f"bundle grew to {len(data)} bytes"
    for path in (BUNDLE, PAGE):
        text = path.read_text("ascii")
        for word in ("eval(", "new Function", "Function(", "import(", "document.write",
                     "innerHTML", "outerHTML", "insertAdjacentHTML", ".style"):
            assert word not in text, (path.name, word)
    licences = (BUNDLE.parent / "LICENSES.txt").read_text()
    assert "@noble/curves" in licences and "@noble/hashes" in licences


def test_bundle_is_installed_with_the_package() -> None:
    static = resources.files("twistchat.web") / "static"
    assert (static / "twistchat.js").read_bytes() == BUNDLE.read_bytes()
    assert (static / "LICENSES.txt").is_file()


def test_bundle_is_what_the_lockfile_builds(tmp_path: Path) -> None:
    """Install exactly the lockfile's packages in a scratch copy, build, compare."""
    npm = _tool("npm")
    _tool("node")
    work = tmp_path / "web"
    work.mkdir()
    for name in ("package.json", "package-lock.json", "build.mjs"):
        shutil.copy(WEB / name, work / name)
    shutil.copytree(WEB / "src", work / "src")
    install = subprocess.run(
        [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--prefer-offline"],
        cwd=work, capture_output=True, text=True, timeout=600,
    )
    assert install.returncode == 0, f"npm ci failed (needs the npm registry or its cache):\n{install.stderr}"
    out = tmp_path / "twistchat.js"
    build = subprocess.run([shutil.which("node") or "node", "build.mjs", str(out)], cwd=work,
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    assert out.read_bytes() == BUNDLE.read_bytes(), (
        "twistchat/web/static/twistchat.js is not what web/ builds: run `npm run build` in web/")
    assert (tmp_path / "app.js").read_bytes() == PAGE.read_bytes(), (
        "twistchat/web/static/app.js is not what web/ builds: run `npm run build` in web/")
