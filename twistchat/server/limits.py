"""
Server limits and the small mechanisms that enforce them: a token bucket for
message rates and a per-address record of connections and failed logins.

Defaults are chosen and explained in docs/operations.md; every one of them is a
``twistd socketchat`` option.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from twistchat.ratelimit import TokenBucket
from twistchat.wire import MAX_FRAME, MAX_FRAME_PREAUTH

#: TokenBucket lives in twistchat.ratelimit (the client uses it too); it stays
#: importable from here.
__all__ = ["AddressBook", "AddressRecord", "Limits", "TokenBucket", "source"]


def source(host: str) -> str:
    """
    The key per-address limits and penalties are kept under: the IPv4
    address, or the /64 of an IPv6 address (one subscriber is usually given a
    whole /64, so counting single IPv6 addresses would let a guesser multiply
    its attempts by 2**64). An IPv4-mapped IPv6 address counts as its IPv4.
    """
    try:
        address = ipaddress.ip_address(host)
        if isinstance(address, ipaddress.IPv6Address):
            if address.ipv4_mapped is not None:
                return str(address.ipv4_mapped)
            return str(ipaddress.IPv6Network((int(address), 64), strict=False))
        return str(address)
    except ValueError:
        return host  # not an IP address (e.g. a UNIX socket in tests)


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
    #: Seconds of silence from a member before the server pings it.
    idle_timeout: float = 120.0
    #: Seconds a pinged member has to answer before it is dropped.
    ping_timeout: float = 20.0
    #: Seconds between the close request and the hard abort of a connection whose
    #: peer does not answer the TLS close (Twisted issue 7926).
    close_grace: float = 5.0
    #: Sustained messages per second per member, and the burst allowed above it.
    message_rate: float = 10.0
    message_burst: int = 30
    #: Members per room.
    max_members: int = 1000
    #: Bytes queued to a member that does not read before it is disconnected.
    max_send_queue: int = 1 << 20
    #: Connections not yet logged in, per source address and in total.
    max_preauth_per_address: int = 10
    max_preauth_total: int = 256
    #: Password handshakes past the share (each one tests a guess) in progress at
    #: once per source address: bounds the guesses that slip in before a penalty.
    max_guesses_per_address: int = 3
    #: Failed logins per address allowed before penalties start (typos happen).
    free_failures: int = 3
    #: Penalty after the first counted failure; doubles with each further one.
    failure_penalty: float = 5.0
    #: Longest penalty; also how long an address's record is kept after it.
    max_failure_penalty: float = 600.0


@dataclass
class AddressRecord:
    """
    What the server remembers of one source address.
    """

    preauth: int = 0
    guessing: int = 0
    #: Connections whose share waits for a free slot (see C{guess_slot}).
    queued: deque[Any] = field(default_factory=deque)
    failures: int = 0
    blocked_until: float = 0.0
    last_failure: float = 0.0


@dataclass
class AddressBook:
    """
    Per-address connection counts and failed-login penalties.

    A record lives while the address has pending connections, or until six
    times C{max_failure_penalty} seconds after its last failure; L{expire} (called
    periodically) drops the rest, so memory stays bounded by recent activity.
    """

    limits: Limits
    records: dict[str, AddressRecord] = field(default_factory=dict)

    def get(self, host: str) -> AddressRecord:
        record = self.records.get(host)
        if record is None:
            record = self.records[host] = AddressRecord()
        return record

    def penalty_left(self, host: str, now: float) -> float:
        record = self.records.get(host)
        if record is None:
            return 0.0
        return max(0.0, record.blocked_until - now)

    def failed(self, host: str, now: float) -> float:
        """
        Count one failed login; return the penalty (seconds) now in force.
        """
        record = self.get(host)
        record.failures += 1
        record.last_failure = now
        over = record.failures - self.limits.free_failures
        if over <= 0:
            return 0.0
        penalty: float = min(
            self.limits.failure_penalty * 2 ** min(over - 1, 30),
            self.limits.max_failure_penalty,
        )
        record.blocked_until = now + penalty
        return penalty

    def expire(self, now: float) -> None:
        # Keep a record well past its last penalty, so that pausing for one
        # penalty period does not buy a fresh set of free failures.
        keep = 6 * self.limits.max_failure_penalty
        for host, record in list(self.records.items()):
            if (record.preauth == 0 and record.guessing == 0
                    and now - record.last_failure > keep and now >= record.blocked_until):
                del self.records[host]
