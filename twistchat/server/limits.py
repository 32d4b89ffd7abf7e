"""
Server limits, each with a default chosen in docs/operations.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from twistchat.wire import MAX_FRAME, MAX_FRAME_PREAUTH


@dataclass(frozen=True)
class Limits:
    """
    Every limit the server enforces; one instance is shared by all connections.
    """

    #: Largest frame accepted before login (bytes).
    max_frame_preauth: int = MAX_FRAME_PREAUTH
    #: Largest frame accepted from a member (bytes).
    max_frame: int = MAX_FRAME
    #: Seconds a connection has to complete TLS and the password handshake.
    handshake_timeout: float = 30.0
    #: Seconds between the close request and the hard abort of a connection whose
    #: peer does not answer the TLS close (Twisted issue 7926).
    close_grace: float = 5.0

