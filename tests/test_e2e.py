"""
End to end: the installed ``twistd socketchat`` and ``twistchat`` commands as
real processes on loopback.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from twistchat.bench.processes import Lines, ServerProcess, socketchat_command

BIN = Path(sys.executable).parent
SECRET_TEXT = "the eagle lands at midnight 4711"
REPLY_TEXT = "copy that, see you there 0815"


class Server(ServerProcess):
    """
    The real C{twistd -n socketchat} on 127.0.0.1, its data in C{workdir/data}.
    """

    def __init__(self, workdir: Path, *args: str) -> None:
        self.workdir = workdir
        self.data = workdir / "data"
        super().__init__(socketchat_command("--data-dir", str(self.data), *args), workdir,
                         env(workdir))

    def stop(self, timeout: float = 20) -> bool:
        """
        SIGTERM, then wait; True if twistd shut down cleanly (and said so).
        """
        return super().stop(timeout) and "Server Shut Down." in self.log.seen[-1]


def env(home: Path, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TWISTCHAT")}
    clean.update(XDG_CONFIG_HOME=str(home / "config"), PYTHONUNBUFFERED="1", **extra)
    return clean


def password_of(server: Server) -> str:
    """
    The room password C{server} generated and printed at start.
    """
    return server.log.wait_for(r"^\s+([a-z0-9]{5}(?:-[a-z0-9]{5})+)\s*$").group(1)


class Piped:
    """
    A child process fed lines on its stdin by the test, its stdout and
    stderr read as L{Lines} (C{out}, C{err}).
    """

    def __init__(self, argv: Sequence[str], workdir: Path, environ: dict[str, str],
                 new_session: bool = False) -> None:
        self.process = subprocess.Popen(
            list(argv),
            cwd=workdir,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environ,
            start_new_session=new_session,
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        self.out = Lines(self.process.stdout)
        self.err = Lines(self.process.stderr)

    def say(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def finish(self, timeout: float = 30) -> int:
        """
        Close stdin and wait for the exit status.
        """
        assert self.process.stdin is not None
        self.process.stdin.close()
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


class Client(Piped):
    """
    The installed C{twistchat} command, options first.
    """

    def __init__(self, workdir: Path, port: int, *args: str, password: str | None = None,
                 room: str | None = None, options: Sequence[str] = ()) -> None:
        extra = {"TWISTCHAT_PASSWORD": password} if password else {}
        options = [*options, *(["--room", room] if room else [])]
        super().__init__([str(BIN / "twistchat"), *options, "127.0.0.1", str(port), *args],
                         workdir, env(workdir, **extra))


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


def read_all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_server_and_two_clients_chat(workdir: Path) -> None:
    server = Server(workdir)
    try:
        password = password_of(server)
        alice = Client(workdir, server.port, "alice", password=password)
        alice.out.wait_for("connected — you can start sending messages")
        alice.out.wait_for(r"The room is empty")
        bob = Client(workdir, server.port, "bob", password=password)
        bob.out.wait_for("connected — you can start sending messages")
        bob.out.wait_for(r"In the room: alice \(127\.0\.0\.1:\d+\)")
        alice.out.wait_for(r"\* bob \(127\.0\.0\.1:\d+\) entered the room")

        alice.say(SECRET_TEXT)
        bob.out.wait_for(re.escape(f"[ alice: ] {SECRET_TEXT}"))
        bob.say(REPLY_TEXT)
        alice.out.wait_for(re.escape(f"[ bob: ] {REPLY_TEXT}"))

        # A third member with the wrong password is refused; nobody hears of it.
        eve = Client(workdir, server.port, "eve", password="not the password")
        assert eve.finish() == 1
        assert "Unable to connect: wrong password" in "\n".join(eve.err.rest())

        assert bob.finish() == 0
        alice.out.wait_for(r"\* bob \(127\.0\.0\.1:\d+\) left the room")
        alice.out.wait_for(r"The room is empty")
        assert alice.finish() == 0
        assert not any("eve" in line for line in alice.out.rest())
        server.log.wait_for(r"failed to join room 'main' as eve")
        server.log.wait_for(r"alice \(127\.0\.0\.1, \d+\) disconnected")
    finally:
        server.stop()

    log = "\n".join(server.log.seen)
    assert re.search(r"alice \(127\.0\.0\.1, \d+\) connected", log)
    assert "Traceback" not in log
    # The password is printed once for the operator, before logging starts, and
    # never appears in a log line.
    assert sum(password in line for line in server.log.seen) == 1
    for secret in (SECRET_TEXT, REPLY_TEXT, "not the password"):
        assert secret not in log
    stored = read_all_bytes(server.data)
    for secret in (SECRET_TEXT, REPLY_TEXT, password, "not the password"):
        assert secret.encode() not in stored
    assert (server.data / "rooms" / "main.json").exists()


def test_password_file_and_restart_keeps_room_key(workdir: Path) -> None:
    (workdir / "pw").write_text("a room password for the e2e test\n")
    server = Server(workdir, "--password-file", str(workdir / "pw"))
    try:
        first = (server.data / "rooms" / "main.json").read_bytes()
    finally:
        assert server.stop()
    server = Server(workdir, "--password-file", str(workdir / "pw"))
    try:
        assert (server.data / "rooms" / "main.json").read_bytes() == first
        client = Client(workdir, server.port, "dave", password="a room password for the e2e test")
        client.out.wait_for("connected")
        assert client.finish() == 0
    finally:
        server.stop()


def test_sigterm_tells_members_and_exits_cleanly(workdir: Path) -> None:
    (workdir / "pw").write_text("shutdown test password\n")
    server = Server(workdir, "--password-file", str(workdir / "pw"))
    client = Client(workdir, server.port, "erin", password="shutdown test password")
    client.out.wait_for("connected")
    assert server.stop()
    client.out.wait_for("Disconnected from chat server: the server is shutting down")
    assert client.process.wait(timeout=20) == 1


def twistd(workdir: Path, *args: str, daemon: bool = False) -> subprocess.CompletedProcess[str]:
    """
    Run C{twistd socketchat} to its end (it is expected not to start), with
    twistd's default pid file in C{workdir}.
    """
    return subprocess.run(
        [str(BIN / "twistd"), *([] if daemon else ["-n"]), "socketchat",
         "--data-dir", str(workdir / "data"), *args],
        cwd=workdir, capture_output=True, text=True, timeout=60, env=env(workdir),
    )


def assert_one_line(result: subprocess.CompletedProcess[str], *names: str) -> None:
    """
    Exit status 1; one line on stderr, naming the problem; no traceback and no
    usage text anywhere.
    """
    assert result.returncode == 1, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("twistd socketchat: ")
    for name in names:
        assert name in lines[0]
    both = result.stdout + result.stderr
    assert "Traceback" not in both and "Error: " not in both
    assert "Usage:" not in both and "--max-members" not in both, "twistd's usage text"


@pytest.fixture
def password(workdir: Path) -> Path:
    path = workdir / "password"
    path.write_text("a room password for the e2e tests\n")
    return path


def test_port_in_use_is_one_line(workdir: Path, password: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = twistd(workdir, "--interface", "127.0.0.1", "--port", str(port),
                        "--password-file", str(password))
    assert_one_line(result, f"cannot listen on 127.0.0.1:{port}: Address already in use")
    assert not (workdir / "twistd.pid").exists(), "twistd removes its pid file"


def test_port_in_use_as_a_daemon(workdir: Path, password: Path) -> None:
    """
    Daemonized, twistd's parent process waits for the daemon to report that it
    started: it is told why not, says so, and exits 1 (it does not wait on).
    """
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = twistd(workdir, "--interface", "127.0.0.1", "--port", str(port),
                        "--password-file", str(password), daemon=True)
    assert result.returncode == 1
    # twistd passes on the first 100 bytes of the reason.
    assert f"cannot listen on 127.0.0.1:{port}: Address already in" in result.stderr
    assert "Traceback" not in result.stderr
    log = (workdir / "twistd.log").read_text()
    assert f"twistd socketchat: cannot listen on 127.0.0.1:{port}: Address already in use" in log
    wait_for_daemon_exit(workdir / "twistd.pid")
    assert not (workdir / "twistd.pid").exists()


@pytest.mark.parametrize("option, serving", [("--metrics", "metrics"),
                                             ("--web", "the web page")])
def test_metrics_or_web_port_in_use_is_one_line(workdir: Path, password: Path,
                                                option: str, serving: str) -> None:
    """
    As for the chat port: one line on standard error (where an operator or a
    daemon's parent sees it) and in the log, naming what could not be served
    and where.
    """
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = twistd(workdir, "--port", "0", "--interface", "127.0.0.1",
                        "--password-file", str(password),
                        option, f"tcp:{port}:interface=127.0.0.1")
    assert result.returncode == 1, result
    line = (f"twistd socketchat: cannot serve {serving} on tcp:{port}:"
            r"interface=127\.0\.0\.1: .*Address already in use$")
    assert re.search(line, result.stdout, re.MULTILINE), result.stdout
    assert_one_line(result, f"cannot serve {serving} on tcp:{port}:interface=127.0.0.1: ")
    assert "Traceback" not in result.stdout + result.stderr


def wait_for_daemon_exit(pid_file: Path, timeout: float = 20) -> None:
    """
    Wait (at most C{timeout} seconds) for the daemon named in C{pid_file} to
    end: twistd's daemon tells its parent why it did not start before it
    removes its pid file, so the parent can exit first.
    """
    try:
        pid = int(pid_file.read_text())
        handle = os.pidfd_open(pid)
    except (FileNotFoundError, ProcessLookupError):
        return
    try:
        select.select([handle], [], [], timeout)
    finally:
        os.close(handle)


@pytest.mark.parametrize("case", ["missing", "a folder", "not text"])
def test_unusable_password_file_is_one_line(workdir: Path, case: str) -> None:
    path = workdir / "password"
    if case == "a folder":
        path.mkdir()
    elif case == "not text":
        path.write_bytes(b"\xff\xfe\xfa\n")
    result = twistd(workdir, "--port", "0", "--password-file", str(path))
    assert_one_line(result, "cannot read --password-file", str(path))


def test_garbage_certificate_is_one_line(workdir: Path, password: Path) -> None:
    cert = workdir / "cert.pem"
    cert.write_text("this is not a certificate\n")
    result = twistd(workdir, "--port", "0", "--password-file", str(password),
                    "--tls-cert", str(cert))
    assert_one_line(result, "unusable TLS certificate or key", str(cert))


def test_data_dir_that_is_a_file_is_one_line(workdir: Path, password: Path) -> None:
    (workdir / "data").write_text("")
    result = twistd(workdir, "--port", "0", "--password-file", str(password))
    assert_one_line(result, f"the data directory {workdir / 'data'} is not a directory")


def test_mistaken_options_still_show_usage(workdir: Path) -> None:
    result = twistd(workdir, "--tls-key", str(workdir / "key.pem"))
    assert result.returncode == 1
    assert "--tls-key needs --tls-cert" in result.stdout + result.stderr
    assert "--max-members" in result.stdout, "twistd's usage text"
    assert "Traceback" not in result.stdout + result.stderr


# --- --listen: endpoint descriptions, systemd socket activation ----------------------

#: What systemd does between fork and exec for a socket-activated service, for
#: one socket: put it at file descriptor 3 and name this process as the one the
#: sockets are for (LISTEN_PID), then run the service's command in the same
#: process (same pid). Arguments: the socket's descriptor here, then the command.
ACTIVATE = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"""


def test_systemd_socket_activation(workdir: Path, password: Path) -> None:
    """
    The test opens the listening socket, as systemd's twistchat.socket does,
    and starts the real twistd with it as descriptor 3, LISTEN_FDS=1 and
    LISTEN_PID its own pid (LISTEN_FDNAMES too, which systemd always sets and
    Twisted requires). A client that connects before twistd runs waits in
    the socket's backlog, as on the first connection under systemd; then two
    clients log in and chat through the inherited socket.
    """
    room_password = password.read_text().strip()
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(16)
        port = listening.getsockname()[1]
        early = Client(workdir, port, "alice", password=room_password)
        command = [
            sys.executable, "-c", ACTIVATE, str(listening.fileno()),
            str(BIN / "twistd"), "-n", "--pidfile=", "socketchat",
            "--data-dir", str(workdir / "data"), "--password-file", str(password),
            "--listen", "systemd:domain=INET:index=0",
        ]
        server = ServerProcess(
            command, workdir, env(workdir, LISTEN_FDS="1", LISTEN_FDNAMES="twistchat"),
            pass_fds=[listening.fileno()],
        )
    # From here on only twistd holds the socket.
    try:
        assert server.port == port
        early.out.wait_for("connected — you can start sending messages")
        bob = Client(workdir, port, "bob", password=room_password)
        bob.out.wait_for(r"In the room: alice \(127\.0\.0\.1:\d+\)")
        bob.say(SECRET_TEXT)
        early.out.wait_for(re.escape(f"[ bob: ] {SECRET_TEXT}"))
        assert bob.finish() == 0
        assert early.finish() == 0
    finally:
        assert server.stop()
    log = "\n".join(server.log.seen)
    assert log.count("twistchat listening on port") == 1
    assert "Traceback" not in log


def test_bad_listen_description_is_a_usage_error(workdir: Path, password: Path) -> None:
    for description, reason in [
        ("tcp:x", "not an endpoint description twistd can use"),
        ("ssl:7777", "twistd adds its own TLS"),
    ]:
        result = twistd(workdir, "--password-file", str(password), "--listen", description)
        assert result.returncode == 1
        both = result.stdout + result.stderr
        [line] = [line for line in both.splitlines() if reason in line]
        assert f"--listen {description}: " in line
        assert "--max-members" in result.stdout, "twistd's usage text"
        assert "Traceback" not in both


@pytest.mark.parametrize("case", ["port in use", "no such folder", "no systemd socket"])
def test_listen_failure_is_one_line(workdir: Path, password: Path, case: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        description, expected = {
            "port in use": (f"tcp:{port}:interface=127.0.0.1",
                            f"cannot listen on 127.0.0.1:{port}: Address already in use"),
            "no such folder": (f"unix:{workdir / 'missing' / 'socket'}",
                               f"cannot listen on unix:{workdir / 'missing' / 'socket'}: "
                               "No such file or directory"),
            "no systemd socket": ("systemd:domain=INET:index=0",
                                  "cannot listen on systemd:domain=INET:index=0: "
                                  "no such socket was passed to this process"),
        }[case]
        result = twistd(workdir, "--password-file", str(password), "--listen", description)
    assert_one_line(result, expected)
    assert not (workdir / "twistd.pid").exists(), "twistd removes its pid file"


def test_openssl_s_client_speaks_only_tls13(workdir: Path) -> None:
    """
    A real peer, OpenSSL's s_client, completes TLS 1.3 with the real twistd and
    is refused when it offers only TLS 1.2 (or 1.1).
    """
    assert shutil.which("openssl"), "the openssl command is needed (the test command installs it)"
    server = Server(workdir)
    try:
        versions = {}
        for flag in ("-tls1_1", "-tls1_2", "-tls1_3"):
            result = subprocess.run(
                ["openssl", "s_client", "-connect", f"127.0.0.1:{server.port}", flag],
                input="", capture_output=True, text=True, timeout=30,
            )
            versions[flag] = re.search(r"New, (TLSv1\.\d)", result.stdout)
        assert versions["-tls1_3"] and versions["-tls1_3"].group(1) == "TLSv1.3"
        assert versions["-tls1_2"] is None and versions["-tls1_1"] is None
    finally:
        server.stop()


def chat_lines(lines: list[str], sender: str) -> list[tuple[str, bool]]:
    """
    (text, replayed?) of each message from C{sender} a client printed.
    """
    found = []
    for line in lines:
        match = re.match(r"^(\[[-0-9: ]+\] )?\[ " + sender + r": \] (.*)$", line)
        if match:
            found.append((match.group(2), match.group(1) is not None))
    return found


def test_sigkill_loses_no_relayed_message(workdir: Path) -> None:
    """
    Every message a member saw before the server was killed with SIGKILL is
    replayed, in order and once, to a member who joins after the restart.
    """
    password = "the history e2e password"
    (workdir / "pw").write_text(password + "\n")
    fast = ("--password-file", str(workdir / "pw"), "--message-rate", "1000",
            "--message-burst", "1000", "--history", "1000")
    server = Server(workdir, *fast)
    alice = bob = None
    try:
        server.log.wait_for(r"history: .*history\.sqlite3 open")
        bob = Client(workdir, server.port, "bob", password=password)
        bob.out.wait_for("connected")
        alice = Client(workdir, server.port, "alice", password=password)
        alice.out.wait_for("connected")
        total = 400
        for i in range(total):
            alice.say(f"m{i:04d} {SECRET_TEXT}")
        bob.out.wait_for(r"\[ alice: \] m0100 ")
        server.process.kill()  # SIGKILL, mid-stream
        assert server.process.wait(timeout=20) == -signal.SIGKILL
        bob.out.wait_for("Disconnected from chat server")
        seen = [text for text, _ in chat_lines(bob.out.rest(timeout=2), "alice")]
    finally:
        for client in (alice, bob):
            if client is not None and client.process.poll() is None:
                client.process.kill()
                client.process.wait(timeout=10)
    assert len(seen) >= 100
    assert seen == [f"m{i:04d} {SECRET_TEXT}" for i in range(len(seen))]

    server = Server(workdir, *fast)
    try:
        carol = Client(workdir, server.port, "carol", password=password)
        carol.out.wait_for("--- live ---")
        assert carol.finish() == 0
        lines = carol.out.rest()
    finally:
        assert server.stop()
    replayed = chat_lines(lines, "alice")
    assert all(hist for _, hist in replayed)
    texts = [text for text, _ in replayed]
    assert texts[: len(seen)] == seen, "a message a member saw is missing or out of place"
    assert texts == [f"m{i:04d} {SECRET_TEXT}" for i in range(len(texts))], "order or doubles"
    assert lines.index("--- history ---") < lines.index("--- live ---")
    stored = read_all_bytes(server.data)
    assert SECRET_TEXT.encode() not in stored and password.encode() not in stored


def passwd(workdir: Path, room: str, password: str) -> None:
    (workdir / f"{room}.pw").write_text(password + "\n")
    result = subprocess.run(
        [str(BIN / "twistchat-passwd"), "--data-dir", str(workdir / "data"), "--room", room,
         "--password-file", str(workdir / f"{room}.pw")],
        capture_output=True, text=True, timeout=60, env=env(workdir),
    )
    assert result.returncode == 0, result.stderr


def test_three_rooms_one_added_while_running(workdir: Path) -> None:
    passwords = {"main": "main room e2e password", "ops": "ops room e2e password",
                 "dev": "dev room e2e password"}
    passwd(workdir, "main", passwords["main"])
    passwd(workdir, "ops", passwords["ops"])
    server = Server(workdir)
    clients: list[Client] = []
    try:
        passwd(workdir, "dev", passwords["dev"])  # no restart
        server.log.wait_for(r"rooms: room 'dev' added", timeout=15)
        for room, password in passwords.items():
            client = Client(workdir, server.port, f"{room}-a", password=password, room=room)
            client.out.wait_for("connected")
            client.say(f"{room} says {SECRET_TEXT}")
            clients.append(client)
        # A late joiner of each room reads that room's history, and only it.
        for room, password in passwords.items():
            late = Client(workdir, server.port, "late", password=password, room=room)
            late.out.wait_for("--- live ---")
            assert late.finish() == 0
            lines = late.out.rest()
            assert chat_lines(lines, f"{room}-a") == [(f"{room} says {SECRET_TEXT}", True)]
            others = [f"{other}-a" for other in passwords if other != room]
            assert not any(name in line for line in lines for name in others), lines
        wrong = Client(workdir, server.port, "eve", password=passwords["ops"], room="dev")
        assert wrong.finish() == 1
        assert "Unable to connect: wrong password" in "\n".join(wrong.err.rest())
        for client in clients:
            assert client.finish() == 0
            assert all(SECRET_TEXT not in line for line in client.out.rest())
    finally:
        for client in clients:
            if client.process.poll() is None:
                client.process.kill()
                client.process.wait(timeout=10)
        assert server.stop()
    stored = read_all_bytes(server.data)
    for secret in (SECRET_TEXT, *passwords.values()):
        assert secret.encode() not in stored
