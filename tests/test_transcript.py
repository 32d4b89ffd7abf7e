"""
Who said what, against a hostile server: the scripted relay of
test_client_hostile (real loopback TLS, the real login) shows the client
crafted transcripts, signed by a member "bob" who holds the room key and an
identity key of his own. Each transcript property has its test: replay (also
after a reconnect and a restart of the receiver), withholding (a gap), a
message lost on the way, a fork, different views, a signature stripped or
swapped, another key announced for a known name, and a message never
acknowledged. The absences that are not gaps raise no alarm.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twistchat import wire
from twistchat.client import TrustOnFirstUse, connect
from twistchat.client import session as session_module
from twistchat.client.api import ChatMessage, ChatSession
from twistchat.client.pins import Pins, Seen
from twistchat.client.transcript import Transcript
from twistchat.crypto.identity import Identity
from twistchat.crypto.kdf import content_key, derive_secrets
from twistchat.crypto.seal import Opener, Sealer
from twistchat.crypto.signed import NO_HASH, Fields, open_message, seal_signed
from twisted.internet import reactor

from .conftest import PASSWORD, Recorder
from .test_client_hostile import Scripted, scripted_server

BOB = Identity.from_seed(b"\x0b" * 32)
MALLORY = Identity.from_seed(b"\x0c" * 32)


@pytest.fixture(scope="module")
def room_key(verifier: Any) -> bytes:
    secrets = derive_secrets(PASSWORD, verifier.salt, verifier.params)
    return content_key(secrets.content_secret, "main")


class Member:
    """
    A member who holds the room key and signs with C{identity}: makes the
    C{msg} frames the scripted server shows.
    """

    def __init__(self, key: bytes, name: str = "bob", identity: Identity = BOB) -> None:
        self.sealer = Sealer(key, "main", name)
        self.name = name
        self.identity = identity
        self.seq = 0
        self.prev = NO_HASH
        self.hashes: list[bytes] = []

    def says(self, text: str, *, seq: int | None = None, prev: bytes | None = None,
             lost: tuple[int, ...] = (), seen: bytes = NO_HASH, **extra: Any) -> dict[str, Any]:
        """
        The fields of a msg frame: by default the next message of the chain.
        """
        seq = self.seq + 1 if seq is None else seq
        prev = (self.prev if seq == self.seq + 1 else self.hashes[seq - 2]) if prev is None \
            else prev
        sent = seal_signed(self.sealer, self.identity, Fields(seq, prev, seen, text, lost))
        if seq == self.seq + 1:
            self.seq, self.prev = seq, sent.hash
            self.hashes.append(sent.hash)
        return {"from": self.name, "sid": sent.sid, "n": sent.n, "ct": sent.ciphertext, **extra}

    def unsigned(self, text: str, **extra: Any) -> dict[str, Any]:
        sid, n, ct = self.sealer.seal(text)
        return {"from": self.name, "sid": sid, "n": n, "ct": ct, **extra}


def welcome_then(frames: list[tuple[str, dict[str, Any]]],
                 members: list[dict[str, Any]] | None = None) -> Any:
    """
    A confirm step: the real key confirmation, a welcome listing C{members},
    then C{frames}.
    """
    def step(server: Scripted, message: wire.Message | None) -> None:
        assert server.spake is not None and message is not None
        server.spake.finish(message["mac"])
        server.send("welcome", name="alice", room="main", addr="127.0.0.1:1",
                    members=members or [])
        for kind, fields in frames:
            server.send(kind, **fields)
    return step


async def join(certificate: Any, verifier: Any, profile: Path,
               frames: list[tuple[str, dict[str, Any]]], *, members: Any = None,
               send: Any = None, again: Any = None) -> tuple[ChatSession, Recorder, Any]:
    """
    Alice (profile C{profile}) joins a scripted server that shows C{frames};
    C{again}: on the port of that earlier one (the same server to her).
    """
    script: dict[str, Any] = {"confirm": welcome_then(frames, members)}
    if send is not None:
        script["send"] = send
    number = 0 if again is None else again.number
    port = await scripted_server(certificate, verifier, number, **script)
    port.number = port.getHost().port
    events = Recorder()
    try:
        session = await connect(reactor, "127.0.0.1", port.getHost().port, "alice", PASSWORD,
                                listener=events, trust=TrustOnFirstUse(profile / "known_hosts"),
                                timeout=10, profile=profile)
    except BaseException:
        await port.stopListening()
        raise
    return session, events, port


async def done(session: ChatSession, port: Any) -> None:
    await session.leave()
    await port.stopListening()


def shown(events: Recorder) -> list[str]:
    return [e.text for e in events.events if isinstance(e, ChatMessage)]


def texts_of(events: Recorder, kind: str) -> list[str]:
    return [a.text for a in events.alarms if a.kind == kind]


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    return tmp_path / "profile"


# --- the transcript properties --------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_withheld_message_is_a_gap(certificate: Any, verifier: Any, profile: Path,
                                         room_key: bytes) -> None:
    bob = Member(room_key)
    first, second, third = bob.says("one"), bob.says("two"), bob.says("three")
    del second  # the server withholds it
    session, events, port = await join(certificate, verifier, profile,
                                       [("msg", first), ("msg", third)])
    await events.wait_for(lambda e: isinstance(e, ChatMessage) and e.text == "three")
    assert shown(events) == ["one", "three"]
    assert texts_of(events, "gap") == ["1 message from bob was withheld from you"]
    assert [a.count for a in events.alarms] == [1]
    await done(session, port)


@pytest_twisted.ensureDeferred
async def test_message_lost_on_the_way_is_not_a_gap(certificate: Any, verifier: Any,
                                                    profile: Path, room_key: bytes) -> None:
    bob = Member(room_key)
    frames = [("msg", bob.says("one")), ("msg", bob.says("two")), ("msg", bob.says("three")),
              ("msg", bob.says("four", lost=(2, 3)))]
    del frames[1:3]  # never acknowledged to bob: he says so in his next message
    session, events, port = await join(certificate, verifier, profile, frames)
    await events.wait_for(lambda e: isinstance(e, ChatMessage) and e.text == "four")
    assert texts_of(events, "gap") == []
    assert texts_of(events, "lost") == ["2 messages from bob were not delivered (lost on the way)"]
    await done(session, port)


@pytest_twisted.ensureDeferred
async def test_fork_two_messages_with_one_number(certificate: Any, verifier: Any,
                                                 profile: Path, room_key: bytes) -> None:
    bob = Member(room_key)
    one, two = bob.says("one"), bob.says("two")
    other_two = bob.says("a different two", seq=2, prev=bob.hashes[0])
    session, events, port = await join(certificate, verifier, profile,
                                       [("msg", one), ("msg", two), ("msg", other_two)])
    await events.wait_for(lambda e: isinstance(e, ChatMessage) and e.text == "a different two")
    (fork,) = events.alarms
    assert fork.kind == "fork" and "bob's messages disagree" in fork.text
    marked = [e for e in events.events if isinstance(e, ChatMessage) and not e.trusted]
    assert [e.text for e in marked] == ["a different two"]
    await done(session, port)


@pytest_twisted.ensureDeferred
async def test_replay_inside_one_connection(certificate: Any, verifier: Any, profile: Path,
                                            room_key: bytes) -> None:
    bob = Member(room_key)
    one = bob.says("one")
    # The same message again, under a fresh counter of another sealer session:
    # the seal opens, the envelope (bound to its own sid and n) does not.
    session, events, port = await join(certificate, verifier, profile,
                                       [("msg", one), ("msg", one), ("msg", bob.says("two"))])
    await events.wait_for(lambda e: isinstance(e, ChatMessage) and e.text == "two")
    assert shown(events) == ["one", "two"]
    assert ("rejected", "bob", "the message repeats or precedes one already received from "
            "the same sender session") in events.events
    await done(session, port)


@pytest_twisted.ensureDeferred
async def test_replay_after_reconnect_and_restart(certificate: Any, verifier: Any,
                                                  profile: Path, room_key: bytes) -> None:
    """
    A new connection, a new session, a new opener (as after a restart of the
    receiving client): only the profile is the same. An old message shown
    live again is reported and dropped.
    """
    bob = Member(room_key)
    one, two = bob.says("one"), bob.says("two")
    session, events, port = await join(certificate, verifier, profile,
                                       [("msg", one), ("msg", two)])
    await events.wait_for(lambda e: isinstance(e, ChatMessage) and e.text == "two")
    await done(session, port)

    session, events, port = await join(certificate, verifier, profile,
                                       [("msg", one), ("msg", bob.says("three"))], again=port)
    await events.wait_for(lambda e: isinstance(e, ChatMessage) and e.text == "three")
    assert shown(events) == ["three"]
    assert texts_of(events, "replay") == ["an old message from bob was presented again (dropped)"]
    assert texts_of(events, "gap") == [] and texts_of(events, "offline") == []
    await done(session, port)


@pytest_twisted.ensureDeferred
async def test_different_views(certificate: Any, verifier: Any, profile: Path,
                               room_key: bytes) -> None:
    bob, carol = Member(room_key), Member(room_key, "carol", MALLORY)
    hidden = carol.says("only bob saw this")
    del hidden
    frames = [("msg", bob.says("one")),
              ("msg", bob.says("two", seen=carol.hashes[0]))]
    session, events, port = await join(certificate, verifier, profile, frames)
    await events.wait_for(lambda e: isinstance(e, ChatMessage) and e.text == "two")
    assert texts_of(events, "views") == [
        "bob was shown a message you were not: the server is showing you different views "
        "of the room"
    ]
    await done(session, port)


@pytest_twisted.ensureDeferred
async def test_signature_stripped_or_swapped(certificate: Any, verifier: Any, profile: Path,
                                             room_key: bytes) -> None:
    """
    The server cannot touch the signature (it is sealed). A member can seal
    without one (version 1) or sign with its own key under bob's name: the
    first is refused live, the second is bob's key changing.
    """
    bob = Member(room_key)
    mallory_as_bob = Member(room_key, "bob", MALLORY)
    frames = [("msg", bob.says("the real bob")),
              ("msg", bob.unsigned("no signature at all")),
              ("msg", mallory_as_bob.says("mallory pretending"))]
    session, events, port = await join(certificate, verifier, profile, frames)
    await events.wait_for(lambda e: isinstance(e, ChatMessage) and "pretending" in e.text)
    assert ("rejected", "bob", "an unsigned message (without an identity key) was refused"
            ) in events.events
    assert ("key changed", "bob", MALLORY.public_key) in events.events
    (marked,) = [e for e in events.events if isinstance(e, ChatMessage) and not e.trusted]
    assert marked.text == "mallory pretending"
    assert shown(events) == ["the real bob", "mallory pretending"]
    await done(session, port)


@pytest_twisted.ensureDeferred
async def test_another_key_announced_for_a_known_name(certificate: Any, verifier: Any,
                                                      profile: Path, room_key: bytes) -> None:
    bob_member = {"name": "bob", "addr": "127.0.0.1:2", "key": BOB.public_key}
    session, events, port = await join(certificate, verifier, profile, [],
                                       members=[bob_member])
    assert not session.changed_key("bob")
    await done(session, port)
    assert events.alarms == [] and not any(e[0] == "key changed" for e in events.events
                                           if isinstance(e, tuple))

    joined = {"name": "bob", "addr": "127.0.0.1:3", "key": MALLORY.public_key}
    session, events, port = await join(certificate, verifier, profile, [("joined", joined)],
                                       again=port)
    await events.wait_for(lambda e: e == ("key changed", "bob", MALLORY.public_key))
    assert session.changed_key("bob")
    assert session.accept("bob")
    assert not session.changed_key("bob")
    pins = Pins(profile / "identities")
    assert pins.see(f"127.0.0.1:{port.number}", "main", "bob",
                    MALLORY.public_key) is Seen.PINNED
    await done(session, port)


@pytest_twisted.ensureDeferred
async def test_never_acknowledged_is_not_delivered(certificate: Any, verifier: Any,
                                                   profile: Path, room_key: bytes,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A server that never acknowledges: leaving waits (briefly, here), then the
    message is reported not delivered, and the next message (after a
    restart) declares it lost.
    """
    monkeypatch.setattr(session_module, "ACK_WAIT", 0.2)
    received: list[wire.Message] = []

    def keep(server: Scripted, message: wire.Message | None) -> None:
        assert message is not None
        received.append(message)

    session, events, port = await join(certificate, verifier, profile, [], send=keep)
    session.send("into the void")
    await session.leave()
    await port.stopListening()
    assert ("undelivered", 1) in events.events

    session, events, port = await join(certificate, verifier, profile, [], send=keep,
                                       again=port)
    session.send("second try")
    await until_received(received, 2)
    opener = Opener(room_key, "main")
    first, second = (open_message(opener, "alice", m["sid"], m["n"], m["ct"]) for m in received)
    assert (first.seq, first.lost) == (1, ())
    assert (second.seq, second.lost, second.prev) == (2, (1,), first.hash)
    assert first.key == second.key
    await done(session, port)


async def until_received(received: list[Any], count: int) -> None:
    from .conftest import until

    await until(lambda: len(received) >= count, timeout=10)


# --- absences that are not gaps --------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_no_false_alarm_at_the_history_edge_and_for_a_late_joiner(
    certificate: Any, verifier: Any, profile: Path, room_key: bytes
) -> None:
    """
    The replay starts in the middle of bob's chain (--history N), carol's first
    message is live only (joined late, or --history 0); version 1 history
    shows as unsigned. No alarm.
    """
    bob, carol = Member(room_key), Member(room_key, "carol", MALLORY)
    for i in range(5):
        bob.says(f"before the window {i}")
    old = bob.unsigned("sealed before identity keys", ts=1.0, hist=True)
    frames = [("msg", old),
              ("msg", bob.says("six", ts=2.0, hist=True)),
              ("msg", bob.says("seven", ts=3.0, hist=True)),
              ("notice", {"code": "history", "text": "3 earlier messages replayed"})]
    for i in range(8):
        carol.says(f"carol before alice joined {i}")
    frames += [("msg", carol.says("carol live")), ("msg", bob.says("eight"))]
    session, events, port = await join(certificate, verifier, profile, frames)
    await events.wait_for(lambda e: isinstance(e, ChatMessage) and e.text == "eight")
    assert shown(events) == ["sealed before identity keys", "six", "seven", "carol live", "eight"]
    unsigned = [e for e in events.events if isinstance(e, ChatMessage) and not e.signed]
    assert [e.text for e in unsigned] == ["sealed before identity keys"]
    assert events.alarms == []
    await done(session, port)


@pytest_twisted.ensureDeferred
async def test_rejoin_history_overlap_and_offline_miss(certificate: Any, verifier: Any,
                                                       profile: Path, room_key: bytes) -> None:
    """
    At a rejoin the history repeats what alice has (silently) and continues
    bob's chain; a hole after that overlap is withheld. Without history (or
    past it) the first message skipping numbers is a miss while offline:
    one notice, not a gap.
    """
    bob = Member(room_key)
    one, two = bob.says("one"), bob.says("two")
    session, events, port = await join(certificate, verifier, profile,
                                       [("msg", one), ("msg", two)])
    await events.wait_for(lambda e: isinstance(e, ChatMessage) and e.text == "two")
    await done(session, port)

    three, four, five = bob.says("three"), bob.says("four"), bob.says("five")
    hist = [("msg", {**m, "ts": 1.0, "hist": True}) for m in (two, three, five)]
    session, events, port = await join(certificate, verifier, profile, hist, again=port)
    await events.wait_for(lambda e: isinstance(e, ChatMessage) and e.text == "five")
    # A new session shows the history again ("two" as history), checked
    # against what the profile has: no alarm for it.
    assert shown(events) == ["two", "three", "five"]
    assert texts_of(events, "gap") == ["1 message from bob was withheld from you"]
    del four
    await done(session, port)

    for i in range(3):
        bob.says(f"while alice was away {i}")
    session, events, port = await join(certificate, verifier, profile,
                                       [("msg", bob.says("nine"))], again=port)
    await events.wait_for(lambda e: isinstance(e, ChatMessage) and e.text == "nine")
    assert [(a.kind, a.text) for a in events.alarms] == [
        ("offline", "you missed messages while offline")]
    await done(session, port)


# --- the state files ---------------------------------------------------------------------


def test_state_file_is_owner_only_and_survives_a_restart(tmp_path: Path) -> None:
    path = Transcript.path_for(tmp_path, "h:1", "main", "alice")
    me = Identity.from_seed(b"\x01" * 32)
    transcript = Transcript(path, "alice", me.public_key)
    fields = transcript.next_fields("hi")
    transcript.sent(fields, b"s" * 16, 1, b"h" * 32)
    assert path.stat().st_mode & 0o777 == 0o600
    again = Transcript(path, "alice", me.public_key)
    # In flight when the client stopped: lost, declared by the next message.
    assert again.next_fields("next") == Fields(2, b"h" * 32, b"h" * 32, "next", (1,))
    # Another identity key starts its own chain.
    other = Transcript(path, "alice", BOB.public_key)
    assert other.next_fields("x").seq == 1
    path.write_text(json.dumps({"format": "twistchat-transcript", "version": 1}))
    path.chmod(0o600)
    from twistchat.errors import ConfigError

    with pytest.raises(ConfigError, match="damaged"):
        Transcript(path, "alice", me.public_key)


def test_a_new_connection_takes_up_the_chain_another_client_carried_on(
    tmp_path: Path,
) -> None:
    """
    Two clients of one profile take turns under one name: the one that comes
    back numbers on from the other's messages, and declares lost what the
    other left unacknowledged. A file that is not ahead, of another key,
    damaged or gone changes nothing.
    """
    path = Transcript.path_for(tmp_path, "h:1", "main", "alice")
    me = Identity.from_seed(b"\x01" * 32)
    first = Transcript(path, "alice", me.public_key)
    first.sent(first.next_fields("one"), b"s" * 16, 1, b"1" * 32)
    assert first.acked(b"s" * 16, 1)
    assert first.connection_lost() == 0
    first.flush()
    # Not ahead: the file holds what we wrote.
    assert not first.catch_up()
    other = Transcript(path, "alice", me.public_key)
    other.new_connection()
    other.sent(other.next_fields("two"), b"t" * 16, 1, b"2" * 32)
    other.sent(other.next_fields("three"), b"t" * 16, 2, b"3" * 32)
    assert other.acked(b"t" * 16, 1)  # "three" is never acknowledged
    assert other.connection_lost() == 1
    first.new_connection()
    assert first.next_fields("four") == Fields(4, b"3" * 32, b"3" * 32, "four", (3,))
    # Ahead of a file that fell behind, of another key, damaged or gone: ours.
    first.sent(first.next_fields("four"), b"u" * 16, 1, b"4" * 32)
    first.acked(b"u" * 16, 1)
    first.connection_lost()
    for content in (None, "another key", "{not json", "missing"):
        if content == "another key":
            another = Transcript(path, "alice", BOB.public_key)
            another.seq = 99  # far ahead, but not our chain
            another.save()
        elif content == "missing":
            path.unlink()
        elif content is not None:
            path.write_text(content)
        assert not first.catch_up(), content
        assert first.next_fields("five") == Fields(5, b"4" * 32, b"4" * 32, "five", ()), content
    # A transcript kept in memory has no file to catch up from.
    assert not Transcript(None, "alice", me.public_key).catch_up()


def test_pins_first_sight_change_accept(tmp_path: Path) -> None:
    pins = Pins(tmp_path / "identities")
    assert pins.see("h:1", "a room", "bob", BOB.public_key) is Seen.NEW
    assert pins.see("h:1", "a room", "bob", BOB.public_key) is Seen.PINNED
    assert pins.see("h:2", "a room", "bob", MALLORY.public_key) is Seen.NEW  # another server
    assert pins.see("h:1", "a room", "bob", MALLORY.public_key) is Seen.CHANGED
    # Another client of the same profile reads the change from the file.
    assert Pins(tmp_path / "identities").get("h:1", "a room", "bob").changed == MALLORY.public_key
    assert pins.accept("h:1", "a room", "bob") == MALLORY.public_key
    assert pins.see("h:1", "a room", "bob", MALLORY.public_key) is Seen.PINNED
    assert pins.accept("h:1", "a room", "bob") is None
    assert (tmp_path / "identities").stat().st_mode & 0o777 == 0o600
    line = (tmp_path / "identities").read_text().splitlines()[0]
    assert line.split()[1] == "a%20room"


# --- the piped client's exit status -----------------------------------------------------


@pytest.mark.parametrize("acks, code", [(False, 3), (True, 0)], ids=["never", "acked"])
@pytest_twisted.ensureDeferred
async def test_piped_client_counts_unacknowledged_lines(
    certificate: Any, verifier: Any, tmp_path: Path, acks: bool, code: int
) -> None:
    """
    The real command, piped: two lines to a server that never acknowledges
    them end with exit status 3 and one line each on stderr (after waiting
    ACK_WAIT for the acknowledgements); acknowledged, status 0.
    """
    from .test_cli import run_client

    def send(server: Scripted, message: wire.Message | None) -> None:
        assert message is not None
        if acks:
            server.send("ack", sid=message["sid"], n=message["n"], seq=message["n"])

    port = await scripted_server(certificate, verifier, send=send)
    try:
        run = await run_client(tmp_path, "127.0.0.1", str(port.getHost().port), "alice",
                               password=PASSWORD, stdin=b"one\ntwo\n")
    finally:
        await port.stopListening()
    assert run.code == code, run
    not_sent = [line for line in run.stderr.splitlines() if line.startswith("! Not sent")]
    assert not_sent == (
        [] if acks else ["! Not sent: the server never acknowledged it (not delivered)"] * 2
    ), run
    assert "Left the room." in run.stdout


@pytest_twisted.ensureDeferred
async def test_member_list_with_another_key_is_flagged(certificate: Any, verifier: Any,
                                                       profile: Path) -> None:
    """
    A member list (the answer to /who) is checked against the pins as well.
    """
    bob_member = {"name": "bob", "addr": "127.0.0.1:2", "key": BOB.public_key}
    impostor = {"name": "bob", "addr": "127.0.0.1:2", "key": MALLORY.public_key}
    me = {"name": "alice", "addr": "127.0.0.1:1", "key": bytes(32)}
    session, events, port = await join(
        certificate, verifier, profile, [("members", {"members": [me, impostor]})],
        members=[bob_member])
    await events.wait_for(lambda e: e == ("key changed", "bob", MALLORY.public_key))
    assert [m.key for m in session.members] == [MALLORY.public_key]
    # The server's claim about alice's own key pins nothing.
    assert Pins(profile / "identities").get(f"127.0.0.1:{port.number}", "main", "alice") is None
    await done(session, port)
