"""
``twistd socketchat`` options and the service they build, in the style of
Twisted conch's test_manhole_tap: parse options, inspect the service, never
start it (nothing listens).
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twistchat.client import TrustOnFirstUse, connect
from twistchat.crypto.kdf import content_key, derive_secrets
from twistchat.crypto.verifier import make_verifier
from twistchat.server.history import History
from twistchat.server.room import Rooms
from twistchat.server.service import CannotStart, ChatServerFactory, ChatService
from twistchat.server.tls import (
    CERT_FILE,
    KEY_FILE,
    TLSEndpoint,
    create_self_signed,
    fingerprint,
)
from twistchat.server.verifiers import load_verifier, room_path, save_verifier
from twistchat.tap import Options, makeService
from twisted.application.service import IService
from twisted.internet import defer, reactor, ssl
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import globalLogPublisher
from twisted.python import usage

from .conftest import OTHER_PASSWORD, PASSWORD, Recorder

GENERATED = re.compile(r"^    ([a-z2-9]{5}(?:-[a-z2-9]{5}){4})$", re.M)


def parse(data_dir: Path, *args: str, environ: dict[str, str] | None = None) -> Options:
    """
    Parse C{args} (with C{--data-dir data_dir}) with no environment, capturing
    what the options print.
    """
    options = Options()
    options.out = io.StringIO()
    options.err = io.StringIO()
    options.environ = {} if environ is None else environ
    options.parseOptions(["--data-dir", str(data_dir), *args])
    return options


def password_file(tmp_path: Path, password: str, name: str = "password") -> Path:
    path = tmp_path / name
    path.write_text(password + "\n", encoding="utf-8")
    return path


def matches(verifier: Any, password: str) -> bool:
    """
    Whether C{verifier} was made from C{password}.
    """
    return make_verifier(password, verifier.room, verifier.params, verifier.salt) == verifier


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def assert_no_password_text(folder: Path, password: str) -> None:
    files = files_under(folder)
    assert files
    for path in files:
        assert password.encode("utf-8") not in path.read_bytes(), path


# --- defaults and option checking ------------------------------------------------


def test_defaults() -> None:
    """
    Without options: port 7777 on every address, data in ./twistchat-data, room
    "main". (Only the parsed values are checked: postOptions is not run, so
    nothing is created in the working directory.)
    """
    options = Options()
    assert options["port"] == 7777
    assert options["interface"] == ""
    assert options["data-dir"] == "twistchat-data"
    assert options["room"] == "main"
    for name in ("password", "password-file", "verifier-file", "tls-cert", "tls-key"):
        assert options[name] is None


def test_defaults_parsed(tmp_path: Path) -> None:
    options = parse(tmp_path / "data", "--password-file", str(password_file(tmp_path, PASSWORD)))
    assert options["port"] == 7777
    assert options["interface"] == ""
    assert options.data_dir == tmp_path / "data"
    assert [v.room for v in options.verifiers] == ["main"]


def test_batch_window_default_reaches_the_rooms(tmp_path: Path) -> None:
    """
    The rooms hold a busy room's deliveries for 4 ms by default (the window
    chosen in docs/performance.md, "Adaptive batching"); 0 turns it off.
    """
    service = makeService(parse(tmp_path / "a", "--port", "0", "--password", PASSWORD))
    assert isinstance(service, ChatService)
    assert service.factory.rooms.batch_window == 0.004
    # The rooms write each member once per window: TLS need not gather writes.
    assert service.endpoint.whole_writes
    service = makeService(parse(tmp_path / "b", "--port", "0", "--password", PASSWORD,
                                "--batch-window", "0"))
    assert isinstance(service, ChatService)
    assert service.factory.rooms.batch_window == 0
    assert not service.endpoint.whole_writes


def test_port_zero(tmp_path: Path) -> None:
    options = parse(tmp_path, "--port", "0", "--password", PASSWORD)
    assert options["port"] == 0


def test_port_short_option(tmp_path: Path) -> None:
    options = parse(tmp_path, "-p", "65535", "--password", PASSWORD)
    assert options["port"] == 65535


@pytest.mark.parametrize("port", ["70000", "65536", "-1", "x", ""])
def test_bad_port(tmp_path: Path, port: str) -> None:
    with pytest.raises(usage.UsageError):
        parse(tmp_path, "--port", port, "--password", PASSWORD)


def test_tls_key_without_cert(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    with pytest.raises(usage.UsageError, match="--tls-key needs --tls-cert"):
        parse(tmp_path / "data", "--tls-key", str(key), "--password", PASSWORD)


@pytest.mark.parametrize(
    "sources",
    [
        ("password", "password-file"),
        ("password", "verifier-file"),
        ("password-file", "verifier-file"),
        ("password", "password-file", "verifier-file"),
    ],
)
def test_two_password_sources(tmp_path: Path, sources: tuple[str, ...]) -> None:
    pw_file = password_file(tmp_path, PASSWORD)
    verifier_file = tmp_path / "main.json"
    save_verifier(verifier_file, make_verifier(PASSWORD, "main"))
    values = {"password": PASSWORD, "password-file": str(pw_file),
              "verifier-file": str(verifier_file)}
    args = [a for source in sources for a in (f"--{source}", values[source])]
    with pytest.raises(usage.UsageError, match="give only one of"):
        parse(tmp_path / "data", *args)


def test_empty_password_with_password_file(tmp_path: Path) -> None:
    """
    An empty --password still counts as a password source: it does not slip
    past the one-source check and override the file.
    """
    pw_file = password_file(tmp_path, PASSWORD)
    with pytest.raises(usage.UsageError, match="give only one of"):
        parse(tmp_path / "data", "--password", "", "--password-file", str(pw_file))


def test_empty_password(tmp_path: Path) -> None:
    with pytest.raises(usage.UsageError, match="empty"):
        parse(tmp_path / "data", "--password", "")
    assert not room_path(tmp_path / "data", "main").exists()


def test_password_file_missing(tmp_path: Path) -> None:
    with pytest.raises(CannotStart, match="cannot read --password-file"):
        parse(tmp_path / "data", "--password-file", str(tmp_path / "nonexistent"))


@pytest.mark.parametrize("content", [b"", b"\n", b"\r\nsecond line\n"])
def test_password_file_empty(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "password"
    path.write_bytes(content)
    with pytest.raises(CannotStart, match="empty"):
        parse(tmp_path / "data", "--password-file", str(path))
    assert not room_path(tmp_path / "data", "main").exists()


def test_password_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_bytes(b"\xff\xfe\xfa\n")
    with pytest.raises(CannotStart, match="cannot read --password-file"):
        parse(tmp_path / "data", "--password-file", str(path))


def test_password_file_first_line(tmp_path: Path) -> None:
    """
    Only the first line is the password; its line ending is not part of it.
    """
    path = tmp_path / "password"
    path.write_bytes(PASSWORD.encode() + b"\r\nsomething else\n")
    options = parse(tmp_path / "data", "--password-file", str(path))
    [verifier] = options.verifiers
    assert matches(verifier, PASSWORD)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"[]",
        b'{"format": "twistchat-verifier"}',
        b"\xff\xfe",
    ],
)
def test_verifier_file_malformed(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "main.json"
    path.write_bytes(content)
    with pytest.raises(CannotStart, match="verifier"):
        parse(tmp_path / "data", "--verifier-file", str(path))


def test_verifier_file_bad_member(tmp_path: Path) -> None:
    """
    A verifier whose scrypt cost is below the clients' floor is refused
    (clients would refuse to log in anyway).
    """
    data = make_verifier(PASSWORD, "main").to_json()
    data["scrypt"]["n"] = 1024
    path = tmp_path / "main.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CannotStart, match="scrypt"):
        parse(tmp_path / "data", "--verifier-file", str(path))


def test_verifier_file_missing(tmp_path: Path) -> None:
    with pytest.raises(CannotStart, match="cannot read verifier file"):
        parse(tmp_path / "data", "--verifier-file", str(tmp_path / "nonexistent.json"))


def test_verifier_file(tmp_path: Path) -> None:
    verifier = make_verifier(PASSWORD, "lobby")
    path = tmp_path / "lobby.json"
    save_verifier(path, verifier)
    options = parse(tmp_path / "data", "--verifier-file", str(path))
    assert options.verifiers == [verifier]
    assert options.out.getvalue() == ""


@pytest.mark.parametrize("room", ["", "../etc", "a/b", "-x", "x" * 65, "caf\u00e9"])
def test_bad_room(tmp_path: Path, room: str) -> None:
    with pytest.raises(usage.UsageError, match="invalid room name"):
        parse(tmp_path / "data", "--room", room, "--password", PASSWORD)


def test_data_dir_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(CannotStart, match="data directory .* is not a directory"):
        parse(path, "--password", PASSWORD)


def test_corrupt_stored_verifier(tmp_path: Path) -> None:
    """
    A damaged verifier in the data directory is a start-up failure, not a
    traceback.
    """
    data = tmp_path / "data"
    (data / "rooms").mkdir(parents=True)
    (data / "rooms" / "main.json").write_text("{")
    with pytest.raises(CannotStart, match="not JSON"):
        parse(data)


@pytest.mark.parametrize("option", ["--max-members", "--message-rate", "--max-guesses-per-address",
                                    "--handshake-timeout"])
@pytest.mark.parametrize("value", ["-1", "0"])
def test_limit_must_be_positive(tmp_path: Path, option: str, value: str) -> None:
    with pytest.raises(usage.UsageError, match=f"{option} must be more than 0"):
        parse(tmp_path / "data", option, value, "--password", PASSWORD)


def test_no_free_failures(tmp_path: Path) -> None:
    options = parse(tmp_path / "data", "--free-failures", "0", "--password", PASSWORD)
    assert options.limits.free_failures == 0
    with pytest.raises(usage.UsageError, match="--free-failures must not be negative"):
        parse(tmp_path / "data", "--free-failures", "-1", "--password", PASSWORD)


def test_max_frame_floor(tmp_path: Path) -> None:
    with pytest.raises(usage.UsageError, match="--max-frame must be at least 1024 bytes"):
        parse(tmp_path / "data", "--max-frame", "1023", "--password", PASSWORD)


# --- passwords and verifiers -------------------------------------------------------


def test_generated_password(tmp_path: Path) -> None:
    """
    With no password source and an empty data directory, a password is
    generated, printed once, and only its verifier is stored; the next start
    prints nothing and reuses the verifier.
    """
    data = tmp_path / "data"
    first = parse(data)
    printed = first.out.getvalue()
    found = GENERATED.findall(printed)
    assert len(found) == 1, printed
    password = found[0]
    assert printed.count(password) == 1
    assert first.err.getvalue() == ""

    path = data / "rooms" / "main.json"
    stored = load_verifier(path)
    assert first.verifiers == [stored]
    assert stored.room == "main"
    assert matches(stored, password)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert_no_password_text(data, password)

    second = parse(data)
    assert second.out.getvalue() == ""
    assert second.err.getvalue() == ""
    assert second.verifiers == [stored]
    assert load_verifier(path) == stored


def test_generated_passwords_differ(tmp_path: Path) -> None:
    one = GENERATED.findall(parse(tmp_path / "one").out.getvalue())
    two = GENERATED.findall(parse(tmp_path / "two").out.getvalue())
    assert len(one) == len(two) == 1
    assert one != two


def test_generated_for_the_chosen_room(tmp_path: Path) -> None:
    data = tmp_path / "data"
    options = parse(data, "--room", "lobby")
    [password] = GENERATED.findall(options.out.getvalue())
    [verifier] = options.verifiers
    assert verifier.room == "lobby"
    assert matches(verifier, password)
    assert (data / "rooms" / "lobby.json").exists()
    assert not (data / "rooms" / "main.json").exists()


def test_password_file_keeps_salt(tmp_path: Path) -> None:
    """
    The same password on every start keeps the stored salt, so the room's
    content key (and with it readable history) survives restarts; a new
    password writes a new salt.
    """
    data = tmp_path / "data"
    pw_file = password_file(tmp_path, PASSWORD)
    first = parse(data, "--password-file", str(pw_file))
    [v1] = first.verifiers
    assert first.out.getvalue() == ""
    assert first.err.getvalue() == ""

    second = parse(data, "--password-file", str(pw_file))
    [v2] = second.verifiers
    assert v2 == v1
    assert load_verifier(room_path(data, "main")) == v1
    key1 = content_key(derive_secrets(PASSWORD, v1.salt, v1.params).content_secret, "main")
    key2 = content_key(derive_secrets(PASSWORD, v2.salt, v2.params).content_secret, "main")
    assert key1 == key2

    other = parse(data, "--password-file", str(password_file(tmp_path, OTHER_PASSWORD, "other")))
    [v3] = other.verifiers
    assert v3.salt != v1.salt
    assert matches(v3, OTHER_PASSWORD)
    assert not matches(v3, PASSWORD)
    assert load_verifier(room_path(data, "main")) == v3
    assert_no_password_text(data, PASSWORD)
    assert_no_password_text(data, OTHER_PASSWORD)


def test_password_for_one_room_keeps_the_others(tmp_path: Path) -> None:
    data = tmp_path / "data"
    parse(data, "--password", PASSWORD)
    lobby = parse(data, "--room", "lobby", "--password", OTHER_PASSWORD)
    assert sorted(v.room for v in lobby.verifiers) == ["lobby", "main"]
    again = parse(data)
    assert sorted(v.room for v in again.verifiers) == ["lobby", "main"]
    assert again.out.getvalue() == ""


def test_environment_password(tmp_path: Path) -> None:
    data = tmp_path / "data"
    options = parse(data, environ={"TWISTCHAT_PASSWORD": PASSWORD})
    [verifier] = options.verifiers
    assert matches(verifier, PASSWORD)
    assert options.out.getvalue() == ""
    assert options.err.getvalue() == ""
    assert load_verifier(room_path(data, "main")) == verifier
    assert_no_password_text(data, PASSWORD)


def test_empty_environment_password_is_unset(tmp_path: Path) -> None:
    options = parse(tmp_path / "data", environ={"TWISTCHAT_PASSWORD": ""})
    assert len(GENERATED.findall(options.out.getvalue())) == 1


def test_password_option_warns(tmp_path: Path) -> None:
    data = tmp_path / "data"
    options = parse(data, "--password", PASSWORD)
    [verifier] = options.verifiers
    assert matches(verifier, PASSWORD)
    warning = options.err.getvalue()
    assert "warning" in warning
    assert "--password-file" in warning
    assert PASSWORD not in warning
    assert options.out.getvalue() == ""
    assert_no_password_text(data, PASSWORD)


def test_password_option_wins_over_environment(tmp_path: Path) -> None:
    options = parse(tmp_path / "data", "--password", PASSWORD,
                    environ={"TWISTCHAT_PASSWORD": OTHER_PASSWORD})
    [verifier] = options.verifiers
    assert matches(verifier, PASSWORD)


# --- TLS certificate ---------------------------------------------------------------


def test_certificate_created_and_reused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = parse(data, "--password", PASSWORD)
    cert_path, key_path = data / CERT_FILE, data / KEY_FILE
    assert cert_path.exists()
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert isinstance(first.certificate, ssl.PrivateCertificate)
    on_disk = ssl.Certificate.loadPEM(cert_path.read_bytes())
    assert fingerprint(on_disk) == fingerprint(first.certificate)

    cert_bytes, key_bytes = cert_path.read_bytes(), key_path.read_bytes()
    second = parse(data, "--password", PASSWORD)
    assert fingerprint(second.certificate) == fingerprint(first.certificate)
    assert cert_path.read_bytes() == cert_bytes
    assert key_path.read_bytes() == key_bytes


def test_given_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    create_self_signed(cert, key)
    expected = fingerprint(ssl.Certificate.loadPEM(cert.read_bytes()))
    data = tmp_path / "data"
    options = parse(data, "--tls-cert", str(cert), "--tls-key", str(key), "--password", PASSWORD)
    assert fingerprint(options.certificate) == expected
    assert not (data / CERT_FILE).exists()
    assert not (data / KEY_FILE).exists()


def test_given_certificate_with_key_inside(tmp_path: Path) -> None:
    """
    Without --tls-key, the key is read from the --tls-cert file.
    """
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    create_self_signed(cert, key)
    both = tmp_path / "both.pem"
    both.write_bytes(cert.read_bytes() + key.read_bytes())
    options = parse(tmp_path / "data", "--tls-cert", str(both), "--password", PASSWORD)
    assert fingerprint(options.certificate) == fingerprint(
        ssl.Certificate.loadPEM(cert.read_bytes())
    )


def test_given_certificate_missing(tmp_path: Path) -> None:
    with pytest.raises(CannotStart, match="TLS certificate"):
        parse(tmp_path / "data", "--tls-cert", str(tmp_path / "nonexistent.pem"),
              "--password", PASSWORD)


def test_given_certificate_without_key(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    create_self_signed(cert, key)
    with pytest.raises(CannotStart, match="TLS certificate"):
        parse(tmp_path / "data", "--tls-cert", str(cert), "--password", PASSWORD)


def test_given_certificate_with_another_key(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    create_self_signed(cert, key)
    other_cert, other_key = tmp_path / "other.pem", tmp_path / "other.key"
    create_self_signed(other_cert, other_key)
    with pytest.raises(CannotStart, match="TLS certificate"):
        parse(tmp_path / "data", "--tls-cert", str(cert), "--tls-key", str(other_key),
              "--password", PASSWORD)


# --- the service -------------------------------------------------------------------


def test_make_service(tmp_path: Path) -> None:
    data = tmp_path / "data"
    parse(data, "--room", "lobby", "--password", OTHER_PASSWORD)
    options = parse(data, "--port", "0", "--interface", "127.0.0.1",
                    "--password", PASSWORD, "--max-members", "7")
    service = makeService(options)

    assert isinstance(service, ChatService)
    assert IService.providedBy(service)
    assert not service.running
    assert service.port is None

    factory = service.factory
    assert isinstance(factory, ChatServerFactory)
    assert isinstance(factory.rooms, Rooms)
    assert sorted(room.name for room in factory.rooms) == ["lobby", "main"]
    main = factory.rooms.get("main")
    assert main is not None
    assert main.verifier == load_verifier(room_path(data, "main"))
    assert matches(main.verifier, PASSWORD)
    assert factory.rooms.get("nonexistent") is None
    assert factory.limits.max_members == 7
    assert factory.connections == set()

    endpoint = service.endpoint
    assert isinstance(endpoint, TLSEndpoint)
    assert isinstance(endpoint.plain, TCP4ServerEndpoint)
    assert endpoint.plain._port == 0
    assert endpoint.plain._interface == "127.0.0.1"
    assert fingerprint(options.certificate) in service.description
    assert "lobby, main" in service.description


def test_make_service_default_address(tmp_path: Path) -> None:
    service = makeService(parse(tmp_path / "data", "--password", PASSWORD))
    assert service.endpoint.plain._port == 7777
    assert service.endpoint.plain._interface == ""
    assert not service.running
    assert service.port is None


# --- where to listen: --listen endpoint descriptions ---------------------------------


def test_listen_is_empty_by_default(tmp_path: Path) -> None:
    options = parse(tmp_path / "data", "--password", PASSWORD)
    assert options["listen"] == []
    assert options.endpoints == []


def test_listen_descriptions(tmp_path: Path) -> None:
    """
    Each --listen is parsed with serverFromString, kept in the order given,
    and wrapped in the server's TLS by makeService.
    """
    first = "tcp:0:interface=127.0.0.1"
    second = f"unix:{tmp_path / 'socket'}"
    options = parse(tmp_path / "data", "--password", PASSWORD,
                    "--listen", first, "--listen", second)
    assert options["listen"] == [first, second]
    assert [d for d, _ in options.endpoints] == [first, second]
    assert isinstance(options.endpoints[0][1], TCP4ServerEndpoint)
    service = makeService(options)
    assert [d for d, _ in service.endpoints] == [first, second]
    # Not the plain endpoints: makeService put TLS around them.
    for (_, plain), (_, served) in zip(options.endpoints, service.endpoints):
        assert served is not plain
    assert service.port is None and service.ports == []


@pytest.mark.parametrize("description", [
    "ssl:7777", "SSL:7777:privateKey=server.key", "tls:/etc/certs", " ssl:7777",
    "haproxy:ssl:7777", "haproxy:tls:/etc/certs",
])
def test_listen_refuses_tls(tmp_path: Path, description: str) -> None:
    with pytest.raises(usage.UsageError, match=r"twistd adds its own TLS .*the login is "
                       r"bound to that TLS channel.*plain transport"):
        parse(tmp_path / "data", "--password", PASSWORD, "--listen", description)


@pytest.mark.parametrize("description", [
    "tcp:x", "tcp:7777:nonsense=1", "nosuch:7777", "", "tcp", "systemd:domain=INET",
])
def test_listen_bad_description(tmp_path: Path, description: str) -> None:
    with pytest.raises(usage.UsageError, match=f"--listen {re.escape(description)}: "
                       "not an endpoint description twistd can use"):
        parse(tmp_path / "data", "--password", PASSWORD, "--listen", description)


@pytest.mark.parametrize("other", [["--port", "7778"], ["--interface", "127.0.0.1"],
                                   ["-p", "0"]])
def test_listen_or_port_not_both(tmp_path: Path, other: list[str]) -> None:
    with pytest.raises(usage.UsageError, match="either --listen or --port/--interface"):
        parse(tmp_path / "data", "--password", PASSWORD,
              "--listen", "tcp:0:interface=127.0.0.1", *other)


def test_listen_systemd_socket_not_passed(tmp_path: Path) -> None:
    """
    A systemd socket this process did not inherit is a start-up failure (the
    description itself is fine).
    """
    with pytest.raises(CannotStart, match="cannot listen on systemd:domain=INET:index=0: "
                       "no such socket was passed to this process"):
        parse(tmp_path / "data", "--password", PASSWORD,
              "--listen", "systemd:domain=INET:index=0")


@pytest_twisted.ensureDeferred
async def test_listen_serves_tls_and_logs_in(tmp_path: Path) -> None:
    """
    A --listen endpoint serves the server's TLS (the client checks the
    certificate's fingerprint and binds the login to the TLS channel): a real
    client logs in through it, and the "listening" line names each port.
    """
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_format", "").startswith("twistchat listening"):
            lines.append(f"{event['port']} {event['host']}")

    options = parse(tmp_path / "data", "--password", PASSWORD, "--history", "0",
                    "--listen", "tcp:0:interface=127.0.0.1",
                    "--listen", "tcp:0:interface=127.0.0.1")
    service = makeService(options)
    globalLogPublisher.addObserver(observe)
    try:
        service.startService()
        assert len(service.ports) == 2
        numbers = [port.getHost().port for port in service.ports]
        session = await connect(reactor, "127.0.0.1", numbers[1], "alice", PASSWORD,
                                listener=Recorder(),
                                trust=TrustOnFirstUse(tmp_path / "known_hosts"))
        assert session.connected
        known = (tmp_path / "known_hosts").read_text()
        assert fingerprint(options.certificate) in known
        assert sorted(lines) == sorted(f"{n} 127.0.0.1" for n in numbers)
    finally:
        globalLogPublisher.removeObserver(observe)
        await service.stopService()
    assert service.ports == []


class Listening:
    """
    An endpoint whose listen() returns a Deferred the test fires.
    """

    def __init__(self) -> None:
        self.listening: defer.Deferred[IListeningPort] = defer.Deferred()

    def listen(self, factory: Any) -> defer.Deferred[IListeningPort]:
        return self.listening


def bare_service(tmp_path: Path, endpoints: Any) -> ChatService:
    factory = ChatServerFactory(Rooms([make_verifier(PASSWORD, "main")]), reactor)
    return ChatService(endpoints, factory, err=io.StringIO())


@pytest_twisted.ensureDeferred
async def test_listen_failure_at_start_closes_the_others(tmp_path: Path) -> None:
    """
    When one endpoint fails at once, startService raises CannotStart (one
    line, naming the place) and the endpoints that listened are closed.
    """
    taken = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        ChatServerFactory(Rooms([]), reactor))
    try:
        number = taken.getHost().port
        service = bare_service(tmp_path, [
            ("tcp:0:interface=127.0.0.1", TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")),
            ("taken", TCP4ServerEndpoint(reactor, number, interface="127.0.0.1")),
        ])
        with pytest.raises(CannotStart) as raised:
            service.startService()
        line = f"twistd socketchat: cannot listen on 127.0.0.1:{number}: Address already in use"
        assert raised.value.line == line
        assert service.err.getvalue() == line + "\n"  # type: ignore[attr-defined]
        assert service.ports == [] and not service.running
    finally:
        await defer.maybeDeferred(taken.stopListening)


@pytest.fixture
def errors_logged() -> Iterator[list[dict[str, Any]]]:
    errors: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event["log_level"].name == "error":
            errors.append(event)

    globalLogPublisher.addObserver(observe)
    yield errors
    globalLogPublisher.removeObserver(observe)


def test_listen_failure_later_is_logged_once(
    tmp_path: Path, errors_logged: list[dict[str, Any]]
) -> None:
    """
    An endpoint that fails after startService returned is logged as an error
    (one line, no traceback) instead of being swallowed; the service runs on.
    """
    slow = Listening()
    service = bare_service(tmp_path, slow)
    service.startService()
    try:
        assert errors_logged == [] and service.running
        slow.listening.errback(CannotListenError("", 80, OSError(99, "no onion service")))
        assert [e["line"] for e in errors_logged] == [
            "twistd socketchat: cannot listen on port 80: no onion service"
        ]
        assert "log_failure" not in errors_logged[0]
    finally:
        service.stopService()


def test_listen_still_pending_is_cancelled_on_stop(
    tmp_path: Path, errors_logged: list[dict[str, Any]]
) -> None:
    slow = Listening()
    service = bare_service(tmp_path, slow)
    service.startService()
    service.stopService()
    assert slow.listening.called, "cancelled"
    assert errors_logged == []


def test_data_dir_files_are_private(tmp_path: Path) -> None:
    """
    Of what the server writes, the keys and the verifiers are owner-only.
    """
    data = tmp_path / "data"
    parse(data)
    for path in files_under(data):
        if path.suffix in (".key", ".json"):
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
    assert sorted(p.relative_to(data).as_posix() for p in files_under(data)) == [
        "decoy.key", "rooms/main.json", "server.key", "server.pem",
    ]
    # No leftover temporary file from the atomic write.
    assert not [p for p in (data / "rooms").iterdir() if p.name.startswith(".")]
    assert os.listdir(data / "rooms") == ["main.json"]


# --- history and room reloading -------------------------------------------------------


def test_history_defaults(tmp_path: Path) -> None:
    options = parse(tmp_path / "data", "--password", PASSWORD)
    assert options["history"] == 50
    assert options["history-days"] == 0
    service = makeService(options)
    history = service.factory.history
    assert isinstance(history, History)
    assert history.limit == 50 and history.keep_days == 0
    assert history.max_bytes == service.factory.limits.max_send_queue // 2
    assert history.store.path == tmp_path / "data" / "history.sqlite3"
    # Building the service opens nothing: the file appears when it starts.
    assert not history.store.path.exists()
    assert service.reloader is not None
    assert service.reloader.folder == tmp_path / "data" / "rooms"


def test_history_options(tmp_path: Path) -> None:
    options = parse(tmp_path / "data", "--password", PASSWORD,
                    "--history", "7", "--history-days", "1.5")
    history = makeService(options).factory.history
    assert history is not None
    assert history.limit == 7 and history.keep_days == 1.5


def test_history_off(tmp_path: Path) -> None:
    options = parse(tmp_path / "data", "--password", PASSWORD, "--history", "0")
    assert makeService(options).factory.history is None


@pytest.mark.parametrize("option", ["--history", "--history-days"])
def test_history_negative(tmp_path: Path, option: str) -> None:
    with pytest.raises(usage.UsageError, match=f"{option} must not be negative"):
        parse(tmp_path / "data", "--password", PASSWORD, option, "-1")


@pytest.mark.parametrize("value", ["many", "1.5"])
def test_history_not_a_count(tmp_path: Path, value: str) -> None:
    with pytest.raises(usage.UsageError, match=f"whole number of messages, not '{value}'"):
        parse(tmp_path / "data", "--password", PASSWORD, "--history", value)


def test_verifier_file_rooms_not_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "room.json"
    save_verifier(path, make_verifier(PASSWORD, "solo"))
    service = makeService(parse(tmp_path / "data", "--verifier-file", str(path)))
    assert service.reloader is None


def test_unknown_rooms_keep_their_salt_across_restarts(tmp_path: Path) -> None:
    """
    A known room's salt never changes; an unknown room's must not either, or a
    prober could tell them apart by asking before and after a restart.
    """
    data = tmp_path / "data"
    first = makeService(parse(data, "--password", PASSWORD)).factory
    again = makeService(parse(data)).factory
    assert first.decoy("secret-room")[0] == again.decoy("secret-room")[0]
    assert first.decoy("secret-room")[0] != first.decoy("other-room")[0]
    key = data / "decoy.key"
    assert key.stat().st_mode & 0o777 == 0o600
    other = makeService(parse(tmp_path / "elsewhere", "--password", PASSWORD)).factory
    assert other.decoy("secret-room")[0] != first.decoy("secret-room")[0]


def test_damaged_decoy_secret_cannot_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "decoy.key").write_bytes(b"short")
    with pytest.raises(CannotStart, match="is not a decoy secret"):
        parse(data, "--password", PASSWORD)


def test_history_is_capped(tmp_path: Path) -> None:
    assert parse(tmp_path / "data", "--password", PASSWORD, "--history", "1000")["history"] == 1000
    with pytest.raises(usage.UsageError, match="--history must be at most 1000"):
        parse(tmp_path / "data", "--password", PASSWORD, "--history", "1001")


@pytest.mark.parametrize("args, message", [
    (["--metrics", "nonsense:1"],
     "--metrics nonsense:1: not an endpoint description twistd can use ("),
    (["--web", "nonsense:1"],
     "--web nonsense:1: not a port or an endpoint description twistd can use ("),
    (["--listen", "tcp:7000", "--metrics", "tcp:port=7000"],
     "--metrics tcp:port=7000: that is the chat port"),
    (["--listen", "tcp:7000", "--web", "tcp:7000"],
     "--web tcp:7000: that port is taken by the chat or metrics port"),
    (["--metrics", "tcp:9108", "--web", "9108"],
     "--web 9108: that port is taken by the chat or metrics port"),
])
def test_metrics_and_web_endpoint_errors(tmp_path: Path, args: list[str],
                                         message: str) -> None:
    """
    --metrics and --web name the option as given when their description does
    not parse, or when it takes the chat port (or, for --web, the metrics port).
    """
    with pytest.raises(usage.UsageError) as raised:
        parse(tmp_path / "data", "--password", PASSWORD, *args)
    assert str(raised.value).startswith(message), str(raised.value)
