"""
twistchat's cryptography: password stretching, the SPAKE2+ login, sealed messages.

No I/O and no Twisted here; only the standard library and pycryptodome.

One key per purpose, all from one scrypt run over the room password
(L{kdf.derive_secrets})::

    scrypt(NFC(password), salt, N, r, p) -> 112 bytes
      [0:40]   -> w0   SPAKE2+ scalar (the server knows it)
      [40:80]  -> w1   SPAKE2+ scalar (the server knows only L = w1*G)
      [80:112] -> content secret -> HKDF(room) -> content key
                                    -> HKDF(session id) -> per-sender-session
                                       AES-256-GCM subkey (L{seal})

  - L{kdf}: scrypt with parameter bounds (L{kdf.check_params}), HKDF, random room
    passwords.
  - L{verifier}: the server's stored L{verifier.Verifier}, derived from a password by
    L{verifier.make_verifier}, and its JSON file format.
  - L{spake2plus}: RFC 9383 SPAKE2+-P256-SHA256-HKDF-SHA256-HMAC-SHA256, checked
    against the RFC's test vector. The client is the L{spake2plus.Prover}; the
    server holds a L{spake2plus.VerifierKey} per room and runs a
    L{spake2plus.VerifierSession} per login. The context binds the protocol version
    and a TLS exporter value (L{spake2plus.context}).
  - L{seal}: AES-256-GCM sealing (L{seal.Sealer}) and opening with replay detection
    (L{seal.Opener}); payload version 1 (text) or 2 (a signed envelope).
  - L{identity}: a member's Ed25519 identity key and its owner-only key file.
  - L{signed}: the signed message envelope (sender key, chain fields, text,
    signature) sealed as a version 2 payload, and the message hash.
  - L{safety}: safety numbers for a pair of members and a code for a whole room.
  - L{vouch}: a device's vouch for another identity key of the same name.

Sizes the wire format shares with the cryptography (session id, GCM tag, padding block,
largest text and ciphertext, counter range, point and MAC lengths, salt range) are
defined here, in L{seal}, L{spake2plus} and L{kdf}; L{twistchat.wire} imports them.
Nothing in this package imports from the wire format, the server or the client.

The server only ever sees a L{verifier.Verifier} / L{spake2plus.VerifierKey} (salt,
parameters, w0, L): enough to check a login, not enough to derive w1, the content
secret or any content key without guessing the password.
"""

from twistchat.crypto.kdf import (
    DEFAULT_PARAMS,
    MIN_PARAMS,
    PasswordSecrets,
    ScryptParams,
    check_params,
    content_key,
    derive_secrets,
    hkdf_sha256,
    random_password,
)
from twistchat.crypto.seal import Opener, Sealer, associated_data
from twistchat.crypto.spake2plus import (
    EXPORTER_LABEL,
    EXPORTER_LENGTH,
    Prover,
    VerifierKey,
    VerifierSession,
    context,
    decode_point,
    encode_point,
)
from twistchat.crypto.verifier import Verifier, make_verifier

__all__ = [
    "DEFAULT_PARAMS",
    "EXPORTER_LABEL",
    "EXPORTER_LENGTH",
    "MIN_PARAMS",
    "Opener",
    "PasswordSecrets",
    "Prover",
    "ScryptParams",
    "Sealer",
    "Verifier",
    "VerifierKey",
    "VerifierSession",
    "associated_data",
    "check_params",
    "content_key",
    "context",
    "decode_point",
    "derive_secrets",
    "encode_point",
    "hkdf_sha256",
    "make_verifier",
    "random_password",
]
