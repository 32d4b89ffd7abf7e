"""
The server's verifier for a room, and the file format it is stored in.

A L{Verifier} is what C{twistchat-passwd} writes and the server loads: the scrypt salt
and parameters, w0, and L = w1*G (RFC 9383's registration record, plus what a client
needs to stretch its password the same way). L{make_verifier} derives one from a
password; L{Verifier.to_json} and L{Verifier.from_json} are the file format, strictly
validated. The server prepares it for logins with
L{twistchat.crypto.spake2plus.VerifierKey.from_verifier}.

Nothing in a verifier lets anyone compute w1, the content secret or a content key
without guessing the password (see L{twistchat.crypto.kdf}).
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from twistchat.crypto.kdf import (
    DEFAULT_PARAMS,
    MAX_SALT_BYTES,
    MIN_SALT_BYTES,
    SALT_BYTES,
    ScryptParams,
    _is_int,
    check_params,
    derive_secrets,
)
from twistchat.crypto.keyfile import check_header
from twistchat.crypto.spake2plus import ORDER, G, decode_point, encode_point
from twistchat.errors import BadPoint, ConfigError, WeakParameters

__all__ = [
    "VERIFIER_FORMAT",
    "VERIFIER_VERSION",
    "Verifier",
    "make_verifier",
]

VERIFIER_FORMAT = "twistchat-verifier"
VERIFIER_VERSION = 1
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX130 = re.compile(r"[0-9a-f]{130}")


@dataclass(frozen=True)
class Verifier:
    """
    What the server stores for a room: the scrypt salt and parameters, and the SPAKE2+
    verifier (w0, L = w1*G as a 65-byte uncompressed point). Its repr shows only
    the room and the scrypt cost: w0 and L are what an offline guess is tested
    against, and the salt is half of what it needs, so none of them belongs in a
    log or a traceback.
    """

    room: str
    salt: bytes = field(repr=False)
    params: ScryptParams
    w0: int = field(repr=False)
    L: bytes = field(repr=False)

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
        expected = {"format", "version", "room", "salt", "scrypt", "w0", "L"}
        d = check_header(d, "verifier", expected, VERIFIER_FORMAT, VERIFIER_VERSION)
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
