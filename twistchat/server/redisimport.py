"""
Moving from the embedded mode to Redis: C{twistchat-passwd --redis URL
--import-data-dir DIR} copies a stopped embedded server's rooms and stored
history into Redis, for the nodes that start on it afterwards.

What is copied, and how:

  - each room's verifier (C{DIR/rooms/NAME.json}) into the rooms hash, unless
    Redis already has that room (C{HSETNX}: a room set with
    C{twistchat-passwd --redis} since is kept);
  - the decoy secret (C{DIR/decoy.key}), unless Redis has one, so that unknown
    rooms keep the salts they had;
  - each room's stored messages (C{history.sqlite3}), oldest first, as the
    entries a node would have written: the sealed message exactly as it was
    relayed (sender, session id, counter, ciphertext: the server never reads
    plaintext, and the history keeps its meaning), its server time, and a
    stream id made from that time, so the order is kept and C{--history-days}
    trims them as it would have. Only the newest L{DEFAULT_MAX_ENTRIES} of a
    room are copied (the stream's default size cap).

It refuses, before writing anything, when a node is running on this Redis
(it would relay the copied entries as new messages) or when a room to import
already has entries in its stream (a second run, or a room already served
through Redis: history cannot be merged into an order Redis has already
given). Nothing in the data directory is changed.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from twistchat import wire
from twistchat.crypto.verifier import Verifier
from twistchat.errors import ConfigError
from twistchat.redisurl import RedisURL
from twistchat.server.history import HISTORY_FILE, SCHEMA_VERSION, Row
from twistchat.server.redisnode import (
    DECOY_KEY,
    DEFAULT_MAX_ENTRIES,
    PREFIX,
    ROOMS_KEY,
    RedisLink,
    stream_key,
)
from twistchat.server.verifiers import DECOY_FILE, load_rooms

#: The origin of imported entries: no node's, so no node acknowledges them.
IMPORT_ORIGIN = "import"
#: Entries written per round trip.
BATCH = 200


@dataclass
class DataDir:
    """
    What an embedded server's data directory holds for Redis: its rooms'
    verifiers, its decoy secret (if any) and, per room, its stored messages
    oldest first.
    """

    verifiers: list[Verifier]
    decoy: bytes | None
    history: dict[str, list[Row]] = field(default_factory=dict)


def read_data_dir(data_dir: Path, max_entries: int = DEFAULT_MAX_ENTRIES) -> DataDir:
    """
    Read C{data_dir} (blocking; the server that uses it must be stopped).

    @raise ConfigError: if it is not a data directory, a verifier or the
        decoy secret cannot be read, or the history file cannot be read or
        comes from a newer twistchat.
    """
    if not (data_dir / DECOY_FILE).exists() and not (data_dir / "rooms").is_dir() \
            and not (data_dir / HISTORY_FILE).exists():
        raise ConfigError(f"{data_dir} is not a twistchat data directory "
                          "(no rooms/, decoy.key or history.sqlite3)")
    decoy = None
    if (data_dir / DECOY_FILE).exists():
        try:
            decoy = (data_dir / DECOY_FILE).read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read {data_dir / DECOY_FILE}: {e.strerror}") from None
        if len(decoy) != 32:
            raise ConfigError(f"{data_dir / DECOY_FILE} is not a decoy secret (32 bytes)")
    found = DataDir(load_rooms(data_dir), decoy)
    path = data_dir / HISTORY_FILE
    if not path.exists():
        return found
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            (version,) = conn.execute("SELECT version FROM schema_version").fetchone()
            if version > SCHEMA_VERSION:
                raise ConfigError(f"{path} comes from a newer twistchat (schema {version})")
            rooms = [r for (r,) in conn.execute("SELECT DISTINCT room FROM messages")]
            for room in sorted(rooms):
                rows = conn.execute(
                    "SELECT id, room, sender, ts, sid, n, ct FROM messages "
                    "WHERE room = ? ORDER BY id DESC LIMIT ?", (room, max_entries)).fetchall()
                found.history[room] = [Row(*r) for r in reversed(rows)]
        finally:
            conn.close()
    except sqlite3.Error as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
    return found


def entry_ids(rows: list[Row]) -> list[str]:
    """
    Stream ids for C{rows} (oldest first): their server time in milliseconds,
    kept strictly increasing (two rows in one millisecond, or a clock that
    stepped back, take the next sequence number), never C{0-0}.
    """
    ids: list[str] = []
    last = (0, 0)
    for row in rows:
        at = (max(int(row.ts * 1000), 0), 0)
        if at <= last:
            at = (last[0], last[1] + 1)
        ids.append(f"{at[0]}-{at[1]}")
        last = at
    return ids


def entry_fields(row: Row) -> list[Any]:
    """
    The fields of a message entry as a node writes them (C{relay}): kind,
    origin, the relayed C{msg} frame, server time.
    """
    frame = wire.encode("msg", **{"from": row.sender}, sid=row.sid, n=row.n, ct=row.ct)
    return ["k", "m", "o", IMPORT_ORIGIN, "f", frame, "ts", repr(row.ts)]


@defer.inlineCallbacks
def import_data_dir(url: RedisURL, found: DataDir, clock: IReactorTime) -> Any:
    """
    Copy C{found} into Redis at C{url}.

    @return: a Deferred firing with the lines to report (one per room, then
        the decoy secret's), or failing with L{ConfigError} (nothing written)
        when a node is running or a room already has stream entries.
    """
    link = RedisLink(url, clock)
    link.open()
    try:
        nodes = yield link.call("KEYS", PREFIX + "node:*")
        if nodes:
            raise ConfigError(
                f"{len(nodes)} node(s) are running on {url}: stop them before the import "
                "(they would relay the imported messages as new ones); nothing was imported")
        for room, rows in found.history.items():
            if not rows:
                continue
            count = int((yield link.call("XLEN", stream_key(room))))
            if count:
                raise ConfigError(
                    f"room {room!r} already has {count} entries in Redis ({stream_key(room)}): "
                    "history is imported only into rooms with none (was it imported "
                    "already?); nothing was imported")
        report: list[str] = []
        rooms = {v.room: v for v in found.verifiers}
        for room in sorted(set(rooms) | set(found.history)):
            parts = []
            verifier = rooms.get(room)
            if verifier is not None:
                added = yield link.call("HSETNX", ROOMS_KEY, room, json.dumps(verifier.to_json()))
                parts.append("verifier copied" if int(added) else
                             "verifier kept (Redis already had this room)")
            else:
                parts.append("no verifier in the data directory: add it with "
                             f"twistchat-passwd --redis URL --room {room}")
            rows = found.history.get(room, [])
            ids = entry_ids(rows)
            for start in range(0, len(rows), BATCH):
                yield defer.gatherResults([
                    link.call("XADD", stream_key(room), entry_id, *entry_fields(row))
                    for entry_id, row in zip(ids[start:start + BATCH],
                                             rows[start:start + BATCH], strict=True)
                ], consumeErrors=True)
            parts.append(f"{len(rows)} messages copied")
            report.append(f"room {room!r}: " + ", ".join(parts))
        if found.decoy is not None:
            set_it = yield link.call("SET", DECOY_KEY, found.decoy, "NX")
            report.append("decoy secret copied" if set_it else
                          "decoy secret kept (Redis already had one: unknown rooms get "
                          "the salts of the Redis group, not of this data directory)")
        return report
    finally:
        yield link.close()
