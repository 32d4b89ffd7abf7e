"""
End to end with real processes: device vouches (docs/protocol.md, section 12.8).

bob has pinned alice's device A. alice logs in from device B with a vouch made by
A (with /vouch, in A's chat): bob reads "new device", not the key-change warning,
and /verify lists both devices, the one in use giving the number alice's B
prints. A device without a vouch, and one whose vouch was made by a key bob never
pinned, raise the warning as before.
"""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path

from twistchat.config import DEFAULT_ROOM
from twistchat.crypto.identity import Identity
from twistchat.crypto.vouch import make_vouch

from .test_e2e import Client, Server, password_of
from .test_e2e_identity import DIGITS_60

WARNING = "!!! WARNING: alice's safety number has changed."


def device(tmp_path: Path, name: str) -> tuple[Path, Identity]:
    """
    A profile directory of its own and the identity key file in it.
    """
    home = tmp_path / name
    home.mkdir()
    identity = Identity.generate()
    identity.save(home / "identity.json")
    return home, identity


def test_vouched_device_is_a_new_device_others_are_changes(tmp_path: Path) -> None:
    server = Server(tmp_path)
    try:
        password = password_of(server)
        home_a, key_a = device(tmp_path, "alice-a")
        home_b, key_b = device(tmp_path, "alice-b")
        home_c, key_c = device(tmp_path, "alice-c")
        home_d, key_d = device(tmp_path, "alice-d")
        home_bob, _ = device(tmp_path, "bob")

        def alice(home: Path, *options: str) -> Client:
            return Client(home, server.port, "alice", password=password,
                          options=["--identity", str(home / "identity.json"), *options])

        a = alice(home_a)
        a.out.wait_for("connected")
        bob = Client(home_bob, server.port, "bob", password=password,
                     options=["--identity", str(home_bob / "identity.json")])
        bob.out.wait_for("connected")  # bob pins alice's device A from the welcome
        a.out.wait_for(r"\* bob .* entered the room")
        a.say("/key")
        a.out.wait_for(re.escape(f"* Your identity key: {key_a.public_key.hex()}"))
        a.say(f"/vouch {key_b.public_key.hex()} 7")
        a.out.wait_for(re.escape(f"* Vouch for device {key_b.public_key[:4].hex()} as alice "
                                 f"in room {DEFAULT_ROOM!r}, for 7 days"))
        vouch = a.out.wait_for(r"^([A-Za-z0-9+/]{139}=)$").group(1)
        assert base64.b64decode(vouch)[:32] == key_a.public_key
        mark = len(bob.out.seen)
        assert a.finish() == 0
        bob.out.wait_for(r"\* alice .* left the room", after=mark)

        # Device B with A's vouch: a new device of alice, not a changed key.
        b = alice(home_b, "--vouch", vouch)
        b.out.wait_for("connected")
        bob.out.wait_for(re.escape(
            f"* alice: new device {key_b.public_key[:4].hex()} (vouched for by alice's "
            f"device {key_a.public_key[:4].hex()})"))
        b.say("written on device B")
        bob.out.wait_for(re.escape("[ alice: ] written on device B"))
        bob.say("/verify alice")
        bob.out.wait_for(re.escape("* Safety numbers with alice, one per device:"))
        bob.out.wait_for(rf"\*   device {key_a.public_key[:4].hex()}: " + DIGITS_60)
        on_bob = bob.out.wait_for(
            rf"\*   device {key_b.public_key[:4].hex()} \(in use\): " + DIGITS_60).group(1)
        b.say("/verify bob")
        assert b.out.wait_for(r"\* Safety number with bob: " + DIGITS_60).group(1) == on_bob
        mark = len(bob.out.seen)
        assert b.finish() == 0
        bob.out.wait_for(r"\* alice .* left the room", after=mark)

        # Device C, no vouch: the warning, as before.
        c = alice(home_c)
        c.out.wait_for("connected")
        bob.out.wait_for(re.escape(WARNING), after=mark)
        mark = len(bob.out.seen)
        assert c.finish() == 0
        bob.out.wait_for(r"\* alice .* left the room", after=mark)

        # Device D, vouched for by a key bob never pinned for alice: the warning,
        # and why the vouch did not count.
        stranger = Identity.generate()
        forged = make_vouch(stranger, DEFAULT_ROOM, "alice", key_d.public_key,
                            int(time.time()) + 86400)
        d = alice(home_d, "--vouch", base64.b64encode(forged).decode("ascii"))
        d.out.wait_for("connected")
        bob.out.wait_for(re.escape(WARNING), after=mark)
        bob.out.wait_for(re.escape(
            f"!!! alice's new key {key_d.public_key[:4].hex()} came with a vouch that was "
            "not accepted: it was made by a key you have not pinned for alice"))
        d.say("written on device D")
        bob.out.wait_for(re.escape("[ alice (NOT VERIFIED: key changed): ] written on device D"))
        assert d.finish() == 0
        assert bob.finish() == 0
    finally:
        server.stop()
    seen = bob.out.rest()
    # B never raised the warning: exactly one for C and one for D.
    assert sum("safety number has changed" in line for line in seen) == 2
    pins = (home_bob / "config" / "twistchat" / "identities").read_text()
    assert f"{key_b.public_key.hex()} device {key_a.public_key.hex()}" in pins


def test_a_vouch_for_another_key_is_refused_before_logging_in(tmp_path: Path) -> None:
    server = Server(tmp_path)
    try:
        password = password_of(server)
        home_a, key_a = device(tmp_path, "alice-a")
        home_b, key_b = device(tmp_path, "alice-b")
        # A vouch for B presented by A itself (a copy-and-paste slip).
        vouch = make_vouch(key_a, DEFAULT_ROOM, "alice", key_b.public_key,
                           int(time.time()) + 86400)
        a = Client(home_a, server.port, "alice", password=password,
                   options=["--identity", str(home_a / "identity.json"),
                            "--vouch", base64.b64encode(vouch).decode("ascii")])
        a.err.wait_for(r"^Unable to connect: the vouch is not usable here: ")
        assert a.finish() == 1
        bad = Client(home_b, server.port, "alice", password=password,
                     options=["--vouch", "not base64!"])
        bad.err.wait_for(re.escape("twistchat: --vouch is not a vouch (base64 text)"))
        assert bad.finish() == 2
    finally:
        server.stop()
