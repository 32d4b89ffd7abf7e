"""
The interactive client in a real terminal: the installed ``twistchat`` runs in a
tmux pane (a pty, UTF-8) against a real ``twistd socketchat``; a piped second
member receives what was typed.

What the pane shows is read with ``capture-pane`` and the cursor with
``display -p '#{cursor_x}'``. A tmux control-mode client reports each output of
the pane (``%output``); the tests wait for those events, with a deadline, and
check the screen after each.

Expected cursor columns follow the width table the client follows (wcwidth's);
tmux 3.3 agrees with it for CJK, combining marks and single emoji, which is what
is typed here (it draws ZWJ sequences as their parts, so those are checked on
the line-editing object only, in test_line_editing.py).
"""

from __future__ import annotations

import queue
import re
import shlex
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import wcwidth

from .test_e2e import BIN, Client, Server, env, password_of

TMUX = shutil.which("tmux")


class Pane:
    """
    One tmux server on its own socket, with one 100x30 pane running C{sh}.
    """

    def __init__(self, workdir: Path) -> None:
        if TMUX is None:
            pytest.fail("tmux is needed for the terminal tests and is not installed "
                        "(install the tmux package, e.g. apt-get install tmux)")
        self.socket = f"twistchat-test-{uuid.uuid4().hex[:12]}"
        self.env = env(workdir, LANG="C.UTF-8", LC_ALL="C.UTF-8", PS1="$ ", TERM="xterm")
        self.tmux("-f", "/dev/null", "new-session", "-d", "-x", "100", "-y", "30",
                  "-s", "t", "sh")
        self.tmux("set-option", "-g", "window-size", "manual")
        self.events: queue.Queue[str | None] = queue.Queue()
        self.control = subprocess.Popen(
            [TMUX, "-u", "-L", self.socket, "-C", "attach-session", "-t", "t"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=self.env,
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.control.stdout is not None
        for line in self.control.stdout:
            if line.startswith(b"%output"):
                self.events.put("output")
        self.events.put(None)

    def tmux(self, *args: str) -> str:
        assert TMUX is not None
        result = subprocess.run([TMUX, "-u", "-L", self.socket, *args], env=self.env,
                                capture_output=True, timeout=30)
        assert result.returncode == 0, result
        return result.stdout.decode("utf-8")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "t", *keys)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", "t", "-l", text)

    def screen(self) -> list[str]:
        return self.tmux("capture-pane", "-p", "-t", "t").splitlines()

    def cursor(self) -> tuple[int, int]:
        x, y = self.tmux("display", "-p", "-t", "t", "#{cursor_x} #{cursor_y}").split()
        return int(x), int(y)

    def wait(self, check: Callable[[list[str], tuple[int, int]], bool],
             timeout: float = 30) -> list[str]:
        """
        Wait until C{check(screen, cursor)} holds, re-checking after each output
        of the pane; fail with the screen after C{timeout} seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            cursor = self.cursor()
            if check(screen, cursor):
                return screen
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out; cursor {cursor}, screen:\n" + "\n".join(screen))
            try:
                # An output event, or a second's grace to re-check.
                self.events.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                pass

    def wait_for_text(self, text: str, timeout: float = 30) -> list[str]:
        return self.wait(lambda screen, _: any(text in line for line in screen), timeout)

    def close(self) -> None:
        subprocess.run([TMUX or "tmux", "-L", self.socket, "kill-server"], env=self.env,
                       capture_output=True, timeout=30)
        if self.control.stdin is not None:
            self.control.stdin.close()
        self.control.wait(timeout=30)


@pytest.fixture
def pane(tmp_path: Path) -> Iterator[Pane]:
    pane = Pane(tmp_path)
    try:
        yield pane
    finally:
        pane.close()


class Chat:
    """
    A twistd, alice's interactive client in the pane, and bob piped.
    """

    def __init__(self, workdir: Path, pane: Pane) -> None:
        self.server = Server(workdir)
        password = password_of(self.server)
        self.pane = pane
        command = " ".join(shlex.quote(part) for part in [
            "env", f"TWISTCHAT_PASSWORD={password}",
            str(BIN / "twistchat"), "--known-hosts", str(workdir / "known_hosts"),
            "127.0.0.1", str(self.server.port), "alice",
        ])
        pane.type(f'{command}; echo "exit=$?"')
        pane.keys("Enter")
        pane.wait_for_text("The room is empty")
        self.bob = Client(workdir, self.server.port, "bob", password=password)
        self.bob.out.wait_for(r"In the room: alice")
        pane.wait_for_text("* bob (127.0.0.1:")

    def close(self) -> None:
        if self.bob.process.poll() is None:
            self.bob.finish()
        self.server.stop()


@pytest.fixture
def chat(tmp_path: Path, pane: Pane) -> Iterator[Chat]:
    chat = Chat(tmp_path, pane)
    try:
        yield chat
    finally:
        chat.close()


def input_line(screen: list[str]) -> str:
    """
    The last prompt line on the screen, without trailing blanks.
    """
    prompts = [line.rstrip() for line in screen if line.startswith(">")]
    return prompts[-1] if prompts else ""


def shows(pane: Pane, line: str) -> list[str]:
    """
    Wait until the input line is C{line} with the cursor at its end... or at
    the column given by the text before a C{|} in C{line}.
    """
    before, _, after = line.partition("|")
    expected = (before + after).rstrip()
    column = wcwidth.wcswidth(before)
    return pane.wait(lambda screen, cursor: input_line(screen) == expected
                     and cursor[0] == column)


def test_typed_unicode_arrives_intact(chat: Chat) -> None:
    text = "café ü 🎉 naïve — 日本語"
    chat.pane.type(text)
    shows(chat.pane, f"> {text}|")
    chat.pane.keys("Enter")
    chat.bob.out.wait_for(f"\\[ alice: \\] {text}$")
    # The prompt is back, empty, after the line was sent.
    screen = chat.pane.wait(lambda screen, cursor: screen[cursor[1]].rstrip() == ">"
                            and cursor[0] == 2)
    assert any(line.rstrip() == f"> {text}" for line in screen)


def test_editing_over_wide_combining_and_emoji(chat: Chat) -> None:
    pane = chat.pane
    # A CJK word: wide characters, 2 columns each.
    pane.type("日本語")
    shows(pane, "> 日本語|")
    pane.keys("Left")
    shows(pane, "> 日本|語")
    pane.keys("Left")
    shows(pane, "> 日|本語")
    pane.keys("Right")
    shows(pane, "> 日本|語")
    pane.keys("BSpace")
    shows(pane, "> 日|語")
    pane.keys("End")
    # A combining sequence: e + U+0301 is one cluster of 1 column.
    pane.type(" e\u0301x")
    shows(pane, "> 日語 e\u0301x|")
    pane.keys("Left", "Left")
    shows(pane, "> 日語 |e\u0301x")
    pane.keys("Right")
    shows(pane, "> 日語 e\u0301|x")
    pane.keys("BSpace")
    shows(pane, "> 日語 |x")
    pane.keys("End")
    # An emoji: one code point, 2 columns.
    pane.type("🎉!")
    shows(pane, "> 日語 x🎉!|")
    pane.keys("Left", "Left")
    shows(pane, "> 日語 x|🎉!")
    pane.keys("Right")
    shows(pane, "> 日語 x🎉|!")
    pane.keys("BSpace")
    shows(pane, "> 日語 x|!")
    pane.keys("Left", "Left")
    pane.type("🎉")
    shows(pane, "> 日語🎉| x!")
    pane.keys("Enter")
    chat.bob.out.wait_for("\\[ alice: \\] 日語🎉 x!$")
    shows(pane, "> |")
    # History recall puts the whole line back, the cursor at its end.
    pane.keys("Up")
    shows(pane, "> 日語🎉 x!|")
    pane.keys("Left", "Left", "Left")
    shows(pane, "> 日語🎉| x!")
    pane.keys("Left")
    shows(pane, "> 日語|🎉 x!")
    pane.keys("BSpace")
    shows(pane, "> 日|🎉 x!")


def test_paste_split_across_reads(chat: Chat) -> None:
    """
    A paste arrives in one read or several; a character split between two
    reads arrives whole.
    """
    pane = chat.pane
    pasted = "naïve 日本語 e\u0301 🎉"
    raw = pasted.encode("utf-8")
    # Cut inside the 3-byte 本 and the 4-byte 🎉: each send-keys is one write.
    cut1 = raw.index("本".encode()) + 1
    cut2 = raw.index("🎉".encode()) + 2
    for piece in (raw[:cut1], raw[cut1:cut2], raw[cut2:]):
        pane.keys("-H", *(f"{byte:02x}" for byte in piece))
    shows(pane, f"> {pasted}|")
    pane.keys("Enter")
    chat.bob.out.wait_for(f"\\[ alice: \\] {pasted}$")


def test_who_marks_yourself(chat: Chat) -> None:
    chat.pane.type("/who")
    chat.pane.keys("Enter")
    screen = chat.pane.wait_for_text("* In the room:")
    listed = [line for line in screen if "* In the room:" in line]
    assert len(listed) == 1 and "alice (you)" in listed[0], screen
    assert "bob (127.0.0.1:" in listed[0]


def test_server_shutdown_is_explained(chat: Chat) -> None:
    chat.pane.type("typed but not sent")
    shows(chat.pane, "> typed but not sent|")
    assert chat.server.stop()
    screen = chat.pane.wait(
        lambda screen, _: any(re.fullmatch(r"exit=\d+", line.rstrip()) for line in screen))
    ended = [line.rstrip() for line in screen if line.strip()]
    at = ended.index("exit=1")
    assert ended[at - 1] == "Disconnected from chat server: the server is shutting down", screen
    # The shell's prompt comes back on a restored terminal, after the reason.
    chat.pane.wait(lambda screen, cursor: screen[cursor[1]].rstrip() in ("$", "#"))
