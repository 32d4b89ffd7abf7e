"""
Tests for twistchat.crypto.safety: pair safety numbers and the room safety code.
"""

from __future__ import annotations

import hashlib
import re

import pytest
from twistchat.crypto import safety
from twistchat.crypto.identity import Identity
from twistchat.crypto.kdf import hkdf_sha256
from twistchat.crypto.safety import (
    ITERATIONS,
    room_commitment,
    room_safety_code,
    safety_number,
)

ALICE = Identity.from_seed(b"\x11" * 32).public_key
BOB = Identity.from_seed(b"\x22" * 32).public_key
CAROL = Identity.from_seed(b"\x33" * 32).public_key
CONTENT_KEY = bytes(range(32))
COMMITMENT = room_commitment(CONTENT_KEY, "lobby")
MEMBERS = [("alice", ALICE), ("bob", BOB), ("carol", CAROL)]


def _flip(key: bytes) -> bytes:
    return bytes([key[0] ^ 1]) + key[1:]


# --- pair safety numbers ----------------------------------------------------------------


def test_safety_number_shape_and_symmetry() -> None:
    number = safety_number("alice", ALICE, "bob", BOB)
    assert re.fullmatch(r"\d{5}( \d{5}){11}", number)
    assert safety_number("bob", BOB, "alice", ALICE) == number


def test_safety_number_known_answer() -> None:
    """
    Pinned: a change to the format (label, stretching, digit extraction, order) shows.
    """
    assert safety_number("alice", ALICE, "bob", BOB) == (
        "63041 32461 67073 82410 05628 47000 67553 37839 82403 89549 91256 83510"
    )


def test_safety_number_halves_are_per_member() -> None:
    """
    Each member contributes its own 30 digits (both sides see the same halves), so
    a change of one key changes only that member's half.
    """
    number = safety_number("alice", ALICE, "bob", BOB).replace(" ", "")
    with_carol = safety_number("alice", ALICE, "carol", CAROL).replace(" ", "")
    alice_half = ({number[:30], number[30:]} & {with_carol[:30], with_carol[30:]}).pop()
    assert alice_half in (number[:30], number[30:])


@pytest.mark.parametrize(
    "args",
    [
        ("alice", _flip(ALICE), "bob", BOB),
        ("alice", ALICE, "bob", _flip(BOB)),
        ("alicE", ALICE, "bob", BOB),
        ("alice", ALICE, "bobby", BOB),
        ("alice", BOB, "bob", ALICE),  # keys swapped between the names
        ("bob", ALICE, "alice", BOB),  # names swapped between the keys
    ],
)
def test_safety_number_changes_with_any_input(args: tuple[str, bytes, str, bytes]) -> None:
    assert safety_number(*args) != safety_number("alice", ALICE, "bob", BOB)


@pytest.mark.parametrize("bad", [b"", ALICE[:31], ALICE + b"\x00", "ab" * 16])
def test_safety_number_refuses_bad_keys(bad: object) -> None:
    with pytest.raises(ValueError):
        safety_number("alice", bad, "bob", BOB)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        safety_number("alice", ALICE, "bob", bad)  # type: ignore[arg-type]


def test_safety_number_digits_as_documented(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Recompute one half from the module docstring's definition, with few iterations.
    """
    monkeypatch.setattr(safety, "ITERATIONS", 3)
    h = hashlib.sha512(b"twistchat/2 safety number\x00" + b"\x00\x05alice" + ALICE).digest()
    for _ in range(3):
        h = hashlib.sha512(h + ALICE).digest()
    half = "".join(f"{int.from_bytes(h[i:i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5))
    number = safety_number("alice", ALICE, "bob", BOB).replace(" ", "")
    assert half in (number[:30], number[30:])
    assert ITERATIONS == 5200  # the real count is untouched outside this test


# --- the room safety code ---------------------------------------------------------------


def test_room_commitment() -> None:
    assert COMMITMENT == hkdf_sha256(CONTENT_KEY, b"twistchat/2 room commitment\x00lobby", 32)
    assert room_commitment(CONTENT_KEY, "other") != COMMITMENT
    assert room_commitment(bytes(32), "lobby") != COMMITMENT
    with pytest.raises(ValueError):
        room_commitment(CONTENT_KEY[:31], "lobby")


def test_room_code_shape_and_order_independence() -> None:
    code = room_safety_code("lobby", COMMITMENT, MEMBERS)
    assert re.fullmatch(r"\d{5}( \d{5}){5}", code)
    assert room_safety_code("lobby", COMMITMENT, reversed(MEMBERS)) == code
    assert room_safety_code("lobby", COMMITMENT, iter([MEMBERS[1], MEMBERS[2], MEMBERS[0]])) == code


def test_room_code_known_answer() -> None:
    assert room_safety_code("lobby", COMMITMENT, MEMBERS) == "00602 94562 47761 66472 56122 90293"


@pytest.mark.parametrize(
    "room, commitment, members",
    [
        ("lobby2", COMMITMENT, MEMBERS),
        ("lobby", room_commitment(bytes(32), "lobby"), MEMBERS),
        ("lobby", room_commitment(CONTENT_KEY, "lobby2"), MEMBERS),
        ("lobby", COMMITMENT, MEMBERS[:2]),  # carol absent
        ("lobby", COMMITMENT, [*MEMBERS, ("dave", Identity.from_seed(b"\x44" * 32).public_key)]),
        ("lobby", COMMITMENT, [("alice", ALICE), ("bob", BOB), ("carol", _flip(CAROL))]),
        ("lobby", COMMITMENT, [("alice", BOB), ("bob", ALICE), ("carol", CAROL)]),
        ("lobby", COMMITMENT, [("alice", ALICE), ("bob", BOB), ("carl", CAROL)]),
        # the boundary between a name and the next is unambiguous
        ("lobby", COMMITMENT, [("alice", ALICE), ("bobc", BOB), ("arol", CAROL)]),
    ],
)
def test_room_code_changes_with_any_input(
    room: str, commitment: bytes, members: list[tuple[str, bytes]]
) -> None:
    assert room_safety_code(room, commitment, members) != room_safety_code(
        "lobby", COMMITMENT, MEMBERS
    )


def test_room_code_empty_and_refusals() -> None:
    assert re.fullmatch(r"\d{5}( \d{5}){5}", room_safety_code("lobby", COMMITMENT, []))
    with pytest.raises(ValueError, match="twice"):
        room_safety_code("lobby", COMMITMENT, [("alice", ALICE), ("alice", BOB)])
    with pytest.raises(ValueError):
        room_safety_code("lobby", COMMITMENT[:31], MEMBERS)
    with pytest.raises(ValueError):
        room_safety_code("lobby", COMMITMENT, [("alice", ALICE[:31])])
    with pytest.raises(TypeError):
        room_safety_code("lobby", COMMITMENT, [(b"alice", ALICE)])  # type: ignore[list-item]


def test_room_code_as_documented(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(safety, "ITERATIONS", 2)
    data = (b"twistchat/2 room safety code\x00" + b"\x00\x05lobby" + COMMITMENT
            + (2).to_bytes(4, "big")
            + b"\x00\x05alice" + ALICE + b"\x00\x03bob" + BOB)
    h = hashlib.sha512(data).digest()
    for _ in range(2):
        h = hashlib.sha512(h + COMMITMENT).digest()
    digits = "".join(f"{int.from_bytes(h[i:i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5))
    expected = " ".join(digits[i : i + 5] for i in range(0, 30, 5))
    assert room_safety_code("lobby", COMMITMENT, [("bob", BOB), ("alice", ALICE)]) == expected
