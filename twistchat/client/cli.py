"""
The C{twistchat} command:

    twistchat [options] HOST PORT USERNAME
    twistchat [options] HOST PORT PASSWORD USERNAME     (warns: visible to others)

The password comes from C{--password-file}, the C{TWISTCHAT_PASSWORD}
environment variable, the command line, or a prompt, in that order.

Exit status: 0 after leaving the room (C{/quit} or end of input), 1 when the
connection fails or the server ends the session, 2 for unusable options.
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from twisted.internet import defer, task
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.python import usage
from twisted.python.failure import Failure

from twistchat.client.api import connect
from twistchat.client.trust import CertificateAuthority, TrustOnFirstUse
from twistchat.client.ui import ChatConsole, LineInput, install_terminal
from twistchat.config import DEFAULT_ROOM, PASSWORD_ENV, read_password_file
from twistchat.errors import ConfigError, TwistchatError


class Options(usage.Options):
    synopsis = "[options] HOST PORT [PASSWORD] USERNAME"
    longdesc = (
        "Join a twistchat room. Messages are sealed on this machine with a key "
        "derived from the room password; the server cannot read them. The password "
        f"is read from --password-file, ${PASSWORD_ENV}, or a prompt."
    )
    optParameters = [
        ["password-file", None, None, "File whose first line is the room password."],
        ["room", "r", DEFAULT_ROOM, "Room to join."],
        ["known-hosts", None, None,
         "File of pinned server fingerprints (default ~/.config/twistchat/known_hosts)."],
        ["ca", None, None,
         "Verify the server's certificate and host name against this CA file "
         "('system' for the system's CAs) instead of pinning its fingerprint."],
        ["timeout", None, 30.0, "Seconds allowed for connecting and logging in.", float],
    ]

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
        return os.environ[PASSWORD_ENV]
    if options["password"] is not None:
        err.write(
            "twistchat: warning: a password on the command line is visible to other "
            f"local users; prefer --password-file or ${PASSWORD_ENV}\n"
        )
        return str(options["password"])
    if stdin.isatty():
        password = getpass.getpass("Room password: ")
        if password:
            return password
    raise usage.UsageError(f"no password: use --password-file or ${PASSWORD_ENV}")


def describe(failure: Failure) -> str:
    """
    The reason shown after "Unable to connect:".
    """
    error = failure.value
    if isinstance(error, TwistchatError):
        return error.message
    if isinstance(error, DNSLookupError):
        return "host not found"
    if isinstance(error, defer.CancelledError):
        return "timed out"
    if isinstance(error, ConnectError):
        # osError is the errno (an int) when set: the OS's text is the message,
        # e.g. "Connection refused". Without one, the error's own description.
        text = error.args[0] if error.args and error.args[0] else error
        return str(text).strip().rstrip(".") or error.__class__.__name__
    return failure.getErrorMessage()


def say(out: TextIO) -> Any:
    def write(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    return write


async def main(reactor: Any, argv: list[str]) -> int:
    out, err = sys.stdout, sys.stderr
    options = Options()
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        err.write(f"twistchat: {e}\n{options}\n")
        return 2
    try:
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
    try:
        session = await connect(
            reactor, options["host"], options["port"], options["name"], password,
            room=options["room"], listener=console, trust=trust, timeout=options["timeout"],
        )
    except Exception:
        err.write(f"Unable to connect: {describe(Failure())}\n")
        err.flush()
        return 1
    del password
    if trust.first_use:
        write(f"* First connection to this server: its certificate fingerprint "
              f"{trust.fingerprint} is now pinned.")
    console.joined(session)
    restore = None
    if sys.stdin.isatty() and sys.stdout.isatty():
        restore = install_terminal(console, write)
    else:
        from twisted.internet import stdio

        stdio.StandardIO(LineInput(console))
    try:
        reason = await console.quit
    finally:
        if restore is not None:
            restore()
    if reason is not None:
        return 1
    write("Left the room.")
    return 0


def run(argv: list[str] | None = None) -> None:
    """
    Console-script entry point.
    """
    args = sys.argv[1:] if argv is None else argv

    def start(reactor: Any) -> defer.Deferred[None]:
        async def go() -> None:
            code = await main(reactor, args)
            if code:
                raise SystemExit(code)

        return defer.ensureDeferred(go())

    task.react(start)
