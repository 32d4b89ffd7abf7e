"""
Pinned identity keys: (server, room, name) -> the member's Ed25519 public key,
pinned on first sight, like known_hosts for people (docs/protocol.md, "Member
identity").

The file C{identities} beside C{known_hosts} has one line per (server, room,
name)::

    host:port  room  name  <64 hex public key>  pinned
    host:port  room  name  <64 hex public key>  changed <64 hex new key>

and one more for each further device of the name, vouched for by a key
already pinned for it (docs/protocol.md, section 12.8)::

    host:port  room  name  <64 hex device key>  device <64 hex voucher key>

with room and name percent-encoded. A key other than the pinned ones is kept
as C{changed} until the person accepts it (L{Pins.accept}), or a vouch by a
pinned key makes it another device; nothing is trusted silently. The file
is owner-only and replaced whole. Clients sharing a profile (two terminals)
update it one at a time: each change re-reads the file under an exclusive
lock (L{twistchat.crypto.keyfile.locked}), applies the pin rules to what is
there now (a pin another client added is kept, and decides: first pin wins)
and writes; reads pick up another client's pins when the file changed.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote, unquote

from twistchat.crypto.identity import PUBLIC_KEY_BYTES
from twistchat.crypto.keyfile import locked, read_private_file, write_private_file
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
    DEVICE = "a new device, vouched for by a pinned key: now pinned"
    CHANGED = "another key than the pinned one"


class Pin(NamedTuple):
    """
    The keys pinned for a name: the first one (C{key}), a changed key waiting
    to be accepted, and further devices as (device key, voucher key).
    """

    key: bytes
    changed: bytes | None = None
    devices: tuple[tuple[bytes, bytes], ...] = ()

    @property
    def keys(self) -> tuple[bytes, ...]:
        """
        Every key pinned for the name: the first, then each device's.
        """
        return (self.key, *(device for device, _ in self.devices))


def see(pin: Pin | None, key: bytes, voucher: bytes | None = None) -> tuple[Pin, Seen]:
    """
    Compare C{key} with C{pin}: the pin to keep and how the key compares. A
    key vouched for (the vouch checked) by C{voucher}, one of the pinned keys,
    becomes another device; a vouch by any other key is ignored.
    """
    if pin is None:
        return Pin(key), Seen.NEW
    if key in pin.keys:
        return pin, Seen.PINNED
    if voucher is not None and voucher in pin.keys:
        changed = None if pin.changed == key else pin.changed
        return Pin(pin.key, changed, (*pin.devices, (key, voucher))), Seen.DEVICE
    return Pin(pin.key, key, pin.devices), Seen.CHANGED


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
                other = bytes.fromhex(state[1]) if state[:1] in (["changed"], ["device"]) else None
                if len(bytes.fromhex(key)) != PUBLIC_KEY_BYTES or (
                    other is not None and len(other) != PUBLIC_KEY_BYTES
                ):
                    raise ValueError("bad key length")
                where = (server, unquote(room), unquote(name))
                if state[:1] == ["device"]:
                    assert other is not None
                    first = pins[where]  # the name's first line comes first
                    pins[where] = first._replace(
                        devices=(*first.devices, (bytes.fromhex(key), other)))
                else:
                    pins[where] = Pin(bytes.fromhex(key), other)
        except (UnicodeDecodeError, ValueError, IndexError, KeyError):
            raise ConfigError(f"pinned identities file {self.path} is damaged") from None
        return pins

    def _save(self, pins: dict[tuple[str, str, str], Pin]) -> None:
        lines = []
        for (server, room, name), pin in sorted(pins.items()):
            state = "pinned" if pin.changed is None else f"changed {pin.changed.hex()}"
            where = f"{server} {_encode(room)} {_encode(name)}"
            lines.append(f"{where} {pin.key.hex()} {state}\n")
            for device, voucher in pin.devices:
                lines.append(f"{where} {device.hex()} device {voucher.hex()}\n")
        write_private_file(self.path, "".join(lines).encode("utf-8"), replace=True)
        self._stamp = None
        self._current()

    def _update(self, change: Callable[[dict[tuple[str, str, str], Pin]], None]) -> None:
        """
        Apply C{change} to the pins as they are in the file now, under the
        lock, and write them if it changed any: what another client of the
        profile pinned meanwhile is kept.

        @raise ConfigError: the file cannot be locked, read or written.
        """
        with locked(self.path):
            self._stamp = None  # read it again, whatever its stamp says
            pins = dict(self._current())
            change(pins)
            if pins != self._cache:
                self._save(pins)

    def get(self, server: str, room: str, name: str) -> Pin | None:
        """
        The pin for (server, room, name), if any.

        @raise ConfigError: the file cannot be read or is damaged.
        """
        return self._current().get((server, room, name))

    def see(self, server: str, room: str, name: str, key: bytes,
            voucher: bytes | None = None) -> Seen:
        """
        Compare C{key} with the pin: pin it on first sight, note it as a
        change otherwise.

        @raise ConfigError: the file cannot be read or written.
        """
        return self.see_all(server, room, [(name, key)],
                            {(name, key): voucher} if voucher is not None else None)[0]

    def see_all(self, server: str, room: str, members: Iterable[tuple[str, bytes]],
                vouchers: Mapping[tuple[str, bytes], bytes] | None = None) -> list[Seen]:
        """
        L{see} for each (name, key) of C{members}, writing the file at most once.

        @param vouchers: (name, key) -> the key whose vouch for it was checked
            (L{twistchat.crypto.vouch.check_vouch}); it counts only if that key
            is pinned for the name.
        @raise ConfigError: the file cannot be read or written.
        """
        result: list[Seen] = []

        def change(pins: dict[tuple[str, str, str], Pin]) -> None:
            result.clear()
            for name, key in members:
                voucher = vouchers.get((name, key)) if vouchers else None
                pins[server, room, name], seen = see(pins.get((server, room, name)), key,
                                                     voucher)
                result.append(seen)

        members = list(members)
        current = self._current()
        if all((pin := current.get((server, room, name))) is not None and key in pin.keys
               for name, key in members):
            # Every key is pinned already (the common case, once per message):
            # nothing to write, no lock to take.
            return [Seen.PINNED] * len(members)
        self._update(change)
        return result

    def accept(self, server: str, room: str, name: str) -> bytes | None:
        """
        Pin the changed key of (server, room, name) in place of the old one
        and of every other device of the name (a change is a replacement).

        @return: the key now pinned, or None if no change was waiting.
        @raise ConfigError: the file cannot be read or written.
        """
        accepted: list[bytes] = []

        def change(pins: dict[tuple[str, str, str], Pin]) -> None:
            pin = pins.get((server, room, name))
            if pin is not None and pin.changed is not None:
                pins[server, room, name] = Pin(pin.changed)
                accepted.append(pin.changed)

        self._update(change)
        return accepted[0] if accepted else None
