"""
The terminal client's line editing without a terminal: L{EditLine} (grapheme
clusters, widths) and L{TerminalInput} fed keys as insults delivers them, one
byte at a time, drawing onto a recording terminal. The same in a real terminal:
test_terminal.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from twistchat.client.ui import ChatConsole, EditLine, TerminalInput, columns
from twisted.conch.insults.insults import ServerProtocol
from twisted.internet.testing import StringTransport

FAMILY = "👩\u200d👩\u200d👧"  # a ZWJ sequence
FLAG = "🇯🇵"  # two regional indicators
THUMB = "👍🏽"  # a skin tone modifier
E_ACUTE = "e\u0301"  # a combining mark
HEART = "❤\ufe0f"  # VS16: emoji presentation


@pytest.mark.parametrize("cluster, width", [
    ("日", 2), (E_ACUTE, 1), ("é", 1), ("🎉", 2), (FAMILY, 2), (FLAG, 2), (THUMB, 2),
    (HEART, 2), ("—", 1), ("a", 1),
])
def test_one_cluster_one_step(cluster: str, width: int) -> None:
    line = EditLine(f"x{cluster}y")
    assert columns(cluster) == width
    assert line.left() and line.cursor == len(f"x{cluster}")
    assert line.left() and line.cursor == 1
    assert line.right() and line.before == f"x{cluster}"
    assert line.backspace() and (line.text, line.cursor) == ("xy", 1)
    line.insert(cluster)
    line.home()
    assert line.right() and line.delete() and line.text == "xy"


def test_ends_of_the_line() -> None:
    line = EditLine("")
    assert not line.left() and not line.right() and not line.backspace() and not line.delete()
    line = EditLine("日本")
    assert not line.right()
    line.home()
    assert not line.left() and not line.backspace()


def test_typing_joins_clusters() -> None:
    """
    Code points typed one after the other join the cluster before them.
    """
    line = EditLine()
    for ch in "ae\u0301" + FAMILY + "🇯" + "🇵":
        line.insert(ch)
    assert line.text == "a" + E_ACUTE + FAMILY + FLAG
    assert line.left() and line.after == FLAG
    assert line.left() and line.after == FAMILY + FLAG
    assert line.left() and line.after == E_ACUTE + FAMILY + FLAG
    # A combining mark typed inside the line joins the letter before the cursor.
    line.insert("\u0308")
    assert line.before == "a\u0308" and line.left() and line.cursor == 0


def test_overwrite_replaces_clusters() -> None:
    line = EditLine(f"{E_ACUTE}日{FAMILY}z")
    line.home()
    line.insert("ab", overwrite=True)
    assert (line.text, line.before) == (f"ab{FAMILY}z", "ab")


def test_window_around_the_cursor() -> None:
    line = EditLine("日本語" * 20)
    before, after = line.window(20)
    # The end of the line, in at most two thirds of the columns.
    assert line.text.endswith(before) and 10 <= columns(before) <= 13 and after == ""
    line.home()
    before, after = line.window(20)
    assert before == "" and columns(after) <= 19
    short = EditLine("日本語")
    assert short.window(20) == ("日本語", "")


class Shown(ChatConsole):
    def __init__(self) -> None:
        self.lines: list[str] = []
        super().__init__(self.lines.append)

    def line_typed(self, line: str) -> None:
        self.lines.append(line)


def terminal(width: int = 80) -> tuple[TerminalInput, Shown, StringTransport]:
    console = Shown()
    holder: list[TerminalInput] = []

    def make() -> TerminalInput:
        holder.append(TerminalInput(console, lambda: width))
        return holder[0]

    server = ServerProtocol(make)
    transport = StringTransport()
    server.makeConnection(transport)
    return holder[0], console, transport


def feed(transport_owner: TerminalInput, data: bytes) -> None:
    transport_owner.terminal.dataReceived(data)


def test_utf8_split_across_reads() -> None:
    editor, console, transport = terminal()
    text = "café ü 🎉 naïve — 日本語 " + FAMILY
    raw = text.encode("utf-8")
    for at in range(0, len(raw), 3):
        feed(editor, raw[at:at + 3])
    assert editor.line.text == text
    # Appended text is written as typed, after the prompt.
    assert transport.value().decode("utf-8").endswith("> " + text)
    feed(editor, b"\r")
    assert console.lines == [text]
    assert editor.line.text == "" and editor.history == [text]


def test_controls_and_bidi_are_not_typed() -> None:
    editor, _, _ = terminal()
    feed(editor, "a\x07b\u202ec\x9b".encode("utf-8"))
    assert editor.line.text == "abc"
    # Bytes that are not UTF-8 show as U+FFFD rather than vanish.
    feed(editor, b"\xff")
    assert editor.line.text == "abc\ufffd"


def test_history_recall_and_redraw() -> None:
    editor, console, transport = terminal()
    feed(editor, f"日{E_ACUTE}{FAMILY}\r".encode())
    transport.clear()
    feed(editor, b"\x1b[A")  # up
    assert editor.line.text == f"日{E_ACUTE}{FAMILY}"
    feed(editor, b"\x1b[D")  # left over the whole family
    assert editor.line.after == FAMILY
    # Redrawn: prompt and the text before the cursor, then (cursor saved) the rest.
    assert transport.value().decode("utf-8").endswith(
        f"\r\x1b[2K> 日{E_ACUTE}\x1b7{FAMILY}\x1b8")
    feed(editor, b"\x1b[B")  # down: back to an empty line
    assert editor.line.text == ""


def test_show_keeps_the_line_being_typed() -> None:
    editor, console, transport = terminal()
    feed(editor, "日本語".encode() + b"\x1b[D")
    transport.clear()
    editor.show("[ bob: ] hi")
    assert transport.value().decode("utf-8") == (
        "\r\x1b[2K[ bob: ] hi\r\n\r\x1b[2K> 日本\x1b7語\x1b8")


def test_help_is_plain_text_without_docstrings() -> None:
    """
    The commands' --help text does not come from docstrings: it is the same
    under python -OO, with the usage line first.
    """
    code = (
        "from twistchat.client.cli import Options as C; from twistchat.passwd import Options as P;"
        "print(str(C())); print('=====');print(str(P()))"
    )
    result = subprocess.run([sys.executable, "-OO", "-c", code], capture_output=True,
                            text=True, timeout=60, check=True)
    client, passwd = result.stdout.split("=====\n")
    assert client.startswith("Usage: twistchat [options] HOST PORT [PASSWORD] USERNAME\n")
    assert passwd.startswith("Usage: twistchat-passwd [--room NAME]")
    assert passwd.splitlines()[1] == "Options:"
    assert "Set a room's password by writing its verifier." in passwd
    for markup in ("``", "C{", "L{", "@"):
        assert markup not in passwd


@pytest.mark.parametrize("command", ["twistchat", "twistchat-passwd"])
def test_version_is_twistchats(command: str) -> None:
    from pathlib import Path

    from twistchat import __version__

    result = subprocess.run([str(Path(sys.executable).parent / command), "--version"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result
    assert result.stdout.strip().endswith(__version__)
    assert "Twisted" not in result.stdout
