"""
A token bucket, shared by the server (per-member message rate) and the client
(which keeps to the rate the server announces in C{welcome}). No I/O, no clock
of its own: callers pass the time in.
"""

from __future__ import annotations


class TokenBucket:
    """
    C{rate} tokens per second, at most C{burst} saved up.
    """

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


__all__ = ["TokenBucket"]
