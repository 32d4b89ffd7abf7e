"""
The linear-time framing receiver: same frames and limits as Twisted's
Int32StringReceiver, and a trickled frame costs work proportional to its size.
Work is counted (bytes the base class copies into its buffer), never timed.
"""

from __future__ import annotations

import struct
from typing import Any, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.protocols.basic import Int32StringReceiver, IntNStringReceiver

from twistchat.framing import LinearInt32StringReceiver


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
    proto = make(cls)
    counter[0] = 0
    for byte in framed(b"x" * size):
        proto.dataReceived(bytes([byte]))
    assert proto.frames == [b"x" * size]
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
    assert proto._unprocessed == b"" and proto._needed == 0
    proto.dataReceived(b"z" * 1000)
    assert proto.frames == []


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
    from twisted.internet.testing import StringTransport

    from twistchat.framing import LinearInt32StringReceiver

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
