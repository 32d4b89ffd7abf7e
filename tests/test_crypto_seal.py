"""
Tests for twistchat.crypto.seal: padding, sealing, opening, attribution and replay.
"""

from __future__ import annotations

import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twistchat.crypto.kdf import MIN_PARAMS, content_key, derive_secrets
from twistchat.crypto.seal import (
    MAX_COUNTER,
    Opener,
    Sealer,
    associated_data,
    pad,
    session_key,
    unpad,
)
from twistchat.errors import Replayed, Undecryptable
from twistchat.wire.messages import MAX_CIPHERTEXT, MAX_TEXT_BYTES, PAD_BLOCK

ROOM = "lobby"
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def _pair(sender: str = "alice") -> tuple[Sealer, Opener]:
    return Sealer(KEY, ROOM, sender), Opener(KEY, ROOM)


# --- padding and associated data --------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 30, 31, 32, 33, 63, 64, 100, MAX_TEXT_BYTES])
def test_pad_unpad(length: int) -> None:
    data = b"\x80" * length  # the pad byte itself inside the text
    padded = pad(data)
    assert len(padded) % PAD_BLOCK == 0
    assert len(padded) == (length // PAD_BLOCK + 1) * PAD_BLOCK
    assert padded[length] == 0x80 and not any(padded[length + 1 :])
    assert unpad(padded) == data


@pytest.mark.parametrize(
    "padded",
    [
        b"",
        b"\x00" * 32,  # no marker
        b"a" * 32,  # no marker
        b"a" * 31 + b"\x01",  # wrong marker
        b"a" * 31 + b"\x80" + b"\x00",  # not a block multiple
        b"a" * 31 + b"\x80" + b"\x00" * 32,  # a whole extra block of padding
        b"\x80" + b"\x00" * 63,  # ditto
    ],
)
def test_unpad_strict(padded: bytes) -> None:
    with pytest.raises(Undecryptable):
        unpad(padded)


def test_associated_data_layout() -> None:
    sid = bytes(range(16))
    ad = associated_data("room", "bob", sid, 258)
    assert ad == (
        b"twistchat/1 msg\x00"
        + b"\x00\x04room"
        + b"\x00\x03bob"
        + sid
        + (258).to_bytes(8, "big")
    )


def test_associated_data_unambiguous() -> None:
    sid = bytes(16)
    assert associated_data("ab", "c", sid, 1) != associated_data("a", "bc", sid, 1)
    assert associated_data("r", "é", sid, 1) != associated_data("r", "e\u0301", sid, 1)


@pytest.mark.parametrize(
    "args",
    [
        ("r", "s", bytes(15), 1),
        ("r", "s", bytes(17), 1),
        ("r", "s", bytes(16), -1),
        ("r", "s", bytes(16), 2**63),
        ("r" * 70000, "s", bytes(16), 1),
    ],
)
def test_associated_data_rejects(args: tuple[str, str, bytes, int]) -> None:
    with pytest.raises(ValueError):
        associated_data(*args)


def test_session_keys_differ_per_sid() -> None:
    assert session_key(KEY, bytes(16)) != session_key(KEY, b"\x01" + bytes(15))
    assert session_key(KEY, bytes(16)) != session_key(OTHER_KEY, bytes(16))
    assert session_key(KEY, bytes(16)) != KEY


# --- sealing and opening -----------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Hello world",
        "",
        "é ü 中文 😀",
        "a" * 31,
        "a" * 32,
        "x" * MAX_TEXT_BYTES,
        "😀" * (MAX_TEXT_BYTES // 4),
    ],
)
def test_round_trip(text: str) -> None:
    sealer, opener = _pair()
    sid, n, ciphertext = sealer.seal(text)
    assert sid == sealer.sid and len(sid) == 16
    assert n == 1
    assert opener.open("alice", sid, n, ciphertext) == text


def test_ciphertext_length_is_padded() -> None:
    sealer, _ = _pair()
    for length in range(0, 200):
        _, _, ciphertext = sealer.seal("a" * length)
        assert len(ciphertext) == (length // 32 + 1) * 32 + 16
    _, _, ciphertext = sealer.seal("a" * MAX_TEXT_BYTES)
    assert len(ciphertext) == MAX_TEXT_BYTES + 32 + 16 <= MAX_CIPHERTEXT


def test_text_too_long() -> None:
    sealer, _ = _pair()
    with pytest.raises(ValueError):
        sealer.seal("x" * (MAX_TEXT_BYTES + 1))
    with pytest.raises(ValueError):
        sealer.seal("é" * (MAX_TEXT_BYTES // 2 + 1))
    # the refused text used no counter
    _, n, _ = sealer.seal("ok")
    assert n == 1


def test_same_text_twice_differs() -> None:
    sealer, opener = _pair()
    a = sealer.seal("same")
    b = sealer.seal("same")
    assert a[2] != b[2]
    assert (a[1], b[1]) == (1, 2)
    other = Sealer(KEY, ROOM, "alice").seal("same")
    assert other[0] != a[0] and other[2] != a[2]
    assert opener.open("alice", *a) == opener.open("alice", *b) == "same"


def test_counter_increments_and_sid_fixed() -> None:
    sealer, opener = _pair()
    for i in range(1, 6):
        sid, n, ciphertext = sealer.seal(str(i))
        assert sid == sealer.sid and n == i
        assert opener.open("alice", sid, n, ciphertext) == str(i)


def test_counter_exhaustion() -> None:
    sealer, opener = _pair()
    sealer._next = MAX_COUNTER
    sid, n, ciphertext = sealer.seal("last")
    assert n == MAX_COUNTER
    assert opener.open("alice", sid, n, ciphertext) == "last"
    with pytest.raises(OverflowError):
        sealer.seal("one too many")
    with pytest.raises(OverflowError):
        sealer.seal("still refused")


def test_given_sid() -> None:
    sealer = Sealer(KEY, ROOM, "alice", sid=b"s" * 16)
    assert sealer.sid == b"s" * 16
    with pytest.raises(ValueError):
        Sealer(KEY, ROOM, "alice", sid=b"short")


def test_bad_keys_refused() -> None:
    with pytest.raises(ValueError):
        Sealer(b"short", ROOM, "alice")
    with pytest.raises(ValueError):
        Opener(bytes(31), ROOM)


@pytest.mark.parametrize("position", [0, 1, 15, 31, 32, -17, -16, -1])
def test_tampered_ciphertext(position: int) -> None:
    sealer, opener = _pair()
    sid, n, ciphertext = sealer.seal("attack at dawn")
    tampered = bytearray(ciphertext)
    tampered[position] ^= 0x01
    with pytest.raises(Undecryptable):
        opener.open("alice", sid, n, bytes(tampered))
    # the genuine message still opens
    assert opener.open("alice", sid, n, ciphertext) == "attack at dawn"


def test_tampered_sid_or_counter() -> None:
    sealer, opener = _pair()
    sid, n, ciphertext = sealer.seal("hi")
    with pytest.raises(Undecryptable):
        opener.open("alice", bytes([sid[0] ^ 1]) + sid[1:], n, ciphertext)
    with pytest.raises(Undecryptable):
        opener.open("alice", sid, n + 1, ciphertext)


def test_truncated_or_extended_ciphertext() -> None:
    sealer, opener = _pair()
    sid, n, ciphertext = sealer.seal("hi")
    truncated = (b"", ciphertext[:16], ciphertext[:-1])
    extended = (ciphertext + b"\x00", ciphertext + bytes(32))
    for bad in truncated + extended:
        with pytest.raises(Undecryptable):
            opener.open("alice", sid, n, bad)


def test_replay() -> None:
    sealer, opener = _pair()
    message = sealer.seal("once")
    assert opener.open("alice", *message) == "once"
    with pytest.raises(Replayed):
        opener.open("alice", *message)


def test_reordering() -> None:
    sealer, opener = _pair()
    first = sealer.seal("first")
    second = sealer.seal("second")
    assert opener.open("alice", *second) == "second"
    with pytest.raises(Replayed):
        opener.open("alice", *first)


def test_gaps_allowed() -> None:
    sealer, opener = _pair()
    sealer.seal("dropped")
    third = (sealer.seal("dropped too"), sealer.seal("third"))[1]
    assert opener.open("alice", *third) == "third"


def test_sessions_independent() -> None:
    opener = Opener(KEY, ROOM)
    a1 = Sealer(KEY, ROOM, "alice")
    a2 = Sealer(KEY, ROOM, "alice")  # alice reconnected
    b = Sealer(KEY, ROOM, "bob")
    m1 = a1.seal("one")
    m2 = a2.seal("two")
    m3 = b.seal("three")
    assert opener.open("alice", *m1) == "one"
    assert opener.open("alice", *m2) == "two"
    assert opener.open("bob", *m3) == "three"


def test_reattribution() -> None:
    sealer, opener = _pair("alice")
    message = sealer.seal("I am alice")
    with pytest.raises(Undecryptable):
        opener.open("mallory", *message)
    with pytest.raises(Undecryptable):
        opener.open("Alice", *message)
    assert opener.open("alice", *message) == "I am alice"


def test_other_room_key() -> None:
    secret = derive_secrets("room password", bytes(16), MIN_PARAMS).content_secret
    other_secret = derive_secrets("other password", bytes(16), MIN_PARAMS).content_secret
    lobby_key = content_key(secret, "lobby")
    sealer = Sealer(lobby_key, "lobby", "alice")
    message = sealer.seal("secret")
    # another room's key (same password, other room)
    with pytest.raises(Undecryptable):
        Opener(content_key(secret, "kitchen"), "lobby").open("alice", *message)
    # another password's key for the same room
    with pytest.raises(Undecryptable):
        Opener(content_key(other_secret, "lobby"), "lobby").open("alice", *message)
    # the right key but another room name
    with pytest.raises(Undecryptable):
        Opener(lobby_key, "kitchen").open("alice", *message)
    assert Opener(lobby_key, "lobby").open("alice", *message) == "secret"


def test_forgery_does_not_advance_replay_counter() -> None:
    sealer, opener = _pair()
    sid, n1, c1 = sealer.seal("one")
    assert opener.open("alice", sid, n1, c1) == "one"
    sid, n2, c2 = sealer.seal("two")
    # a forger (e.g. the server) sends garbage with a high counter in the session
    with pytest.raises(Undecryptable):
        opener.open("alice", sid, 10**6, secrets.token_bytes(len(c2)))
    # and garbage in a fresh session (must not create state)
    with pytest.raises(Undecryptable):
        opener.open("alice", secrets.token_bytes(16), 5, secrets.token_bytes(48))
    assert opener.open("alice", sid, n2, c2) == "two"


def test_forgery_cannot_evict_sessions() -> None:
    sealer = Sealer(KEY, ROOM, "alice")
    opener = Opener(KEY, ROOM, max_sessions=4)
    message = sealer.seal("hello")
    assert opener.open("alice", *message) == "hello"
    for _ in range(20):
        with pytest.raises(Undecryptable):
            opener.open("alice", secrets.token_bytes(16), 1, secrets.token_bytes(48))
    with pytest.raises(Replayed):
        opener.open("alice", *message)


def test_session_cache_bounded_lru() -> None:
    opener = Opener(KEY, ROOM, max_sessions=3)
    sealers = [Sealer(KEY, ROOM, f"user{i}") for i in range(3)]
    firsts = [s.seal("hi") for s in sealers]
    for i, m in enumerate(firsts):
        opener.open(f"user{i}", *m)
    # touch user0 so user1 is the least recently used
    opener.open("user0", *sealers[0].seal("again"))
    newcomer = Sealer(KEY, ROOM, "user3")
    opener.open("user3", *newcomer.seal("hi"))
    assert len(opener._sessions) == 3
    assert ("user1", sealers[1].sid) not in opener._sessions
    assert ("user0", sealers[0].sid) in opener._sessions
    with pytest.raises(Replayed):
        opener.open("user2", *firsts[2])


def test_invalid_utf8_is_undecryptable() -> None:
    """
    A member could seal bytes that are not UTF-8: refused after authentication.
    """
    from Crypto.Cipher import AES

    sid = bytes(16)
    key = session_key(KEY, sid)
    cipher = AES.new(key, AES.MODE_GCM, nonce=(1).to_bytes(12, "big"))
    cipher.update(associated_data(ROOM, "alice", sid, 1))
    ct, tag = cipher.encrypt_and_digest(pad(b"\xff\xfe"))
    with pytest.raises(Undecryptable):
        Opener(KEY, ROOM).open("alice", sid, 1, ct + tag)


def test_bad_padding_is_undecryptable() -> None:
    from Crypto.Cipher import AES

    sid = bytes(16)
    key = session_key(KEY, sid)
    cipher = AES.new(key, AES.MODE_GCM, nonce=(1).to_bytes(12, "big"))
    cipher.update(associated_data(ROOM, "alice", sid, 1))
    ct, tag = cipher.encrypt_and_digest(b"no padding here, 32 bytes long!!")
    with pytest.raises(Undecryptable):
        Opener(KEY, ROOM).open("alice", sid, 1, ct + tag)


def test_errors_do_not_leak() -> None:
    sealer, opener = _pair()
    sid, n, ciphertext = sealer.seal("top secret plaintext")
    opener.open("alice", sid, n, ciphertext)
    errors: list[Exception] = []
    with pytest.raises(Replayed) as replayed:
        opener.open("alice", sid, n, ciphertext)
    errors.append(replayed.value)
    with pytest.raises(Undecryptable) as misattributed:
        opener.open("eve", sid, n, ciphertext)
    errors.append(misattributed.value)
    with pytest.raises(Undecryptable) as tampered:
        opener.open("alice", sid, n, ciphertext[:-1] + bytes([ciphertext[-1] ^ 1]))
    errors.append(tampered.value)
    for e in errors:
        text = str(e) + repr(e)
        assert "top secret" not in text
        assert KEY.hex() not in text and repr(KEY) not in text
    assert KEY.hex() not in repr(sealer) + repr(opener)


# --- properties ------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=600))
def test_property_round_trip(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        with pytest.raises(ValueError):
            Sealer(KEY, ROOM, "alice").seal(text)
        return
    sealer, opener = _pair()
    sid, n, ciphertext = sealer.seal(text)
    assert len(ciphertext) % PAD_BLOCK == 16
    assert opener.open("alice", sid, n, ciphertext) == text


@settings(max_examples=300, deadline=None)
@given(
    ciphertext=st.binary(max_size=200),
    sid=st.binary(min_size=16, max_size=16),
    n=st.integers(min_value=0, max_value=MAX_COUNTER),
    sender=st.text(max_size=40),
)
def test_property_garbage_is_undecryptable(
    ciphertext: bytes, sid: bytes, n: int, sender: str
) -> None:
    opener = Opener(KEY, ROOM)
    # a genuine session exists, so the replay state is exercised too
    sealer = Sealer(KEY, ROOM, "alice", sid=sid)
    opener.open("alice", *sealer.seal("genuine"))
    with pytest.raises(Undecryptable):
        opener.open(sender, sid, n, ciphertext)


@settings(max_examples=100, deadline=None)
@given(
    sid=st.one_of(st.binary(max_size=40), st.none(), st.text(max_size=16)),
    n=st.one_of(st.integers(), st.none(), st.booleans()),
    ciphertext=st.one_of(st.binary(max_size=80), st.none(), st.text(max_size=10)),
)
def test_property_malformed_inputs_are_undecryptable(
    sid: object, n: object, ciphertext: object
) -> None:
    opener = Opener(KEY, ROOM)
    with pytest.raises(Undecryptable):
        opener.open("alice", sid, n, ciphertext)  # type: ignore[arg-type]
