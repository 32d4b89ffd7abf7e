"""
End to end with real processes: identity keys between real clients through
the real server. A second profile joining under a known name is shown to the
others as a changed safety number; the two sides of a pair print the same
safety number, and everyone the same room code.
"""

from __future__ import annotations

import re
from pathlib import Path

from .test_e2e import Client, Server, password_of

DIGITS_60 = r"((?:\d{5} ){11}\d{5})"
DIGITS_30 = r"((?:\d{5} ){5}\d{5})"


def test_second_profile_under_a_known_name_is_shown(tmp_path: Path) -> None:
    server = Server(tmp_path)
    try:
        password = password_of(server)
        alice = Client(tmp_path, server.port, "alice", password=password)
        alice.out.wait_for("connected — you can start sending messages")
        bob = Client(tmp_path, server.port, "bob", password=password,
                     options=["--identity", str(tmp_path / "bob.json")])
        bob.out.wait_for("connected")
        alice.out.wait_for(r"\* bob \(127\.0\.0\.1:\d+\) entered the room")
        bob.say("the real bob")
        alice.out.wait_for(re.escape("[ bob: ] the real bob"))
        assert bob.finish() == 0
        alice.out.wait_for(r"\* bob \(127\.0\.0\.1:\d+\) left the room")

        # Another profile (another identity key) takes the name.
        imposter = Client(tmp_path, server.port, "bob", password=password,
                          options=["--identity", str(tmp_path / "imposter.json")])
        imposter.out.wait_for("connected")
        alice.out.wait_for(re.escape("!!! WARNING: bob's safety number has changed."))
        imposter.say("trust me, I am bob")
        alice.out.wait_for(re.escape("[ bob (NOT VERIFIED: key changed): ] trust me, I am bob"))
        assert imposter.finish() == 0
        assert alice.finish() == 0
    finally:
        server.stop()
    # The first bob's words were never marked; the warning came once.
    seen = alice.out.rest()
    assert sum("safety number has changed" in line for line in seen) == 1


def test_verify_prints_the_same_number_on_both_sides(tmp_path: Path) -> None:
    server = Server(tmp_path)
    try:
        password = password_of(server)
        alice = Client(tmp_path, server.port, "alice", password=password,
                       options=["--identity", str(tmp_path / "alice.json")])
        alice.out.wait_for("connected")
        bob = Client(tmp_path, server.port, "bob", password=password,
                     options=["--identity", str(tmp_path / "bob.json")])
        bob.out.wait_for("connected")
        alice.out.wait_for(r"\* bob .* entered the room")
        alice.say("/verify bob")
        bob.say("/verify alice")
        alice.say("/safety")
        bob.say("/safety")
        on_alice = alice.out.wait_for(r"\* Safety number with bob: " + DIGITS_60).group(1)
        on_bob = bob.out.wait_for(r"\* Safety number with alice: " + DIGITS_60).group(1)
        assert on_alice == on_bob
        code_alice = alice.out.wait_for(r"\* Room safety code: " + DIGITS_30).group(1)
        code_bob = bob.out.wait_for(r"\* Room safety code: " + DIGITS_30).group(1)
        assert code_alice == code_bob
        assert bob.finish() == 0
        assert alice.finish() == 0
    finally:
        server.stop()
    # Identity files are owner-only.
    assert (tmp_path / "alice.json").stat().st_mode & 0o777 == 0o600
