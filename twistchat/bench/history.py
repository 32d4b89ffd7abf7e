"""
The history scenario of twistchat-bench: what storing every message costs the
relay.

Each round starts the real C{twistd -n socketchat} on 127.0.0.1 (a fresh data
directory, limits raised out of the way) with C{--history 0}, then again with
C{--history 50}; its members (L{twistchat.bench.clients}) connect
C{--history-senders} senders and C{--history-receivers} receivers, every
sender sends C{--history-messages} messages of C{--size} characters at once,
and the round ends when every receiver has them all. Per round: messages
accepted per second, deliveries per second, and the server's CPU time per
1000 messages. Rounds (C{--repeat}) alternate between history off and on; the
result of each is the median.

Everything is bounded: the message count is fixed and each round times out.
"""

from __future__ import annotations

import secrets
import tempfile
from pathlib import Path
from typing import Any

from twistchat.bench.config import BenchConfig
from twistchat.bench.processes import STEP_TIMEOUT, run_clients, start_twistd
from twistchat.bench.results import median_result

#: The C{--history} of each half of a round.
HISTORY = {"off": 0, "on": 50}


def one_round(config: BenchConfig, workdir: Path, history: int) -> dict[str, Any]:
    """
    One round with C{--history history}.

    @raise BenchError: when the server or the members fail.
    """
    password = secrets.token_urlsafe(18)
    server = start_twistd(workdir, password, "--history", str(history),
                          "--message-rate", "1000000", "--message-burst", "1000000",
                          "--max-send-queue", str(64 << 20))
    try:
        return run_clients("history", {
            "port": server.port, "pid": server.pid, "password": password,
            "workdir": str(workdir), "senders": config.get("history_senders"),
            "receivers": config.get("history_receivers"),
            "messages": config.get("history_messages"), "size": config.size,
            "timeout": STEP_TIMEOUT}, timeout=STEP_TIMEOUT + 60)
    finally:
        server.stop()


def run_all(config: BenchConfig) -> list[dict[str, Any]]:
    """
    C{config.repeat} rounds, each with history off then on.

    @return: one result per half, its figures the medians of the rounds.
    @raise BenchError: when a round fails.
    """
    if "history" not in config.scenarios:
        return []
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in HISTORY}
    with tempfile.TemporaryDirectory(prefix="twistchat-bench-") as tmp:
        for r in range(config.repeat):
            for label, history in HISTORY.items():
                workdir = Path(tmp) / f"{label}-{r}"
                workdir.mkdir()
                got = one_round(config, workdir, history)
                print(f"round {r + 1} history {label:3}: {got['msgs_per_s']:8.0f} msg/s, "
                      f"{got['deliveries_per_s']:8.0f} deliveries/s, server CPU "
                      f"{got['cpu_ms_per_1000']:6.0f} ms per 1000 msgs "
                      f"({got['seconds']:.2f} s)", flush=True)
                runs[label].append({
                    "scenario": "history", "server": "twistchat", "history": history,
                    "members": config.get("history_senders") + config.get("history_receivers"),
                    "senders": config.get("history_senders"), "size": config.size,
                    "messages": config.get("history_messages"),
                    **{k: round(v, 3) for k, v in got.items()}})
    return [median_result(runs[label]) for label in HISTORY]
