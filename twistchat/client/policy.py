"""
The client's policies: when and how fast to reconnect (L{Reconnect},
L{STABLE_AFTER}), which failures rule out trying again (L{is_final}), how a
failure reads in one line (L{describe}), and how fast to send (L{pacing}).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.application.internet import backoffPolicy
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.python.failure import Failure

from twistchat.errors import TwistchatError
from twistchat.ratelimit import TokenBucket

#: A rejoined connection that drops sooner than this many seconds is flapping:
#: it counts as a failed attempt, so a server that welcomes and then drops us
#: is retried ever more slowly (and L{Reconnect.max_attempts} still applies).
#: A connection that lasted longer ends the flapping: the next outage starts
#: again from the first delay.
STABLE_AFTER = 10.0

#: The client sends at this share of the server's rate, and keeps this many of
#: the burst's tokens spare: the server also counts the client's pongs, pings
#: and who requests, and messages sent evenly can arrive bunched together.
PACE = 0.9
SPARE = 2


def pacing(rate: float, burst: int, now: float) -> TokenBucket:
    """
    The bucket the client sends by, for the server's announced C{rate} and
    C{burst}: a little slower and shallower than the server's own.
    """
    return TokenBucket(rate * PACE, max(1, burst - SPARE), now)


def is_final(failure: Failure, reconnecting: bool = True) -> bool:
    """
    Whether a login failure or a session's end rules out trying again.

    Connection errors (refused, timed out, reset) may pass; a L{TwistchatError}
    is final if its class says so (C{final}: the password or the server's
    identity is wrong, the server broke the protocol, ...), or, at the first
    login (C{reconnecting} false), if its class is retried only while
    reconnecting (C{retry_only_when_reconnecting}: C{name-taken}, which our
    own previous connection may hold until its ping timeout, and C{penalty},
    which someone else behind the same address may have earned and which
    ends). The table is in docs/protocol.md, section 10.1.
    """
    error = failure.value
    if not isinstance(error, TwistchatError):
        return False
    if error.final:
        return True
    return error.retry_only_when_reconnecting and not reconnecting


def describe(failure: Failure) -> str:
    """
    A one-line reason for a failed connection or login.
    """
    error = failure.value
    if isinstance(error, TwistchatError):
        return error.message
    if isinstance(error, DNSLookupError):
        return "host not found"
    if isinstance(error, CancelledError):
        return "timed out"
    if isinstance(error, ConnectError):
        # osError is the errno (an int) when set: the OS's text is the message,
        # e.g. "Connection refused". Without one, the error's own description.
        text = error.args[0] if error.args and error.args[0] else error
        return str(text).strip().rstrip(".") or error.__class__.__name__
    return failure.getErrorMessage()


@dataclass(frozen=True)
class Reconnect:
    """
    How a session reconnects: exponential backoff with jitter (Twisted's
    L{backoffPolicy}): C{initial_delay} doubling (C{factor}) up to C{max_delay},
    plus C{jitter()} seconds, so that clients dropped together do not all come
    back at once.

    @ivar max_attempts: give up after this many failed attempts in a row (None:
        never give up); a rejoined connection that drops within
        L{STABLE_AFTER} seconds counts as a failed attempt.
    @ivar max_queued: messages kept while disconnected; more are refused.
    """

    initial_delay: float = 1.0
    max_delay: float = 60.0
    factor: float = 2.0
    max_attempts: int | None = None
    max_queued: int = 100
    jitter: Callable[[], float] = field(default=random.random, compare=False)

    def delay(self, attempt: int) -> float:
        """
        Seconds to wait before attempt number C{attempt} (1, 2, ...).
        """
        policy = backoffPolicy(self.initial_delay, self.max_delay, self.factor, self.jitter)
        return policy(attempt - 1)
