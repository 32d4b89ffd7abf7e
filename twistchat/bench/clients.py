"""
The client side of the hardening-slow, hardening-ping and history scenarios of
twistchat-bench: members of the client library (L{twistchat.client.connect})
on one reactor, in a process of their own.

The controller runs C{python -m twistchat.bench.clients SCENARIO CONFIG} (the
server is already listening; CONFIG is JSON with its C{port}, C{pid} and
C{password}, and the scenario's sizes), and reads the one JSON line this
prints when the scenario is done: its figures, or C{{"error": ...}}. The
server's CPU time and memory are read from /proc here, so that they are
sampled while the members chat.

  slow     one member stops reading its socket while ten others chat for
           C{seconds}: messages sent and received, server RSS over time
  ping     a member that answers no ping: seconds until the server drops it
  history  C{senders} send C{messages} each at once; seconds until all
           C{receivers} have them all, and the server's CPU time meanwhile

Everything is bounded: by C{seconds}, by message counts, by C{timeout}, and
by a hard limit on the life of the process.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IPushProducer

from twistchat.bench.measure import cpu_seconds, rss_kib
from twistchat.client import ChatListener, ChatMessage, ChatSession, TrustOnFirstUse, connect

#: Seconds any scenario here may take at the most.
LIFETIME = 900.0


class _Count(ChatListener):
    """
    Count live messages; fire L{done} at the C{expected}th.
    """

    def __init__(self, expected: int = 0) -> None:
        self.count = 0
        self.expected = expected
        self.done: defer.Deferred[None] = defer.Deferred()

    def message_received(self, message: ChatMessage) -> None:
        if message.history:
            return
        self.count += 1
        if self.count == self.expected:
            self.done.callback(None)


class _Ended(ChatListener):
    def __init__(self) -> None:
        self.ended: defer.Deferred[Any] = defer.Deferred()

    def disconnected(self, reason: Any) -> None:
        self.ended.callback(reason)


async def _join(reactor: Any, config: dict[str, Any], name: str,
                listener: ChatListener | None = None) -> ChatSession:
    trust = TrustOnFirstUse(Path(config["workdir"]) / "known_hosts")
    return await connect(reactor, "127.0.0.1", config["port"], name, config["password"],
                         listener=listener, trust=trust)


async def _pause(reactor: Any, seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def slow(reactor: Any, config: dict[str, Any]) -> dict[str, Any]:
    pid, seconds, chatters_count = config["pid"], config["seconds"], config["chatters"]
    reader = await _join(reactor, config, "neverreads")
    # stops reading its socket (a TCP or TLS transport is a push producer)
    IPushProducer(reader.protocol.transport).pauseProducing()
    counter = _Count()
    chatters = [await _join(reactor, config, f"chatter{i}", counter)
                for i in range(chatters_count)]
    samples = [rss_kib(pid)]
    text = "x" * config["size"]
    sent = 0
    start = reactor.seconds()
    while reactor.seconds() - start < seconds:
        for chatter in chatters:
            chatter.send(text)  # paced by the client to the server's rate
            sent += 1
        await _pause(reactor, 0.1)
        samples.append(rss_kib(pid))
    await _pause(reactor, 2)
    samples.append(rss_kib(pid))
    await defer.gatherResults([c.leave() for c in chatters])
    return {"sent": sent, "received": counter.count,
            "rss_kib_start": samples[0], "rss_kib_max": max(samples), "rss_kib_end": samples[-1]}


async def ping(reactor: Any, config: dict[str, Any]) -> dict[str, Any]:
    from twistchat.client.protocol import State
    from twistchat.client.table import Row

    listener = _Ended()
    session = await _join(reactor, config, "mute", listener)
    # From here on this member answers no ping (and sends nothing).
    proto = session.protocol
    proto.table = proto.table.replace(Row(State.MEMBER, "ping", None, (), "answers nothing"))
    start = reactor.seconds()
    reason = await listener.ended.addTimeout(config["timeout"], reactor)
    return {"dropped_after_s": round(reactor.seconds() - start, 2), "reason": str(reason)}


async def history(reactor: Any, config: dict[str, Any]) -> dict[str, Any]:
    sessions: list[ChatSession] = []
    try:
        expected = config["senders"] * config["messages"]
        counters = [_Count(expected) for _ in range(config["receivers"])]
        for i, counter in enumerate(counters):
            sessions.append(await _join(reactor, config, f"r{i}", counter))
        senders = [await _join(reactor, config, f"s{i}") for i in range(config["senders"])]
        sessions += senders
        text = "x" * config["size"]
        cpu0, t0 = cpu_seconds(config["pid"]), time.perf_counter()
        done = defer.gatherResults([c.done for c in counters])
        for n in range(config["messages"]):
            for sender in senders:
                sender.send(text)
            if n % 10 == 9:
                # Let the reactor run, so receivers read while senders send.
                await _pause(reactor, 0)
        done.addTimeout(config["timeout"], reactor)
        await done
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds(config["pid"]) - cpu0
        return {
            "msgs_per_s": expected / elapsed,
            "deliveries_per_s": expected * config["receivers"] / elapsed,
            "cpu_ms_per_1000": 1000 * cpu / expected * 1000,
            "seconds": elapsed,
        }
    finally:
        for session in sessions:
            if session.connected:
                await session.leave()


SCENARIOS: dict[str, Callable[[Any, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "slow": slow, "ping": ping, "history": history,
}


async def _main(reactor: Any, name: str, config: dict[str, Any]) -> None:
    try:
        result = await SCENARIOS[name](reactor, config)
    except Exception as e:  # reported to the controller, which stops the run
        result = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(result), flush=True)


def main() -> None:
    name, config = sys.argv[1], json.loads(sys.argv[2])

    def run(reactor: Any) -> defer.Deferred[None]:
        d = defer.ensureDeferred(_main(reactor, name, config))
        return d.addTimeout(LIFETIME, reactor)

    task.react(run)


if __name__ == "__main__":
    main()
