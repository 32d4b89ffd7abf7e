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

from twistchat.crypto.kdf import Verifier
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
    Write atomically (a temporary file renamed over the old one), owner-only.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(verifier.to_json(), f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_rooms(data_dir: Path) -> list[Verifier]:
    """
    Every room verifier stored in the data directory.
    """
    folder = data_dir / ROOMS_DIR
    if not folder.is_dir():
        return []
    return [load_verifier(p) for p in sorted(folder.glob("*.json"))]
