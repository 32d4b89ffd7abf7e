"""
The relay scenarios of twistchat-bench (fanout, latency, idle, handshake, as
C{twistchat-bench --help} describes them): twistchat against the baselines.

Each run starts the server under test in its own process (the real C{twistd
-n socketchat}, or a baseline from L{twistchat.bench.baselines}) and drives it
from one or more load processes (L{twistchat.bench.load}), all on 127.0.0.1:
members log in, then send, time or churn for the setting's seconds while the
server's CPU time is read. Every figure is the median over C{--repeat}
interleaved runs (server kinds alternate within each repeat).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from twistchat.bench.config import (
    BENCH_WORKERS,
    MAIN_ROOM,
    MODES,
    REDIS_SERVERS,
    BenchConfig,
)
from twistchat.bench.load import COUNTER_BASE
from twistchat.bench.measure import children, cpu_seconds, rss_bytes
from twistchat.bench.processes import (
    LISTENING,
    START_TIMEOUT,
    STEP_TIMEOUT,
    BenchError,
    LoadProcess,
    RedisProcess,
    ServerProcess,
    socketchat_command,
)
from twistchat.bench.results import median_result
from twistchat.config import PASSWORD_ENV

#: The servers that are not twistchat.
BASELINES = ("bare", "threaded")
#: The thread-per-client baseline is not run above this many idle members
#: (one thread each).
THREADED_IDLE_MAX = 1000
#: Idle runs admit thousands of members each: at most this many repeats.
IDLE_REPEAT_MAX = 3


@dataclasses.dataclass
class Setting:
    """
    One setting of a relay scenario (run on every server, C{--repeat} times).
    """

    scenario: str
    members: int
    senders: int = 0
    rate: float = 0.0
    seconds: float = 0.0
    room_size: int = 0
    concurrency: int = 8


def settings(config: BenchConfig) -> Iterator[Setting]:
    """
    The settings of the relay scenarios C{config} asks for, in the order run.
    """
    plan = MODES[config.mode]
    scenarios = config.scenarios
    if "idle" in scenarios:
        for count in config.idle or plan["idle"]:
            yield Setting("idle", count, room_size=min(config.room_size, count))
    if "fanout" in scenarios:
        for count in config.members or plan["fanout"]:
            yield Setting("fanout", count, senders=max(1, min(10, count // 2)),
                          seconds=config.seconds or plan["seconds"])
    if "latency" in scenarios:
        count = plan["latency_members"]
        for rate in config.rates or plan["rates"]:
            yield Setting("latency", count, senders=max(1, min(10, count // 2)), rate=rate,
                          seconds=config.seconds or plan["seconds"])
    if "handshake" in scenarios:
        yield Setting("handshake", 0, seconds=config.seconds or plan["handshake_seconds"])


def server_options(setting: Setting, size: int) -> list[str]:
    """
    The twistd options a setting needs: each limit raised only as far as the
    load requires; every other hardening limit keeps its default.
    """
    if setting.scenario == "fanout":
        # Senders go as fast as the room delivers: up to a few thousand
        # messages a second each, in windows of 64.
        return ["--message-rate", "20000", "--message-burst", "1000"]
    if setting.scenario == "latency":
        per_sender = setting.rate / max(1, setting.senders)
        return ["--message-rate", str(max(10, math.ceil(2 * per_sender)))]
    return []


def extra_options(text: str) -> list[str]:
    """
    The options of C{--server-args}; the listening address and data directory
    stay the bench's own (loopback only).

    @raise BenchError: when they name one of those.
    @raise ValueError: when C{text} is not shell words.
    """
    options = shlex.split(text)
    for option in options:
        name = option.split("=", 1)[0]
        if name in ("--interface", "-i", "--port", "-p", "--data-dir", "-d"):
            raise BenchError(f"--server-args may not set {name}")
    return options


def member_specs(setting: Setting) -> list[list[str]]:
    if setting.scenario == "idle":
        size = setting.room_size
        return [[f"m{i:05d}", f"r{i // size:03d}"] for i in range(setting.members)]
    return [[f"m{i:05d}", MAIN_ROOM] for i in range(setting.members)]


def prepare_rooms(data: Path, password: str, setting: Setting) -> None:
    """
    Write the room verifiers the twistchat server loads (one salt for all, so a
    load process runs scrypt once).
    """
    from twistchat.crypto.verifier import make_verifier
    from twistchat.server.verifiers import room_path, save_verifier

    data.mkdir(parents=True, exist_ok=True)
    main = make_verifier(password, MAIN_ROOM)
    save_verifier(room_path(data, MAIN_ROOM), main)
    rooms = {room for _, room in member_specs(setting)} - {MAIN_ROOM}
    for room in sorted(rooms):
        save_verifier(room_path(data, room), dataclasses.replace(main, room=room))


def frame_length(kind: str, size: int) -> int:
    """
    Bytes on the wire (length prefix included) of one relayed message.
    """
    from twistchat import wire

    padded = 32 * -(-size // 32) + 16
    if kind == "threaded":
        return 4 + len(b"n=%d;" % COUNTER_BASE) + 12 + size + 16
    if kind == "twistchat":
        body = wire.encode("msg", **{"from": "m00000"}, sid=b"s" * 16, n=COUNTER_BASE,
                           ct=b"c" * padded)
    else:
        body = wire.encode("send", sid=b"s" * 16, n=COUNTER_BASE, ct=b"c" * padded)
    return 4 + len(body)


def server_command(kind: str, data: Path, options: list[str], before: str | None = None,
                   profile: str | None = None) -> list[str]:
    """
    The command line of the server under test.

    @param kind: C{twistchat} (this interpreter's twistd, also for a
        variant's name), C{before} (the twistd of interpreter C{before}), or
        a baseline's name.
    @param profile: for C{twistchat}, run it under py-spy, which writes raw
        flame-graph lines to this file; a name ending in C{.pstats}: under
        twistd's own cProfile instead (the reactor thread), which writes its
        statistics there when the server stops.
    """
    if kind in BASELINES:
        return [sys.executable, "-m", f"twistchat.bench.baselines.{kind}_relay", str(data)]
    command = socketchat_command("--data-dir", str(data), "--room", MAIN_ROOM, *options,
                     python=before if kind == "before" else None)
    if profile and kind != "before" and profile.endswith(".pstats"):
        at = command.index("socketchat")
        command[at:at] = [f"--profile={profile}", "--profiler=cprofile", "--savestats"]
    elif profile and kind != "before":
        command = [py_spy() or "py-spy", "record", "--format", "raw", "-o", profile, "--",
                   *command]
    return command


def py_spy() -> str | None:
    """
    The py-spy program: beside this interpreter (a virtual environment's), or
    on the PATH; None when there is none.
    """
    spy = Path(sys.executable).with_name("py-spy")
    return str(spy) if spy.exists() else shutil.which("py-spy")


class RelayServer(ServerProcess):
    """
    The server under test, perhaps under py-spy (then L{pid} is py-spy's
    child, the server itself).
    """

    def __init__(self, kind: str, workdir: Path, options: list[str], password: str,
                 before: str | None = None, profile: str | None = None) -> None:
        #: Under py-spy (twistd's own profiler needs nothing special here).
        self.profiled = (bool(profile) and kind not in (*BASELINES, "before")
                         and not str(profile).endswith(".pstats"))
        env = dict(os.environ)
        if kind not in BASELINES:
            env[PASSWORD_ENV] = password
        command = server_command(kind, workdir / "data", options, before, profile)
        super().__init__(command, workdir, env)

    @property
    def pid(self) -> int:
        if self.profiled:
            return children(self.process.pid)[0]
        return self.process.pid

    def terminate(self) -> None:
        # py-spy writes its profile once the server exits.
        if self.profiled:
            os.kill(self.pid, signal.SIGTERM)
        else:
            super().terminate()

    def kill(self) -> None:
        if self.profiled and self.process.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)  # the server under py-spy
            except (OSError, IndexError, ValueError):
                pass
        super().kill()


@dataclasses.dataclass
class Run:
    """
    One run of one setting on one server: the server and load processes it
    started, and what they were given.
    """

    kind: str
    setting: Setting
    config: BenchConfig
    server: RelayServer
    password: str
    options: list[str]
    loads: list[LoadProcess] = dataclasses.field(default_factory=list)
    #: Every server process: the nodes (C{server} first), then redis-server.
    nodes: list[RelayServer] = dataclasses.field(default_factory=list)
    redis: RedisProcess | None = None

    @property
    def load_kind(self) -> str:
        """
        The kind of member the load processes simulate.
        """
        return self.kind if self.kind in BASELINES else "twistchat"

    @property
    def ports(self) -> list[int]:
        """
        The ports members connect to (load process I{i} to the I{i}th, round).
        """
        return [node.port for node in self.nodes or [self.server]]

    def cpu(self) -> float:
        """
        CPU seconds used by every server process (nodes, the workers of a
        node with C{--workers}, and redis-server).
        """
        pids = [node.pid for node in self.nodes or [self.server]]
        if self.kind == "redis-workers2":
            pids += [child for node in self.nodes for child in children(node.pid)]
        if self.redis is not None:
            pids.append(self.redis.pid)
        return sum(cpu_seconds(pid) for pid in pids)


_profiles = itertools.count()


def run_one(kind: str, setting: Setting, config: BenchConfig) -> dict[str, Any]:
    """
    Start server C{kind}, drive one run of C{setting} against it, stop it.

    @raise BenchError: when a process fails or a login is refused.
    """
    if kind in REDIS_SERVERS:
        return _run_redis(kind, setting, config)
    password = secrets.token_urlsafe(18)
    twistchat = kind not in BASELINES
    options = ([*server_options(setting, config.size), *extra_options(config.server_args),
                *extra_options(dict(config.variants).get(kind, ""))]
               if twistchat else [])
    with tempfile.TemporaryDirectory(prefix="twistchat-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "data").mkdir()
        if twistchat:
            prepare_rooms(workdir / "data", password, setting)
        profile = None
        if config.profile:
            suffix = "pstats" if config.profiler == "cprofile" else "txt"
            profile = (f"{config.profile}-{setting.scenario}-{setting.members}-"
                       f"{next(_profiles)}.{suffix}")
        server = RelayServer(kind, workdir, options, password, config.before, profile)
        run = Run(kind, setting, config, server, password, options)
        try:
            return _drive(run)
        finally:
            for load in run.loads:
                load.stop()
            server.stop(15)


def _run_redis(kind: str, setting: Setting, config: BenchConfig) -> dict[str, Any]:
    """
    One run on a redis-server of the run's own and one (C{redis1}) or two
    (C{redis2}) twistd nodes on it, each with its own data directory and the
    same room verifier; or one twistd with C{--workers 2} (C{redis-workers2}),
    started once both its workers listen.
    """
    password = secrets.token_urlsafe(18)
    workers = kind == "redis-workers2"
    with tempfile.TemporaryDirectory(prefix="twistchat-bench-") as tmp:
        workdir = Path(tmp)
        redis = RedisProcess(workdir / "redis")
        options = [*server_options(setting, config.size), *extra_options(config.server_args),
                   "--redis", redis.url]
        if workers:
            options += ["--workers", str(BENCH_WORKERS)]
        nodes: list[RelayServer] = []
        run: Run | None = None
        try:
            for i in range(2 if kind == "redis2" else 1):
                folder = workdir / f"node{i}"
                folder.mkdir()
                if i == 0:
                    prepare_rooms(folder / "data", password, setting)
                else:
                    shutil.copytree(workdir / "node0" / "data" / "rooms",
                                    folder / "data" / "rooms")
                nodes.append(RelayServer("twistchat", folder, options, password))
            if workers:
                # The first worker's "listening" line started the node.
                for number in range(1, BENCH_WORKERS + 1):
                    nodes[0].log.wait_for(
                        rf"\[worker-{number}#info\] .*{LISTENING}", START_TIMEOUT)
            run = Run(kind, setting, config, nodes[0], password, options, nodes=nodes,
                      redis=redis)
            result = _drive(run)
            if workers:
                result["min_worker_share"] = _min_worker_share(nodes[0])
            return result
        finally:
            for load in run.loads if run is not None else []:
                load.stop()
            for node in nodes:
                node.stop(15)
            redis.stop()


def _min_worker_share(node: RelayServer) -> float:
    """
    The share of the logins the least loaded worker of C{node} took (0.5:
    an even split of two), from the workers' lines in its log.
    """
    node.log.count("")  # take what was printed so far
    per_worker = [0] * BENCH_WORKERS
    for line in node.log.seen:
        match = re.search(r"\[worker-(\d+)#info\] \S+ \([^)]*\) connected to room", line)
        if match and 0 < int(match.group(1)) <= BENCH_WORKERS:
            per_worker[int(match.group(1)) - 1] += 1
    return round(min(per_worker) / (sum(per_worker) or 1), 3)


def run_all(config: BenchConfig) -> list[dict[str, Any]]:
    """
    Every setting of the relay scenarios C{config} asks for, on every server.

    @return: one result (the median of the repeats) per setting and server.
    @raise BenchError: when a run fails.
    """
    results = []
    for setting in settings(config):
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in config.servers}
        repeat = config.repeat
        if setting.scenario == "idle":
            repeat = min(repeat, IDLE_REPEAT_MAX)
        for _ in range(repeat):
            for kind in config.servers:
                if (kind == "threaded" and setting.scenario == "idle"
                        and setting.members > THREADED_IDLE_MAX):
                    continue
                if kind in REDIS_SERVERS and setting.scenario == "idle":
                    continue  # memory per member is the single process's
                runs[kind].append(run_one(kind, setting, config))
        for kind in config.servers:
            if runs[kind]:
                results.append(median_result(runs[kind]))
    return results


def _split(items: list[Any], parts: int) -> list[list[Any]]:
    return [items[i::parts] for i in range(parts)]


def _all_reply(loads: list[LoadProcess], timeout: float = STEP_TIMEOUT) -> list[dict[str, Any]]:
    return [load.receive(timeout) for load in loads]


def _sleep_until(when: float) -> None:
    time.sleep(max(0.0, when - time.monotonic()))


def _drive(run: Run) -> dict[str, Any]:
    setting, config, server = run.setting, run.config, run.server
    specs = member_specs(setting)
    ports = run.ports
    # At least one load process per node.
    nloads = max(len(ports), min(config.load_processes, len(specs) // 2 or 1))
    # Senders first in each process, then its probes; sender ids are global.
    senders = list(range(setting.senders))
    sender_sets = _split(senders, nloads)
    listeners = _split(specs[setting.senders:], nloads)
    for i in range(nloads):
        load_config = {"kind": run.load_kind, "port": ports[i % len(ports)],
                       "password": run.password, "number": i,
                       "size": config.size, "sender_ids": sender_sets[i], "lifetime": 3600}
        run.loads.append(LoadProcess(load_config))
    loads = run.loads
    _all_reply(loads, 60)
    concurrency = max(1, setting.concurrency // nloads)
    cpu0, rss0, t0 = run.cpu(), rss_bytes(server.pid), time.monotonic()
    for i, load in enumerate(loads):
        if setting.scenario == "handshake":
            # One member each, so that scrypt runs before the timed logins.
            mine = [[f"w{i:05d}", MAIN_ROOM]]
        else:
            mine = [specs[s] for s in sender_sets[i]] + listeners[i]
        load.send(cmd="login", members=mine, concurrency=concurrency)
    logins = _all_reply(loads)
    admit_seconds = time.monotonic() - t0
    failed = sum(r["failed"] for r in logins)
    if failed:
        errors = sorted({e for r in logins for e in r["errors"]})
        raise BenchError(f"{failed} logins failed on {run.kind}: {errors}")
    result: dict[str, Any] = {
        "scenario": setting.scenario, "server": run.kind, "members": setting.members,
    }
    if run.kind not in BASELINES:
        result["server_options"] = " ".join(run.options)
    if setting.scenario == "idle":
        time.sleep(1.0)  # let the last welcomes and presence notices settle
        rss1 = rss_bytes(server.pid)
        result.update(
            room_size=setting.room_size,
            admit_seconds=round(admit_seconds, 3),
            admit_cpu_seconds=round(run.cpu() - cpu0, 3),
            rss_kib_per_member=round((rss1 - rss0) / 1024 / setting.members, 2),
            rss_mib=round(rss1 / 2**20, 1),
        )
        return result
    start = time.monotonic() + 0.5
    end = start + setting.seconds
    for load in loads:
        if setting.scenario == "fanout":
            load.send(cmd="fanout", start=start, end=end, window=config.window,
                      frame_length=frame_length(run.load_kind, config.size), processes=nloads)
        elif setting.scenario == "latency":
            load.send(cmd="latency", start=start, end=end,
                      rate=setting.rate / nloads, probes=config.probes)
        else:
            load.send(cmd="churn", start=start, end=end, concurrency=concurrency, room=MAIN_ROOM)
    _sleep_until(start)
    cpu_a = run.cpu()
    _sleep_until(end)
    cpu = run.cpu() - cpu_a
    replies = _all_reply(loads, setting.seconds + 120)
    result["seconds"] = setting.seconds
    result["server_cpu_seconds"] = round(cpu, 3)
    if setting.scenario == "handshake":
        ok = sum(r["ok"] for r in replies)
        if ok == 0:
            raise BenchError(f"no login completed on {run.kind}")
        result.update(
            logins=ok,
            failed=sum(r["failed"] for r in replies),
            **({"errors": sorted({e for r in replies for e in r["errors"]})[:3]}
               if any(r["errors"] for r in replies) else {}),
            logins_per_s=round(ok / setting.seconds, 1),
            cpu_ms_per_login=round(1000 * cpu / ok, 3),
            login_ms=round(1000 * sum(r["seconds"] for r in replies) / ok, 2),
        )
        return result
    deliveries = sum(r["rx_bytes"] for r in replies) / frame_length(run.load_kind, config.size)
    result.update(
        senders=setting.senders,
        size=config.size,
        sent=sum(r["sent"] for r in replies),
        deliveries_per_s=round(deliveries / setting.seconds, 1),
        cpu_us_per_delivery=round(1e6 * cpu / deliveries, 3) if deliveries else None,
        server_cpu_share=round(cpu / setting.seconds, 3),
    )
    if setting.scenario == "latency":
        quantiles = [r["latencies"] for r in replies if r["latencies"]]
        result["rate"] = setting.rate
        result["latency_samples"] = sum(r["samples"] for r in replies)
        if quantiles:
            # With one load process these are exact; with more, the worst of each.
            result["p50_ms"] = round(max(q[0] for q in quantiles), 3)
            result["p99_ms"] = round(max(q[1] for q in quantiles), 3)
            result["max_ms"] = round(max(q[2] for q in quantiles), 3)
    return result
