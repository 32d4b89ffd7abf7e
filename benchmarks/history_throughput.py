"""
Relay throughput with history on and off, in one run.

Starts the installed ``twistd socketchat`` on 127.0.0.1 (a free port, a fresh
data directory per round), connects senders and receivers with the client
library, has every sender send a fixed number of messages at once, and waits
until every receiver has them all. Reports, per round: messages accepted per
second, deliveries per second, and the server's CPU time per 1000 messages
(from /proc/PID/stat, Linux only). Rounds alternate between history off and on.

    python benchmarks/history_throughput.py --senders 4 --receivers 4 --messages 500 --rounds 2

Everything is bounded: the message count is fixed and each round times out.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from twistchat.client import TrustOnFirstUse, connect
from twistchat.client.api import ChatListener, ChatMessage

PASSWORD = "benchmark room password 2718"
BIN = Path(sys.executable).parent


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of the whole line (1-based).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    def __init__(self, workdir: Path, history: int) -> None:
        (workdir / "pw").write_text(PASSWORD + "\n")
        self.log_path = workdir / "server.log"
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [str(BIN / "twistd"), "-n", "socketchat", "--port", "0",
             "--interface", "127.0.0.1", "--data-dir", str(workdir / "data"),
             "--password-file", str(workdir / "pw"), "--history", str(history),
             "--message-rate", "1000000", "--message-burst", "1000000",
             "--max-send-queue", str(64 << 20)],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = re.search(r"listening on port (\d+)", self.log_path.read_text())
            if found:
                self.port = int(found.group(1))
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("the server did not start:\n" + self.log_path.read_text())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


class Counter(ChatListener):
    def __init__(self, expected: int) -> None:
        self.count = 0
        self.expected = expected
        self.done: defer.Deferred[None] = defer.Deferred()

    def message_received(self, message: ChatMessage) -> None:
        if message.history:
            return
        self.count += 1
        if self.count == self.expected:
            self.done.callback(None)


async def one_round(reactor: Any, workdir: Path, history: int, args: Any) -> dict[str, float]:
    server = Server(workdir, history)
    sessions = []
    try:
        trust = TrustOnFirstUse(workdir / "known_hosts")
        expected = args.senders * args.messages
        counters = [Counter(expected) for _ in range(args.receivers)]
        for i, counter in enumerate(counters):
            sessions.append(await connect(reactor, "127.0.0.1", server.port, f"r{i}",
                                          PASSWORD, listener=counter, trust=trust))
        senders = []
        for i in range(args.senders):
            senders.append(await connect(reactor, "127.0.0.1", server.port, f"s{i}",
                                         PASSWORD, trust=trust))
        sessions += senders
        text = "x" * args.size
        cpu0, t0 = cpu_seconds(server.process.pid), time.perf_counter()
        done = defer.gatherResults([c.done for c in counters])
        for n in range(args.messages):
            for sender in senders:
                sender.send(text)
            if n % 10 == 9:
                # Let the reactor run, so receivers read while senders send.
                await task.deferLater(reactor, 0, lambda: None)
        done.addTimeout(args.timeout, reactor)
        await done
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds(server.process.pid) - cpu0
        return {
            "msgs_per_s": expected / elapsed,
            "deliveries_per_s": expected * args.receivers / elapsed,
            "cpu_ms_per_1000": 1000 * cpu / expected * 1000,
            "seconds": elapsed,
        }
    finally:
        for session in sessions:
            if session.connected:
                await session.leave()
        server.stop()


async def main(reactor: Any, args: Any) -> None:
    results: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory(prefix="twistchat-bench-") as tmp:
        for r in range(args.rounds):
            for label, history in (("off", 0), ("on", 50)):
                workdir = Path(tmp) / f"{label}-{r}"
                workdir.mkdir()
                result = await one_round(reactor, workdir, history, args)
                results[label].append(result)
                print(f"round {r + 1} history {label:3}: {result['msgs_per_s']:8.0f} msg/s, "
                      f"{result['deliveries_per_s']:8.0f} deliveries/s, server CPU "
                      f"{result['cpu_ms_per_1000']:6.0f} ms per 1000 msgs "
                      f"({result['seconds']:.2f} s)", flush=True)
    for label in ("off", "on"):
        rows = results[label]
        print(f"history {label:3} mean: "
              f"{sum(r['msgs_per_s'] for r in rows) / len(rows):8.0f} msg/s, server CPU "
              f"{sum(r['cpu_ms_per_1000'] for r in rows) / len(rows):6.0f} ms per 1000 msgs")


def parse() -> Any:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--receivers", type=int, default=4)
    parser.add_argument("--messages", type=int, default=500, help="per sender")
    parser.add_argument("--size", type=int, default=100, help="text bytes per message")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per round")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, arguments)))
