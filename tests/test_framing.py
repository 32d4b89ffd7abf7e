"""
The linear-time framing receiver: same frames and limits as Twisted's
Int32StringReceiver, and a trickled frame costs work proportional to its size.
Work is counted (bytes our framer copies; bytes Twisted's receiver copies into its
buffer), never timed.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twistchat.errors import FrameTooLong
from twistchat.framing import Int32Framer, LinearInt32StringReceiver
from twisted.internet.testing import StringTransport
from twisted.protocols.basic import Int32StringReceiver, IntNStringReceiver


class Collect:
    MAX_LENGTH = 1 << 20

    def connectionMade(self) -> None:  # pragma: no cover - set up in make()
        pass

    def stringReceived(self, frame: bytes) -> None:
        self.frames.append(frame)

    def lengthLimitExceeded(self, length: int) -> None:
        self.too_long.append(length)
        self._unprocessed = b""
        self.transport.loseConnection()


class Linear(Collect, LinearInt32StringReceiver):
    pass


class Stock(Collect, Int32StringReceiver):
    pass


def make(cls: type) -> Any:
    proto = cls()
    proto.frames = []
    proto.too_long = []
    proto.makeConnection(StringTransport())
    return proto


def framed(*bodies: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(b)) + b for b in bodies)


@pytest.fixture
def copied(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """
    Count the bytes Twisted's parser copies: each call joins the buffer it
    holds with the new chunk.
    """
    counter = [0]
    original = IntNStringReceiver.dataReceived

    def counting(self: Any, data: bytes) -> None:
        counter[0] += len(self._unprocessed) + len(data)
        original(self, data)

    monkeypatch.setattr(IntNStringReceiver, "dataReceived", counting)
    yield counter


def trickle(cls: type, size: int, counter: list[int]) -> int:
    """
    Feed one frame of C{size} bytes a byte at a time; return the bytes copied:
    counted by our framer for L{Linear}, by C{counter} for Twisted's receiver.
    """
    proto = make(cls)
    counter[0] = 0
    for byte in framed(b"x" * size):
        proto.dataReceived(bytes([byte]))
    assert proto.frames == [b"x" * size]
    if isinstance(proto, LinearInt32StringReceiver):
        assert counter[0] == 0  # none of Twisted's parsing runs
        return proto.framer.copied
    return counter[0]


def test_trickled_frame_costs_linear_work(copied: list[int]) -> None:
    small, large = trickle(Linear, 4096, copied), trickle(Linear, 32768, copied)
    # Each byte is copied a bounded number of times: 8 times the size, about
    # 8 times the work (quadratic would be 64 times).
    assert small <= 3 * (4096 + 4)
    assert large <= 3 * (32768 + 4)
    assert large / small < 9


def test_stock_receiver_is_quadratic(copied: list[int]) -> None:
    """
    The counter sees the problem being fixed: Twisted's receiver copies the
    whole buffer again for every byte.
    """
    small, large = trickle(Stock, 4096, copied), trickle(Stock, 32768, copied)
    assert small > 4096 * 4096 // 2
    assert large / small > 60


def test_oversize_prefix_refused_before_buffering() -> None:
    proto = make(Linear)
    proto.MAX_LENGTH = 100
    proto.dataReceived(struct.pack(">I", 101)[:2])
    proto.dataReceived(struct.pack(">I", 101)[2:] + b"y" * 50)
    assert proto.too_long == [101]
    assert not proto.hasPartialFrame() and proto.framer.buffered == 0
    proto.dataReceived(b"z" * 1000)
    assert proto.frames == []
    assert not proto.hasPartialFrame() and proto.framer.refused == 101


def test_limit_raised_between_frames_applies_to_next() -> None:
    proto = make(Linear)
    proto.MAX_LENGTH = 10
    data = framed(b"a" * 10, b"b" * 20)
    proto.dataReceived(data[:5])
    proto.MAX_LENGTH = 20
    proto.dataReceived(data[5:])
    assert proto.frames == [b"a" * 10, b"b" * 20] and proto.too_long == []


def test_zero_length_and_back_to_back_frames() -> None:
    proto = make(Linear)
    proto.dataReceived(framed(b"", b"one", b"") + framed(b"two")[:3])
    proto.dataReceived(framed(b"two")[3:] + framed(b"three")[:6])
    proto.dataReceived(framed(b"three")[6:])
    assert proto.frames == [b"", b"one", b"", b"two", b"three"]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(max_size=300), max_size=8),
    st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=40),
)
def test_same_frames_as_twisted_however_split(bodies: list[bytes], cuts: list[int]) -> None:
    data = framed(*bodies)
    protos = [make(Linear), make(Stock)]
    offset = 0
    i = 0
    while offset < len(data):
        step = cuts[i % len(cuts)]
        for proto in protos:
            proto.dataReceived(data[offset : offset + step])
        offset += step
        i += 1
    assert protos[0].frames == protos[1].frames == bodies


def test_nothing_after_an_oversize_header_is_delivered_again() -> None:
    """
    With Twisted's own lengthLimitExceeded (which only closes), frames already
    delivered in the same chunk are not delivered a second time by later data.
    """
    from twistchat.framing import LinearInt32StringReceiver
    from twisted.internet.testing import StringTransport

    class Receiver(LinearInt32StringReceiver):
        MAX_LENGTH = 10

        def __init__(self) -> None:
            self.frames: list[bytes] = []

        def stringReceived(self, frame: bytes) -> None:
            self.frames.append(frame)

    receiver = Receiver()
    receiver.makeConnection(StringTransport())
    receiver.dataReceived(b"\x00\x00\x00\x03abc" + b"\x00\x00\x00\x64")
    receiver.dataReceived(b"x")
    assert receiver.frames == [b"abc"]
    assert receiver.transport.disconnecting


# --- the framer on its own, and the receiver's public interface ---------------------


def test_framer_without_io() -> None:
    framer = Int32Framer()
    assert framer.next_frame(10) is None
    framer.feed(framed(b"abc", b"")[:5])
    assert framer.buffered == 5
    assert framer.next_frame(10) is None and framer.buffered == 5
    framer.feed(framed(b"abc", b"")[5:] + framed(b"de")[:2])
    assert framer.next_frame(10) == b"abc"
    assert framer.next_frame(10) == b""
    assert framer.next_frame(10) is None and framer.buffered == 2
    framer.discard()
    assert framer.buffered == 0
    framer.feed(framed(b"x" * 11))
    with pytest.raises(FrameTooLong):
        framer.next_frame(10)
    assert framer.refused == 11 and framer.buffered == 0
    framer.feed(framed(b"y"))
    assert framer.next_frame(100) is None and framer.buffered == 0


def test_many_frames_in_one_chunk_cost_linear_work() -> None:
    """
    Frames cut out of one large chunk cost their own size each, not the rest of
    the chunk (a slice of the remainder per frame would be quadratic).
    """
    proto = make(Linear)
    bodies = [b"m" * (i % 7) for i in range(20000)]
    data = framed(*bodies)
    proto.dataReceived(data)
    assert proto.frames == bodies
    assert proto.framer.copied <= len(data)


def test_partial_frame_and_discard() -> None:
    proto = make(Linear)
    assert not proto.hasPartialFrame()
    proto.dataReceived(framed(b"whole") + framed(b"partial")[:3])
    assert proto.frames == [b"whole"] and proto.hasPartialFrame()
    proto.dataReceived(framed(b"partial")[3:6])
    assert proto.hasPartialFrame()
    proto.discardBuffer()
    assert not proto.hasPartialFrame()
    proto.dataReceived(framed(b"next"))
    assert proto.frames == [b"whole", b"next"] and not proto.hasPartialFrame()


@pytest.mark.parametrize("base", [Linear, Stock])
def test_pausing_holds_frames_until_resumed(base: type) -> None:
    """
    As with Twisted's receiver: while C{paused}, frames stay buffered; a call
    with no data after clearing it delivers them.
    """

    class Pausing(base):  # type: ignore[valid-type,misc]
        def stringReceived(self, frame: bytes) -> None:
            super().stringReceived(frame)
            self.paused = frame == b"stop"

    proto = make(Pausing)
    proto.dataReceived(framed(b"one", b"stop", b"two", b"three"))
    assert proto.frames == [b"one", b"stop"]
    proto.dataReceived(framed(b"four"))
    assert proto.frames == [b"one", b"stop"]
    if base is Linear:
        assert proto.hasPartialFrame()
    proto.paused = False
    proto.dataReceived(b"")
    assert proto.frames == [b"one", b"stop", b"two", b"three", b"four"]
    if base is Linear:
        assert not proto.hasPartialFrame()


def test_send_string_writes_what_twisted_writes() -> None:
    ours, theirs = make(Linear), make(Stock)
    for proto in (ours, theirs):
        proto.sendString(b"")
        proto.sendString(b"hello")
        proto.sendString(b"z" * 70000)
    assert ours.transport.value() == theirs.transport.value() == framed(
        b"", b"hello", b"z" * 70000
    )


def test_limit_exceeded_in_the_middle_of_a_chunk() -> None:
    """
    Frames before an oversize header in the same chunk are delivered; the oversize
    one, and whatever follows it, are not; the default closes the connection.
    """

    class Plain(LinearInt32StringReceiver):
        MAX_LENGTH = 5

        def __init__(self) -> None:
            self.frames: list[bytes] = []

        def stringReceived(self, frame: bytes) -> None:
            self.frames.append(frame)

    proto = Plain()
    proto.makeConnection(StringTransport())
    proto.dataReceived(framed(b"ok", b"toolong", b"later"))
    assert proto.frames == [b"ok"] and proto.transport.disconnecting
    assert not proto.hasPartialFrame()


def test_framer_holding_nothing_keeps_no_buffer() -> None:
    """
    A framer that has handed out every frame it was fed keeps no buffer of its
    own (an idle member's connection holds one): a thousand of them, each
    after a frame and a half and then the rest, cost less than a deque's first
    block each, and later frames still come out whole.
    """
    import tracemalloc

    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        framers = [Int32Framer() for _ in range(1000)]
        data = framed(b"first", b"second")
        for framer in framers:
            framer.feed(data[:12])
            assert framer.next_frame(100) == b"first"
            assert framer.next_frame(100) is None and framer.buffered == 3
            framer.feed(data[12:])
            assert framer.next_frame(100) == b"second"
            assert framer.next_frame(100) is None and framer.buffered == 0
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert grown / len(framers) < 400
    for framer in framers[:10]:
        framer.feed(framed(b"again"))
        assert framer.next_frame(100) == b"again"
