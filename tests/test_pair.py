"""
The real server protocol and the real client protocol talking in memory
(tests/memory.py): login, chat, presence, history, and every deadline and
limit on a clock the test moves. Each test asserts what crossed the wire and what the
client reported; the same cases over real TLS sockets are in
test_integration.py, test_hostile.py and test_server_limits.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from twistchat import errors
from twistchat.server.history import History
from twistchat.server.limits import Limits
from twisted.internet.testing import MemoryReactorClock

from .conftest import OTHER_PASSWORD, PASSWORD
from .memory import MemoryRelay, MemoryStore


def relay(verifier: Any, **limits: Any) -> MemoryRelay:
    return MemoryRelay([verifier], Limits(**limits))


def test_login(verifier: Any) -> None:
    chat = relay(verifier)
    alice = chat.login("alice", PASSWORD)
    assert alice.to_server.types() == ["hello", "share", "confirm"]
    assert alice.to_client.types() == ["params", "verify", "welcome"]
    (_, welcome), = alice.events.events
    assert (welcome["name"], welcome["room"], welcome["members"]) == ("alice", "main", [])
    assert welcome["addr"] == f"127.0.0.1:{alice.client_io.getHost().port}"
    assert not alice.closed


def test_chat_is_sealed_and_not_echoed(verifier: Any) -> None:
    chat = relay(verifier)
    alice, bob = chat.login("alice", PASSWORD), chat.login("bob", PASSWORD)
    bob.client.send_text("hello alice")
    alice.client.send_text("hi bob")
    chat.flush()
    assert alice.events.messages() == [("bob", "hello alice")]
    assert bob.events.messages() == [("alice", "hi bob")]
    (relayed,) = alice.to_client.of("msg")
    assert relayed["from"] == "bob" and b"hello alice" not in relayed["ct"]
    assert bob.to_client.of("msg")[0]["from"] == "alice"  # its own never comes back


def test_presence_and_who(verifier: Any) -> None:
    chat = relay(verifier)
    alice = chat.login("alice", PASSWORD)
    bob = chat.login("bob", PASSWORD)
    assert [m["name"] for m in bob.events.events[0][1]["members"]] == ["alice"]
    bob.client.send_message("who")
    chat.flush()
    (_, members), = [e for e in bob.events.events if e[0] == "members"]
    assert sorted(m["name"] for m in members["members"]) == ["alice", "bob"]
    bob.client_io.loseConnection()
    chat.flush()
    assert alice.events.presence() == ["bob joined", "bob left"]
    assert bob.events.ending() is None  # it left: no error
    assert alice.to_client.of("left")[0]["addr"] == f"127.0.0.1:{bob.client_io.getHost().port}"


def test_wrong_password_nobody_told(verifier: Any) -> None:
    chat = relay(verifier)
    alice = chat.login("alice", PASSWORD)
    mallory = chat.connect("mallory", OTHER_PASSWORD)
    chat.flush()
    # The server's proof does not verify: the client never confirms.
    assert mallory.to_server.types() == ["hello", "share"]
    assert isinstance(mallory.events.ending(), errors.ServerNotAuthenticated)
    assert mallory.closed
    assert chat.factory.addresses.get("127.0.0.1").failures == 1
    carol = chat.login("carol", PASSWORD)
    assert carol.events.events[0][1]["members"] == [
        {"name": "alice", "addr": f"127.0.0.1:{alice.client_io.getHost().port}",
         "key": alice.client.identity.public_key}
    ]
    assert alice.events.presence() == ["carol joined"]


def test_server_handshake_deadline(verifier: Any) -> None:
    chat = relay(verifier, handshake_timeout=10)
    silent = chat.connect("mallory", PASSWORD, tls=False)  # TLS never finishes
    half = chat.connect("eve", PASSWORD, tls=False)
    half.client_io.write(b"\x00\x00\x00\x64{\"type\":\"hel")  # a cut-off frame
    chat.advance(9.9)
    assert silent.to_client.frames == [] and not silent.closed
    chat.advance(0.1)
    for link in (silent, half):
        error = link.to_client.last()
        assert (error.type, error["code"]) == ("error", "timeout")
        assert error["text"] == "handshake not completed within 10 seconds"
        assert link.closed
        ending = link.events.ending()
        assert isinstance(ending, errors.Timeout) and ending.message == error["text"]
    assert chat.factory.preauth_total == 0


@pytest.mark.parametrize("stage, counted", [("after hello", 0), ("after the server's proof", 1)])
def test_server_handshake_deadline_mid_login(verifier: Any, stage: str, counted: int) -> None:
    """
    A login that stops half way times out; stopping after the server's
    proof could have tested one password guess, so it counts as one.
    """
    chat = relay(verifier, handshake_timeout=10)
    mallory = chat.connect("mallory", PASSWORD)
    # Deliver step by step until the server has the client's last frame of
    # that stage, then lose everything after it.
    last = "hello" if stage == "after hello" else "share"
    for _ in range(10):
        mallory.pump()
        if last in mallory.to_server.types():
            break
    mallory.cut_network()
    chat.advance(10)
    assert mallory.to_client.last()["code"] == "timeout"
    assert chat.factory.addresses.get("127.0.0.1").failures == counted
    assert chat.factory.preauth_total == 0


def test_client_handshake_deadline(verifier: Any) -> None:
    chat = relay(verifier, handshake_timeout=60)
    alice = chat.connect("alice", PASSWORD, timeout=5)
    alice.cut_network()  # the server never answers
    chat.advance(4.9)
    assert alice.events.events == []
    chat.advance(0.1)
    ending = alice.events.ending()
    assert isinstance(ending, errors.Timeout)
    assert ending.message == "no answer from the server within 5 seconds"
    assert alice.closed


def test_ping_answered_keeps_a_quiet_member(verifier: Any) -> None:
    chat = relay(verifier, idle_timeout=120, ping_timeout=20)
    alice = chat.login("alice", PASSWORD, keepalive=None)
    for _ in range(3):
        chat.advance(120)
    assert alice.to_client.types()[-3:] == ["ping"] * 3
    assert alice.to_server.types()[-3:] == ["pong"] * 3
    assert not alice.closed


def test_ping_timeout_on_a_half_open_connection(verifier: Any) -> None:
    """
    The network goes away under a member: the server pings it and drops it
    (the room hears it left); the client, told nothing, pings the server
    after its own keepalive and gives up on it.
    """
    chat = relay(verifier, idle_timeout=120, ping_timeout=20)
    bob = chat.login("bob", PASSWORD, keepalive=None)
    alice = chat.login("alice", PASSWORD, keepalive=(300, 20))
    alice.cut_network()
    chat.advance(120)
    assert alice.to_client.types()[-1] == "ping"
    assert bob.to_server.types()[-1] == "pong"  # bob answers, alice cannot
    chat.advance(20)
    error = alice.to_client.last()
    assert (error.type, error["code"]) == ("error", "timeout")
    assert error["text"] == "no answer to a ping within 20 seconds"
    assert bob.events.presence() == ["alice joined", "alice left"]
    assert alice.events.kinds() == ["logged-in"]  # the client has heard nothing
    chat.advance(300 - 140)
    assert alice.to_server.types()[-1] == "ping"
    assert not alice.closed
    chat.advance(20)
    ending = alice.events.ending()
    assert isinstance(ending, errors.Timeout)
    assert ending.message == "no answer from the server to a ping within 20 seconds"
    assert alice.closed and not bob.closed


def test_slow_reader_dropped_others_get_everything(verifier: Any) -> None:
    chat = relay(verifier, max_send_queue=20_000, message_rate=1e6, message_burst=10**6)
    slow = chat.login("slow", PASSWORD)
    alice, bob = chat.login("alice", PASSWORD), chat.login("bob", PASSWORD)
    slow.stop_reading()
    sent = 0
    while not slow.closed:
        assert sent < 100, "the slow reader was never dropped"
        alice.client.send_text("x" * 1000)
        sent += 1
        chat.flush()
    assert slow.to_client.last()["code"] == "slow"
    assert slow.to_client.last()["text"] == errors.SlowReader().message
    assert bob.events.messages() == [("alice", "x" * 1000)] * sent
    assert bob.events.presence()[-1] == "slow left"
    assert not alice.closed and not bob.closed
    # The connection was aborted: what the slow reader had not read is gone.
    assert slow.events.messages() == [] and slow.events.kinds()[-1] == "closed"


def test_rate_limit_notice_then_disconnect(verifier: Any) -> None:
    chat = relay(verifier, message_rate=1, message_burst=3)
    alice, mallory = chat.login("alice", PASSWORD), chat.login("mallory", PASSWORD)
    for i in range(10):
        mallory.client.send_text(f"spam {i}")
    chat.flush()
    assert alice.events.messages() == [("mallory", f"spam {i}") for i in range(3)]
    assert mallory.to_client.types()[-2:] == ["notice", "error"]
    notice, error = mallory.to_client.frames[-2:]
    assert notice["code"] == "rate" and error["code"] == "rate"
    ending = mallory.events.ending()
    assert isinstance(ending, errors.TooFast)
    assert ending.message == "disconnected for sending too fast"
    assert alice.events.presence()[-1] == "mallory left"


def test_rate_recovers_with_time(verifier: Any) -> None:
    chat = relay(verifier, message_rate=1, message_burst=3)
    alice, bob = chat.login("alice", PASSWORD), chat.login("bob", PASSWORD)
    for i in range(6):
        bob.client.send_text(f"m{i}")
        chat.advance(1)
    assert [t for _, t in alice.events.messages()] == [f"m{i}" for i in range(6)]
    assert bob.to_client.of("notice") == []


def test_rate_bucket_made_on_first_use_is_full_but_no_fuller(verifier: Any) -> None:
    """
    The rate bucket is made on a member's first message, not when it joins:
    after a long quiet spell the member gets the burst, and no more, exactly
    as a bucket made at the join would have allowed.
    """
    chat = relay(verifier, message_rate=1, message_burst=3)
    alice, bob = chat.login("alice", PASSWORD), chat.login("bob", PASSWORD, keepalive=None)
    chat.advance(50)
    for i in range(5):
        bob.client.send_text(f"m{i}")
    chat.flush()
    assert [t for _, t in alice.events.messages()] == ["m0", "m1", "m2"]
    assert bob.to_client.types()[-1] == "notice"
    chat.advance(1)
    bob.client.send_text("m5")
    chat.flush()
    assert [t for _, t in alice.events.messages()][-1] == "m5"


def test_late_joiner_gets_history_then_live(verifier: Any) -> None:
    """
    With history (on the in-memory store), a member who joins late is sent
    what was said before, marked as replayed, then what is said live.
    """
    reactor = MemoryReactorClock()
    store = MemoryStore()
    history = History(store, reactor, limit=50)  # type: ignore[arg-type]
    history.start()
    chat = MemoryRelay([verifier], history=history, reactor=reactor)
    alice = chat.login("alice", PASSWORD)
    alice.client.send_text("before you came")
    chat.flush()
    bob = chat.login("bob", PASSWORD)
    alice.client.send_text("now")
    chat.flush()
    assert bob.events.messages() == [("alice", "before you came"), ("alice", "now")]
    assert [(m["from"], m.get("hist", False)) for m in bob.to_client.of("msg")] == [
        ("alice", True), ("alice", False),
    ]
    assert [e[1]["code"] for e in bob.events.events if e[0] == "notice"] == ["history"]
    assert [(r.sender, r.n) for r in store.rows] == [("alice", 1), ("alice", 2)]
    assert all(b"before you came" not in r.ct for r in store.rows)
