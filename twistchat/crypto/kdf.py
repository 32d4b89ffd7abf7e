"""
Password stretching and key derivation.

A room password is stretched once with scrypt (salt and parameters chosen by the
server, bounded by the client: L{check_params}) into 112 bytes, cut into three
independent secrets, one per purpose:

  - w0 and w1, the SPAKE2+ password scalars (40 bytes each, reduced modulo the P-256
    group order as RFC 9383 section 3.2 prescribes, so the bias is below 2^-64);
  - the content secret (32 bytes), from which each room's message key is derived with
    HKDF-SHA256 (L{content_key}).

The server stores a L{twistchat.crypto.verifier.Verifier} made from these secrets: the
salt, the parameters, w0 and L = w1*G. Nothing in it lets anyone compute w1 or the
content secret without guessing the password.
"""

from __future__ import annotations

import hashlib
import secrets
import unicodedata
from dataclasses import dataclass, field

from Crypto.Hash import SHA256
from Crypto.Protocol.KDF import HKDF

from twistchat.crypto.spake2plus import ORDER
from twistchat.errors import WeakParameters

__all__ = [
    "DEFAULT_PARAMS",
    "MAX_MEMORY",
    "MIN_PARAMS",
    "PasswordSecrets",
    "ScryptParams",
    "check_params",
    "content_key",
    "derive_secrets",
    "hkdf_sha256",
    "random_password",
    "scrypt",
]

#: Bytes of scrypt output: w0 (40) || w1 (40) || content secret (32).
SCRYPT_OUTPUT = 112
_W_BYTES = 40
CONTENT_SECRET_BYTES = 32
#: Bytes of a new salt, and the range of salt sizes a client or server accepts.
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
