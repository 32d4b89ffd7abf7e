"""
The client against a hostile or broken server: a scripted relay on real
loopback TLS (the server's own TLS context) that misbehaves at each step.
Each case ends in one clear error, never a traceback; a few run the real
``twistchat`` command and check its exit status and its single line. The
client's deadlines and keepalive run on a Clock, and hypothesis feeds the client
protocol arbitrary bytes and malformed messages.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twistchat import errors, wire
from twistchat.client import TrustOnFirstUse, connect
from twistchat.client.api import Reconnect
from twistchat.client.keyring import Keyring
from twistchat.client.protocol import ChatClientProtocol, State
from twistchat.crypto.spake2plus import VerifierSession, context
from twistchat.server.room import Rooms
from twistchat.server.tls import server_options
from twistchat.tlsbinding import server_binding
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.testing import StringTransport
from twisted.protocols.basic import Int32StringReceiver

from .conftest import PASSWORD, Recorder
from .test_cli import run_client

Step = Callable[["Scripted", "wire.Message | None"], None]


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


class Scripted(Int32StringReceiver):
    """
    A relay that does the real handshake for room "main", except where the
    script says otherwise. Script keys: "connect", "hello", "share", "confirm"
    (instead of the answer to that message) and "member" (after the welcome).
    """

    MAX_LENGTH = 65536
    script: dict[str, Step]
    key: Any

    def connectionMade(self) -> None:
        self.spake: VerifierSession | None = None
        if "connect" in self.script:
            self.script["connect"](self, None)

    def stringReceived(self, data: bytes) -> None:
        message = wire.decode(data, wire.FROM_CLIENT)
        step = self.script.get(message.type)
        if step is not None:
            step(self, message)
            return
        getattr(self, "on_" + message.type, lambda m: None)(message)

    def on_hello(self, message: wire.Message) -> None:
        self.spake = VerifierSession(self.key, context(server_binding(self.transport)),
                                     message["name"].encode(), message["room"].encode())
        verifier = self.factory.verifier
        self.send("params", salt=verifier.salt, n=verifier.params.n, r=verifier.params.r,
                  p=verifier.params.p)

    def on_share(self, message: wire.Message) -> None:
        assert self.spake is not None
        y, mac = self.spake.respond(message["X"])
        self.send("verify", Y=y, mac=mac)

    def on_confirm(self, message: wire.Message) -> None:
        assert self.spake is not None
        self.spake.finish(message["mac"])
        self.send("welcome", name="alice", room="main", addr="127.0.0.1:1", members=[])
        if "member" in self.script:
            self.script["member"](self, None)

    def send(self, kind: str, **fields: Any) -> None:
        self.sendString(wire.encode(kind, **fields))


async def scripted_server(certificate: Any, verifier: Any, port: int = 0, **script: Step) -> Any:
    factory = protocol.Factory.forProtocol(Scripted)
    factory.verifier = verifier  # type: ignore[attr-defined]
    Scripted.key = Rooms([verifier]).get("main").key
    factory.protocol = type("ThisScript", (Scripted,), {"script": script})
    endpoint = SSL4ServerEndpoint(reactor, port, server_options(certificate),
                                  interface="127.0.0.1")
    return await endpoint.listen(factory)


async def login_error(certificate: Any, verifier: Any, known_hosts: Path,
                      timeout: float = 10, **script: Step) -> errors.TwistchatError:
    port = await scripted_server(certificate, verifier, **script)
    try:
        with pytest.raises(errors.TwistchatError) as info:
            await connect(reactor, "127.0.0.1", port.getHost().port, "alice", PASSWORD,
                          trust=TrustOnFirstUse(known_hosts), timeout=timeout)
    finally:
        await port.stopListening()
    error = info.value
    assert "\n" not in error.message
    return error


def raw(data: bytes, close: bool = False) -> Step:
    def step(server: Scripted, message: wire.Message | None) -> None:
        server.transport.write(data)
        if close:
            server.transport.loseConnection()

    return step


def sends(kind: str, **fields: Any) -> Step:
    return lambda server, message: server.send(kind, **fields)


# --- before the login -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_gigabyte_length_prefix(certificate: Any, verifier: Any, known_hosts: Path) -> None:
    error = await login_error(certificate, verifier, known_hosts,
                              hello=raw(struct.pack(">I", 0xFFFFFFF0) + b"x" * 100))
    assert isinstance(error, errors.FrameTooLong)
    assert error.message == "the server sent a frame of 4294967280 bytes"


@pytest_twisted.ensureDeferred
async def test_frame_just_over_the_limit(certificate: Any, verifier: Any,
                                         known_hosts: Path) -> None:
    error = await login_error(
        certificate, verifier, known_hosts,
        hello=raw(struct.pack(">I", wire.MAX_FRAME_FROM_SERVER + 1)),
    )
    assert isinstance(error, errors.FrameTooLong)


@pytest_twisted.ensureDeferred
async def test_garbage_frame(certificate: Any, verifier: Any, known_hosts: Path) -> None:
    error = await login_error(certificate, verifier, known_hosts,
                              hello=raw(frame(b"\xff\xfe garbage \x00\x01")))
    assert isinstance(error, errors.BadMessage)
    assert error.message == "frame is not a UTF-8 JSON object"


@pytest_twisted.ensureDeferred
async def test_invalid_json(certificate: Any, verifier: Any, known_hosts: Path) -> None:
    error = await login_error(certificate, verifier, known_hosts,
                              hello=raw(frame(b'{"type": "params", "salt":')))
    assert isinstance(error, errors.BadMessage)


@pytest_twisted.ensureDeferred
async def test_zero_length_frame(certificate: Any, verifier: Any, known_hosts: Path) -> None:
    error = await login_error(certificate, verifier, known_hosts, hello=raw(frame(b"")))
    assert isinstance(error, errors.BadMessage)


@pytest_twisted.ensureDeferred
async def test_unknown_type_and_extra_field(certificate: Any, verifier: Any,
                                            known_hosts: Path) -> None:
    error = await login_error(certificate, verifier, known_hosts,
                              hello=sends("surprise", x=1))
    assert error.message == "unknown message type 'surprise'"
    error = await login_error(
        certificate, verifier, known_hosts,
        hello=raw(frame(b'{"type":"params","salt":"AAAAAAAAAAAAAAAAAAAAAA==",'
                        b'"n":32768,"r":8,"p":1,"extra":true}')),
    )
    assert error.message == "params message has unknown field 'extra'"


@pytest_twisted.ensureDeferred
async def test_message_not_allowed_in_this_state(certificate: Any, verifier: Any,
                                                 known_hosts: Path) -> None:
    error = await login_error(
        certificate, verifier, known_hosts,
        hello=sends("welcome", name="alice", room="main", addr="x", members=[]),
    )
    assert isinstance(error, errors.UnexpectedMessage)
    assert error.message == "the server sent 'welcome' while waiting for the password parameters"
    error = await login_error(certificate, verifier, known_hosts,
                              share=sends("msg", **{"from": "bob"}, sid=bytes(16), n=1,
                                          ct=bytes(32)))
    assert error.message == "the server sent 'msg' while waiting for the server's proof"


@pytest_twisted.ensureDeferred
async def test_weak_scrypt_parameters(certificate: Any, verifier: Any, known_hosts: Path) -> None:
    error = await login_error(certificate, verifier, known_hosts,
                              hello=sends("params", salt=bytes(16), n=1024, r=8, p=1))
    assert isinstance(error, errors.WeakParameters)
    assert "below the minimum" in error.message


@pytest_twisted.ensureDeferred
async def test_verify_with_an_invalid_point(certificate: Any, verifier: Any,
                                            known_hosts: Path) -> None:
    error = await login_error(certificate, verifier, known_hosts,
                              share=sends("verify", Y=b"\x04" + b"\x01" * 64, mac=bytes(32)))
    assert isinstance(error, errors.BadPoint)
    assert error.message == "the server's handshake share is invalid: the point is not on P-256"


@pytest_twisted.ensureDeferred
async def test_verify_with_a_bad_mac(certificate: Any, verifier: Any, known_hosts: Path) -> None:
    def bad_mac(server: Scripted, message: wire.Message | None) -> None:
        assert server.spake is not None and message is not None
        y, mac = server.spake.respond(message["X"])
        server.send("verify", Y=y, mac=bytes(b ^ 1 for b in mac))

    error = await login_error(certificate, verifier, known_hosts, share=bad_mac)
    assert isinstance(error, errors.ServerNotAuthenticated)
    assert error.message == "wrong password, or the server could not prove it knows this room"


@pytest_twisted.ensureDeferred
async def test_closed_in_the_middle_of_a_frame(certificate: Any, verifier: Any,
                                               known_hosts: Path) -> None:
    error = await login_error(certificate, verifier, known_hosts,
                              hello=raw(struct.pack(">I", 200) + b'{"type":"par', close=True))
    assert error.message == "the server closed the connection in the middle of a frame"


@pytest_twisted.ensureDeferred
async def test_never_answers_the_handshake(certificate: Any, verifier: Any,
                                           known_hosts: Path) -> None:
    error = await login_error(certificate, verifier, known_hosts, timeout=0.5,
                              hello=lambda server, message: None)
    assert error.code == "timeout"
    assert error.message == "no answer from the server within 0.5 seconds"


@pytest_twisted.ensureDeferred
async def test_unknown_error_code_shows_its_text(certificate: Any, verifier: Any,
                                                 known_hosts: Path) -> None:
    error = await login_error(certificate, verifier, known_hosts,
                              hello=sends("error", code="martian", text="the moon is full"))
    assert (error.code, error.message) == ("martian", "the moon is full")


@pytest_twisted.ensureDeferred
async def test_not_tls_at_all(known_hosts: Path) -> None:
    class Plain(protocol.Protocol):
        def connectionMade(self) -> None:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        protocol.Factory.forProtocol(Plain))
    try:
        with pytest.raises(errors.TwistchatError) as info:
            await connect(reactor, "127.0.0.1", port.getHost().port, "alice", PASSWORD,
                          trust=TrustOnFirstUse(known_hosts), timeout=5)
    finally:
        await port.stopListening()
    assert info.value.code == "tls"
    assert info.value.message.startswith("TLS failed: ")


# --- the client's own deadline, on a Clock --------------------------------------------


class Handler:
    def __init__(self) -> None:
        self.failures: list[Any] = []

    def login_failed(self, failure: Any) -> None:
        self.failures.append(failure)


def test_handshake_deadline_on_a_clock() -> None:
    clock = task.Clock()
    handler = Handler()
    keyring = Keyring(PASSWORD, "main", lambda *a: defer.Deferred())
    client = ChatClientProtocol(handler, "alice", "main", keyring,  # type: ignore[arg-type]
                                lambda t: bytes(32), clock=clock, timeout=7.0)
    transport = StringTransport()
    client.makeConnection(transport)
    client.handshakeCompleted()
    assert client.state is State.PARAMS
    clock.advance(6.9)
    assert not transport.disconnecting
    client.dataReceived(frame(wire.encode("params", salt=bytes(16), n=2**15, r=8, p=1)))
    assert client.state is State.DERIVING  # progress does not extend the deadline
    clock.advance(0.1)
    assert transport.disconnected  # StringTransport.abortConnection sets this
    client.connectionLost(None)
    (failure,) = handler.failures
    assert failure.value.code == "timeout"
    assert failure.value.message == "no answer from the server within 7 seconds"
    assert clock.getDelayedCalls() == []


def test_deadline_cancelled_by_the_welcome_and_on_loss() -> None:
    clock = task.Clock()
    handler = Handler()
    client = ChatClientProtocol(handler, "alice", "main",  # type: ignore[arg-type]
                                Keyring(PASSWORD, "main", lambda *a: defer.Deferred()),
                                lambda t: bytes(32), clock=clock, timeout=5.0)
    client.makeConnection(StringTransport())
    assert len(clock.getDelayedCalls()) == 1
    client.connectionLost(None)
    assert clock.getDelayedCalls() == []


# --- after the login ---------------------------------------------------------------


class Ends(Recorder):
    def reconnecting(self, attempt: int, delay: float, reason: str) -> None:
        self._add(("reconnecting", attempt))


async def session_end(certificate: Any, verifier: Any, known_hosts: Path,
                      member: Step) -> tuple[Any, Ends]:
    port = await scripted_server(certificate, verifier, member=member)
    events = Ends()
    try:
        session = await connect(reactor, "127.0.0.1", port.getHost().port, "alice", PASSWORD,
                                listener=events, trust=TrustOnFirstUse(known_hosts),
                                timeout=10, reconnect=Reconnect(jitter=lambda: 0.0))
        reason = await session.ended
    finally:
        await port.stopListening()
    return reason, events


@pytest_twisted.ensureDeferred
async def test_member_gets_garbage_and_does_not_reconnect(
    certificate: Any, verifier: Any, known_hosts: Path
) -> None:
    reason, events = await session_end(certificate, verifier, known_hosts,
                                       raw(frame(b"\x00garbage")))
    assert reason == "frame is not a UTF-8 JSON object"
    assert not any(e[0] == "reconnecting" for e in events.events)


@pytest_twisted.ensureDeferred
async def test_member_gets_an_oversize_frame(certificate: Any, verifier: Any,
                                             known_hosts: Path) -> None:
    reason, events = await session_end(certificate, verifier, known_hosts,
                                       raw(struct.pack(">I", 0x7FFFFFFF)))
    assert reason == "the server sent a frame of 2147483647 bytes"
    assert not any(e[0] == "reconnecting" for e in events.events)


@pytest_twisted.ensureDeferred
async def test_member_gets_a_handshake_message(certificate: Any, verifier: Any,
                                               known_hosts: Path) -> None:
    reason, _ = await session_end(certificate, verifier, known_hosts,
                                  sends("params", salt=bytes(16), n=2**15, r=8, p=1))
    assert reason == "the server sent 'params' while member"


def members(count: int) -> list[dict[str, Any]]:
    return [{"name": f"m{i}", "addr": f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}:65535",
             "key": i.to_bytes(32, "big")}
            for i in range(count)]


@pytest_twisted.ensureDeferred
async def test_welcome_with_a_huge_member_list(certificate: Any, verifier: Any,
                                               known_hosts: Path) -> None:
    """
    The schema's maximum (10000 members) is accepted, one more is refused.
    """
    def welcome_with(count: int) -> Step:
        def step(server: Scripted, message: wire.Message | None) -> None:
            assert server.spake is not None and message is not None
            server.spake.finish(message["mac"])
            server.send("welcome", name="alice", room="main", addr="127.0.0.1:1",
                        members=members(count))
        return step

    port = await scripted_server(certificate, verifier, confirm=welcome_with(10000))
    try:
        session = await connect(reactor, "127.0.0.1", port.getHost().port, "alice", PASSWORD,
                                trust=TrustOnFirstUse(known_hosts), timeout=10)
        assert len(session.members) == 10000
        await session.leave()
    finally:
        await port.stopListening()
    error = await login_error(certificate, verifier, known_hosts, confirm=welcome_with(10001))
    assert error.message == "field 'members': expected a list of members"


# --- the real command ----------------------------------------------------------------


@pytest.mark.parametrize("case, script, expected", [
    ("oversize", {"hello": raw(struct.pack(">I", 0xFFFFFFF0))},
     "Unable to connect: the server sent a frame of 4294967280 bytes"),
    ("garbage", {"hello": raw(frame(b"\x00\x01garbage"))},
     "Unable to connect: frame is not a UTF-8 JSON object"),
    ("silent", {"hello": lambda server, message: None},
     "Unable to connect: no answer from the server within 1 seconds"),
    ("bad-point", {"share": sends("verify", Y=b"\x04" + b"\x01" * 64, mac=bytes(32))},
     "Unable to connect: the server's handshake share is invalid: "
     "the point is not on P-256"),
])
@pytest_twisted.ensureDeferred
async def test_command_against_a_hostile_server(
    certificate: Any, verifier: Any, tmp_path: Path, case: str, script: dict[str, Step],
    expected: str,
) -> None:
    port = await scripted_server(certificate, verifier, **script)
    try:
        run = await run_client(tmp_path, "--timeout", "1", "127.0.0.1",
                               str(port.getHost().port), "alice", password=PASSWORD)
    finally:
        await port.stopListening()
    assert run.code == 1, run
    assert run.stderr == expected + "\n", run
    assert "Traceback" not in run.stdout


# --- a server that goes silent after the login ----------------------------------------


class Member:
    def __init__(self) -> None:
        self.closed_with: list[Any] = []
        self.protocol: Any = None

    def logged_in(self, protocol: Any, welcome: Any) -> None:
        self.protocol = protocol

    def event(self, message: Any) -> None:
        pass

    def closed(self, error: Any) -> None:
        self.closed_with.append(error)


def logged_in_client(clock: task.Clock) -> tuple[ChatClientProtocol, StringTransport, Member]:
    """
    A client protocol past its welcome, on a StringTransport (keys given).
    """
    from twistchat.client.keyring import RoomKeys

    handler = Member()
    client = ChatClientProtocol(handler, "alice", "main",  # type: ignore[arg-type]
                                Keyring(PASSWORD, "main", lambda *a: defer.Deferred()),
                                lambda t: bytes(32), clock=clock, timeout=30.0,
                                keepalive=(60.0, 20.0))
    transport = StringTransport()
    client.makeConnection(transport)
    client.state = State.WELCOME
    client._keys = RoomKeys(1, 2, bytes(32))
    client.dataReceived(frame(wire.encode("welcome", name="alice", room="main", addr="a:1",
                                          members=[])))
    assert client.state is State.MEMBER
    transport.clear()
    return client, transport, handler


def test_silent_server_is_pinged_then_dropped_on_a_clock() -> None:
    clock = task.Clock()
    client, transport, handler = logged_in_client(clock)
    clock.advance(59)
    assert transport.value() == b""
    client.dataReceived(frame(wire.encode("notice", code="x", text="still here")))
    clock.advance(59)
    assert transport.value() == b""  # the notice restarted the wait
    clock.advance(1)
    assert transport.value() == frame(wire.encode("ping"))
    client.dataReceived(frame(wire.encode("pong")))
    clock.advance(59)
    assert not transport.disconnecting  # answered: back to waiting 60 s
    clock.advance(1)
    assert transport.value().count(frame(wire.encode("ping"))) == 2
    clock.advance(20)
    assert transport.disconnected
    client.connectionLost(None)
    (error,) = handler.closed_with
    assert error.code == "timeout"
    assert error.message == "no answer from the server to a ping within 20 seconds"
    assert clock.getDelayedCalls() == []


def test_trickled_large_frame_costs_linear_time() -> None:
    """
    A frame of about 800 KB in 4-byte pieces (some 200000 chunks), followed by
    two small frames in odd-sized pieces. Twisted's parser alone copies its
    whole buffer for each chunk (about 80 GB here, several seconds);
    gathered, the frame is joined once.
    """
    import time

    clock = task.Clock()
    client, transport, handler = logged_in_client(clock)
    seen: list[Any] = []
    client.handler.event = seen.append  # type: ignore[method-assign]
    roster = [{"name": f"member-{i:05d}-" + "n" * 19, "addr": f"[2001:db8::{i:x}]:65535",
               "key": i.to_bytes(32, "big")}
              for i in range(10000)]
    big = frame(wire.encode("members", members=roster))
    assert 1_200_000 < len(big) < wire.MAX_FRAME_FROM_SERVER
    started = time.perf_counter()
    for i in range(0, len(big), 4):
        client.dataReceived(big[i:i + 4])
    elapsed = time.perf_counter() - started
    assert elapsed < 2.0, elapsed
    assert [len(m["members"]) for m in seen] == [10000]
    small = (frame(wire.encode("notice", code="x", text="one"))
             + frame(wire.encode("notice", code="x", text="two")))
    for i in range(0, len(small), 7):
        client.dataReceived(small[i:i + 7])
    assert [m.get("text") for m in seen[1:]] == ["one", "two"]
    assert not client.hasPartialFrame()


# --- property: nothing a server sends escapes the client protocol -------------------


class AnyEvent(Member):
    def message(self, *args: Any) -> None:
        pass

    def rejected(self, *args: Any) -> None:
        pass

    def login_failed(self, failure: Any) -> None:
        self.closed_with.append(failure.value)


_json_frames = st.builds(
    lambda kind, extra: frame(wire.encode(kind, **extra)),
    st.sampled_from(sorted(wire.FROM_SERVER) + ["hello", "nonsense"]),
    st.dictionaries(st.sampled_from(["name", "room", "addr", "members", "code", "text", "id",
                                     "salt", "n", "r", "p", "Y", "mac", "from", "sid", "ct"]),
                    st.one_of(st.integers(), st.text(max_size=40), st.binary(max_size=70),
                              st.lists(st.integers(), max_size=3), st.none()),
                    max_size=6),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=st.lists(st.one_of(st.binary(max_size=300), _json_frames), max_size=6),
       member=st.booleans())
def test_any_bytes_from_the_server_end_cleanly(chunks: list[bytes], member: bool) -> None:
    """
    Whatever arrives, before or after the login: the client either stays
    where it was or aborts with a TwistchatError, and nothing else is raised.
    """
    clock = task.Clock()
    if member:
        client, transport, handler = logged_in_client(clock)
        client.handler = AnyEvent()
        handler = client.handler
    else:
        handler = AnyEvent()
        client = ChatClientProtocol(handler, "alice", "main",  # type: ignore[arg-type]
                                    Keyring(PASSWORD, "main", lambda *a: defer.Deferred()),
                                    lambda t: bytes(32), clock=clock, timeout=5.0)
        transport = StringTransport()
        client.makeConnection(transport)
        client.handshakeCompleted()
    for chunk in chunks:
        client.dataReceived(chunk)
    if transport.disconnected:
        assert isinstance(client._error, errors.TwistchatError)
        assert client._error.message and "\n" not in client._error.message
    client.connectionLost(None)
    for error in handler.closed_with:
        assert error is None or isinstance(error, errors.TwistchatError)
    assert clock.getDelayedCalls() == []
