"""
The C{twistchat} command:

    twistchat [options] HOST PORT USERNAME
    twistchat [options] HOST PORT PASSWORD USERNAME     (warns: visible to others)

The password comes from C{--password-file}, the C{TWISTCHAT_PASSWORD}
environment variable, the command line, or a prompt, in that order.

Exit status: 0 after leaving the room (C{/quit} or end of input), 1 when the
connection fails or the server ends the session (with C{--reconnect}: for a
final reason, or after C{--reconnect-attempts} failed attempts; also when
leaving while reconnecting drops queued lines), 2 for unusable options, and 3
when stdin is not a terminal and the client left the room, but knows that some
lines were not delivered: refused by the client (too long; not connected and
the queue full), by the server (a rate notice), or never acknowledged by the
server (a leaving client waits up to a few seconds for the acknowledgements).
Each such line is reported on stderr as it happens (C{! Not sent: ...}).
"""

from __future__ import annotations

import binascii
import getpass
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from twisted.internet import defer, task
from twisted.python import usage
from twisted.python.failure import Failure

from twistchat import __version__
from twistchat.client.api import Reconnect, connect, describe
from twistchat.client.connector import ClientReactor
from twistchat.client.trust import CertificateAuthority, TrustOnFirstUse
from twistchat.client.ui import ChatConsole, LineInput, install_terminal
from twistchat.config import DEFAULT_ROOM, PASSWORD_ENV, read_password_file
from twistchat.errors import ConfigError

#: Exit status of a piped client that left the room knowing that some lines
#: were not delivered.
UNDELIVERED = 3


class Options(usage.Options):
    synopsis = "Usage: twistchat [options] HOST PORT [PASSWORD] USERNAME"
    longdesc = (
        "Join a twistchat room. Messages are sealed on this machine with a key "
        "derived from the room password; the server cannot read them. The password "
        f"is read from --password-file, ${PASSWORD_ENV}, or a prompt."
    )
    optParameters = [
        ["password-file", None, None, "File whose first line is the room password."],
        ["room", "r", DEFAULT_ROOM, "Room to join."],
        ["known-hosts", None, None,
         "File of pinned server fingerprints (default ~/.config/twistchat/known_hosts); "
         "pinned identity keys and transcript state are kept beside it."],
        ["identity", None, None,
         "File of your identity key (created on first use; default identity.json "
         "beside the known-hosts file)."],
        ["vouch", None, None,
         "A vouch for this device's identity key, made with /vouch on another device "
         "of yours in this room (base64, or @FILE to read it from a file): members "
         "who pinned that device pin this one as a new device of yours instead of "
         "warning of a changed key. Give it at each login."],
        ["ca", None, None,
         "Verify the server's certificate and host name against this CA file "
         "('system' for the system's CAs) instead of pinning its fingerprint."],
        ["timeout", None, 30.0,
         "Seconds allowed for the TCP connection, and again for TLS and the login.", float],
        ["reconnect-attempts", None, 0,
         "With --reconnect: give up after this many failed attempts in a row "
         "(0: never give up).", int],
        ["reconnect-max-delay", None, 60.0,
         "With --reconnect: longest wait between attempts (seconds).", float],
    ]
    optFlags = [
        ["reconnect", None,
         "When the connection drops for a reason that may pass (lost connection, "
         "server restart, ping timeout), log in again with exponential backoff "
         "(1 s doubling to --reconnect-max-delay, plus up to 1 s of jitter) and "
         "rejoin the room. Lines typed meanwhile are queued (at most 100) and "
         "sent after the rejoin."],
    ]

    def opt_version(self) -> None:
        """
        Display twistchat's version and exit.
        """
        print(f"twistchat {__version__}")
        raise SystemExit(0)

    def parseArgs(self, *args: str) -> None:
        if len(args) == 3:
            self["host"], port, self["name"] = args
            self["password"] = None
        elif len(args) == 4:
            self["host"], port, self["password"], self["name"] = args
        else:
            raise usage.UsageError("expected HOST PORT USERNAME (or HOST PORT PASSWORD USERNAME)")
        try:
            self["port"] = int(port)
        except ValueError:
            raise usage.UsageError(f"PORT must be a number, not {port!r}") from None
        if not 0 < self["port"] < 65536:
            raise usage.UsageError(f"PORT {self['port']} is out of range")

    def postOptions(self) -> None:
        if self["timeout"] <= 0:
            raise usage.UsageError("--timeout must be positive")
        if self["reconnect-attempts"] < 0:
            raise usage.UsageError("--reconnect-attempts must not be negative")
        if self["reconnect-max-delay"] < 1:
            raise usage.UsageError("--reconnect-max-delay must be at least 1 second")

    def vouch(self) -> bytes | None:
        """
        The C{--vouch} given, decoded.

        @raise usage.UsageError: it is not base64, or its file cannot be read.
        """
        value = self["vouch"]
        if not value:
            return None
        if value.startswith("@"):
            try:
                value = Path(value[1:]).read_text("utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise usage.UsageError(f"cannot read --vouch file {value[1:]}: {e}") from None
        try:
            return binascii.a2b_base64(value.strip(), strict_mode=True)
        except (binascii.Error, ValueError):
            raise usage.UsageError("--vouch is not a vouch (base64 text)") from None

    def reconnect_policy(self) -> Reconnect | None:
        if not self["reconnect"]:
            return None
        return Reconnect(
            max_delay=self["reconnect-max-delay"],
            max_attempts=self["reconnect-attempts"] or None,
        )


def read_password(options: Options, stdin: TextIO, err: TextIO) -> str:
    if options["password-file"]:
        try:
            password = read_password_file(options["password-file"])
        except ConfigError as e:
            raise usage.UsageError(e.message) from None
        if not password:
            raise usage.UsageError("the first line of --password-file is empty")
        return password
    if os.environ.get(PASSWORD_ENV):
        # Not needed again, nor by anything this process starts.
        return os.environ.pop(PASSWORD_ENV)
    if options["password"] is not None:
        err.write(
            "twistchat: warning: a password on the command line is visible to other "
            f"local users; prefer --password-file or ${PASSWORD_ENV}\n"
        )
        password, options["password"] = str(options["password"]), None
        return password
    if stdin.isatty():
        password = getpass.getpass("Room password: ")
        if password:
            return password
    raise usage.UsageError(f"no password: use --password-file or ${PASSWORD_ENV}")


def say(out: TextIO) -> Any:
    def write(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    return write


async def main(reactor: ClientReactor, argv: list[str]) -> int:
    out, err = sys.stdout, sys.stderr
    options = Options()
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        err.write(f"twistchat: {e}\n{options}\n")
        return 2
    try:
        vouch = options.vouch()
        password = read_password(options, sys.stdin, err)
    except usage.UsageError as e:
        err.write(f"twistchat: {e}\n")
        return 2
    if options["ca"]:
        trust: Any = CertificateAuthority(
            None if options["ca"] == "system" else Path(options["ca"])
        )
    else:
        trust = TrustOnFirstUse(
            Path(options["known-hosts"]) if options["known-hosts"] else None
        )
    write = say(out)
    console = ChatConsole(write)
    write(f"Welcome to twistchat! Joining room {options['room']!r} on "
          f"{options['host']}:{options['port']} as {options['name']}...")
    connecting = connect(
        reactor, options["host"], options["port"], options["name"], password,
        room=options["room"], listener=console, trust=trust, timeout=options["timeout"],
        reconnect=options.reconnect_policy(),
        identity=Path(options["identity"]) if options["identity"] else None,
        vouch=vouch,
    )
    # The library keeps the password only until scrypt has run, then derived
    # keys (twistchat.client.keyring); keep no reference here either.
    del password
    try:
        session = await connecting
    except Exception:
        err.write(f"Unable to connect: {describe(Failure())}\n")
        err.flush()
        return 1
    if trust.first_use:
        write(f"* First connection to this server: its certificate fingerprint "
              f"{trust.fingerprint} is now pinned.")
    console.joined(session)
    restore = None
    if sys.stdin.isatty() and sys.stdout.isatty():
        restore = install_terminal(console, write)
    else:
        from twisted.internet import stdio

        console.warn = say(err)
        stdio.StandardIO(LineInput(console))
    try:
        reason = await console.quit
    finally:
        if restore is not None:
            restore()
    if session.unsent and restore is None:
        err.write(f"! Not sent: {session.unsent} queued line(s): the session ended\n")
        err.flush()
    if reason is not None:
        return 1
    write("Left the room.")
    if console.undelivered and restore is None:
        return UNDELIVERED
    return 0


def run(argv: list[str] | None = None) -> None:
    """
    Console-script entry point.
    """
    args = sys.argv[1:] if argv is None else argv

    def start(reactor: ClientReactor) -> defer.Deferred[None]:
        async def go() -> None:
            code = await main(reactor, args)
            if code:
                raise SystemExit(code)

        return defer.ensureDeferred(go())

    task.react(start)
