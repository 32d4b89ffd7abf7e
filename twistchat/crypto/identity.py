"""
A member's identity key: Ed25519 (RFC 8032, pure Ed25519, no context, no prehash).

Confidentiality in a room comes from the room password; authenticity must not, since
every member holds the room key. So each client profile has its own identity key
pair, and every message is signed with it (L{twistchat.crypto.signed}). Receivers pin
(server, room, name) -> public key and compare safety numbers
(L{twistchat.crypto.safety}).

Byte formats
============

  - Public key: the 32-byte RFC 8032 encoding of the point A (section 5.1.5).
  - Private key: the 32-byte RFC 8032 secret key ("seed"); the signing scalar and the
    nonce prefix are derived from it with SHA-512 as the RFC prescribes.
  - Signature: the 64-byte RFC 8032 encoding R || S (section 5.1.6). L{verify}
    follows RFC 8032 section 5.1.7 and refuses S >= L, so a valid signature cannot be
    altered into another valid one.

The key file
============

A UTF-8 JSON object, exactly these members (no others)::

    {"format": "twistchat-identity",
     "version": 1,
     "algorithm": "Ed25519",
     "seed": "<64 lowercase hex digits: the 32-byte secret key>",
     "public": "<64 lowercase hex digits: the 32-byte public key>"}

C{public} is redundant: loading recomputes it from C{seed} and refuses a file where
they disagree (a damaged or hand-edited file). The file is at most
L{MAX_FILE_BYTES} bytes.

Files are written by L{write_private_file}: missing parent directories are created
with mode 0700; the content goes to a new temporary file beside the target, opened
with C{O_WRONLY|O_CREAT|O_EXCL|O_NOFOLLOW} and mode 0600 set explicitly with
C{fchmod} (so neither the umask nor a file left behind by someone else decides the
mode), synced, then moved into place: with C{os.link} when an existing key must not
be overwritten (two clients creating a key at once both end up with the same one),
with C{os.replace} otherwise. The temporary file is removed on every path.

Loading (L{Identity.load}) opens with C{O_NOFOLLOW} and refuses, with a
L{ConfigError} naming the file: a symbolic link, anything but a regular file, a file
owned by another user, a file any of whose group or other permission bits are set
(as ssh does for its keys), a file larger than L{MAX_FILE_BYTES}, and any content that
is not exactly the object above.

No Twisted here; the only I/O is reading and writing key files.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
from pathlib import Path
from typing import Any

from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa

from twistchat.crypto.keyfile import check_header, read_private_file, write_private_file
from twistchat.errors import BadSignature, ConfigError

__all__ = [
    "FILE_FORMAT",
    "FILE_VERSION",
    "Identity",
    "MAX_FILE_BYTES",
    "PUBLIC_KEY_BYTES",
    "SEED_BYTES",
    "SIGNATURE_BYTES",
    "check_public_key",
    "default_identity_path",
    "load_or_create",
    "verify",
    "write_private_file",
]

#: Bytes of an encoded Ed25519 public key.
PUBLIC_KEY_BYTES = 32
#: Bytes of an Ed25519 secret key (the RFC 8032 seed).
SEED_BYTES = 32
#: Bytes of an Ed25519 signature.
SIGNATURE_BYTES = 64

FILE_FORMAT = "twistchat-identity"
FILE_VERSION = 1
_ALGORITHM = "Ed25519"
#: The largest key file L{Identity.load} reads.
MAX_FILE_BYTES = 4096
_FILE_MEMBERS = frozenset({"format", "version", "algorithm", "seed", "public"})
_HEX_DIGITS = frozenset("0123456789abcdef")
#: Public keys L{verify} keeps decoded (decoding costs about a fifth of a verify).
_KEY_CACHE = 1024


def default_identity_path() -> Path:
    """
    Where a client profile keeps its identity key unless told otherwise:
    C{$XDG_CONFIG_HOME/twistchat/identity.json}, by default under C{~/.config}
    (beside the known-hosts file).
    """
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "twistchat" / "identity.json"


class Identity:
    """
    An Ed25519 key pair: signs for one member profile.

    The repr shows the start of the public key and never the secret key.
    """

    __slots__ = ("_seed", "_public", "_signer")

    def __init__(self, seed: bytes) -> None:
        """
        @param seed: the 32-byte RFC 8032 secret key. Prefer L{generate},
            L{from_seed} or L{load}.
        @raise ValueError: C{seed} is not 32 bytes.
        """
        if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_BYTES:
            raise ValueError(f"an Ed25519 secret key is {SEED_BYTES} bytes")
        self._seed = bytes(seed)
        key = eddsa.import_private_key(self._seed)
        self._public: bytes = key.public_key().export_key(format="raw")
        self._signer = eddsa.new(key, "rfc8032")

    @classmethod
    def generate(cls) -> Identity:
        """
        A new key pair from 32 bytes of the operating system's randomness.
        """
        return cls(secrets.token_bytes(SEED_BYTES))

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """
        The key pair of a given 32-byte secret key (tests, test vectors).

        @raise ValueError: C{seed} is not 32 bytes.
        """
        return cls(seed)

    def __repr__(self) -> str:
        return f"<Identity Ed25519 public={self._public[:8].hex()}...>"

    @property
    def public_key(self) -> bytes:
        """
        The 32-byte public key.
        """
        return self._public

    def sign(self, data: bytes) -> bytes:
        """
        The 64-byte RFC 8032 signature of C{data} (deterministic: the same data gives
        the same signature).
        """
        signature: bytes = self._signer.sign(bytes(data))
        return signature

    # --- the key file ---------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """
        The JSON object of the key file (it holds the secret key).
        """
        return {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "algorithm": _ALGORITHM,
            "seed": self._seed.hex(),
            "public": self._public.hex(),
        }

    @classmethod
    def from_json(cls, d: object) -> Identity:
        """
        Parse and check a key file's JSON object.

        @raise ConfigError: it is not exactly a version 1 identity object, or its
            public key does not belong to its secret key.
        """
        d = check_header(d, "identity key", _FILE_MEMBERS, FILE_FORMAT, FILE_VERSION)
        if d["algorithm"] != _ALGORITHM:
            raise ConfigError(f"unsupported identity key algorithm {d['algorithm']!r}")
        seed = _hex32("seed", d["seed"])
        public = _hex32("public", d["public"])
        identity = cls(seed)
        if identity.public_key != public:
            raise ConfigError("identity key damaged: its public key does not match its secret key")
        return identity

    def save(self, path: Path | str, *, replace: bool = False) -> None:
        """
        Write the key file (owner-only; see L{write_private_file}).

        @param replace: overwrite an existing file; by default an existing file is
            left alone and L{FileExistsError} raised.
        @raise FileExistsError: C{path} exists and C{replace} is false.
        @raise ConfigError: the file or a parent directory cannot be written.
        """
        data = (json.dumps(self.to_json(), indent=2) + "\n").encode("utf-8")
        write_private_file(Path(path), data, replace=replace)

    @classmethod
    def load(cls, path: Path | str) -> Identity:
        """
        Read a key file.

        @raise ConfigError: there is no such file, it is a symbolic link or not a
            regular file, it is owned by another user or open to its group or others,
            it is too large, or it does not hold a valid identity key.
        """
        path = Path(path)
        try:
            return cls._load(path)
        except FileNotFoundError:
            raise ConfigError(f"no identity key file {path}") from None

    @classmethod
    def _load(cls, path: Path) -> Identity:
        """
        L{load}, but a missing file raises L{FileNotFoundError}.
        """
        raw = read_private_file(path, MAX_FILE_BYTES, "key file")
        try:
            d = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise ConfigError(f"identity key file {path} is not valid JSON") from None
        try:
            return cls.from_json(d)
        except ConfigError as e:
            raise ConfigError(f"identity key file {path}: {e.message}") from None


def _hex32(name: str, value: object) -> bytes:
    if (
        not isinstance(value, str)
        or len(value) != 2 * SEED_BYTES
        or not _HEX_DIGITS.issuperset(value)
    ):
        raise ConfigError(f"identity key {name} must be {2 * SEED_BYTES} lowercase hex digits")
    return bytes.fromhex(value)


def load_or_create(path: Path | str | None = None) -> Identity:
    """
    The identity key in C{path} (by default L{default_identity_path}); a new one,
    saved there, if there is no file yet.

    Safe against a concurrent creator: if another process creates the file first,
    its key is loaded and returned.

    @raise ConfigError: the file exists but is refused by L{Identity.load}, or a new
        one cannot be written.
    """
    path = default_identity_path() if path is None else Path(path)
    try:
        return Identity._load(path)
    except FileNotFoundError:
        pass
    identity = Identity.generate()
    try:
        identity.save(path)
    except FileExistsError:
        return Identity.load(path)
    return identity


# --- verification ---------------------------------------------------------------------


@functools.lru_cache(maxsize=_KEY_CACHE)
def _decode_public(public_key: bytes) -> ECC.EccKey:
    """
    @raise ValueError: not the encoding of a point on Ed25519.
    """
    return eddsa.import_public_key(public_key)


def check_public_key(public_key: bytes) -> bytes:
    """
    Check that C{public_key} is a 32-byte encoding of a point on Ed25519.

    @return: C{public_key} as L{bytes}.
    @raise BadSignature: it is not.
    """
    if not isinstance(public_key, (bytes, bytearray)) or len(public_key) != PUBLIC_KEY_BYTES:
        raise BadSignature(f"an identity public key is {PUBLIC_KEY_BYTES} bytes")
    public_key = bytes(public_key)
    try:
        _decode_public(public_key)
    except ValueError:
        raise BadSignature("not a valid Ed25519 identity public key") from None
    return public_key


def verify(public_key: bytes, data: bytes, signature: bytes) -> None:
    """
    Check an RFC 8032 Ed25519 signature.

    @param public_key: the signer's 32-byte public key.
    @param signature: the 64-byte signature.
    @raise BadSignature: the key is not a valid public key, the signature is not 64
        bytes, or it is not a valid signature of C{data} under the key (S >= L
        included).
    """
    public_key = check_public_key(public_key)
    if not isinstance(signature, (bytes, bytearray)) or len(signature) != SIGNATURE_BYTES:
        raise BadSignature(f"a signature is {SIGNATURE_BYTES} bytes")
    verifier = eddsa.new(_decode_public(public_key), "rfc8032")
    try:
        verifier.verify(bytes(data), bytes(signature))
    except ValueError:
        raise BadSignature() from None
