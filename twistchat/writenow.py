"""
TCP writes that reach the socket at once when nothing waits before them.

Twisted's TCP transport never sends in C{write}: it appends the bytes to its
buffer and asks the reactor to watch the socket for writability, sends on the
reactor's next pass, then stops watching. With epoll that is two C{epoll_ctl}
calls, one more turn of the reactor and its dispatch for every write, on top
of the C{send} itself. A relay writes one small TLS record to each member per
message (or per batching window): at 200 messages/s into a room of 100 that
bookkeeping was about a quarter of the server's CPU (docs/performance.md,
"Writes at once"). Twisted knows the trade-off (its issue 5303, open: "write
out immediately ... if nagle is disabled"); twistchat turns Nagle off on
every connection already.

L{write_at_once} changes one connection's transport so that a C{write} made
while its buffer is empty goes to the socket straight away. Whatever the
kernel does not take (a full send buffer, an error) goes into Twisted's buffer
exactly as before, and from then on every write queues behind it until the
reactor has sent it all, so the order of the bytes never changes. Producers,
C{loseConnection} and error handling stay Twisted's: an error on the direct
C{send} is left for the reactor's own write to meet and report.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp

#: The subclass made for each TCP connection class seen (usually just one:
#: L{tcp.Server}).
_AT_ONCE: dict[type[tcp.Connection], type[tcp.Connection]] = {}


class _WritesAtOnce(tcp.Connection):
    """
    Mixed in before a TCP connection class: C{write} sends at once when
    nothing is buffered.
    """

    def write(self, data: bytes) -> None:
        if (
            type(data) is bytes
            and 0 < len(data) <= self.SEND_LIMIT
            and self.connected
            and not self._writeDisconnected
            and not self._tempDataLen
            and self.offset == len(self.dataBuffer)
        ):
            try:
                sent = self.socket.send(data)
            except OSError:
                # EAGAIN/ENOBUFS: the buffer takes it. A real error (reset,
                # broken pipe): the reactor's write meets it again and closes
                # the connection the usual way.
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        super().write(data)  # type: ignore[no-untyped-call]


def write_at_once(transport: Any) -> bool:
    """
    Make the TCP connection under C{transport} send each write at once when
    nothing waits in its buffer (see the module docstring).

    C{transport} may be the TCP transport itself or any number of wrapping
    protocols with a C{transport} attribute (TLS, PROXY protocol) above it.

    @return: whether it was done: a TCP connection sending with C{send()} was
        found (an in-memory test transport, a WebSocket or a UNIX socket is
        left alone).
    """
    raw = transport
    while not isinstance(raw, tcp.Connection):
        raw = getattr(raw, "transport", None)
        if raw is None:
            return False
    cls = type(raw)
    if cls.writeSomeData is not tcp.Connection.writeSomeData:
        # It sends otherwise than with send() (a UNIX socket passing file
        # descriptors): leave it to its own writeSomeData.
        return False
    if not issubclass(cls, _WritesAtOnce):
        at_once = _AT_ONCE.get(cls)
        if at_once is None:
            at_once = _AT_ONCE[cls] = type(cls.__name__, (_WritesAtOnce, cls), {
                "__module__": __name__,
                "__doc__": f"{cls.__qualname__} whose writes go out at once when nothing waits.",
            })
        # The same object, the same state; only write() changes. A class
        # swap rather than an instance attribute: no cycle, no bytes per
        # connection.
        raw.__class__ = at_once
    return True


__all__ = ["write_at_once"]
