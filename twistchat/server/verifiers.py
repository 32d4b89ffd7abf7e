"""
Room verifier files: where they live in the data directory, how they are read and
written. A verifier file holds a room's salt, scrypt cost, w0 and L = w1*P; it
cannot open messages, and testing a password guess against it costs one scrypt.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from twistchat.crypto.keyfile import write_private_file
from twistchat.crypto.verifier import Verifier
from twistchat.errors import ConfigError

ROOMS_DIR = "rooms"

#: Room names double as file names, so they are kept to a safe ASCII set.
ROOM_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z")


def check_room(room: str) -> str:
    if not ROOM_PATTERN.match(room):
        raise ConfigError(
            f"invalid room name {room!r}: use 1 to 64 letters, digits, '_', '.' "
            "or '-', starting with a letter or digit"
        )
    return room


def room_path(data_dir: Path, room: str) -> Path:
    return data_dir / ROOMS_DIR / f"{check_room(room)}.json"


def load_verifier(path: Path) -> Verifier:
    try:
        data = json.loads(path.read_text("utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read verifier file {path}: {e.strerror}") from None
    except (ValueError, RecursionError):
        # RecursionError: nesting deeper than the JSON parser's recursion limit.
        raise ConfigError(f"verifier file {path} is not JSON") from None
    try:
        return Verifier.from_json(data)
    except ConfigError as e:
        raise ConfigError(f"verifier file {path}: {e.message}") from None


def save_verifier(path: Path, verifier: Verifier) -> None:
    """
    Write atomically and owner-only (L{write_private_file}: a fresh temporary
    file, mode 0600, never through a link, renamed over the old one; missing
    directories are made 0700).

    @raise ConfigError: if it cannot be written.
    """
    data = json.dumps(verifier.to_json(), indent=1) + "\n"
    write_private_file(path, data.encode("utf-8"), replace=True)


#: The secret that derives the salts shown for unknown rooms.
DECOY_FILE = "decoy.key"


def decoy_secret(data_dir: Path) -> bytes:
    """
    The data directory's decoy secret, created (owner-only) on first use.

    Unknown rooms get a salt derived from it, so that, like a real room's salt,
    it stays the same across restarts: otherwise a prober could tell unknown
    rooms from known ones by asking twice, across a restart.
    """
    path = data_dir / DECOY_FILE
    try:
        secret = path.read_bytes()
    except FileNotFoundError:
        secret = b""
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    if len(secret) == 32:
        return secret
    if secret:
        raise ConfigError(f"{path} is not a decoy secret (32 bytes); remove it to make a new one")
    secret = os.urandom(32)
    try:
        write_private_file(path, secret)
    except FileExistsError:
        # Another process made it first: use theirs.
        return decoy_secret(data_dir)
    return secret


def load_rooms(data_dir: Path) -> list[Verifier]:
    """
    Every room verifier stored in the data directory.
    """
    folder = data_dir / ROOMS_DIR
    if not folder.is_dir():
        return []
    return [load_verifier(p) for p in sorted(folder.glob("*.json"))]
