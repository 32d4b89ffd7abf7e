"""
Authenticity of who speaks, against a hostile server: the server cannot relabel
a member (issue: "the server can relabel senders"), and the TLS channel the
login is bound to is TLS 1.3 on both sides, never 1.2 (whose exporter a man in
the middle can make both legs share).
"""

from __future__ import annotations

import os
import socket
import ssl as stdlib_ssl
import stat
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twistchat import errors, wire
from twistchat.client import TrustOnFirstUse, connect
from twistchat.crypto import spake2plus
from twisted.internet import protocol, reactor, ssl
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.threads import deferToThread

from .conftest import PASSWORD
from .test_client_hostile import Scripted, login_error
from .test_integration import is_message, join


def welcome_as(name: str, room: str) -> Any:
    """
    A confirm step that checks the client's proof, as an honest server would,
    then welcomes it under C{name} in C{room}.
    """

    def step(server: Scripted, message: wire.Message | None) -> None:
        assert server.spake is not None and message is not None
        server.spake.finish(message["mac"])
        server.send("welcome", name=name, room=room, addr="127.0.0.1:1", members=[])

    return step


@pytest.mark.parametrize("name, room", [("bob", "main"), ("alice", "other"), ("Alice", "main")])
@pytest_twisted.ensureDeferred
async def test_welcome_under_another_name_or_room_is_refused(
    certificate: Any, verifier: Any, known_hosts: Path, name: str, room: str
) -> None:
    """
    alice proves her name and room in the password handshake; a server that
    then welcomes her as someone else (even only differing in case) would have
    her seal under that name, and every member would read her words as
    theirs. The login fails instead, as a protocol error.
    """
    error = await login_error(certificate, verifier, known_hosts,
                              confirm=welcome_as(name, room))
    assert isinstance(error, errors.ProtocolError)
    assert f"welcomed us as {name!r} in room {room!r}" in error.message
    assert "not as 'alice' in room 'main'" in error.message


@pytest_twisted.ensureDeferred
async def test_session_seals_under_the_proved_name(server: Any, known_hosts: Path) -> None:
    """
    With an honest server, the session's name and room are the ones proved,
    and what it sends is relayed from that name.
    """
    alice, _ = await join(server, "alice", known_hosts)
    bob, bob_events = await join(server, "bob", known_hosts)
    assert (alice.name, alice.room) == ("alice", "main")
    alice.send("signed, alice")
    got = await bob_events.wait_for(is_message("signed, alice"), timeout=5)
    assert got.sender == "alice"
    await alice.leave()
    await bob.leave()


def test_context_binds_version_exporter_and_certificate() -> None:
    binding = bytes(range(64))
    assert spake2plus.context(binding) == (
        b"twistchat/%d SPAKE2+-P256-SHA256-HKDF-SHA256-HMAC-SHA256\x00" % wire.PROTOCOL_VERSION
        + binding
    )


# --- TLS 1.3 only -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_server_refuses_a_tls12_client(server: Any) -> None:
    """
    A client that offers at most TLS 1.2 gets no TLS session from the server.
    """

    def handshake(highest: stdlib_ssl.TLSVersion) -> str:
        context = stdlib_ssl.SSLContext(stdlib_ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = stdlib_ssl.CERT_NONE
        context.maximum_version = highest
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            try:
                with context.wrap_socket(raw) as tls:
                    return f"completed {tls.version()}"
            except stdlib_ssl.SSLError as e:
                return f"refused: {e.reason}"

    outcome = await deferToThread(handshake, stdlib_ssl.TLSVersion.TLSv1_2)
    assert outcome.startswith("refused"), outcome
    # The same client allowed TLS 1.3 gets it.
    assert await deferToThread(handshake, stdlib_ssl.TLSVersion.TLSv1_3) == "completed TLSv1.3"


@pytest_twisted.ensureDeferred
async def test_client_refuses_a_tls12_server(certificate: Any, known_hosts: Path) -> None:
    """
    A server that speaks at most TLS 1.2 is refused by the client before any
    password handshake, with a clear TLS error, and nothing is pinned.
    """
    options = ssl.CertificateOptions(
        privateKey=certificate.privateKey.original.to_cryptography_key(),
        certificate=certificate.original.to_cryptography(),
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        lowerMaximumSecurityTo=ssl.TLSVersion.TLSv1_2,
    )
    heard: list[bytes] = []

    class Listen(protocol.Protocol):
        def dataReceived(self, data: bytes) -> None:
            heard.append(data)

    port = await SSL4ServerEndpoint(reactor, 0, options, interface="127.0.0.1").listen(
        protocol.Factory.forProtocol(Listen))
    try:
        with pytest.raises(errors.TwistchatError) as info:
            await connect(reactor, "127.0.0.1", port.getHost().port, "alice", PASSWORD,
                          trust=TrustOnFirstUse(known_hosts), timeout=10)
    finally:
        await port.stopListening()
    assert info.value.code == "tls", info.value
    assert "TLS failed" in info.value.message
    assert heard == []
    assert not known_hosts.exists()


# --- the small findings: files, environment, numbers, reprs, forgotten sessions ------


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_verifier_file_is_owner_only_despite_a_leftover_temporary_file(tmp_path: Path) -> None:
    """
    A world-readable temporary file left at the name the old writer used does not
    make the verifier world-readable: the file is written fresh, mode 0600, and
    the rooms folder is made 0700.
    """
    from twistchat.crypto.verifier import make_verifier
    from twistchat.server.verifiers import room_path, save_verifier

    path = room_path(tmp_path / "data", "main")
    path.parent.mkdir(parents=True)
    os.chmod(path.parent, 0o700)
    leftover = path.with_name(f".{path.name}.tmp")
    leftover.write_text("{}")
    os.chmod(leftover, 0o644)
    old = os.umask(0)
    try:
        save_verifier(path, make_verifier(PASSWORD, "main"))
        fresh = room_path(tmp_path / "fresh", "main")
        save_verifier(fresh, make_verifier(PASSWORD, "main"))
    finally:
        os.umask(old)
    assert _mode(path) == 0o600
    assert _mode(fresh) == 0o600 and _mode(fresh.parent) == 0o700
    assert _mode(fresh.parent.parent) == 0o700


def test_server_data_directory_is_made_owner_only(tmp_path: Path) -> None:
    from .test_tap import parse

    parse(tmp_path / "data", "--password", PASSWORD)
    assert _mode(tmp_path / "data") == 0o700
    assert _mode(tmp_path / "data" / "server.key") == 0o600


def test_server_forgets_the_password_environment_variable(tmp_path: Path) -> None:
    """
    Like the client, the server takes TWISTCHAT_PASSWORD out of its environment
    once read: it is not needed again, nor by anything the server starts.
    """
    from .test_tap import parse

    environ = {"TWISTCHAT_PASSWORD": PASSWORD, "HOME": "/nowhere"}
    options = parse(tmp_path / "data", environ=environ)
    assert environ == {"HOME": "/nowhere"}
    assert [v.room for v in options.verifiers] == ["main"]


@pytest.mark.parametrize("rate", [b"1e400", b"-1e400", b"1" + b"0" * 400, b"NaN", b"Infinity"])
def test_wire_numbers_out_of_range_are_bad_messages(rate: bytes) -> None:
    frame = (b'{"type":"welcome","name":"a","room":"main","addr":"x","members":[],"rate":'
             + rate + b"}")
    with pytest.raises(errors.BadMessage):
        wire.decode(frame, wire.FROM_SERVER)


def test_verifier_repr_shows_neither_w0_nor_L_nor_the_salt() -> None:
    from twistchat.crypto.verifier import make_verifier

    verifier = make_verifier(PASSWORD, "main")
    shown = repr(verifier)
    assert "main" in shown
    for secret in (str(verifier.w0), verifier.L.hex(), repr(verifier.L), repr(verifier.salt),
                   verifier.salt.hex()):
        assert secret not in shown


def test_a_forgotten_session_cannot_be_replayed() -> None:
    """
    An opener that has evicted a sender session (it remembers MAX_SESSIONS)
    still refuses that session's old messages as replays.
    """
    from twistchat.crypto.seal import Opener, Sealer

    key = bytes(range(32))
    opener = Opener(key, "main", max_sessions=2)
    old = Sealer(key, "main", "alice")
    first = old.seal("first")
    assert opener.open("alice", *first) == "first"
    for name in ("bob", "carol"):  # two newer sessions evict alice's
        assert opener.open(name, *Sealer(key, "main", name).seal("hi")) == "hi"
    with pytest.raises(errors.Replayed):
        opener.open("alice", *first)
    # Her session itself goes on where it was.
    assert opener.open("alice", *old.seal("second")) == "second"
    with pytest.raises(errors.Replayed):
        opener.open("alice", *first)
