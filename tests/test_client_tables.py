"""
The client's two life cycles as the tables the code runs: every row of the
connection's table (L{ChatClientProtocol.table}) and of the session's
(L{ChatSession.table}) walked on a Clock, the table module itself, and
docs/protocol.md showing exactly these tables.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from twistchat import errors, wire
from twistchat.client import session as session_module
from twistchat.client.keyring import Keyring, RoomKeys
from twistchat.client.policy import Reconnect
from twistchat.client.protocol import (
    FRAME,
    KEYS_DERIVED,
    LOST,
    TIMER,
    TLS_UP,
    ChatClientProtocol,
    State,
)
from twistchat.client.session import ChatSession, SessionState
from twistchat.client.table import NoTransition, Row, Serial, Table
from twistchat.crypto.seal import Opener, Sealer
from twistchat.crypto.spake2plus import (
    G,
    Prover,
    VerifierKey,
    VerifierSession,
    context,
    encode_point,
)
from twisted.internet import defer, task
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from .test_client_reconnect import Events, FakeHandler, FakeProtocol, ScriptedConnector, welcome

DOCS = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
BINDING = b"\x01" * 32
KEY = b"k" * 32


# --- the connection ------------------------------------------------------------------


def frame(kind: str, **fields: Any) -> bytes:
    body = wire.encode(kind, **fields)
    return struct.pack(">I", len(body)) + body


class Handler:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def logged_in(self, protocol: Any, welcome: Any) -> None:
        self.calls.append("logged_in")

    def login_failed(self, failure: Failure) -> None:
        assert isinstance(failure.value, errors.TwistchatError)
        self.calls.append("login_failed")

    def message(self, sender: str, text: str, message: Any) -> None:
        self.calls.append("message")

    def rejected(self, sender: str, error: Any, message: Any) -> None:
        self.calls.append("rejected")

    def event(self, message: Any) -> None:
        self.calls.append("event")

    def closed(self, reason: Any) -> None:
        self.calls.append("closed")


def connection_in(state: State) -> tuple[ChatClientProtocol, task.Clock, Handler, Any]:
    """
    A protocol put in C{state} on a StringTransport, with what that state holds.
    """
    clock, handler = task.Clock(), Handler()
    derived: list[defer.Deferred[Any]] = []

    def derive(password: str, salt: bytes, params: Any) -> defer.Deferred[Any]:
        derived.append(defer.Deferred())
        return derived[-1]

    proto = ChatClientProtocol(handler, "alice", "main",  # type: ignore[arg-type]
                               Keyring("password", "main", derive),
                               channel_binding=lambda transport: BINDING, clock=clock,
                               timeout=30.0, keepalive=(60.0, 20.0))
    proto.makeConnection(StringTransport())
    proto.state = state
    server = None
    if state is State.VERIFY:
        proto._prover = Prover(context(BINDING), b"alice", b"main", 5, 7)
        share = proto._prover.share()
        server = VerifierSession(VerifierKey(5, encode_point(G * 7)), context(BINDING),
                                 b"alice", b"main")
        server = server.respond(share)
    if state is State.WELCOME:
        proto._keys = RoomKeys(5, 7, KEY)
    if state.is_member:
        proto._sealer = Sealer(KEY, "main", "alice")
        proto._opener = Opener(KEY, "main")
        proto.setTimeout(20.0 if state is State.PINGED else 60.0)
    return proto, clock, handler, server


def sent(proto: ChatClientProtocol) -> list[str]:
    data, kinds = proto.transport.value(), []
    while data:
        (length,) = struct.unpack(">I", data[:4])
        kinds.append(wire.decode(data[4:4 + length], wire.FROM_CLIENT).type)
        data = data[4 + length:]
    return kinds


def feed_connection(proto: ChatClientProtocol, clock: task.Clock, input: str,
                    server: Any) -> None:
    """
    Give the protocol C{input} the way the connection would.
    """
    if input == TLS_UP:
        proto.handshakeCompleted()
    elif input == KEYS_DERIVED:
        proto._input(KEYS_DERIVED, RoomKeys(5, 7, KEY))
    elif input == FRAME:
        proto.table.step(proto, FRAME)  # every frame's first input, alone
    elif input == TIMER:
        clock.advance(clock.getDelayedCalls()[0].getTime() - clock.seconds())
    elif input == LOST:
        proto.connectionLost(None)
    elif input == "params":
        proto.dataReceived(frame("params", salt=bytes(16), n=2**15, r=8, p=1))
    elif input == "verify":
        y, mac = server
        proto.dataReceived(frame("verify", Y=y, mac=mac))
    elif input == "welcome":
        proto.dataReceived(frame("welcome", name="alice", room="main", addr="a:1", members=[]))
    elif input == "msg":
        sid, n, ct = Sealer(KEY, "main", "bob").seal("hi")
        proto.dataReceived(frame("msg", **{"from": "bob"}, sid=sid, n=n, ct=ct))
    elif input == "joined":
        proto.dataReceived(frame(input, name="bob", addr="b:2", key=b"\x05" * 32))
    elif input == "left":
        proto.dataReceived(frame(input, name="bob", addr="b:2"))
    elif input == "ack":
        proto.dataReceived(frame("ack", sid=b"\x01" * 16, n=1, seq=1))
    elif input == "members":
        proto.dataReceived(frame("members", members=[]))
    elif input == "notice":
        proto.dataReceived(frame("notice", code="history", text="1 earlier message replayed"))
    elif input in ("ping", "pong"):
        proto.dataReceived(frame(input, id=1))
    else:
        raise AssertionError(f"no way to give {input!r}: add one for the new row")


#: What each row does that can be seen: frames sent, handler calls, aborted.
CONNECTION_EFFECTS: dict[str, tuple[list[str], list[str], bool]] = {
    TLS_UP: (["hello"], [], False),
    "params": ([], [], False),
    KEYS_DERIVED: (["share"], [], False),
    "verify": (["confirm"], [], False),
    "welcome": ([], ["logged_in"], False),
    FRAME: ([], [], False),
    "msg": ([], ["message"], False),
    "joined": ([], ["event"], False),
    "ack": ([], ["event"], False),
    "left": ([], ["event"], False),
    "members": ([], ["event"], False),
    "notice": ([], ["event"], False),
    "pong": ([], ["event"], False),
    "ping": (["pong"], [], False),
}


@pytest.mark.parametrize("row", ChatClientProtocol.table.rows,
                         ids=lambda row: f"{row.state.name}-{row.input}")
def test_every_connection_row(row: Row[State]) -> None:
    proto, clock, handler, server = connection_in(row.state)
    feed_connection(proto, clock, row.input, server)
    assert proto.state is (row.to or row.state)
    if row.input == TIMER:
        if row.to is State.PINGED:
            assert sent(proto) == ["ping"] and not proto.transport.disconnected
        else:
            assert proto._error is not None and proto._error.code == "timeout"
            assert proto.transport.disconnected
    elif row.input == LOST:
        expected = {State.MEMBER: ["closed"], State.PINGED: ["closed"], State.CLOSED: []}
        assert handler.calls == expected.get(row.state, ["login_failed"])
    elif row.state is State.CLOSED:
        assert sent(proto) == [] and handler.calls == []
    else:
        frames, calls, aborted = CONNECTION_EFFECTS[row.input]
        assert (sent(proto), handler.calls, proto.transport.disconnected) == (
            frames, calls, aborted)
        assert proto._error is None


def test_a_pinged_member_is_still_a_member() -> None:
    proto, clock, handler, _ = connection_in(State.MEMBER)
    clock.advance(60)
    assert proto.state is State.PINGED and proto.state.is_member
    proto.send_text("still here")
    proto.dataReceived(frame("pong", id=1))
    assert proto.state is State.MEMBER
    clock.advance(59)
    assert not proto.transport.disconnected


@pytest.mark.parametrize("state", [s for s in State if s is not State.CLOSED])
def test_a_frame_without_a_row_aborts(state: State) -> None:
    proto, clock, handler, _ = connection_in(state)
    if state is State.WELCOME:
        proto.dataReceived(frame("params", salt=bytes(16), n=2**15, r=8, p=1))
    else:
        proto.dataReceived(frame("welcome", name="alice", room="main", addr="a:1",
                                 members=[]))
    assert isinstance(proto._error, errors.UnexpectedMessage)
    # A frame is first an answer to a ping: PINGED is MEMBER by then.
    now = State.MEMBER if state is State.PINGED else state
    assert proto._error.message.endswith(f"while {now.value}")
    assert proto.transport.disconnected


# --- the session ---------------------------------------------------------------------


class Walk:
    """
    A session on a Clock with a scripted connector, driven by its real calls.
    """

    def __init__(self) -> None:
        self.clock = task.Clock()
        self.connector = ScriptedConnector()
        self.events = Events()
        self.first = FakeProtocol()
        policy = Reconnect(jitter=lambda: 0.0, max_attempts=2)
        self.session = ChatSession(
            self.first, welcome("bob"), self.events, self.clock,  # type: ignore[arg-type]
            self.connector, policy)
        self.protocol = self.first

    def drop(self, error: errors.TwistchatError | None = None) -> None:
        self.protocol.state = State.CLOSED
        self.session._closed(error)

    def to(self, state: SessionState) -> None:
        if state is SessionState.LEAVING:
            self.session.leave()
        elif state is SessionState.WAITING:
            self.drop()
            self.session.send("queued")
        elif state is SessionState.LOGGING_IN:
            self.to(SessionState.WAITING)
            self.clock.advance(1)
        elif state is SessionState.ENDED:
            self.to(SessionState.LOGGING_IN)
            self.session.leave()
            self.connector.attempts[-1].addErrback(lambda f: f.trap(defer.CancelledError))
        assert self.session.state is state

    def give(self, input: str) -> None:
        s = session_module
        if input == s.LEAVE:
            self.session.leave()
        elif input == s.LOST:
            self.drop(errors.ServerShutdown("the server is shutting down"))
        elif input == s.ENDS:
            self.drop(errors.WrongPassword())
        elif input == s.WAIT_OVER:
            self.clock.advance(1)
        elif input == s.GIVE_UP:
            self.clock.advance(1)
            self.connector.attempts[-1].errback(Failure(ConnectionRefusedError()))
            self.clock.advance(2)
            self.connector.attempts[-1].errback(Failure(ConnectionRefusedError()))
        elif input == s.LOGGED_IN:
            self.protocol = FakeProtocol()
            login = self.connector.attempts[-1]
            if login.called:  # cancelled by leave(): stands for a login that won the race
                self.session._inputs.feed(s.LOGGED_IN, (self.protocol, welcome(), FakeHandler()))
            else:
                login.callback((self.protocol, welcome(), FakeHandler()))
        elif input == s.LOGIN_FAILED:
            self.fail_login(Failure(ConnectionRefusedError()))
        elif input == s.LOGIN_REFUSED:
            self.fail_login(Failure(errors.WrongPassword()))
        else:
            raise AssertionError(f"no way to give {input!r}: add one for the new row")

    def fail_login(self, failure: Failure) -> None:
        login = self.connector.attempts[-1]
        if login.called:
            self.session._inputs.feed(
                session_module.LOGIN_REFUSED if failure.check(errors.WrongPassword)
                else session_module.LOGIN_FAILED, failure)
        else:
            login.errback(failure)


#: What each row reports to the listener, by kind of event.
SESSION_EFFECTS: dict[tuple[SessionState, str], list[Any]] = {
    (SessionState.CONNECTED, session_module.LEAVE): [],
    (SessionState.LEAVING, session_module.LEAVE): [],
    (SessionState.CONNECTED, session_module.LOST): [("reconnecting", 1, 1.0,
                                                    "the server is shutting down")],
    (SessionState.CONNECTED, session_module.ENDS): [("disconnected", "wrong password")],
    (SessionState.LEAVING, session_module.LOST): [
        ("disconnected", "the server is shutting down")],
    (SessionState.LEAVING, session_module.ENDS): [("disconnected", "wrong password")],
    (SessionState.WAITING, session_module.WAIT_OVER): [],
    (SessionState.WAITING, session_module.GIVE_UP): ["reconnecting", "disconnected"],
    (SessionState.WAITING, session_module.LEAVE): [
        ("disconnected", "1 queued message(s) were not sent")],
    (SessionState.LOGGING_IN, session_module.LOGGED_IN): [("reconnected",), ("left", "bob")],
    (SessionState.LOGGING_IN, session_module.LOGIN_FAILED): ["reconnecting"],
    (SessionState.LOGGING_IN, session_module.LOGIN_REFUSED): [
        ("disconnected", "wrong password; 1 queued message(s) were not sent")],
    (SessionState.LOGGING_IN, session_module.LEAVE): [
        ("disconnected", "1 queued message(s) were not sent")],
    (SessionState.ENDED, session_module.LOGGED_IN): [],
    (SessionState.ENDED, session_module.LOGIN_FAILED): [],
    (SessionState.ENDED, session_module.LOGIN_REFUSED): [],
}


@pytest.mark.parametrize("row", ChatSession.table.rows,
                         ids=lambda row: f"{row.state.name}-{row.input}")
def test_every_session_row(row: Row[SessionState]) -> None:
    walk = Walk()
    walk.to(row.state)
    before = len(walk.events.events)
    walk.give(row.input)
    assert walk.session.state is (row.to or row.state)
    got = walk.events.events[before:]
    expected = SESSION_EFFECTS[(row.state, row.input)]
    assert [e if isinstance(expected_e, tuple) else e[0]
            for e, expected_e in zip(got, expected)] == expected
    assert len(got) == len(expected)
    if walk.session.state is SessionState.ENDED:
        assert walk.session.ended.called
        assert walk.clock.getDelayedCalls() == []
    if row.input == session_module.LOGGED_IN and row.state is SessionState.ENDED:
        assert walk.protocol.transport.closing
    if row.input == session_module.LOGGED_IN and row.state is SessionState.LOGGING_IN:
        assert walk.protocol.sent == ["queued"]
    if row.state is SessionState.CONNECTED and row.input == session_module.LEAVE:
        assert walk.first.transport.closing  # nothing left queued: closes at once


def test_the_walks_cover_every_row() -> None:
    rows = {(row.state, row.input) for row in ChatSession.table.rows}
    assert rows == set(SESSION_EFFECTS)


def test_an_input_from_an_output_waits_for_the_transition() -> None:
    """
    leave() from the reconnecting callback runs once the drop's transition is
    done: the wait it scheduled is there to be cancelled.
    """
    walk = Walk()
    states: list[SessionState] = []

    def reconnecting(*args: Any) -> None:
        states.append(walk.session.state)
        walk.session.leave()
        states.append(walk.session.state)

    walk.events.reconnecting = reconnecting  # type: ignore[method-assign]
    walk.drop()
    assert states == [SessionState.WAITING, SessionState.WAITING]
    assert walk.session.state is SessionState.ENDED
    assert walk.clock.getDelayedCalls() == []


# --- the table module ----------------------------------------------------------------


def test_a_table_has_one_row_per_state_and_input() -> None:
    with pytest.raises(ValueError, match="two rows"):
        Table([Row(State.TLS, "x", None), Row(State.TLS, "x", State.CLOSED)])


def test_an_input_without_a_row_changes_nothing() -> None:
    class Owner:
        state = State.TLS

    owner = Owner()
    with pytest.raises(NoTransition):
        Table([Row(State.TLS, "x", State.CLOSED)]).step(owner, "y")
    assert owner.state is State.TLS


def test_replace_changes_one_row_and_keeps_the_order() -> None:
    calls: list[str] = []
    table = Table([Row(State.TLS, "a", State.PARAMS, (lambda o: calls.append("a"),)),
                   Row(State.PARAMS, "b", None)])
    quiet = table.replace(Row(State.TLS, "a", State.PARAMS), Row(State.PARAMS, "c", None))
    assert [(r.state, r.input) for r in quiet.rows] == [
        (State.TLS, "a"), (State.PARAMS, "b"), (State.PARAMS, "c")]

    class Owner:
        state = State.TLS

    quiet.step(Owner(), "a")
    table.step(Owner(), "a")
    assert calls == ["a"]


def test_serial_drops_waiting_inputs_after_a_failure() -> None:
    class Owner:
        state = State.TLS
        table = Table([Row(State.TLS, "boom", None, (lambda o: o.serial.feed("later"),
                                                   lambda o: 1 / 0))])

    owner = Owner()
    owner.serial = Serial(owner)  # type: ignore[attr-defined]
    with pytest.raises(ZeroDivisionError):
        owner.serial.feed("boom")  # type: ignore[attr-defined]
    assert owner.state is State.TLS
    # "later" (which has no row) was dropped: the next input runs first.
    with pytest.raises(ZeroDivisionError):
        owner.serial.feed("boom")  # type: ignore[attr-defined]


# --- the docs ------------------------------------------------------------------------


@pytest.mark.parametrize("name, table", [
    ("client connection", ChatClientProtocol.table),
    ("client session", ChatSession.table),
])
def test_the_protocol_docs_show_the_tables(name: str, table: Table[Any]) -> None:
    """
    docs/protocol.md, section 4, shows each table as the code renders it.
    On a failure, paste the printed text into the docs.
    """
    text = DOCS.read_text()
    block = f"```\n{table.render()}\n```"
    if block not in text:
        print(f"The {name} table, for docs/protocol.md:\n{block}")
    assert block in text
