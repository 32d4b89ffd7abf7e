"""
Tests for twistchat.crypto.vouch: a vouch verifies only for the room, name and key it
was made for, until its expiry, and only under the key that made it.
"""

from __future__ import annotations

import pytest
from twistchat.crypto.identity import Identity
from twistchat.crypto.vouch import (
    MAX_DAYS,
    VOUCH_BYTES,
    check_vouch,
    decode_vouch,
    make_vouch,
    not_after_days,
    statement,
)
from twistchat.errors import BadSignature

OLD = Identity.from_seed(bytes(range(32)))
NEW = Identity.from_seed(bytes(range(1, 33)))
OTHER = Identity.from_seed(bytes(range(2, 34)))
NOW = 1_800_000_000
UNTIL = NOW + 86400


def good() -> bytes:
    return make_vouch(OLD, "main", "alice", NEW.public_key, UNTIL)


def test_a_vouch_verifies_for_its_room_name_and_key() -> None:
    vouch = good()
    assert len(vouch) == VOUCH_BYTES == 104
    checked = check_vouch(vouch, "main", "alice", NEW.public_key, NOW)
    assert checked.voucher == OLD.public_key
    assert checked.not_after == UNTIL
    assert vouch[:32] == OLD.public_key
    assert vouch[32:40] == UNTIL.to_bytes(8, "big")
    # deterministic: the same inputs give the same bytes
    assert good() == vouch
    assert decode_vouch(vouch).encode() == vouch


def test_statement_layout() -> None:
    data = statement("main", "alice", OLD.public_key, NEW.public_key, UNTIL)
    assert data == (b"twistchat/2 device vouch\x00" + b"\x00\x04main" + b"\x00\x05alice"
                    + OLD.public_key + NEW.public_key + UNTIL.to_bytes(8, "big"))


@pytest.mark.parametrize(
    "room, name, key, now, reason",
    [
        ("other", "alice", NEW.public_key, NOW, "does not verify"),
        ("main", "mallory", NEW.public_key, NOW, "does not verify"),
        ("main", "Alice", NEW.public_key, NOW, "does not verify"),
        ("main", "alice", OTHER.public_key, NOW, "does not verify"),
        ("main", "alice", NEW.public_key, UNTIL + 1, "expired"),
    ],
    ids=["other room", "other name", "other case", "other key", "expired"],
)
def test_a_vouch_is_refused_elsewhere(room: str, name: str, key: bytes, now: float,
                                      reason: str) -> None:
    with pytest.raises(BadSignature, match=reason):
        check_vouch(good(), room, name, key, now)


def test_still_valid_at_its_last_second() -> None:
    check_vouch(good(), "main", "alice", NEW.public_key, UNTIL)


def test_altered_vouches_are_refused() -> None:
    vouch = bytearray(good())
    for at in (0, 35, 40, 103):
        altered = bytearray(vouch)
        altered[at] ^= 1
        with pytest.raises(BadSignature):
            check_vouch(bytes(altered), "main", "alice", NEW.public_key, NOW)
    with pytest.raises(BadSignature, match="104 bytes"):
        check_vouch(bytes(vouch[:-1]), "main", "alice", NEW.public_key, NOW)
    with pytest.raises(BadSignature, match="104 bytes"):
        check_vouch(bytes(vouch) + b"\x00", "main", "alice", NEW.public_key, NOW)


def test_a_vouch_by_another_key_names_that_key() -> None:
    # A vouch made by a key nobody pinned verifies as bytes; the receiver must
    # compare its voucher with its pins (tests/test_client_vouch.py).
    vouch = make_vouch(OTHER, "main", "alice", NEW.public_key, UNTIL)
    assert check_vouch(vouch, "main", "alice", NEW.public_key, NOW).voucher == OTHER.public_key
    # and the voucher key cannot be swapped for a pinned one
    swapped = OLD.public_key + vouch[32:]
    with pytest.raises(BadSignature, match="does not verify"):
        check_vouch(swapped, "main", "alice", NEW.public_key, NOW)


def test_no_vouching_for_oneself() -> None:
    with pytest.raises(ValueError, match="itself"):
        make_vouch(OLD, "main", "alice", OLD.public_key, UNTIL)
    forged = OLD.public_key + UNTIL.to_bytes(8, "big") + OLD.sign(
        statement("main", "alice", OLD.public_key, OLD.public_key, UNTIL))
    with pytest.raises(BadSignature, match="key it vouches for"):
        check_vouch(forged, "main", "alice", OLD.public_key, NOW)


def test_bad_inputs_to_make() -> None:
    with pytest.raises(BadSignature):
        make_vouch(OLD, "main", "alice", b"\x00" * 31, UNTIL)
    with pytest.raises(ValueError, match="not_after"):
        make_vouch(OLD, "main", "alice", NEW.public_key, -1)
    with pytest.raises(ValueError, match="not_after"):
        make_vouch(OLD, "main", "alice", NEW.public_key, 2**63)
    with pytest.raises(ValueError, match="too long"):
        make_vouch(OLD, "m" * 65536, "alice", NEW.public_key, UNTIL)


def test_not_after_days() -> None:
    assert not_after_days(NOW + 0.9, 1) == NOW + 86400
    for days in (0, MAX_DAYS + 1, True):
        with pytest.raises(ValueError, match="days"):
            not_after_days(NOW, days)
