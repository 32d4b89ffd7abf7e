"""
``twistchat-passwd``: writing a room's verifier, and logging in with it.
"""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twistchat import errors
from twistchat.client import ChatListener, TrustOnFirstUse, connect
from twistchat.crypto.kdf import DEFAULT_PARAMS, ScryptParams
from twistchat.crypto.verifier import Verifier, make_verifier
from twistchat.passwd import main
from twistchat.server.room import Rooms
from twistchat.server.service import ChatServerFactory
from twistchat.server.tls import server_options
from twistchat.server.verifiers import load_verifier
from twisted.internet import defer, reactor
from twisted.internet.endpoints import SSL4ServerEndpoint

from .conftest import OTHER_PASSWORD, PASSWORD, stop_server


@pytest.fixture(autouse=True)
def no_password_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TWISTCHAT_PASSWORD", raising=False)


def password_file(tmp_path: Path, password: str) -> Path:
    path = tmp_path / "password"
    path.write_text(password + "\n", encoding="utf-8")
    return path


def matches(verifier: Verifier, password: str) -> bool:
    return make_verifier(password, verifier.room, verifier.params, verifier.salt) == verifier


def test_writes_verifier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    code = main(["--data-dir", str(data), "--room", "lobby",
                 "--password-file", str(password_file(tmp_path, PASSWORD))])
    assert code == 0
    path = data / "rooms" / "lobby.json"
    verifier = load_verifier(path)
    assert verifier.room == "lobby"
    assert verifier.params == DEFAULT_PARAMS
    assert matches(verifier, PASSWORD)
    assert not matches(verifier, OTHER_PASSWORD)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert PASSWORD.encode() not in path.read_bytes()
    assert sorted(p.name for p in (data / "rooms").iterdir()) == ["lobby.json"]
    out, err = capsys.readouterr()
    assert out == ""
    assert "lobby" in err and str(path) in err
    assert PASSWORD not in err


def test_default_room(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert main(["-d", str(data), "--password-file", str(password_file(tmp_path, PASSWORD))]) == 0
    assert load_verifier(data / "rooms" / "main.json").room == "main"


def test_new_salt_every_time(tmp_path: Path) -> None:
    data = tmp_path / "data"
    args = ["-d", str(data), "--password-file", str(password_file(tmp_path, PASSWORD))]
    assert main(args) == 0
    first = load_verifier(data / "rooms" / "main.json")
    assert main(args) == 0
    second = load_verifier(data / "rooms" / "main.json")
    assert first.salt != second.salt
    assert matches(second, PASSWORD)


def test_output_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--output", "-", "--room", "lobby",
                 "--password-file", str(password_file(tmp_path, PASSWORD))])
    assert code == 0
    out, err = capsys.readouterr()
    verifier = Verifier.from_json(json.loads(out))
    assert verifier.room == "lobby"
    assert matches(verifier, PASSWORD)
    assert PASSWORD not in out
    assert err == ""
    assert not (tmp_path / "twistchat-data").exists()


def test_output_file(tmp_path: Path) -> None:
    path = tmp_path / "out" / "verifier.json"
    code = main(["-o", str(path), "--password-file", str(password_file(tmp_path, PASSWORD))])
    assert code == 0
    verifier = load_verifier(path)
    assert verifier.room == "main"
    assert matches(verifier, PASSWORD)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_scrypt_cost(tmp_path: Path) -> None:
    path = tmp_path / "v.json"
    code = main(["-o", str(path), "--scrypt-log-n", "16",
                 "--password-file", str(password_file(tmp_path, PASSWORD))])
    assert code == 0
    verifier = load_verifier(path)
    assert verifier.params == ScryptParams(2**16, DEFAULT_PARAMS.r, DEFAULT_PARAMS.p)
    assert matches(verifier, PASSWORD)


@pytest.mark.parametrize("room", ["", "../main", "a/b", ".hidden", "x" * 65, "caf\u00e9"])
def test_bad_room(tmp_path: Path, room: str, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    code = main(["-d", str(data), "--room", room,
                 "--password-file", str(password_file(tmp_path, PASSWORD))])
    assert code == 2
    assert "invalid room name" in capsys.readouterr().err
    assert not data.exists()


@pytest.mark.parametrize("log_n", ["10", "14", "21", "x"])
def test_bad_scrypt_cost(tmp_path: Path, log_n: str, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    code = main(["-d", str(data), "--scrypt-log-n", log_n,
                 "--password-file", str(password_file(tmp_path, PASSWORD))])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("twistchat-passwd: ")
    assert not data.exists()


def test_scrypt_cost_below_floor_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["-o", "-", "--scrypt-log-n", "10",
                 "--password-file", str(password_file(tmp_path, PASSWORD))])
    assert code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "below the minimum" in err


def test_unknown_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--no-such-option"]) == 2
    assert capsys.readouterr().err.startswith("twistchat-passwd: ")


@pytest.mark.parametrize("content", [b"", b"\n", b"\r\n"])
def test_empty_password_file(tmp_path: Path, content: bytes,
                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "password"
    path.write_bytes(content)
    data = tmp_path / "data"
    assert main(["-d", str(data), "--password-file", str(path)]) == 1
    assert capsys.readouterr().err == "twistchat-passwd: empty password\n"
    assert not data.exists()


def test_empty_password_from_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert main(["-d", str(tmp_path / "data")]) == 1
    assert "empty password" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_missing_password_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-d", str(tmp_path / "data"), "--password-file", str(tmp_path / "nope")]) == 1
    assert "cannot read --password-file" in capsys.readouterr().err


def test_password_from_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Not a terminal: the first line of standard input, without prompting.
    """
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\nnext line\n"))
    path = tmp_path / "v.json"
    assert main(["-o", str(path)]) == 0
    assert matches(load_verifier(path), PASSWORD)


def test_password_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWISTCHAT_PASSWORD", PASSWORD)
    monkeypatch.setattr("sys.stdin", io.StringIO(OTHER_PASSWORD + "\n"))
    path = tmp_path / "v.json"
    assert main(["-o", str(path)]) == 0
    assert matches(load_verifier(path), PASSWORD)


def test_password_file_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWISTCHAT_PASSWORD", OTHER_PASSWORD)
    path = tmp_path / "v.json"
    assert main(["-o", str(path), "--password-file", str(password_file(tmp_path, PASSWORD))]) == 0
    assert matches(load_verifier(path), PASSWORD)


def test_unwritable_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code = main(["-d", str(blocker), "--password-file", str(password_file(tmp_path, PASSWORD))])
    assert code == 1
    assert capsys.readouterr().err.startswith("twistchat-passwd: ")


# --- a verifier written by twistchat-passwd lets members in -------------------------


class Messages(ChatListener):
    def __init__(self) -> None:
        self.received: list[Any] = []
        self.first: defer.Deferred[Any] = defer.Deferred()

    def message_received(self, message: Any) -> None:
        self.received.append(message)
        if not self.first.called:
            self.first.callback(message)


async def serve(verifier: Verifier, certificate: Any) -> tuple[ChatServerFactory, Any]:
    factory = ChatServerFactory(Rooms([verifier]), reactor)
    endpoint = SSL4ServerEndpoint(reactor, 0, server_options(certificate), interface="127.0.0.1")
    port = await endpoint.listen(factory)
    return factory, port


async def stop(factory: ChatServerFactory, port: Any) -> None:
    await stop_server(factory, port)


@pytest_twisted.ensureDeferred
async def test_verifier_lets_members_in(tmp_path: Path, certificate: Any,
                                        known_hosts: Path) -> None:
    data = tmp_path / "data"
    assert main(["-d", str(data), "--room", "lobby",
                 "--password-file", str(password_file(tmp_path, PASSWORD))]) == 0
    verifier = load_verifier(data / "rooms" / "lobby.json")
    factory, port = await serve(verifier, certificate)
    try:
        number = port.getHost().port
        listener = Messages()
        alice = await connect(reactor, "127.0.0.1", number, "alice", PASSWORD, room="lobby",
                              listener=listener, trust=TrustOnFirstUse(known_hosts), timeout=20)
        bob = await connect(reactor, "127.0.0.1", number, "bob", PASSWORD, room="lobby",
                            trust=TrustOnFirstUse(known_hosts), timeout=20)
        assert alice.room == bob.room == "lobby"
        assert [m.name for m in bob.members] == ["alice"]
        bob.send("written with twistchat-passwd")
        message = await listener.first.addTimeout(20, reactor)
        assert (message.sender, message.text) == ("bob", "written with twistchat-passwd")

        with pytest.raises(errors.WrongPassword):
            await connect(reactor, "127.0.0.1", number, "mallory", OTHER_PASSWORD,
                          room="lobby", trust=TrustOnFirstUse(known_hosts), timeout=20)

        assert await bob.leave() is None
        assert await alice.leave() is None
    finally:
        await stop(factory, port)
