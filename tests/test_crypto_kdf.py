"""
Tests for twistchat.crypto.kdf: scrypt (RFC 7914 vectors), parameter bounds, secret
derivation, content keys and random passwords; and for twistchat.crypto.verifier, the
verifier derived from them and its file format.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import re
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from twistchat.crypto import kdf
from twistchat.crypto.kdf import (
    DEFAULT_PARAMS,
    MIN_PARAMS,
    ScryptParams,
    check_params,
    content_key,
    derive_secrets,
    hkdf_sha256,
    random_password,
)
from twistchat.crypto.spake2plus import ORDER, G, decode_point, encode_point
from twistchat.crypto.verifier import Verifier, make_verifier
from twistchat.errors import ConfigError, WeakParameters

VECTORS = Path(__file__).resolve().parent / "vectors"
#: In CI the repository is cloned with the project's shared/ directory beside it.
SHARED_VECTORS = Path(__file__).resolve().parent.parent.parent / "shared" / "vectors"
VECTOR_FILE = "rfc7914_scrypt.json"

SCRYPT_VECTORS: list[dict[str, Any]] = json.loads((VECTORS / VECTOR_FILE).read_text("utf-8"))[
    "scrypt"
]
#: Cheap parameters for tests that only need *some* valid verifier.
PARAMS = MIN_PARAMS


def test_vector_copy_matches_shared() -> None:
    shared = SHARED_VECTORS / VECTOR_FILE
    if not shared.exists():
        pytest.skip("no shared/ checkout beside the repository")
    assert json.loads(shared.read_text("utf-8")) == json.loads(
        (VECTORS / VECTOR_FILE).read_text("utf-8")
    )


def _check_scrypt_vector(vector: dict[str, Any]) -> None:
    params = ScryptParams(vector["N"], vector["r"], vector["p"])
    password = bytes.fromhex(vector["passwordHex"])
    salt = bytes.fromhex(vector["saltHex"])
    out = kdf.scrypt(password, salt, params, vector["dkLen"])
    assert out.hex() == vector["dk"]
    # the text forms in the file agree with the hex forms
    assert vector["password"].encode("ascii") == bytes.fromhex(vector["passwordHex"])
    assert vector["salt"].encode("ascii") == bytes.fromhex(vector["saltHex"])


@pytest.mark.parametrize(
    "vector", [v for v in SCRYPT_VECTORS if not v["slow"]], ids=lambda v: f"tc{v['tcId']}"
)
def test_rfc7914_scrypt(vector: dict[str, Any]) -> None:
    _check_scrypt_vector(vector)


def test_rfc7914_has_three_fast_vectors() -> None:
    assert [v["tcId"] for v in SCRYPT_VECTORS if not v["slow"]] == [1, 2, 3]


@pytest.mark.slow
@pytest.mark.parametrize(
    "vector", [v for v in SCRYPT_VECTORS if v["slow"]], ids=lambda v: f"tc{v['tcId']}"
)
def test_rfc7914_scrypt_slow(vector: dict[str, Any], request: pytest.FixtureRequest) -> None:
    """
    RFC 7914's N=2^20 vector: 1 GiB of memory, several seconds.
    """
    if not request.config.getoption("--run-slow", default=False):
        pytest.skip("needs 1 GiB of memory and seconds of CPU; run with --run-slow")
    _check_scrypt_vector(vector)


def test_derive_secrets_uses_scrypt_output() -> None:
    """
    derive_secrets is scrypt(NFC UTF-8 password, salt, params, 112) cut 40|40|32.
    """
    salt = b"s" * 16
    out = kdf.scrypt("pässword".encode(), salt, PARAMS, 112)
    got = derive_secrets("pässword", salt, PARAMS)
    assert got.w0 == int.from_bytes(out[:40], "big") % ORDER
    assert got.w1 == int.from_bytes(out[40:80], "big") % ORDER
    assert got.content_secret == out[80:]


# --- parameter bounds ----------------------------------------------------------------


def test_default_and_min_params() -> None:
    assert DEFAULT_PARAMS == ScryptParams(2**15, 8, 1)
    assert MIN_PARAMS == ScryptParams(2**15, 8, 1)
    check_params(DEFAULT_PARAMS)
    check_params(MIN_PARAMS)


@pytest.mark.parametrize(
    "params",
    [
        ScryptParams(2**16, 8, 1),
        ScryptParams(2**20, 8, 1),  # exactly 1 GiB
        ScryptParams(2**15, 16, 1),
        ScryptParams(2**15, 8, 4),
        ScryptParams(2**17, 16, 4),  # 1 GiB
    ],
)
def test_check_params_accepts(params: ScryptParams) -> None:
    check_params(params)


@pytest.mark.parametrize(
    "params, word",
    [
        (ScryptParams(2**14, 8, 1), "below"),
        (ScryptParams(2**10, 8, 1), "below"),
        (ScryptParams(2**15, 7, 1), "below"),
        (ScryptParams(2**15, 1, 1), "below"),
        (ScryptParams(2**15, 8, 0), "below"),
        (ScryptParams(2**15 + 1, 8, 1), "power of two"),
        (ScryptParams(3 * 2**15, 8, 1), "power of two"),
        (ScryptParams(0, 8, 1), "power of two"),
        (ScryptParams(-(2**15), 8, 1), "power of two"),
        (ScryptParams(2**21, 8, 1), "above"),
        (ScryptParams(2**30, 8, 1), "above"),
        (ScryptParams(2**15, 17, 1), "above"),
        (ScryptParams(2**15, 8, 5), "above"),
        (ScryptParams(2**20, 16, 1), "memory"),  # 2 GiB
        (ScryptParams(2**19, 8, 4), "memory"),  # 2 GiB
        (ScryptParams(2**15, 8, True), "integers"),
        (ScryptParams(2.0**15, 8, 1), "integers"),  # type: ignore[arg-type]
    ],
)
def test_check_params_refuses(params: ScryptParams, word: str) -> None:
    with pytest.raises(WeakParameters) as e:
        check_params(params)
    assert word in e.value.message


def test_scrypt_memory_limit_is_enough_for_the_ceiling() -> None:
    """
    kdf.scrypt sets maxmem itself: parameters above OpenSSL's 32 MiB default work.
    """
    out = kdf.scrypt(b"pw", b"salt" * 4, ScryptParams(2**15, 16, 1), 16)  # 64 MiB
    assert len(out) == 16


# --- secrets ---------------------------------------------------------------------------


def test_derive_secrets_deterministic() -> None:
    salt = bytes(range(16))
    a = derive_secrets("hunter2", salt, PARAMS)
    b = derive_secrets("hunter2", salt, PARAMS)
    assert a == b
    assert 0 <= a.w0 < ORDER and 0 <= a.w1 < ORDER
    assert len(a.content_secret) == 32


def test_derive_secrets_independent_outputs() -> None:
    s = derive_secrets("hunter2", bytes(16), PARAMS)
    w0 = s.w0.to_bytes(32, "big")
    w1 = s.w1.to_bytes(32, "big")
    assert len({w0, w1, s.content_secret}) == 3
    assert s.content_secret not in (w0, w1)
    # the content secret is not derivable from what the server stores
    v = make_verifier("hunter2", "room", PARAMS, bytes(16))
    assert v.w0 == s.w0
    assert s.content_secret.hex() not in json.dumps(v.to_json())
    assert format(s.w1, "064x") not in json.dumps(v.to_json())


def test_derive_secrets_depends_on_everything() -> None:
    base = derive_secrets("hunter2", bytes(16), PARAMS)
    assert derive_secrets("hunter3", bytes(16), PARAMS) != base
    assert derive_secrets("hunter2", b"\x01" + bytes(15), PARAMS) != base
    assert derive_secrets("hunter2", bytes(16), ScryptParams(2**15, 8, 2)) != base


def test_derive_secrets_normalises_nfc() -> None:
    composed = "caf\u00e9"
    decomposed = "cafe\u0301"
    assert unicodedata.normalize("NFC", decomposed) == composed
    assert derive_secrets(composed, bytes(16), PARAMS) == derive_secrets(
        decomposed, bytes(16), PARAMS
    )


def test_derive_secrets_does_not_check_params() -> None:
    derive_secrets("pw", bytes(16), ScryptParams(2**4, 1, 1))


def test_password_secrets_repr_hides_values() -> None:
    s = derive_secrets("hunter2", bytes(16), PARAMS)
    text = repr(s)
    assert str(s.w0) not in text and str(s.w1) not in text
    assert s.content_secret.hex() not in text and repr(s.content_secret) not in text
    assert "PasswordSecrets" in text


# --- HKDF and the content key ----------------------------------------------------------


def test_hkdf_rfc5869_case_1() -> None:
    ikm = bytes.fromhex("0b" * 22)
    salt = bytes.fromhex("000102030405060708090a0b0c")
    info = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")
    okm = hkdf_sha256(ikm, info, 42, salt)
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
        "34007208d5b887185865"
    )


def test_hkdf_rfc5869_case_3_empty_salt_and_info() -> None:
    okm = hkdf_sha256(bytes.fromhex("0b" * 22), b"", 42)
    assert okm.hex() == (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"
        "9d201395faa4b61a96c8"
    )


def test_content_key() -> None:
    secret = bytes(range(32))
    key = content_key(secret, "lobby")
    assert len(key) == 32
    assert key == hkdf_sha256(secret, b"twistchat/1 content key\x00lobby", 32)
    assert content_key(secret, "lobby") == key
    assert content_key(secret, "lobby2") != key
    assert content_key(bytes(32), "lobby") != key


# --- the verifier ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def verifier() -> Verifier:
    return make_verifier("correct horse battery staple", "lobby", PARAMS)


def test_make_verifier(verifier: Verifier) -> None:
    assert verifier.room == "lobby"
    assert len(verifier.salt) == 16
    assert verifier.params == PARAMS
    s = derive_secrets("correct horse battery staple", verifier.salt, PARAMS)
    assert verifier.w0 == s.w0
    assert verifier.L == encode_point(G * s.w1)
    assert len(verifier.L) == 65
    decode_point(verifier.L)


def test_make_verifier_random_salt_and_reproducible_with_salt(verifier: Verifier) -> None:
    again = make_verifier("correct horse battery staple", "lobby", PARAMS)
    assert again.salt != verifier.salt and again != verifier
    same = make_verifier("correct horse battery staple", "lobby", PARAMS, verifier.salt)
    assert same == verifier
    other = make_verifier("another password", "lobby", PARAMS, verifier.salt)
    assert other != verifier


def test_make_verifier_refuses_bad_params_and_salt() -> None:
    with pytest.raises(WeakParameters):
        make_verifier("pw", "lobby", ScryptParams(2**10, 8, 1))
    with pytest.raises(ValueError):
        make_verifier("pw", "lobby", PARAMS, b"short")


def test_verifier_repr_hides_w0(verifier: Verifier) -> None:
    assert str(verifier.w0) not in repr(verifier)
    assert format(verifier.w0, "x") not in repr(verifier)


def test_verifier_json_round_trip(verifier: Verifier) -> None:
    d = verifier.to_json()
    assert d["format"] == "twistchat-verifier"
    assert d["version"] == 1
    assert d["room"] == "lobby"
    assert base64.b64decode(d["salt"]) == verifier.salt
    assert d["scrypt"] == {"n": PARAMS.n, "r": PARAMS.r, "p": PARAMS.p}
    assert re.fullmatch("[0-9a-f]{64}", d["w0"])
    assert d["L"] == verifier.L.hex()
    assert Verifier.from_json(json.loads(json.dumps(d))) == verifier


def test_verifier_w0_hex_is_zero_padded() -> None:
    v = Verifier("r", bytes(16), PARAMS, 5, encode_point(G))
    assert v.to_json()["w0"] == "0" * 63 + "5"
    assert Verifier.from_json(v.to_json()) == v


def _mutations(good: dict[str, Any]) -> dict[str, Any]:
    def changed(path: tuple[str, ...], value: object) -> dict[str, Any]:
        d = copy.deepcopy(good)
        target = d
        for key in path[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        return d

    l_bytes = bytes.fromhex(good["L"])
    off_curve = l_bytes[:-1] + bytes([l_bytes[-1] ^ 1])
    return {
        "not_a_dict": [good],
        "none": None,
        "missing_L": changed(("L",), _DELETE),
        "missing_w0": changed(("w0",), _DELETE),
        "extra_member": {**good, "password": "oops"},
        "wrong_format": changed(("format",), "twistchat-password"),
        "version_2": changed(("version",), 2),
        "version_str": changed(("version",), "1"),
        "version_bool": changed(("version",), True),
        "room_empty": changed(("room",), ""),
        "room_int": changed(("room",), 7),
        "salt_not_base64": changed(("salt",), "***"),
        "salt_not_str": changed(("salt",), 12),
        "salt_short": changed(("salt",), base64.b64encode(b"x" * 8).decode()),
        "salt_long": changed(("salt",), base64.b64encode(b"x" * 65).decode()),
        "salt_unpadded": changed(("salt",), good["salt"].rstrip("=")),
        "scrypt_missing_p": changed(("scrypt", "p"), _DELETE),
        "scrypt_extra": changed(("scrypt", "q"), 1),
        "scrypt_not_dict": changed(("scrypt",), [2**15, 8, 1]),
        "scrypt_weak": changed(("scrypt", "n"), 1024),
        "scrypt_absurd": changed(("scrypt", "n"), 2**30),
        "scrypt_float": changed(("scrypt", "r"), 8.0),
        "w0_short": changed(("w0",), good["w0"][:-1]),
        "w0_upper": changed(("w0",), good["w0"].upper()),
        "w0_int": changed(("w0",), int(good["w0"], 16)),
        "w0_ge_order": changed(("w0",), format(ORDER, "064x")),
        "w0_not_hex": changed(("w0",), "z" * 64),
        "L_short": changed(("L",), good["L"][:-2]),
        "L_compressed": changed(("L",), "02" + good["L"][2:66]),
        "L_off_curve": changed(("L",), off_curve.hex()),
        "L_identity": changed(("L",), "04" + "00" * 64),
        "L_not_hex": changed(("L",), "x" * 130),
    }


_DELETE = object()
#: A fixed verifier whose w0 hex has letters (so upper-casing changes it).
_GOOD = make_verifier("x", "r", PARAMS, bytes(16)).to_json()


def test_verifier_mutations_are_distinct() -> None:
    assert Verifier.from_json(_GOOD).to_json() == _GOOD
    for name, bad in _mutations(_GOOD).items():
        assert json.dumps(bad) != json.dumps(_GOOD), name


@pytest.mark.parametrize("name", sorted(_mutations(_GOOD)))
def test_verifier_from_json_rejects(name: str) -> None:
    with pytest.raises(ConfigError):
        Verifier.from_json(_mutations(_GOOD)[name])


def test_verifier_salt_noncanonical_base64() -> None:
    """
    Base64 whose unused trailing bits are set decodes leniently to the same bytes;
    the file must hold the canonical form.
    """
    d = copy.deepcopy(_GOOD)
    assert d["salt"] == "AAAAAAAAAAAAAAAAAAAAAA=="
    assert base64.b64decode("AAAAAAAAAAAAAAAAAAAAAB==") == bytes(16)
    d["salt"] = "AAAAAAAAAAAAAAAAAAAAAB=="
    with pytest.raises(ConfigError):
        Verifier.from_json(d)


# --- random passwords --------------------------------------------------------------------


def test_random_password_format() -> None:
    for _ in range(50):
        pw = random_password()
        groups = pw.split("-")
        assert len(groups) == 5
        assert all(len(g) == 5 for g in groups)
        assert all(c in kdf.PASSWORD_ALPHABET for g in groups for c in g)
        assert pw == pw.strip() and pw.isascii() and pw == pw.lower()


def test_random_password_alphabet_and_entropy() -> None:
    alphabet = kdf.PASSWORD_ALPHABET
    assert len(set(alphabet)) == len(alphabet) == 32
    assert not set("lo01") & set(alphabet)
    bits = kdf.PASSWORD_GROUPS * kdf.PASSWORD_GROUP_LENGTH * math.log2(len(alphabet))
    assert bits >= 100


def test_random_password_uses_the_whole_alphabet() -> None:
    seen = set("".join(random_password() for _ in range(200)).replace("-", ""))
    assert seen == set(kdf.PASSWORD_ALPHABET)
    assert len({random_password() for _ in range(200)}) == 200
