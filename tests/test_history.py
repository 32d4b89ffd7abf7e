"""
The history store on a real SQLite file: storing, ordering, replay to late
joiners, retention, and a store that fails (full, locked, corrupt, hung).
Time-dependent parts run on task.Clock; the store's thread is real.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twistchat import errors, wire
from twistchat.client import TrustOnFirstUse, connect
from twistchat.client.api import ChatMessage
from twistchat.crypto.verifier import make_verifier
from twistchat.server.history import (
    HISTORY_FILE,
    ROWS_PER_INSERT,
    SCHEMA_VERSION,
    History,
    HistoryStore,
    RecentRows,
    Row,
)
from twistchat.server.limits import Limits
from twistchat.server.room import Room, Rooms
from twistchat.server.service import ChatServerFactory, ChatService
from twistchat.server.tls import server_options
from twistchat.server.verifiers import ROOMS_DIR, load_rooms, room_path, save_verifier
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.logger import globalLogPublisher

from .conftest import PASSWORD, Recorder, deferLater
from .memory import MemoryStore

SECRET = "the eagle lands at midnight 4711"


class Peer:
    """
    A room member that records the frames it is given.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.addr = "127.0.0.1:1"
        self.key = bytes(32)
        self.vouch = b""
        self.got: list[wire.Message] = []
        #: The acknowledgements it was sent: (counter, position in the room).
        self.acks: list[tuple[int, int]] = []

    def deliver(self, data: bytes) -> None:
        # One write may hold several whole frames (a join's history), never part of one.
        while data:
            length = int.from_bytes(data[:4], "big")
            assert 4 + length <= len(data), "a frame cut across writes"
            message = wire.decode(data[4:4 + length], wire.FROM_SERVER)
            data = data[4 + length:]
            if message.type == "ack":
                self.acks.append((message["n"], message["seq"]))
            else:
                self.got.append(message)

    def messages(self) -> list[tuple[int, bool]]:
        """
        (counter, replayed?) of each msg received, in order.
        """
        return [(m["n"], m.get("hist", False)) for m in self.got if m.type == "msg"]


SID = secrets.token_bytes(16)


def send(history: History, room: Room, sender: Peer, n: int, size: int = 48) -> None:
    ct = bytes([n % 256]) * size
    message = wire.decode(wire.encode("send", sid=SID, n=n, ct=ct), wire.FROM_CLIENT)
    frame = wire.encode("msg", **{"from": sender.name}, sid=SID, n=n, ct=ct)
    history.relay(room, sender, frame, message)


async def until(test: Any, timeout: float = 10, clock: task.Clock | None = None) -> None:
    """
    Wait (really) until C{test()} holds, advancing C{clock} by 0 meanwhile so
    that writes scheduled on it run.
    """
    deadline = reactor.seconds() + timeout
    while not test():
        if reactor.seconds() > deadline:
            raise AssertionError("condition not reached in time")
        if clock is not None:
            clock.advance(0)
        await deferLater(0.002)


@pytest.fixture
def log_events() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if "history:" in event.get("log_format", ""):
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


@pytest.fixture
def room(verifier: Any) -> Room:
    return Room(verifier)


class Setup:
    def __init__(self, path: Path, clock: task.Clock, **kw: Any) -> None:
        store_kw = {k: kw.pop(k) for k in ("pragmas", "busy_timeout") if k in kw}
        self.store = HistoryStore(path, **store_kw)
        self.history = History(self.store, clock, **kw)
        self.history.start()

    async def stop(self) -> None:
        await self.history.stop()


@pytest_twisted.async_yield_fixture
async def made(tmp_path: Path) -> Any:
    """
    Make History objects on a file in tmp_path; close them all at the end.
    """
    made: list[Setup] = []

    def make(clock: task.Clock, name: str = "history.sqlite3", **kw: Any) -> Setup:
        setup = Setup(tmp_path / name, clock, **kw)
        made.append(setup)
        return setup

    yield make
    for setup in made:
        await setup.stop()


# --- the store --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_store_order_limit_and_rooms(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.sqlite3")
    try:
        rows = [("main", "alice", 10.0 + i, SID, i, bytes([i]) * 48) for i in range(1, 8)]
        rows.insert(3, ("other", "bob", 12.5, SID, 99, b"x" * 48))
        ids = await store.append(rows)
        assert ids == sorted(ids) and len(set(ids)) == len(rows)
        recent = await store.recent("main", 3)
        assert [r.n for r in recent] == [5, 6, 7]
        assert all(r.room == "main" and r.sender == "alice" and r.sid == SID for r in recent)
        assert [r.n for r in await store.recent("main", 100)] == [1, 2, 3, 4, 5, 6, 7]
        assert [r.n for r in await store.recent("other", 100)] == [99]
        assert await store.recent("nothing", 10) == []
        assert await store.expire(13.0) == 3  # alice's 1 and 2, bob's 99
        assert [r.n for r in await store.recent("main", 100)] == [3, 4, 5, 6, 7]
        assert await store.recent("other", 100) == []
    finally:
        store.close()
    db = sqlite3.connect(tmp_path / "h.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    assert db.execute("SELECT size FROM messages WHERE n = 7").fetchone() == (48,)
    db.close()


@pytest_twisted.ensureDeferred
async def test_append_gives_each_row_its_own_id(tmp_path: Path) -> None:
    """
    A batch larger than one INSERT statement takes (several statements), and
    one after every row was deleted: the ids returned are the rows' ids in
    the file, in order, never reused.
    """
    path = tmp_path / "h.sqlite3"

    def stored() -> list[tuple[int, int]]:
        db = sqlite3.connect(path)
        try:
            return db.execute("SELECT id, n FROM messages ORDER BY id").fetchall()
        finally:
            db.close()

    store = HistoryStore(path)
    try:
        count = 2 * ROWS_PER_INSERT + 3
        rows = [("main" if n % 3 else "other", f"m{n}", 1.0, SID, n, bytes([n % 256]) * (n % 50))
                for n in range(count)]
        ids = await store.append(rows)
        assert stored() == list(zip(ids, range(count)))
        assert len(set(ids)) == count
        assert await store.expire(2.0) == count  # every row, the newest too
        later = await store.append([("main", "alice", 3.0, SID, n, b"x") for n in range(5)])
        assert stored() == list(zip(later, range(5)))
        assert min(later) > max(ids)
    finally:
        store.close()


@pytest_twisted.ensureDeferred
async def test_reopen_keeps_rows_and_version(tmp_path: Path) -> None:
    for n in (1, 2):
        store = HistoryStore(tmp_path / "h.sqlite3")
        try:
            await store.append([("main", "alice", 1.0, SID, n, b"m" * 48)])
            assert [r.n for r in await store.recent("main", 10)] == list(range(1, n + 1))
        finally:
            store.close()


@pytest_twisted.ensureDeferred
async def test_newer_schema_is_refused_and_relay_goes_on(
    tmp_path: Path, made: Any, room: Room, log_events: list[Any]
) -> None:
    db = sqlite3.connect(tmp_path / "history.sqlite3")
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (99)")
    db.commit()
    db.close()
    clock = task.Clock()
    setup = made(clock)
    alice, bob = Peer("alice"), Peer("bob")
    room.join(alice)
    room.join(bob)
    await until(lambda: setup.history.failing is not None, clock=clock)
    assert "schema version 99" in setup.history.failing
    send(setup.history, room, alice, 1)
    assert bob.messages() == [(1, False)]  # relayed at once: the store is failing
    errors = [e for e in log_events if e["log_level"].name == "error"]
    assert len(errors) == 1


# --- relaying through the store ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_relayed_only_once_stored(made: Any, room: Room) -> None:
    clock = task.Clock()
    setup = made(clock)
    alice, bob = Peer("alice"), Peer("bob")
    room.join(alice)
    room.join(bob)
    for n in range(1, 6):
        send(setup.history, room, alice, n)
    assert bob.messages() == []  # not before the write is committed
    assert alice.acks == []  # nor acknowledged
    await until(lambda: len(bob.messages()) == 5, clock=clock)
    assert bob.messages() == [(n, False) for n in range(1, 6)]
    assert alice.messages() == []  # never to the sender
    # Acknowledged as relayed, each with its place in the room's order.
    assert alice.acks == [(n, n) for n in range(1, 6)]
    assert bob.acks == []
    rows = await setup.store.recent(room.name, 10)
    assert [r.n for r in rows] == [1, 2, 3, 4, 5]
    assert all(r.sender == "alice" for r in rows)


def memory_history(clock: task.Clock, hold: bool = False,
                   **kw: Any) -> tuple[History, MemoryStore]:
    """
    History on an in-memory store (the store is not what these tests test);
    with C{hold}, the store answers only when the test says, its open
    already answered.
    """
    store = MemoryStore(hold=hold)
    history = History(store, clock, **kw)  # type: ignore[arg-type]
    history.start()
    if hold:
        store.answer("open")
    return history, store


def stored_by_alice(room: Room, count: int, limit: int) -> tuple[History, MemoryStore,
                                                                 task.Clock, Peer]:
    """
    History on a held store, and alice in C{room} with messages 1 to
    C{count} sent and stored.
    """
    clock = task.Clock()
    history, store = memory_history(clock, hold=True, limit=limit)
    alice = Peer("alice")
    room.join(alice)
    for n in range(1, count + 1):
        send(history, room, alice, n)
    clock.advance(0)
    store.answer("append")
    return history, store, clock, alice


def test_late_joiner_gets_history_then_live(room: Room) -> None:
    history, store, clock, alice = stored_by_alice(room, 5, limit=3)

    carol = Peer("carol")
    room.join(carol)
    history.joined(room, carol)
    send(history, room, alice, 6)  # accepted while carol's query is queued
    clock.advance(0)
    store.answer()  # the query, then 6's write: in the order asked, as SQLite
    store.answer()
    assert carol.messages() == [(3, True), (4, True), (5, True), (6, False)]
    notice = [m for m in carol.got if m.type == "notice"]
    assert notice and notice[0]["code"] == "history"
    replayed = [m for m in carol.got if m.type == "msg" and m.get("hist")]
    assert all(m["from"] == "alice" and m["sid"] == SID for m in replayed)
    assert all(isinstance(m["ts"], float) for m in replayed)
    assert not history._joiners


def test_history_bounded_in_bytes(room: Room) -> None:
    clock = task.Clock()
    history, _ = memory_history(clock, limit=50, max_bytes=5000)
    alice, carol = Peer("alice"), Peer("carol")
    room.join(alice)
    for n in range(1, 11):
        send(history, room, alice, n, size=1024)  # about 1.5 KiB a frame
    clock.advance(0)
    room.join(carol)
    history.joined(room, carol)
    assert carol.messages() == [(8, True), (9, True), (10, True)]
    assert carol.got[-1]["text"] == "3 earlier messages replayed"


@pytest_twisted.ensureDeferred
async def test_join_while_writes_are_in_flight(made: Any, room: Room) -> None:
    """
    Messages accepted before the join but written after it, or written before
    the query but relayed after the join, reach the joiner exactly once, in order.
    """
    clock = task.Clock()
    setup = made(clock)
    history = setup.history
    alice = Peer("alice")
    room.join(alice)
    send(history, room, alice, 1)
    clock.advance(0)  # message 1's write is in flight
    send(history, room, alice, 2)  # waits for that write
    carol = Peer("carol")
    room.join(carol)
    history.joined(room, carol)  # the query queues behind the write of 1
    send(history, room, alice, 3)
    await until(lambda: len(carol.messages()) >= 3, clock=clock)
    # A message sent now comes after anything still due to carol: once it is
    # there, nothing was doubled or lost before it.
    send(history, room, alice, 4)
    await until(lambda: (4, False) in carol.messages(), clock=clock)
    assert carol.messages() == [(1, True), (2, False), (3, False), (4, False)]


def test_next_batch_is_written_while_the_last_one_is_relayed(room: Room) -> None:
    """
    When a write commits, what came in meanwhile goes to the store at once,
    before the committed batch is relayed (no turn of the clock between): the
    store writes batch k+1 while batch k goes out. Still one write at a time,
    each batch relayed only once stored, in order.
    """
    clock = task.Clock()
    history, store = memory_history(clock, hold=True)
    alice = Peer("alice")
    room.join(alice)
    pending_at_delivery: list[list[str]] = []

    class Watcher(Peer):
        def deliver(self, data: bytes) -> None:
            pending_at_delivery.append([name for name, _, _ in store.pending])
            super().deliver(data)

    bob = Watcher("bob")
    room.join(bob)
    send(history, room, alice, 1)
    clock.advance(0)  # message 1's write is in flight
    send(history, room, alice, 2)
    send(history, room, alice, 3)
    assert [name for name, _, _ in store.pending] == ["append"]  # one write at a time
    store.answer()  # 1 is committed: 2 and 3 go to the store, then 1 is relayed
    assert bob.messages() == [(1, False)]
    assert pending_at_delivery == [["append"]]
    assert [r.n for r in store.rows] == [1]  # 2 and 3 not stored: not relayed
    store.answer()
    assert bob.messages() == [(1, False), (2, False), (3, False)]
    assert [r.n for r in store.rows] == [1, 2, 3]
    assert alice.acks == [(1, 1), (2, 2), (3, 3)]
    assert store.pending == deque()


def test_history_off_for_limit_zero(room: Room) -> None:
    clock = task.Clock()
    history, store = memory_history(clock, limit=0)
    alice, carol = Peer("alice"), Peer("carol")
    room.join(alice)
    send(history, room, alice, 1)
    clock.advance(0)
    room.join(carol)
    history.joined(room, carol)
    send(history, room, alice, 2)
    clock.advance(0)
    assert carol.messages() == [(2, False)]
    assert [r.n for r in store.rows] == [1, 2]


def test_joiner_who_leaves_before_history(room: Room) -> None:
    clock = task.Clock()
    history, store = memory_history(clock, hold=True)
    alice, carol = Peer("alice"), Peer("carol")
    room.join(alice)
    send(history, room, alice, 1)
    room.join(carol)
    history.joined(room, carol)
    room.leave(carol)
    clock.advance(0)
    while store.pending:
        store.answer()
    assert not history._joiners
    assert carol.messages() == []


# --- one order, on a clock and an in-memory store ---------------------------------------------


class ManualStore:
    """
    A store in memory whose writes and queries finish when the test says.
    """

    path = Path("memory")

    def __init__(self) -> None:
        self.writes: list[tuple[list[Any], Any]] = []
        self.queries: list[Any] = []

    def open(self) -> Any:
        return defer.succeed(None)

    def append(self, rows: Any) -> Any:
        d: Any = defer.Deferred()
        self.writes.append((list(rows), d))
        return d

    def recent(self, room: str, limit: int) -> Any:
        d: Any = defer.Deferred()
        self.queries.append(d)
        return d

    def commit(self, first_id: int) -> list[Row]:
        """
        Finish the oldest write; return its rows as the store would give them.
        """
        rows, d = self.writes.pop(0)
        ids = list(range(first_id, first_id + len(rows)))
        d.callback(ids)
        return [Row(i, *row) for i, row in zip(ids, rows)]

    def close(self) -> None:
        pass


def seen(peer: Peer) -> list[str]:
    out = []
    for m in peer.got:
        if m.type == "msg":
            out.append(f"{m['from']}: {m['n']}" + (" (history)" if m.get("hist") else ""))
        elif m.type in ("joined", "left"):
            out.append(f"{m['name']} {m.type}")
    return out


def ordered_factory(verifier: Any) -> tuple[ChatServerFactory, ManualStore, task.Clock, Room]:
    clock = task.Clock()
    store = ManualStore()
    history = History(store, clock)  # type: ignore[arg-type]
    history.start()
    factory = ChatServerFactory(Rooms([verifier]), clock, history=history)
    return factory, store, clock, factory.rooms.get("main")


def test_joiner_gets_history_then_the_events_after_its_join_in_order(verifier: Any) -> None:
    """
    Presence waits behind the messages received before it; a member who joins
    meanwhile gets its history, then what was held for it (messages not in
    the history, presence after its join) in order, and no presence from
    before its join (its welcome listed the members) nor its own.
    """
    factory, store, clock, room = ordered_factory(verifier)
    history = factory.history
    alice, bob, carol, dave = (Peer(n) for n in ("alice", "bob", "carol", "dave"))
    factory.join(room, alice)
    factory.join(room, bob)
    send(history, room, alice, 1)
    clock.advance(0)  # message 1's write is in flight
    factory.join(room, carol)  # received after message 1
    history.joined(room, carol)  # her query waits
    send(history, room, alice, 2)
    factory.join(room, dave)
    factory.leave(room, dave)
    assert seen(bob) == []
    rows = store.commit(1)  # message 1 is stored: it and carol's join go
    assert seen(bob) == ["alice: 1", "carol joined"]
    clock.advance(0)  # message 2's write
    store.commit(2)
    assert seen(bob)[2:] == ["alice: 2", "dave joined", "dave left"]
    assert seen(alice) == ["bob joined", "carol joined", "dave joined", "dave left"]
    assert seen(carol) == []  # all held for her history
    store.queries.pop(0).callback(rows)
    assert seen(carol) == ["alice: 1 (history)", "alice: 2", "dave joined", "dave left"]
    assert seen(dave) == []


def test_a_leave_caused_by_a_delivery_goes_after_it(verifier: Any) -> None:
    """
    A member dropped while a message is delivered (a slow reader) leaves
    after that message and the ones received before its leave, for everyone.
    """
    factory, store, clock, room = ordered_factory(verifier)
    history = factory.history

    class Dropped(Peer):
        def deliver(self, data: bytes) -> None:
            super().deliver(data)
            if self.got[-1].type == "msg":
                factory.leave(room, self)

    alice, bob, carol = Peer("alice"), Dropped("bob"), Peer("carol")
    for member in (alice, bob, carol):
        factory.join(room, member)
    alice.got.clear()
    send(history, room, alice, 1)
    send(history, room, alice, 2)
    clock.advance(0)
    store.commit(1)
    assert seen(carol) == ["alice: 1", "alice: 2", "bob left"]
    assert seen(alice) == ["bob left"]


def test_room_closed_waits_for_the_messages_before_it(verifier: Any) -> None:
    factory, store, clock, room = ordered_factory(verifier)
    history = factory.history
    alice, bob = Peer("alice"), Peer("bob")
    factory.join(room, alice)
    factory.join(room, bob)
    send(history, room, alice, 1)
    clock.advance(0)
    closed: list[str] = []
    history.then(room, lambda member: closed.append(member.name))
    assert closed == []
    store.commit(1)
    assert seen(bob) == ["alice: 1"]
    assert closed == ["alice", "bob"]


# --- retention ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_retention_deletes_old_messages(made: Any, room: Room, log_events: Any) -> None:
    clock = task.Clock()
    setup = made(clock, keep_days=2)
    alice = Peer("alice")
    room.join(alice)
    send(setup.history, room, alice, 1)  # at time 0
    clock.advance(86400)
    send(setup.history, room, alice, 2)  # a day later
    await until(lambda: not setup.history._queue and not setup.history._writing, clock=clock)
    clock.advance(86400 + 3600)  # message 1 is now over two days old
    await until(lambda: any("deleted" in e["log_format"] for e in log_events))
    assert [r.n for r in await setup.store.recent(room.name, 10)] == [2]
    clock.advance(86400)
    await until(lambda: sum("deleted" in e["log_format"] for e in log_events) == 2)
    assert await setup.store.recent(room.name, 10) == []


# --- recent rows in memory ------------------------------------------------------------------


def replayed(peer: Peer) -> list[int]:
    return [n for n, hist in peer.messages() if hist]


def join(history: History, room: Room, name: str) -> Peer:
    peer = Peer(name)
    room.join(peer)
    history.joined(room, peer)
    return peer


def test_a_join_after_the_first_is_answered_without_the_store(room: Room) -> None:
    history, store, clock, alice = stored_by_alice(room, 4, limit=3)
    carol = join(history, room, "carol")
    store.answer("recent")  # the first join in the room asks the store
    assert replayed(carol) == [2, 3, 4]
    dave = join(history, room, "dave")
    assert not store.pending  # answered from memory, at once
    assert replayed(dave) == [2, 3, 4]
    assert dave.got[-1]["text"] == "3 earlier messages replayed"
    send(history, room, alice, 5)
    send(history, room, alice, 6)
    clock.advance(0)
    erin = join(history, room, "erin")  # 5 and 6 not written yet: live, later
    assert all(name != "recent" for name, _, _ in store.pending)
    store.answer("append")
    assert erin.messages() == [(2, True), (3, True), (4, True), (5, False), (6, False)]
    frank = join(history, room, "frank")
    assert replayed(frank) == [4, 5, 6]
    assert not store.pending


@pytest_twisted.ensureDeferred
async def test_joins_from_memory_get_what_the_store_gives(made: Any, verifier: Any) -> None:
    """
    On the real SQLite store: rooms of their own, messages of mixed sizes (some
    over the byte bound), retention, and writes in flight: a join answered
    from memory replays exactly what a join asking the store replays.
    """
    clock = task.Clock()
    setup = made(clock, limit=6, max_bytes=6000, keep_days=1)
    history = setup.history
    rooms = [Room(verifier), Room(make_verifier(PASSWORD, "other"))]
    alice = Peer("alice")
    for r in rooms:
        r.join(alice)
    sizes = [48, 2000, 16, 3000, 700, 48, 4000, 20, 1500, 48, 64, 900]
    for step, size in enumerate(sizes, 1):
        for r in rooms:
            send(history, r, alice, step, size=size)
        if step == 4:
            clock.advance(2 * 86400)  # the first four get old
            await history.expire()
        if step % 3 == 0:
            await until(lambda: not history._unsubmitted and not history._writing, clock=clock)
            for r in rooms:
                first = join(history, r, f"a{step}")  # may ask the store
                await until(lambda first=first: first.got, clock=clock)
                history.recent.forget(r.name)
                asked = join(history, r, f"b{step}")  # asks the store
                await until(lambda asked=asked: asked.got, clock=clock)
                remembered = join(history, r, f"c{step}")  # from memory
                assert r.name in history.recent
                assert remembered.got == asked.got
                assert replayed(remembered) == replayed(first)
    for r in rooms:
        stored = await setup.store.recent(r.name, 6)
        assert [row.n for row in stored][-len(replayed(remembered)):] == replayed(remembered)


def test_after_a_store_failure_joins_ask_the_store_until_it_is_healthy(room: Room) -> None:
    clock = task.Clock()
    history, store = memory_history(clock, hold=True, limit=5)
    alice = Peer("alice")
    room.join(alice)
    send(history, room, alice, 1)
    clock.advance(0)
    store.answer("append")
    join(history, room, "carol")
    store.answer("recent")
    assert room.name in history.recent
    send(history, room, alice, 2)
    clock.advance(0)
    store.fail(sqlite3.OperationalError("disk I/O error"), "append")
    send(history, room, alice, 3)  # relayed at once; its write comes later
    dave = join(history, room, "dave")
    assert store.pending[-1][0] == "recent"  # memory no longer knows where 3 falls
    clock.advance(0)
    store.answer("recent")
    store.answer("append")  # 3 stored: healthy, and idle again
    assert history.failing is None
    assert replayed(dave) == [1]
    erin = join(history, room, "erin")
    store.answer("recent")  # learns the room again from the store
    assert replayed(erin) == [1, 3]
    frank = join(history, room, "frank")
    assert not store.pending
    assert replayed(frank) == [1, 3]


def row(room: str, n: int, size: int, ts: float = 10.0) -> Row:
    return Row(n, room, "alice", ts, SID, n, bytes(size))


def test_recent_rows_bounds() -> None:
    recent = RecentRows(limit=3, max_bytes=1000, budget=2700)
    recent.add("a", [row("a", 1, 10)])
    assert "a" not in recent  # not known until the store answered a join
    recent.learn("a", [row("a", n, 100) for n in range(1, 6)])
    assert [r.n for r in recent.rows("a")] == [3, 4, 5]  # the newest 3
    recent.add("a", [row("a", 6, 950)])
    assert [r.n for r in recent.rows("a")] == [6]  # 100 + 950 is over 1000 bytes
    recent.learn("b", [row("b", 1, 800, ts=5.0), row("b", 2, 100, ts=9.0)])
    recent.learn("c", [row("c", 1, 700)])
    assert recent.size == 950 + 900 + 700
    recent.rows("a")  # joined: now the most recently used
    recent.add("c", [row("c", 2, 250)])  # 2800 bytes: "b", joined longest ago, goes
    assert "b" not in recent and "a" in recent and "c" in recent
    assert recent.size == 950 + 950
    recent.learn("b", [row("b", 1, 100, ts=5.0), row("b", 2, 100, ts=9.0)])
    recent.expire(before=6.0)
    assert [r.n for r in recent.rows("b")] == [2]
    assert recent.size == 950 + 950 + 100


# --- failures --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_full_disk_live_relay_goes_on_and_storing_resumes(
    made: Any, room: Room, log_events: list[Any]
) -> None:
    clock = task.Clock()
    # About 20 pages of 4 KiB: the first few dozen messages of 2 KiB fill it.
    setup = made(clock, pragmas=["PRAGMA max_page_count = 20"])
    history = setup.history
    alice, bob = Peer("alice"), Peer("bob")
    room.join(alice)
    room.join(bob)
    n = 0
    while history.failing is None:
        n += 1
        assert n < 200, "the store never filled up"
        send(history, room, alice, n, size=2048)
        await until(lambda n=n: len(bob.messages()) == n, clock=clock)
    assert "full" in history.failing
    failed_at = n
    for _ in range(20):  # live relay goes on, in order, at once
        n += 1
        send(history, room, alice, n, size=2048)
        assert bob.messages()[-1] == (n, False)
    assert [m for m, _ in bob.messages()] == list(range(1, n + 1))
    errors = [e for e in log_events if e["log_level"].name == "error"]
    assert len(errors) == 1, "one error for the outage, not one per message"

    await setup.store.pool.runInteraction(
        lambda txn: txn.execute("PRAGMA max_page_count = 100000")
    )
    n += 1
    send(history, room, alice, n, size=2048)
    await until(lambda: history.failing is None, clock=clock)
    assert any("storing again" in e["log_format"] for e in log_events)
    n += 1
    send(history, room, alice, n)
    assert bob.messages()[-1] == (n - 1, False)  # held for its write again
    await until(lambda: bob.messages()[-1] == (n, False), clock=clock)
    stored = [r.n for r in await setup.store.recent(room.name, 1000)]
    assert stored == sorted(stored) and stored[-2:] == [n - 1, n]
    # What was relayed during the outage waited in the backlog and is stored now;
    # only the batch whose write failed is lost to history.
    assert set(range(failed_at + 1, n + 1)) <= set(stored)
    assert failed_at not in stored
    assert history.unstored == 1


@pytest_twisted.ensureDeferred
async def test_locked_database(tmp_path: Path, made: Any, room: Room, log_events: Any) -> None:
    clock = task.Clock()
    setup = made(clock, busy_timeout=0.05)
    history = setup.history
    alice, bob = Peer("alice"), Peer("bob")
    room.join(alice)
    room.join(bob)
    send(history, room, alice, 1)
    await until(lambda: bob.messages() == [(1, False)], clock=clock)

    other = sqlite3.connect(tmp_path / "history.sqlite3", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        send(history, room, alice, 2)
        await until(lambda: history.failing is not None, clock=clock)
        assert "locked" in history.failing
        assert bob.messages()[-1] == (2, False)
        send(history, room, alice, 3)
        assert bob.messages()[-1] == (3, False)
    finally:
        other.execute("ROLLBACK")
        other.close()
    await until(lambda: not history._writing, clock=clock)
    send(history, room, alice, 4)
    await until(lambda: history.failing is None, clock=clock)
    await until(lambda: bob.messages()[-1] == (4, False), clock=clock)
    assert [m for m, _ in bob.messages()] == [1, 2, 3, 4]


def test_hung_store_relays_after_hold_limit(room: Room, log_events: Any) -> None:
    """
    A write that does not finish holds relays back for hold_limit seconds of
    the clock, no longer. (A real SQLite lock: test_locked_database.)
    """
    clock = task.Clock()
    history, store = memory_history(clock, hold=True, hold_limit=2.0)
    alice, bob, carol = Peer("alice"), Peer("bob"), Peer("carol")
    room.join(alice)
    room.join(bob)
    send(history, room, alice, 1)
    clock.advance(0)
    store.answer()
    assert bob.messages() == [(1, False)]
    send(history, room, alice, 2)
    clock.advance(0)  # its write hangs: the test does not answer it
    assert bob.messages() == [(1, False)]
    clock.advance(1.0)
    room.join(carol)
    history.joined(room, carol)
    clock.advance(1.0)
    assert bob.messages() == [(1, False), (2, False)]
    assert "no answer within 2 seconds" in str(history.failing)
    send(history, room, alice, 3)
    assert bob.messages()[-1] == (3, False)
    assert carol.messages() == []  # held: her history has not come
    clock.advance(1.0)  # gives up waiting for carol's history too
    assert carol.messages() == [(2, False), (3, False)]
    # The store answers at last: storing resumes.
    while store.pending:
        store.answer()
        clock.advance(0)
    assert history.failing is None
    assert [r.n for r in store.rows] == [1, 2, 3]
    assert any("none sent to carol" in e["log_format"] or "carol" == e.get("name")
               for e in log_events)


@pytest_twisted.ensureDeferred
async def test_corrupt_file(tmp_path: Path, made: Any, room: Room, log_events: Any) -> None:
    (tmp_path / "history.sqlite3").write_bytes(b"this is not a database " * 400)
    clock = task.Clock()
    setup = made(clock)
    alice, bob = Peer("alice"), Peer("bob")
    room.join(alice)
    room.join(bob)
    await until(lambda: setup.history.failing is not None, clock=clock)
    assert "not a database" in setup.history.failing
    send(setup.history, room, alice, 1)
    assert bob.messages() == [(1, False)]
    carol = Peer("carol")
    room.join(carol)
    setup.history.joined(room, carol)
    send(setup.history, room, alice, 2)
    await until(lambda: carol.messages() == [(2, False)], clock=clock)
    assert bob.messages() == [(1, False), (2, False)]


# --- over real loopback TLS, with the client library ----------------------------------------

ROOM_PASSWORDS = {
    "main": PASSWORD,
    "ops": "the ops room password 31",
    "dev": "the dev room password 47",
}


class HistoryRecorder(Recorder):
    def history_unreadable(self, message: ChatMessage) -> None:
        self._add(("unreadable", message))

    def history_end(self) -> None:
        self._add(("history-end",))

    def chat(self) -> list[tuple[str, str, bool]]:
        return [(e.sender, e.text, e.history) for e in self.events if isinstance(e, ChatMessage)]


class HistoryServer:
    def __init__(self, data: Path, service: ChatService, port: int) -> None:
        self.data = data
        self.service = service
        self.factory = service.factory
        self.port = port
        self.history_file = data / HISTORY_FILE

    def join(self, name: str, room: str = "main", password: str | None = None,
             known_hosts: Path | None = None) -> Any:
        listener = HistoryRecorder()
        d = connect(
            reactor, "127.0.0.1", self.port, name,
            ROOM_PASSWORDS[room] if password is None else password,
            room=room, listener=listener,
            trust=TrustOnFirstUse(known_hosts or self.data / "known_hosts"),
        )
        return d.addCallback(lambda session: (session, listener))

    async def settle(self) -> None:
        """
        Wait until every accepted message is written and relayed.
        """
        history = self.factory.history
        await until(lambda: not history._queue and not history._writing
                    and not history._unsubmitted)


@pytest.fixture(scope="module")
def room_verifiers() -> dict[str, Any]:
    return {room: make_verifier(pw, room) for room, pw in ROOM_PASSWORDS.items()}


@pytest_twisted.async_yield_fixture
async def hserver(tmp_path: Path, certificate: Any, room_verifiers: dict[str, Any]) -> Any:
    """
    A relay with history and three rooms (main, ops, dev) from a data directory.
    """
    data = tmp_path / "data"
    for room, verifier in room_verifiers.items():
        save_verifier(room_path(data, room), verifier)
    history = History(HistoryStore(data / HISTORY_FILE), reactor, limit=50)
    # A high message rate, so that steady traffic in tests is never refused.
    limits = Limits(message_rate=10000, message_burst=10000)
    factory = ChatServerFactory(Rooms(load_rooms(data)), reactor, limits, history=history)
    endpoint = SSL4ServerEndpoint(reactor, 0, server_options(certificate), interface="127.0.0.1")
    service = ChatService(endpoint, factory, rooms_dir=data / ROOMS_DIR, reload_interval=3600)
    service.startService()
    await until(lambda: service.port is not None)
    yield HistoryServer(data, service, service.port.getHost().port)
    for protocol in list(factory.connections):
        protocol.transport.abortConnection()
    await service.stopService()


def is_text(text: str) -> Any:
    return lambda e: isinstance(e, ChatMessage) and e.text == text


@pytest_twisted.ensureDeferred
async def test_late_joiner_over_tls(hserver: HistoryServer) -> None:
    alice, alice_events = await hserver.join("alice")
    bob, bob_events = await hserver.join("bob")
    for i in range(3):
        alice.send(f"before {i}")
    await bob_events.wait_for(is_text("before 2"))
    bob.send("bob before")
    await alice_events.wait_for(is_text("bob before"))
    await hserver.settle()

    carol, carol_events = await hserver.join("carol")
    alice.send("after")
    await carol_events.wait_for(is_text("after"))
    assert carol_events.chat() == [
        ("alice", "before 0", True), ("alice", "before 1", True),
        ("alice", "before 2", True), ("bob", "bob before", True),
        ("alice", "after", False),
    ]
    replayed = [e for e in carol_events.events if isinstance(e, ChatMessage) and e.history]
    now = reactor.seconds()
    assert all(e.time is not None and now - 60 < e.time <= now for e in replayed)
    ends = [i for i, e in enumerate(carol_events.events) if e == ("history-end",)]
    assert len(ends) == 1
    assert carol_events.events.index(replayed[-1]) < ends[0]
    # Live members never get replays.
    assert not any(e.history for e in bob_events.events if isinstance(e, ChatMessage))
    for session in (alice, bob, carol):
        await session.leave()


@pytest_twisted.ensureDeferred
async def test_history_during_steady_traffic(hserver: HistoryServer) -> None:
    """
    A member joins while another sends steadily: it gets every message exactly
    once, replayed then live, in order.
    """
    alice, _ = await hserver.join("alice")
    bob, bob_events = await hserver.join("bob")
    total = 300
    joining = None
    for i in range(total):
        alice.send(f"m{i:03d}")
        if i == 20:
            joining = hserver.join("carol")
        if i % 5 == 4:
            await deferLater(0.002)
    assert joining is not None
    carol, carol_events = await joining
    await carol_events.wait_for(is_text(f"m{total - 1:03d}"))
    await bob_events.wait_for(is_text(f"m{total - 1:03d}"))
    assert [t for _, t, _ in bob_events.chat()] == [f"m{i:03d}" for i in range(total)]
    chat = carol_events.chat()
    texts = [t for _, t, _ in chat]
    # The last 50 before she joined, replayed, then all the rest live: no gap,
    # nothing twice, replayed before live.
    assert texts == [f"m{i:03d}" for i in range(total)][-len(texts):]
    replayed = [t for _, t, hist in chat if hist]
    # How many were sent before her login completed depends on the machine.
    assert 1 <= len(replayed) <= 50
    assert chat[: len(replayed)] == [("alice", t, True) for t in replayed]
    assert not any(hist for _, _, hist in chat[len(replayed):])
    assert texts[-1] == f"m{total - 1:03d}"
    for session in (alice, bob, carol):
        await session.leave()


@pytest_twisted.ensureDeferred
async def test_three_rooms_learn_nothing_of_each_other(hserver: HistoryServer) -> None:
    members = {}
    for room in ROOM_PASSWORDS:
        members[room] = await hserver.join(f"{room}-a", room)
    for room, (session, _) in members.items():
        await hserver.join(f"{room}-b", room)  # presence in each room
        session.send(f"secret of {room}")
    await hserver.settle()
    ops, ops_events = await hserver.join("late", "ops")
    await ops_events.wait_for(lambda e: e == ("history-end",))
    assert ops_events.chat() == [("ops-a", "secret of ops", True)]
    assert sorted(m.name for m in ops.members) == ["ops-a", "ops-b"]
    await members["ops"][1].wait_for(
        lambda e: isinstance(e, tuple) and e[0] == "joined" and e[1].name == "late"
    )
    for room, (_session, events) in members.items():
        texts = [t for _, t, _ in events.chat()]
        assert texts == [], f"{room} heard another room: {texts}"
        joined = [e[1].name for e in events.events if isinstance(e, tuple) and e[0] == "joined"]
        assert sorted(set(joined)) == sorted({f"{room}-b"} | ({"late"} if room == "ops" else set()))
    # The ops password does not open dev, nor an unknown room.
    with pytest.raises(errors.WrongPassword):
        await hserver.join("late", "dev", password=ROOM_PASSWORDS["ops"])
    with pytest.raises(errors.WrongPassword):
        await hserver.join("late", "nosuchroom", password=ROOM_PASSWORDS["ops"])
    await ops.leave()


@pytest_twisted.ensureDeferred
async def test_no_plaintext_or_password_in_the_files(hserver: HistoryServer) -> None:
    alice, _ = await hserver.join("alice")
    bob, bob_events = await hserver.join("bob")
    secrets_sent = [f"{SECRET} number {i}" for i in range(20)]
    for text in secrets_sent:
        alice.send(text)
    await bob_events.wait_for(is_text(secrets_sent[-1]))
    await hserver.settle()

    def files() -> bytes:
        found = [p for p in hserver.data.iterdir() if p.name.startswith(HISTORY_FILE)]
        assert hserver.history_file in found
        return b"".join(p.read_bytes() for p in found)

    open_bytes = files()  # the database, -wal and -shm while in use
    for path in hserver.data.iterdir():
        if path.name.startswith(HISTORY_FILE):
            assert path.stat().st_mode & 0o077 == 0, f"{path.name} is readable by others"
    await alice.leave()
    await bob.leave()
    await hserver.service.stopService()
    closed_bytes = files()  # after the checkpoint at close
    for blob in (open_bytes, closed_bytes):
        for needle in [SECRET, *ROOM_PASSWORDS.values()]:
            assert needle.encode() not in blob
            assert needle.encode("utf-16-le") not in blob
    db = sqlite3.connect(hserver.history_file)
    rows = db.execute("SELECT sender, size, ct FROM messages WHERE room = 'main'").fetchall()
    db.close()
    assert len(rows) == 20 and {r[0] for r in rows} == {"alice"}
    assert all(r[1] == len(r[2]) >= 16 + 32 for r in rows)


@pytest_twisted.ensureDeferred
async def test_password_change_keeps_members_and_old_history_is_unreadable(
    hserver: HistoryServer,
) -> None:
    alice, _ = await hserver.join("alice", "dev")
    bob, bob_events = await hserver.join("bob", "dev")
    alice.send("under the old password")
    await bob_events.wait_for(is_text("under the old password"))
    await hserver.settle()

    save_verifier(room_path(hserver.data, "dev"), make_verifier("a new dev password 12", "dev"))
    hserver.service.reloader.scan()
    # Members already in stay, and still talk (under the key they have).
    alice.send("still here")
    await bob_events.wait_for(is_text("still here"))
    with pytest.raises(errors.WrongPassword):
        await hserver.join("carol", "dev")
    carol, carol_events = await hserver.join("carol", "dev", password="a new dev password 12")
    await carol_events.wait_for(lambda e: e == ("history-end",))
    unreadable = [e[1] for e in carol_events.events if isinstance(e, tuple) and e[0] == "unreadable"]
    assert [(m.sender, m.history) for m in unreadable] == [("alice", True), ("alice", True)]
    assert not any(isinstance(e, tuple) and e[0] == "rejected" for e in carol_events.events)
    for session in (alice, bob, carol):
        await session.leave()


@pytest_twisted.ensureDeferred
async def test_rooms_added_and_removed_without_restart(
    hserver: HistoryServer, log_events: Any
) -> None:
    with pytest.raises(errors.WrongPassword):
        await hserver.join("erin", "fresh", password="fresh room password 9")
    save_verifier(room_path(hserver.data, "fresh"), make_verifier("fresh room password 9", "fresh"))
    (hserver.data / ROOMS_DIR / "broken.json").write_text("{not json")
    hserver.service.reloader.scan()
    erin, erin_events = await hserver.join("erin", "fresh", password="fresh room password 9")
    hserver.service.reloader.scan()  # nothing changed: nothing happens

    room_path(hserver.data, "fresh").unlink()
    hserver.service.reloader.scan()
    event = await erin_events.wait_for(lambda e: isinstance(e, tuple) and e[0] == "disconnected")
    assert event[1] == "the room was closed by the server operator"
    assert hserver.factory.rooms.get("fresh") is None
    assert hserver.factory.rooms.get("broken") is None
    assert hserver.factory.rooms.get("main") is not None


@pytest_twisted.ensureDeferred
async def test_reload_runs_on_the_clock(tmp_path: Path, room_verifiers: dict[str, Any],
                                        caplog_events: list[dict[str, Any]]) -> None:
    clock = task.Clock()
    data = tmp_path / "data"
    save_verifier(room_path(data, "main"), room_verifiers["main"])
    factory = ChatServerFactory(Rooms(load_rooms(data)), clock)
    service = ChatService(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), factory,
                          rooms_dir=data / ROOMS_DIR, reload_interval=5)
    service.startService()
    try:
        save_verifier(room_path(data, "ops"), room_verifiers["ops"])
        (data / ROOMS_DIR / "bad.json").write_text("[]")
        clock.advance(4.9)
        assert factory.rooms.get("ops") is None
        clock.advance(0.1)
        assert factory.rooms.get("ops") is not None
        clock.advance(5)
        clock.advance(5)
        skipped = [e for e in caplog_events if "skipped" in e["log_format"]]
        assert len(skipped) == 1, "a bad file is reported once, not at every scan"
        assert "bad.json" in skipped[0]["reason"]
    finally:
        await service.stopService()
    assert not service._reload.running


@pytest.fixture
def caplog_events() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


# --- one order for a room's events ------------------------------------------------------------


class GatedStore(HistoryStore):
    """
    The real SQLite store, except that writes are held back until the test
    calls L{release}: the slow commit that lets a later event overtake a
    message, made deterministic.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gated = True
        self.held: list[tuple[list[Any], Any]] = []

    def append(self, rows: Any) -> Any:
        if not self.gated:
            return super().append(rows)
        d: Any = defer.Deferred()
        self.held.append((list(rows), d))
        return d

    def release(self) -> None:
        self.gated = False
        held, self.held = self.held, []
        for rows, d in held:
            super().append(rows).chainDeferred(d)


class OrderServer(HistoryServer):
    def __init__(self, data: Path, service: ChatService, port: int,
                 store: GatedStore | None) -> None:
        super().__init__(data, service, port)
        self.store = store

    def release(self) -> None:
        """
        Let the held writes through (no-op without history: nothing waits).
        """
        if self.store is not None:
            self.store.release()

    def sent(self, name: str) -> int:
        """
        How many messages the server has received from member C{name}.
        """
        return sum(p.sent_messages for p in self.factory.connections if p.name == name)

    def members(self, room: str = "main") -> list[str]:
        return sorted(m.name for m in self.factory.rooms.get(room).members)


@pytest_twisted.async_yield_fixture(params=["history", "no-history"])
async def oserver(request: Any, tmp_path: Path, certificate: Any,
                  room_verifiers: dict[str, Any]) -> Any:
    """
    A relay over real TLS with rooms from a data directory, with history on a
    gated real SQLite store, or with history off.
    """
    data = tmp_path / "data"
    for room, verifier in room_verifiers.items():
        save_verifier(room_path(data, room), verifier)
    store = history = None
    if request.param == "history":
        store = GatedStore(data / HISTORY_FILE)
        # A long hold limit: the test, not the clock, decides when writes end.
        history = History(store, reactor, limit=50, hold_limit=60)
    limits = Limits(message_rate=10000, message_burst=10000)
    factory = ChatServerFactory(Rooms(load_rooms(data)), reactor, limits, history=history)
    endpoint = SSL4ServerEndpoint(reactor, 0, server_options(certificate), interface="127.0.0.1")
    service = ChatService(endpoint, factory, rooms_dir=data / ROOMS_DIR, reload_interval=3600)
    service.startService()
    await until(lambda: service.port is not None)
    yield OrderServer(data, service, service.port.getHost().port, store)
    if store is not None:
        store.release()
    for protocol in list(factory.connections):
        protocol.transport.abortConnection()
    await service.stopService()


def timeline(recorder: HistoryRecorder) -> list[str]:
    """
    A member's view of the room, in the order it was received.
    """
    seen = []
    for e in recorder.events:
        if isinstance(e, ChatMessage):
            seen.append(f"{e.sender}: {e.text}" + (" (history)" if e.history else ""))
        elif isinstance(e, tuple) and e[0] in ("joined", "left"):
            seen.append(f"{e[1].name} {e[0]}")
        elif isinstance(e, tuple) and e[0] == "disconnected":
            seen.append(f"disconnected: {e[1]}")
    return seen


@pytest_twisted.ensureDeferred
async def test_messages_come_before_their_senders_leave(oserver: OrderServer) -> None:
    """
    A sender writes 20 messages and goes; the others see the 20 messages,
    then that it left, even when storing the messages takes longer than the
    departure (issue: "seqbot left the room", then its messages).
    """
    bob, bob_events = await oserver.join("bob")
    alice, _ = await oserver.join("alice")
    for i in range(20):
        alice.send(f"line {i}")
    await until(lambda: oserver.sent("alice") == 20)
    await alice.leave()
    await until(lambda: oserver.members() == ["bob"])
    oserver.release()
    await bob_events.wait_for(lambda e: isinstance(e, tuple) and e[0] == "left")
    await until(lambda: len(timeline(bob_events)) >= 22)
    assert timeline(bob_events) == [
        "alice joined", *[f"alice: line {i}" for i in range(20)], "alice left",
    ]
    await bob.leave()


@pytest_twisted.ensureDeferred
async def test_piped_sender_that_ends_at_once(hserver: HistoryServer) -> None:
    """
    The issue's case as it happens, on the plain store: 20 lines and the end
    of input at once. The leave comes after the 20 messages.
    """
    bob, bob_events = await hserver.join("bob")
    seqbot, _ = await hserver.join("seqbot")
    for i in range(20):
        seqbot.send(f"line {i}")
    await seqbot.leave()
    await bob_events.wait_for(lambda e: isinstance(e, tuple) and e[0] == "left")
    await until(lambda: len(timeline(bob_events)) >= 22)
    assert timeline(bob_events) == [
        "seqbot joined", *[f"seqbot: line {i}" for i in range(20)], "seqbot left",
    ]
    await bob.leave()


@pytest_twisted.ensureDeferred
async def test_joins_and_leaves_interleaved_with_messages(oserver: OrderServer) -> None:
    """
    Every member sees messages, joins and leaves in the order the server
    received them; a joiner is neither told again about members its welcome
    listed nor about itself.
    """
    bob, bob_events = await oserver.join("bob")
    alice, alice_events = await oserver.join("alice")

    async def say(first: int, last: int) -> None:
        for i in range(first, last):
            alice.send(f"m{i}")
        await until(lambda: oserver.sent("alice") == last)

    await say(0, 3)
    carol, _ = await oserver.join("carol")
    assert sorted(m.name for m in carol.members) == ["alice", "bob"]
    await say(3, 6)
    dave, dave_events = await oserver.join("dave")
    assert sorted(m.name for m in dave.members) == ["alice", "bob", "carol"]
    await say(6, 9)
    await carol.leave()
    await until(lambda: "carol" not in oserver.members())
    await say(9, 12)
    oserver.release()
    for events in (bob_events, dave_events):
        await events.wait_for(lambda e: isinstance(e, ChatMessage) and e.text == "m11")
    await alice_events.wait_for(lambda e: isinstance(e, tuple) and e[0] == "left")

    def said(first: int, last: int) -> list[str]:
        return [f"alice: m{i}" for i in range(first, last)]

    assert timeline(bob_events) == [
        "alice joined", *said(0, 3), "carol joined", *said(3, 6), "dave joined",
        *said(6, 9), "carol left", *said(9, 12),
    ]
    assert timeline(alice_events) == ["carol joined", "dave joined", "carol left"]
    # Dave, welcomed with alice, bob and carol, is not told again about them
    # nor about himself. With history, what alice said before he joined comes
    # once (replayed or live: here its writes were held), then the rest.
    before = said(0, 6) if oserver.store is not None else []
    dave_seen = [line.replace(" (history)", "") for line in timeline(dave_events)]
    assert dave_seen == [*before, *said(6, 9), "carol left", *said(9, 12)]
    for session in (alice, bob, dave):
        await session.leave()


@pytest_twisted.ensureDeferred
async def test_room_closed_after_the_messages_before_it(oserver: OrderServer) -> None:
    """
    The operator removes a room while its messages are still being stored:
    members get those messages first, then that the room was closed.
    """
    bob, bob_events = await oserver.join("bob", "dev")
    alice, alice_events = await oserver.join("alice", "dev")
    for i in range(5):
        alice.send(f"last words {i}")
    await until(lambda: oserver.sent("alice") == 5)
    room_path(oserver.data, "dev").unlink()
    oserver.service.reloader.scan()
    oserver.release()
    for events in (alice_events, bob_events):
        await events.wait_for(lambda e: isinstance(e, tuple) and e[0] == "disconnected")
    closed = "disconnected: the room was closed by the server operator"
    assert timeline(bob_events) == [
        "alice joined", *[f"alice: last words {i}" for i in range(5)], closed,
    ]
    assert timeline(alice_events) == [closed]
