"""
Int32 length-prefixed framing that costs linear time however a frame is split.

Each frame on the wire is a 4-byte big-endian length, then that many bytes (as with
Twisted's L{twisted.protocols.basic.Int32StringReceiver}). Two parts:

  - L{Int32Framer}, a parser free of I/O: feed it bytes as they arrive, ask it for
    the next complete frame. It keeps the chunks it was fed and copies each byte a
    bounded number of times, so a frame of N bytes trickled one byte at a time costs
    O(N), not the O(N*N) of re-joining a buffer with every chunk (which is what
    Twisted's receiver does: a 256 KiB frame trickled that way blocks the reactor for
    seconds). A frame whose prefix announces more than the limit is refused when the
    prefix arrives, before any of it is kept, and the framer then reads nothing more.
  - L{LinearInt32StringReceiver}, the L{Protocol} that wraps a framer with
    Twisted's receiver's interface: C{MAX_LENGTH}, C{stringReceived},
    C{lengthLimitExceeded}, C{sendString}, C{paused}; and public questions about
    its buffer (L{LinearInt32StringReceiver.hasPartialFrame},
    L{LinearInt32StringReceiver.discardBuffer}).
"""

from __future__ import annotations

from collections import deque
from struct import Struct
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import IAddress, IPushProducer, ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.protocols.basic import StringTooLongError

from twistchat.errors import FrameTooLong

_PREFIX = Struct(">I")
#: What every framer holding no bytes has as its chunks: never appended to
#: (L{Int32Framer.feed} makes a deque of its own first).
_NOTHING: deque[bytes] = deque()


def no_delay(transport: object) -> None:
    """
    Turn Nagle's algorithm off for C{transport}'s TCP connection, if it has one.

    Chat frames are small and each one matters on its own: with Nagle on, a
    frame written while an earlier one is still unacknowledged waits for the
    peer's delayed ACK (about 40 ms on Linux). A TLS transport wrapping TCP
    provides L{ITCPTransport} too and passes the call down; an in-memory test
    transport does not, and is left alone.
    """
    if ITCPTransport.providedBy(transport):
        transport.setTcpNoDelay(True)


class Int32Framer:
    """
    Splits a byte stream into Int32 length-prefixed frames; no I/O.

    L{feed} it what arrives, then call L{next_frame} until it returns C{None}.

    @ivar copied: bytes this framer has copied so far (joining chunks, cutting frames
        out of them). It stays within a small multiple of the bytes fed, however they
        were split; tests count it instead of timing.
    @ivar refused: the length announced by the frame that made this framer stop
        (see L{next_frame}), or C{None} while it reads.
    """

    #: Bytes of a frame's length prefix.
    PREFIX_BYTES = _PREFIX.size

    def __init__(self) -> None:
        #: The chunks held; L{_NOTHING} (shared) while none are, so that an idle
        #: connection does not keep a deque's first block (about 600 bytes).
        self._chunks: deque[bytes] = _NOTHING
        #: Bytes of C{_chunks[0]} already returned.
        self._offset = 0
        #: Bytes held and not yet returned.
        self._held = 0
        #: The body length the current frame's prefix announced, once it has been read.
        self._length: int | None = None
        self.copied = 0
        self.refused: int | None = None

    def __repr__(self) -> str:
        return f"<Int32Framer buffered={self._held} refused={self.refused}>"

    @property
    def buffered(self) -> int:
        """
        Bytes received and not yet returned as frames, the prefix of a frame being
        gathered included.
        """
        return self._held + (self.PREFIX_BYTES if self._length is not None else 0)

    def feed(self, data: bytes) -> None:
        """
        Keep C{data} (without copying it) until L{next_frame} returns it. Ignored once
        the framer has refused a frame.
        """
        if data and self.refused is None:
            if self._chunks is _NOTHING:
                self._chunks = deque()
            self._chunks.append(data)
            self._held += len(data)

    def discard(self) -> None:
        """
        Forget every byte held; the next byte fed starts a new frame.
        """
        self._chunks = _NOTHING
        self._offset = self._held = 0
        self._length = None

    def next_frame(self, max_length: int) -> bytes | None:
        """
        The next complete frame's body, or C{None} when it has not all arrived yet
        (or the framer has refused a frame).

        C{max_length} applies to the frame whose prefix is read by this call, so a
        limit changed between frames applies from the next one.

        @raise FrameTooLong: the next frame's prefix announces more than
            C{max_length} bytes. The framer forgets what it holds, records the length
            in L{refused}, and from then on ignores what it is fed.
        """
        if self._length is None:
            if self.refused is not None or self._held < self.PREFIX_BYTES:
                if not self._held:
                    self._chunks = _NOTHING
                return None
            length = self._read_prefix()
            if length > max_length:
                self.discard()
                self.refused = length
                raise FrameTooLong(
                    f"a frame of {length} bytes is over the limit of {max_length} bytes"
                )
            self._length = length
        if self._held < self._length:
            return None
        frame = self._take(self._length)
        self._length = None
        return frame

    def _read_prefix(self) -> int:
        """
        Remove a length prefix from the held bytes (at least that many) and return
        its value; read in place when it lies within one chunk.
        """
        first = self._chunks[0]
        start = self._offset
        end = start + self.PREFIX_BYTES
        if len(first) < end:
            value: int = _PREFIX.unpack(self._take(self.PREFIX_BYTES))[0]
            return value
        value = _PREFIX.unpack_from(first, start)[0]
        self._held -= self.PREFIX_BYTES
        if end == len(first):
            self._chunks.popleft()
            self._offset = 0
        else:
            self._offset = end
        return value

    def _take(self, size: int) -> bytes:
        """
        Remove and return the first C{size} held bytes (C{size <= self._held}),
        copying each of them once at most.
        """
        if not size:
            return b""
        self._held -= size
        first = self._chunks[0]
        start = self._offset
        if start == 0 and len(first) == size:
            self._chunks.popleft()
            return first
        if len(first) - start >= size:
            end = start + size
            if end == len(first):
                self._chunks.popleft()
                self._offset = 0
            else:
                self._offset = end
            self.copied += size
            return first[start:end]
        pieces: list[Any] = [memoryview(first)[start:]]
        self._chunks.popleft()
        self._offset = 0
        wanted = size - (len(first) - start)
        while wanted:
            chunk = self._chunks[0]
            if len(chunk) <= wanted:
                pieces.append(chunk)
                self._chunks.popleft()
                wanted -= len(chunk)
            else:
                pieces.append(memoryview(chunk)[:wanted])
                self._offset = wanted
                wanted = 0
        self.copied += size
        return b"".join(pieces)


class FramedTransport(TypingProtocol):
    """
    What the framed protocols use of their transport: TCP's (L{ITCPTransport}),
    which TLS over TCP passes on, and a consumer's, for backpressure. Only a type.
    """

    def write(self, data: bytes) -> None: ...

    def loseConnection(self) -> None: ...

    def abortConnection(self) -> None: ...

    def getPeer(self) -> IAddress: ...

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None: ...

    def unregisterProducer(self) -> None: ...


class LinearInt32StringReceiver(Protocol):
    """
    A protocol of Int32 length-prefixed frames, gathered in linear time by an
    L{Int32Framer}, with the interface of Twisted's C{Int32StringReceiver}.

    Frames are delivered to L{stringReceived} one at a time. A frame announcing more
    than C{MAX_LENGTH} bytes (read when its prefix arrives, so a subclass may change
    the limit between frames) is refused before any of it is kept: the buffer is
    dropped, L{lengthLimitExceeded} is called, and nothing received afterwards is
    read. While C{paused} is true no frame is delivered; after clearing it, call
    C{dataReceived(b"")} to deliver the frames held meanwhile.
    """

    #: Largest frame body accepted, in bytes (Twisted's default).
    MAX_LENGTH = 99999
    #: Set to stop delivering frames (checked between frames).
    paused = False

    # Narrower than Protocol's ITransport | None, which mypy reports: set by
    # makeConnection before any frame is read or sent, to a FramedTransport.
    transport: FramedTransport  # type: ignore[assignment]
    _framer: Int32Framer | None = None

    @property
    def framer(self) -> Int32Framer:
        """
        This connection's L{Int32Framer} (made on first use).
        """
        if self._framer is None:
            self._framer = Int32Framer()
        return self._framer

    def dataReceived(self, data: bytes) -> None:
        framer = self.framer
        framer.feed(data)
        while not self.paused:
            try:
                frame = framer.next_frame(self.MAX_LENGTH)
            except FrameTooLong:
                assert framer.refused is not None
                self.lengthLimitExceeded(framer.refused)
                return
            if frame is None:
                return
            self.stringReceived(frame)

    def stringReceived(self, string: bytes) -> None:
        """
        Override this: one complete frame's body (the prefix removed) arrived.
        """
        raise NotImplementedError

    def lengthLimitExceeded(self, length: int) -> None:
        """
        A frame announced C{length} bytes, more than C{MAX_LENGTH}. The buffer has
        been dropped and nothing more will be read; by default the connection is
        closed. Override this to say why first.
        """
        self.transport.loseConnection()

    def sendString(self, string: bytes) -> None:
        """
        Write C{string} as one frame: its 4-byte big-endian length, then it.

        @raise StringTooLongError: C{string} is 2^32 bytes or longer.
        """
        if len(string) >= 1 << (8 * Int32Framer.PREFIX_BYTES):
            raise StringTooLongError(
                f"a frame of {len(string)} bytes cannot be sent: the limit is 2**32 - 1"
            )
        self.transport.write(_PREFIX.pack(len(string)) + string)

    def hasPartialFrame(self) -> bool:
        """
        Whether bytes have arrived that were not delivered as frames: the peer is in
        the middle of a frame (or, while C{paused}, whole frames are held).
        """
        return self._framer is not None and self._framer.buffered > 0

    def discardBuffer(self) -> None:
        """
        Forget the bytes received and not yet delivered; the next bytes received
        start a new frame.
        """
        if self._framer is not None:
            self._framer.discard()


__all__ = ["Int32Framer", "LinearInt32StringReceiver", "no_delay"]
