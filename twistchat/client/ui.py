"""
The stdio chat interface: what the C{twistchat} command shows and reads.

Two front ends share L{ChatConsole} (formatting, commands):

  - L{LineInput}: stdin is a pipe or file; each line is a message, end of input
    leaves the room. Output is flushed line by line.
  - L{TerminalInput}: stdin is a terminal; Twisted conch's line editing keeps the
    line being typed intact while messages arrive above it. It takes any Unicode
    a person types (UTF-8): the cursor moves and deletes by grapheme cluster
    (L{EditLine}), widths follow wcwidth's table (L{columns}).
"""

from __future__ import annotations

import base64
import codecs
import os
import select
import time
import unicodedata
from collections.abc import Callable
from typing import Any

import wcwidth
from twisted.conch import recvline
from twisted.internet import defer
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from twistchat.client.api import Alarm, ChatListener, ChatMessage, ChatSession, Member
from twistchat.crypto.vouch import DEFAULT_DAYS
from twistchat.errors import BadSignature, ConfigError, ProtocolError

HELP = """\
Commands:
  /who           list the members of the room
  /verify NAME   show your safety number with NAME (compare it in person)
  /safety        show the room's safety code (the same for everyone who sees
                 the same room key, members and keys)
  /accept NAME   trust NAME's new identity key after its safety number changed
  /key           show your identity key (to vouch for it from another device)
  /vouch KEY [DAYS]  vouch that identity key KEY (64 hex digits) is another
                 device of yours in this room, for DAYS days (default 30):
                 prints a vouch to give to that device (twistchat --vouch)
  /help          show this help
  /quit          leave the room (end of input does the same)
Anything else is signed, sealed and sent to the room."""


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
#: How a message sealed before identity keys is marked.
UNSIGNED = "(unsigned: sent before identity keys)"
#: How a message whose sender's key is not the pinned one is marked.
UNTRUSTED = "(NOT VERIFIED: key changed)"


def _sender(message: ChatMessage) -> str:
    if not message.signed:
        return f"{message.sender} {UNSIGNED}"
    if not message.trusted:
        return f"{message.sender} {UNTRUSTED}"
    return message.sender


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
        self.write(f"[ {_sender(message)}: ] {printable(message.text)}")

    def history_unreadable(self, message: ChatMessage) -> None:
        self._history_line(message, UNREADABLE)

    def history_end(self) -> None:
        self._end_history()

    def _history_line(self, message: ChatMessage, text: str) -> None:
        if not self._in_history:
            self._in_history = True
            self.write("--- history ---")
        self.write(f"{show_time(message.time)} [ {_sender(message)}: ] {text}")

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

    def member_key_changed(self, name: str, old: bytes, new: bytes) -> None:
        self.write(f"!!! WARNING: {name}'s safety number has changed. Someone else may be "
                   f"using the name {name}. Their messages are marked until you check the "
                   f"new number (/verify {name}) and type /accept {name}.")

    def member_new_device(self, name: str, key: bytes, voucher: bytes) -> None:
        self.write(f"* {name}: new device {key[:4].hex()} (vouched for by {name}'s device "
                   f"{voucher[:4].hex()})")

    def vouch_refused(self, name: str, key: bytes, reason: str) -> None:
        self.write(f"!!! {name}'s new key {key[:4].hex()} came with a vouch that was not "
                   f"accepted: {printable(reason)}")

    def transcript_alarm(self, alarm: Alarm) -> None:
        self.write(f"!!! {printable(alarm.text)}")

    def message_undelivered(self, count: int) -> None:
        for _ in range(count):
            self.not_sent("the server never acknowledged it (not delivered)")

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
        """
        On joining, who else is in the room; for C{/who}, everyone, yourself
        marked C{(you)}.
        """
        me = self.session.name if self.session is not None else None
        others = [m for m in members if m.name != me]
        if not others:
            self.write("* The room is empty." if initial else "* You are alone in the room.")
            return
        listed = ", ".join(
            f"{m.name} (you)" if m.name == me else f"{m.name} {show_addr(m.addr)}"
            for m in (others if initial else members)
        )
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
                self.write("! Not connected"
                           + (": reconnecting" if self.session.reconnecting else ""))
                return
            d.addCallbacks(self.show_members, lambda f: None)
        elif word in ("/verify", "/accept"):
            words = line.split()
            if len(words) != 2:
                self.write(f"! Usage: {word} NAME")
            elif word == "/verify":
                self.verify(words[1])
            else:
                self.accept(words[1])
        elif word == "/key":
            self.write(f"* Your identity key: {self.session.key.hex()}")
        elif word == "/vouch":
            self.vouch(line.split()[1:])
        elif word == "/safety":
            self.write(f"* Room safety code: {self.session.safety()} "
                       "(the same for everyone with the same room key, members and keys)")
        else:
            self.write(f"! Unknown command {printable(word)}: type /help")

    def verify(self, name: str) -> None:
        assert self.session is not None
        try:
            devices = self.session.devices(name)
            number = self.session.verify(name)
        except KeyError:
            self.write(f"! No identity key known for {printable(name)}")
            return
        except ConfigError as e:
            self.write(f"! {e.message}")
            return
        changed = " (CHANGED: not accepted yet)" if self.session.changed_key(name) else ""
        if len(devices) == 1:
            self.write(f"* Safety number with {name}{changed}: {number}")
            return
        # One number per device: compare the one of the device NAME uses.
        self.write(f"* Safety numbers with {name}{changed}, one per device:")
        in_use = self.session.in_use(name)
        for key in devices:
            mark = " (in use)" if key == in_use else ""
            self.write(f"*   device {key[:4].hex()}{mark}: {self.session.verify(name, key)}")

    def vouch(self, args: list[str]) -> None:
        assert self.session is not None
        try:
            if not 1 <= len(args) <= 2:
                raise ValueError("usage: /vouch KEY [DAYS]")
            key = bytes.fromhex(args[0])
            days = int(args[1]) if len(args) == 2 else DEFAULT_DAYS
            vouch = self.session.vouch_for(key, days)
        except (ValueError, BadSignature) as e:
            reason = e.message if isinstance(e, BadSignature) else str(e)
            self.write(f"! Cannot vouch: {printable(reason)}")
            return
        self.write(f"* Vouch for device {key[:4].hex()} as {self.session.name} in room "
                   f"{self.session.room!r}, for {days} days; on that device join with "
                   "--vouch followed by:")
        self.write(base64.b64encode(vouch).decode("ascii"))

    def accept(self, name: str) -> None:
        assert self.session is not None
        try:
            accepted = self.session.accept(name)
        except ConfigError as e:
            self.write(f"! {e.message}")
            return
        if accepted:
            self.write(f"* {name}'s new identity key is now trusted.")
        else:
            self.write(f"! No changed key waits to be accepted for {printable(name)}")

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


#: Control characters are never put into the input line, nor the bidi controls,
#: which would reorder what the person sees while typing (others see them escaped).
_NOT_TYPED = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def typeable(text: str) -> str:
    """
    What of decoded keyboard input goes into the input line.
    """
    return "".join(
        ch for ch in text if ch not in _NOT_TYPED and unicodedata.category(ch) != "Cc"
    )


def columns(text: str) -> int:
    """
    How many terminal columns C{text} takes by the width table twistchat follows:
    wcwidth's (Unicode 18 East Asian Width, emoji presentation and ZWJ sequences
    as one 2-column character, combining marks 0). Terminals differ on joined
    emoji: one that draws a ZWJ sequence as its parts makes it wider.
    """
    return max(0, wcwidth.wcswidth(text))


class EditLine:
    """
    The line being typed, without I/O: text and a cursor that stays on grapheme
    cluster boundaries (UAX #29 extended grapheme clusters, as segmented by
    wcwidth), so that moving and deleting take an accented letter, a flag or a
    joined emoji whole.

    @ivar text: the line.
    @ivar cursor: index into C{text}, always at a cluster boundary.
    """

    def __init__(self, text: str = "") -> None:
        self.text = text
        self.cursor = len(text)

    @property
    def before(self) -> str:
        return self.text[: self.cursor]

    @property
    def after(self) -> str:
        return self.text[self.cursor:]

    def _next(self, pos: int) -> int:
        """
        The cluster boundary after C{pos} (a boundary), or C{pos} at the end.
        """
        for cluster in wcwidth.iter_graphemes(self.text, start=pos):
            return pos + len(cluster)
        return pos

    def _boundary_at_or_after(self, pos: int) -> int:
        end = 0
        for cluster in wcwidth.iter_graphemes(self.text):
            if end >= pos:
                break
            end += len(cluster)
        return end

    def insert(self, text: str, overwrite: bool = False) -> None:
        """
        Insert C{text} at the cursor (in C{overwrite} mode replacing as many
        clusters as C{text} has) and put the cursor after it. Text that joins the
        cluster it lands in (a combining mark, a ZWJ, a skin tone) moves the
        cursor to the end of that cluster.
        """
        end = self.cursor
        if overwrite:
            for _ in wcwidth.iter_graphemes(text):
                end = self._next(end)
        self.text = self.text[: self.cursor] + text + self.text[end:]
        self.cursor = self._boundary_at_or_after(self.cursor + len(text))

    def left(self) -> bool:
        if not self.cursor:
            return False
        self.cursor = wcwidth.grapheme_boundary_before(self.text, self.cursor)
        return True

    def right(self) -> bool:
        if self.cursor == len(self.text):
            return False
        self.cursor = self._next(self.cursor)
        return True

    def backspace(self) -> bool:
        end = self.cursor
        if not self.left():
            return False
        self.text = self.text[: self.cursor] + self.text[end:]
        return True

    def delete(self) -> bool:
        end = self._next(self.cursor)
        if end == self.cursor:
            return False
        self.text = self.text[: self.cursor] + self.text[end:]
        return True

    def home(self) -> None:
        self.cursor = 0

    def end(self) -> None:
        self.cursor = len(self.text)

    def window(self, width: int) -> tuple[str, str]:
        """
        The part of the line to show in C{width} columns, around the cursor:
        (before the cursor, after it). The whole line when it fits.
        """
        if columns(self.text) < width:
            return self.before, self.after
        left = list(wcwidth.iter_graphemes(self.before))
        right = list(wcwidth.iter_graphemes(self.after))
        shown_left: list[str] = []
        used = 0
        # Up to two thirds of the room for what is before the cursor...
        while left and used + columns(left[-1]) <= (2 * width) // 3:
            used += columns(left[-1])
            shown_left.insert(0, left.pop())
        # ...and the rest for what follows it.
        shown_right: list[str] = []
        while right and used + columns(right[0]) < width:
            used += columns(right[0])
            shown_right.append(right.pop(0))
        return "".join(shown_left), "".join(shown_right)


class TerminalInput(recvline.HistoricRecvLine):
    """
    stdin as a terminal: an editable input line with history; incoming lines are
    written above it without disturbing what is being typed.

    Keys arrive from insults one byte at a time; they are decoded as UTF-8
    incrementally, so characters split across reads (a paste) arrive whole.
    The line is an L{EditLine}. Every change redraws the prompt and the line
    on its row, the text before the cursor, then (cursor saved) the text after
    it: the cursor lands where the terminal itself draws the cluster boundary,
    whatever its widths. A line wider than the terminal (by L{columns}) is shown
    as a window around the cursor.

    @param console: gets each line typed.
    @param width: the terminal's current number of columns.
    """

    ps = (b"> ", b"> ")
    HISTORY = 500

    def __init__(self, console: ChatConsole, width: Callable[[], int] = lambda: 80) -> None:
        super().__init__()
        self.console = console
        self._width = width
        self.line = EditLine()
        self.history: list[str] = []
        self._recalled = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def connectionMade(self) -> None:
        super().connectionMade()
        self.keyHandlers[b"\x03"] = self.console.leave  # Ctrl-C
        self.keyHandlers[b"\x04"] = self._eof  # Ctrl-D
        self.keyHandlers[b"\x08"] = self.handle_BACKSPACE  # Ctrl-H
        self.keyHandlers[b"\x01"] = self.handle_HOME  # Ctrl-A
        self.keyHandlers[b"\x05"] = self.handle_END  # Ctrl-E

    def _eof(self) -> None:
        if not self.line.text:
            self.console.leave()

    def initializeScreen(self) -> None:
        # Do not clear the screen: keep the welcome lines above the prompt.
        self.mode = "insert"
        self.draw()

    def setInsertMode(self) -> None:
        # The line is redrawn on every change: the terminal's own insert mode
        # (IRM) is never set, so nothing is left set when the client ends.
        self.mode = "insert"

    def setTypeoverMode(self) -> None:
        self.mode = "typeover"

    def terminalSize(self, width: int, height: int) -> None:
        self.draw()

    def draw(self) -> None:
        """
        Redraw the prompt and the input line on the cursor's row.
        """
        prompt = self.ps[self.pn]
        before, after = self.line.window(max(10, self._width() - len(prompt)))
        self.terminal.write(b"\r")
        self.terminal.eraseLine()
        self.terminal.write(prompt + before.encode("utf-8"))
        if after:
            self.terminal.saveCursor()
            self.terminal.write(after.encode("utf-8"))
            self.terminal.restoreCursor()

    # --- keys -------------------------------------------------------------------

    def keystrokeReceived(self, keyID: Any, modifier: Any) -> None:
        handler = self.keyHandlers.get(keyID)
        if handler is not None:
            self._decoder.reset()
            handler()
        elif isinstance(keyID, bytes):
            text = typeable(self._decoder.decode(keyID))
            if text:
                self.characterReceived(text, False)

    def characterReceived(self, ch: Any, moreCharactersComing: bool) -> None:
        text = ch.decode("utf-8", "replace") if isinstance(ch, bytes) else ch
        at_end = not self.line.after
        self.line.insert(text, overwrite=self.mode == "typeover")
        if at_end and columns(self.ps[self.pn].decode() + self.line.text) < self._width():
            # Appended: what the terminal would draw for the whole line.
            self.terminal.write(text.encode("utf-8"))
        else:
            self.draw()

    def _edit(self, changed: bool) -> None:
        if changed:
            self.draw()

    def handle_LEFT(self) -> None:
        self._edit(self.line.left())

    def handle_RIGHT(self) -> None:
        self._edit(self.line.right())

    def handle_HOME(self) -> None:
        self.line.home()
        self.draw()

    def handle_END(self) -> None:
        self.line.end()
        self.draw()

    def handle_BACKSPACE(self) -> None:
        self._edit(self.line.backspace())

    def handle_DELETE(self) -> None:
        self._edit(self.line.delete())

    def handle_TAB(self) -> None:
        self.characterReceived(" " * (self.TABSTOP - columns(self.line.before) % self.TABSTOP),
                               False)

    def handle_UP(self) -> None:
        if self.line.text and self._recalled == len(self.history):
            self._remember(self.line.text)
        if self._recalled > 0:
            self._recalled -= 1
            self.line = EditLine(self.history[self._recalled])
            self.draw()

    def handle_DOWN(self) -> None:
        if self._recalled < len(self.history) - 1:
            self._recalled += 1
            self.line = EditLine(self.history[self._recalled])
        else:
            self._recalled = len(self.history)
            self.line = EditLine()
        self.draw()

    def _remember(self, text: str) -> None:
        self.history.append(text)
        del self.history[: -self.HISTORY]

    def handle_RETURN(self) -> None:
        text = self.line.text
        if text:
            self._remember(text)
        self._recalled = len(self.history)
        self.line = EditLine()
        self.terminal.nextLine()
        self.draw()
        self.lineReceived(text)

    def lineReceived(self, line: str) -> None:
        self.console.line_typed(line)

    def show(self, text: str) -> None:
        """
        Print a line above the prompt, then redraw the prompt and the input.
        """
        self.terminal.write(b"\r")
        self.terminal.eraseLine()
        self.terminal.write(text.encode("utf-8"))
        self.terminal.nextLine()
        self.draw()

    def end(self) -> None:
        """
        Erase the prompt and the input line: the client is ending.
        """
        self.terminal.write(b"\r")
        self.terminal.eraseLine()


def _write_all(fd: int, data: bytes) -> None:
    """
    Write all of C{data} to C{fd}, waiting while the terminal takes no more.

    The terminal is written to directly, not through the reactor, so that what
    is shown is on the screen at once, in order with the terminal's restoring,
    and not lost in a buffer when the reactor stops (the client's last words).
    """
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        view = view[written:]


def install_terminal(console: ChatConsole, write_plain: Callable[[str], None]) -> Any:
    """
    Put the terminal in raw mode with conch's line editing on stdin/stdout.

    Keys are read through the reactor (L{stdio.StandardIO}); everything shown
    is written to the terminal at once (L{_write_all}).

    @return: a function that ends line editing and restores the terminal; lines
        written after it are plain again.
    """
    import sys
    import termios
    import tty

    from twisted.conch.insults.insults import ServerProtocol
    from twisted.internet import fdesc, stdio

    fd = sys.stdin.fileno()
    out = sys.stdout.fileno()
    saved = termios.tcgetattr(fd)

    def width() -> int:
        try:
            return os.get_terminal_size(out).columns
        except OSError:
            return 80

    class Terminal(ServerProtocol):
        def write(self, data: bytes) -> None:
            if data:
                _write_all(out, data.replace(b"\n", b"\r\n"))

    tty.setraw(fd)
    holder: dict[str, TerminalInput] = {}

    def make() -> TerminalInput:
        holder["p"] = TerminalInput(console, width)
        return holder["p"]

    stdio.StandardIO(Terminal(make))
    console.write = lambda text: holder["p"].show(text) if "p" in holder else write_plain(text)

    def restore() -> None:
        console.write = write_plain
        if "p" in holder:
            holder["p"].end()
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        # StandardIO made stdin and stdout non-blocking; the shell shares them.
        fdesc.setBlocking(fd)
        fdesc.setBlocking(out)

    return restore
