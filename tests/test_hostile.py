"""
Hostile input against a real relay over real loopback TLS.

Each test plays an offender with a hand-driven client (L{Raw}: real TLS, real
SPAKE2+, frames written as the test likes) and asserts two things: what the
offender sees (the C{error} code and text, then the connection closing), and
that two bystanders (real client library sessions) still exchange messages
afterwards. Limits are shortened through L{Limits} where real time would be
slow, and a L{Clock} stands in for the server's clock where the test is not
about real time passing (penalties, the deadlines of test_pair.py's cases
run again over real TLS). One case per deadline runs on real time, with a
short deadline: test_cut_off_frame_then_silence_before_login (handshake) and
test_cut_off_frame_then_silence_from_member (ping).

Cases, with the test that covers each (here unless a module is named):

| # | Case | Test |
|---|------|------|
| 1 | Garbage frames before login (not JSON, binary, zero-length) | test_garbage_frame_before_login |
| 2 | Garbage frames from a member (not JSON, zero-length, invalid UTF-8) | test_bad_frame_from_member[garbage-*] |
| 3 | JSON with duplicate keys, deep nesting, huge numbers, wrong types | test_bad_frame_from_member[json-*] |
| 4 | Non-TLS bytes (an HTTP request) | test_integration.py::test_non_tls_bytes_and_huge_frames_do_not_disturb_room |
| 5 | Length prefix of gigabytes before login | test_integration.py::test_non_tls_bytes_and_huge_frames_do_not_disturb_room |
| 6 | Length prefix of gigabytes from a member | test_gigabyte_prefix_from_member |
| 7 | A frame cut off, then silence, before login (handshake deadline) | test_cut_off_frame_then_silence_before_login; in memory: test_pair.py::test_server_handshake_deadline |
| 8 | A frame cut off, then silence, from a member (ping, then drop) | test_cut_off_frame_then_silence_from_member; in memory: test_pair.py::test_ping_timeout_on_a_half_open_connection |
| 9 | Handshakes never finished (after hello; after the server's proof) | test_handshake_never_finished; in memory: test_pair.py::test_server_handshake_deadline_mid_login |
| 10 | 300 half-open connections (silent TCP, half a ClientHello) while members chat; freed on timeout | test_hundreds_of_half_open_connections |
| 11 | Repeated wrong passwords: penalty, with growing refusals | test_repeated_wrong_passwords_growing_penalty |
| 12 | Concurrent password guesses from one address capped | test_parallel_guesses_capped |
| 13 | Replayed handshake frames on a new connection (TLS channel binding) | test_replayed_handshake_fails |
| 14 | Re-attributed frame: a `send` carrying a `from` | test_send_cannot_carry_from |
| 15 | Re-attributed payload: another member's sealed message sent as one's own | test_resent_payload_is_attributed_to_sender_and_rejected |
| 16 | Server-only message types sent by a client | test_server_only_types_refused |
| 17 | Control characters, ANSI escapes, bidi overrides, invalid UTF-8, look-alikes in names (log stays clean) | test_hostile_names |
| 18 | The same in room names (log stays clean) | test_hostile_room_names |
| 19 | Name collisions, case-insensitive | test_name_collision_case_insensitive |
| 20 | A member that never reads while 10 others chat | test_member_that_never_reads; test_pair.py::test_slow_reader_dropped_others_get_everything; the `slow` error frame: test_server_limits.py::test_member_that_stops_reading_is_dropped |
| 21 | Disconnect in the middle of a frame (before login, as a member) | test_disconnect_mid_frame |
| 22 | Wrong protocol version; a second hello; handshake messages out of order | test_handshake_out_of_order |
| 23 | Handshake messages from a member (a second hello, share, confirm) | test_handshake_messages_from_member |
| 24 | Ping flood and `who` flood | test_request_flood |
| 25 | A member exceeding the message rate | test_send_flood_only_burst_relayed; test_pair.py::test_rate_limit_notice_then_disconnect; test_server_limits.py::test_flooding_member_warned_then_dropped_others_unaffected |
| 26 | Pre-auth connections per address | test_connections_per_address |
| 27 | Pre-auth connections in total | test_connections_in_total |
| 28 | A frame trickled one byte per TLS record | test_trickled_frame_relayed; cost: test_framing.py::test_trickled_frame_costs_linear_work |
| 29 | Unknown room (looks like a wrong password) | test_server_protocol.py::test_unknown_room_looks_like_wrong_password |
| 30 | A man in the middle terminating TLS | test_integration.py::test_tls_terminating_man_in_the_middle_cannot_complete |
| 31 | A relay that alters, replays or re-attributes messages | test_integration.py::test_tampered_relay_is_rejected_not_shown |
| 32 | Room full | test_server_limits.py::test_room_full |
| 33 | Any bytes or JSON to every decoder | test_fuzz.py, test_wire.py |
"""

from __future__ import annotations

import base64
import itertools
import json
import ssl as stdlib_ssl
import struct
import unicodedata
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twistchat import errors, wire
from twistchat.client.api import ChatMessage
from twistchat.crypto.kdf import ScryptParams, content_key, derive_secrets
from twistchat.crypto.seal import Sealer
from twistchat.crypto.signed import NO_HASH, Fields, seal_signed
from twistchat.crypto.spake2plus import Prover, context
from twistchat.server.limits import Limits
from twistchat.server.room import Rooms
from twistchat.server.service import ChatServerFactory
from twistchat.server.tls import server_options
from twistchat.tlsbinding import client_binding
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.ssl import CertificateOptions
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols.basic import Int32StringReceiver
from zope.interface import implementer

from .conftest import (
    IDENTITY,
    IDENTITY_KEY,
    OTHER_PASSWORD,
    PASSWORD,
    RunningServer,
    deferLater,
    stop_server,
    until,
)
from .test_integration import is_message, join

_secrets: dict[Any, Any] = {}
_open: list[Any] = []


def derive(password: str, salt: bytes, params: ScryptParams) -> Any:
    key = (password, salt, params)
    if key not in _secrets:
        _secrets[key] = derive_secrets(password, salt, params)
    return _secrets[key]


def timed(d: defer.Deferred[Any], seconds: float = 5) -> defer.Deferred[Any]:
    return d.addTimeout(seconds, reactor)


@implementer(IHandshakeListener)
class Raw(Int32StringReceiver):
    """
    A client the test drives frame by frame over real TLS.
    """

    MAX_LENGTH = wire.MAX_FRAME_FROM_SERVER

    def __init__(self) -> None:
        self.frames: list[wire.Message] = []
        self.read = 0
        self.sent: list[bytes] = []
        self.closed = False
        self.name = ""
        self.key = b""
        self._handshake: defer.Deferred[None] = defer.Deferred()
        self._waiting: list[defer.Deferred[None]] = []

    def connectionMade(self) -> None:
        _open.append(self)

    def handshakeCompleted(self) -> None:
        self._handshake.callback(None)

    def stringReceived(self, frame: bytes) -> None:
        self.frames.append(wire.decode(frame, wire.FROM_SERVER))
        self._wake()

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    async def _changed(self, seconds: float) -> None:
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(d)
        await timed(d, seconds)

    # --- sending ---

    def send(self, kind: str, **fields: Any) -> None:
        self.frame(wire.encode(kind, **fields))

    def frame(self, body: bytes) -> None:
        self.sent.append(body)
        self.sendString(body)

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def seal(self, text: str) -> dict[str, Any]:
        """
        A signed message under L{IDENTITY}, the key this peer announced.
        """
        if not hasattr(self, "_sealer"):
            self._sealer = Sealer(self.key, "main", self.name)
            self._chain = (0, NO_HASH)
        seq, prev = self._chain
        sent = seal_signed(self._sealer, IDENTITY, Fields(seq + 1, prev, NO_HASH, text))
        self._chain = (seq + 1, sent.hash)
        return {"sid": sent.sid, "n": sent.n, "ct": sent.ciphertext}

    # --- receiving ---

    async def next(self, seconds: float = 5) -> wire.Message:
        while self.read >= len(self.frames):
            assert not self.closed, f"closed; frames so far: {self.frames}"
            await self._changed(seconds)
        message = self.frames[self.read]
        self.read += 1
        return message

    async def until(self, kind: str, seconds: float = 5) -> wire.Message:
        while True:
            message = await self.next(seconds)
            if message.type == kind:
                return message

    async def gone(self, seconds: float = 5) -> None:
        while not self.closed:
            await self._changed(seconds)

    async def refused(self, seconds: float = 5) -> wire.Message:
        """
        The error the server sent, once the connection has closed.
        """
        error = await self.until("error", seconds)
        await self.gone(seconds)
        return error

    async def handshake(self) -> None:
        await timed(self._handshake)

    async def login(self, name: str, password: str = PASSWORD, room: str = "main") -> wire.Message:
        """
        Run the password handshake; return the welcome, or the error.
        """
        await self.handshake()
        self.name = name
        self.send("hello", v=wire.PROTOCOL_VERSION, room=room, name=name)
        params = await self.next()
        if params.type != "params":
            return params
        secrets = derive(password, params["salt"],
                         ScryptParams(params["n"], params["r"], params["p"]))
        prover = Prover(context(client_binding(self.transport)), name.encode(), room.encode(),
                        secrets.w0, secrets.w1)
        self.send("share", X=prover.share())
        verify = await self.next()
        if verify.type != "verify":
            return verify
        try:
            confirm, _ = prover.finish(verify["Y"], verify["mac"])
        except errors.AuthFailed:
            confirm = b"\x00" * 32  # the wrong password: let the server say so
        self.send("confirm", mac=confirm, key=IDENTITY_KEY)
        self.key = content_key(secrets.content_secret, room)
        return await self.next()


async def connect_raw(server: RunningServer, tls: bool = True,
                      cls: type[protocol.Protocol] = Raw) -> Any:
    endpoint: Any = TCP4ClientEndpoint(reactor, "127.0.0.1", server.port)
    if tls:
        endpoint = wrapClientTLS(CertificateOptions(verify=False), endpoint)
    return await endpoint.connect(protocol.Factory.forProtocol(cls))


async def member(server: RunningServer, name: str) -> Raw:
    raw = await connect_raw(server)
    welcome = await raw.login(name)
    assert welcome.type == "welcome", welcome
    return raw


class Bystanders:
    """
    Two members on the real client library, who must not notice the offender.
    """

    _count = itertools.count()

    def __init__(self, alice: Any, alice_events: Any, bob: Any, bob_events: Any) -> None:
        self.alice, self.alice_events = alice, alice_events
        self.bob, self.bob_events = bob, bob_events

    async def still_chat(self) -> None:
        for sender, events in ((self.alice, self.bob_events), (self.bob, self.alice_events)):
            text = f"still here {next(self._count)}"
            sender.send(text)
            got = await events.wait_for(is_message(text), timeout=5)
            assert got.sender == sender.name

    async def saw_leave(self, name: str) -> None:
        await self.bob_events.wait_for(
            lambda e: isinstance(e, tuple) and e[0] == "left" and e[1].name == name, timeout=5
        )

    def messages_from(self, name: str) -> list[Any]:
        return [e for e in self.bob_events.events
                if isinstance(e, ChatMessage) and e.sender == name]

    async def leave(self) -> None:
        await self.alice.leave()
        await self.bob.leave()


async def bystanders(server: RunningServer, known_hosts: Path) -> Bystanders:
    alice, alice_events = await join(server, "alice", known_hosts)
    bob, bob_events = await join(server, "bob", known_hosts)
    return Bystanders(alice, alice_events, bob, bob_events)


Start = Callable[..., Awaitable[RunningServer]]


@pytest_twisted.async_yield_fixture
async def serve(certificate: Any, verifier: Any) -> Any:
    """
    Start relays with chosen limits (and, optionally, a Clock for their timers).
    """
    started: list[tuple[ChatServerFactory, Any]] = []

    async def start(clock: Any = reactor, **limits: Any) -> RunningServer:
        factory = ChatServerFactory(Rooms([verifier]), clock, Limits(**limits))
        port = await SSL4ServerEndpoint(
            reactor, 0, server_options(certificate), interface="127.0.0.1"
        ).listen(factory)
        started.append((factory, port))
        return RunningServer(factory, port)

    yield start
    for factory, port in started:
        await stop_server(factory, port)


@pytest.fixture(autouse=True)
def cached_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The bystanders' client library derives keys as usual (in a thread), from
    a cache: scrypt costs 0.1 s a login and is tested on its own elsewhere.
    """
    monkeypatch.setattr("twistchat.client.connector.derive_secrets", derive)


@pytest.fixture(autouse=True)
def abort_leftovers() -> Iterator[None]:
    yield
    while _open:
        proto = _open.pop()
        if proto.transport is not None and not getattr(proto, "closed", True):
            proto.transport.abortConnection()


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def assert_log_clean(lines: list[str]) -> None:
    """
    No control or format character (ESC, CR, LF, bidi overrides, ...) reached
    the log: a hostile name cannot forge log lines or recolour a terminal.
    """
    assert lines
    for line in lines:
        bad = [ch for ch in line if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")]
        assert not bad, f"raw control characters in log line {line!r}"


def framed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


SID = "AQEBAQEBAQEBAQEBAQEBAQ=="
CT = "A" * 64
#: 65 bytes, but not an uncompressed point (prefix 0x05); a 32-byte MAC.
BAD_X = base64.b64encode(b"\x05" + bytes(64)).decode()
MAC = base64.b64encode(bytes(32)).decode()


# --- 1-3, 6: garbage ------------------------------------------------------------


@pytest.mark.parametrize("body, text", [
    (b"GET / HTTP/1.0\r\n\r\n", "not a UTF-8 JSON object"),
    (bytes(range(256)), "not a UTF-8 JSON object"),
    (b"", "not a UTF-8 JSON object"),
    (b'{"type":"hello","v":1,"room":"main","name":"a","type":"share"}', "repeats"),
])
@pytest_twisted.ensureDeferred
async def test_garbage_frame_before_login(server: Any, known_hosts: Path, body: bytes,
                                          text: str) -> None:
    room = await bystanders(server, known_hosts)
    raw = await connect_raw(server)
    await raw.handshake()
    raw.frame(body)
    error = await raw.refused()
    assert error["code"] == "bad-message" and text in error["text"]
    await room.still_chat()
    assert server.factory.preauth_total == 0
    await room.leave()


@pytest.mark.parametrize("body, text", [
    (b"\x00\x01\x02garbage", "not a UTF-8 JSON object"),
    (b"", "not a UTF-8 JSON object"),
    (b'{"type":"who","x":"\xff\xfe"}', "not a UTF-8 JSON object"),
    (b'{"type":"send","type":"who"}', "repeats a JSON member"),
    (b'{"type":"send","sid":' + b"[" * 5000 + b"]" * 5000 + b"}", "not a UTF-8 JSON object"),
    (f'{{"type":"send","sid":"{SID}","n":1e400,"ct":"{CT}"}}'.encode(), "expected an integer"),
    (f'{{"type":"send","sid":"{SID}","n":{"9" * 5000},"ct":"{CT}"}}'.encode(),
     "not a UTF-8 JSON object"),
    (f'{{"type":"send","sid":"{SID}","n":{2**64},"ct":"{CT}"}}'.encode(), "out of range"),
    (f'{{"type":"send","sid":"{SID}","n":"1","ct":"{CT}"}}'.encode(), "expected an integer"),
    (f'{{"type":"send","sid":7,"n":1,"ct":"{CT}"}}'.encode(), "expected base64"),
    (b'{"type":"ping","id":-1}', "out of range"),
    (b'{"type":"who","extra":null}', "unknown field"),
    (b'["who"]', "not a UTF-8 JSON object"),
], ids=["garbage-binary", "garbage-empty", "garbage-utf8", "json-duplicate", "json-deep",
        "json-huge-float", "json-5000-digits", "json-2**64", "json-string-for-int",
        "json-int-for-base64", "json-negative-id", "json-extra-field", "json-array"])
@pytest_twisted.ensureDeferred
async def test_bad_frame_from_member(server: Any, known_hosts: Path, body: bytes,
                                     text: str) -> None:
    room = await bystanders(server, known_hosts)
    mallory = await member(server, "mallory")
    mallory.frame(body)
    error = await mallory.refused()
    assert error["code"] == "bad-message" and text in error["text"]
    await room.saw_leave("mallory")
    await room.still_chat()
    await room.leave()


@pytest_twisted.ensureDeferred
async def test_gigabyte_prefix_from_member(server: Any, known_hosts: Path,
                                           log_lines: list[str]) -> None:
    room = await bystanders(server, known_hosts)
    mallory = await member(server, "mallory")
    mallory.write(struct.pack(">I", 3 << 30) + b"x" * 1000)
    error = await mallory.refused(seconds=2)
    # Closed with a TLS close alert at once, not aborted after the close grace.
    assert not any("did not finish closing" in line for line in log_lines)
    assert error["code"] == "frame-too-long"
    assert error["text"] == f"frame of {3 << 30} bytes exceeds the limit of {wire.MAX_FRAME} bytes"
    await room.saw_leave("mallory")
    await room.still_chat()
    await room.leave()


# --- 7-10: silence and half-open connections -------------------------------------


@pytest_twisted.ensureDeferred
async def test_cut_off_frame_then_silence_before_login(serve: Start, known_hosts: Path) -> None:
    server = await serve(handshake_timeout=0.5, close_grace=0.5)
    room = await bystanders(server, known_hosts)
    raw = await connect_raw(server)
    await raw.handshake()
    raw.write(struct.pack(">I", 100) + b'{"type":"hel')
    error = await raw.refused()
    assert error["code"] == "timeout"
    assert error["text"] == "handshake not completed within 0.5 seconds"
    await room.still_chat()
    await room.leave()


@pytest_twisted.ensureDeferred
async def test_cut_off_frame_then_silence_from_member(serve: Start, known_hosts: Path) -> None:
    server = await serve(idle_timeout=0.3, ping_timeout=0.3)
    room = await bystanders(server, known_hosts)
    mallory = await member(server, "mallory")
    # The pong it would send is swallowed by the unfinished frame.
    mallory.write(struct.pack(">I", 100) + b'{"type":"po')
    await mallory.until("ping")
    error = await mallory.refused()
    assert error["code"] == "timeout" and error["text"] == "no answer to a ping within 0.3 seconds"
    await room.saw_leave("mallory")
    # The bystanders, who logged in before mallory, were pinged before it and
    # would have been dropped before it had their client not answered (the
    # reactor runs timers in order of their deadlines): they are still there.
    await room.still_chat()
    await room.leave()


@pytest.mark.parametrize("stage", ["after hello", "after the server's proof"])
@pytest_twisted.ensureDeferred
async def test_handshake_never_finished(serve: Start, known_hosts: Path, stage: str,
                                        log_lines: list[str]) -> None:
    clock = Clock()  # the server's deadlines; the sockets are real
    server = await serve(clock=clock, handshake_timeout=0.5, close_grace=0.5)
    room = await bystanders(server, known_hosts)
    raw = await connect_raw(server)
    await raw.handshake()
    raw.send("hello", v=wire.PROTOCOL_VERSION, room="main", name="mallory")
    assert (await raw.next()).type == "params"
    if stage != "after hello":
        prover = Prover(context(client_binding(raw.transport)), b"mallory", b"main", 5, 7)
        raw.send("share", X=prover.share())
        assert (await raw.next()).type == "verify"
    clock.advance(0.5)
    error = await raw.refused()
    assert error["code"] == "timeout"
    state = "waiting for the password share" if stage == "after hello" \
        else "waiting for key confirmation"
    assert any(f"timed out in state {state}" in line for line in log_lines)
    # Stopping after the server's proof could have tested a guess: it counts.
    failures = server.factory.addresses.get("127.0.0.1").failures
    assert failures == (0 if stage == "after hello" else 1)
    await room.still_chat()
    await room.leave()


class Silent(protocol.Protocol):
    closed = False

    def connectionMade(self) -> None:
        _open.append(self)
        if self.factory.hello:
            self.transport.write(self.factory.hello)

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True


def half_client_hello() -> bytes:
    context = stdlib_ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = stdlib_ssl.CERT_NONE
    incoming, outgoing = stdlib_ssl.MemoryBIO(), stdlib_ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing)
    with pytest.raises(stdlib_ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    return hello[: len(hello) // 2]


@pytest_twisted.ensureDeferred
async def test_hundreds_of_half_open_connections(serve: Start, known_hosts: Path) -> None:
    """
    300 connections that never finish TLS (150 silent, 150 stopping half way
    through the ClientHello) while members chat; the handshake deadline frees
    every one of them.
    """
    clock = Clock()  # the server's deadlines; the sockets are real
    server = await serve(clock=clock, handshake_timeout=1.0, close_grace=0.5,
                         max_preauth_per_address=400, max_preauth_total=400)
    room = await bystanders(server, known_hosts)
    silent_factory = protocol.Factory.forProtocol(Silent)
    silent_factory.hello = b""
    half_factory = protocol.Factory.forProtocol(Silent)
    half_factory.hello = half_client_hello()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", server.port)
    peers: list[Silent] = []
    # In batches of 50, within the listen backlog, so that no SYN is dropped.
    for batch in range(6):
        factory = silent_factory if batch % 2 else half_factory
        peers += await defer.gatherResults([endpoint.connect(factory) for _ in range(50)])
        for _ in range(200):
            if server.factory.preauth_total == len(peers):
                break
            await deferLater(0.01)
    assert server.factory.preauth_total == 300
    await room.still_chat()
    clock.advance(1.0)  # the handshake deadline: each is told and closed,
    clock.advance(0.5)  # and aborted if it does not finish closing
    await until(lambda: all(peer.closed for peer in peers))
    assert server.factory.preauth_total == 0
    assert len(server.factory.connections) == 2
    assert server.factory.addresses.get("127.0.0.1").preauth == 0
    await room.still_chat()
    await room.leave()


# --- 11-13: password guessing and replays ------------------------------------------


@pytest_twisted.ensureDeferred
async def test_repeated_wrong_passwords_growing_penalty(serve: Start, known_hosts: Path) -> None:
    clock = Clock()  # penalty time; the sockets are real
    server = await serve(clock=clock, free_failures=1, failure_penalty=5)
    room = await bystanders(server, known_hosts)
    refusals = []
    for attempt in range(4):
        guesser = await connect_raw(server)
        answer = await guesser.login("mallory", password=OTHER_PASSWORD)
        assert answer.type == "error" and answer["code"] == "wrong-password"
        assert answer["text"] == "wrong password"
        guesser.transport.loseConnection()
        if attempt == 0:
            continue  # the free failure
        blocked = await connect_raw(server)
        error = await blocked.refused()
        assert error["code"] == "penalty"
        refusals.append(error["text"])
        clock.advance(5 * 2 ** (attempt - 1))
    assert refusals == [
        f"too many failed logins from your address: try again in {s} seconds"
        for s in (5, 10, 20)
    ]
    await room.still_chat()
    await room.leave()


@pytest_twisted.ensureDeferred
async def test_parallel_guesses_capped(serve: Start, known_hosts: Path) -> None:
    """
    Past --max-guesses-per-address shares in progress, a further share from the
    same address is not answered until one of them ends.
    """
    server = await serve(max_guesses_per_address=2, free_failures=10)
    room = await bystanders(server, known_hosts)
    guessers = [await connect_raw(server) for _ in range(3)]
    for raw in guessers:
        await raw.handshake()
        raw.send("hello", v=wire.PROTOCOL_VERSION, room="main", name="mallory")
        assert (await raw.next()).type == "params"
    for raw in guessers[:2]:
        prover = Prover(context(client_binding(raw.transport)), b"mallory", b"main", 5, 7)
        raw.send("share", X=prover.share())
        assert (await raw.next()).type == "verify"
    waiting = guessers[2]
    prover = Prover(context(client_binding(waiting.transport)), b"mallory", b"main", 5, 7)
    waiting.send("share", X=prover.share())
    record = server.factory.addresses.get("127.0.0.1")
    for _ in range(500):
        if record.queued:
            break
        await deferLater(0.01)
    assert list(record.queued) and waiting.read == len(waiting.frames) == 1
    # One guesser gives up at the confirmation (a failed guess): the waiting
    # share is answered.
    guessers[0].transport.loseConnection()
    assert (await waiting.next()).type == "verify"
    await room.still_chat()
    await room.leave()


@pytest_twisted.ensureDeferred
async def test_replayed_handshake_fails(server: Any, known_hosts: Path) -> None:
    """
    Frames captured from a successful login (as a man in the middle who could
    read them would have them) fail on a new TLS connection: the handshake is
    bound to the TLS exporter, which differs per connection.
    """
    room = await bystanders(server, known_hosts)
    carol = await member(server, "carol")
    captured = list(carol.sent)
    carol.transport.loseConnection()
    await carol.gone()
    await room.saw_leave("carol")
    replay = await connect_raw(server)
    await replay.handshake()
    replay.frame(captured[0])  # hello
    assert (await replay.next()).type == "params"
    replay.frame(captured[1])  # share
    assert (await replay.next()).type == "verify"
    replay.frame(captured[2])  # confirm
    error = await replay.refused()
    assert error["code"] == "wrong-password"
    assert len(server.rooms.get("main")) == 2
    await room.bob_events.wait_for(
        lambda e: isinstance(e, tuple) and e[0] == "joined" and e[1].name == "carol", timeout=5)
    joined = [e for e in room.bob_events.events if isinstance(e, tuple) and e[0] == "joined"]
    assert [e[1].name for e in joined] == ["carol"]
    await room.still_chat()
    await room.leave()


# --- 14-16: re-attribution and server-only types ------------------------------------


@pytest_twisted.ensureDeferred
async def test_send_cannot_carry_from(server: Any, known_hosts: Path) -> None:
    room = await bystanders(server, known_hosts)
    mallory = await member(server, "mallory")
    sealed = mallory.seal("I am alice")
    mallory.send("send", **{"from": "alice"}, **sealed)
    error = await mallory.refused()
    assert error["code"] == "bad-message"
    assert error["text"] == "send message has unknown field 'from'"
    await room.saw_leave("mallory")
    await room.still_chat()
    assert room.messages_from("mallory") == []
    await room.leave()


@pytest_twisted.ensureDeferred
async def test_resent_payload_is_attributed_to_sender_and_rejected(
    server: Any, known_hosts: Path
) -> None:
    """
    A member replays alice's sealed message as its own: the server sets C{from}
    to the real sender, and receivers reject it (the sender is sealed in).
    """
    room = await bystanders(server, known_hosts)
    mallory = await member(server, "mallory")
    room.alice.send("meet at noon")
    original = await mallory.until("msg")
    assert original["from"] == "alice"
    raw = original.raw
    mallory.send("send", sid=raw["sid"], n=raw["n"], ct=raw["ct"])
    rejected = await room.bob_events.wait_for(
        lambda e: isinstance(e, tuple) and e[0] == "rejected", timeout=5)
    assert rejected[1] == "mallory" and "could not be opened" in rejected[2]
    assert [m.text for m in room.bob_events.events if isinstance(m, ChatMessage)] \
        == ["meet at noon"]
    # The offender is not disconnected: the server cannot tell, receivers can.
    assert not mallory.closed
    await room.still_chat()
    await room.leave()


@pytest_twisted.ensureDeferred
async def test_server_only_types_refused(server: Any, known_hosts: Path) -> None:
    room = await bystanders(server, known_hosts)
    frames = {
        "msg": {"from": "alice", "sid": SID, "n": 1, "ct": CT},
        "joined": {"name": "alice", "addr": "127.0.0.1:1"},
        "left": {"name": "alice", "addr": "127.0.0.1:1"},
        "welcome": {"name": "a", "room": "main", "addr": "x", "members": []},
        "members": {"members": []},
        "notice": {"code": "x", "text": "y"},
        "error": {"code": "shutdown", "text": "the server is shutting down"},
        "params": {"salt": "A" * 24, "n": 2, "r": 1, "p": 1},
    }
    for i, (kind, fields) in enumerate(frames.items()):
        mallory = await member(server, f"mallory{i}")
        mallory.frame(json.dumps({"type": kind, **fields}).encode())
        error = await mallory.refused()
        assert error["code"] == "bad-message"
        assert error["text"] == f"unknown message type {kind!r}"
    # Each offender joined and left: wait for the last leave bob is told of,
    # then check he was told of every one, in order.
    await room.saw_leave(f"mallory{len(frames) - 1}")
    left = [e[1].name for e in room.bob_events.events if isinstance(e, tuple) and e[0] == "left"]
    assert left == [f"mallory{i}" for i in range(len(frames))]
    await room.still_chat()
    await room.leave()


# --- 17-19: names ---------------------------------------------------------------------


def hello(name: str = "mallory", room: str = "main") -> bytes:
    return json.dumps({"type": "hello", "v": wire.PROTOCOL_VERSION, "room": room, "name": name}).encode()


@pytest_twisted.ensureDeferred
async def test_hostile_names(server: Any, known_hosts: Path, log_lines: list[str]) -> None:
    room = await bystanders(server, known_hosts)
    cases = [
        (hello("\x1b[31mred"), "bad-message", "control characters"),
        (hello("\x1b]0;owned\x07"), "bad-message", "control characters"),
        (hello("ali\u202ece"), "bad-message", "control characters"),
        (hello("bob\r\n2026 [-] admin logged in"), "bad-message", "control characters"),
        (hello("zero\u200bwidth"), "bad-message", "control characters"),
        (b'{"type":"hello","v":1,"room":"main","name":"a\xff\xfe"}', "bad-message",
         "not a UTF-8 JSON object"),
        (hello("\u0430lice"), "name-invalid", "invalid name"),  # Cyrillic a
        (hello("caf\u00e9"), "name-invalid", "invalid name"),
        (hello("two words"), "name-invalid", "invalid name"),
        (hello("-dash"), "name-invalid", "invalid name"),
    ]
    for body, code, text in cases:
        raw = await connect_raw(server)
        await raw.handshake()
        raw.frame(body)
        error = await raw.refused()
        assert error["code"] == code and text in error["text"], body
    await room.still_chat()
    assert [m.name for m in await room.alice.who()] == ["alice", "bob"]
    assert_log_clean(log_lines)
    await room.leave()


@pytest_twisted.ensureDeferred
async def test_hostile_room_names(server: Any, known_hosts: Path, log_lines: list[str]) -> None:
    room = await bystanders(server, known_hosts)
    for name in ["\x1b[2J", "ma\u202ein", "room\r\nFAKE LOG LINE", "\u2028", "x\x00"]:
        raw = await connect_raw(server)
        await raw.handshake()
        raw.frame(hello(room=name))
        error = await raw.refused()
        assert error["code"] == "bad-message" and "control characters" in error["text"]
    raw = await connect_raw(server)
    await raw.handshake()
    raw.frame(b'{"type":"hello","v":1,"room":"\xc0\xaf","name":"mallory"}')
    assert (await raw.refused())["code"] == "bad-message"
    await room.still_chat()
    assert_log_clean(log_lines)
    await room.leave()


@pytest_twisted.ensureDeferred
async def test_name_collision_case_insensitive(server: Any, known_hosts: Path) -> None:
    room = await bystanders(server, known_hosts)
    for name in ("ALICE", "Alice", "bOb"):
        raw = await connect_raw(server)
        error = await raw.login(name)
        assert error.type == "error" and error["code"] == "name-taken"
        assert error["text"] == f"the name {name!r} is already taken in this room"
        await raw.gone()
    # Knowing the password, these were not failed guesses.
    assert server.factory.addresses.get("127.0.0.1").failures == 0
    await room.still_chat()
    await room.leave()


# --- 20-21: slow readers and broken connections ------------------------------------------


@pytest_twisted.ensureDeferred
async def test_member_that_never_reads(serve: Start, log_lines: list[str]) -> None:
    """
    One member stops reading while ten others chat over real sockets: it is
    dropped with code "slow" once its queue passes the limit, and each of the
    ten receives every message of the other nine.
    """
    server = await serve(max_send_queue=256 * 1024, message_rate=1e6, message_burst=10**6)
    slow = await member(server, "slow")
    chatters = [await member(server, f"chatter{i}") for i in range(10)]
    slow.transport.pauseProducing()  # stop reading from the socket
    text = "x" * 4000
    sent = 0
    for _ in range(100):  # bounded: at most 1000 messages
        for chatter in chatters:
            chatter.send("send", **chatter.seal(text))
        sent += 1
        await deferLater(0.005)
        if any("slow (127.0.0.1" in line and "is not reading" in line for line in log_lines):
            break
    assert any("is not reading" in line for line in log_lines), "the slow member was not dropped"
    assert "slow" not in [m.name for m in server.rooms.get("main").members]
    for chatter in chatters:
        for _ in range(200):
            got = [m for m in chatter.frames if m.type == "msg"]
            if len(got) >= 9 * sent:
                break
            await chatter._changed(5)
        assert len(got) == 9 * sent
        assert not chatter.closed
    # The offender's connection was aborted: what it can still read ends
    # without the frames it missed. The "slow" error frame is written last
    # (test_server_limits.py::test_member_that_stops_reading_is_dropped), but
    # it sits behind the unread data, so the abort discards it.
    slow.transport.resumeProducing()
    await slow.gone()
    assert len([m for m in slow.frames if m.type == "msg"]) < 10 * sent


@pytest_twisted.ensureDeferred
async def test_disconnect_mid_frame(server: Any, known_hosts: Path) -> None:
    room = await bystanders(server, known_hosts)
    before = await connect_raw(server)
    await before.handshake()
    before.write(framed(hello())[:9])
    mallory = await member(server, "mallory")
    mallory.write(framed(wire.encode("send", **mallory.seal("half")))[:30])
    for raw in (before, mallory):
        raw.transport.abortConnection()
        await raw.gone()
    await room.saw_leave("mallory")
    for _ in range(50):
        if len(server.factory.connections) == 2:
            break
        await deferLater(0.01)
    assert len(server.factory.connections) == 2 and server.factory.preauth_total == 0
    assert room.messages_from("mallory") == []
    await room.still_chat()
    await room.leave()


# --- 22-24: protocol misuse and floods ------------------------------------------------------


@pytest.mark.parametrize("frames, code, text", [
    ([{"type": "hello", "v": 1, "room": "main", "name": "m"}], "version",
     "this server speaks protocol version 3, not 1"),
    ([{"type": "hello", "v": wire.PROTOCOL_VERSION, "room": "main", "name": "m"}] * 2, "unexpected-message",
     "a 'hello' message is not allowed while waiting for the password share"),
    ([{"type": "share", "X": BAD_X}], "unexpected-message",
     "a 'share' message is not allowed while waiting for hello"),
    ([{"type": "hello", "v": wire.PROTOCOL_VERSION, "room": "main", "name": "m"},
      {"type": "confirm", "mac": MAC, "key": base64.b64encode(IDENTITY_KEY).decode()}],
     "unexpected-message",
     "a 'confirm' message is not allowed while waiting for the password share"),
    ([{"type": "who"}], "unexpected-message",
     "a 'who' message is not allowed while waiting for hello"),
    ([{"type": "hello", "v": wire.PROTOCOL_VERSION, "room": "main", "name": "m"},
      {"type": "share", "X": BAD_X}], "bad-point", "uncompressed"),
], ids=["version", "second-hello", "share-first", "confirm-early", "who-first", "bad-point"])
@pytest_twisted.ensureDeferred
async def test_handshake_out_of_order(server: Any, known_hosts: Path, frames: list[Any],
                                      code: str, text: str) -> None:
    room = await bystanders(server, known_hosts)
    raw = await connect_raw(server)
    await raw.handshake()
    for frame in frames:
        raw.frame(json.dumps(frame).encode())
    error = await raw.refused()
    assert error["code"] == code and text in error["text"], error
    await room.still_chat()
    await room.leave()


@pytest_twisted.ensureDeferred
async def test_handshake_messages_from_member(server: Any, known_hosts: Path) -> None:
    room = await bystanders(server, known_hosts)
    for i, kind in enumerate(["hello", "share", "confirm"]):
        fields = {"hello": {"v": wire.PROTOCOL_VERSION, "room": "main", "name": "alice"},
                  "share": {"X": BAD_X},
                  "confirm": {"mac": MAC, "key": base64.b64encode(IDENTITY_KEY).decode()}}[kind]
        mallory = await member(server, f"mallory{i}")
        mallory.frame(json.dumps({"type": kind, **fields}).encode())
        error = await mallory.refused()
        assert error["code"] == "unexpected-message"
        assert error["text"] == f"a {kind!r} message is not allowed while member"
    await room.still_chat()
    assert [m.name for m in await room.alice.who()] == ["alice", "bob"]
    await room.leave()


@pytest.mark.parametrize("kind, answer", [("ping", "pong"), ("who", "members")])
@pytest_twisted.ensureDeferred
async def test_request_flood(server: Any, known_hosts: Path, kind: str, answer: str) -> None:
    room = await bystanders(server, known_hosts)
    mallory = await member(server, "mallory")
    burst = server.factory.limits.message_burst
    mallory.write(framed(wire.encode(kind)) * 500)
    error = await mallory.refused()
    assert error["code"] == "rate" and error["text"] == "disconnected for sending too fast"
    types = [m.type for m in mallory.frames]
    # At most the burst answered (plus any tokens earned meanwhile), one
    # notice, then the error; nothing like 500 answers.
    assert burst <= types.count(answer) <= burst + 5
    assert types.count("notice") == 1 and types[-1] == "error"
    await room.saw_leave("mallory")
    await room.still_chat()
    await room.leave()


@pytest_twisted.ensureDeferred
async def test_send_flood_only_burst_relayed(server: Any, known_hosts: Path) -> None:
    room = await bystanders(server, known_hosts)
    mallory = await member(server, "mallory")
    burst = server.factory.limits.message_burst
    mallory.write(b"".join(framed(wire.encode("send", **mallory.seal(f"spam {i}")))
                           for i in range(200)))
    error = await mallory.refused()
    assert error["code"] == "rate"
    notice = [m for m in mallory.frames if m.type == "notice"]
    assert len(notice) == 1 and notice[0]["code"] == "rate"
    await room.saw_leave("mallory")
    got = room.messages_from("mallory")
    assert burst <= len(got) <= burst + 5
    assert [m.text for m in got] == [f"spam {i}" for i in range(len(got))]
    await room.still_chat()
    await room.leave()


# --- 26-28: connection limits, trickling -------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_connections_per_address(serve: Start, known_hosts: Path) -> None:
    server = await serve(max_preauth_per_address=3)
    room = await bystanders(server, known_hosts)
    waiting = [await connect_raw(server) for _ in range(3)]
    for raw in waiting:
        await raw.handshake()
    extra = await connect_raw(server)
    error = await extra.refused()
    assert error["code"] == "limit" and error["text"] == "too many connections from your address"
    assert not any(raw.closed for raw in waiting)
    # One of them logs in, which frees its place.
    assert (await waiting[0].login("carol")).type == "welcome"
    assert (await (await connect_raw(server)).login("dave")).type == "welcome"
    await room.still_chat()
    await room.leave()


@pytest_twisted.ensureDeferred
async def test_connections_in_total(serve: Start, known_hosts: Path) -> None:
    server = await serve(max_preauth_total=2)
    room = await bystanders(server, known_hosts)
    waiting = [await connect_raw(server) for _ in range(2)]
    for raw in waiting:
        await raw.handshake()
    extra = await connect_raw(server)
    error = await extra.refused()
    assert error["code"] == "busy" and error["text"] == "the server is busy: try again later"
    await room.still_chat()
    await room.leave()


@pytest_twisted.ensureDeferred
async def test_trickled_frame_relayed(server: Any, known_hosts: Path) -> None:
    """
    A member's 8 KiB message written one byte per TLS record reaches the
    server as thousands of one-byte chunks, and is relayed intact.
    """
    room = await bystanders(server, known_hosts)
    mallory = await member(server, "mallory")
    data = framed(wire.encode("send", **mallory.seal("t" * 6000)))
    assert len(data) > 8000
    for i in range(len(data)):
        mallory.write(data[i : i + 1])
    got = await room.bob_events.wait_for(
        lambda e: isinstance(e, ChatMessage) and e.sender == "mallory", timeout=10)
    assert got.text == "t" * 6000
    await room.still_chat()
    await room.leave()
