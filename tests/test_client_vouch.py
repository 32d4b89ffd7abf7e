"""
Pins of several devices (twistchat.client.pins): a vouch by a pinned key adds a
device, a vouch by another key is a change, the file keeps devices across a
re-read, and /accept replaces every device.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twistchat.client.pins import Pins, Seen
from twistchat.errors import ConfigError

A, B, C, X = (bytes([i]) * 32 for i in (1, 2, 3, 9))
S = "127.0.0.1:7777"


def test_devices_are_pinned_by_a_pinned_voucher_only(tmp_path: Path) -> None:
    pins = Pins(tmp_path / "identities")
    assert pins.see(S, "main", "alice", A) is Seen.NEW
    assert pins.see(S, "main", "alice", B, voucher=X) is Seen.CHANGED
    assert pins.see(S, "main", "alice", B, voucher=A) is Seen.DEVICE  # clears the change
    assert pins.get(S, "main", "alice") == (A, None, ((B, A),))
    # B, now pinned, may vouch in turn; a device in another room is not one here.
    assert pins.see(S, "main", "alice", C, voucher=B) is Seen.DEVICE
    assert pins.see(S, "other", "alice", C, voucher=A) is Seen.NEW
    assert pins.see(S, "other", "alice", B, voucher=A) is Seen.CHANGED
    # Read again from the file by another client of the profile.
    again = Pins(tmp_path / "identities")
    assert again.get(S, "main", "alice").keys == (A, B, C)
    assert again.see(S, "main", "alice", B) is Seen.PINNED
    text = (tmp_path / "identities").read_text()
    assert f"{S} main alice {B.hex()} device {A.hex()}\n" in text


def test_accept_replaces_every_device(tmp_path: Path) -> None:
    pins = Pins(tmp_path / "identities")
    pins.see(S, "main", "alice", A)
    pins.see(S, "main", "alice", B, voucher=A)
    assert pins.see(S, "main", "alice", X) is Seen.CHANGED
    assert pins.accept(S, "main", "alice") == X
    assert pins.get(S, "main", "alice").keys == (X,)


def test_a_device_line_without_its_name_is_damage(tmp_path: Path) -> None:
    (tmp_path / "identities").write_text(f"{S} main alice {B.hex()} device {A.hex()}\n")
    (tmp_path / "identities").chmod(0o600)
    with pytest.raises(ConfigError, match="damaged"):
        Pins(tmp_path / "identities").get(S, "main", "alice")
