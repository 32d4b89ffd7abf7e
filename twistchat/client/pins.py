"""
Pinned identity keys: (server, room, name) -> the member's Ed25519 public key,
pinned on first sight, like known_hosts for people (docs/protocol.md, "Member
identity").

The file C{identities} beside C{known_hosts} has one line per (server, room,
name)::

    host:port  room  name  <64 hex public key>  pinned
    host:port  room  name  <64 hex public key>  changed <64 hex new key>

with room and name percent-encoded. A key other than the pinned one is kept
as C{changed} until the person accepts it (L{Pins.accept}); nothing is
trusted silently. The file is owner-only and rewritten whole (re-read first,
so clients sharing a profile do not undo each other's pins).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote, unquote

from twistchat.crypto.identity import PUBLIC_KEY_BYTES
from twistchat.crypto.keyfile import read_private_file, write_private_file
from twistchat.errors import ConfigError

#: The pin file's name, beside known_hosts.
PINS_FILE = "identities"
#: Largest pin file read (bytes).
MAX_PINS_BYTES = 4 << 20


class Seen(enum.Enum):
    """
    How a key compares with the pin for its (server, room, name).
    """

    NEW = "first sight: now pinned"
    PINNED = "the pinned key"
    CHANGED = "another key than the pinned one"


class Pin(NamedTuple):
    key: bytes
    changed: bytes | None = None


def _encode(text: str) -> str:
    return quote(text, safe="")


class Pins:
    """
    The pin file of one profile.

    @param path: the file (C{identities} beside known_hosts).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cache: dict[tuple[str, str, str], Pin] = {}
        self._stamp: tuple[int, int, int] | None = None

    def _current(self) -> dict[tuple[str, str, str], Pin]:
        """
        The pins, read again only when the file changed (another client of
        the same profile may have pinned someone).
        """
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        except OSError as e:
            raise ConfigError(f"cannot read pinned identities file {self.path}: {e.strerror}"
                              ) from None
        if stamp is None:
            self._cache, self._stamp = {}, None
        elif stamp != self._stamp:
            self._cache, self._stamp = self._load(), stamp
        return self._cache

    def _load(self) -> dict[tuple[str, str, str], Pin]:
        try:
            data = read_private_file(self.path, MAX_PINS_BYTES, "pinned identities file")
        except FileNotFoundError:
            return {}
        pins: dict[tuple[str, str, str], Pin] = {}
        try:
            for line in data.decode("utf-8").splitlines():
                parts = line.split()
                if not parts or parts[0].startswith("#"):
                    continue
                server, room, name, key = parts[:4]
                state = parts[4:]
                changed = bytes.fromhex(state[1]) if state[:1] == ["changed"] else None
                pin = Pin(bytes.fromhex(key), changed)
                if len(pin.key) != PUBLIC_KEY_BYTES or (
                    changed is not None and len(changed) != PUBLIC_KEY_BYTES
                ):
                    raise ValueError("bad key length")
                pins[server, unquote(room), unquote(name)] = pin
        except (UnicodeDecodeError, ValueError, IndexError):
            raise ConfigError(f"pinned identities file {self.path} is damaged") from None
        return pins

    def _save(self, pins: dict[tuple[str, str, str], Pin]) -> None:
        lines = []
        for (server, room, name), pin in sorted(pins.items()):
            state = "pinned" if pin.changed is None else f"changed {pin.changed.hex()}"
            lines.append(f"{server} {_encode(room)} {_encode(name)} {pin.key.hex()} {state}\n")
        write_private_file(self.path, "".join(lines).encode("utf-8"), replace=True)
        self._stamp = None
        self._current()

    def get(self, server: str, room: str, name: str) -> Pin | None:
        """
        The pin for (server, room, name), if any.

        @raise ConfigError: the file cannot be read or is damaged.
        """
        return self._current().get((server, room, name))

    def see(self, server: str, room: str, name: str, key: bytes) -> Seen:
        """
        Compare C{key} with the pin: pin it on first sight, note it as a
        change otherwise.

        @raise ConfigError: the file cannot be read or written.
        """
        return self.see_all(server, room, [(name, key)])[0]

    def see_all(self, server: str, room: str, members: Iterable[tuple[str, bytes]]
                ) -> list[Seen]:
        """
        L{see} for each (name, key) of C{members}, writing the file at most once.

        @raise ConfigError: the file cannot be read or written.
        """
        pins = dict(self._current())
        result = []
        for name, key in members:
            pin = pins.get((server, room, name))
            if pin is None:
                pins[server, room, name] = Pin(key)
                result.append(Seen.NEW)
            elif pin.key == key:
                result.append(Seen.PINNED)
            else:
                if pin.changed != key:
                    pins[server, room, name] = Pin(pin.key, key)
                result.append(Seen.CHANGED)
        if pins != self._cache:
            self._save(pins)
        return result

    def accept(self, server: str, room: str, name: str) -> bytes | None:
        """
        Pin the changed key of (server, room, name) in place of the old one.

        @return: the key now pinned, or None if no change was waiting.
        @raise ConfigError: the file cannot be read or written.
        """
        pins = dict(self._current())
        pin = pins.get((server, room, name))
        if pin is None or pin.changed is None:
            return None
        pins[server, room, name] = Pin(pin.changed)
        self._save(pins)
        return pin.changed
