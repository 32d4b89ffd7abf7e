"""
``twistchat-passwd``: set a room's password by writing its verifier (help text: L{Options}).
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

from twisted.python import usage

from twistchat import __version__
from twistchat.config import DEFAULT_ROOM, PASSWORD_ENV, read_password_file
from twistchat.crypto.kdf import DEFAULT_PARAMS, ScryptParams, check_params
from twistchat.crypto.verifier import Verifier, make_verifier
from twistchat.errors import ConfigError, TwistchatError
from twistchat.redisurl import RedisURL, redis_url
from twistchat.server.verifiers import check_room, room_path, save_verifier


class Options(usage.Options):
    # Plain text, not the module docstring: help must not depend on docstrings
    # (gone under python -OO) nor show their markup.
    synopsis = ("Usage: twistchat-passwd [--room NAME] [--data-dir DIR | --output FILE] "
                "[--password-file FILE]")
    longdesc = (
        "Set a room's password by writing its verifier. The verifier (salt, scrypt "
        "cost, w0, L) lets the server check the password with SPAKE2+ but not recover "
        "it, nor derive the key that seals messages. Written into the server's data "
        "directory (DIR/rooms/NAME.json), it takes effect within 5 seconds, with no "
        "restart: a running server adds a new room, and for a changed password keeps "
        "the members already in and asks new logins for the new password. The password "
        f"is read from --password-file, ${PASSWORD_ENV}, a prompt, or the first line "
        "of standard input. With --redis URL --import-data-dir DIR, copy a stopped "
        "embedded server's rooms, decoy secret and stored history into Redis instead "
        "(no password is asked; see docs/operations.md)."
    )
    optParameters = [
        ["room", "r", DEFAULT_ROOM, "Room whose password to set."],
        ["data-dir", "d", "twistchat-data", "The server's data directory."],
        ["output", "o", None, "Write the verifier to this file instead ('-': stdout)."],
        ["password-file", None, None, "Read the password from this file's first line."],
        ["scrypt-log-n", None, 15, "scrypt cost: N = 2**this (15 to 20).", int],
        ["redis", None, None,
         "Store the verifier in this Redis (redis://HOST:PORT/DB) instead: every "
         "node of a --redis group serves the change within 5 seconds."],
        ["redis-password-file", None, None, "File whose first line is the Redis password."],
        ["import-data-dir", None, None,
         "With --redis: copy this (stopped) embedded server's rooms, decoy secret and "
         "stored history into Redis, before any node runs on it; refused if a room "
         "already has history there."],
    ]

    def opt_version(self) -> None:
        """
        Display twistchat's version and exit.
        """
        print(f"twistchat-passwd (twistchat) {__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        try:
            check_room(self["room"])
            self.params = ScryptParams(
                2 ** self["scrypt-log-n"], DEFAULT_PARAMS.r, DEFAULT_PARAMS.p
            )
            check_params(self.params)
        except TwistchatError as e:
            raise usage.UsageError(e.message) from None


def read_password(options: Options) -> str:
    if options["password-file"]:
        password = read_password_file(options["password-file"])
    elif os.environ.get(PASSWORD_ENV):
        password = os.environ[PASSWORD_ENV]
    elif sys.stdin.isatty():
        password = getpass.getpass(f"New password for room {options['room']!r}: ")
        if getpass.getpass("Again: ") != password:
            raise ConfigError("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise ConfigError("empty password")
    return password


def main(argv: list[str]) -> int:
    options = Options()
    try:
        options.parseOptions(argv)
        # The Redis options are checked before the password is asked for.
        redis = redis_url(options["redis"], options["redis-password-file"])
        if options["import-data-dir"] is not None:
            if redis is None:
                raise usage.UsageError("--import-data-dir needs --redis")
            return _import(redis, Path(options["import-data-dir"]))
        verifier = make_verifier(read_password(options), options["room"], options.params)
        if redis is not None:
            return _to_redis(options, redis, verifier)
        if options["output"] == "-":
            json.dump(verifier.to_json(), sys.stdout, indent=1)
            sys.stdout.write("\n")
            return 0
        path = Path(options["output"]) if options["output"] else room_path(
            Path(options["data-dir"]), options["room"]
        )
        save_verifier(path, verifier)
    except usage.UsageError as e:
        sys.stderr.write(f"twistchat-passwd: {e}\n")
        return 2
    except (TwistchatError, OSError) as e:
        sys.stderr.write(f"twistchat-passwd: {getattr(e, 'message', e)}\n")
        return 1
    sys.stderr.write(
        f"twistchat-passwd: wrote the verifier of room {options['room']!r} to {path}\n"
    )
    return 0


def _to_redis(options: Options, url: RedisURL, verifier: Verifier) -> int:
    """
    Store C{verifier} in Redis at C{url} (runs the reactor, with
    L{task.react}, once).
    """
    from twisted.internet import task

    from twistchat.server.redisnode import probe, publish_room

    try:
        # The check twistd makes at start: one line for Redis unreachable or
        # refusing the password, before txredisapi would retry it quietly.
        probe(url)
    except ConfigError as e:
        sys.stderr.write(f"twistchat-passwd: {e.message}\n")
        return 1

    def store(reactor: Any) -> Any:
        def report(error: str | None) -> None:
            if error:
                sys.stderr.write(
                    f"twistchat-passwd: cannot store the verifier in {url}: {error}\n"
                )
                raise SystemExit(1)
            sys.stderr.write(
                f"twistchat-passwd: stored the verifier of room {options['room']!r} in {url}\n"
            )

        return publish_room(url, verifier, reactor).addCallback(report)

    try:
        task.react(store)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0


def _import(url: RedisURL, data_dir: Path) -> int:
    """
    Copy C{data_dir} into Redis at C{url} (L{twistchat.server.redisimport}).

    @raise ConfigError: if the data directory cannot be read.
    """
    from twisted.internet import task

    from twistchat.server.redisimport import import_data_dir, read_data_dir
    from twistchat.server.redisnode import probe

    found = read_data_dir(data_dir)
    probe(url)

    def copy(reactor: Any) -> Any:
        def report(lines: list[str]) -> None:
            for line in lines:
                sys.stderr.write(f"twistchat-passwd: {line}\n")
            sys.stderr.write(f"twistchat-passwd: imported {data_dir} into {url}\n")

        def refused(failure: Any) -> None:
            error = getattr(failure.value, "subFailure", failure).value
            reason = getattr(error, "message", None) or str(error) or type(error).__name__
            sys.stderr.write(f"twistchat-passwd: {reason}\n")
            raise SystemExit(1)

        return import_data_dir(url, found, reactor).addCallbacks(report, refused)

    try:
        task.react(copy)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0


def run() -> None:
    sys.exit(main(sys.argv[1:]))
