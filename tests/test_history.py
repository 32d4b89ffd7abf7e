"""
The history store on a real SQLite file: storing, ordering, replay to late
joiners, retention, and a store that fails (full, locked, corrupt, hung).
Time-dependent parts run on task.Clock; the store's thread is real.
"""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path
from typing import Any, Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.logger import globalLogPublisher

from twistchat import wire
from twistchat.server.history import (
    SCHEMA_VERSION,
    History,
    HistoryStore,
)
from twistchat.server.room import Room

from .conftest import deferLater


class Peer:
    """
    A room member that records the frames it is given.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.addr = "127.0.0.1:1"
        self.got: list[wire.Message] = []

    def deliver(self, data: bytes) -> None:
        assert int.from_bytes(data[:4], "big") == len(data) - 4
        self.got.append(wire.decode(data[4:], wire.FROM_SERVER))

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
    await until(lambda: len(bob.messages()) == 5, clock=clock)
    assert bob.messages() == [(n, False) for n in range(1, 6)]
    assert alice.messages() == []  # never to the sender
    rows = await setup.store.recent(room.name, 10)
    assert [r.n for r in rows] == [1, 2, 3, 4, 5]
    assert all(r.sender == "alice" for r in rows)


@pytest_twisted.ensureDeferred
async def test_late_joiner_gets_history_then_live(made: Any, room: Room) -> None:
    clock = task.Clock()
    setup = made(clock, limit=3)
    history = setup.history
    alice = Peer("alice")
    room.join(alice)
    for n in range(1, 6):
        send(history, room, alice, n)
    await until(lambda: history._queue == deque_empty(), clock=clock)

    carol = Peer("carol")
    room.join(carol)
    history.joined(room, carol)
    send(history, room, alice, 6)  # accepted while carol's query is queued
    await until(lambda: 6 in [n for n, _ in carol.messages()], clock=clock)
    assert carol.messages() == [(3, True), (4, True), (5, True), (6, False)]
    notice = [m for m in carol.got if m.type == "notice"]
    assert notice and notice[0]["code"] == "history"
    replayed = [m for m in carol.got if m.type == "msg" and m.get("hist")]
    assert all(m["from"] == "alice" and m["sid"] == SID for m in replayed)
    assert all(isinstance(m["ts"], float) for m in replayed)
    assert not history._joiners


def deque_empty() -> Any:
    from collections import deque

    return deque()


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
    await deferLater(0.05)
    clock.advance(0)
    assert carol.messages() == [(1, True), (2, False), (3, False)]


@pytest_twisted.ensureDeferred
async def test_history_off_for_limit_zero(made: Any, room: Room) -> None:
    clock = task.Clock()
    setup = made(clock, limit=0)
    alice, carol = Peer("alice"), Peer("carol")
    room.join(alice)
    send(setup.history, room, alice, 1)
    await until(lambda: not setup.history._queue, clock=clock)
    room.join(carol)
    setup.history.joined(room, carol)
    send(setup.history, room, alice, 2)
    await until(lambda: carol.messages() == [(2, False)], clock=clock)


@pytest_twisted.ensureDeferred
async def test_joiner_who_leaves_before_history(made: Any, room: Room) -> None:
    clock = task.Clock()
    setup = made(clock)
    alice, carol = Peer("alice"), Peer("carol")
    room.join(alice)
    send(setup.history, room, alice, 1)
    room.join(carol)
    setup.history.joined(room, carol)
    room.leave(carol)
    await until(lambda: not setup.history._joiners, clock=clock)
    assert carol.messages() == []


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
        await until(lambda: len(bob.messages()) == n, clock=clock)
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


@pytest_twisted.ensureDeferred
async def test_hung_store_relays_after_hold_limit(
    tmp_path: Path, made: Any, room: Room, log_events: Any
) -> None:
    """
    A write that does not finish (here: waiting on a lock for up to 5 s)
    holds relays back for hold_limit seconds of the clock, no longer.
    """
    clock = task.Clock()
    setup = made(clock, busy_timeout=5, hold_limit=2.0)
    history = setup.history
    alice, bob, carol = Peer("alice"), Peer("bob"), Peer("carol")
    room.join(alice)
    room.join(bob)
    send(history, room, alice, 1)
    await until(lambda: bob.messages() == [(1, False)], clock=clock)
    other = sqlite3.connect(tmp_path / "history.sqlite3", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        send(history, room, alice, 2)
        clock.advance(0)
        await deferLater(0.05)
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
    finally:
        other.execute("ROLLBACK")
        other.close()
    await until(lambda: history.failing is None, clock=clock)
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
