"""
Reconnecting: the backoff schedule, the session's behaviour across a dropped
connection (on task.Clock with a scripted connector), the keyring that keeps
derived keys instead of the password, and a real reconnect across a relay
restart on the same loopback port.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twistchat import errors, wire
from twistchat.client import TrustOnFirstUse, connect
from twistchat.client.api import (
    STABLE_AFTER,
    ChatMessage,
    ChatSession,
    Member,
    Reconnect,
    is_final,
)
from twistchat.client.keyring import Keyring
from twistchat.client.protocol import State
from twistchat.crypto.identity import Identity
from twistchat.crypto.kdf import PasswordSecrets, ScryptParams
from twistchat.crypto.signed import (
    NO_HASH,
    Fields,
    Sent,
    SignedMessage,
    UnsignedMessage,
    decode_signed,
    encode_signed,
)
from twistchat.server.room import Rooms
from twistchat.server.service import ChatServerFactory
from twistchat.server.tls import server_options
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.python.failure import Failure

from .conftest import PASSWORD, Recorder

NO_JITTER = Reconnect(jitter=lambda: 0.0)


# --- the schedule ----------------------------------------------------------------


def test_backoff_doubles_from_one_second_to_a_minute() -> None:
    assert [NO_JITTER.delay(n) for n in range(1, 10)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert NO_JITTER.delay(10_000) == 60


def test_backoff_jitter_adds_up_to_a_second() -> None:
    policy = Reconnect()
    delays = [policy.delay(3) for _ in range(200)]
    assert all(4 <= d < 5 for d in delays)
    assert len(set(delays)) > 100


def test_final_reasons() -> None:
    for error in (errors.WrongPassword(), errors.ServerNotAuthenticated(),
                  errors.FingerprintChanged(), errors.VersionMismatch(),
                  errors.SaltChanged(), errors.BadMessage(), errors.FrameTooLong(),
                  errors.RoomClosed("the room was closed by the server operator"),
                  errors.TLSFailed("TLS failed")):
        assert is_final(Failure(error)), error
    for error in (errors.ServerShutdown("down"),
                  errors.ConnectionClosed("lost"),
                  errors.Timeout("no answer to a ping"),
                  errors.RoomFull(), ConnectionRefusedError()):
        assert not is_final(Failure(error)), error
    # A name still held by our own previous connection may free up.
    assert not is_final(Failure(errors.NameTaken()), reconnecting=True)
    assert is_final(Failure(errors.NameTaken()), reconnecting=False)
    # So may a penalty on our address (someone else behind the same NAT).
    penalty = errors.Penalised("try again in 5 seconds")
    assert not is_final(Failure(penalty), reconnecting=True)
    assert is_final(Failure(penalty), reconnecting=False)


# --- a session across dropped connections, on a Clock -------------------------------


FAKE_IDENTITY = Identity.from_seed(b"\x09" * 32)


class FakeTransport:
    def __init__(self) -> None:
        self.closing = False

    def loseConnection(self) -> None:
        self.closing = True


class FakeProtocol:
    """
    Stands in for a logged-in ChatClientProtocol: records what is sent.
    """

    made = 0

    def __init__(self, name: str = "alice", room: str = "main") -> None:
        self.state = State.MEMBER
        self.name = name
        self.room = room
        self.sent: list[str] = []
        self.transport = FakeTransport()
        FakeProtocol.made += 1
        self.sid = FakeProtocol.made.to_bytes(16, "big")  # one sender session each
        self.identity = FAKE_IDENTITY
        self.commitment = b"\x00" * 32
        #: Acknowledge each message as it is sent (a server that does).
        self.acks: Any = None

    def send_signed(self, fields: Fields) -> Sent:
        assert self.state is State.MEMBER
        self.sent.append(fields.text)
        n = len(self.sent)
        digest = hashlib.sha256(self.sid + bytes([n % 256])).digest()
        if self.acks is not None:
            self.acks.append((self.sid, n))
        return Sent(self.sid, n, b"", digest)

    def send_message(self, kind: str, **fields: Any) -> None:
        pass


class FakeHandler:
    def __init__(self) -> None:
        self.session: Any = None

    def attach(self, session: Any) -> None:
        self.session = session


class FakeKeyring:
    forgotten = False

    def forget(self) -> None:
        self.forgotten = True


class ScriptedConnector:
    """
    Each login() returns a Deferred the test fires.
    """

    def __init__(self) -> None:
        self.attempts: list[defer.Deferred[Any]] = []
        self.keyring = FakeKeyring()

    def login(self) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.attempts.append(d)
        return d


def welcome(*members: str, rate: float | None = None) -> wire.Message:
    fields: dict[str, Any] = {
        "name": "alice", "room": "main", "addr": "127.0.0.1:1000",
        "members": [{"name": m, "addr": f"127.0.0.1:{2000 + i}", "key": bytes([i + 1]) * 32}
                    for i, m in enumerate(members)],
    }
    if rate is not None:
        fields.update(rate=rate, burst=1)
    return wire.Message("welcome", fields)


class Events(Recorder):
    def reconnecting(self, attempt: int, delay: float, reason: str) -> None:
        self._add(("reconnecting", attempt, delay, reason))

    def reconnected(self) -> None:
        self._add(("reconnected",))

    def member_joined(self, member: Member) -> None:
        self._add(("joined", member.name))

    def member_left(self, member: Member) -> None:
        self._add(("left", member.name))


def session_on_clock(policy: Reconnect | None = NO_JITTER, *members: str
                     ) -> tuple[ChatSession, task.Clock, ScriptedConnector, Events, FakeProtocol]:
    clock = task.Clock()
    connector = ScriptedConnector()
    events = Events()
    first = FakeProtocol()
    session = ChatSession(first, welcome(*members), events, clock, connector, policy)  # type: ignore[arg-type]
    return session, clock, connector, events, first


def drop(session: ChatSession, protocol: FakeProtocol, error: errors.TwistchatError | None) -> None:
    protocol.state = State.CLOSED
    session._closed(error)


def test_reconnects_with_backoff_and_reconciles_presence() -> None:
    session, clock, connector, events, first = session_on_clock(NO_JITTER, "bob", "carol")
    drop(session, first, errors.ServerShutdown("the server is shutting down"))
    assert session.reconnecting and not session.connected
    assert events.events == [("reconnecting", 1, 1.0, "the server is shutting down")]

    session.send("typed while away 1")
    session.send("typed while away 2")
    assert session.pending == 2

    clock.advance(0.99)
    assert connector.attempts == []
    clock.advance(0.01)
    assert len(connector.attempts) == 1
    connector.attempts[0].errback(Failure(ConnectionRefusedError()))
    assert events.events[-1][:3] == ("reconnecting", 2, 2.0)
    assert "refused" in events.events[-1][3].lower()

    clock.advance(2)
    assert len(connector.attempts) == 2
    second = FakeProtocol()
    handler = FakeHandler()
    # carol left and dave came while we were away; bob stayed.
    connector.attempts[1].callback((second, welcome("bob", "dave"), handler))
    assert handler.session is session
    assert not session.reconnecting and session.connected
    after = events.events[2:]
    assert after == [("reconnected",), ("joined", "dave"), ("left", "carol")]
    assert [m.name for m in session.members] == ["bob", "dave"]
    assert second.sent == ["typed while away 1", "typed while away 2"]
    assert session.pending == 0
    assert not session.ended.called
    assert clock.getDelayedCalls() == []

    # A drop after a minute connected starts the schedule again from one second.
    clock.advance(60)
    drop(session, second, None)
    assert events.events[-1] == ("reconnecting", 1, 1.0, "the server closed the connection")


def test_drops_right_after_each_rejoin_keep_backing_off() -> None:
    """
    A server that welcomes and then drops the client (a bug on join, say) is
    retried ever more slowly, each outage still numbered from attempt 1, and
    --reconnect-attempts still applies: each rejoined connection that dropped
    within STABLE_AFTER seconds counts as a failed attempt.
    """
    session, clock, connector, events, first = session_on_clock(
        Reconnect(jitter=lambda: 0.0, max_attempts=3))
    protocol = first
    for flaps in (0, 1, 2):
        drop(session, protocol, None)
        assert session.flapping == flaps
        assert events.events[-1][:3] == ("reconnecting", 1, 2.0 ** flaps)
        clock.advance(2.0 ** flaps)
        protocol = FakeProtocol()
        connector.attempts[-1].callback((protocol, welcome(), FakeHandler()))
        clock.advance(STABLE_AFTER - 1)
    drop(session, protocol, None)
    assert session.ended.called
    assert events.events[-1][0] == "disconnected"
    assert "gave up after 3 attempts" in events.events[-1][1]
    assert "the connection keeps dropping" in events.events[-1][1]


def rejoin(session: ChatSession, clock: task.Clock, connector: ScriptedConnector,
           events: Events, failures: int) -> FakeProtocol:
    """
    After a drop: let C{failures} attempts be refused, then the next one rejoin.
    """
    for _ in range(failures):
        clock.advance(events.events[-1][2])
        connector.attempts[-1].errback(Failure(ConnectionRefusedError()))
    clock.advance(events.events[-1][2])
    protocol = FakeProtocol()
    connector.attempts[-1].callback((protocol, welcome(), FakeHandler()))
    return protocol


def test_each_outage_numbers_its_attempts_from_one() -> None:
    """
    A server restarted twice a little while apart: the second outage is not a
    continuation of the first; it starts at attempt 1 and one second, and so
    does a third a few minutes later.
    """
    session, clock, connector, events, first = session_on_clock()
    drop(session, first, errors.ServerShutdown("the server is shutting down"))
    second = rejoin(session, clock, connector, events, failures=3)
    assert [e[1:3] for e in events.events if e[0] == "reconnecting"] == [
        (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0)]
    clock.advance(30)
    events.events.clear()
    drop(session, second, errors.ServerShutdown("the server is shutting down"))
    assert events.events == [("reconnecting", 1, 1.0, "the server is shutting down")]
    assert session.flapping == 0
    third = rejoin(session, clock, connector, events, failures=1)
    assert events.events[1][:3] == ("reconnecting", 2, 2.0)
    clock.advance(180)
    events.events.clear()
    drop(session, third, None)
    assert events.events == [("reconnecting", 1, 1.0, "the server closed the connection")]


def test_a_flapping_connection_backs_off_until_one_lasts() -> None:
    session, clock, connector, events, first = session_on_clock()
    drop(session, first, None)
    protocol = rejoin(session, clock, connector, events, failures=0)
    delays = []
    for _ in range(4):
        clock.advance(STABLE_AFTER - 0.5)  # welcomed, then dropped again
        drop(session, protocol, None)
        assert events.events[-1][:2] == ("reconnecting", 1)
        delays.append(events.events[-1][2])
        protocol = rejoin(session, clock, connector, events, failures=0)
    assert delays == [2.0, 4.0, 8.0, 16.0]
    assert session.flapping == 4
    # A connection that lasted ends the flapping.
    clock.advance(STABLE_AFTER)
    drop(session, protocol, None)
    assert events.events[-1][:3] == ("reconnecting", 1, 1.0)
    assert session.flapping == 0


def test_leaving_from_the_reconnecting_callback_stops_reconnecting() -> None:
    session, clock, connector, events, first = session_on_clock()
    events.reconnecting = lambda *args: session.leave()  # type: ignore[method-assign]
    drop(session, first, None)
    assert session.ended.called
    clock.advance(120)
    assert connector.attempts == [] and clock.getDelayedCalls() == []


def test_leaving_while_logging_in_again_cancels_the_login() -> None:
    session, clock, connector, events, first = session_on_clock()
    drop(session, first, None)
    clock.advance(1)
    session.leave()
    assert session.ended.called
    login = connector.attempts[0]
    assert login.called  # cancelled: the connector closes what it opened
    login.addErrback(lambda failure: failure.trap(defer.CancelledError))
    clock.advance(120)
    assert len(connector.attempts) == 1 and clock.getDelayedCalls() == []


def test_queued_messages_respect_the_new_rate() -> None:
    session, clock, connector, events, first = session_on_clock()
    drop(session, first, None)
    for i in range(3):
        session.send(f"m{i}")
    clock.advance(1)
    second = FakeProtocol()
    connector.attempts[0].callback((second, welcome(rate=2.0), FakeHandler()))
    assert second.sent == ["m0"]
    # 2 per second announced: the client keeps to 90% of it.
    clock.advance(0.55)
    assert second.sent == ["m0"]
    clock.advance(0.01)
    assert second.sent == ["m0", "m1"]
    clock.advance(0.56)
    assert second.sent == ["m0", "m1", "m2"]


def test_final_failure_while_reconnecting_ends_the_session() -> None:
    session, clock, connector, events, first = session_on_clock()
    drop(session, first, errors.ConnectionClosed("lost"))
    session.send("never delivered")
    clock.advance(1)
    connector.attempts[0].errback(Failure(errors.WrongPassword()))
    assert session.ended.called
    assert events.events[-1] == (
        "disconnected", "wrong password; 1 queued message(s) were not sent"
    )
    assert connector.keyring.forgotten
    assert clock.getDelayedCalls() == []
    with pytest.raises(errors.ProtocolError):
        session.send("after the end")


def test_final_reason_for_the_drop_is_not_retried() -> None:
    session, clock, connector, events, first = session_on_clock()
    drop(session, first, errors.TooFast("disconnected for sending too fast"))
    assert events.events == [("disconnected", "disconnected for sending too fast")]
    assert clock.getDelayedCalls() == [] and connector.attempts == []


def test_without_reconnect_a_drop_ends_the_session() -> None:
    session, clock, connector, events, first = session_on_clock(None)
    drop(session, first, errors.ServerShutdown("the server is shutting down"))
    assert events.events == [("disconnected", "the server is shutting down")]
    assert clock.getDelayedCalls() == []


def test_gives_up_after_max_attempts() -> None:
    session, clock, connector, events, first = session_on_clock(
        Reconnect(max_attempts=3, jitter=lambda: 0.0)
    )
    drop(session, first, None)
    for delay in (1, 2, 4):
        clock.advance(delay)
        connector.attempts[-1].errback(Failure(ConnectionRefusedError()))
    assert len(connector.attempts) == 3
    assert session.ended.called
    reason = events.events[-1][1]
    assert events.events[-1][0] == "disconnected"
    assert "gave up after 3 attempts" in reason and "refused" in reason.lower()
    assert [e[1] for e in events.events if e[0] == "reconnecting"] == [1, 2, 3]
    assert clock.getDelayedCalls() == []


def test_queue_is_bounded() -> None:
    session, clock, connector, events, first = session_on_clock(
        Reconnect(max_queued=2, jitter=lambda: 0.0)
    )
    drop(session, first, None)
    session.send("one")
    session.send("two")
    with pytest.raises(errors.ProtocolError, match="2 messages already wait"):
        session.send("three")
    assert session.pending == 2


def test_leave_while_waiting_stops_and_reports_unsent() -> None:
    session, clock, connector, events, first = session_on_clock()
    drop(session, first, None)
    session.send("queued")
    left = session.leave()
    assert left.called
    assert events.events[-1] == ("disconnected", "1 queued message(s) were not sent")
    assert clock.getDelayedCalls() == []
    clock.advance(100)
    assert connector.attempts == []


def test_leave_during_a_login_attempt_cancels_it() -> None:
    session, clock, connector, events, first = session_on_clock()
    drop(session, first, None)
    clock.advance(1)
    attempt = connector.attempts[0]
    session.leave()
    assert attempt.called  # cancelled
    assert events.events[-1] == ("disconnected", None)
    assert session.ended.result is None


def test_leave_with_nothing_queued_is_clean() -> None:
    session, clock, connector, events, first = session_on_clock()
    drop(session, first, None)
    session.leave()
    assert events.events[-1] == ("disconnected", None)


# --- the keyring --------------------------------------------------------------------


PARAMS = ScryptParams(2**15, 8, 1)


def test_keyring_derives_once_and_forgets_the_password() -> None:
    calls: list[tuple[str, bytes]] = []
    pending: list[defer.Deferred[PasswordSecrets]] = []

    def derive(password: str, salt: bytes, params: ScryptParams) -> defer.Deferred[PasswordSecrets]:
        calls.append((password, salt))
        pending.append(defer.Deferred())
        return pending[-1]

    keyring = Keyring("sesame", "main", derive)
    first = keyring.keys(b"s" * 16, PARAMS)
    second = keyring.keys(b"s" * 16, PARAMS)  # while the first runs
    assert calls == [("sesame", b"s" * 16)]
    assert not keyring.holds_password
    pending[0].callback(PasswordSecrets(1, 2, b"c" * 32))
    keys = first.result
    assert (keys.w0, keys.w1) == (1, 2) and len(keys.content_key) == 32
    assert second.result is keys
    assert "sesame" not in repr(vars(keyring))
    assert keyring.keys(b"s" * 16, PARAMS).result is keys
    assert len(calls) == 1

    other = keyring.keys(b"t" * 16, PARAMS)
    failure = []
    other.addErrback(failure.append)
    assert failure[0].check(errors.SaltChanged)
    assert "password" in failure[0].value.message
    keyring.forget()
    again: list[Failure] = []
    keyring.keys(b"s" * 16, PARAMS).addErrback(again.append)
    assert again[0].check(errors.SaltChanged)


def test_keyring_passes_derivation_errors_on() -> None:
    keyring = Keyring("sesame", "main", lambda p, s, r: defer.fail(MemoryError()))
    got: list[Failure] = []
    keyring.keys(b"s" * 16, PARAMS).addErrback(got.append)
    assert got[0].check(MemoryError)


# --- a real reconnect across a relay restart -------------------------------------


class Restartable:
    """
    A relay on a fixed loopback port that can be stopped and started again.
    """

    def __init__(self, certificate: Any, verifier: Any) -> None:
        self.certificate = certificate
        self.verifier = verifier
        self.port = 0
        self.listening: Any = None
        self.factory: ChatServerFactory | None = None

    async def start(self) -> None:
        self.factory = ChatServerFactory(Rooms([self.verifier]), reactor)
        endpoint = SSL4ServerEndpoint(reactor, self.port, server_options(self.certificate),
                                      interface="127.0.0.1")
        self.listening = await endpoint.listen(self.factory)
        self.port = self.listening.getHost().port

    async def stop(self) -> None:
        assert self.factory is not None
        await defer.maybeDeferred(self.listening.stopListening)
        await self.factory.shutdown()


def presence(events: Events, name: str) -> list[str]:
    return [e[0] for e in events.events
            if isinstance(e, tuple) and e[0] in ("joined", "left") and e[1] == name]


@pytest_twisted.ensureDeferred
async def test_real_reconnect_across_a_relay_restart(
    certificate: Any, verifier: Any, known_hosts: Path
) -> None:
    """
    alice reconnects (with a short schedule) across a relay restart on the same
    port; bob, without reconnect, is told of the shutdown and joins again by
    hand before alice is back. alice's line typed while the relay was down
    reaches him, and each side's presence notices are right and not repeated.
    """
    relay = Restartable(certificate, verifier)
    await relay.start()
    schedule = Reconnect(initial_delay=0.5, max_delay=2.0, jitter=lambda: 0.0)
    alice_events, bob_events = Events(), Events()
    alice = await connect(reactor, "127.0.0.1", relay.port, "alice", PASSWORD,
                          listener=alice_events, trust=TrustOnFirstUse(known_hosts),
                          timeout=10, reconnect=schedule)
    bob = await connect(reactor, "127.0.0.1", relay.port, "bob", PASSWORD,
                        listener=bob_events, trust=TrustOnFirstUse(known_hosts), timeout=10)
    bob_again = None
    try:
        await alice_events.wait_for(lambda e: e == ("joined", "bob"))
        await relay.stop()
        assert await bob.ended == "the server is shutting down"
        await alice_events.wait_for(
            lambda e: e == ("reconnecting", 1, 0.5, "the server is shutting down"))
        alice.send("sent while the relay was down")
        assert alice.pending == 1 and not alice.connected
        # One attempt is refused; the next is a second later.
        refused = await alice_events.wait_for(lambda e: e[0] == "reconnecting" and e[1] == 2)
        assert refused[2] == 1.0 and "refused" in refused[3].lower()
        await relay.start()
        bob_events = Events()
        bob_again = await connect(reactor, "127.0.0.1", relay.port, "bob", PASSWORD,
                                  listener=bob_events, trust=TrustOnFirstUse(known_hosts),
                                  timeout=10)
        await alice_events.wait_for(lambda e: e == ("reconnected",), timeout=10)
        got = await bob_events.wait_for(
            lambda e: isinstance(e, ChatMessage) and e.text == "sent while the relay was down",
            timeout=10)
        assert got.sender == "alice"
        assert alice.pending == 0 and alice.connected
        # No duplicate and no lost notice: for each, what the other saw
        # alternates entered / left and ends with entered (both are present).
        # (alice may or may not hear bob leave during the shutdown, depending
        # on which connection the server closes first.)
        assert presence(alice_events, "bob") in (["joined"], ["joined", "left", "joined"])
        assert presence(bob_events, "alice") == ["joined"]
        assert not any(e[0] == "disconnected" for e in alice_events.events)
        assert sorted(m.name for m in await alice.who()) == ["alice", "bob"]
    except BaseException:
        print("alice", alice_events.events, "\nbob", bob_events.events)
        raise
    finally:
        await alice.leave()
        if bob_again is not None:
            await bob_again.leave()
        await relay.stop()
    assert alice_events.events[-1] == ("disconnected", None)
    # Pinned once, at the first login; the reconnect found the pin.
    assert len(known_hosts.read_text().splitlines()) == 1


@pytest_twisted.ensureDeferred
async def test_real_reconnect_continues_the_chain_another_client_carried_on(
    certificate: Any, verifier: Any, tmp_path: Path
) -> None:
    """
    alice's connection drops; while her session waits to reconnect, another
    client of the same profile joins as alice, says two things and leaves.
    Back in the room, the first session numbers on from the other client's
    messages: carol, there throughout, sees alice's four messages as one
    chain, with no fork.
    """
    relay = Restartable(certificate, verifier)
    await relay.start()
    profile = tmp_path / "alice"

    def join(name: str, where: Path, events: Events, **options: Any) -> Any:
        return connect(reactor, "127.0.0.1", relay.port, name, PASSWORD, listener=events,
                       trust=TrustOnFirstUse(where / "known_hosts"), profile=where,
                       timeout=10, **options)

    def said(events: Events, text: str) -> Any:
        return events.wait_for(lambda e: isinstance(e, ChatMessage) and e.text == text)

    alice_events, other_events, carol_events = Events(), Events(), Events()
    # Her first attempt comes 4 s after the drop: time for the other client's turn.
    alice = await join("alice", profile, alice_events,
                       reconnect=Reconnect(initial_delay=4.0, max_delay=4.0, jitter=lambda: 0.0))
    carol = await join("carol", tmp_path / "carol", carol_events)
    try:
        alice.send("one")
        await said(carol_events, "one")
        assert relay.factory is not None
        room = relay.factory.rooms.get("main")
        assert room is not None
        [member] = [m for m in room.members if m.name == "alice"]
        member.transport.abortConnection()  # as a network that drops her
        await alice_events.wait_for(lambda e: e[0] == "reconnecting")
        other = await join("alice", profile, other_events)
        other.send("two")
        other.send("three")
        await said(carol_events, "three")
        await other.leave()
        await alice_events.wait_for(lambda e: e == ("reconnected",), timeout=15)
        alice.send("four")
        await said(carol_events, "four")
        assert [e.text for e in carol_events.events if isinstance(e, ChatMessage)] == [
            "one", "two", "three", "four"]
        assert carol_events.alarms == []
        assert alice.transcript.seq == 4
    except BaseException:
        print("alice", alice_events.events, "\ncarol", carol_events.events, carol_events.alarms)
        raise
    finally:
        await alice.leave()
        await carol.leave()
        await relay.stop()


# --- history replayed at a rejoin ---------------------------------------------------


def history_message(sender: str, n: int, text_id: bytes = b"s" * 16, hist: bool = True
                    ) -> wire.Message:
    fields: dict[str, Any] = {"from": sender, "sid": text_id, "n": n, "ct": b"x" * 32}
    if hist:
        fields.update(ts=1000.0 + n, hist=True)
    return wire.Message("msg", fields)


BOB = Identity.from_seed(b"\x0b" * 32)


def bob_says(texts: list[str]) -> list[SignedMessage]:
    """
    Bob's chain of signed messages (as opened), one per text, numbered from 1.
    """
    chain, prev = [], NO_HASH
    for seq, text in enumerate(texts, 1):
        envelope = encode_signed(BOB, "main", "bob", b"s" * 16, seq,
                                 Fields(seq, prev, NO_HASH, text))
        chain.append(decode_signed("main", "bob", b"s" * 16, seq, envelope))
        prev = chain[-1].hash
    return chain


def test_a_replay_at_a_rejoin_delivers_only_what_was_missed() -> None:
    """
    On a Clock, the session as the protocol drives it: what the listener has
    seen (or the session sent) is not delivered again from a replay; a live
    message that repeats one is reported as a replay.
    """
    session, clock, connector, events, first = session_on_clock(NO_JITTER, "bob")
    one, two, three = bob_says(["one", "two", "three"])
    session._message("bob", one, history_message("bob", 1))
    session._message("bob", two, history_message("bob", 2, hist=False))
    session.send("mine")
    assert first.sent == ["mine"]
    drop(session, first, None)
    clock.advance(1)
    connector.attempts[0].callback((FakeProtocol(), welcome("bob"), FakeHandler()))
    for n, message in ((1, one), (2, two), (3, three)):
        session._message("bob", message, history_message("bob", n))
    got = [(e.text, e.history) for e in events.events if isinstance(e, ChatMessage)]
    assert got == [("one", True), ("two", False), ("three", True)]
    session._message("bob", two, history_message("bob", 2, hist=False))
    assert events.events[-1] == ("alarm", "replay", "bob")


def test_remembered_messages_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # Unsigned messages (from history sealed before identity keys) have no
    # chain: the session remembers the last REMEMBERED of them.
    from twistchat.client import session as session_module

    monkeypatch.setattr(session_module, "REMEMBERED", 3)
    session, clock, connector, events, first = session_on_clock(NO_JITTER, "bob")
    for n in range(1, 6):
        session._message("bob", UnsignedMessage(str(n)), history_message("bob", n))
    assert len(session._seen) == 3
    # forgotten: shown again
    session._message("bob", UnsignedMessage("1"), history_message("bob", 1))
    session._message("bob", UnsignedMessage("5"), history_message("bob", 5))
    shown = [e for e in events.events if isinstance(e, ChatMessage)]
    assert [e.text for e in shown] == ["1", "2", "3", "4", "5", "1"]
    assert not any(e.signed for e in shown)


@pytest_twisted.ensureDeferred
async def test_real_rejoin_shows_only_the_history_missed(
    certificate: Any, verifier: Any, known_hosts: Path, tmp_path: Path
) -> None:
    """
    Over TLS with the real history store: alice's connection is cut by the
    server; she reconnects and the server replays the room's history. She
    is shown bob's message from while she was away, once, and nothing she had
    already seen or sent herself.
    """
    from twistchat.server.history import History, HistoryStore

    history = History(HistoryStore(tmp_path / "history.sqlite3", reactor), reactor)
    history.start()
    factory = ChatServerFactory(Rooms([verifier]), reactor, history=history)
    listening = await SSL4ServerEndpoint(
        reactor, 0, server_options(certificate), interface="127.0.0.1").listen(factory)
    port = listening.getHost().port
    alice_events, bob_events = Events(), Events()
    schedule = Reconnect(initial_delay=0.2, max_delay=1.0, jitter=lambda: 0.0)
    alice = await connect(reactor, "127.0.0.1", port, "alice", PASSWORD,
                          listener=alice_events, trust=TrustOnFirstUse(known_hosts),
                          timeout=10, reconnect=schedule)
    bob = await connect(reactor, "127.0.0.1", port, "bob", PASSWORD,
                        listener=bob_events, trust=TrustOnFirstUse(known_hosts), timeout=10)

    def texts(events: Events) -> list[tuple[str, bool]]:
        return [(e.text, e.history) for e in events.events if isinstance(e, ChatMessage)]

    try:
        await alice_events.wait_for(lambda e: e == ("joined", "bob"))
        bob.send("before 1")
        bob.send("before 2")
        alice.send("from alice")
        await alice_events.wait_for(
            lambda e: isinstance(e, ChatMessage) and e.text == "before 2")
        await bob_events.wait_for(
            lambda e: isinstance(e, ChatMessage) and e.text == "from alice")
        for connection in list(factory.connections):
            if connection.name == "alice":
                connection.transport.abortConnection()
        await alice_events.wait_for(lambda e: isinstance(e, tuple) and e[0] == "reconnecting")
        bob.send("while away")
        await alice_events.wait_for(lambda e: e == ("reconnected",), timeout=10)
        await alice_events.wait_for(
            lambda e: isinstance(e, ChatMessage) and e.text == "while away")
        bob.send("after")
        await alice_events.wait_for(lambda e: isinstance(e, ChatMessage) and e.text == "after")
        seen = texts(alice_events)
        assert seen[:2] == [("before 1", False), ("before 2", False)]
        # "while away" was stored while alice was gone: replayed (or, if the
        # rejoin won the race, live), once.
        assert [t for t, _ in seen] == ["before 1", "before 2", "while away", "after"]
        assert seen[-1] == ("after", False)
    except BaseException:
        print("alice", alice_events.events, "\nbob", bob_events.events)
        raise
    finally:
        await alice.leave()
        await bob.leave()
        await defer.maybeDeferred(listening.stopListening)
        await factory.shutdown()
        await history.stop()
