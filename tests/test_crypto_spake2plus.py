"""
Tests for twistchat.crypto.spake2plus: the RFC 9383 test vector end to end, point
validation, and failure modes of the login.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest
from Crypto.PublicKey import ECC
from twistchat.crypto import spake2plus as s
from twistchat.crypto.kdf import ScryptParams, derive_secrets
from twistchat.crypto.verifier import make_verifier
from twistchat.errors import BadPoint, ServerNotAuthenticated, WrongPassword

VECTORS = Path(__file__).resolve().parent / "vectors"
#: In CI the repository is cloned with the project's shared/ directory beside it.
SHARED_VECTORS = Path(__file__).resolve().parent.parent.parent / "shared" / "vectors"
VECTOR_FILE = "rfc9383_spake2plus_p256.json"


def load_vector() -> dict[str, Any]:
    vector: dict[str, Any] = json.loads((VECTORS / VECTOR_FILE).read_text("utf-8"))
    return vector


V = load_vector()
CONTEXT = V["context"].encode("ascii")
ID_P = V["idProver"].encode("ascii")
ID_V = V["idVerifier"].encode("ascii")


def hexint(name: str) -> int:
    return int(V[name], 16)


def hexbytes(name: str) -> bytes:
    return bytes.fromhex(V[name])


def test_vector_copy_matches_shared() -> None:
    """
    The copy in tests/vectors is the shared one (when the sibling checkout exists).
    """
    shared = SHARED_VECTORS / VECTOR_FILE
    if not shared.exists():
        pytest.skip("no shared/ checkout beside the repository")
    assert json.loads(shared.read_text("utf-8")) == V


def test_curve_constants_match_pycryptodome() -> None:
    curve = ECC._curves["p256"]  # type: ignore[attr-defined]
    assert s.P == int(curve.p)
    assert s.B == int(curve.b)
    assert s.ORDER == int(curve.order)
    assert s.G == curve.G


def test_m_and_n_are_the_rfc_constants() -> None:
    assert s.encode_point(s.M)[1:33] == hexbytes("M")[1:]
    assert s.encode_point(s.N)[1:33] == hexbytes("N")[1:]
    # parity of y matches the compressed prefixes 02 (even) and 03 (odd)
    assert int(s.M.y) % 2 == 0 and hexbytes("M")[0] == 2
    assert int(s.N.y) % 2 == 1 and hexbytes("N")[0] == 3
    # and they appear in the vector's transcript in uncompressed form
    tt = hexbytes("TT")
    assert s.encode_point(s.M) in tt
    assert s.encode_point(s.N) in tt


def test_l_is_w1_times_g() -> None:
    assert s.encode_point(s.G * hexint("w1")) == hexbytes("L")


def test_rfc9383_vector_end_to_end() -> None:
    """
    Every intermediate value of RFC 9383's P-256 vector, on both sides.
    """
    w0, w1 = hexint("w0"), hexint("w1")
    prover = s.Prover(CONTEXT, ID_P, ID_V, w0, w1, x=hexint("x"))
    share_p = prover.share()
    assert share_p == hexbytes("shareP")

    key = s.VerifierKey(w0, hexbytes("L"))
    session = s.VerifierSession(key, CONTEXT, ID_P, ID_V, y=hexint("y"))
    share_v, confirm_v = session.respond(share_p)
    assert share_v == hexbytes("shareV")
    assert confirm_v == hexbytes("confirmV")

    # intermediates, recomputed from the prover's side
    t = s.decode_point(share_v) + (-(s.N * w0))
    z = s.encode_point(t * hexint("x"))
    v = s.encode_point(t * w1)
    assert z == hexbytes("Z")
    assert v == hexbytes("V")
    # ... and from the verifier's side
    x_point = s.decode_point(share_p) + (-(s.M * w0))
    assert s.encode_point(x_point * hexint("y")) == hexbytes("Z")
    assert s.encode_point(s.decode_point(hexbytes("L")) * hexint("y")) == hexbytes("V")

    tt = s.transcript(CONTEXT, ID_P, ID_V, share_p, share_v, z, v, w0)
    assert tt == hexbytes("TT")
    keys = s.derive_keys(tt)
    assert keys.K_main == hexbytes("K_main")
    assert keys.K_confirmP == hexbytes("K_confirmP")
    assert keys.K_confirmV == hexbytes("K_confirmV")
    assert keys.K_shared == hexbytes("K_shared")
    confirm_p, confirm_v2 = s.confirmation_macs(keys, share_p, share_v)
    assert confirm_p == hexbytes("confirmP")
    assert confirm_v2 == hexbytes("confirmV")

    got_confirm_p, k_prover = prover.finish(share_v, confirm_v)
    assert got_confirm_p == hexbytes("confirmP")
    assert k_prover == hexbytes("K_shared")
    assert session.finish(got_confirm_p) == hexbytes("K_shared")


def test_keys_repr_hides_secrets() -> None:
    keys = s.derive_keys(hexbytes("TT"))
    assert V["K_shared"] not in repr(keys)
    assert hexbytes("K_shared").hex() not in repr(keys)


# --- point encoding ----------------------------------------------------------------


def test_encode_decode_round_trip() -> None:
    for _ in range(5):
        point = s.G * (secrets.randbelow(s.ORDER - 1) + 1)
        data = s.encode_point(point)
        assert len(data) == 65 and data[0] == 4
        assert s.decode_point(data) == point


def test_encode_point_at_infinity_refused() -> None:
    """
    encode_point tells the point at infinity by pycryptodome's coordinates for
    it, (0, 0), not by C{is_point_at_infinity}: each way of reaching it is
    refused, and pycryptodome agrees that each is that point.
    """
    point = s.G * 7
    for infinity in (s.G * 0, point + (-point), s.M * s.ORDER):
        assert infinity.is_point_at_infinity()
        with pytest.raises(ValueError):
            s.encode_point(infinity)


def _find_small_x_point() -> tuple[int, int]:
    """
    A point with a small x coordinate (found by trying x = 1, 2, ...), so x + p fits
    in 32 bytes and pycryptodome would silently reduce it modulo p.
    """
    for x in range(1, 1000):
        rhs = (x**3 - 3 * x + s.B) % s.P
        y = pow(rhs, (s.P + 1) // 4, s.P)
        if y * y % s.P == rhs:
            return x, y
    raise AssertionError("no small-x point found")  # pragma: no cover


def _bad_points() -> dict[str, object]:
    good = hexbytes("shareP")
    y = int.from_bytes(good[33:], "big")
    small_x, small_y = _find_small_x_point()
    return {
        "empty": b"",
        "short": good[:-1],
        "long": good + b"\x00",
        "compressed": b"\x02" + good[1:33],
        "compressed_prefix_full_length": b"\x02" + good[1:],
        "hybrid_prefix": b"\x06" + good[1:],
        "off_curve": b"\x04" + good[1:33] + ((y + 1) % s.P).to_bytes(32, "big"),
        "x_is_p": b"\x04" + s.P.to_bytes(32, "big") + good[33:],
        "x_all_ones": b"\x04" + b"\xff" * 32 + good[33:],
        "x_plus_p": b"\x04"
        + (small_x + s.P).to_bytes(32, "big")
        + small_y.to_bytes(32, "big"),
        "y_plus_p": b"\x04"
        + small_x.to_bytes(32, "big")
        + (small_y + s.P).to_bytes(32, "big")
        if small_y + s.P < 2**256
        else b"\x04" + small_x.to_bytes(32, "big") + s.P.to_bytes(32, "big"),
        "identity_zeros": b"\x04" + b"\x00" * 64,
        "all_zeros": b"\x00" * 65,
        "not_bytes": "04" * 65,
    }


def test_small_x_point_is_valid() -> None:
    """
    The base of the x + p case is itself a valid point (so only the encoding is bad).
    """
    x, y = _find_small_x_point()
    s.decode_point(b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big"))


@pytest.mark.parametrize("name", sorted(_bad_points()))
def test_decode_point_rejects(name: str) -> None:
    with pytest.raises(BadPoint):
        s.decode_point(_bad_points()[name])  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(_bad_points()))
def test_verifier_rejects_bad_share_p(name: str) -> None:
    key = s.VerifierKey(hexint("w0"), hexbytes("L"))
    session = s.VerifierSession(key, CONTEXT, ID_P, ID_V)
    with pytest.raises(BadPoint):
        session.respond(_bad_points()[name])  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(_bad_points()))
def test_prover_rejects_bad_share_v(name: str) -> None:
    prover = s.Prover(CONTEXT, ID_P, ID_V, hexint("w0"), hexint("w1"))
    with pytest.raises(BadPoint):
        prover.finish(_bad_points()[name], hexbytes("confirmV"))  # type: ignore[arg-type]


def test_verifier_key_rejects_bad_l() -> None:
    with pytest.raises(BadPoint):
        s.VerifierKey(hexint("w0"), b"\x04" + b"\x00" * 64)
    with pytest.raises(ValueError):
        s.VerifierKey(s.ORDER, hexbytes("L"))


def test_share_p_equal_to_w0_m_gives_bad_point() -> None:
    """
    shareP = w0*M makes Z the point at infinity on the verifier side: refused.
    """
    w0 = hexint("w0")
    key = s.VerifierKey(w0, hexbytes("L"))
    session = s.VerifierSession(key, CONTEXT, ID_P, ID_V)
    with pytest.raises(BadPoint):
        session.respond(s.encode_point(s.M * w0))


def test_share_v_equal_to_w0_n_gives_bad_point() -> None:
    w0 = hexint("w0")
    prover = s.Prover(CONTEXT, ID_P, ID_V, w0, hexint("w1"))
    with pytest.raises(BadPoint):
        prover.finish(s.encode_point(s.N * w0), hexbytes("confirmV"))


# --- logins ----------------------------------------------------------------------------


def _random_secrets() -> tuple[int, int]:
    return secrets.randbelow(s.ORDER), secrets.randbelow(s.ORDER - 1) + 1


def _login(
    prover_w0: int,
    prover_w1: int,
    key: s.VerifierKey,
    ctx_p: bytes = CONTEXT,
    ctx_v: bytes = CONTEXT,
) -> tuple[s.Prover, s.VerifierSession, bytes, bytes]:
    prover = s.Prover(ctx_p, ID_P, ID_V, prover_w0, prover_w1)
    session = s.VerifierSession(key, ctx_v, ID_P, ID_V)
    share_v, confirm_v = session.respond(prover.share())
    return prover, session, share_v, confirm_v


def test_full_login_random_secrets() -> None:
    for _ in range(3):
        w0, w1 = _random_secrets()
        key = s.VerifierKey(w0, s.encode_point(s.G * w1))
        prover, session, share_v, confirm_v = _login(w0, w1, key)
        confirm_p, k_p = prover.finish(share_v, confirm_v)
        k_v = session.finish(confirm_p)
        assert k_p == k_v and len(k_p) == 32


def test_full_login_from_password() -> None:
    params = ScryptParams(2**15, 8, 1)
    verifier = make_verifier("correct horse", "lobby", params)
    key = s.VerifierKey.from_verifier(verifier)
    pw = derive_secrets("correct horse", verifier.salt, params)
    prover, session, share_v, confirm_v = _login(pw.w0, pw.w1, key)
    confirm_p, k_p = prover.finish(share_v, confirm_v)
    assert session.finish(confirm_p) == k_p


def _stubborn_confirm_p(prover: s.Prover, share_v: bytes) -> bytes:
    """
    The confirmP an honest-looking prover would send if it ignored a failed check of
    confirmV.
    """
    keys = prover._derive(share_v)
    confirm_p, _ = s.confirmation_macs(keys, prover.share(), share_v)
    return confirm_p


def test_wrong_password_detected_by_both_sides() -> None:
    """
    A prover with another w0 than the verifier's: the prover refuses the server's
    confirmation (ServerNotAuthenticated) and, were it to send its confirmation
    anyway, the verifier refuses it (WrongPassword).
    """
    w0, w1 = _random_secrets()
    key = s.VerifierKey(w0, s.encode_point(s.G * w1))
    bad_w0 = (w0 + 1) % s.ORDER
    prover, session, share_v, confirm_v = _login(bad_w0, w1, key)
    confirm_p = _stubborn_confirm_p(prover, share_v)
    with pytest.raises(ServerNotAuthenticated):
        prover.finish(share_v, confirm_v)
    with pytest.raises(WrongPassword):
        session.finish(confirm_p)


def test_wrong_password_from_scrypt() -> None:
    """
    The same through the password: another password gives WrongPassword at the
    verifier and ServerNotAuthenticated at the prover.
    """
    params = ScryptParams(2**15, 8, 1)
    verifier = make_verifier("right password", "lobby", params)
    key = s.VerifierKey.from_verifier(verifier)
    wrong = derive_secrets("wrong password", verifier.salt, params)
    prover, session, share_v, confirm_v = _login(wrong.w0, wrong.w1, key)
    confirm_p = _stubborn_confirm_p(prover, share_v)
    with pytest.raises(ServerNotAuthenticated):
        prover.finish(share_v, confirm_v)
    with pytest.raises(WrongPassword):
        session.finish(confirm_p)


def test_wrong_w1_detected() -> None:
    w0, w1 = _random_secrets()
    key = s.VerifierKey(w0, s.encode_point(s.G * w1))
    prover, session, share_v, confirm_v = _login(w0, (w1 + 1) % s.ORDER, key)
    confirm_p = _stubborn_confirm_p(prover, share_v)
    with pytest.raises(ServerNotAuthenticated):
        prover.finish(share_v, confirm_v)
    with pytest.raises(WrongPassword):
        session.finish(confirm_p)


def test_server_with_other_verifier_not_authenticated() -> None:
    """
    A server that holds another room's verifier (or a decoy) cannot prove itself,
    and the prover's confirmation does not verify there either.
    """
    w0, w1 = _random_secrets()
    other_w0, other_w1 = _random_secrets()
    other_key = s.VerifierKey(other_w0, s.encode_point(s.G * other_w1))
    prover, session, share_v, confirm_v = _login(w0, w1, other_key)
    confirm_p = _stubborn_confirm_p(prover, share_v)
    with pytest.raises(ServerNotAuthenticated):
        prover.finish(share_v, confirm_v)
    with pytest.raises(WrongPassword):
        session.finish(confirm_p)


def test_different_context_fails() -> None:
    """
    A man in the middle terminating TLS makes each side see another exporter value:
    neither side's confirmation verifies at the other.
    """
    w0, w1 = _random_secrets()
    key = s.VerifierKey(w0, s.encode_point(s.G * w1))
    ctx_p = s.context(b"\x01" * s.EXPORTER_LENGTH)
    ctx_v = s.context(b"\x02" * s.EXPORTER_LENGTH)
    prover, session, share_v, confirm_v = _login(w0, w1, key, ctx_p, ctx_v)
    confirm_p = _stubborn_confirm_p(prover, share_v)
    with pytest.raises(ServerNotAuthenticated):
        prover.finish(share_v, confirm_v)
    with pytest.raises(WrongPassword):
        session.finish(confirm_p)


def test_same_context_succeeds() -> None:
    w0, w1 = _random_secrets()
    key = s.VerifierKey(w0, s.encode_point(s.G * w1))
    ctx = s.context(b"\x07" * s.EXPORTER_LENGTH)
    prover, session, share_v, confirm_v = _login(w0, w1, key, ctx, ctx)
    confirm_p, k = prover.finish(share_v, confirm_v)
    assert session.finish(confirm_p) == k


def test_different_ids_fail() -> None:
    w0, w1 = _random_secrets()
    key = s.VerifierKey(w0, s.encode_point(s.G * w1))
    prover = s.Prover(CONTEXT, b"alice", ID_V, w0, w1)
    session = s.VerifierSession(key, CONTEXT, b"mallory", ID_V)
    share_v, confirm_v = session.respond(prover.share())
    with pytest.raises(ServerNotAuthenticated):
        prover.finish(share_v, confirm_v)


def test_tampered_confirmations_refused() -> None:
    w0, w1 = _random_secrets()
    key = s.VerifierKey(w0, s.encode_point(s.G * w1))
    prover, session, share_v, confirm_v = _login(w0, w1, key)
    bad = bytes([confirm_v[0] ^ 1]) + confirm_v[1:]
    with pytest.raises(ServerNotAuthenticated):
        prover.finish(share_v, bad)

    prover, session, share_v, confirm_v = _login(w0, w1, key)
    confirm_p, _ = prover.finish(share_v, confirm_v)
    with pytest.raises(WrongPassword):
        session.finish(confirm_p[:-1] + bytes([confirm_p[-1] ^ 0x80]))


@pytest.mark.parametrize("value", [b"", b"\x00" * 31, "not bytes", None])
def test_malformed_confirmations_refused(value: object) -> None:
    w0, w1 = _random_secrets()
    key = s.VerifierKey(w0, s.encode_point(s.G * w1))
    prover, session, share_v, confirm_v = _login(w0, w1, key)
    with pytest.raises(ServerNotAuthenticated):
        prover.finish(share_v, value)  # type: ignore[arg-type]
    with pytest.raises(WrongPassword):
        session.finish(value)  # type: ignore[arg-type]


def test_sessions_are_single_use() -> None:
    w0, w1 = _random_secrets()
    key = s.VerifierKey(w0, s.encode_point(s.G * w1))
    prover, session, share_v, confirm_v = _login(w0, w1, key)
    with pytest.raises(RuntimeError):
        session.respond(prover.share())
    with pytest.raises(ServerNotAuthenticated):
        prover.finish(share_v, b"\x00" * 32)
    # the failed attempt is spent: no second guess at confirmV
    with pytest.raises(RuntimeError):
        prover.finish(share_v, confirm_v)
    with pytest.raises(WrongPassword):
        session.finish(b"\x00" * 32)
    with pytest.raises(RuntimeError):
        session.finish(b"\x00" * 32)


def test_finish_before_respond() -> None:
    key = s.VerifierKey(hexint("w0"), hexbytes("L"))
    session = s.VerifierSession(key, CONTEXT, ID_P, ID_V)
    with pytest.raises(RuntimeError):
        session.finish(b"\x00" * 32)


def test_ephemeral_shares_are_random() -> None:
    w0, w1 = _random_secrets()
    a = s.Prover(CONTEXT, ID_P, ID_V, w0, w1)
    b = s.Prover(CONTEXT, ID_P, ID_V, w0, w1)
    assert a.share() != b.share()


def test_scalar_ranges_checked() -> None:
    with pytest.raises(ValueError):
        s.Prover(CONTEXT, ID_P, ID_V, s.ORDER, 1)
    with pytest.raises(ValueError):
        s.Prover(CONTEXT, ID_P, ID_V, 1, -1)
    with pytest.raises(ValueError):
        s.Prover(CONTEXT, ID_P, ID_V, 1, 1, x=0)
    with pytest.raises(TypeError):
        s.Prover(CONTEXT, ID_P, ID_V, True, 1)
    key = s.VerifierKey(hexint("w0"), hexbytes("L"))
    with pytest.raises(ValueError):
        s.VerifierSession(key, CONTEXT, ID_P, ID_V, y=s.ORDER)


def test_context_and_exporter_constants() -> None:
    exporter = bytes(range(32))
    assert s.context(exporter) == (
        b"twistchat/3 SPAKE2+-P256-SHA256-HKDF-SHA256-HMAC-SHA256\x00" + exporter
    )
    assert s.EXPORTER_LABEL == b"EXPORTER-twistchat-spake2plus"
    assert s.EXPORTER_LENGTH == 32
    with pytest.raises(TypeError):
        s.context("text")  # type: ignore[arg-type]


def test_reprs_hide_secrets() -> None:
    w0 = hexint("w0")
    key = s.VerifierKey(w0, hexbytes("L"))
    prover = s.Prover(CONTEXT, ID_P, ID_V, w0, hexint("w1"))
    session = s.VerifierSession(key, CONTEXT, ID_P, ID_V)
    for obj in (key, prover, session):
        text = repr(obj)
        assert V["w0"] not in text and str(w0) not in text


def test_internal_hkdf_matches_reference() -> None:
    """
    The login path's stdlib HKDF agrees with pycryptodome's (kdf.hkdf_sha256) and
    with RFC 5869 test case 3 (no salt, no info).
    """
    from twistchat.crypto.kdf import hkdf_sha256

    for length in (1, 31, 32, 33, 64, 100):
        for info in (b"", b"ConfirmationKeys", b"SharedKey", bytes(range(200))):
            ikm = secrets.token_bytes(32)
            assert s._hkdf(ikm, info, length) == hkdf_sha256(ikm, info, length)
    okm = s._hkdf(bytes.fromhex("0b" * 22), b"", 42)
    assert okm.hex() == (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"
        "9d201395faa4b61a96c8"
    )
