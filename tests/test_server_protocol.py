"""
The server protocol on in-memory transports: the handshake, the room, and what
a misbehaving peer gets. Time is a task.Clock.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from twistchat import errors, wire
from twistchat.crypto.kdf import content_key, derive_secrets
from twistchat.crypto.seal import Opener, Sealer
from twistchat.crypto.spake2plus import Prover, context
from twistchat.server.limits import Limits
from twistchat.server.protocol import ChatServerProtocol, State
from twistchat.server.room import Rooms
from twistchat.server.service import ChatServerFactory
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from .conftest import IDENTITY_KEY, OTHER_PASSWORD, PASSWORD

BINDING = b"\x07" * 32


class Peer:
    """
    One in-memory connection to the server, seen from the client side.
    """

    def __init__(self, factory: ChatServerFactory, port: int) -> None:
        self.transport = StringTransport(
            peerAddress=IPv4Address("TCP", "127.0.0.1", port),
            hostAddress=IPv4Address("TCP", "127.0.0.1", 7777),
        )
        self.proto: ChatServerProtocol = factory.buildProtocol(None)
        self.proto.makeConnection(self.transport)
        self.offset = 0

    def send(self, kind: str, **fields: Any) -> None:
        self.raw(wire.encode(kind, **fields))

    def raw(self, frame: bytes) -> None:
        self.proto.dataReceived(struct.pack(">I", len(frame)) + frame)

    def received(self) -> list[wire.Message]:
        data = self.transport.value()[self.offset :]
        self.offset = len(self.transport.value())
        out = []
        while data:
            (length,) = struct.unpack(">I", data[:4])
            out.append(wire.decode(data[4 : 4 + length], wire.FROM_SERVER))
            data = data[4 + length :]
        return out

    def login(self, name: str, password: str = PASSWORD, room: str = "main") -> list[wire.Message]:
        self.send("hello", v=wire.PROTOCOL_VERSION, room=room, name=name)
        (params,) = self.received()
        assert params.type == "params"
        from twistchat.crypto.kdf import ScryptParams

        secrets = _derive(password, params["salt"], ScryptParams(params["n"], params["r"], params["p"]))
        prover = Prover(context(BINDING), name.encode(), room.encode(), secrets.w0, secrets.w1)
        self.send("share", X=prover.share())
        (verify,) = self.received()
        assert verify.type == "verify", verify
        confirm, _ = prover.finish(verify["Y"], verify["mac"])
        self.send("confirm", mac=confirm, key=IDENTITY_KEY)
        self.key = content_key(secrets.content_secret, room)
        return self.received()


_cache: dict[Any, Any] = {}


def _derive(password: str, salt: bytes, params: Any) -> Any:
    key = (password, salt, params)
    if key not in _cache:
        _cache[key] = derive_secrets(password, salt, params)
    return _cache[key]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def factory(verifier: Any, clock: Clock) -> ChatServerFactory:
    return ChatServerFactory(
        Rooms([verifier]), clock, Limits(), channel_binding=lambda transport: BINDING
    )


def closed(peer: Peer) -> bool:
    return peer.transport.disconnecting


def test_login_welcome_and_empty_room(factory: ChatServerFactory) -> None:
    alice = Peer(factory, 5001)
    (welcome,) = alice.login("alice")
    assert welcome.type == "welcome"
    assert welcome["name"] == "alice"
    assert welcome["members"] == []
    assert welcome["addr"] == "127.0.0.1:5001"
    assert alice.proto.state is State.MEMBER


def test_join_leave_notices_and_relay(factory: ChatServerFactory) -> None:
    alice, bob = Peer(factory, 5001), Peer(factory, 5002)
    alice.login("alice")
    (welcome,) = bob.login("bob")
    assert welcome["members"] == [{"name": "alice", "addr": "127.0.0.1:5001",
                                   "key": IDENTITY_KEY}]
    (joined,) = alice.received()
    assert (joined.type, joined["name"], joined["addr"]) == ("joined", "bob", "127.0.0.1:5002")

    sid, n, ct = Sealer(bob.key, "main", "bob").seal("hello alice")
    bob.send("send", sid=sid, n=n, ct=ct)
    (msg,) = alice.received()
    assert msg.type == "msg" and msg["from"] == "bob"
    assert Opener(alice.key, "main").open("bob", msg["sid"], msg["n"], msg["ct"]) == "hello alice"
    # No echo to the sender: only the acknowledgement, with the message's
    # place in the room's order.
    (ack,) = bob.received()
    assert (ack.type, ack["sid"], ack["n"], ack["seq"]) == ("ack", sid, n, 1)
    bob.send("send", **dict(zip(("sid", "n", "ct"), Sealer(bob.key, "main", "bob").seal("2"))))
    alice.received()
    (ack,) = bob.received()
    assert ack["seq"] == 2

    bob.proto.connectionLost(None)
    (left,) = alice.received()
    assert (left.type, left["name"]) == ("left", "bob")


def test_wrong_password_refused_and_nobody_told(factory: ChatServerFactory) -> None:
    """
    With a wrong password the client cannot verify the server's confirmation
    and must not answer it; the server counts the attempt when it gives up.
    """
    failures = []
    factory.login_failed = failures.append  # type: ignore[method-assign]
    alice, mallory = Peer(factory, 5001), Peer(factory, 5003)
    alice.login("alice")
    with pytest.raises(errors.ServerNotAuthenticated, match="wrong password"):
        mallory.login("mallory", password=OTHER_PASSWORD)
    assert mallory.proto.state is State.CONFIRM
    mallory.proto.connectionLost(None)
    assert failures == [mallory.proto]
    assert alice.received() == []


def test_bad_confirmation_mac_refused(factory: ChatServerFactory) -> None:
    peer = Peer(factory, 5003)
    peer.send("hello", v=wire.PROTOCOL_VERSION, room="main", name="mallory")
    peer.received()
    peer.send("share", X=Prover(context(BINDING), b"mallory", b"main", 5, 7).share())
    peer.received()
    peer.send("confirm", mac=b"\x00" * 32, key=IDENTITY_KEY)
    (error,) = peer.received()
    assert (error.type, error["code"], error["text"]) == ("error", "wrong-password", "wrong password")
    assert closed(peer)


def test_timeout_at_confirmation_counts_as_failed_attempt(
    factory: ChatServerFactory, clock: Clock
) -> None:
    failures = []
    factory.login_failed = failures.append  # type: ignore[method-assign]
    peer = Peer(factory, 5003)
    peer.send("hello", v=wire.PROTOCOL_VERSION, room="main", name="mallory")
    peer.received()
    peer.send("share", X=Prover(context(BINDING), b"mallory", b"main", 5, 7).share())
    clock.advance(factory.limits.handshake_timeout)
    assert failures == [peer.proto]
    peer.proto.connectionLost(None)
    assert failures == [peer.proto]


def test_unknown_room_looks_like_wrong_password(factory: ChatServerFactory) -> None:
    peer = Peer(factory, 5004)
    with pytest.raises(errors.ServerNotAuthenticated):
        peer.login("eve", room="secret-room")
    # the decoy salt is stable, as a real room's is
    again = Peer(factory, 5005)
    again.send("hello", v=wire.PROTOCOL_VERSION, room="secret-room", name="eve")
    peer2 = Peer(factory, 5006)
    peer2.send("hello", v=wire.PROTOCOL_VERSION, room="secret-room", name="eve")
    assert again.received()[0]["salt"] == peer2.received()[0]["salt"]


def test_name_taken_case_insensitively(factory: ChatServerFactory) -> None:
    Peer(factory, 5001).login("alice")
    (error,) = Peer(factory, 5002).login("Alice")
    assert error["code"] == "name-taken"


@pytest.mark.parametrize("name", ["", "a b", "-x", "x" * 33, "\u00e9t\u00e9", "a\x1b[2J"])
def test_invalid_names_refused(factory: ChatServerFactory, name: str) -> None:
    peer = Peer(factory, 5001)
    peer.send("hello", v=wire.PROTOCOL_VERSION, room="main", name=name)
    (error,) = peer.received()
    assert error["code"] in ("name-invalid", "bad-message")
    assert closed(peer)


def test_version_2_client_is_told_both_versions(factory: ChatServerFactory) -> None:
    # A client from before identity keys: one error naming both versions,
    # before anything it lacks (its confirm has no key) matters.
    peer = Peer(factory, 5001)
    peer.send("hello", v=2, room="main", name="alice")
    (error,) = peer.received()
    assert (error["code"], error["text"]) == (
        "version", "this server speaks protocol version 3, not 2"
    )
    assert closed(peer)


def test_version_mismatch(factory: ChatServerFactory) -> None:
    peer = Peer(factory, 5001)
    # A version-1 client (before the certificate was bound into the login).
    peer.send("hello", v=1, room="main", name="alice")
    (error,) = peer.received()
    assert error["code"] == "version"
    assert error["text"] == "this server speaks protocol version 3, not 1"


@pytest.mark.parametrize(
    "frame, code",
    [
        (b"not json", "bad-message"),
        (b"\xff\xfe", "bad-message"),
        (b"[]", "bad-message"),
        (b'{"type":"nope"}', "bad-message"),
        (b'{"type":"hello","v":1,"room":"main"}', "bad-message"),
        (b'{"type":"hello","v":1,"room":"main","name":"a","x":1}', "bad-message"),
        (b'{"type":"send","sid":"AAAAAAAAAAAAAAAAAAAAAA==","n":1,"ct":"AAAAAAAAAAAAAAAAAAAAAA=="}',
         "unexpected-message"),
        (b"", "bad-message"),
        (b"[" * 3000, "bad-message"),
    ],
)
def test_bad_frames_get_error_and_close(
    factory: ChatServerFactory, frame: bytes, code: str, no_logged_errors: list[Any]
) -> None:
    bystander = Peer(factory, 5000)
    bystander.login("alice")
    peer = Peer(factory, 5001)
    peer.raw(frame)
    (error,) = peer.received()
    assert error.type == "error" and error["code"] == code
    assert closed(peer)
    assert not closed(bystander)
    assert no_logged_errors == []


def test_oversize_length_prefix_refused_before_buffering(factory: ChatServerFactory) -> None:
    peer = Peer(factory, 5001)
    peer.proto.dataReceived(struct.pack(">I", 3_000_000_000) + b"x" * 100)
    (error,) = peer.received()
    assert error["code"] == "frame-too-long"
    assert closed(peer)
    assert not peer.proto.hasPartialFrame()


def test_member_frame_limit_is_larger_than_preauth(factory: ChatServerFactory) -> None:
    peer = Peer(factory, 5001)
    peer.login("alice")
    sid, n, ct = Sealer(peer.key, "main", "alice").seal("x" * 5000)
    frame = wire.encode("send", sid=sid, n=n, ct=ct)
    assert len(frame) > wire.MAX_FRAME_PREAUTH
    peer.raw(frame)
    assert not closed(peer)
    peer.proto.dataReceived(struct.pack(">I", wire.MAX_FRAME + 1))
    assert closed(peer)


def test_handshake_timeout_then_abort(factory: ChatServerFactory, clock: Clock) -> None:
    peer = Peer(factory, 5001)
    clock.advance(factory.limits.handshake_timeout - 1)
    assert not closed(peer)
    clock.advance(1)
    (error,) = peer.received()
    assert error["code"] == "timeout"
    assert closed(peer)
    # The peer never completes the TLS close: the connection is aborted.
    aborted = []
    peer.transport.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
    clock.advance(factory.limits.close_grace)
    assert aborted == [True]


def test_timers_cancelled_when_connection_lost(factory: ChatServerFactory, clock: Clock) -> None:
    peer = Peer(factory, 5001)
    peer.proto.connectionLost(None)
    assert clock.getDelayedCalls() == []
    assert factory.connections == set()


def test_who_and_ping(factory: ChatServerFactory) -> None:
    alice, bob = Peer(factory, 5001), Peer(factory, 5002)
    alice.login("alice")
    bob.login("bob")
    alice.received()
    alice.send("who")
    (members,) = alice.received()
    assert sorted(m["name"] for m in members["members"]) == ["alice", "bob"]
    alice.send("ping", id=7)
    (pong,) = alice.received()
    assert pong.type == "pong" and pong["id"] == 7


def test_relayed_frame_encoded_once(factory: ChatServerFactory) -> None:
    peers = [Peer(factory, 5000 + i) for i in range(4)]
    for i, peer in enumerate(peers):
        peer.login(f"m{i}")
    for peer in peers:
        peer.received()
    sid, n, ct = Sealer(peers[0].key, "main", "m0").seal("x")
    writes: list[bytes] = []
    for peer in peers[1:]:
        original = peer.transport.write
        peer.transport.write = lambda data, w=original: (writes.append(data), w(data))  # type: ignore
    peers[0].send("send", sid=sid, n=n, ct=ct)
    assert len(writes) == 3
    assert writes[0] is writes[1] is writes[2]


def test_shutdown_tells_everyone(factory: ChatServerFactory) -> None:
    alice = Peer(factory, 5001)
    alice.login("alice")
    pending = Peer(factory, 5002)
    factory.shutdown()
    for peer in (alice, pending):
        messages = peer.received()
        assert messages[-1]["code"] == "shutdown"
        assert closed(peer)


def test_closing_a_member_unregisters_its_producer(factory: ChatServerFactory) -> None:
    """
    TLS sends its close alert only once no producer is registered; a member
    closed by the server must not wait for the abort after the close grace.
    """
    alice = Peer(factory, 5001)
    alice.login("alice")
    assert alice.transport.producer is alice.proto
    alice.send("hello", v=wire.PROTOCOL_VERSION, room="main", name="alice")
    assert alice.received()[-1]["code"] == "unexpected-message"
    assert closed(alice) and alice.transport.producer is None


def test_closing_a_room_disconnects_members_and_logins_in_progress(
    factory: ChatServerFactory,
) -> None:
    alice = Peer(factory, 5001)
    alice.login("alice")
    bob = Peer(factory, 5002)
    bob.send("hello", v=wire.PROTOCOL_VERSION, room="main", name="bob")
    (params,) = bob.received()
    assert params.type == "params"
    room = factory.rooms.remove("main")
    assert room is not None
    factory.close_room(room)
    (error,) = alice.received()
    assert (error["code"], error["text"]) == ("room-closed", "the room was closed by the server operator")
    (error,) = bob.received()
    assert error["code"] == "wrong-password"
    assert closed(alice) and closed(bob)
    assert len(room) == 0
