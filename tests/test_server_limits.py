"""
Limits: what an offender is told, that others carry on, and the timers (Clock).
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from twistchat.crypto.seal import Sealer
from twistchat.server.limits import AddressBook, Limits, TokenBucket
from twistchat.server.protocol import State
from twistchat.server.room import Rooms
from twistchat.server.service import ChatServerFactory

from .conftest import OTHER_PASSWORD
from .test_server_protocol import BINDING, Peer, closed


def make_factory(verifier: Any, clock: Clock, **limits: Any) -> ChatServerFactory:
    return ChatServerFactory(
        Rooms([verifier]), clock, Limits(**limits), channel_binding=lambda t: BINDING
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=2, burst=3, now=0)
    assert [bucket.take(0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5)  # one token back after half a second at 2/s
    assert not bucket.take(0.5)
    assert [bucket.take(100) for _ in range(4)] == [True, True, True, False]  # capped


def test_penalties_grow_and_expire() -> None:
    book = AddressBook(Limits(free_failures=2, failure_penalty=5, max_failure_penalty=60))
    assert [book.failed("a", 0) for _ in range(2)] == [0, 0]
    assert [book.failed("a", 0) for _ in range(5)] == [5, 10, 20, 40, 60]
    assert book.penalty_left("a", 30) == 30
    assert book.penalty_left("b", 30) == 0
    book.expire(359)
    assert "a" in book.records
    book.expire(361)
    assert "a" not in book.records


def wrong_login(factory: ChatServerFactory, port: int) -> Peer:
    peer = Peer(factory, port)
    try:
        peer.login("mallory", password=OTHER_PASSWORD)
    except Exception:
        pass
    peer.proto.connectionLost(None)
    return peer


def test_repeated_wrong_passwords_are_penalised(verifier: Any, clock: Clock) -> None:
    factory = make_factory(verifier, clock, free_failures=3, failure_penalty=5)
    for i in range(4):
        wrong_login(factory, 6000 + i)
    blocked = Peer(factory, 6100)
    (error,) = blocked.received()
    assert error["code"] == "penalty"
    assert "try again in 5 seconds" in error["text"]
    assert closed(blocked)
    blocked.proto.connectionLost(None)
    clock.advance(5)
    peer = Peer(factory, 6101)
    assert peer.received() == []
    assert peer.login("alice")[0].type == "welcome"


def test_penalty_checked_again_when_a_guess_starts(verifier: Any, clock: Clock) -> None:
    factory = make_factory(verifier, clock, free_failures=0, failure_penalty=5)
    opened_early = Peer(factory, 6200)
    wrong_login(factory, 6201)
    opened_early.send("hello", v=1, room="main", name="mallory")
    (error,) = opened_early.received()
    assert error["code"] == "penalty"


def test_correct_password_refused_for_name_is_not_a_failed_guess(verifier: Any, clock: Clock) -> None:
    factory = make_factory(verifier, clock, free_failures=0)
    Peer(factory, 1).login("alice")
    taken = Peer(factory, 2)
    assert taken.login("alice")[0]["code"] == "name-taken"
    taken.proto.connectionLost(None)
    assert factory.addresses.penalty_left("127.0.0.1", clock.seconds()) == 0


def test_preauth_connections_capped_per_address_and_total(verifier: Any, clock: Clock) -> None:
    factory = make_factory(verifier, clock, max_preauth_per_address=2, max_preauth_total=3)
    first, second = Peer(factory, 1), Peer(factory, 2)
    third = Peer(factory, 3)
    assert third.received()[0]["code"] == "limit"
    third.proto.connectionLost(None)
    # logging in frees the slot
    first.login("alice")
    fourth = Peer(factory, 4)
    assert fourth.received() == []
    assert not closed(second) and not closed(fourth)
    factory.addresses.get("10.0.0.9")  # another address, but the total is reached
    other = Peer(factory, 5)
    other.proto.connectionLost(None)
    assert factory.preauth_total == 2


def test_idle_member_pinged_then_dropped(verifier: Any, clock: Clock) -> None:
    factory = make_factory(verifier, clock, idle_timeout=120, ping_timeout=20)
    alice, bob = Peer(factory, 1), Peer(factory, 2)
    alice.login("alice")
    bob.login("bob")
    alice.received()
    clock.advance(119)
    bob.send("pong")  # bob is active, alice silent
    clock.advance(1)
    assert [m.type for m in alice.received()] == ["ping"]
    alice.send("pong")
    clock.advance(20)
    assert not closed(alice)
    clock.advance(100)
    assert [m.type for m in alice.received()] == ["ping"]
    assert [m.type for m in bob.received()] == ["ping"]
    clock.advance(20)
    for peer in (alice, bob):
        error = peer.received()[-1]
        assert error["code"] == "timeout" and "ping" in error["text"]
        assert closed(peer)


def test_flooding_member_warned_then_dropped_others_unaffected(verifier: Any, clock: Clock) -> None:
    factory = make_factory(verifier, clock, message_rate=1, message_burst=3)
    alice, bob = Peer(factory, 1), Peer(factory, 2)
    alice.login("alice")
    bob.login("bob")
    alice.received()
    sealer = Sealer(bob.key, "main", "bob")

    def send() -> None:
        sid, n, ct = sealer.seal("flood")
        bob.send("send", sid=sid, n=n, ct=ct)

    for _ in range(3):
        send()
    assert [m.type for m in alice.received()] == ["msg"] * 3
    send()
    (notice,) = bob.received()
    assert notice.type == "notice" and notice["code"] == "rate"
    assert alice.received() == []
    clock.advance(1)
    send()  # a token came back: relayed, and the count of excess restarts
    assert [m.type for m in alice.received()] == ["msg"]
    for _ in range(4):
        send()
    messages = bob.received()
    assert messages[-1].type == "error" and messages[-1]["code"] == "rate"
    assert closed(bob) and not closed(alice)


def test_room_full(verifier: Any, clock: Clock) -> None:
    factory = make_factory(verifier, clock, max_members=1)
    Peer(factory, 1).login("alice")
    (error,) = Peer(factory, 2).login("bob")
    assert error["code"] == "room-full"


def test_member_that_stops_reading_is_dropped(verifier: Any, clock: Clock) -> None:
    factory = make_factory(verifier, clock, max_send_queue=1000, message_rate=1e6,
                           message_burst=10**6)
    alice, bob = Peer(factory, 1), Peer(factory, 2)
    alice.login("alice")
    bob.login("bob")
    assert bob.transport.producer is bob.proto
    bob.proto.pauseProducing()  # the transport's buffer is full
    sealer = Sealer(alice.key, "main", "alice")
    aborted: list[bool] = []
    bob.transport.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
    for _ in range(20):
        sid, n, ct = sealer.seal("x" * 40)
        alice.send("send", sid=sid, n=n, ct=ct)
        clock.advance(0)  # the room delivers at the end of each reactor turn
    assert aborted == [True]
    assert bob.proto.state is State.CLOSED
    assert bob.proto not in factory.rooms.get("main")
    assert not closed(alice)
