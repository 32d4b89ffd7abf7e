"""
History: sealed messages kept in SQLite for members who join late.

Two parts:

  - L{HistoryStore}: the SQLite file, reached through C{twisted.enterprise.adbapi}
    with one connection in one thread, so operations run one at a time in the
    order they were asked for. WAL journal, C{synchronous=NORMAL}, a
    C{schema_version} table and numbered migrations.
  - L{History}: the relay path. A message is I{accepted} when its row is
    committed; only then is it relayed to the room and acknowledged to its
    sender (C{ack}, with its position in the room's order) (rows are written in batches:
    everything received while the previous write was in flight goes in the next
    transaction). A member who joins is sent the room's last N stored messages
    before any live one, with none lost or doubled in between. The newest rows
of each room a member joined lately are also kept in memory
(L{RecentRows}), so a join is usually answered without a trip to the
store's thread.

One order: a room's events (messages, joins, leaves, the room closing) go
through one queue in the order the server received them. A join, leave or
closing needs no storing, but it is released only behind the messages
received before it, so a sender's messages always come before its leave.

What is stored is what the server relays and already sees: room, sender name,
server time, session id, counter, ciphertext and its size. Never plaintext,
never a key. docs/protocol.md gives the schema and the durability promise.

When the store fails (locked, corrupt, disk full) or does not answer within
C{hold_limit} seconds, messages are relayed without waiting for it, the failure
is logged once, and the rows are still offered to the store (a bounded backlog)
so that storing resumes by itself when it recovers.
"""

from __future__ import annotations

import os
import sqlite3
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from twisted.enterprise import adbapi
from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall, IReactorCore, IReactorThreads, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from twistchat import wire
from twistchat.server.room import Member, Room, ack_frame

#: The history file's name in the data directory.
HISTORY_FILE = "history.sqlite3"
#: Messages sent to a member who joins, unless --history says otherwise.
DEFAULT_LIMIT = 50
#: Seconds a relay waits for the store before relaying without it.
HOLD_LIMIT = 2.0
#: Rows kept for the store while it is failing; older ones are dropped.
MAX_BACKLOG = 10000
#: Seconds between two retention runs.
RETENTION_INTERVAL = 3600.0
#: Bytes of history sent to one joining member, at most (the newest messages
#: that fit): a burst well under the slow-reader limit (Limits.max_send_queue).
MAX_HISTORY_BYTES = 512 * 1024
#: Seconds SQLite waits for a lock held by another process.
BUSY_TIMEOUT = 1.0
#: Ciphertext bytes of recent rows kept in memory over all rooms, at most
#: (L{RecentRows}); the rooms joined longest ago are forgotten first.
RECENT_BUDGET = 16 * 1024 * 1024

# Schema version N is reached by running MIGRATIONS[N - 1]; never edit a
# released migration, append a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            room TEXT NOT NULL,
            sender TEXT NOT NULL,
            ts REAL NOT NULL,
            sid BLOB NOT NULL,
            n INTEGER NOT NULL,
            ct BLOB NOT NULL,
            size INTEGER NOT NULL
        )""",
        "CREATE INDEX messages_room_id ON messages (room, id)",
        "CREATE INDEX messages_ts ON messages (ts)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(Exception):
    """
    The history file cannot be used (e.g. it comes from a newer twistchat).
    """


class Row(NamedTuple):
    """
    One stored message.
    """

    id: int
    room: str
    sender: str
    ts: float
    sid: bytes
    n: int
    ct: bytes


def migrate(conn: sqlite3.Connection) -> int:
    """
    Bring the schema of C{conn}'s database up to L{SCHEMA_VERSION}.

    @return: the version found before migrating (0 for a new file).
    @raise StoreError: if the file has a newer schema than this code knows.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        found = conn.execute("SELECT version FROM schema_version").fetchone()
        version = found[0] if found else 0
        if found is None:
            conn.execute("INSERT INTO schema_version (version) VALUES (0)")
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the history file has schema version {version}; this twistchat "
                f"knows versions up to {SCHEMA_VERSION}"
            )
        for statements in MIGRATIONS[version:]:
            for statement in statements:
                conn.execute(statement)
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return version


class PoolReactor(IReactorCore, IReactorThreads):
    """
    What L{adbapi.ConnectionPool} uses of its reactor (start and shutdown
    triggers, its thread pool). Only a type: every real reactor provides both.
    """


class HistoryStore:
    """
    The SQLite history file, used through an adbapi pool of one connection.

    @param pragmas: extra statements run on each new connection (tests use
        C{PRAGMA max_page_count} to make a small disk).
    """

    log = Logger()

    def __init__(
        self,
        path: Path,
        reactor: PoolReactor | None = None,
        pragmas: Sequence[str] = (),
        busy_timeout: float = BUSY_TIMEOUT,
    ) -> None:
        self.path = path
        self._reactor = reactor
        self._pragmas = tuple(pragmas)
        self._busy_timeout = busy_timeout
        self._pool: adbapi.ConnectionPool | None = None

    @property
    def pool(self) -> adbapi.ConnectionPool:
        """
        The pool, made at first use (not while the service is only built).
        """
        if self._pool is None:
            kwargs: dict[str, Any] = {}
            if self._reactor is not None:
                kwargs["cp_reactor"] = self._reactor
            self._pool = adbapi.ConnectionPool(
                "sqlite3",
                str(self.path),
                check_same_thread=False,
                cp_min=1,
                cp_max=1,
                cp_noisy=False,
                cp_openfun=self._prepare,
                **kwargs,
            )
        return self._pool

    def _prepare(self, conn: sqlite3.Connection) -> None:
        # Runs in the pool's thread on every new connection. Owner-only: the
        # -wal and -shm files SQLite makes next to it take the same mode.
        os.chmod(self.path, 0o600)
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"cannot use WAL mode (journal mode is {mode})")
        conn.execute("PRAGMA synchronous = NORMAL")
        for pragma in self._pragmas:
            conn.execute(pragma)
        migrate(conn)

    def open(self) -> defer.Deferred[None]:
        """
        Connect and migrate now (it would otherwise happen at the first use).
        """
        d: defer.Deferred[None] = self.pool.runInteraction(lambda txn: None)
        return d

    def append(
        self, rows: Sequence[tuple[str, str, float, bytes, int, bytes]]
    ) -> defer.Deferred[list[int]]:
        """
        Store (room, sender, ts, sid, n, ct) rows in one transaction.

        @return: a Deferred firing with their row ids, once committed.
        """
        d: defer.Deferred[list[int]] = self.pool.runInteraction(_append, list(rows))
        return d

    def recent(self, room: str, limit: int) -> defer.Deferred[list[Row]]:
        """
        The last C{limit} messages of C{room}, oldest first.
        """
        d: defer.Deferred[list[Row]] = self.pool.runInteraction(_recent, room, limit)
        return d

    def expire(self, before: float) -> defer.Deferred[int]:
        """
        Delete messages stored before server time C{before}; fires with the count.
        """
        d: defer.Deferred[int] = self.pool.runInteraction(_expire, before)
        return d

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


#: Rows per INSERT statement: 7 parameters each stays under SQLite's oldest
#: limit of 999 parameters per statement.
ROWS_PER_INSERT = 128
_INSERT = "INSERT INTO messages (room, sender, ts, sid, n, ct, size) VALUES "


def _append(txn: Any, rows: list[tuple[str, str, float, bytes, int, bytes]]) -> list[int]:
    # One statement per ROWS_PER_INSERT rows, not one per row: a third less
    # CPU per row, and one release of the GIL per statement, not per row.
    # Rows one statement inserts into this AUTOINCREMENT table get
    # consecutive ids (one writer, inside one transaction), the last of which
    # is lastrowid.
    ids: list[int] = []
    for start in range(0, len(rows), ROWS_PER_INSERT):
        chunk = rows[start:start + ROWS_PER_INSERT]
        params: list[Any] = []
        for room, sender, ts, sid, n, ct in chunk:
            params += (room, sender, ts, sid, n, ct, len(ct))
        txn.execute(_INSERT + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(chunk)), params)
        last = txn.lastrowid
        ids.extend(range(last - len(chunk) + 1, last + 1))
    return ids


def _recent(txn: Any, room: str, limit: int) -> list[Row]:
    txn.execute(
        "SELECT id, room, sender, ts, sid, n, ct FROM messages "
        "WHERE room = ? ORDER BY id DESC LIMIT ?",
        (room, limit),
    )
    return [Row(*r) for r in reversed(txn.fetchall())]


def _expire(txn: Any, before: float) -> int:
    txn.execute("DELETE FROM messages WHERE ts < ?", (before,))
    return int(txn.rowcount)


def history_frame(row: Row) -> bytes:
    """
    The C{msg} frame (with its length prefix) that replays C{row}.
    """
    return wire.prefixed(wire.encode(
        "msg", **{"from": row.sender}, sid=row.sid, n=row.n, ct=row.ct, ts=row.ts, hist=True
    ))


@dataclass(eq=False, slots=True)
class _Entry:
    """
    One event of a room on its way to its members: a message (stored first),
    a presence frame, or an action on each member (the room closing).
    """

    room: Room
    #: The member it comes from, who does not get it (None: everyone does).
    sender: Member | None
    #: The frame, length prefix included, as every recipient gets it.
    data: bytes | None
    #: The row to store (messages only).
    row: tuple[str, str, float, bytes, int, bytes] | None = None
    #: The message (messages only), acknowledged to its sender when relayed.
    message: wire.Message | None = None
    #: Who gets it, if fixed when it was received (presence: the members then,
    #: so that a later joiner, whose welcome lists the members, never gets
    #: it). None: the room's members when it is released.
    audience: list[Member] | None = None
    #: Done to each recipient after the frame, if any.
    action: Callable[[Member], None] | None = None
    #: Its row id, once stored.
    id: int | None = None
    #: It may go out once every event before it has: its write has finished
    #: (stored or failed), the store is failing, or it needs no storing.
    ready: bool = False

    def recipients(self) -> list[Member]:
        """
        Who gets it now: never its sender, nor a member who left meanwhile.
        """
        if self.audience is None:
            return self.room.recipients(self.sender)
        return [m for m in self.audience if m in self.room]

    def give(self, member: Member) -> None:
        if self.data is not None:
            member.deliver(self.data)
        if self.action is not None:
            self.action(member)


@dataclass(eq=False, slots=True)
class _Kept:
    """
    One room's rows in L{RecentRows}.
    """

    #: Oldest first.
    rows: deque[Row] = field(default_factory=deque)
    #: Their ciphertext bytes.
    size: int = 0


class RecentRows:
    """
    The newest stored rows of the rooms members joined lately, as the store
    would answer a join now.

    A room is known once the store has answered a join in it: that answer
    holds every row committed before it (the store runs one operation at a
    time, in order), and every row committed after it is L{add}ed here as its
    write finishes. A room keeps its newest C{limit} rows whose ciphertexts
    fit in C{max_bytes} (a join is never sent more); all rooms together keep
    at most C{budget} ciphertext bytes, forgetting the room joined longest ago
    first.
    """

    def __init__(self, limit: int, max_bytes: int, budget: int = RECENT_BUDGET) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        self.budget = budget
        self._rooms: OrderedDict[str, _Kept] = OrderedDict()
        #: Ciphertext bytes kept over all rooms.
        self.size = 0
        #: Rows stored before this time are deleted (L{expire}).
        self.before = float("-inf")

    def __contains__(self, room: str) -> bool:
        return room in self._rooms

    def rows(self, room: str) -> list[Row]:
        """
        The rows of C{room} (a known one), oldest first; it counts as joined
        now.
        """
        self._rooms.move_to_end(room)
        return list(self._rooms[room].rows)

    def learn(self, room: str, rows: Sequence[Row]) -> None:
        """
        The store's answer to a join in C{room}: its newest C{rows}, oldest
        first.
        """
        self.forget(room)
        self._rooms[room] = _Kept()
        self.add(room, rows)

    def add(self, room: str, rows: Sequence[Row]) -> None:
        """
        Rows just committed to C{room}, oldest first (nothing happens if the
        room is not known).
        """
        kept = self._rooms.get(room)
        if kept is None:
            return
        for row in rows:
            if row.ts < self.before:
                # Written while the deletion was asked for: it runs after
                # the write, and deletes it.
                continue
            kept.rows.append(row)
            kept.size += len(row.ct)
            self.size += len(row.ct)
        while kept.rows and (len(kept.rows) > self.limit or kept.size > self.max_bytes):
            self._drop_oldest(kept)
        while self.size > self.budget:
            self.forget(next(iter(self._rooms)))

    def forget(self, room: str) -> None:
        """
        Stop keeping C{room}'s rows (the next join in it asks the store).
        """
        kept = self._rooms.pop(room, None)
        if kept is not None:
            self.size -= kept.size

    def forget_all(self) -> None:
        """
        Stop keeping any room's rows (what retention deleted stays deleted).
        """
        self._rooms.clear()
        self.size = 0

    def expire(self, before: float) -> None:
        """
        Drop the rows stored before C{before}, as the store deletes them.
        """
        self.before = max(self.before, before)
        for kept in self._rooms.values():
            while kept.rows and kept.rows[0].ts < before:
                self._drop_oldest(kept)

    def _drop_oldest(self, kept: _Kept) -> None:
        size = len(kept.rows.popleft().ct)
        kept.size -= size
        self.size -= size


@dataclass(eq=False)
class _Joiner:
    """
    A member who joined and waits for history; live events wait with it.
    """

    member: Member
    held: list[_Entry] = field(default_factory=list)
    timer: IDelayedCall | None = None


class History:
    """
    Stores relayed messages and replays them to members who join later.

    @param limit: messages replayed to a member who joins (0: none).
    @param keep_days: age in days after which messages are deleted (0: never).
    """

    log = Logger()

    def __init__(
        self,
        store: HistoryStore,
        clock: IReactorTime,
        limit: int = DEFAULT_LIMIT,
        keep_days: float = 0,
        hold_limit: float = HOLD_LIMIT,
        max_backlog: int = MAX_BACKLOG,
        max_bytes: int = MAX_HISTORY_BYTES,
    ) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.clock = clock
        self.limit = limit
        self.keep_days = keep_days
        self.hold_limit = hold_limit
        self.max_backlog = max_backlog
        # Received, in order, waiting for their write (or an earlier one) to
        # finish before being relayed.
        self._queue: deque[_Entry] = deque()
        self._releasing = False
        # Not yet handed to the store.
        self._unsubmitted: deque[_Entry] = deque()
        self._writing = False
        self._flush_call: IDelayedCall | None = None
        self._write_timer: IDelayedCall | None = None
        self._idle: list[defer.Deferred[None]] = []
        #: Why the store is not used to hold back relays, or None when healthy.
        self.failing: str | None = None
        #: Messages that were relayed but could not be stored.
        self.unstored = 0
        self._unstored_logged = 0
        self._joiners: dict[Room, dict[Member, _Joiner]] = {}
        self._retention: task.LoopingCall | None = None
        #: The newest rows of rooms joined lately, answering joins without
        #: the store's thread.
        self.recent = RecentRows(limit, max_bytes)
        # False from a store failure until the store is next idle and
        # healthy: meanwhile, messages may have been relayed before their
        # rows were written, and only the store knows where they fall.
        self._recent_usable = True

    # --- life cycle -------------------------------------------------------------

    def start(self) -> None:
        self.store.open().addCallbacks(self._opened, self._open_failed)
        if self.keep_days > 0:
            self._retention = task.LoopingCall(self.expire)
            self._retention.clock = self.clock
            self._retention.start(RETENTION_INTERVAL, now=True)

    def _opened(self, _: Any) -> None:
        self.log.info(
            "history: {path} open, replaying up to {limit} messages to members who join{keep}",
            path=str(self.store.path),
            limit=self.limit,
            keep=f", keeping {self.keep_days:g} days" if self.keep_days else "",
        )

    def _open_failed(self, failure: Failure) -> None:
        self._fail(f"cannot open {self.store.path}: {_reason(failure)}")

    def stop(self) -> defer.Deferred[None]:
        """
        Write what is accepted, then close the store.
        """
        if self._retention is not None and self._retention.running:
            self._retention.stop()
        d: defer.Deferred[None] = defer.Deferred()
        self._idle.append(d)
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if not self._writing:
            self._write()  # fires d now if nothing is left to write

        def close(_: Any) -> None:
            self.store.close()

        return d.addCallback(close)

    def _check_idle(self) -> None:
        if self._writing or self._unsubmitted:
            return
        if self.failing is None:
            self._recent_usable = True
        idle, self._idle = self._idle, []
        for d in idle:
            d.callback(None)

    # --- relaying -----------------------------------------------------------------

    def relay(self, room: Room, sender: Member, frame: bytes, message: wire.Message) -> None:
        """
        Accept one sealed message from C{sender}: store it, then relay C{frame}
        (after the room's events received before it).
        """
        fields = message.fields
        row = (room.name, sender.name, self.clock.seconds(),
               fields["sid"], fields["n"], fields["ct"])
        entry = _Entry(room, sender, wire.prefixed(frame), row, message)
        self._unsubmitted.append(entry)
        if self.failing is not None:
            self._trim_backlog()
            entry.ready = True
        self._enqueue(entry)
        if self._flush_call is None and not self._writing:
            self._flush_call = self.clock.callLater(0, self._write)

    def announce(self, room: Room, member: Member, frame: bytes) -> None:
        """
        Tell the room's other members that C{member} joined or left (C{frame}),
        after the messages received before; nothing is stored.

        It goes to those who are members now: a member who joins later was
        welcomed with the member list, which already counts this change.
        """
        audience = [m for m in room.members if m is not member]
        self._enqueue(_Entry(room, member, wire.prefixed(frame), audience=audience, ready=True))

    def then(self, room: Room, action: Callable[[Member], None]) -> None:
        """
        Do C{action} to each member of C{room} once the room's events received
        before are relayed (to a member still waiting for its history: after
        that history and what is held for it).
        """
        self._enqueue(_Entry(room, None, None, action=action, ready=True))

    def _enqueue(self, entry: _Entry) -> None:
        self._queue.append(entry)
        self._release()

    def _trim_backlog(self) -> None:
        while len(self._unsubmitted) > self.max_backlog:
            self._unsubmitted.popleft()
            self.unstored += 1

    def _write(self) -> None:
        self._flush_call = None
        if self._writing or not self._unsubmitted:
            self._check_idle()
            return
        batch = list(self._unsubmitted)
        self._unsubmitted.clear()
        self._writing = True
        if self.failing is None:
            self._write_timer = self.clock.callLater(self.hold_limit, self._write_late)
        # Only relay() queues entries here, each with its row.
        d = self.store.append([e.row for e in batch if e.row is not None])
        # First hand the store the next batch (what came while this one was
        # written), then relay this one: the store commits batch k+1 while
        # the reactor relays batch k. Still one write at a time, in order.
        d.addBoth(self._write_done)
        d.addCallbacks(self._written, self._write_failed,
                       callbackArgs=(batch,), errbackArgs=(batch,))

    def _written(self, ids: list[int], batch: list[_Entry]) -> None:
        recent = self.recent
        known: dict[str, list[Row]] = {}
        for entry, row_id in zip(batch, ids):
            entry.id = row_id
            entry.ready = True
            row = entry.row
            if row is not None and row[0] in recent:
                known.setdefault(row[0], []).append(Row(row_id, *row))
        for room_name, rows in known.items():
            recent.add(room_name, rows)
        if self.failing is not None:
            self.log.warn(
                "history: storing again; {count} messages were relayed but not stored",
                count=self.unstored,
            )
            self.failing = None
            self._unstored_logged = self.unstored
            self._check_idle()  # the memory of recent rows may be used again
        self._release()

    def _write_failed(self, failure: Failure, batch: list[_Entry]) -> None:
        for entry in batch:
            entry.ready = True
        self.unstored += len(batch)
        self._fail(_reason(failure))

    def _write_done(self, result: Any) -> Any:
        """
        A write finished (C{result}: its ids or its failure, passed on):
        start the next one at once, with everything received meanwhile.
        """
        self._writing = False
        if self._write_timer is not None and self._write_timer.active():
            self._write_timer.cancel()
        self._write_timer = None
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self._write()  # also fires the stop() waiters when nothing is left
        return result

    def _write_late(self) -> None:
        self._write_timer = None
        self._fail(f"no answer within {self.hold_limit:g} seconds")

    def _fail(self, reason: str) -> None:
        """
        Stop holding relays back for the store, and say so once.
        """
        self._recent_usable = False
        self.recent.forget_all()
        if self.failing is None:
            self.failing = reason
            self.log.error(
                "history: the store failed ({reason}); relaying live messages "
                "without storing them until it recovers",
                reason=reason,
            )
        for entry in self._queue:
            entry.ready = True
        self._release()

    def _release(self) -> None:
        """
        Relay the events at the head of the queue that may go, in order.

        Not re-entered: an event that a delivery causes (a slow reader
        dropped, so its leave) joins the end of the queue and goes after the
        one being delivered.
        """
        if self._releasing:
            return
        self._releasing = True
        try:
            while self._queue and self._queue[0].ready:
                self._deliver(self._queue.popleft())
        finally:
            self._releasing = False

    def _deliver(self, entry: _Entry) -> None:
        room = entry.room
        joiners = self._joiners.get(room)
        live = entry.recipients()
        if joiners:
            # Someone waits for history: hold the event for them, in order.
            waiting = [m for m in live if m in joiners]
            for member in waiting:
                joiners[member].held.append(entry)
            if waiting:
                live = [m for m in live if m not in joiners]
        if entry.data is not None:
            # Through the room, which may batch it (in order) with the next.
            # A message is accepted (stored, or the store is failing): its
            # sender is told as the others are sent it (a sender that has
            # left ignores it).
            ack = None
            if entry.message is not None and entry.sender is not None:
                ack = (entry.sender, ack_frame(room, entry.message))
            room.send_to(live, entry.data, ack)
        if entry.action is not None:
            room.flush()  # what the room sent before goes first
            for member in live:
                entry.action(member)

    # --- late joiners -----------------------------------------------------------------

    def joined(self, room: Room, member: Member) -> None:
        """
        C{member} has just joined C{room}: send it the room's history, then
        live messages.

        The query runs after every write asked for before it (one connection,
        in order), so it sees every message relayed to the room before the
        member joined. Events relayed meanwhile are held for the member and
        sent after the history, in order (a message unless the history
        already holds it).
        """
        if self.limit <= 0:
            return
        if self._recent_usable and room.name in self.recent:
            # Every row committed so far is known here; what is not committed
            # yet is relayed to this member live, after this.
            self._replay(room, member, self.recent.rows(room.name), ())
            return
        joiner = _Joiner(member)
        self._joiners.setdefault(room, {})[member] = joiner
        joiner.timer = self.clock.callLater(self.hold_limit, self._history_late, room, joiner)
        d = self.store.recent(room.name, self.limit)
        d.addCallbacks(self._history_ready, self._history_failed,
                       callbackArgs=(room, joiner), errbackArgs=(room, joiner))

    def _take_joiner(self, room: Room, joiner: _Joiner) -> bool:
        joiners = self._joiners.get(room, {})
        if joiners.get(joiner.member) is not joiner:
            return False  # already given up on
        del joiners[joiner.member]
        if not joiners:
            self._joiners.pop(room, None)
        if joiner.timer is not None and joiner.timer.active():
            joiner.timer.cancel()
        joiner.timer = None
        return joiner.member in room

    def _history_ready(self, rows: list[Row], room: Room, joiner: _Joiner) -> None:
        if self._recent_usable:
            self.recent.learn(room.name, rows)
        if self._take_joiner(room, joiner):
            self._replay(room, joiner.member, rows, joiner.held)

    def _replay(self, room: Room, member: Member, rows: list[Row],
                held: Sequence[_Entry]) -> None:
        """
        Send C{member} the newest of C{rows} (C{room}'s) that fit, then the
        events C{held} for it that the rows do not hold.
        """
        frames: list[bytes] = []
        size = 0
        try:
            for row in reversed(rows):  # the newest that fit in max_bytes
                frame = history_frame(row)
                size += len(frame)
                if size > self.max_bytes:
                    break
                frames.append(frame)
        except Exception as e:
            # A row the store gave back that cannot be sent (a damaged or
            # hand-edited file): no history, but the held live messages go on.
            self.log.warn(
                "history: none sent to {name} in room {room!r}: a stored row is invalid ({reason})",
                name=member.name, room=room.name, reason=str(e) or type(e).__name__,
            )
            rows, frames = [], []
        if frames:
            notice = wire.encode(
                "notice", code="history", text=f"{len(frames)} earlier messages replayed"
            )
            frames.reverse()
            frames.append(wire.prefixed(notice))
            member.deliver(b"".join(frames))  # one write, however many
        newest = rows[-1].id if rows else 0
        shown = {row.id for row in rows}
        for entry in held:
            # Held messages stored before the query ran are in the history, or
            # older than all of it; the rest are newer or were never stored.
            # Presence is never stored, so it always goes.
            if entry.id is not None and (entry.id in shown or entry.id < newest):
                continue
            entry.give(member)

    def _history_failed(self, failure: Failure, room: Room, joiner: _Joiner) -> None:
        self.log.warn(
            "history: none sent to {name} in room {room!r}: {reason}",
            name=joiner.member.name, room=room.name, reason=_reason(failure),
        )
        self._release_joiner(room, joiner)

    def _history_late(self, room: Room, joiner: _Joiner) -> None:
        joiner.timer = None
        self.log.warn(
            "history: none sent to {name} in room {room!r}: no answer within {limit:g} s",
            name=joiner.member.name, room=room.name, limit=self.hold_limit,
        )
        self._release_joiner(room, joiner)

    def _release_joiner(self, room: Room, joiner: _Joiner) -> None:
        if self._take_joiner(room, joiner):
            for entry in joiner.held:
                entry.give(joiner.member)

    # --- retention -----------------------------------------------------------------

    def expire(self) -> defer.Deferred[None]:
        """
        Delete messages older than C{keep_days} (run periodically).
        """
        before = self.clock.seconds() - self.keep_days * 86400
        self.recent.expire(before)

        def done(count: int) -> None:
            if count:
                self.log.info("history: deleted {count} messages older than {days:g} days",
                              count=count, days=self.keep_days)

        def failed(failure: Failure) -> None:
            self.log.warn("history: retention failed: {reason}", reason=_reason(failure))

        return self.store.expire(before).addCallbacks(done, failed)


def _reason(failure: Failure) -> str:
    """
    A one-line reason for a store failure (no traceback: these are expected).
    """
    error = failure.value
    name = type(error).__name__
    return f"{name}: {error}" if str(error) else name


__all__ = [
    "DEFAULT_LIMIT",
    "HISTORY_FILE",
    "History",
    "HistoryStore",
    "MIGRATIONS",
    "Row",
    "SCHEMA_VERSION",
    "StoreError",
    "history_frame",
    "migrate",
]
