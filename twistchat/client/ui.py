"""
The stdio chat interface: what the C{twistchat} command shows and reads.

Two front ends share L{ChatConsole} (formatting, commands):

  - L{LineInput}: stdin is a pipe or file; each line is a message, end of input
    leaves the room. Output is flushed line by line.
  - L{TerminalInput}: stdin is a terminal; Twisted conch's line editing keeps the
    line being typed intact while messages arrive above it.
"""

from __future__ import annotations

import time
import unicodedata
from typing import Any, Callable

from twisted.conch import recvline
from twisted.internet import defer
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from twistchat.client.api import ChatListener, ChatMessage, ChatSession, Member
from twistchat.errors import ProtocolError

HELP = """\
Commands:
  /who    list the members of the room
  /help   show this help
  /quit   leave the room (end of input does the same)
Anything else is sealed and sent to the room."""


def printable(text: str) -> str:
    """
    Make text from other members safe for a terminal: control and format
    characters (escape sequences, bidi overrides) are shown as escapes.
    """
    if text.isprintable():
        return text
    out = []
    for ch in text:
        category = unicodedata.category(ch)
        if category[0] == "C" or category in ("Zl", "Zp"):
            out.append(f"\\u{ord(ch):04x}" if ord(ch) > 0xFF else f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def show_addr(addr: str) -> str:
    return f"({addr})"


#: How a replayed message that the room key cannot open is shown.
UNREADABLE = "(unreadable: sealed under an earlier room password)"


def show_time(ts: float | None) -> str:
    """
    A server time as local C{[HH:MM]}, with the date when not today.
    """
    if ts is None:
        return "[--:--]"
    when = time.localtime(ts)
    if time.strftime("%Y-%m-%d", when) == time.strftime("%Y-%m-%d"):
        return time.strftime("[%H:%M]", when)
    return time.strftime("[%Y-%m-%d %H:%M]", when)


class ChatConsole(ChatListener):
    """
    Turns session events into lines of text and typed lines into actions.

    @param write: shows one line (without newline).
    @ivar warn: where a line that was not delivered is reported (stderr for
        piped input); None: with the other lines, through C{write}.
    @ivar undelivered: lines typed that were refused, by this client or by the
        server (at least that many: a server's rate notice counts one).
    """

    def __init__(self, write: Callable[[str], None]) -> None:
        self.write = write
        self.warn: Callable[[str], None] | None = None
        self.undelivered = 0
        # After /quit (or end of input), lines still read are not messages.
        self._leaving = False
        self.session: ChatSession | None = None
        self._in_history = False
        self.quit: defer.Deferred[str | None] = defer.Deferred()

    # --- events ---------------------------------------------------------------------

    def message_received(self, message: ChatMessage) -> None:
        if message.history:
            self._history_line(message, printable(message.text))
            return
        self._end_history()
        self.write(f"[ {message.sender}: ] {printable(message.text)}")

    def history_unreadable(self, message: ChatMessage) -> None:
        self._history_line(message, UNREADABLE)

    def history_end(self) -> None:
        self._end_history()

    def _history_line(self, message: ChatMessage, text: str) -> None:
        if not self._in_history:
            self._in_history = True
            self.write("--- history ---")
        self.write(f"{show_time(message.time)} [ {message.sender}: ] {text}")

    def _end_history(self) -> None:
        if self._in_history:
            self._in_history = False
            self.write("--- live ---")

    def member_joined(self, member: Member) -> None:
        self.write(f"* {member.name} {show_addr(member.addr)} entered the room")

    def member_left(self, member: Member) -> None:
        self.write(f"* {member.name} {show_addr(member.addr)} left the room")
        if self.session is not None and not self.session.members:
            self.write("* The room is empty.")

    def message_rejected(self, sender: str, reason: str) -> None:
        self.write(f"! A message from {sender} was rejected: {reason}")

    def notice(self, text: str) -> None:
        self.write(f"! Server: {printable(text)}")

    def message_refused(self, reason: str) -> None:
        self.not_sent(f"refused by the server: {printable(reason)}")

    def not_sent(self, reason: str) -> None:
        """
        Report a line that was not delivered, and count it.
        """
        self.undelivered += 1
        (self.warn or self.write)(f"! Not sent: {reason}")

    def reconnecting(self, attempt: int, delay: float, reason: str) -> None:
        # Say why the wait is longer than the attempt number makes it.
        flapping = self.session is not None and self.session.flapping > 0
        why = "; the connection keeps dropping" if flapping else ""
        if attempt == 1:
            self.write(f"* Connection lost: {printable(reason)}. "
                       f"Reconnecting in {delay:.1f} s (attempt 1{why})...")
        else:
            self.write(f"* Reconnect attempt {attempt - 1} failed: {printable(reason)}. "
                       f"Retrying in {delay:.1f} s (attempt {attempt}{why})...")

    def reconnected(self) -> None:
        assert self.session is not None
        queued = self.session.pending
        sending = f"; sending {queued} queued message(s)" if queued else ""
        self.write(f"* Reconnected: back in room {self.session.room!r}{sending}.")

    def disconnected(self, reason: str | None) -> None:
        if reason is not None:
            self.write(f"Disconnected from chat server: {printable(reason)}")
        if not self.quit.called:
            self.quit.callback(reason)

    # --- start ---------------------------------------------------------------------

    def joined(self, session: ChatSession) -> None:
        self.session = session
        self.write("connected — you can start sending messages (/help for commands)")
        self.show_members(session.members, initial=True)

    def show_members(self, members: list[Member], initial: bool = False) -> None:
        others = [m for m in members if self.session is None or m.name != self.session.name]
        if not others:
            self.write("* The room is empty." if initial else "* You are alone in the room.")
            return
        listed = ", ".join(f"{m.name} {show_addr(m.addr)}" for m in others)
        self.write(f"* In the room: {listed}")

    # --- input ---------------------------------------------------------------------

    def line_typed(self, line: str) -> None:
        line = line.rstrip("\r\n")
        if not line.strip() or self.session is None or self._leaving:
            return
        if line.startswith("/"):
            self.command(line)
            return
        try:
            self.session.send(line)
        except ValueError as e:
            self.not_sent(str(e))
        except ProtocolError as e:
            self.not_sent(e.message)
        else:
            if self.session.reconnecting:
                self.write(f"* Not connected: queued, to be sent after reconnecting "
                           f"({self.session.pending} waiting).")

    def command(self, line: str) -> None:
        assert self.session is not None
        word = line.split()[0].lower()
        if word in ("/quit", "/exit"):
            self.leave()
        elif word == "/help":
            for help_line in HELP.splitlines():
                self.write(help_line)
        elif word == "/who":
            try:
                d = self.session.who()
            except ProtocolError:
                self.write("! Not connected" + (": reconnecting" if self.session.reconnecting else ""))
                return
            d.addCallbacks(self.show_members, lambda f: None)
        else:
            self.write(f"! Unknown command {printable(word)}: type /help")

    def leave(self) -> None:
        """
        Leave the room; the quit Deferred fires when the connection is closed.
        """
        self._leaving = True
        if self.session is not None and not self.session.ended.called:
            self.session.leave()
        elif not self.quit.called:
            self.quit.callback(None)


class LineInput(LineReceiver):
    """
    stdin as a pipe: one message per line; end of input leaves the room.
    """

    delimiter = b"\n"
    MAX_LENGTH = 1 << 20

    def __init__(self, console: ChatConsole) -> None:
        self.console = console

    def lineReceived(self, line: bytes) -> None:
        self.console.line_typed(line.decode("utf-8", "replace"))

    def lineLengthExceeded(self, line: bytes) -> None:
        self.console.not_sent("line too long")
        return None

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._buffer:
            self.lineReceived(self._buffer)
            self._buffer = b""
        self.console.leave()


class TerminalInput(recvline.HistoricRecvLine):
    """
    stdin as a terminal: an editable input line with history; incoming lines are
    written above it without disturbing what is being typed.
    """

    ps = (b"> ", b"> ")

    def __init__(self, console: ChatConsole) -> None:
        super().__init__()
        self.console = console

    def connectionMade(self) -> None:
        super().connectionMade()
        self.keyHandlers[b"\x03"] = self.console.leave  # Ctrl-C
        self.keyHandlers[b"\x04"] = self._eof  # Ctrl-D

    def _eof(self) -> None:
        if not self.lineBuffer:
            self.console.leave()

    def initializeScreen(self) -> None:
        # Do not clear the screen: keep the welcome lines above the prompt.
        self.terminal.write(self.ps[self.pn])
        self.setInsertMode()

    def lineReceived(self, line: bytes) -> None:
        self.console.line_typed(line.decode("utf-8", "replace"))

    def show(self, text: str) -> None:
        """
        Print a line above the prompt, then redraw the prompt and the input.
        """
        typed = b"".join(self.lineBuffer)
        cursor = self.lineBufferIndex
        self.terminal.write(b"\r")
        self.terminal.eraseLine()
        self.terminal.write(text.encode("utf-8"))
        self.terminal.nextLine()
        self.terminal.write(self.ps[self.pn] + typed)
        if cursor < len(typed):
            self.terminal.cursorBackward(len(typed) - cursor)


def install_terminal(console: ChatConsole, write_plain: Callable[[str], None]) -> Any:
    """
    Put the terminal in raw mode with conch's line editing on stdin/stdout.

    @return: a function that restores the terminal.
    """
    import os
    import sys
    import termios
    import tty

    from twisted.conch.insults.insults import ServerProtocol
    from twisted.internet import stdio

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    holder: dict[str, TerminalInput] = {}

    def make() -> TerminalInput:
        holder["p"] = TerminalInput(console)
        return holder["p"]

    server = ServerProtocol(make)
    stdio.StandardIO(server)
    console.write = lambda text: holder["p"].show(text) if "p" in holder else write_plain(text)

    def restore() -> None:
        termios.tcsetattr(fd, termios.TCSANOW, saved)
        os.write(sys.stdout.fileno(), b"\r\n")

    return restore
