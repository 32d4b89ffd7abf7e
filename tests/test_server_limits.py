"""
Limits: what an offender is told, that others carry on, and the timers (Clock).
"""

from __future__ import annotations

from typing import Any

import pytest
from twistchat import wire
from twistchat.crypto.seal import Sealer
from twistchat.crypto.spake2plus import G, encode_point
from twistchat.server.limits import AddressBook, Limits, TokenBucket
from twistchat.server.protocol import State
from twistchat.server.room import Rooms
from twistchat.server.service import ChatServerFactory
from twisted.internet.task import Clock

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
    opened_early.send("hello", v=wire.PROTOCOL_VERSION, room="main", name="mallory")
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
    assert [m.type for m in bob.received()] == ["ack"] * 3
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
    assert aborted == [True]
    error = bob.received()[-1]
    assert error.type == "error" and error["code"] == "slow"
    assert error["text"] == "disconnected: you stopped reading and too much was queued for you"
    assert bob.proto.state is State.CLOSED
    assert bob.proto not in factory.rooms.get("main")
    assert not closed(alice)
    # A frame still on its way to the dropped member (a relay loop's copy of
    # the member list, a held history frame) is neither written nor counted.
    written = bob.transport.value()
    bob.proto.resumeProducing()
    bob.proto.deliver(b"\x00\x00\x00\x02{}")
    assert bob.transport.value() == written


SHARE = encode_point(G * 12345)


def start_guess(factory: ChatServerFactory, port: int) -> tuple[Peer, list[Any]]:
    """
    Open a connection, say hello and send a password share; return what came back.
    """
    peer = Peer(factory, port)
    replies = peer.received()
    if not replies:
        peer.send("hello", v=wire.PROTOCOL_VERSION, room="main", name="mallory")
        replies = peer.received()
    if replies and replies[0].type == "params":
        peer.send("share", X=SHARE)
        replies = peer.received()
    return peer, replies


def test_guesses_in_progress_capped_per_address(verifier: Any, clock: Clock) -> None:
    """
    Past C{max_guesses_per_address} shares in progress, a further share from
    the same address waits (no refusal: it may be a member behind the same NAT)
    and is answered, in its own reactor turn, when a check ends.
    """
    factory = make_factory(verifier, clock, max_guesses_per_address=3, free_failures=100)
    record = factory.addresses.get("127.0.0.1")
    guessing = [start_guess(factory, 7000 + i) for i in range(3)]
    assert all(replies[0].type == "verify" for _, replies in guessing)
    gone, replies = start_guess(factory, 7010)
    assert replies == [] and gone.proto.state is State.QUEUED
    waiting, replies = start_guess(factory, 7011)
    assert replies == [] and len(record.queued) == 2
    # A queued connection that goes away gives up its place.
    gone.proto.connectionLost(None)
    assert record.guessing == 3
    # Giving up at confirmation frees a slot (and counts a failure)...
    guessing[0][0].proto.connectionLost(None)
    assert record.failures == 1 and record.guessing == 3
    # ...which the next waiting share gets, answered in a turn of its own.
    assert waiting.received() == []
    clock.advance(0)
    assert [m.type for m in waiting.received()] == ["verify"]
    assert not closed(waiting) and not record.queued
    for peer, _ in [*guessing[1:], (waiting, None)]:
        peer.proto.connectionLost(None)
    assert record.guessing == 0


def test_queued_share_meets_a_penalty(verifier: Any, clock: Clock) -> None:
    factory = make_factory(verifier, clock, max_guesses_per_address=1, free_failures=0,
                           failure_penalty=5)
    first, _ = start_guess(factory, 7200)
    queued, replies = start_guess(factory, 7201)
    assert replies == []
    first.proto.connectionLost(None)  # a failed guess: the penalty starts
    clock.advance(0)
    (error,) = queued.received()
    assert error["code"] == "penalty" and closed(queued)
    queued.proto.connectionLost(None)
    assert factory.addresses.get("127.0.0.1").guessing == 0


def test_penalty_checked_again_at_the_share(verifier: Any, clock: Clock) -> None:
    factory = make_factory(verifier, clock, free_failures=0, failure_penalty=5)
    early = Peer(factory, 7100)
    early.send("hello", v=wire.PROTOCOL_VERSION, room="main", name="mallory")
    assert early.received()[0].type == "params"
    wrong_login(factory, 7101)
    early.send("share", X=SHARE)
    (error,) = early.received()
    assert error["code"] == "penalty"
    assert factory.addresses.get("127.0.0.1").guessing == 0


def guesses_evaluated(factory: ChatServerFactory, clock: Clock, seconds: float,
                      tick: float) -> int:
    """
    One address guessing as fast as the server lets it: every C{tick} it opens
    as many connections as allowed at once, sends a share on each, and hangs up
    once the server's key confirmations (each a tested guess) have arrived.
    """
    evaluated = 0
    port = 10000
    end = clock.seconds() + seconds
    while clock.seconds() < end:
        peers = []
        for _ in range(factory.limits.max_preauth_per_address):
            port += 1
            peer, replies = start_guess(factory, port)
            if replies and replies[0].type == "verify":
                evaluated += 1
            peers.append(peer)
        for peer in peers:
            peer.proto.connectionLost(None)
        clock.advance(tick)
    return evaluated


def test_guesses_per_minute_and_hour_from_one_address(verifier: Any, clock: Clock) -> None:
    """
    The figures in docs/operations.md ("How fast can one address guess"),
    counted in-process with a Clock: 9 guesses in the first minute, 27 in the
    first hour, then 3 per 10 minutes (18 an hour).
    """
    factory = make_factory(verifier, clock)
    assert guesses_evaluated(factory, clock, 60, tick=0.25) == 9
    assert guesses_evaluated(factory, clock, 3540, tick=1) == 27 - 9
    assert guesses_evaluated(factory, clock, 3600, tick=1) == 18


@pytest.mark.parametrize("kind, answer", [("ping", "pong"), ("who", "members"), ("pong", None)])
def test_requests_count_against_the_rate(verifier: Any, clock: Clock, kind: str,
                                         answer: str | None) -> None:
    """
    A flood of pings, who requests or pongs is held to the message rate like
    messages: answers stop at the burst, then a notice, then a disconnect.
    """
    factory = make_factory(verifier, clock, message_rate=1, message_burst=3)
    alice, bob = Peer(factory, 1), Peer(factory, 2)
    alice.login("alice")
    bob.login("bob")
    alice.received()
    for _ in range(3):
        bob.send(kind)
    assert [m.type for m in bob.received()] == ([answer] * 3 if answer else [])
    bob.send(kind)
    (notice,) = bob.received()
    assert notice.type == "notice" and notice["code"] == "rate"
    for _ in range(2):
        bob.send(kind)
    assert not closed(bob) and bob.received() == []
    bob.send(kind)
    (error,) = bob.received()
    assert error.type == "error" and error["code"] == "rate"
    assert closed(bob) and not closed(alice)
    assert [m.type for m in alice.received()] == ["left"]


def test_client_pacing_leaves_room_for_requests_and_bunching() -> None:
    """
    A client sending as fast as its pacing allows, with a request (a pong or a
    who) every 5 seconds and its messages arriving in bunches of three, is
    never over the server's rate (the server drops messages over it).
    """
    from twistchat.client.api import pacing

    rate, burst = 10.0, 30
    server = TokenBucket(rate, burst, 0.0)
    client = pacing(rate, burst, 0.0)
    now, sent, in_flight = 0.0, 0, []
    while now < 60:
        if client.take(now):
            sent += 1
            in_flight.append(now)
        if len(in_flight) == 3:  # delivered together, late
            for _ in in_flight:
                assert server.take(now), f"refused at {now:.2f} s after {sent} messages"
            in_flight = []
        if now % 5.0 < 0.01:
            assert server.take(now)  # a pong or a who
        now = round(now + 0.01, 2)
    assert sent > 0.85 * rate * 60


@pytest.mark.parametrize("max_frame", [4096, wire.MAX_FRAME])
def test_welcome_announces_the_longest_text_that_fits(verifier: Any, clock: Clock,
                                                      max_frame: int) -> None:
    factory = make_factory(verifier, clock, max_frame=max_frame)
    welcome = Peer(factory, 1).login("alice")[0]
    assert welcome.type == "welcome"
    assert welcome["max_text"] == wire.max_text_for(max_frame)


def test_queued_share_that_goes_away_leaves_the_queue(verifier: Any, clock: Clock) -> None:
    """
    Connections that close while waiting for a guess slot are not kept: an
    address cycling through them cannot grow its queue.
    """
    factory = make_factory(verifier, clock, max_guesses_per_address=1, free_failures=100)
    record = factory.addresses.get("127.0.0.1")
    holder, _ = start_guess(factory, 7300)
    for i in range(50):
        peer, replies = start_guess(factory, 7400 + i)
        assert replies == [] and len(record.queued) == 1
        peer.proto.connectionLost(None)
        assert not record.queued
    holder.proto.connectionLost(None)
    assert record.guessing == 0


def test_closing_a_room_does_not_count_logins_in_progress(verifier: Any, clock: Clock) -> None:
    factory = make_factory(verifier, clock, free_failures=0)
    guessing, replies = start_guess(factory, 7500)
    assert replies[0].type == "verify"
    room = factory.rooms.remove("main")
    assert room is not None
    factory.close_room(room)
    (error,) = guessing.received()
    assert error["code"] == "wrong-password" and closed(guessing)
    guessing.proto.connectionLost(None)
    record = factory.addresses.get("127.0.0.1")
    assert record.failures == 0 and factory.penalty("127.0.0.1") is None


@pytest.mark.parametrize("host, key", [
    ("127.0.0.1", "127.0.0.1"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("2001:db8:1:2::9", "2001:db8:1:2::/64"),
    ("2001:db8:1:3::9", "2001:db8:1:3::/64"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("fe80::1%eth0", "fe80::/64"),
])
def test_limits_count_ipv6_peers_by_their_64(host: str, key: str) -> None:
    from twistchat.server.limits import source

    assert source(host) == key


def test_penalty_covers_the_whole_ipv6_64(verifier: Any, clock: Clock) -> None:
    """
    Failed logins from one address of a /64 penalise every address in it: a
    guesser cannot take a fresh address for each guess.
    """
    from twisted.internet.address import IPv6Address
    from twisted.internet.testing import StringTransport

    factory = make_factory(verifier, clock, free_failures=0, failure_penalty=5)

    def connect(host: str) -> tuple[Any, StringTransport]:
        transport = StringTransport(peerAddress=IPv6Address("TCP", host, 4000))
        proto = factory.buildProtocol(None)
        proto.makeConnection(transport)
        return proto, transport

    guesser, _ = connect("2001:db8:1:2::1")
    assert guesser.host == "2001:db8:1:2::/64"
    factory.login_failed(guesser)
    _, neighbour = connect("2001:db8:1:2::ffff")
    assert b'"code":"penalty"' in neighbour.value()
    _, elsewhere = connect("2001:db8:9::1")
    assert b"penalty" not in elsewhere.value()
