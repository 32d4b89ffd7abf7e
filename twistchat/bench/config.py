"""
The settings of one twistchat-bench run: what the command line asked for,
with each mode's defaults filled in (L{BenchConfig}), and the names of the
scenarios and servers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

#: Relay scenarios: twistchat measured against the baselines.
RELAY_SCENARIOS = ("fanout", "latency", "idle", "handshake")
#: Hardening scenarios: the real twistd alone (docs/operations.md, "Measured").
HARDENING_SCENARIOS = ("hardening-idle", "hardening-slow", "hardening-ping", "hardening-guess")
#: Storing every message: the real twistd with history off and on.
HISTORY_SCENARIOS = ("history",)
SCENARIOS = RELAY_SCENARIOS + HARDENING_SCENARIOS + HISTORY_SCENARIOS
#: What C{--scenarios} runs when it is not given.
DEFAULT_SCENARIOS = RELAY_SCENARIOS
SERVERS = ("twistchat", "bare", "threaded")
#: The servers a --targets run compares (the targets are ratios to bare).
TARGET_SERVERS = ("twistchat", "bare")
#: twistchat on a Redis the bench starts (not run unless asked for with
#: --servers): one node, two nodes with the members split between them, or
#: one node with --workers 2 (members on its one port, the kernel's split).
REDIS_SERVERS = ("redis1", "redis2", "redis-workers2")
#: How many worker processes redis-workers2 runs.
BENCH_WORKERS = 2
MAIN_ROOM = "main"

#: Settings per mode: member counts, seconds per run, repeats, and the sizes
#: of the hardening and history scenarios.
MODES: dict[str, dict[str, Any]] = {
    "full": dict(fanout=[10, 100, 1000], latency_members=100, rates=[200, 1000, 2000],
                 idle=[1000, 10000], seconds=5.0, handshake_seconds=5.0, repeat=5,
                 connections=1000, waves=2, handshake_timeout=20.0, chat_seconds=60.0,
                 guess_seconds=60.0, history_senders=4, history_receivers=4,
                 history_messages=500),
    "quick": dict(fanout=[100], latency_members=100, rates=[1000],
                  idle=[300], seconds=1.5, handshake_seconds=1.5, repeat=1,
                  connections=200, waves=2, handshake_timeout=3.0, chat_seconds=5.0,
                  guess_seconds=5.0, history_senders=4, history_receivers=4,
                  history_messages=200),
    "smoke": dict(fanout=[6], latency_members=6, rates=[50],
                  idle=[6], seconds=0.5, handshake_seconds=0.5, repeat=1,
                  connections=4, waves=2, handshake_timeout=1.0, chat_seconds=0.5,
                  guess_seconds=0.5, history_senders=2, history_receivers=2,
                  history_messages=10),
}
# --targets: exactly the settings of the targets, in a few minutes; with
# --smoke, the targets' settings that fit in seconds (the rest as full and smoke).
MODES["targets"] = {**MODES["full"], "fanout": [10, 100], "rates": [200, 1000],
                    "idle": [2000], "seconds": 3.0, "handshake_seconds": 3.0}
MODES["targets-smoke"] = {**MODES["smoke"], "fanout": [10], "rates": [200, 1000]}


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """
    One run of twistchat-bench, as the command line gave it; C{None} (or an
    empty list) where the mode's default applies.
    """

    mode: str = "full"
    scenarios: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_SCENARIOS))
    servers: list[str] = dataclasses.field(default_factory=lambda: list(SERVERS))
    repeat: int = 5
    seconds: float | None = None
    members: list[int] | None = None
    rates: list[float] | None = None
    idle: list[int] | None = None
    room_size: int = 100
    size: int = 200
    window: int = 32
    probes: int = 10
    load_processes: int = 1
    before: str | None = None
    #: Extra twistchat servers, as (name, twistd options): e.g. ("w0",
    #: "--batch-window 0") runs twistchat with those options as server "w0",
    #: interleaved with the others.
    variants: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    #: Print the issue's targets against the figures (L{results.targets}).
    targets: bool = False
    server_args: str = ""
    plot: str | None = None
    profile: str | None = None
    #: With C{profile}: C{py-spy}, or C{cprofile} (twistd's own profiler).
    profiler: str = "py-spy"
    connections: int | None = None
    waves: int | None = None
    handshake_timeout: float | None = None
    chat_seconds: float | None = None
    guess_seconds: float | None = None
    history_senders: int | None = None
    history_receivers: int | None = None
    history_messages: int | None = None

    def get(self, name: str) -> Any:
        """
        Setting C{name} as given, or else the mode's default for it.
        """
        given = getattr(self, name)
        return MODES[self.mode][name] if given is None else given
