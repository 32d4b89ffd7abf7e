"""
Password stretching and key derivation.

A room password is stretched once with scrypt (salt and parameters chosen by the
server, bounded by the client: L{check_params}) into 112 bytes, cut into three
independent secrets, one per purpose:

  - w0 and w1, the SPAKE2+ password scalars (40 bytes each, reduced modulo the P-256
    group order as RFC 9383 section 3.2 prescribes, so the bias is below 2^-64);
  - the content secret (32 bytes), from which each room's message key is derived with
    HKDF-SHA256 (L{content_key}).

The server stores a L{Verifier}: the salt, the parameters, w0 and L = w1*G. Nothing in
it lets anyone compute w1 or the content secret without guessing the password.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from Crypto.Hash import SHA256
from Crypto.Protocol.KDF import HKDF

from twistchat.crypto.spake2plus import G, ORDER, decode_point, encode_point
from twistchat.errors import BadPoint, ConfigError, WeakParameters

__all__ = [
    "DEFAULT_PARAMS",
    "MAX_MEMORY",
    "MIN_PARAMS",
    "PasswordSecrets",
    "ScryptParams",
    "Verifier",
    "check_params",
    "content_key",
    "derive_secrets",
    "hkdf_sha256",
    "make_verifier",
    "random_password",
    "scrypt",
]

#: Bytes of scrypt output: w0 (40) || w1 (40) || content secret (32).
SCRYPT_OUTPUT = 112
_W_BYTES = 40
CONTENT_SECRET_BYTES = 32
SALT_BYTES = 16
MIN_SALT_BYTES = 16
MAX_SALT_BYTES = 64

_CONTENT_KEY_INFO = b"twistchat/1 content key\x00"


@dataclass(frozen=True)
class ScryptParams:
    """
    scrypt's cost parameters: N (CPU/memory cost, a power of two), r (block size)
    and p (parallelism). Memory use is about 128 * r * N bytes per lane.
    """

    n: int
    r: int
    p: int

    @property
    def memory(self) -> int:
        """
        128 * r * N * p: an upper bound on scrypt's working memory, in bytes.
        """
        return 128 * self.r * self.n * self.p


#: Parameters for new verifiers (32 MiB, roughly 0.05-0.1 s on a current CPU).
DEFAULT_PARAMS = ScryptParams(2**15, 8, 1)
#: The weakest parameters a client accepts.
MIN_PARAMS = ScryptParams(2**15, 8, 1)
#: The most expensive parameters a client accepts: a hostile server must not be able
#: to make a client burn minutes of CPU or gigabytes of memory.
MAX_N = 2**20
MAX_R = 16
MAX_P = 4
#: Upper bound on 128 * r * N * p (1 GiB).
MAX_MEMORY = 1 << 30


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_params(params: ScryptParams) -> None:
    """
    Refuse scrypt parameters that are too weak or too expensive.

    @raise WeakParameters: if N < 2^15, r < 8, p < 1 or N is not a power of two
        (too weak or invalid), or N > 2^20, r > 16, p > 4 or 128*r*N*p > 1 GiB (too
        expensive); the message says which.
    """
    n, r, p = params.n, params.r, params.p
    if not (_is_int(n) and _is_int(r) and _is_int(p)):
        raise WeakParameters("scrypt parameters must be integers")
    if n < 2 or n & (n - 1):
        raise WeakParameters(f"scrypt N={n} is not a power of two")
    if n < MIN_PARAMS.n:
        raise WeakParameters(f"scrypt N={n} is below the minimum {MIN_PARAMS.n}")
    if r < MIN_PARAMS.r:
        raise WeakParameters(f"scrypt r={r} is below the minimum {MIN_PARAMS.r}")
    if p < MIN_PARAMS.p:
        raise WeakParameters(f"scrypt p={p} is below the minimum {MIN_PARAMS.p}")
    if n > MAX_N:
        raise WeakParameters(f"scrypt N={n} is above the maximum {MAX_N}")
    if r > MAX_R:
        raise WeakParameters(f"scrypt r={r} is above the maximum {MAX_R}")
    if p > MAX_P:
        raise WeakParameters(f"scrypt p={p} is above the maximum {MAX_P}")
    if params.memory > MAX_MEMORY:
        raise WeakParameters(
            f"scrypt N={n}, r={r}, p={p} needs {params.memory} bytes of memory,"
            f" above the maximum {MAX_MEMORY}"
        )


def scrypt(password: bytes, salt: bytes, params: ScryptParams, dklen: int) -> bytes:
    """
    scrypt (RFC 7914) through the standard library (OpenSSL), with a memory limit
    large enough for the parameters. Does not check the parameters' strength.
    """
    n, r, p = params.n, params.r, params.p
    # OpenSSL needs 128*r*(N + p + 2) bytes (V plus B); leave 1 MiB of slack and stay
    # below the C int limit hashlib imposes on maxmem.
    needed = 128 * r * (n + p + 2) + (1 << 20)
    maxmem = min(max(needed, 128 * r * n * p + (1 << 20)), 2**31 - 1)
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=dklen)


@dataclass(frozen=True)
class PasswordSecrets:
    """
    Everything a password gives a client: the SPAKE2+ scalars w0, w1 and the content
    secret. The repr shows none of them.
    """

    w0: int = field(repr=False)
    w1: int = field(repr=False)
    content_secret: bytes = field(repr=False)


def _password_bytes(password: str) -> bytes:
    if not isinstance(password, str):
        raise TypeError("password must be str")
    return unicodedata.normalize("NFC", password).encode("utf-8")


def derive_secrets(password: str, salt: bytes, params: ScryptParams) -> PasswordSecrets:
    """
    Stretch a password into w0, w1 and the content secret.

    The password is normalised to Unicode NFC and encoded in UTF-8, so the same
    password typed on different systems gives the same secrets. scrypt's 112-byte
    output is split 40 | 40 | 32; w0 and w1 are the first two parts read as big-endian
    integers modulo the P-256 group order.

    Does not call L{check_params}: callers decide which parameters they accept.
    """
    out = scrypt(_password_bytes(password), bytes(salt), params, SCRYPT_OUTPUT)
    w0 = int.from_bytes(out[:_W_BYTES], "big") % ORDER
    w1 = int.from_bytes(out[_W_BYTES : 2 * _W_BYTES], "big") % ORDER
    return PasswordSecrets(w0, w1, out[2 * _W_BYTES :])


def hkdf_sha256(secret: bytes, info: bytes, length: int = 32, salt: bytes = b"") -> bytes:
    """
    HKDF-SHA256 (RFC 5869): extract with C{salt} (empty means HashLen zero bytes, as in
    the RFC), then expand to C{length} bytes with C{info}.
    """
    return HKDF(secret, length, salt or None, SHA256, 1, info)


def content_key(content_secret: bytes, room: str) -> bytes:
    """
    The 32-byte AES-256-GCM key of a room, from the content secret of its password.
    Binding the room name means one password used for two rooms gives two keys.
    """
    return hkdf_sha256(content_secret, _CONTENT_KEY_INFO + room.encode("utf-8"), 32)


# --- the server's verifier -----------------------------------------------------------

VERIFIER_FORMAT = "twistchat-verifier"
VERIFIER_VERSION = 1
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX130 = re.compile(r"[0-9a-f]{130}")


@dataclass(frozen=True)
class Verifier:
    """
    What the server stores for a room: the scrypt salt and parameters, and the SPAKE2+
    verifier (w0, L = w1*G as a 65-byte uncompressed point). w0 is not shown by repr.
    """

    room: str
    salt: bytes
    params: ScryptParams
    w0: int = field(repr=False)
    L: bytes

    def to_json(self) -> dict[str, Any]:
        """
        The JSON object stored in a verifier file.
        """
        return {
            "format": VERIFIER_FORMAT,
            "version": VERIFIER_VERSION,
            "room": self.room,
            "salt": base64.b64encode(self.salt).decode("ascii"),
            "scrypt": {"n": self.params.n, "r": self.params.r, "p": self.params.p},
            "w0": format(self.w0, "064x"),
            "L": self.L.hex(),
        }

    @classmethod
    def from_json(cls, d: object) -> Verifier:
        """
        Parse and validate a verifier file's JSON object.

        @raise ConfigError: the object is not exactly a version 1 verifier: a member is
            missing, extra or ill-typed, the salt is not canonical base64 of 16 to 64
            bytes, the scrypt parameters are outside L{check_params}' range, w0 is not
            64 lowercase hex digits of a number below the group order, or L is not a
            valid point on P-256.
        """
        if not isinstance(d, dict):
            raise ConfigError("a verifier must be a JSON object")
        expected = {"format", "version", "room", "salt", "scrypt", "w0", "L"}
        keys = set(d)
        if keys != expected:
            missing = sorted(str(k) for k in expected - keys)
            extra = sorted(str(k) for k in keys - expected)
            raise ConfigError(f"verifier members wrong (missing: {missing}, unknown: {extra})")
        if d["format"] != VERIFIER_FORMAT:
            raise ConfigError(f"not a {VERIFIER_FORMAT} file")
        version = d["version"]
        if not _is_int(version) or version != VERIFIER_VERSION:
            raise ConfigError(f"unsupported verifier version {version!r}")
        room = d["room"]
        if not isinstance(room, str) or not room:
            raise ConfigError("verifier room must be a non-empty string")

        salt_text = d["salt"]
        if not isinstance(salt_text, str):
            raise ConfigError("verifier salt must be a base64 string")
        try:
            salt = base64.b64decode(salt_text.encode("ascii"), validate=True)
        except (ValueError, binascii.Error):
            raise ConfigError("verifier salt is not valid base64") from None
        if base64.b64encode(salt).decode("ascii") != salt_text:
            raise ConfigError("verifier salt is not canonical base64")
        if not MIN_SALT_BYTES <= len(salt) <= MAX_SALT_BYTES:
            raise ConfigError(
                f"verifier salt must be {MIN_SALT_BYTES} to {MAX_SALT_BYTES} bytes"
            )

        scrypt_d = d["scrypt"]
        if not isinstance(scrypt_d, dict) or set(scrypt_d) != {"n", "r", "p"}:
            raise ConfigError('verifier scrypt must be an object {"n", "r", "p"}')
        if not all(_is_int(scrypt_d[k]) for k in ("n", "r", "p")):
            raise ConfigError("verifier scrypt parameters must be integers")
        params = ScryptParams(scrypt_d["n"], scrypt_d["r"], scrypt_d["p"])
        try:
            check_params(params)
        except WeakParameters as e:
            raise ConfigError(f"verifier: {e.message}") from None

        w0_text = d["w0"]
        if not isinstance(w0_text, str) or not _HEX64.fullmatch(w0_text):
            raise ConfigError("verifier w0 must be 64 lowercase hex digits")
        w0 = int(w0_text, 16)
        if w0 >= ORDER:
            raise ConfigError("verifier w0 is not below the group order")

        l_text = d["L"]
        if not isinstance(l_text, str) or not _HEX130.fullmatch(l_text):
            raise ConfigError("verifier L must be 130 lowercase hex digits")
        L = bytes.fromhex(l_text)
        try:
            decode_point(L)
        except BadPoint as e:
            raise ConfigError(f"verifier L: {e.message}") from None
        return cls(room, salt, params, w0, L)


def make_verifier(
    password: str,
    room: str,
    params: ScryptParams = DEFAULT_PARAMS,
    salt: bytes | None = None,
) -> Verifier:
    """
    Derive a room's verifier from its password (then forget the password).

    @param salt: a random 16-byte salt unless given (given: to check a password
        against a stored verifier).
    @raise WeakParameters: C{params} are outside L{check_params}' range (clients would
        refuse them).
    @raise ValueError: C{salt} is not 16 to 64 bytes.
    """
    check_params(params)
    if salt is None:
        salt = secrets.token_bytes(SALT_BYTES)
    salt = bytes(salt)
    if not MIN_SALT_BYTES <= len(salt) <= MAX_SALT_BYTES:
        raise ValueError(f"salt must be {MIN_SALT_BYTES} to {MAX_SALT_BYTES} bytes")
    s = derive_secrets(password, salt, params)
    return Verifier(room, salt, params, s.w0, encode_point(G * s.w1))


#: Alphabet for L{random_password}: lowercase letters and digits without l, o, 0 and
#: 1 (easily confused): 24 letters + 8 digits = 32 symbols, 5 bits each.
PASSWORD_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"
PASSWORD_GROUPS = 5
PASSWORD_GROUP_LENGTH = 5


def random_password() -> str:
    """
    A strong random room password a human can read out and type, e.g.
    C{"k7fqa-m2xhd-9rtwe-bn4cs-pz8jv"}: 5 groups of 5 characters from a 32-symbol
    alphabet (lowercase letters and digits without l, o, 0, 1), joined by '-'.

    Entropy: 25 characters * log2(32) = 125 bits, chosen with L{secrets}.
    """
    return "-".join(
        "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(PASSWORD_GROUP_LENGTH))
        for _ in range(PASSWORD_GROUPS)
    )
