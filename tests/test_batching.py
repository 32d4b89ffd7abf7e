"""
Adaptive batching of a room's deliveries (twistchat.server.room.Batcher,
C{--batch-window}), on a task.Clock: a quiet room sends at once; a busy one
holds frames for at most one window and gives each member what it holds as
one write, in the room's order, with "stored before relayed", slow-reader
drops and the room's closing as without batching.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twistchat import errors
from twistchat.server.history import History
from twistchat.server.limits import Limits
from twistchat.server.room import EARLY_BYTES_PER_MEMBER, Batcher
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from .conftest import PASSWORD
from .memory import Link, MemoryRelay, MemoryStore

WINDOW = 0.005


class FakeMember:
    def __init__(self, name: str, clock: Clock) -> None:
        self.name = name
        self.addr = "127.0.0.1:1"
        self.clock = clock
        #: (time, data) of each delivery.
        self.writes: list[tuple[float, bytes]] = []

    def deliver(self, data: bytes) -> None:
        self.writes.append((self.clock.seconds(), data))


class FakeRoom:
    def __init__(self, members: list[FakeMember]) -> None:
        self.members = members

    def __contains__(self, member: object) -> bool:
        return member in self.members

    def __len__(self) -> int:
        return len(self.members)


@given(st.lists(st.integers(min_value=0, max_value=12), min_size=1, max_size=60))
def test_no_frame_waits_longer_than_the_window(gaps: list[int]) -> None:
    """
    Frames sent at any times (gaps in ms): each member gets every frame, in
    order, no later than one window after it was sent, and at most one
    delivery per window but the first.
    """
    clock = Clock()
    members = [FakeMember("a", clock), FakeMember("b", clock)]
    batcher = Batcher(FakeRoom(members), clock, WINDOW)  # type: ignore[arg-type]
    sent: list[tuple[float, bytes]] = []
    # A Clock runs a call due within an advance at the advance's end: step
    # by a millisecond, as a reactor's turns would.
    for i, gap in enumerate(gaps):
        clock.pump([0.001] * gap)
        data = b"%03d," % i
        sent.append((clock.seconds(), data))
        batcher.send(members, data)
    clock.pump([0.001] * 5)
    for member in members:
        received = b"".join(data for _, data in member.writes)
        assert received == b"".join(data for _, data in sent)
        arrived = {}
        for when, data in member.writes:
            for frame in data.split(b",")[:-1]:
                arrived[frame + b","] = when
        for when, data in sent:
            assert when <= arrived[data] <= when + WINDOW + 1e-9
        times = [when for when, _ in member.writes]
        # After the first, writes are at least a window apart.
        assert all(b - a >= WINDOW - 1e-9 for a, b in zip(times, times[1:]))


def test_quiet_frames_go_at_once_busy_ones_are_joined() -> None:
    clock = Clock()
    members = [FakeMember("a", clock)]
    batcher = Batcher(FakeRoom(members), clock, WINDOW)  # type: ignore[arg-type]
    batcher.send(members, b"1")
    clock.advance(0.001)
    batcher.send(members, b"2")
    batcher.send(members, b"3")
    assert members[0].writes == [(0, b"1")]
    clock.advance(0.003)
    assert members[0].writes == [(0, b"1")]
    clock.advance(0.001)
    assert members[0].writes == [(0, b"1"), (WINDOW, b"23")]
    clock.advance(0.05)  # quiet again: at once
    batcher.send(members, b"4")
    assert members[0].writes[-1] == (clock.seconds(), b"4")
    assert not clock.getDelayedCalls()


class SlowMember(FakeMember):
    """
    A member whose write takes a millisecond of the clock's time, as writes
    to a thousand members take real time.
    """

    def deliver(self, data: bytes) -> None:
        super().deliver(data)
        self.clock.rightNow += 0.001


def test_the_window_runs_from_the_end_of_a_rooms_writes() -> None:
    """
    Writing to a large room can take longer than a window: the next frame
    still waits a window from the end of those writes, instead of finding the
    room quiet and being written alone to every member.
    """
    clock = Clock()
    members = [SlowMember(name, clock) for name in "abcdefghij"]
    batcher = Batcher(FakeRoom(members), clock, WINDOW)  # type: ignore[arg-type]
    batcher.send(members, b"1")  # quiet: at once, 10 ms of writes
    assert clock.seconds() == pytest.approx(0.010)
    batcher.send(members, b"2")
    batcher.send(members, b"3")
    assert all(len(m.writes) == 1 for m in members)  # held
    clock.advance(WINDOW)
    assert all([d for _, d in m.writes] == [b"1", b"23"] for m in members)


def test_a_burst_goes_out_before_the_window_ends() -> None:
    """
    Once a window holds EARLY_BYTES_PER_MEMBER bytes per member of the room
    for each member, it is written without waiting out the window; what
    comes next is held again, in order.
    """
    clock = Clock()
    members = [FakeMember(name, clock) for name in "abcdefghij"]
    batcher = Batcher(FakeRoom(members), clock, WINDOW)  # type: ignore[arg-type]
    frame = b"x" * 100
    burst = EARLY_BYTES_PER_MEMBER * len(members) // len(frame)  # 160 frames
    batcher.send(members, b"first")  # quiet: at once
    clock.advance(0.001)
    for _ in range(burst - 1):
        batcher.send(members, frame)
    assert all(len(m.writes) == 1 for m in members)  # held: one byte short
    batcher.send(members, frame)
    batcher.send(members, b"after")
    assert all(m.writes == [(0, b"first"), (0.001, frame * burst)] for m in members)
    clock.advance(WINDOW)
    assert all(m.writes[2:] == [(0.001 + WINDOW, b"after")] for m in members)
    assert not clock.getDelayedCalls()


def test_a_large_room_holds_more_before_writing_early() -> None:
    """
    The early write's threshold grows with the room: a burst that fills a
    room of 2's early write is held for the window in a room of 20.
    """
    clock = Clock()
    for size, early in ((2, True), (20, False)):
        members = [FakeMember(str(i), clock) for i in range(size)]
        batcher = Batcher(FakeRoom(members), clock, WINDOW)  # type: ignore[arg-type]
        batcher.send(members, b"first")
        batcher.send(members, b"y" * EARLY_BYTES_PER_MEMBER * 2)
        assert len(members[0].writes) == (2 if early else 1)
        clock.advance(WINDOW)
        assert len(members[0].writes) == 2
        clock.advance(1)


def test_a_member_gone_meanwhile_gets_nothing() -> None:
    clock = Clock()
    a, b = FakeMember("a", clock), FakeMember("b", clock)
    room = FakeRoom([a, b])
    batcher = Batcher(room, clock, WINDOW)  # type: ignore[arg-type]
    batcher.send([a, b], b"1")
    batcher.send([a, b], b"2")
    room.members.remove(b)
    clock.advance(WINDOW)
    assert [d for _, d in a.writes] == [b"1", b"2"] and [d for _, d in b.writes] == [b"1"]


def _messages(link: Link) -> list[str]:
    return [text for _, text in link.events.messages()]


def test_relay_holds_a_busy_rooms_messages_one_window(verifier: Any) -> None:
    chat = MemoryRelay([verifier], batch_window=WINDOW)
    alice, bob, carol = (chat.login(n, PASSWORD) for n in ("alice", "bob", "carol"))
    _settle(chat)
    writes = _count_writes(bob)
    alice.client.send_text("one")
    chat.flush()
    assert _messages(bob) == ["one"]  # quiet: at once
    alice.client.send_text("two")
    alice.client.send_text("three")
    chat.flush()
    assert _messages(bob) == ["one"] and _messages(carol) == ["one"]
    chat.advance(WINDOW / 2)
    assert _messages(bob) == ["one"]
    chat.advance(WINDOW / 2)
    assert _messages(bob) == _messages(carol) == ["one", "two", "three"]
    # "two" and "three" went to bob as one write.
    assert len(writes) == 2 and writes[1].count(b'"msg"') == 2


def test_a_senders_acks_go_with_the_window_it_is_written_in(verifier: Any) -> None:
    """
    A sender is told its message was accepted as the others are sent it: at
    once in a quiet room, at the end of the window in a busy one, in the same
    write as what the window holds for it.
    """
    chat = MemoryRelay([verifier], batch_window=WINDOW)
    alice, bob, carol = (chat.login(n, PASSWORD) for n in ("alice", "bob", "carol"))
    _settle(chat)
    writes = _count_writes(alice)
    alice.client.send_text("one")
    chat.flush()
    assert len(alice.to_client.of("ack")) == 1  # quiet: at once, with the relay
    bob.client.send_text("from bob")
    alice.client.send_text("two")
    alice.client.send_text("three")
    chat.flush()
    assert len(alice.to_client.of("ack")) == 1  # held, as the messages are
    chat.advance(WINDOW)
    assert [a["n"] for a in alice.to_client.of("ack")][-2:] == [
        m["n"] for m in alice.to_server.of("send")][-2:]
    # bob's message and both acks, in the room's order, as one write.
    assert len(writes) == 2
    assert writes[1].count(b'"ack"') == 2 and writes[1].count(b'"msg"') == 1
    assert _messages(alice) == ["from bob"]


def test_history_on_stored_before_relayed_and_room_order(verifier: Any) -> None:
    reactor = MemoryReactorClock()
    store = MemoryStore(hold=True)
    history = History(store, reactor, limit=50)  # type: ignore[arg-type]
    history.start()
    store.answer("open")
    chat = MemoryRelay([verifier], history=history, reactor=reactor, batch_window=WINDOW)
    alice = chat.login("alice", PASSWORD)
    store.answer("recent")
    bob = chat.login("bob", PASSWORD)  # its history comes from memory
    _settle(chat)
    alice.client.send_text("one")
    chat.flush()
    assert _messages(bob) == []  # not stored yet: not relayed
    store.answer("append")
    chat.flush()
    assert _messages(bob) == ["one"]
    alice.client.send_text("two")
    chat.flush()
    store.answer("append")
    alice.client.send_text("three")
    chat.advance(WINDOW)
    assert _messages(bob) == ["one", "two"]  # "three" is not stored yet
    store.answer("append")
    chat.advance(WINDOW)
    assert _messages(bob) == ["one", "two", "three"]
    alice.client_io.loseConnection()
    chat.advance(WINDOW)
    assert bob.events.presence()[-1] == "alice left"


def test_room_closing_comes_after_the_held_messages(verifier: Any) -> None:
    chat = MemoryRelay([verifier], batch_window=WINDOW)
    alice, bob = chat.login("alice", PASSWORD), chat.login("bob", PASSWORD)
    _settle(chat)
    alice.client.send_text("one")
    alice.client.send_text("two")
    chat.flush()
    assert _messages(bob) == ["one"]
    room = chat.factory.rooms.remove("main")
    assert room is not None
    chat.factory.close_room(room)
    chat.flush()
    assert _messages(bob) == ["one", "two"]
    assert bob.to_client.last()["code"] == errors.RoomClosed.code


def test_slow_reader_dropped_with_batching(verifier: Any) -> None:
    limits = Limits(max_send_queue=20_000, message_rate=1e6, message_burst=10**6)
    chat = MemoryRelay([verifier], limits, batch_window=WINDOW)
    slow = chat.login("slow", PASSWORD)
    alice, bob = chat.login("alice", PASSWORD), chat.login("bob", PASSWORD)
    slow.stop_reading()
    sent = 0
    while not slow.closed:
        assert sent < 100, "the slow reader was never dropped"
        alice.client.send_text("x" * 1000)
        sent += 1
        chat.advance(WINDOW / 2)
    chat.advance(WINDOW)
    assert slow.to_client.last()["code"] == "slow"
    assert _messages(bob) == ["x" * 1000] * sent
    assert bob.events.presence()[-1] == "slow left"
    assert not alice.closed and not bob.closed


def _settle(chat: MemoryRelay) -> None:
    """
    Let the presence notices' window end, then a quiet second pass.
    """
    chat.advance(WINDOW)
    chat.advance(1)


def _count_writes(link: Link) -> list[bytes]:
    """
    Record every write the server makes to C{link}'s client from now on.
    """
    transport = link.server.transport
    writes: list[bytes] = []
    write = transport.write

    def counting(data: bytes) -> None:
        writes.append(data)
        write(data)

    transport.write = counting
    return writes
