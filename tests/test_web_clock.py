"""
The page's session (web/src/session.js, in the shipped bundle) on a fake
clock, against the terminal client's on L{task.Clock}: the same scenarios,
the same events at the same times.

C{node web/test/clock.mjs} runs each scenario against a fake server in memory
that speaks real frames and the verifier's side of SPAKE2+; here the same
scenarios run through L{ChatSession} (with the scripted connector of
test_client_reconnect.py) and L{ChatClientProtocol} (keepalive, login
deadline). Covered: the backoff delays (cap, overflow, jitter within a
second), reconnecting after a drop with the server's reason, busy attempts,
a rejoin that drops at once (flapping), a stable one that resets the count,
giving up; pings after silence and giving up a ping unanswered; the login
deadline, which progress does not extend; sending at the pace of the
welcome's rate; leaving, which waits for acknowledgements up to ACK_WAIT.

Node must be installed: without it the test fails with a message saying so.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from twistchat import errors, wire
from twistchat.client.api import ChatSession, Reconnect
from twistchat.client.events import ChatListener
from twistchat.client.keyring import Keyring
from twistchat.client.protocol import ChatClientProtocol, State
from twistchat.crypto.signed import Fields, Sent
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport

from .test_client_hostile import frame
from .test_client_reconnect import FakeHandler, FakeKeyring, FakeProtocol, drop

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "web" / "test" / "clock.mjs"

DELAYS: list[tuple[dict[str, Any], int]] = [
    ({}, 1), ({}, 2), ({}, 7), ({}, 8), ({}, 10_000),
    ({"initialDelay": 0.5, "factor": 3, "maxDelay": 100}, 4),
    ({"initialDelay": 0.5, "factor": 3, "maxDelay": 100}, 6),
    ({"factor": 1e10}, 40), ({"factor": 1e300, "maxDelay": 5}, 3),
]
RECONNECT = {"policy": {"initialDelay": 1, "maxDelay": 8, "maxAttempts": 6},
             "jitter": [0.25, 0.5, 0.75, 0], "flapAfter": 3}
RATE = {"rate": 2, "burst": 5, "messages": 8}


def _round(x: float) -> float:
    return round(x * 1e6) / 1e6


def advance(clock: task.Clock, seconds: float) -> None:
    """
    Run each call due within C{seconds} at its own time (Clock.advance runs
    them all at the end time).
    """
    end = clock.seconds() + seconds
    for _ in range(10_000):
        due = [c for c in clock.getDelayedCalls() if c.getTime() <= end]
        if not due:
            break
        clock.advance(min(c.getTime() for c in due) - clock.seconds())
    else:
        raise AssertionError("the calls never stop")
    clock.advance(end - clock.seconds())


class Events(ChatListener):
    def __init__(self, clock: task.Clock) -> None:
        self.clock = clock
        self.events: list[list[Any]] = []

    def _at(self) -> float:
        return _round(self.clock.seconds())

    def reconnecting(self, attempt: int, delay: float, reason: str) -> None:
        self.events.append(["reconnecting", self._at(), attempt, _round(delay), reason])

    def reconnected(self) -> None:
        self.events.append(["reconnected", self._at()])

    def disconnected(self, reason: str | None) -> None:
        self.events.append(["disconnected", self._at(), reason])

    def message_undelivered(self, count: int) -> None:
        self.events.append(["undelivered", self._at(), count])


class Server:
    """
    The fake server's side for the Python session: logins per C{mode}, and a
    log of what the client sent, with times.
    """

    def __init__(self, clock: task.Clock, rate: dict[str, Any] | None = None,
                 acks: bool = True) -> None:
        self.clock = clock
        self.mode = "ok"
        self.rate = rate
        self.acks = acks
        self.log: list[list[Any]] = []
        self.logins = 0
        self.keyring = FakeKeyring()
        self.session: ChatSession | None = None

    def protocol(self) -> FakeProtocol:
        server = self
        protocol = FakeProtocol()

        class Transport:
            def loseConnection(self) -> None:
                server.log.append(["closed", _round(server.clock.seconds())])
                server.clock.callLater(0, self.gone)

            def gone(self) -> None:
                assert server.session is not None
                drop(server.session, protocol, None)

        def send_signed(fields: Fields) -> Sent:
            sent = FakeProtocol.send_signed(protocol, fields)
            self.log.append(["send", _round(self.clock.seconds())])
            if self.acks:
                self.clock.callLater(0, self.ack, protocol, sent)
            return sent

        protocol.transport = Transport()  # type: ignore[assignment]
        protocol.send_signed = send_signed  # type: ignore[method-assign]
        return protocol

    def ack(self, protocol: FakeProtocol, sent: Sent) -> None:
        assert self.session is not None
        if self.session._protocol is protocol and protocol.state is State.MEMBER:
            self.session._event(wire.Message("ack", {"sid": sent.sid, "n": sent.n, "seq": 1}))

    def welcome(self) -> wire.Message:
        fields: dict[str, Any] = {"name": "alice", "room": "main", "addr": "127.0.0.1:1000",
                                  "members": []}
        if self.rate:
            fields.update(rate=float(self.rate["rate"]), burst=self.rate["burst"])
        return wire.Message("welcome", fields)

    def login(self) -> defer.Deferred[Any]:
        self.logins += 1
        if self.mode == "busy":
            return defer.fail(errors.Busy("the server is busy: try again later"))
        return defer.succeed((self.protocol(), self.welcome(), FakeHandler()))

    def start(self, listener: ChatListener, policy: Reconnect | None = None) -> ChatSession:
        self.logins += 1
        self.session = ChatSession(self.protocol(), self.welcome(), listener,  # type: ignore[arg-type]
                                   self.clock, self, policy)  # type: ignore[arg-type]
        return self.session

    def drop(self, error: errors.TwistchatError | None = None) -> None:
        assert self.session is not None
        drop(self.session, self.session._protocol, error)  # type: ignore[arg-type]


def python_reconnect() -> dict[str, Any]:
    clock = task.Clock()
    server = Server(clock)
    events = Events(clock)
    policy = RECONNECT["policy"]
    jitter = itertools.cycle(RECONNECT["jitter"])  # type: ignore[call-overload]
    session = server.start(events, Reconnect(
        initial_delay=policy["initialDelay"], max_delay=policy["maxDelay"],  # type: ignore[index]
        max_attempts=policy["maxAttempts"], jitter=lambda: next(jitter)))  # type: ignore[index]
    advance(clock, 100)
    server.mode = "busy"
    server.drop(errors.ServerShutdown("the server is shutting down"))
    for _ in range(60):
        if any(e[0] == "reconnecting" and e[2] == 5 for e in events.events):
            break
        advance(clock, 1)
    server.mode = "ok"
    advance(clock, 60)
    server.drop()
    advance(clock, RECONNECT["flapAfter"])  # type: ignore[arg-type]
    server.drop()
    advance(clock, 60)
    advance(clock, 50)
    server.drop()
    advance(clock, 60)
    server.mode = "busy"
    server.drop()
    advance(clock, 600)
    return {"events": events.events, "state": session.state.name.lower(),
            "logins": server.logins, "timers": len(clock.getDelayedCalls())}


def python_rate() -> list[float]:
    clock = task.Clock()
    server = Server(clock, RATE)
    session = server.start(Events(clock))
    advance(clock, 1)
    for i in range(RATE["messages"]):
        session.send(f"m{i}")
    advance(clock, 20)
    return [t for kind, t in server.log if kind == "send"]


def python_leave(acks: bool) -> dict[str, Any]:
    clock = task.Clock()
    server = Server(clock, acks=acks)
    events = Events(clock)
    session = server.start(events)
    advance(clock, 1)
    session.send("one")
    session.send("two")
    advance(clock, 1)
    session.leave()
    advance(clock, 10)
    return {"events": events.events, "log": server.log}


class Handler:
    def __init__(self, clock: task.Clock) -> None:
        self.clock = clock
        self.events: list[list[Any]] = []

    def login_failed(self, failure: Any) -> None:
        error = failure.value
        self.events.append([_round(self.clock.seconds()), type(error).__name__, error.code,
                            error.message])

    def event(self, message: wire.Message) -> None:
        pass  # the pongs

    def closed(self, reason: errors.TwistchatError | None) -> None:
        self.events.append(["disconnected", _round(self.clock.seconds()),
                            None if reason is None else reason.message])


def _client(clock: task.Clock, handler: Handler, **kw: Any) -> tuple[ChatClientProtocol,
                                                                     StringTransport]:
    keyring = Keyring("unused", "main", lambda *a: defer.Deferred())
    client = ChatClientProtocol(handler, "alice", "main", keyring,  # type: ignore[arg-type]
                                lambda t: bytes(32), clock=clock, **kw)
    transport = StringTransport()
    client.makeConnection(transport)
    return client, transport


def python_keepalive() -> dict[str, Any]:
    """
    The protocol put in the member state as the welcome leaves it (the
    handshake is tested elsewhere), its pings answered until 150 s.
    """
    clock = task.Clock()
    handler = Handler(clock)
    client, transport = _client(clock, handler, keepalive=(60.0, 20.0))
    client.setTimeout(None)
    client.state = State.MEMBER
    client.setTimeout(60.0)
    transport.clear()
    log: list[list[Any]] = []
    for _ in range(10_000):
        calls = clock.getDelayedCalls()
        if not calls or clock.seconds() >= 250:
            break
        clock.advance(min(c.getTime() for c in calls) - clock.seconds())
        if transport.value():
            assert wire.decode(transport.value()[4:], wire.FROM_CLIENT).type == "ping"
            transport.clear()
            log.append(["ping", _round(clock.seconds())])
            if clock.seconds() < 150:
                client.dataReceived(frame(wire.encode("pong")))
        if transport.disconnected and client.state is not State.CLOSED:
            log.append(["aborted", _round(clock.seconds())])
            client.connectionLost(None)
    return {"events": handler.events, "log": log, "timers": len(clock.getDelayedCalls())}


def python_deadline(stall: bool) -> dict[str, Any]:
    clock = task.Clock()
    handler = Handler(clock)
    client, transport = _client(clock, handler, timeout=7.0)
    client.handshakeCompleted()
    if stall:
        client.dataReceived(frame(wire.encode("params", salt=bytes(16), n=2**15, r=8, p=1)))
    clock.advance(6.9)
    early = handler.events[:]
    clock.advance(0.1)
    assert transport.disconnected
    client.connectionLost(None)
    (outcome,) = handler.events
    return {"early": early or None, "outcome": outcome, "log": [["aborted", 7]],
            "timers": len(clock.getDelayedCalls())}


def python_delay(options: dict[str, Any], attempt: int) -> float:
    names = {"initialDelay": "initial_delay", "maxDelay": "max_delay", "factor": "factor"}
    policy = Reconnect(jitter=lambda: 0.0, **{names[k]: v for k, v in options.items()})
    return _round(policy.delay(attempt))


@pytest.fixture(scope="module")
def javascript(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the browser code's tests need Node.js 18 or newer"
                    " (sh tests/system-packages.sh installs it)")
    path = tmp_path_factory.mktemp("clock") / "request.json"
    path.write_text(json.dumps({"delays": DELAYS, "reconnect": RECONNECT, "rate": RATE}))
    result = subprocess.run([node, str(SCRIPT), str(path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def test_backoff_delays_and_jitter(javascript: dict[str, Any]) -> None:
    assert javascript["delays"] == [python_delay(o, a) for o, a in DELAYS]
    assert javascript["jitterWithinASecond"] is True


def test_reconnecting(javascript: dict[str, Any]) -> None:
    python = python_reconnect()
    assert javascript["reconnect"] == python
    # What the scenario is meant to show, read off the events.
    events = python["events"]
    assert events[0][4] == "the server is shutting down"
    assert max(e[3] for e in events if e[0] == "reconnecting") == 8.5  # the cap, plus jitter
    assert events[-1][2].endswith("(gave up after 6 attempts to reconnect)")


def test_keepalive(javascript: dict[str, Any]) -> None:
    python = python_keepalive()
    assert javascript["keepalive"] == python
    assert python["log"] == [["ping", 60], ["ping", 120], ["ping", 180], ["aborted", 200]]


def test_login_deadline(javascript: dict[str, Any]) -> None:
    assert javascript["deadline"] == [python_deadline(False), python_deadline(True)]


def test_pacing_to_the_welcome_rate(javascript: dict[str, Any]) -> None:
    python = python_rate()
    assert javascript["rate"] == python
    assert python[:3] == [1, 1, 1]  # the burst less SPARE, then at 0.9 of the rate


def test_leaving_waits_for_acknowledgements(javascript: dict[str, Any]) -> None:
    assert javascript["leave"] == [python_leave(False), python_leave(True)]


def test_a_rejoin_takes_up_the_chain_another_tab_kept(javascript: dict[str, Any]) -> None:
    """
    As the terminal client's C{Transcript.catch_up}: the page's session reads
    the kept transcript at a rejoin and numbers on from a state another tab
    carried further; a message typed during the read waits for it.
    """
    assert javascript["catchUp"] == {
        "before": "1", "sentWhileReading": 0, "after": "8", "reconnected": 1}
