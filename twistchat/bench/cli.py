"""
twistchat-bench: measure a twistchat relay against two baselines in one run,
and the hardening and history figures of the real twistd.

Every server runs in its own process on 127.0.0.1; server CPU and memory are
read from /proc (Linux). Relay figures are the median over --repeat
interleaved runs (server kinds alternate within each repeat); twistchat's are
also given as ratios to the baselines'.

Relay scenarios (the default; twistchat against bare and threaded):
  fanout     N members, S of them sending as fast as the room delivers:
             deliveries/s (messages x recipients), server CPU per delivery
  latency    a fixed offered rate into a room: p50/p99/max delivery latency,
             server CPU per delivery
  idle       C idle members (rooms of --room-size): server RSS per member,
             time to admit them all
  handshake  members logging in and out: logins/s, server CPU per login

Hardening scenarios (twistd alone; docs/operations.md, "Measured"):
  hardening-idle   --connections idle unauthenticated connections, --waves
                   times: server RSS, and closes at --handshake-timeout
  hardening-slow   one member never reads while ten chat for --chat-seconds
  hardening-ping   a member that answers no ping: time until it is dropped
  hardening-guess  one address guessing passwords for --guess-seconds

--targets: the settings of the speed targets in docs/performance.md, twistchat
and bare only (5 interleaved runs of 3 s; with --smoke, tiny), then one line per
target: twistchat's figure, bare's, their ratio, the limit, met or missed (by the
medians), and in how many of the runs it was within the limit.

With --servers redis1, redis2 or redis-workers2 (fanout, latency, handshake),
the bench starts its own redis-server (appendonly, appendfsync everysec) and
one or two twistd nodes on it, or one twistd with --workers 2; members are
split between the nodes (with --workers, the kernel splits the connections to
the one port); server CPU is the sum over every node, worker and redis-server.

history: --repeat rounds with history off, then on: msg/s and server CPU per
1000 messages (--history-senders, --history-receivers, --history-messages).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from twistchat.bench import hardening, history, relay
from twistchat.bench.config import (
    DEFAULT_SCENARIOS,
    HARDENING_SCENARIOS,
    MODES,
    REDIS_SERVERS,
    RELAY_SCENARIOS,
    SCENARIOS,
    SERVERS,
    TARGET_SERVERS,
    BenchConfig,
)
from twistchat.bench.measure import available, machine
from twistchat.bench.plot import plot
from twistchat.bench.processes import BenchError, raise_fd_limit
from twistchat.bench.relay import extra_options, py_spy
from twistchat.bench.results import add_ratios, table, targets


def _numbers(kind: type) -> Any:
    return lambda text: [kind(x) for x in text.split(",")]


def _variant(text: str) -> tuple[str, str]:
    name, sep, options = text.partition("=")
    if not sep or not name.isidentifier() or name in (*SERVERS, "before"):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give NAME=OPTIONS, NAME a new server name")
    return name, options


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twistchat-bench", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="small N and T: every relay scenario in under a minute")
    mode.add_argument("--smoke", dest="mode", action="store_const", const="smoke",
                      help="tiny N, T of half a second: checks that the tool works")
    parser.set_defaults(mode="full")
    parser.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS),
                        help="comma-separated subset of: " + ", ".join(SCENARIOS)
                        + " ('hardening' for all four hardening scenarios)")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help="comma-separated subset of: " + ", ".join(SERVERS + REDIS_SERVERS)
                        + " (redis1, redis2: one or two nodes on a Redis the bench starts;"
                        " redis-workers2: one node with --workers 2 on it)")
    parser.add_argument("--repeat", type=int, help="interleaved runs per setting (median)")
    parser.add_argument("--seconds", type=float, help="seconds per traffic run")
    parser.add_argument("--members", type=_numbers(int),
                        help="fanout room sizes, e.g. 10,100,1000")
    parser.add_argument("--rates", type=_numbers(float),
                        help="latency offered rates (messages/s)")
    parser.add_argument("--idle", type=_numbers(int), help="idle member counts")
    parser.add_argument("--room-size", type=int, default=100,
                        help="members per room in the idle scenario (default 100)")
    parser.add_argument("--size", type=int, default=200, help="message size in bytes")
    parser.add_argument("--window", type=int, default=32,
                        help="fanout: messages a sender may have undelivered")
    parser.add_argument("--probes", type=int, default=10,
                        help="latency: members per load process that time every message")
    parser.add_argument("--load-processes", type=int, default=1)
    parser.add_argument("--before", metavar="PYTHON",
                        help="also run the twistchat installed for this interpreter, as "
                        "server 'before' (to measure a change against the previous code)")
    parser.add_argument("--variant", dest="variants", action="append", default=[],
                        type=_variant, metavar="NAME=OPTIONS",
                        help="also run twistchat with these twistd options as server NAME, "
                        "interleaved with the others (repeatable), e.g. "
                        "'w0=--batch-window 0'")
    parser.add_argument("--targets", action="store_true",
                        help="measure the settings of the speed targets (fanout at 10 and "
                        "100, latency at 200 and 1000 msgs/s, idle, handshake; twistchat "
                        "and bare, in a few minutes) and print each against its target")
    parser.add_argument("--server-args", default="", metavar="OPTIONS",
                        help="more twistd socketchat options for the twistchat server, "
                        "e.g. '--history 0' (shown in server_options)")
    parser.add_argument("--plot", metavar="FILE.png")
    parser.add_argument("--profile", metavar="PREFIX",
                        help="run the twistchat server under py-spy; raw profiles go to "
                        "PREFIX-SCENARIO-N-I.txt (CPU figures then include some sampling cost)")
    parser.add_argument("--profiler", choices=("py-spy", "cprofile"), default="py-spy",
                        help="with --profile: py-spy (every thread, sampled), or cprofile "
                        "(twistd's own --profiler: the reactor thread only, every call, "
                        "much slower; pstats files PREFIX-SCENARIO-N-I.pstats)")
    hard = parser.add_argument_group("hardening scenarios (defaults: the full mode's)")
    hard.add_argument("--connections", type=int, help="hardening-idle: connections (1000)")
    hard.add_argument("--waves", type=int, help="hardening-idle: rounds of connections (2)")
    hard.add_argument("--handshake-timeout", type=float,
                      help="hardening-idle: the server's --handshake-timeout (20)")
    hard.add_argument("--chat-seconds", type=float, help="hardening-slow: seconds of chat (60)")
    hard.add_argument("--guess-seconds", type=float,
                      help="hardening-guess: seconds of guessing (60)")
    hist = parser.add_argument_group("history scenario (defaults: the full mode's)")
    hist.add_argument("--history-senders", type=int, help="members that send (4)")
    hist.add_argument("--history-receivers", type=int, help="members that only receive (4)")
    hist.add_argument("--history-messages", type=int, help="messages per sender (500)")
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    try:
        extra_options(args.server_args)
        for _, options in args.variants:
            extra_options(options)
    except (BenchError, ValueError) as e:
        parser.error(str(e))
    for name, allowed in (("scenarios", SCENARIOS), ("servers", SERVERS + REDIS_SERVERS)):
        bad = set(getattr(args, name)) - set(allowed)
        if bad:
            parser.error(f"unknown {name}: {', '.join(sorted(bad))}")
    if args.profile and args.profiler == "py-spy" and py_spy() is None:
        parser.error("--profile needs py-spy (pip install py-spy), or use --profiler cprofile")
    bounds = {"connections": (1, 5000), "waves": (1, 5), "chat_seconds": (0, 600),
              "guess_seconds": (0, 600), "handshake_timeout": (0, 600)}
    for name, (low, high) in bounds.items():
        value = getattr(args, name)
        if value is not None and not low <= value <= high:
            parser.error(f"keep --{name.replace('_', '-')} within {low}..{high}")


def parse(argv: list[str]) -> BenchConfig:
    """
    The settings of a run from its command line.

    @raise SystemExit: on a usage error (after printing it).
    """
    parser = _parser()
    args = parser.parse_args(argv)
    scenarios = []
    for name in args.scenarios.split(","):
        scenarios += list(HARDENING_SCENARIOS) if name == "hardening" else [name] if name else []
    args.scenarios = scenarios
    args.servers = [s for s in args.servers.split(",") if s]
    if args.targets:
        args.scenarios, args.servers = list(RELAY_SCENARIOS), list(TARGET_SERVERS)
        args.mode = {"full": "targets", "smoke": "targets-smoke"}.get(args.mode, args.mode)
    _check(parser, args)
    if args.before:
        args.servers.append("before")
    args.servers += [name for name, _ in args.variants]
    if args.repeat is None:
        args.repeat = MODES[args.mode]["repeat"]
    return BenchConfig(**vars(args))


def main(argv: list[str] | None = None) -> int:
    config = parse(sys.argv[1:] if argv is None else argv)
    if not available():
        print("twistchat-bench: needs Linux (/proc) to read server CPU and memory",
              file=sys.stderr)
        return 2
    raise_fd_limit()
    started = time.monotonic()
    info = machine()
    print(f"# twistchat-bench {config.mode}: {info['cores']} cores, {info['cpu']}, "
          f"Python {info['python']}", flush=True)
    results: list[dict[str, Any]] = []
    try:
        results += relay.run_all(config)
        results += hardening.run_all(config)
        results += history.run_all(config)
    except BenchError as e:
        print(f"twistchat-bench: {e}", file=sys.stderr)
        return 1
    add_ratios(results)
    print(table(results))
    if config.targets:
        print(targets(results))
    for r in results:
        r["mode"] = config.mode
        print(json.dumps(r, sort_keys=True))
    if config.plot:
        try:
            plot(results, config.plot)
        except BenchError as e:
            print(f"twistchat-bench: {e}", file=sys.stderr)
            return 1
    print(f"# done in {time.monotonic() - started:.0f} s", flush=True)
    return 0


def run() -> None:
    sys.exit(main())
