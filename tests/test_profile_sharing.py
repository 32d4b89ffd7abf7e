"""
Two clients of one profile at once (two terminals, or tests' clients
sharing a config home): their updates of the pinned identities and of
known_hosts must not undo each other's (twistchat.crypto.keyfile.locked).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from twistchat.client.pins import Pins, Seen
from twistchat.client.trust import TrustOnFirstUse
from twistchat.errors import FingerprintChanged

S = "127.0.0.1:7777"
#: Names each process pins; enough that unlocked updates interleave.
NAMES = 150

# One client process's part: wait for the go line, then pin NAMES members of
# its own room, one update each, as a client does at each join.
_PINNER = f"""
import sys
from pathlib import Path
from twistchat.client.pins import Pins
pins = Pins(Path(sys.argv[1]))
room = sys.argv[2]
sys.stdin.readline()
for i in range(int(sys.argv[3])):
    pins.see("{S}", room, f"member{{i}}", bytes([i % 251, len(room)]) * 16)
print("done", flush=True)
"""


def test_two_processes_keep_each_others_pins(tmp_path: Path) -> None:
    """
    Two processes sharing a pin file each pin different members at the same
    time: afterwards every pin of both is in the file.
    """
    path = tmp_path / "identities"
    procs = [
        subprocess.Popen([sys.executable, "-c", _PINNER, str(path), room, str(NAMES)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for room in ("room-a", "room-bb")
    ]
    try:
        for p in procs:  # both start together
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            out, _ = p.communicate(timeout=60)
            assert out == "done\n"
            assert p.returncode == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    pins = Pins(path)
    missing = [(room, i) for room in ("room-a", "room-bb") for i in range(NAMES)
               if pins.get(S, room, f"member{i}") is None]
    assert missing == []


def test_first_pin_wins_against_a_stale_copy(tmp_path: Path) -> None:
    """
    A client whose copy is older than the file decides by the file: a key
    another client pinned first for a name stays pinned, the other is a change.
    """
    path = tmp_path / "identities"
    mine, theirs = Pins(path), Pins(path)
    assert mine.get(S, "main", "bob") is None  # read (and cached) before the other pins
    assert theirs.see(S, "main", "bob", b"\x01" * 32) is Seen.NEW
    assert theirs.see(S, "main", "carol", b"\x03" * 32) is Seen.NEW
    assert mine.see(S, "main", "bob", b"\x02" * 32) is Seen.CHANGED
    again = Pins(path).get(S, "main", "bob")
    assert again is not None
    assert (again.key, again.changed) == (b"\x01" * 32, b"\x02" * 32)
    assert Pins(path).get(S, "main", "carol") is not None
    assert mine.accept(S, "main", "bob") == b"\x02" * 32
    assert Pins(path).get(S, "main", "carol") is not None


def test_known_hosts_first_pin_wins(tmp_path: Path) -> None:
    """
    Two clients met the server for the first time at once: the one that
    remembers second keeps the first pin; one that met another certificate
    is refused rather than pinning it after the first.
    """
    path = tmp_path / "known_hosts"
    one, two, three = TrustOnFirstUse(path), TrustOnFirstUse(path), TrustOnFirstUse(path)
    for trust, fingerprint in ((one, "AA:01"), (two, "AA:01"), (three, "BB:02")):
        trust.host, trust.fingerprint, trust.first_use = S, fingerprint, True
    one.remember()
    two.remember()
    with pytest.raises(FingerprintChanged):
        three.remember()
    assert path.read_text() == f"{S} AA:01\n"
