"""
Every example in README.md, run as a user would paste it.

The fenced blocks are read from README.md itself, so the README as it is now
is what gets tested. Each ```python and ```sh block is claimed by one entry of
L{CLAIMS}, and each output block (no language) too; L{test_every_block_is_run}
fails for a block no entry claims. The cases start the real ``twistd -n
socketchat`` from README's own server command on 127.0.0.1 and run the blocks
against it as processes, changing only:

  - the port 7777 (the server's is free: 0 at the first start, then the port
    it got), the room password (README's examples show a generated one, or
    "the password", or C{...}), and C{.venv/bin/}, which becomes this test
    run's bin directory;
  - stdin, which is a pipe, never a terminal, and each process has a timeout.

Commands that would prompt for a password on a terminal (the first client of
the walkthrough, C{--reconnect}, C{twistchat-passwd}) get it in
C{TWISTCHAT_PASSWORD} instead, as README says they may: without a terminal
they cannot prompt.

Not run: the install commands of "Two commands" (C{python3 -m venv ... pip
install}). They are what CI itself runs to build the environment these tests
run in; the server command that ends the first of them is run, with
C{--interface 127.0.0.1}, as the walkthrough's own block.

Output blocks are compared loosely: each of their lines must be printed, in
order, with any number standing for any number (times, delays, addresses) and
a generated password for the real one.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from twistchat.bench.processes import ServerProcess

from .test_e2e import BIN, Client, Lines, Piped, env

README = Path(__file__).resolve().parent.parent / "README.md"

#: A password as the server generates it (five groups of five).
GENERATED = r"[a-z0-9]{5}(?:-[a-z0-9]{5}){2,}"


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int  # where it starts in README.md

    @property
    def commands(self) -> list[str]:
        return [c for c in self.text.splitlines() if c.strip() and not c.startswith("#")]


def blocks(text: str) -> list[Block]:
    """
    The fenced blocks of a Markdown text, also those indented in a list.
    """
    found = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^( *)```(\w*)\s*$", lines[i])
        if opening is None:
            i += 1
            continue
        indent, lang = opening.groups()
        body = []
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            body.append(lines[j])
            j += 1
        assert j < len(lines), f"README.md:{i + 1}: unclosed code block"
        found.append(Block(lang, textwrap.dedent("\n".join(body)) + "\n", i + 1))
        i = j + 1
    return found


#: (name, language, pattern): the one block each case runs (or, for
#: "install", leaves to CI), found by what it contains.
CLAIMS = [
    ("install", "sh", r"pip install \.(\s|&)"),
    ("install-tests", "sh", r"pip install '\.\[test\]'"),
    ("server", "sh", r"^\.venv/bin/twistd -n socketchat .*--interface 127\.0\.0\.1"),
    ("server-output", "", r"password was given"),
    ("join", "sh", r"^\.venv/bin/twistchat 127\.0\.0\.1 7777 \w+\s*$"),
    ("join-output", "", r"^Welcome to twistchat"),
    ("join-env", "sh", r"^TWISTCHAT_PASSWORD=\S+ \.venv/bin/twistchat 127\.0\.0\.1 7777 \w+"),
    ("piped", "sh", r"^echo .*\| TWISTCHAT_PASSWORD="),
    ("reconnect", "sh", r"twistchat --reconnect "),
    ("reconnect-output", "", r"Reconnecting in"),
    ("rooms", "sh", r"twistchat-passwd "),
    ("history-output", "", r"^--- history ---"),
    ("web", "sh", r"^\.venv/bin/twistd -n socketchat --port 7777 --web 8443$"),
    ("web-copy", "sh", r"^\.venv/bin/twistchat-web export "),
    ("web-copy-server", "sh", r"--web-origin http://127\.0\.0\.1:8000$"),
    ("twisted", "python", r"task\.react"),
    ("blocking", "python", r"BlockingChat"),
]

#: Which test runs each claim's block.
RUN_BY = {
    "install": None,
    "install-tests": None,
    "server": "test_walkthrough_and_python_examples",
    "server-output": "test_walkthrough_and_python_examples",
    "join": "test_walkthrough_and_python_examples",
    "join-output": "test_walkthrough_and_python_examples",
    "join-env": "test_walkthrough_and_python_examples",
    "piped": "test_walkthrough_and_python_examples",
    "twisted": "test_walkthrough_and_python_examples",
    "blocking": "test_walkthrough_and_python_examples",
    "reconnect": "test_reconnect",
    "reconnect-output": "test_reconnect",
    "rooms": "test_rooms_and_history",
    "web": "test_from_a_browser",
    "web-copy": "test_local_copy_of_the_page",
    "web-copy-server": "test_local_copy_of_the_page",
    "history-output": "test_rooms_and_history",
}


def claimed(block: Block) -> list[str]:
    return [name for name, lang, pattern in CLAIMS
            if lang == block.lang and re.search(pattern, block.text, re.MULTILINE)]


def block(name: str) -> Block:
    found = [b for b in blocks(README.read_text()) if name in claimed(b)]
    assert len(found) == 1, f"README.md has {len(found)} blocks for {name!r}"
    return found[0]


def test_every_block_is_run() -> None:
    """
    Every python, sh and output block of README.md is claimed by exactly one
    case, and every case's block is there.
    """
    readme = blocks(README.read_text())
    assert len(readme) >= len(CLAIMS)
    for b in readme:
        assert b.lang in ("python", "sh", ""), f"README.md:{b.line}: a {b.lang} block"
        assert len(claimed(b)) == 1, (
            f"README.md:{b.line}: block claimed by {claimed(b) or 'no case'}:\n{b.text}"
        )
    for name, _, _ in CLAIMS:
        block(name)
        assert RUN_BY[name] is None or RUN_BY[name] in globals(), name
    assert set(RUN_BY) == {name for name, _, _ in CLAIMS}


def test_block_extraction() -> None:
    text = "a\n\n   ```sh\n   one\n     two\n   ```\n\n```\nout\n```\n"
    assert blocks(text) == [Block("sh", "one\n  two\n", 3), Block("", "out\n", 8)]


# --- running blocks -----------------------------------------------------------------


def substitute(text: str, port: int, password: str | None = None) -> str:
    """
    README's port and passwords replaced with the real ones, and its venv with
    this test run's.
    """
    text = text.replace(".venv/bin/", f"{BIN}/").replace("7777", str(port))
    if password is not None:
        quoted = shlex.quote(password)
        text = re.sub(r"'" + GENERATED + "'", quoted, text)
        text = text.replace("TWISTCHAT_PASSWORD=...", f"TWISTCHAT_PASSWORD={quoted}")
        text = text.replace('"the password"', repr(password))
    return text


def loose(line: str, port: int) -> str:
    """
    A pattern for a line of an output block: numbers stand for any number,
    and a generated password for any.
    """
    parts = []
    last = 0
    for match in re.finditer(GENERATED + r"|\d+(?:\.\d+)?", line):
        parts.append(re.escape(line[last:match.start()]))
        token = match.group()
        if "-" in token:
            parts.append(GENERATED)
        elif token == "7777":
            parts.append(str(port))
        else:
            parts.append(r"\d+(?:\.\d+)?")
        last = match.end()
    parts.append(re.escape(line[last:]))
    return r"^\s*" + "".join(parts).strip() + r"\s*$"


def expect(lines: Lines, output: Block, port: int, timeout: float = 30) -> None:
    """
    Every line of C{output} is printed, in that order.
    """
    patterns = [loose(line.strip(), port) for line in output.commands]
    for pattern in patterns:
        lines.wait_for(pattern, timeout)
    at = 0
    for pattern in patterns:
        while not re.search(pattern, lines.seen[at]):
            at += 1  # wait_for saw it, so it is there
        at += 1


class Process(Piped):
    """
    A command (or script) from README.md, stdin a pipe, in its own process group.
    """

    def __init__(self, workdir: Path, argv: list[str], **extra: str) -> None:
        super().__init__(argv, workdir, env(workdir, **extra), new_session=True)

    def finish(self, timeout: float = 60) -> int:
        try:
            return super().finish(timeout)
        finally:
            self.out.rest(timeout=2)
            self.err.rest(timeout=2)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def heard(member: Process, pattern: str, example: Process) -> None:
    """
    C{member} prints C{pattern}; if not, show why C{example} did not get there.
    """
    try:
        member.out.wait_for(pattern)
    except AssertionError as e:
        raise AssertionError(
            f"{e}\nthe example's stderr:\n" + "\n".join(example.err.rest(2))
        ) from e


def shell(workdir: Path, command: str, **extra: str) -> Process:
    return Process(workdir, ["sh", "-c", command], **extra)


def python(workdir: Path, code: str, name: str) -> Process:
    script = workdir / f"{name}.py"
    script.write_text(code)
    return Process(workdir, [sys.executable, script.name])


class ReadmeServer(ServerProcess):
    """
    The server started with README's own command (port 0 the first time).
    """

    def __init__(self, workdir: Path, port: int = 0) -> None:
        (command,) = block("server").commands
        super().__init__(shlex.split(substitute(command, port)), workdir, env(workdir))


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[Process | ReadmeServer | Client]]:
    """
    What a test starts, stopped at its end whatever happens.
    """
    running: list[Process | ReadmeServer | Client] = []
    yield running
    for thing in reversed(running):
        if isinstance(thing, ReadmeServer):
            thing.stop()
        elif isinstance(thing, Process):
            thing.kill()
        elif thing.process.poll() is None:  # test_e2e's Client
            thing.process.kill()
            thing.process.wait(timeout=10)


def first_start(workdir: Path, started: list[Process | ReadmeServer]) -> tuple[ReadmeServer, str]:
    """
    Start the server as the walkthrough does; check what it prints; its password.
    """
    server = ReadmeServer(workdir)
    started.append(server)
    expect(server.log, block("server-output"), server.port)
    password = server.log.wait_for(r"^\s+(" + GENERATED + r")\s*$").group(1)
    return server, password


# --- the cases ----------------------------------------------------------------------


def test_walkthrough_and_python_examples(tmp_path: Path, started: list) -> None:
    server, password = first_start(tmp_path, started)
    port = server.port

    # Step 2 would prompt for the password on a terminal: it gets it from the
    # environment instead.
    (command,) = block("join").commands
    alice = shell(tmp_path, substitute(command, port), TWISTCHAT_PASSWORD=password)
    started.append(alice)
    expect(alice.out, block("join-output"), port)

    (command,) = block("join-env").commands
    bob = shell(tmp_path, substitute(command, port, password))
    started.append(bob)
    bob.out.wait_for(r"connected — you can start sending messages")
    alice.out.wait_for(r"^\* bob \(127\.0\.0\.1:\d+\) entered the room$")
    alice.say("Hello world")
    bob.out.wait_for(r"^\[ alice: \] Hello world$")
    bob.say("/who")
    bob.out.wait_for(r"alice \(127\.0\.0\.1:\d+\)")

    (command,) = block("piped").commands
    piped = shell(tmp_path, substitute(command, port, password))
    started.append(piped)
    assert piped.finish() == 0, piped.err.seen
    alice.out.wait_for(r"^\[ ci-bot: \] build finished$")

    # The Twisted example: history marked as such, then a live answer.
    twisted = python(tmp_path, substitute(block("twisted").text, port, password), "twisted_example")
    started.append(twisted)
    heard(alice, r"^\[ twisted-bot: \] Hello from Twisted$", twisted)
    alice.say("hello twisted-bot")
    assert twisted.finish() == 0, twisted.err.seen
    out = twisted.out.seen
    assert sorted(out) == sorted([
        "(earlier) alice: Hello world",
        "(earlier) ci-bot: build finished",
        "--- live from here ---",
        "['alice', 'bob', 'twisted-bot']",
        "alice: hello twisted-bot",
    ]), out
    # The server's answer to who() may come before or after the history.
    assert (out.index("(earlier) alice: Hello world") < out.index("(earlier) ci-bot: build finished")
            < out.index("--- live from here ---") < out.index("alice: hello twisted-bot")), out
    assert twisted.err.seen == []

    # The notebook example skips the history and prints the first live message.
    notebook = python(tmp_path, substitute(block("blocking").text, port, password), "notebook")
    started.append(notebook)
    heard(alice, r"^\[ notebook: \] hello from a notebook$", notebook)
    bob.say("hello notebook")
    assert notebook.finish() == 0, notebook.err.seen
    assert notebook.out.seen == ["bob hello notebook"]
    assert notebook.err.seen == []

    bob.say("/quit")
    assert bob.finish() == 0
    alice.out.wait_for(r"^\* bob \(127\.0\.0\.1:\d+\) left the room$")
    assert alice.finish() == 0
    server.stop()
    assert "Traceback" not in "\n".join(server.log.seen)


def test_reconnect(tmp_path: Path, started: list) -> None:
    server, password = first_start(tmp_path, started)
    port = server.port
    (command,) = block("reconnect").commands
    # It would prompt for the password on a terminal.
    alice = shell(tmp_path, substitute(command, port), TWISTCHAT_PASSWORD=password)
    started.append(alice)
    alice.out.wait_for("connected — you can start sending messages")

    # What README shows: the server goes away, a line typed meanwhile, an
    # attempt that fails while it is down, then the server is back.
    output = block("reconnect-output")
    *down, back = output.commands
    server.stop()
    alice.out.wait_for(loose(down[0], port))
    alice.say("sent once the server is back")
    for line in down[1:]:
        alice.out.wait_for(loose(line, port))
    server = ReadmeServer(tmp_path, port)  # same data directory: same password
    started.append(server)
    alice.out.wait_for(loose(back, port))
    expect(alice.out, output, port)

    bob = Client(tmp_path, port, "bob", password=password)
    started.append(bob)
    bob.out.wait_for(r"\[ alice: \] sent once the server is back")
    assert alice.finish() == 0
    assert bob.finish() == 0


def test_rooms_and_history(tmp_path: Path, started: list) -> None:
    """
    The rooms block as a sequence: a new password for main (the members sealed
    under the old one are unreadable to later members), a new room, and a
    member of it who sees nothing of main. The people of README's history
    example write what it shows, so that a later member's screen can be
    compared with it.
    """
    server, old_password = first_start(tmp_path, started)
    port = server.port
    history = block("history-output").commands
    said = [re.match(r"^\[[\d:]+\] \[ (\S+): \] (.*)$", line) for line in history]
    before = [m.group(1) for m in said if m and m.group(2).startswith("(unreadable")]
    after = [(m.group(1), m.group(2)) for m in said if m and not m.group(2).startswith("(")]
    assert before and after, history

    for name in before:
        member = Client(tmp_path, port, name, password=old_password)
        member.say(f"{name} wrote this under the old password")
        assert member.finish() == 0, member.err.rest()

    new_passwords = {"main": "the new password of main", "ops": "the ops room password"}
    main, ops, join_ops = block("rooms").commands
    for command in (main, ops):
        room = re.search(r"--room (\S+)", command).group(1)  # type: ignore[union-attr]
        # twistchat-passwd would ask for the new password twice on a terminal.
        result = subprocess.run(
            ["sh", "-c", substitute(command, port)], cwd=tmp_path, capture_output=True,
            text=True, timeout=60, stdin=subprocess.DEVNULL,
            env=env(tmp_path, TWISTCHAT_PASSWORD=new_passwords[room]),
        )
        assert result.returncode == 0, result.stderr
        server.log.wait_for(rf"rooms: room '{room}' (has a new verifier|added)", timeout=15)

    for name, text in after:
        member = Client(tmp_path, port, name, password=new_passwords["main"])
        member.say(text)
        assert member.finish() == 0, member.err.rest()

    carol = shell(tmp_path, substitute(join_ops, port), TWISTCHAT_PASSWORD=new_passwords["ops"])
    started.append(carol)
    carol.out.wait_for(r"The room is empty")
    assert carol.finish() == 0, carol.err.seen
    assert not any(name in line for line in carol.out.seen for name, _ in after)

    late = Client(tmp_path, port, "late", password=new_passwords["main"])
    started.append(late)
    expect(late.out, block("history-output"), port)
    assert late.finish() == 0


def test_from_a_browser(tmp_path: Path, started: list) -> None:
    """
    "From a browser": the command serves the page on the web port (on loopback
    here, and a free port in place of 8443); the page loads in Chromium, trusting
    the server's own certificate only, and shows its join form and its warning.
    """
    from tests.browser import Chromium, pin_of

    (command,) = block("web").commands
    command = substitute(command, 0).replace(
        "--web 8443", "--interface 127.0.0.1 --web tcp:0:interface=127.0.0.1")
    server = ServerProcess(shlex.split(command), tmp_path, env(tmp_path))
    started.append(server)
    web = int(server.log.wait_for(r"web page and WebSocket on port (\d+)").group(1))
    with Chromium(pin_of(tmp_path / "twistchat-data" / "server.pem"), tmp_path) as browser:
        browser.open(f"https://127.0.0.1:{web}/")
        text = browser.wait_for_text("Not connected")
        assert "Join a room" in text
        assert "whoever serves this page can serve different code" in text


def test_local_copy_of_the_page(tmp_path: Path, started: list) -> None:
    """
    "From a browser", the local copy: the export and its check run as pasted;
    the copy is served as README says (a free port in place of 8000) and the
    server started with README's command (on loopback, free ports) accepts its
    origin; the copy loads in Chromium and asks for the server.
    """
    from tests.browser import Chromium, pin_of

    export, check, serve = block("web-copy").commands
    done = subprocess.run(substitute(export, 0), shell=True, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env=env(tmp_path))
    assert done.returncode == 0, done.stderr
    digest = re.search(r"SHA-256 of SHA256SUMS: ([0-9a-f]{64})", done.stdout)
    assert digest, done.stdout
    done = subprocess.run(check, shell=True, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "index.html: OK" in done.stdout
    assert done.stdout.endswith(f"{digest.group(1)}  SHA256SUMS\n")
    files = shell(tmp_path, serve.replace("python3 ", f"{sys.executable} -u ").replace(
        " 8000 ", " 0 "))
    started.append(files)
    port = int(files.out.wait_for(r"Serving HTTP on 127\.0\.0\.1 port (\d+)").group(1))
    (command,) = block("web-copy-server").commands
    command = substitute(command, 0).replace(
        "--web 8443", "--interface 127.0.0.1 --web tcp:0:interface=127.0.0.1").replace(
        "127.0.0.1:8000", f"127.0.0.1:{port}")
    server = ServerProcess(shlex.split(command), tmp_path, env(tmp_path))
    started.append(server)
    accepted = server.log.wait_for(r"web page and WebSocket on port \d+ .*origins: (.*)")
    assert f"http://127.0.0.1:{port}" in accepted.group(1).split()
    with Chromium(pin_of(tmp_path / "twistchat-data" / "server.pem"), tmp_path) as browser:
        browser.open(f"http://127.0.0.1:{port}/")
        text = browser.wait_for_text("Not connected")
        assert "A local copy:" in text
        assert browser.field("Server").is_displayed()
