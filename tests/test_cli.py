"""
The ``twistchat`` command: its options, where the password comes from, how
failures are described, and the real client as a process against a relay
running in the test's reactor.
"""

from __future__ import annotations

import errno
import io
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twistchat import errors, wire
from twistchat.client import TrustOnFirstUse, connect
from twistchat.client.api import ChatListener, ChatMessage, Member, Reconnect
from twistchat.client.cli import Options, describe, read_password
from twisted.internet import defer, protocol, reactor
from twisted.internet.error import (
    ConnectionRefusedError,
    DNSLookupError,
    TCPTimedOutError,
    getConnectError,
)
from twisted.python import usage
from twisted.python.failure import Failure

from . import conftest
from .conftest import OTHER_PASSWORD, PASSWORD

ROOT = Path(__file__).resolve().parent.parent
#: Upper bound for one client process (it normally takes about a second).
PROCESS_TIMEOUT = 60


@pytest.fixture(autouse=True)
def no_password_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TWISTCHAT_PASSWORD", raising=False)


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


# --- options -----------------------------------------------------------------------


def test_three_arguments() -> None:
    options = parse("chat.example.org", "7777", "alice")
    assert options["host"] == "chat.example.org"
    assert options["port"] == 7777
    assert options["name"] == "alice"
    assert options["password"] is None
    assert options["room"] == "main"
    assert options["password-file"] is None
    assert options["known-hosts"] is None
    assert options["ca"] is None
    assert options["timeout"] == 30.0


def test_four_arguments() -> None:
    options = parse("127.0.0.1", "1", "sesame", "bob")
    assert (options["host"], options["port"], options["password"], options["name"]) == (
        "127.0.0.1", 1, "sesame", "bob",
    )


def test_options() -> None:
    options = parse("--room", "lobby", "--password-file", "pw", "--known-hosts", "kh",
                    "--ca", "system", "--timeout", "2.5", "h", "65535", "carol")
    assert options["room"] == "lobby"
    assert options["password-file"] == "pw"
    assert options["known-hosts"] == "kh"
    assert options["ca"] == "system"
    assert options["timeout"] == 2.5
    assert options["port"] == 65535


@pytest.mark.parametrize("args", [(), ("h",), ("h", "1"), ("h", "1", "pw", "name", "extra")])
def test_wrong_number_of_arguments(args: tuple[str, ...]) -> None:
    with pytest.raises(usage.UsageError, match="expected HOST PORT USERNAME"):
        parse(*args)


@pytest.mark.parametrize("port", ["x", "0", "65536", "70000", "7777.0", ""])
def test_bad_port(port: str) -> None:
    with pytest.raises(usage.UsageError, match="PORT"):
        parse("127.0.0.1", port, "alice")


def test_bad_timeout() -> None:
    with pytest.raises(usage.UsageError):
        parse("--timeout", "soon", "127.0.0.1", "7777", "alice")


# --- read_password -----------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def password_file(tmp_path: Path, password: str) -> Path:
    path = tmp_path / "password"
    path.write_text(password + "\n", encoding="utf-8")
    return path


def test_password_file_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWISTCHAT_PASSWORD", "from the environment")
    options = parse("--password-file", str(password_file(tmp_path, PASSWORD)),
                    "h", "1", "from the command line", "alice")
    err = io.StringIO()
    assert read_password(options, FakeTerminal(), err) == PASSWORD
    assert err.getvalue() == ""


def test_password_file_first_line(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_bytes(PASSWORD.encode() + b"\r\nsecond\n")
    options = parse("--password-file", str(path), "h", "1", "alice")
    assert read_password(options, io.StringIO(), io.StringIO()) == PASSWORD


def test_password_file_missing(tmp_path: Path) -> None:
    options = parse("--password-file", str(tmp_path / "nope"), "h", "1", "alice")
    with pytest.raises(usage.UsageError, match="cannot read --password-file"):
        read_password(options, io.StringIO(), io.StringIO())


def test_password_file_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    An empty password file is an error, not a reason to fall back to the
    environment.
    """
    monkeypatch.setenv("TWISTCHAT_PASSWORD", PASSWORD)
    path = tmp_path / "password"
    path.write_text("\n")
    options = parse("--password-file", str(path), "h", "1", "alice")
    with pytest.raises(usage.UsageError, match="empty"):
        read_password(options, io.StringIO(), io.StringIO())


def test_environment_second(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWISTCHAT_PASSWORD", PASSWORD)
    options = parse("h", "1", "from the command line", "alice")
    err = io.StringIO()
    assert read_password(options, FakeTerminal(), err) == PASSWORD
    assert err.getvalue() == ""


def test_empty_environment_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWISTCHAT_PASSWORD", "")
    options = parse("h", "1", PASSWORD, "alice")
    assert read_password(options, io.StringIO(), io.StringIO()) == PASSWORD


def test_command_line_third_warns() -> None:
    options = parse("h", "1", PASSWORD, "alice")
    err = io.StringIO()
    assert read_password(options, FakeTerminal(), err) == PASSWORD
    warning = err.getvalue()
    assert "warning" in warning
    assert "--password-file" in warning and "TWISTCHAT_PASSWORD" in warning
    assert PASSWORD not in warning


def test_prompt_last(monkeypatch: pytest.MonkeyPatch) -> None:
    prompts: list[str] = []

    def getpass(prompt: str) -> str:
        prompts.append(prompt)
        return PASSWORD

    monkeypatch.setattr("getpass.getpass", getpass)
    options = parse("h", "1", "alice")
    assert read_password(options, FakeTerminal(), io.StringIO()) == PASSWORD
    assert len(prompts) == 1


def test_prompt_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("getpass.getpass", lambda prompt: "")
    options = parse("h", "1", "alice")
    with pytest.raises(usage.UsageError, match="no password"):
        read_password(options, FakeTerminal(), io.StringIO())


def test_no_password_without_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    stdin is not a terminal: no prompt (the input is the messages), an error.
    """
    def getpass(prompt: str) -> str:
        raise AssertionError("prompted without a terminal")

    monkeypatch.setattr("getpass.getpass", getpass)
    options = parse("h", "1", "alice")
    stdin = io.StringIO(PASSWORD + "\n")
    with pytest.raises(usage.UsageError, match="no password"):
        read_password(options, stdin, io.StringIO())
    assert stdin.tell() == 0


# --- describe ----------------------------------------------------------------------


def test_describe_twistchat_error() -> None:
    assert describe(Failure(errors.WrongPassword())) == "wrong password"
    assert describe(Failure(errors.NameTaken())) == "name already taken in this room"
    error = errors.Timeout("no answer from the server within 5 seconds")
    assert describe(Failure(error)) == "no answer from the server within 5 seconds"
    changed = errors.FingerprintChanged("the certificate of h:1 has CHANGED")
    assert describe(Failure(changed)) == "the certificate of h:1 has CHANGED"


def test_describe_connection_refused() -> None:
    assert "refused" in describe(Failure(ConnectionRefusedError()))


def test_describe_connection_refused_by_the_os() -> None:
    """
    As Twisted reports a refused connect(): the errno in osError, the OS's text
    as the message. The text is shown, not the number.
    """
    error = getConnectError((errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED)))
    assert isinstance(error, ConnectionRefusedError)
    text = describe(Failure(error))
    assert text == os.strerror(errno.ECONNREFUSED)
    assert str(errno.ECONNREFUSED) not in text


def test_describe_connect_timeout() -> None:
    assert "timed out" in describe(Failure(TCPTimedOutError())).lower()


def test_describe_dns() -> None:
    failure = Failure(DNSLookupError("no results for hostname lookup: nonexistent.invalid"))
    assert describe(failure) == "host not found"


def test_describe_cancelled() -> None:
    assert describe(Failure(defer.CancelledError())) == "timed out"


def test_describe_other() -> None:
    assert describe(Failure(ValueError("something odd"))) == "something odd"


# --- the client as a process -------------------------------------------------------


class Run(protocol.ProcessProtocol):
    """
    Feed a process its standard input and close it, collect its output, and
    kill it if it runs longer than C{timeout}.
    """

    def __init__(self, stdin: bytes, timeout: float) -> None:
        self.stdin = stdin
        self.out = bytearray()
        self.err = bytearray()
        self.ended: defer.Deferred[Run] = defer.Deferred()
        self.code: int | None = None
        self.signal: int | None = None
        self.timed_out = False
        self._timer = reactor.callLater(timeout, self._kill)

    def _kill(self) -> None:
        self.timed_out = True
        self.transport.signalProcess("KILL")

    def connectionMade(self) -> None:
        if self.stdin:
            self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        if self._timer.active():
            self._timer.cancel()
        self.code = reason.value.exitCode
        self.signal = reason.value.signal
        self.ended.callback(self)

    @property
    def stdout(self) -> str:
        return self.out.decode("utf-8")

    @property
    def stderr(self) -> str:
        return self.err.decode("utf-8")

    def __repr__(self) -> str:
        return (f"<exit {self.code} signal {self.signal} timed out {self.timed_out}\n"
                f"stdout:\n{self.stdout}\nstderr:\n{self.stderr}>")


def client_env(home: Path, password: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWISTCHAT")}
    env.update(
        XDG_CONFIG_HOME=str(home / "config"),
        PYTHONIOENCODING="utf-8",
        PYTHONUNBUFFERED="1",
    )
    if password is not None:
        env["TWISTCHAT_PASSWORD"] = password
    return env


def run_client(home: Path, *args: str, password: str | None = None,
               stdin: bytes = b"") -> defer.Deferred[Run]:
    """
    Run ``python -m twistchat.client ARGS`` from the source tree without
    blocking the reactor (the relay under test runs in it).
    """
    run = Run(stdin, PROCESS_TIMEOUT)
    reactor.spawnProcess(
        run, sys.executable, [sys.executable, "-m", "twistchat.client", *args],
        env=client_env(home, password), path=str(ROOT),
    )
    return run.ended


@pytest.fixture
def closed_port() -> Iterator[int]:
    """
    A loopback port that is bound but not listening: connecting is refused.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


class Recorder(conftest.Recorder):
    """
    The shared recorder, noting presence by name only.
    """

    def member_joined(self, member: Member) -> None:
        self._add(("joined", member.name))

    def member_left(self, member: Member) -> None:
        self._add(("left", member.name))


@pytest_twisted.ensureDeferred
async def test_joins_and_leaves_at_end_of_input(server: Any, tmp_path: Path) -> None:
    run = await run_client(tmp_path, "127.0.0.1", str(server.port), "carol", password=PASSWORD)
    assert run.code == 0, run
    out = run.stdout
    assert "Joining room 'main' on 127.0.0.1:" in out
    assert "connected — you can start sending messages" in out
    assert "* The room is empty." in out
    assert out.rstrip("\n").endswith("Left the room.")
    assert "First connection to this server" in out
    assert run.stderr == ""
    assert PASSWORD not in out
    known_hosts = tmp_path / "config" / "twistchat" / "known_hosts"
    assert known_hosts.read_text().startswith(f"127.0.0.1:{server.port} ")

    # The fingerprint is now pinned: no first-use notice the second time.
    again = await run_client(tmp_path, "127.0.0.1", str(server.port), "carol", password=PASSWORD)
    assert again.code == 0, again
    assert "First connection" not in again.stdout
    assert "Left the room." in again.stdout


@pytest_twisted.ensureDeferred
async def test_password_on_command_line(server: Any, tmp_path: Path) -> None:
    run = await run_client(tmp_path, "127.0.0.1", str(server.port), PASSWORD, "carol")
    assert run.code == 0, run
    assert "Left the room." in run.stdout
    assert "warning" in run.stderr
    assert PASSWORD not in run.stderr


@pytest_twisted.ensureDeferred
async def test_password_file(server: Any, tmp_path: Path) -> None:
    run = await run_client(tmp_path, "--password-file", str(password_file(tmp_path, PASSWORD)),
                           "127.0.0.1", str(server.port), "carol", password=OTHER_PASSWORD)
    assert run.code == 0, run
    assert "Left the room." in run.stdout


@pytest_twisted.ensureDeferred
async def test_wrong_password(server: Any, tmp_path: Path) -> None:
    run = await run_client(tmp_path, "127.0.0.1", str(server.port), "carol",
                           password=OTHER_PASSWORD)
    assert run.code == 1, run
    assert "Unable to connect: wrong password" in run.stderr
    assert "Left the room." not in run.stdout
    assert "Traceback" not in run.stderr


@pytest_twisted.ensureDeferred
async def test_unknown_room(server: Any, tmp_path: Path) -> None:
    """
    An unknown room fails exactly like a wrong password.
    """
    run = await run_client(tmp_path, "--room", "nonexistent", "127.0.0.1", str(server.port),
                           "carol", password=PASSWORD)
    assert run.code == 1, run
    assert "Unable to connect: wrong password" in run.stderr


@pytest_twisted.ensureDeferred
async def test_connection_refused(closed_port: int, tmp_path: Path) -> None:
    run = await run_client(tmp_path, "127.0.0.1", str(closed_port), "carol", password=PASSWORD)
    assert run.code == 1, run
    assert "Unable to connect:" in run.stderr
    assert "refused" in run.stderr
    assert f"Unable to connect: {errno.ECONNREFUSED}\n" not in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("127.0.0.1",),
        ("127.0.0.1", "x", "carol"),
        ("127.0.0.1", "0", "carol"),
        ("127.0.0.1", "7777", "pw", "carol", "extra"),
        ("--no-such-option", "127.0.0.1", "7777", "carol"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_arguments(tmp_path: Path, args: tuple[str, ...]) -> None:
    run = await run_client(tmp_path, *args, password=PASSWORD)
    assert run.code == 2, run
    assert run.stderr.startswith("twistchat: ")
    assert "Traceback" not in run.stderr
    assert run.stdout == ""


@pytest_twisted.ensureDeferred
async def test_no_password_source(tmp_path: Path, closed_port: int) -> None:
    """
    No password anywhere and stdin is a pipe: a usage error before connecting.
    """
    run = await run_client(tmp_path, "127.0.0.1", str(closed_port), "carol")
    assert run.code == 2, run
    assert "no password" in run.stderr
    assert "Unable to connect" not in run.stderr


@pytest_twisted.ensureDeferred
async def test_piped_message_reaches_members(server: Any, tmp_path: Path,
                                             known_hosts: Path) -> None:
    listener = Recorder()
    alice = await connect(reactor, "127.0.0.1", server.port, "alice", PASSWORD,
                          listener=listener, trust=TrustOnFirstUse(known_hosts), timeout=20)
    try:
        ended = run_client(tmp_path, "127.0.0.1", str(server.port), "carol", password=PASSWORD,
                           stdin=b"hello from a pipe\n")
        message = await listener.wait_for(lambda e: isinstance(e, ChatMessage))
        assert message == ChatMessage(sender="carol", text="hello from a pipe")
        run = await ended
        assert run.code == 0, run
        assert "* In the room: alice (127.0.0.1" in run.stdout
        assert "Left the room." in run.stdout
        assert "hello from a pipe" not in run.stdout
        await listener.wait_for(lambda e: e == ("left", "carol"))
        assert [e for e in listener.events if isinstance(e, ChatMessage)] == [message]
    finally:
        await alice.leave()


@pytest_twisted.ensureDeferred
async def test_commands_from_a_pipe(server: Any, tmp_path: Path, known_hosts: Path) -> None:
    """
    /who and /help work from piped input; /quit leaves before the lines after it.
    """
    listener = Recorder()
    alice = await connect(reactor, "127.0.0.1", server.port, "alice", PASSWORD,
                          listener=listener, trust=TrustOnFirstUse(known_hosts), timeout=20)
    try:
        run = await run_client(
            tmp_path, "127.0.0.1", str(server.port), "carol", password=PASSWORD,
            stdin=b"first\n/help\n/quit\nnot sent\n",
        )
        assert run.code == 0, run
        assert "/quit          leave the room" in run.stdout
        assert "Left the room." in run.stdout
        await listener.wait_for(lambda e: e == ("left", "carol"))
        texts = [e.text for e in listener.events if isinstance(e, ChatMessage)]
        assert texts == ["first"]
    finally:
        await alice.leave()


# --- reconnect options -------------------------------------------------------------


def test_reconnect_options() -> None:
    options = parse("h", "1", "alice")
    assert options["reconnect"] == 0
    assert options.reconnect_policy() is None
    options = parse("--reconnect", "h", "1", "alice")
    policy = options.reconnect_policy()
    assert policy is not None
    assert (policy.initial_delay, policy.max_delay, policy.max_attempts) == (1.0, 60.0, None)
    options = parse("--reconnect", "--reconnect-attempts", "5", "--reconnect-max-delay", "10",
                    "h", "1", "alice")
    policy = options.reconnect_policy()
    assert policy is not None and (policy.max_delay, policy.max_attempts) == (10.0, 5)


@pytest.mark.parametrize("args, message", [
    (("--reconnect-attempts", "-1"), "--reconnect-attempts must not be negative"),
    (("--reconnect-max-delay", "0.5"), "--reconnect-max-delay must be at least 1 second"),
    (("--timeout", "0"), "--timeout must be positive"),
])
def test_bad_reconnect_options(args: tuple[str, ...], message: str) -> None:
    with pytest.raises(usage.UsageError, match=message):
        parse(*args, "h", "1", "alice")


def test_console_lines_while_reconnecting() -> None:
    """
    What the terminal shows across a reconnect, on a Clock.
    """
    from twistchat.client.ui import ChatConsole

    from .test_client_reconnect import (
        NO_JITTER,
        FakeHandler,
        FakeProtocol,
        drop,
        session_on_clock,
        welcome,
    )

    lines: list[str] = []
    console = ChatConsole(lines.append)
    session, clock, connector, _, first = session_on_clock(NO_JITTER, "bob")
    session._listener = console
    console.joined(session)
    lines.clear()
    drop(session, first, errors.ServerShutdown("the server is shutting down"))
    console.line_typed("are you there?")
    console.line_typed("/who")
    clock.advance(1)
    connector.attempts[0].errback(Failure(ConnectionRefusedError()))
    clock.advance(2)
    second = FakeProtocol()
    connector.attempts[1].callback((second, welcome("carol"), FakeHandler()))
    refused = describe(Failure(ConnectionRefusedError()))
    assert lines == [
        "* Connection lost: the server is shutting down. Reconnecting in 1.0 s (attempt 1)...",
        "* Not connected: queued, to be sent after reconnecting (1 waiting).",
        "! Not connected: reconnecting",
        f"* Reconnect attempt 1 failed: {refused}. Retrying in 2.0 s (attempt 2)...",
        "* Reconnected: back in room 'main'; sending 1 queued message(s).",
        "* carol (127.0.0.1:2000) entered the room",
        "* bob (127.0.0.1:2000) left the room",
    ]
    assert second.sent == ["are you there?"]
    console.leave()
    # Leaving waits for the server to acknowledge what was sent.
    assert not second.transport.closing
    session._event(wire.Message("ack", {"sid": second.sid, "n": 1, "seq": 9}))
    assert second.transport.closing


# --- replayed history in the stdio client ----------------------------------------------------


def test_console_says_when_the_connection_keeps_dropping() -> None:
    """
    The long wait of a flapping connection is explained; an ordinary outage's
    first wait is not.
    """
    from twistchat.client.api import STABLE_AFTER
    from twistchat.client.ui import ChatConsole

    from .test_client_reconnect import (
        NO_JITTER,
        FakeHandler,
        FakeProtocol,
        drop,
        session_on_clock,
        welcome,
    )

    lines: list[str] = []
    console = ChatConsole(lines.append)
    session, clock, connector, _, protocol = session_on_clock(NO_JITTER)
    session._listener = console
    console.joined(session)
    for flaps in range(3):
        drop(session, protocol, None)
        clock.advance(2.0 ** flaps)
        protocol = FakeProtocol()
        connector.attempts[-1].callback((protocol, welcome(), FakeHandler()))
        clock.advance(STABLE_AFTER / 2)
    lines.clear()
    drop(session, protocol, None)
    clock.advance(8)
    connector.attempts[-1].errback(Failure(ConnectionRefusedError()))
    refused = describe(Failure(ConnectionRefusedError()))
    assert lines == [
        "* Connection lost: the server closed the connection. "
        "Reconnecting in 8.0 s (attempt 1; the connection keeps dropping)...",
        f"* Reconnect attempt 1 failed: {refused}. "
        "Retrying in 16.0 s (attempt 2; the connection keeps dropping)...",
    ]
    clock.advance(16)
    connector.attempts[-1].callback((FakeProtocol(), welcome(), FakeHandler()))
    clock.advance(STABLE_AFTER * 10)
    lines.clear()
    drop(session, session._protocol, None)  # type: ignore[arg-type]
    assert lines == ["* Connection lost: the server closed the connection. "
                     "Reconnecting in 1.0 s (attempt 1)..."]
    console.leave()


def test_a_rate_notice_is_reported_as_not_delivered() -> None:
    """
    The server's rate notice means a message was not relayed: the console
    reports it where undelivered lines go (stderr when piped) and counts it,
    which makes a piped client's exit status 3. A listener that does not
    handle it gets the notice as before.
    """
    from twistchat.client.ui import ChatConsole

    from .test_client_reconnect import NO_JITTER, session_on_clock

    notice = wire.Message("notice", {
        "code": "rate", "text": "too fast: messages are not relayed above 10 per second"})
    lines: list[str] = []
    warnings: list[str] = []
    console = ChatConsole(lines.append)
    console.warn = warnings.append
    session, clock, connector, events, first = session_on_clock(NO_JITTER, "bob")
    session._listener = console
    console.joined(session)
    lines.clear()
    session._event(notice)
    assert warnings == [
        "! Not sent: refused by the server: too fast: messages are not relayed above "
        "10 per second"]
    assert lines == [] and console.undelivered == 1
    session._event(wire.Message("notice", {"code": "other", "text": "hello"}))
    assert lines == ["! Server: hello"] and console.undelivered == 1

    class Notices(ChatListener):
        def __init__(self) -> None:
            self.notices: list[str] = []

        def notice(self, text: str) -> None:
            self.notices.append(text)

    plain = Notices()
    session._listener = plain
    session._event(notice)
    assert plain.notices == [notice["text"]]


def test_lines_the_client_refuses_are_counted_and_reported() -> None:
    from twistchat.client.ui import ChatConsole, LineInput

    from .test_client_reconnect import drop, session_on_clock

    lines: list[str] = []
    warnings: list[str] = []
    console = ChatConsole(lines.append)
    console.warn = warnings.append
    session, clock, connector, events, first = session_on_clock(
        Reconnect(max_queued=1, jitter=lambda: 0.0), "bob")
    session._listener = console
    console.joined(session)
    console.line_typed("x" * (session.max_text + 1))
    LineInput(console).lineLengthExceeded(b"y" * 10)
    drop(session, first, None)
    console.line_typed("queued")
    console.line_typed("one too many")
    assert warnings == [
        f"! Not sent: message longer than {session.max_text} bytes",
        "! Not sent: line too long",
        "! Not sent: not connected, and 1 messages already wait to be sent",
    ]
    assert console.undelivered == 3
    console.leave()
    assert session.unsent == 1
    console.line_typed("after leaving: ignored")
    assert console.undelivered == 3


def test_console_shows_history_then_live() -> None:
    import time as _time

    from twistchat.client.ui import UNREADABLE, ChatConsole

    lines: list[str] = []
    console = ChatConsole(lines.append)
    now = _time.time()
    yesterday = now - 86400
    console.message_received(ChatMessage("alice", "old news", now, True))
    console.history_unreadable(ChatMessage("bob", "", yesterday, True))
    console.message_received(ChatMessage("alice", "older \x1b[2J", now, True))
    console.history_end()
    console.message_received(ChatMessage("bob", "live one"))
    console.history_end()  # no second marker
    hhmm = _time.strftime("%H:%M", _time.localtime(now))
    day = _time.strftime("%Y-%m-%d %H:%M", _time.localtime(yesterday))
    assert lines == [
        "--- history ---",
        f"[{hhmm}] [ alice: ] old news",
        f"[{day}] [ bob: ] {UNREADABLE}",
        f"[{hhmm}] [ alice: ] older \\x1b[2J",
        "--- live ---",
        "[ bob: ] live one",
    ]


def test_console_live_message_ends_history_without_notice() -> None:
    from twistchat.client.ui import ChatConsole

    lines: list[str] = []
    console = ChatConsole(lines.append)
    console.message_received(ChatMessage("alice", "replayed", 0.0, True))
    console.message_received(ChatMessage("bob", "live"))
    assert lines[0] == "--- history ---" and lines[-2:] == ["--- live ---", "[ bob: ] live"]


def test_console_says_the_room_is_empty_once_after_a_reconnect() -> None:
    from twistchat.client.ui import ChatConsole

    from .test_client_reconnect import (
        NO_JITTER,
        FakeHandler,
        FakeProtocol,
        drop,
        session_on_clock,
        welcome,
    )

    lines: list[str] = []
    console = ChatConsole(lines.append)
    session, clock, connector, _, first = session_on_clock(NO_JITTER, "bob", "carol")
    session._listener = console
    console.joined(session)
    lines.clear()
    drop(session, first, None)
    clock.advance(1)
    connector.attempts[0].callback((FakeProtocol(), welcome(), FakeHandler()))
    assert lines[-3:] == [
        "* bob (127.0.0.1:2000) left the room",
        "* carol (127.0.0.1:2001) left the room",
        "* The room is empty.",
    ]
    console.leave()


def test_password_from_the_environment_is_not_kept_there(monkeypatch: Any) -> None:
    monkeypatch.setenv("TWISTCHAT_PASSWORD", "from the environment")
    options = parse("h", "1", "alice")
    assert read_password(options, io.StringIO(), io.StringIO()) == "from the environment"
    assert "TWISTCHAT_PASSWORD" not in os.environ
