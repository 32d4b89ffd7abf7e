"""
The server connection's life cycle table (twistchat.server.lifecycle): every
(stage, input) pair is walked on an in-memory transport with a task.Clock,
every name in it is a method of the connection, and docs/protocol.md shows
the table as the code has it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twistchat import errors, wire
from twistchat.crypto.seal import Sealer
from twistchat.server import lifecycle, protocol
from twistchat.server.lifecycle import TABLE, Input, Row, Stage
from twistchat.server.limits import Limits
from twistchat.server.protocol import PHASES, ChatServerProtocol, Refusal, State
from twistchat.server.room import Rooms
from twistchat.server.service import ChatServerFactory
from twisted.internet.task import Clock

from .conftest import IDENTITY_KEY
from .test_server_limits import start_guess
from .test_server_protocol import BINDING, Peer

DOCS = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

LIMITS = Limits(max_guesses_per_address=1, free_failures=1000, idle_timeout=120,
                ping_timeout=20, max_send_queue=1000)


def reach(stage: Stage, verifier: Any, clock: Clock) -> tuple[ChatServerFactory, Peer]:
    """
    A fresh server and one connection brought to C{stage} by the inputs that
    lead there.
    """
    factory = ChatServerFactory(Rooms([verifier]), clock, LIMITS,
                                channel_binding=lambda transport: BINDING)
    if stage in (Stage.QUEUED, Stage.GRANTED):
        holder, _ = start_guess(factory, 9000)
        peer, replies = start_guess(factory, 9001)
        assert replies == []
        if stage is Stage.GRANTED:
            holder.proto.connectionLost(None)
    elif stage is Stage.CONFIRM:
        peer, replies = start_guess(factory, 9001)
        assert [m.type for m in replies] == ["verify"]
    else:
        peer = Peer(factory, 9001)
        if stage is Stage.SHARE:
            peer.send("hello", v=wire.PROTOCOL_VERSION, room="main", name="walker")
        elif stage in (Stage.CLOSING, Stage.CLOSED):
            peer.proto.fail(errors.Busy())
        elif stage is not Stage.HELLO:
            assert peer.login("walker")[0].type == "welcome"
            if stage in (Stage.MEMBER_PINGED, Stage.MEMBER_PINGED_PAUSED):
                clock.advance(LIMITS.idle_timeout)
            if stage in (Stage.MEMBER_PAUSED, Stage.MEMBER_PINGED_PAUSED):
                peer.proto.pauseProducing()
            if stage is Stage.LEAVING:
                peer.proto.fail(errors.Busy())
        if stage is Stage.CLOSED:
            peer.proto.connectionLost(None)
    assert peer.proto.stage is stage
    peer.received()  # what led here
    return factory, peer


def frame(kind: str, peer: Peer) -> Callable[[], None]:
    fields: dict[str, Any] = {
        "hello": {"v": wire.PROTOCOL_VERSION, "room": "main", "name": "walker"},
        "share": {"X": _share()},
        "confirm": {"mac": b"\x01" * 32, "key": IDENTITY_KEY},
    }.get(kind, {})
    if kind == "send":
        key = getattr(peer, "key", b"\x02" * 32)
        sid, n, ct = Sealer(key, "main", "walker").seal("hello")
        fields = {"sid": sid, "n": n, "ct": ct}
    return lambda: peer.send(kind, **fields)


def _share() -> bytes:
    from twistchat.crypto.spake2plus import G, encode_point

    return encode_point(G * 12345)


def trigger(event: Input, peer: Peer) -> Callable[[], None]:
    """
    How C{event} happens to a connection: its public trigger where it has one.
    """
    proto = peer.proto
    if event in lifecycle.FRAMES.values():
        return frame(event.name.lower(), peer)
    share = wire.decode(wire.encode("share", X=_share()), wire.FROM_CLIENT)
    direct: dict[Input, Callable[[], None]] = {
        Input.SHARE_WAITS: lambda: proto._input(Input.SHARE_WAITS, share),
        Input.WRONG_PASSWORD: lambda: proto._input(Input.WRONG_PASSWORD, "wrong password"),
        Input.TURNED_AWAY: lambda: proto._input(Input.TURNED_AWAY, Refusal(errors.RoomFull())),
        Input.OVER_RATE: lambda: proto._input(Input.OVER_RATE),
        Input.SLOW: lambda: proto._input(Input.SLOW, wire.prefixed(b"x" * 2000)),
        Input.SLOT: proto.slot_granted,
        Input.ANSWER: lambda: proto._input(Input.ANSWER),
        Input.TIMEOUT: proto.timeoutConnection,
        Input.TOO_LONG: lambda: proto.lengthLimitExceeded(10**6),
        Input.REFUSE: lambda: proto.fail(errors.Busy()),
        Input.ROOM_CLOSED: proto.room_closed,
        Input.SHUTDOWN: lambda: proto.shut_down(
            wire.encode("error", code="shutdown", text="server shutting down")),
        Input.DELIVER: lambda: proto.deliver(wire.prefixed(b'{"type":"x"}')),
        Input.PAUSE: proto.pauseProducing,
        Input.RESUME: proto.resumeProducing,
        Input.ABORT: lambda: proto._input(Input.ABORT),
        Input.LOST: lambda: proto.connectionLost(None),
    }
    return direct[event]


#: The error code an output sends.
CODES = {
    "refuse_late_handshake": "timeout",
    "refuse_too_long": "frame-too-long",
    "tell_wrong_password": "wrong-password",
    "tell_room_closed": "room-closed",
    "write_frame": "shutdown",
    "tell_ping_timeout": "timeout",
    "tell_slow": "slow",
}
#: The frame type other outputs send.
SENDS = {"start_handshake": "params", "answer_share": "verify", "send_welcome": "welcome",
         "send_members": "members", "pong": "pong", "send_ping": "ping",
         "over_rate": "notice", "relay": "ack"}


def effective(stage: Stage, event: Input) -> tuple[Row, str | None]:
    """
    The row that runs when C{event} reaches C{stage} as L{trigger} makes it,
    and the error code the peer then gets (if any).
    """
    row = TABLE[stage, event]
    if row.check in ("unexpected", "bug"):
        code = "unexpected-message" if row.check == "unexpected" else "internal"
        return TABLE[stage, Input.REFUSE], code
    if row.check == "check_confirm":  # the walker's MAC is wrong
        return TABLE[stage, Input.WRONG_PASSWORD], "wrong-password"
    codes = {"refuse": {Input.REFUSE: "busy", Input.TURNED_AWAY: "room-full"}.get(event)}
    codes.update(CODES)
    code = next((codes[o] for o in row.outputs if codes.get(o)), None)
    return row, code


PAIRS = [(stage, event) for stage in Stage for event in Input]


@pytest.mark.parametrize("stage,event", PAIRS, ids=[f"{s.name}-{e.name}" for s, e in PAIRS])
def test_every_row(verifier: Any, stage: Stage, event: Input,
                   no_logged_errors: list[dict[str, Any]]) -> None:
    clock = Clock()
    factory, peer = reach(stage, verifier, clock)
    row, code = effective(stage, event)
    before = peer.transport.value()
    trigger(event, peer)()
    assert peer.proto.stage is row.next
    if TABLE[stage, event].check == "bug":
        (failure,) = no_logged_errors
        assert "no transition from" in str(failure["log_failure"].value)
        no_logged_errors.clear()
    if event is Input.DELIVER and "write" in row.outputs:
        assert peer.transport.value().endswith(b'{"type":"x"}')
        return
    sent = peer.received()
    if code is not None:
        assert sent[-1].type == "error" and sent[-1]["code"] == code, sent
    elif any(o in SENDS for o in row.outputs):
        assert [SENDS[o] for o in row.outputs if o in SENDS] == [m.type for m in sent][-1:]
    else:
        assert peer.transport.value() == before
    if "close_transport" in row.outputs:
        assert peer.transport.disconnecting
    if row.next in (Stage.CLOSED, Stage.CLOSING, Stage.LEAVING):
        assert peer.proto.state is State.CLOSED
        assert peer.proto not in factory.rooms.get("main")  # type: ignore[operator]
    if row.next is Stage.CLOSED:
        assert peer.proto not in factory.connections


def test_every_name_in_the_table_is_a_method() -> None:
    names = {o for row in TABLE.values() for o in row.outputs}
    names |= {row.check for row in TABLE.values() if row.check}
    missing = [n for n in sorted(names) if not callable(getattr(ChatServerProtocol, f"_{n}", None))]
    assert missing == []


def test_the_table_is_total_and_closed_stages_are_closed() -> None:
    assert set(TABLE) == {(s, e) for s in Stage for e in Input}
    assert set(PHASES) == set(Stage)
    for (stage, _event), row in TABLE.items():
        if PHASES[stage] is State.CLOSED:
            assert PHASES[row.next] is State.CLOSED
        if row.check in ("unexpected", "bug"):
            assert row.next is stage and not row.outputs


def test_frame_inputs_are_the_messages_a_client_sends() -> None:
    assert set(lifecycle.FRAMES) == set(wire.FROM_CLIENT)


def test_docs_show_the_table_the_code_runs() -> None:
    text = DOCS.read_text(encoding="utf-8")
    found = re.search(
        r"<!-- BEGIN server table: generated; do not edit -->\n```\n(.*?)```\n"
        r"<!-- END server table -->",
        text, re.S,
    )
    assert found, "docs/protocol.md lost its server table markers"
    assert found.group(1) == lifecycle.describe(), (
        "docs/protocol.md section 4 differs from the code: paste the output of "
        "`python -m twistchat.server.lifecycle` between its markers"
    )


@pytest.mark.parametrize("stage", list(Stage), ids=[s.name for s in Stage])
def test_deliver_does_what_the_delivery_row_does(
        verifier: Any, stage: Stage, no_logged_errors: list[dict[str, Any]]) -> None:
    # deliver() skips the generic dispatch where the row only writes: in
    # every stage it must leave the connection exactly as the row would.
    data = wire.prefixed(b'{"type":"x"}')
    after = []
    for run in (lambda p: p.proto.deliver(data),
                lambda p: p.proto._input(Input.DELIVER, data)):
        _, peer = reach(stage, verifier, Clock())
        before = peer.transport.value()
        peer.proto._left = Stage.HELLO  # so that a missed update shows
        run(peer)
        after.append((peer.proto.stage, peer.proto._left, peer.proto.queued,
                      peer.transport.value()[len(before):]))
    assert after[0] == after[1]
    if TABLE[stage, Input.DELIVER].check == "bug":  # both runs logged it
        assert len(no_logged_errors) == 2
        no_logged_errors.clear()
    assert (stage in protocol._WRITE_ONLY) == (
        TABLE[stage, Input.DELIVER] == Row(stage, ("write",)))
