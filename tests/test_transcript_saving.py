"""
When the transcript state file is written: at once for each message sent
(its number is on disk before it leaves), at most once a second for what is
received, and when the connection ends (docs/protocol.md, section 12.5).
Real client and server protocols in memory, time on the relay's clock.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twistchat.client.connector import Login
from twistchat.client.events import ChatListener
from twistchat.client.session import SAVE_DELAY, ChatSession
from twistchat.client.transcript import Transcript

from .conftest import PASSWORD
from .memory import Link, MemoryRelay


def _session(relay: MemoryRelay, link: Link, path: Path) -> ChatSession:
    login = Login()
    link.client.handler = login
    (welcome,) = [e[1] for e in link.events.events if e[0] == "logged-in"]
    session = ChatSession(link.client, welcome, ChatListener(), relay.reactor,
                          transcript=Transcript(path, "alice", link.client.identity.public_key))
    login.attach(session)
    return session


def _state(path: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(path.read_text())
    return state


def _bob_high(path: Path) -> int:
    return max([c["high"] for c in _state(path)["chains"] if c["name"] == "bob"], default=0)


def test_received_state_is_written_within_a_second(tmp_path: Path, verifier: Any) -> None:
    relay = MemoryRelay([verifier])
    path = Transcript.path_for(tmp_path, "h:1", "main", "alice")
    alice = relay.login("alice", PASSWORD)
    bob = relay.login("bob", PASSWORD)
    session = _session(relay, alice, path)
    for i in range(3):
        bob.client.send_text(f"hello {i}")
    relay.flush()
    assert session.transcript.dirty
    assert not path.exists()  # received only: not written for each message
    relay.advance(SAVE_DELAY)
    assert _bob_high(path) == 3
    assert not session.transcript.dirty
    assert session._save_call is None  # nothing more to write

    # Sending writes at once (with what was received since), before the
    # message leaves.
    bob.client.send_text("four")
    relay.flush()
    session.send("from alice")
    state = _state(path)
    assert state["out"]["seq"] == 1
    assert _bob_high(path) == 4
    assert [f[2] for f in state["out"]["flight"]] == [1]

    # The acknowledgement and what follows wait, and are written when the
    # connection ends, without waiting for the second.
    relay.flush()
    bob.client.send_text("five")
    relay.flush()
    assert _state(path)["out"]["flight"] == [[state["out"]["flight"][0][0], 1, 1]]
    alice.client.transport.loseConnection()
    relay.flush()
    assert _state(path)["out"]["flight"] == []
    assert _bob_high(path) == 5
    again = Transcript(path, "alice", alice.client.identity.public_key)
    assert again.next_fields("x").lost == ()  # acknowledged: not declared lost
