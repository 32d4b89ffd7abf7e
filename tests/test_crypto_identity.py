"""
Tests for twistchat.crypto.identity: RFC 8032 vectors, verification, the key file on
a real disk (modes, symlinks, leftovers, garbage, concurrent creation).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from twistchat.crypto import identity as identity_module
from twistchat.crypto.identity import (
    MAX_FILE_BYTES,
    Identity,
    check_public_key,
    default_identity_path,
    load_or_create,
    verify,
    write_private_file,
)
from twistchat.errors import BadSignature, ConfigError, Rejected

# RFC 8032 section 7.1, Ed25519: (secret key, public key, message, signature).
RFC8032_VECTORS = {
    "TEST 1": (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    "TEST 2": (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    "TEST 3": (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
        "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
}
#: The order L of the Ed25519 base point (RFC 8032 section 5.1).
ED25519_L = 2**252 + 27742317777372353535851937790883648493


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _write(path: Path, data: bytes, mode: int) -> None:
    path.write_bytes(data)
    os.chmod(path, mode)


# --- RFC 8032 ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RFC8032_VECTORS))
def test_rfc8032_vectors(name: str) -> None:
    seed, public, message, signature = (bytes.fromhex(h) for h in RFC8032_VECTORS[name])
    identity = Identity.from_seed(seed)
    assert identity.public_key == public
    assert identity.sign(message) == signature
    verify(public, message, signature)


@pytest.mark.parametrize("name", sorted(RFC8032_VECTORS))
def test_rfc8032_vectors_altered(name: str) -> None:
    seed, public, message, signature = (bytes.fromhex(h) for h in RFC8032_VECTORS[name])
    with pytest.raises(BadSignature):
        verify(public, message + b"\x00", signature)
    for i in (0, 31, 32, 63):  # a bit of R, of S
        bad = bytearray(signature)
        bad[i] ^= 0x01
        with pytest.raises(BadSignature):
            verify(public, message, bytes(bad))
    other = RFC8032_VECTORS["TEST 1" if name != "TEST 1" else "TEST 2"][1]
    with pytest.raises(BadSignature):
        verify(bytes.fromhex(other), message, signature)


def test_malleated_signature_refused() -> None:
    """
    S + L is the same scalar modulo L; RFC 8032 verification refuses S >= L, so a
    signature cannot be altered into another valid one (message hashes stay unique).
    """
    seed, public, message, signature = (bytes.fromhex(h) for h in RFC8032_VECTORS["TEST 1"])
    s = int.from_bytes(signature[32:], "little")
    malleated = signature[:32] + (s + ED25519_L).to_bytes(32, "little")
    with pytest.raises(BadSignature):
        verify(public, message, malleated)


@pytest.mark.parametrize(
    "public, signature",
    [
        (b"\x00" * 31, b"\x00" * 64),  # short key
        (b"\x00" * 33, b"\x00" * 64),  # long key
        ("d75a98" * 10, b"\x00" * 64),  # not bytes
        (b"\x02" + b"\x00" * 31, b"\x00" * 64),  # y = 2 is not on the curve
        (bytes.fromhex(RFC8032_VECTORS["TEST 1"][1]), b"\x00" * 63),  # short signature
        (bytes.fromhex(RFC8032_VECTORS["TEST 1"][1]), None),  # not bytes
    ],
)
def test_verify_refuses_malformed(public: object, signature: object) -> None:
    with pytest.raises(BadSignature) as info:
        verify(public, b"", signature)  # type: ignore[arg-type]
    assert isinstance(info.value, Rejected) and info.value.code == "bad-signature"


def test_check_public_key() -> None:
    public = bytes.fromhex(RFC8032_VECTORS["TEST 2"][1])
    assert check_public_key(bytearray(public)) == public
    with pytest.raises(BadSignature):
        check_public_key(b"\x02" + b"\x00" * 31)


def test_generate_and_repr() -> None:
    a, b = Identity.generate(), Identity.generate()
    assert a.public_key != b.public_key and len(a.public_key) == 32
    signature = a.sign(b"hello")
    assert len(signature) == 64 and a.sign(b"hello") == signature  # deterministic
    verify(a.public_key, b"hello", signature)
    with pytest.raises(BadSignature):
        verify(b.public_key, b"hello", signature)
    text = repr(a)
    assert a.public_key[:8].hex() in text
    secret = a.to_json()["seed"]
    assert secret not in text and secret[:16] not in text


@pytest.mark.parametrize("seed", [b"", b"\x00" * 31, b"\x00" * 33, "00" * 32])
def test_from_seed_length(seed: object) -> None:
    with pytest.raises(ValueError):
        Identity.from_seed(seed)  # type: ignore[arg-type]


def test_default_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert default_identity_path() == tmp_path / "twistchat" / "identity.json"


# --- the key file, on disk --------------------------------------------------------------


def test_load_or_create_creates_private_file_and_directories(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "identity.json"
    old = os.umask(0)  # the most permissive umask: modes must not depend on it
    try:
        created = load_or_create(path)
    finally:
        os.umask(old)
    assert _mode(path) == 0o600
    assert _mode(tmp_path / "new") == 0o700
    assert _mode(tmp_path / "new" / "deeper") == 0o700
    assert os.listdir(path.parent) == ["identity.json"]  # no temporary file left
    again = load_or_create(path)
    assert again.public_key == created.public_key
    assert Identity.load(path).public_key == created.public_key
    d = json.loads(path.read_text())
    assert d["format"] == "twistchat-identity" and d["version"] == 1
    assert d["public"] == created.public_key.hex()


def test_mode_set_explicitly_under_restrictive_umask(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    old = os.umask(0o277)
    try:
        Identity.generate().save(path)
    finally:
        os.umask(old)
    assert _mode(path) == 0o600
    Identity.load(path)


def test_existing_parent_directory_left_alone(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    Identity.generate().save(tmp_path / "identity.json")
    assert _mode(tmp_path) == 0o755


def test_save_does_not_overwrite_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    first, second = Identity.generate(), Identity.generate()
    first.save(path)
    with pytest.raises(FileExistsError):
        second.save(path)
    assert Identity.load(path).public_key == first.public_key
    second.save(path, replace=True)
    assert Identity.load(path).public_key == second.public_key
    assert _mode(path) == 0o600
    assert os.listdir(tmp_path) == ["identity.json"]


def test_concurrent_creator_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Another process creates the key between our failed load and our save: we use its
    key instead of replacing it.
    """
    path = tmp_path / "identity.json"
    theirs = Identity.generate()
    real_generate = Identity.generate

    def generate_after_them() -> Identity:
        theirs.save(path)
        return real_generate()

    monkeypatch.setattr(Identity, "generate", staticmethod(generate_after_them))
    assert load_or_create(path).public_key == theirs.public_key


def test_leftover_temporary_file_not_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A world-readable file (or a symlink) already at the temporary name is never
    written through: O_EXCL|O_NOFOLLOW refuses it, and the key file stays private.
    """
    path = tmp_path / "identity.json"
    monkeypatch.setattr(identity_module.secrets, "token_hex", lambda n: "fixed")
    leftover = tmp_path / ".identity.json.fixed.tmp"
    _write(leftover, b"left behind", 0o644)
    with pytest.raises(ConfigError, match="cannot create"):
        Identity.generate().save(path)
    assert not path.exists()
    assert leftover.read_bytes() == b"left behind"

    leftover.unlink()
    target = tmp_path / "target"
    _write(target, b"", 0o644)
    leftover.symlink_to(target)
    with pytest.raises(ConfigError, match="cannot create"):
        Identity.generate().save(path)
    assert target.read_bytes() == b"" and not path.exists()

    leftover.unlink()
    Identity.generate().save(path)
    assert _mode(path) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["identity.json", "target"]


def test_failed_write_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(identity_module.os, "fsync", fail)
    with pytest.raises(ConfigError, match="No space left"):
        Identity.generate().save(tmp_path / "identity.json")
    assert os.listdir(tmp_path) == []


def test_write_private_file_replace_fixes_mode(tmp_path: Path) -> None:
    path = tmp_path / "pins"
    _write(path, b"old", 0o644)
    write_private_file(path, b"new", replace=True)
    assert path.read_bytes() == b"new" and _mode(path) == 0o600


def test_unwritable_directory_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(ConfigError, match="cannot create directory"):
        Identity.generate().save(blocker / "sub" / "identity.json")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o602, 0o620, 0o610, 0o601])
def test_load_refuses_group_or_other_access(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "identity.json"
    Identity.generate().save(path)
    os.chmod(path, mode)
    for load in (Identity.load, load_or_create):
        with pytest.raises(ConfigError, match="chmod 600") as info:
            load(path)
        assert f"{mode:04o}" in info.value.message
    os.chmod(path, 0o400)  # owner read-only is fine
    Identity.load(path)


def test_load_refuses_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    Identity.generate().save(real)
    link = tmp_path / "identity.json"
    link.symlink_to(real)
    for load in (Identity.load, load_or_create):
        with pytest.raises(ConfigError, match="symbolic link"):
            load(link)
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="symbolic link"):
        load_or_create(dangling)  # and does not create a key through the link
    assert not (tmp_path / "nowhere").exists()


def test_load_refuses_non_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "identity.json"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(ConfigError, match="not a regular file"):
        Identity.load(fifo)  # O_NONBLOCK: does not hang waiting for a writer
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    with pytest.raises(ConfigError):
        Identity.load(directory)


def test_load_refuses_file_of_another_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "identity.json"
    Identity.generate().save(path)
    uid = os.stat(path).st_uid
    monkeypatch.setattr(identity_module.os, "geteuid", lambda: uid + 1)
    with pytest.raises(ConfigError, match="another user"):
        Identity.load(path)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no identity key file"):
        Identity.load(tmp_path / "absent.json")


def _valid_object() -> dict[str, object]:
    return Identity.from_seed(bytes(range(32))).to_json()


def _garbage() -> list[bytes]:
    valid = _valid_object()
    cases: list[bytes] = [
        b"",
        b"\xff\xfe not utf-8",
        b"not json",
        b"[" * 3000 + b"]" * 1000,
        b"[]",
        b"null",
        b'"text"',
        b"{}",
        b"x" * (MAX_FILE_BYTES + 1),
    ]
    changes: list[tuple[str, object]] = [
        ("format", "twistchat-verifier"),
        ("version", 2),
        ("version", True),
        ("version", "1"),
        ("algorithm", "Ed448"),
        ("seed", valid["seed"].upper()),  # type: ignore[union-attr]
        ("seed", valid["seed"][:-2]),  # type: ignore[index]
        ("seed", 12),
        ("seed", "zz" * 32),
        ("public", "00" * 32),  # does not match the seed
        ("public", None),
        ("extra", 1),
    ]
    for key, value in changes:
        d = dict(valid)
        d[key] = value
        cases.append(json.dumps(d).encode())
    for key in valid:
        d = dict(valid)
        del d[key]
        cases.append(json.dumps(d).encode())
    return cases


@pytest.mark.parametrize("content", _garbage())
def test_load_refuses_garbage(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "identity.json"
    _write(path, content, 0o600)
    for load in (Identity.load, load_or_create):
        with pytest.raises(ConfigError) as info:
            load(path)
        assert str(path) in info.value.message
    assert path.read_bytes() == content  # load_or_create did not replace it


def test_valid_object_loads(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    _write(path, json.dumps(_valid_object()).encode(), 0o600)
    assert Identity.load(path).public_key == Identity.from_seed(bytes(range(32))).public_key
