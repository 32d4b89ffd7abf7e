"""
The page's transcript checks (web/src/transcript.js, in the shipped bundle)
against the terminal client's (twistchat/client/transcript.py), verdict for
verdict and state file for state file.

Each case is a sequence of operations on one member's L{Transcript}: signed
messages received (made with L{encode_signed} under fixed keys, live or
replayed from history), new connections, messages sent, acknowledged and
lost, and checkpoints of the saved state. The named cases cover every alarm
(replay, fork, gap, lost, offline, views) and the quiet cases (the edge of
the history, a late joiner, a new connection, declared lost numbers, two keys
under one name, one key under two names, the memory bounds); hypothesis adds
random sequences (a fixed, bounded set). Python runs each case and records
every verdict and each checkpoint's state; C{node web/test/transcript.mjs}
runs the same on the bundle and must agree. Then, from each checkpoint, each
side loads the other's saved state and its own and runs the rest of the case:
all four runs must agree.

Node must be installed: without it the test fails with a message saying so.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twistchat.client.transcript import MAX_HASHES, MAX_MISSING, MAX_SENDERS, RECENT, Transcript
from twistchat.crypto.identity import Identity
from twistchat.crypto.keyfile import write_private_file
from twistchat.crypto.signed import (
    MAX_SEQ,
    NO_HASH,
    Fields,
    SignedMessage,
    decode_signed,
    encode_signed,
    message_hash,
)

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "web" / "test" / "transcript.mjs"
ROOM = "main"
ME = "me"
ME_SEED = b"\x00" * 32
MY = Identity.from_seed(ME_SEED)
KEYS = {name: Identity.from_seed(hashlib.sha256(name.encode()).digest())
        for name in ("a1", "a2", "b", "c")}


def _hex_fields(m: SignedMessage) -> dict[str, Any]:
    return {"key": m.key.hex(), "seq": str(m.seq), "prev": m.prev.hex(), "seen": m.seen.hex(),
            "lost": [str(x) for x in m.lost], "hash": m.hash.hex()}


class Script:
    """
    Builds one case: each message is placed in its sender's true chain (per
    name and key) unless made to fork.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.ops: list[dict[str, Any]] = []
        self.chains: dict[tuple[str, str], dict[int, bytes]] = {}
        self.n = 0
        self.sent = 0

    def msg(self, sender: str, key: str, seq: int, *, history: bool = False,
            lost: tuple[int, ...] = (), seen: bytes = NO_HASH, prev: bytes | None = None,
            text: str | None = None, sign: bool = True) -> dict[str, Any]:
        chain = self.chains.setdefault((sender, key), {})
        if prev is None:
            prev = NO_HASH if seq == 1 else chain.get(
                seq - 1, hashlib.sha256(f"{sender}/{key}/{seq - 1}".encode()).digest())
        self.n += 1
        sid = hashlib.sha256(sender.encode()).digest()[:16]
        fields = Fields(seq=seq, prev=prev, seen=seen, lost=lost,
                        text=f"{sender} {seq} #{self.n}" if text is None else text)
        identity = KEYS[key]
        op: dict[str, Any] = {"op": "recv", "sender": sender, "history": history}
        if sign:
            data = encode_signed(identity, ROOM, sender, sid, self.n, fields)
            m = decode_signed(ROOM, sender, sid, self.n, data)
            op["env"] = {"sid": sid.hex(), "n": self.n, "data": data.hex()}
        else:
            # Not signed (the bulk cases): the transcript only reads the fields.
            digest = hashlib.sha256(b"bulk" + sid + self.n.to_bytes(8, "big")).digest()
            m = SignedMessage(identity.public_key, seq, prev, seen, lost, fields.text, b"", digest)
        chain.setdefault(seq, m.hash)
        op["m"] = _hex_fields(m)
        self.ops.append(op)
        return op

    def again(self, op: dict[str, Any], history: bool | None = None) -> None:
        self.ops.append({**op, "history": op["history"] if history is None else history})

    def hash_of(self, sender: str, key: str, seq: int) -> bytes:
        return self.chains[sender, key][seq]

    def connect(self) -> None:
        self.ops.append({"op": "connect"})

    def state(self) -> None:
        self.ops.append({"op": "state"})

    def send(self, text: str = "hi") -> tuple[str, int]:
        self.sent += 1
        sid = (bytes([7]) * 16).hex()
        self.ops.append({"op": "send", "text": text, "sid": sid, "n": self.sent})
        return sid, self.sent

    def ack(self, sid: str, n: int) -> None:
        self.ops.append({"op": "ack", "sid": sid, "n": n})

    def drop(self) -> None:
        self.ops.append({"op": "drop"})

    def catch_up(self, state: Any) -> None:
        """
        Another client of the profile kept C{state} (Python: in the state
        file; JavaScript: given to C{catchUp}).
        """
        self.ops.append({"op": "catchup", "state": state})

    def case(self) -> dict[str, Any]:
        return {"name": self.name, "ops": self.ops}


UNKNOWN = hashlib.sha256(b"a message we never saw").digest()


def named_cases() -> list[dict[str, Any]]:
    cases = []

    s = Script("replay, live and within one history replay")
    s.connect()
    s.msg("alice", "a1", 1)
    two = s.msg("alice", "a1", 2)
    s.again(two)
    s.state()
    s.connect()
    h = s.msg("bob", "b", 1, history=True)
    s.again(h)
    s.again(two, history=True)
    s.state()
    cases.append(s.case())

    s = Script("history overlap, edge of the history, late joiner")
    s.connect()
    ones = [s.msg("alice", "a1", i) for i in (1, 2, 3)]
    s.state()
    s.connect()
    for op in ones:
        s.again(op, history=True)
    s.msg("alice", "a1", 4)
    s.msg("bob", "b", 50, history=True)
    s.msg("bob", "b", 51)
    s.state()
    s.connect()
    s.msg("carol", "c", 7, history=True)
    cases.append(s.case())

    s = Script("forks: two messages numbered alike, one following another")
    s.connect()
    s.msg("alice", "a1", 1)
    s.msg("alice", "a1", 2)
    s.msg("alice", "a1", 2, text="the other two")
    s.state()
    s.msg("alice", "a1", 3, prev=UNKNOWN)
    s.msg("alice", "a1", 4)
    s.state()
    cases.append(s.case())

    s = Script("gaps, late arrivals, declared lost numbers")
    s.connect()
    s.msg("alice", "a1", 1)
    s.msg("alice", "a1", 3)
    s.msg("alice", "a1", 6)
    s.state()
    s.msg("alice", "a1", 2)
    s.msg("alice", "a1", 4)
    s.msg("alice", "a1", 9, lost=(7, 8))
    s.msg("alice", "a1", 13, lost=(10, 12))
    s.msg("alice", "a1", 15, lost=(14,))
    s.state()
    s.msg("alice", "a1", 11)
    s.msg("alice", "a1", 14)
    cases.append(s.case())

    s = Script("offline: once per connection, not a gap")
    s.connect()
    s.msg("alice", "a1", 1)
    s.msg("bob", "b", 1)
    s.connect()
    s.msg("alice", "a1", 5)
    s.msg("bob", "b", 4)
    s.msg("alice", "a1", 7)
    s.state()
    s.connect()
    s.msg("bob", "b", 9, history=True, lost=(6,))
    s.msg("bob", "b", 10)
    s.state()
    cases.append(s.case())

    s = Script("views: reported once per sender, never for history")
    s.connect()
    s.msg("alice", "a1", 1)
    s.msg("alice", "a1", 2, seen=UNKNOWN, history=True)
    s.msg("alice", "a1", 3, seen=UNKNOWN)
    s.msg("alice", "a1", 4, seen=UNKNOWN)
    s.msg("bob", "b", 1)
    s.msg("bob", "b", 2, seen=s.hash_of("alice", "a1", 4))
    s.state()
    s.msg("bob", "b", 3, seen=UNKNOWN)
    s.state()
    s.connect()
    s.msg("carol", "c", 1)
    s.msg("carol", "c", 2, seen=UNKNOWN)
    cases.append(s.case())

    s = Script("two keys under one name, one key under two names")
    s.connect()
    s.msg("alice", "a1", 1)
    s.msg("alice", "a1", 2)
    s.msg("alice", "a2", 1)
    s.msg("alice", "a2", 3)
    s.msg("alice", "a1", 3)
    s.msg("carol", "c", 1)
    s.msg("dave", "c", 1)
    s.msg("dave", "c", 3)
    s.state()
    s.msg("carol", "c", 2)
    cases.append(s.case())

    s = Script("the sender side: in flight, acknowledged, lost, declared")
    s.connect()
    one = s.send("one")
    s.send("two")
    s.send("three")
    s.ack(*one)
    s.ack(*one)
    s.state()
    s.drop()
    s.drop()
    s.connect()
    s.msg("alice", "a1", 1)
    four = s.send("four")
    s.state()
    s.ack(*four)
    s.send("five")
    s.state()
    cases.append(s.case())

    s = Script(f"more than RECENT ({RECENT}) messages of one sender")
    s.connect()
    for i in range(1, RECENT + 8):
        s.msg("alice", "a1", i, sign=False)
    s.msg("alice", "a1", 3, text="not what was said")
    s.msg("alice", "a1", 3, history=True, text="nor this")
    s.msg("alice", "a1", RECENT, text="a fork within reach")
    s.state()
    cases.append(s.case())

    s = Script(f"a jump of more than MAX_MISSING ({MAX_MISSING}) numbers")
    s.connect()
    s.msg("alice", "a1", 1)
    s.msg("alice", "a1", 2 * MAX_MISSING, lost=(3, 2 * MAX_MISSING - 1))
    s.state()
    s.msg("alice", "a1", 5)
    s.msg("alice", "a1", 2 * MAX_MISSING - 2)
    cases.append(s.case())

    def kept(seq: int | str, **out: Any) -> dict[str, Any]:
        fields = {"key": MY.public_key.hex(), "seq": seq, "last": (b"\x05" * 32).hex(),
                  "seen": (b"\x06" * 32).hex(), "lost": [3], "flight": [["07" * 16, 1, 4]]}
        return {"format": "twistchat-transcript", "version": 1, "out": {**fields, **out},
                "chains": [], "hashes": []}

    s = Script("another client of the profile carried the chain on: caught up or not")
    s.connect()
    sid, n = s.send("one")
    s.ack(sid, n)
    s.drop()
    s.connect()
    s.catch_up(kept(5))
    sid, n = s.send("after the other client")
    s.ack(sid, n)
    s.catch_up(kept(2))
    s.catch_up(kept(99, key=KEYS["b"].public_key.hex()))
    s.catch_up(kept("x"))
    s.catch_up(kept(99, lost="3"))
    s.catch_up({**kept(99), "version": 2})
    s.catch_up(["not", "a", "state"])
    s.catch_up(None)
    s.state()
    s.catch_up(kept(str(2**60)))
    s.send("beyond 2^53")
    s.state()
    cases.append(s.case())

    s = Script("a sender jumps to the largest sequence number")
    s.connect()
    s.msg("mallory", "b", 1)
    s.msg("mallory", "b", MAX_SEQ - 2)
    s.state()
    s.msg("mallory", "b", MAX_SEQ)
    s.state()
    cases.append(s.case())

    s = Script(f"more than MAX_SENDERS ({MAX_SENDERS}) senders")
    s.connect()
    for i in range(MAX_SENDERS + 4):
        s.msg(f"m{i}", "b", 1, sign=False)
    s.msg("m0", "b", 5, sign=False)
    s.msg(f"m{MAX_SENDERS}", "b", 5, sign=False)
    s.state()
    cases.append(s.case())

    s = Script(f"more than MAX_HASHES ({MAX_HASHES}) messages remembered")
    s.connect()
    s.msg("alice", "a1", 1, sign=False)
    s.msg("bob", "b", 1, sign=False)
    first = s.hash_of("alice", "a1", 1)
    for i in range(2, MAX_HASHES + 4):
        s.msg("alice", "a1", i, sign=False)
    s.msg("bob", "b", 2, seen=s.hash_of("alice", "a1", MAX_HASHES), sign=False)
    s.msg("bob", "b", 3, seen=first, sign=False)
    s.state()
    cases.append(s.case())
    return cases


# --- random cases ----------------------------------------------------------------------

STEP = st.one_of(
    st.just(("connect",)), st.just(("state",)), st.just(("send",)), st.just(("ack",)),
    st.just(("drop",)),
    st.tuples(st.just("recv"), st.sampled_from([("alice", "a1"), ("alice", "a2"), ("bob", "b"),
                                                ("carol", "a1")]),
              st.sampled_from([-3, -1, 0, 1, 1, 1, 2, 4]), st.booleans(),
              st.sampled_from(["true", "text", "prev"]), st.sampled_from(["none", "lost", "all"]),
              st.sampled_from(["none", "latest", "unknown"])),
    st.tuples(st.just("again"), st.integers(0, 1000), st.booleans()),
)


def random_case(steps: list[tuple[Any, ...]], index: int) -> dict[str, Any]:
    s = Script(f"random {index}")
    high: dict[tuple[str, str], int] = {}
    received: list[dict[str, Any]] = []
    flight: list[tuple[str, int]] = []
    latest = NO_HASH
    for step in steps:
        kind = step[0]
        if kind == "connect":
            s.connect()
        elif kind == "state":
            s.state()
        elif kind == "send":
            flight.append(s.send())
        elif kind == "ack":
            if flight:
                s.ack(*flight.pop(0))
        elif kind == "drop":
            s.drop()
            flight.clear()
        elif kind == "again":
            if received:
                s.again(received[step[1] % len(received)], history=step[2])
        else:
            _, (sender, key), delta, history, variant, lost_kind, seen_kind = step
            seq = max(1, high.get((sender, key), 0) + delta)
            high[sender, key] = max(high.get((sender, key), 0), seq)
            skipped = list(range(max(1, seq - 16), seq))
            lost = {"none": (), "lost": tuple(skipped[-1:]), "all": tuple(skipped)}[lost_kind]
            seen = {"none": NO_HASH, "latest": latest, "unknown": UNKNOWN}[seen_kind]
            prev = UNKNOWN if variant == "prev" and seq > 1 else None
            text = f"variant {len(s.ops)}" if variant == "text" else None
            op = s.msg(sender, key, seq, history=history, lost=lost, seen=seen, prev=prev,
                       text=text)
            latest = bytes.fromhex(op["m"]["hash"])
            received.append(op)
    s.state()
    return s.case()


def random_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []

    @settings(max_examples=25, derandomize=True, database=None, deadline=None)
    @given(st.lists(STEP, min_size=5, max_size=30))
    def collect(steps: list[tuple[Any, ...]]) -> None:
        cases.append(random_case(steps, len(cases)))

    collect()
    return cases


# --- the Python side ---------------------------------------------------------------------


def _message(m: dict[str, Any]) -> SignedMessage:
    return SignedMessage(bytes.fromhex(m["key"]), int(m["seq"]), bytes.fromhex(m["prev"]),
                         bytes.fromhex(m["seen"]), tuple(int(x) for x in m["lost"]), "", b"",
                         bytes.fromhex(m["hash"]))


def _transcript(path: Path, state: dict[str, Any] | None) -> Transcript:
    path.unlink(missing_ok=True)
    if state is not None:
        path.write_text(json.dumps(state))
        path.chmod(0o600)
    transcript = Transcript(path, ME, MY.public_key)
    transcript.path = None  # saved only at the checkpoints
    return transcript


def _count(count: int) -> str:
    # JavaScript's alarm count is a Number: exact up to 2^53, the nearest
    # double beyond (the text has the exact count).
    return str(count) if count <= 2**53 else format(float(count), ".17g")


def run_python(ops: list[dict[str, Any]], transcript: Transcript, path: Path) -> list[Any]:
    out: list[Any] = []
    for op in ops:
        kind = op["op"]
        if kind == "connect":
            transcript.new_connection()
            out.append(None)
        elif kind == "recv":
            verdict = transcript.receive(op["sender"], _message(op["m"]), op["history"])
            out.append({
                "show": verdict.show, "trusted": verdict.trusted, "overlap": verdict.overlap,
                "alarms": [[a.kind, a.sender, _count(a.count), a.text] for a in verdict.alarms],
            })
        elif kind == "send":
            fields = transcript.next_fields(op["text"])
            sid = bytes.fromhex(op["sid"])
            data = encode_signed(MY, ROOM, ME, sid, op["n"], fields)
            digest = message_hash(sid, op["n"], data)
            transcript.sent(fields, sid, op["n"], digest)
            out.append({"seq": str(fields.seq), "prev": fields.prev.hex(),
                        "seen": fields.seen.hex(), "lost": [str(x) for x in fields.lost],
                        "hash": digest.hex()})
        elif kind == "ack":
            out.append(transcript.acked(bytes.fromhex(op["sid"]), op["n"]))
        elif kind == "drop":
            out.append(transcript.connection_lost())
        elif kind == "catchup":
            write_private_file(path, json.dumps(op["state"]).encode(), replace=True)
            transcript.path = path
            out.append(transcript.catch_up())
            transcript.path = None
        else:
            transcript.path = path
            transcript.save()
            transcript.path = None
            out.append(json.loads(path.read_text()))
    return out


def test_javascript_transcript_matches_python(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the browser code's tests need Node.js 18 or newer"
                    " (sh tests/system-packages.sh installs it)")
    cases = named_cases() + random_cases()
    path = tmp_path / "state.json"
    python = []
    for case in cases:
        full = run_python(case["ops"], _transcript(path, None), path)
        python.append(full)
        case["states"] = {str(i): full[i] for i, op in enumerate(case["ops"])
                          if op["op"] == "state"}
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"room": ROOM, "me": ME, "seed": ME_SEED.hex(),
                                   "cases": cases}))
    result = subprocess.run([node, str(SCRIPT), str(request)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    javascript = json.loads(result.stdout)
    assert len(javascript) == len(cases)
    for case, full, js in zip(cases, python, javascript, strict=True):
        name = case["name"]
        assert js["full"] == full, name
        assert case["states"], name
        for index, state in case["states"].items():
            rest = case["ops"][int(index) + 1:]
            own = run_python(rest, _transcript(path, state), path)
            theirs = run_python(rest, _transcript(path, js["full"][int(index)]), path)
            assert own == theirs, f"{name}: Python loading JavaScript's state at {index}"
            assert js["fromPython"][index] == own, (
                f"{name}: JavaScript loading Python's state at {index}")
            assert js["fromOwn"][index] == own, f"{name}: JavaScript loading its own at {index}"
