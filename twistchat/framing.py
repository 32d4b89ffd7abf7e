"""
Int32 length-prefixed framing that costs linear time however a frame is split.

Twisted's L{Int32StringReceiver} joins its whole buffer with each new chunk, so a
frame of N bytes arriving one byte at a time copies about N*N/2 bytes: a
256 KiB frame trickled that way blocks the reactor for seconds. This receiver
keeps Twisted's parsing, limits and callbacks, and only changes how the rest of
an incomplete frame is gathered: once a frame's length prefix has arrived (and
passed the C{MAX_LENGTH} check), further chunks are appended to a list until
the announced length is there, and joined once.
"""

from __future__ import annotations

from struct import unpack

from typing import Any

from twisted.internet.interfaces import ITCPTransport
from twisted.protocols.basic import Int32StringReceiver


def no_delay(transport: Any) -> None:
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


class LinearInt32StringReceiver(Int32StringReceiver):
    """
    An L{Int32StringReceiver} whose incomplete frames are gathered in linear time.

    C{MAX_LENGTH}, C{lengthLimitExceeded}, C{stringReceived} and pausing behave
    as in Twisted: a frame announcing more than C{MAX_LENGTH} bytes is refused
    when its prefix arrives, before any of it is buffered.
    """

    #: Chunks of the incomplete frame being gathered (its prefix first).
    _chunks: list[bytes]
    #: Bytes in C{_chunks}; and the prefix plus body size the frame announced
    #: (0 while no frame is being gathered).
    _gathered = 0
    _needed = 0

    def dataReceived(self, data: bytes) -> None:
        if self._needed:
            self._chunks.append(data)
            self._gathered += len(data)
            if self._gathered < self._needed:
                return
            data = b"".join(self._chunks)
            self._chunks = []
            self._gathered = self._needed = 0
        super().dataReceived(data)
        rest = self._unprocessed
        if self._compatibilityOffset:
            # Twisted stopped at an oversize header after delivering frames,
            # and kept the whole buffer (those frames included): nothing after
            # an oversize header is read.
            self._unprocessed = b""
            return
        if self.paused or len(rest) < self.prefixLength:
            return
        (length,) = unpack(self.structFormat, rest[: self.prefixLength])
        if length > self.MAX_LENGTH:
            # lengthLimitExceeded has already been called for this prefix.
            self._unprocessed = b""
            return
        # The rest of this frame is still to come: gather it without re-joining.
        self._chunks = [rest]
        self._gathered = len(rest)
        self._needed = self.prefixLength + length
        self._unprocessed = b""


__all__ = ["LinearInt32StringReceiver", "no_delay"]
