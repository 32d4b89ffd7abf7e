"""
twistchat-bench: measure a twistchat relay against two baselines in one run.

Each run of a scenario starts the server under test in its own process (the
real C{twistd -n socketchat}, or a baseline from L{twistchat.bench.baselines})
and drives it from one or more load processes (L{twistchat.bench.load}), all on
127.0.0.1. Server CPU and memory are read from /proc (Linux). Every figure is
the median over C{--repeat} interleaved runs (server kinds alternate within each
repeat); twistchat's figures are also given as ratios to the baselines'.

Scenarios:
  fanout     N members, S of them sending as fast as the room delivers:
             deliveries/s (messages x recipients), server CPU per delivery
  latency    a fixed offered rate into a room: p50/p99/max delivery latency,
             server CPU per delivery
  idle       C idle members (rooms of --room-size): server RSS per member,
             time to admit them all
  handshake  members logging in and out: logins/s, server CPU per login
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import platform
import secrets
import shlex
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from twistchat.bench.load import COUNTER_BASE, raise_fd_limit
from twistchat.config import PASSWORD_ENV

SCENARIOS = ("fanout", "latency", "idle", "handshake")
SERVERS = ("twistchat", "bare", "threaded")
MAIN_ROOM = "main"
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
STEP_TIMEOUT = 300.0

#: Settings per mode: member counts, seconds per run, repeats.
MODES: dict[str, dict[str, Any]] = {
    "full": dict(fanout=[10, 100, 1000], latency_members=100, rates=[200, 1000, 2000],
                 idle=[1000, 10000], seconds=5.0, handshake_seconds=5.0, repeat=5),
    "quick": dict(fanout=[100], latency_members=100, rates=[1000],
                  idle=[300], seconds=1.5, handshake_seconds=1.5, repeat=1),
    "smoke": dict(fanout=[6], latency_members=6, rates=[50],
                  idle=[6], seconds=0.5, handshake_seconds=0.5, repeat=1),
}
#: The thread-per-client baseline is not run above this many idle members
#: (one thread each).
THREADED_IDLE_MAX = 1000


class BenchError(Exception):
    pass


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


# --- processes ------------------------------------------------------------------


class Server:
    """
    The server under test, in its own process; output goes to a log file.
    """

    def __init__(self, kind: str, workdir: Path, options: list[str], password: str,
                 profile: str | None = None, before: str | None = None) -> None:
        self.kind = kind
        self.profiled = bool(profile) and kind == "twistchat"
        self.workdir = workdir
        self.options = options
        self.log = workdir / f"{kind}.log"
        env = dict(os.environ)
        if kind in ("twistchat", "before"):
            python = Path(before or sys.executable)
            twistd = python.with_name("twistd")
            runner = [str(twistd)] if twistd.exists() else [
                str(python), "-c", "from twisted.scripts.twistd import run; run()"]
            cmd = runner + [
                "-n", "--pidfile=", "--logfile", str(self.log), "socketchat",
                "--port", "0", "--interface", "127.0.0.1",
                "--data-dir", str(workdir / "data"), "--room", MAIN_ROOM, *options,
            ]
            env[PASSWORD_ENV] = password
            out = subprocess.DEVNULL
            if profile and kind == "twistchat":
                # Sample the server with py-spy (raw flame-graph lines).
                spy = Path(sys.executable).with_name("py-spy")
                cmd = [str(spy) if spy.exists() else "py-spy", "record", "--format", "raw", "-o", profile, "--", *cmd]
        else:
            cmd = [sys.executable, "-m", f"twistchat.bench.baselines.{kind}_relay",
                   str(workdir / "data")]
            out = self.log.open("w")
        self.process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, cwd=workdir)
        try:
            self.port = self._wait_port()
        except BaseException:
            # Not started in time, or interrupted: leave nothing running.
            self._kill()
            raise

    def _wait_port(self) -> int:
        marker = "listening on port "
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"{self.kind} server exited: {self._tail()}")
            if self.log.exists():
                for line in self.log.read_text(errors="replace").splitlines():
                    if marker in line:
                        return int(line.split(marker, 1)[1].split()[0])
            time.sleep(0.05)
        raise BenchError(f"{self.kind} server did not start: {self._tail()}")

    def _tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    @property
    def pid(self) -> int:
        if self.profiled:
            pid = self.process.pid
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            return int(children[0])
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            if self.profiled:
                # py-spy writes its profile once the server exits.
                os.kill(self.pid, signal.SIGTERM)
            else:
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self._kill()

    def _kill(self) -> None:
        if self.profiled:
            try:
                os.kill(self.pid, signal.SIGKILL)  # the server under py-spy
            except (OSError, IndexError, ValueError):
                pass
        self.process.kill()
        self.process.wait()


class LoadProcess:
    """
    One load process, driven by JSON lines.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "twistchat.bench.load", json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )

    def send(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def receive(self, timeout: float = STEP_TIMEOUT) -> dict[str, Any]:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            raise BenchError("a load process stopped answering")
        reply = json.loads(line)
        if "error" in reply:
            raise BenchError(f"load process: {reply['error']}")
        return reply

    def stop(self) -> None:
        try:
            self.send(cmd="quit")
            self.process.wait(10)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            self.process.kill()
            self.process.wait()


def all_reply(loads: list[LoadProcess], timeout: float = STEP_TIMEOUT) -> list[dict[str, Any]]:
    return [load.receive(timeout) for load in loads]


def sleep_until(when: float) -> None:
    time.sleep(max(0.0, when - time.monotonic()))


# --- one run --------------------------------------------------------------------


@dataclasses.dataclass
class Setting:
    scenario: str
    members: int
    senders: int = 0
    rate: float = 0.0
    seconds: float = 0.0
    room_size: int = 0
    concurrency: int = 8


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
        body = wire.encode("msg", **{"from": "m00000"}, sid=b"s" * 16, n=COUNTER_BASE, ct=b"c" * padded)
    else:
        body = wire.encode("send", sid=b"s" * 16, n=COUNTER_BASE, ct=b"c" * padded)
    return 4 + len(body)


def run_one(kind: str, setting: Setting, args: argparse.Namespace) -> dict[str, Any]:
    password = secrets.token_urlsafe(18)
    twistchat = kind in ("twistchat", "before")
    options = [*server_options(setting, args.size), *extra_options(args.server_args)] if twistchat else []
    specs = member_specs(setting)
    with tempfile.TemporaryDirectory(prefix="twistchat-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "data").mkdir()
        if twistchat:
            prepare_rooms(workdir / "data", password, setting)
        profile = None
        if args.profile:
            profile = f"{args.profile}-{setting.scenario}-{setting.members}-{next(_profiles)}.txt"
        server = Server(kind, workdir, options, password, profile, args.before)
        loads: list[LoadProcess] = []
        try:
            return _drive(kind, setting, args, server, loads, specs, password, options)
        finally:
            for load in loads:
                load.stop()
            server.stop()


_profiles = itertools.count()


def _split(items: list[Any], parts: int) -> list[list[Any]]:
    return [items[i::parts] for i in range(parts)]


def _drive(kind: str, setting: Setting, args: argparse.Namespace, server: Server,
           loads: list[LoadProcess], specs: list[list[str]], password: str,
           options: list[str]) -> dict[str, Any]:
    nloads = max(1, min(args.load_processes, len(specs) // 2 or 1))
    load_kind = "twistchat" if kind == "before" else kind
    # Senders first in each process, then its probes; sender ids are global.
    senders = list(range(setting.senders))
    sender_sets = _split(senders, nloads)
    listeners = _split(specs[setting.senders:], nloads)
    for i in range(nloads):
        config = {"kind": "twistchat" if kind == "before" else kind, "port": server.port, "password": password, "size": args.size,
                  "sender_ids": sender_sets[i], "lifetime": 3600}
        loads.append(LoadProcess(config))
    all_reply(loads, 60)
    concurrency = max(1, setting.concurrency // nloads)
    cpu0, rss0, t0 = cpu_seconds(server.pid), rss_bytes(server.pid), time.monotonic()
    for i, load in enumerate(loads):
        if setting.scenario == "handshake":
            # One member each, so that scrypt runs before the timed logins.
            mine = [[f"w{i:05d}", MAIN_ROOM]]
        else:
            mine = [specs[s] for s in sender_sets[i]] + listeners[i]
        load.send(cmd="login", members=mine, concurrency=concurrency)
    logins = all_reply(loads)
    admit_seconds = time.monotonic() - t0
    failed = sum(r["failed"] for r in logins)
    if failed:
        errors = sorted({e for r in logins for e in r["errors"]})
        raise BenchError(f"{failed} logins failed on {kind}: {errors}")
    result: dict[str, Any] = {
        "scenario": setting.scenario, "server": kind, "members": setting.members,
    }
    if kind in ("twistchat", "before"):
        result["server_options"] = " ".join(options)
    if setting.scenario == "idle":
        time.sleep(1.0)  # let the last welcomes and presence notices settle
        rss1 = rss_bytes(server.pid)
        result.update(
            room_size=setting.room_size,
            admit_seconds=round(admit_seconds, 3),
            admit_cpu_seconds=round(cpu_seconds(server.pid) - cpu0, 3),
            rss_kib_per_member=round((rss1 - rss0) / 1024 / setting.members, 2),
            rss_mib=round(rss1 / 2**20, 1),
        )
        return result
    start = time.monotonic() + 0.5
    end = start + setting.seconds
    for load in loads:
        if setting.scenario == "fanout":
            load.send(cmd="fanout", start=start, end=end, window=args.window,
                      frame_length=frame_length(load_kind, args.size), processes=nloads)
        elif setting.scenario == "latency":
            load.send(cmd="latency", start=start, end=end,
                      rate=setting.rate / nloads, probes=args.probes)
        else:
            load.send(cmd="churn", start=start, end=end, concurrency=concurrency, room=MAIN_ROOM)
    sleep_until(start)
    cpu_a = cpu_seconds(server.pid)
    sleep_until(end)
    cpu = cpu_seconds(server.pid) - cpu_a
    replies = all_reply(loads, setting.seconds + 120)
    result["seconds"] = setting.seconds
    result["server_cpu_seconds"] = round(cpu, 3)
    if setting.scenario == "handshake":
        ok = sum(r["ok"] for r in replies)
        if ok == 0:
            raise BenchError(f"no login completed on {kind}")
        result.update(
            logins=ok,
            failed=sum(r["failed"] for r in replies),
            logins_per_s=round(ok / setting.seconds, 1),
            cpu_ms_per_login=round(1000 * cpu / ok, 3),
            login_ms=round(1000 * sum(r["seconds"] for r in replies) / ok, 2),
        )
        return result
    deliveries = sum(r["rx_bytes"] for r in replies) / frame_length(load_kind, args.size)
    result.update(
        senders=setting.senders,
        size=args.size,
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


# --- the whole run -----------------------------------------------------------------


def settings(args: argparse.Namespace) -> Iterator[Setting]:
    plan = MODES[args.mode]
    scenarios = args.scenarios
    if "idle" in scenarios:
        for count in args.idle or plan["idle"]:
            yield Setting("idle", count, room_size=min(args.room_size, count))
    if "fanout" in scenarios:
        for count in args.members or plan["fanout"]:
            yield Setting("fanout", count, senders=max(1, min(10, count // 2)),
                          seconds=args.seconds or plan["seconds"])
    if "latency" in scenarios:
        count = plan["latency_members"]
        for rate in args.rates or plan["rates"]:
            yield Setting("latency", count, senders=max(1, min(10, count // 2)), rate=rate,
                          seconds=args.seconds or plan["seconds"])
    if "handshake" in scenarios:
        yield Setting("handshake", 0, seconds=args.seconds or plan["handshake_seconds"])


#: The figures compared with the baselines, and whether more is better.
METRICS = {
    "fanout": [("deliveries_per_s", True), ("cpu_us_per_delivery", False)],
    "latency": [("p99_ms", False), ("cpu_us_per_delivery", False), ("deliveries_per_s", True)],
    "idle": [("rss_kib_per_member", False), ("admit_seconds", False)],
    "handshake": [("logins_per_s", True), ("cpu_ms_per_login", False)],
}


SETTING_KEYS = {"members", "senders", "size", "rate", "room_size", "seconds"}
#: Idle runs admit thousands of members each: at most this many repeats.
IDLE_REPEAT_MAX = 3


def median_result(runs: list[dict[str, Any]]) -> dict[str, Any]:
    merged = dict(runs[0])
    for key, value in runs[0].items():
        if key in SETTING_KEYS:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
            merged[key] = round(statistics.median(values), 3)
    merged["runs"] = len(runs)
    return merged


def add_ratios(results: list[dict[str, Any]]) -> None:
    index = {(r["scenario"], r["members"], r.get("rate"), r["server"]): r for r in results}
    for r in results:
        if r["server"] != "twistchat":
            continue
        for base in ("bare", "threaded", "before"):
            other = index.get((r["scenario"], r["members"], r.get("rate"), base))
            if other is None:
                continue
            ratios = {}
            for metric, _ in METRICS[r["scenario"]]:
                a, b = r.get(metric), other.get(metric)
                if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
                    ratios[metric] = round(a / b, 3)
            r[f"vs_{base}"] = ratios


def table(results: list[dict[str, Any]]) -> str:
    lines = [f"{'scenario':<10} {'server':<10} {'setting':<16} figures"]
    for r in results:
        setting = {
            "fanout": f"N={r['members']} S={r.get('senders')}",
            "latency": f"N={r['members']} {r.get('rate', 0):g}/s",
            "idle": f"C={r['members']}",
            "handshake": "",
        }[r["scenario"]]
        figures = ", ".join(
            f"{m}={r[m]:g}" for m, _ in METRICS[r["scenario"]] if r.get(m) is not None
        )
        for base in ("bare", "threaded", "before"):
            ratios = r.get(f"vs_{base}")
            if ratios:
                figures += f" | x{base}: " + ", ".join(f"{k}={v:g}" for k, v in ratios.items())
        lines.append(f"{r['scenario']:<10} {r['server']:<10} {setting:<16} {figures}")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "system": platform.platform()}


def plot(results: list[dict[str, Any]], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BenchError("--plot needs matplotlib: pip install 'twistchat[bench]'") from None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for kind, style in zip(SERVERS, ("o-", "s--", "^:")):
        fan = sorted((r["members"], r["deliveries_per_s"]) for r in results
                     if r["scenario"] == "fanout" and r["server"] == kind)
        if fan:
            left.plot(*zip(*fan), style, label=kind)
        lat = sorted((r["rate"], r["p99_ms"]) for r in results
                     if r["scenario"] == "latency" and r["server"] == kind and "p99_ms" in r)
        if lat:
            right.plot(*zip(*lat), style, label=kind)
    left.set(xscale="log", yscale="log", xlabel="members", ylabel="deliveries / s",
             title="fanout: deliveries per second")
    right.set(yscale="log", xlabel="offered messages / s (room of 100)", ylabel="p99 latency (ms)",
              title="latency: p99")
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="twistchat-bench", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="small N and T: every scenario in under a minute")
    mode.add_argument("--smoke", dest="mode", action="store_const", const="smoke",
                      help="tiny N, T of half a second: checks that the tool works")
    parser.set_defaults(mode="full")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated subset of: " + ", ".join(SCENARIOS))
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help="comma-separated subset of: " + ", ".join(SERVERS))
    parser.add_argument("--repeat", type=int, help="interleaved runs per setting (median)")
    parser.add_argument("--seconds", type=float, help="seconds per traffic run")
    parser.add_argument("--members", type=lambda s: [int(x) for x in s.split(",")],
                        help="fanout room sizes, e.g. 10,100,1000")
    parser.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")],
                        help="latency offered rates (messages/s)")
    parser.add_argument("--idle", type=lambda s: [int(x) for x in s.split(",")],
                        help="idle member counts")
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
    parser.add_argument("--server-args", default="", metavar="OPTIONS",
                        help="more twistd socketchat options for the twistchat server, "
                        "e.g. '--history 0' (shown in server_options)")
    parser.add_argument("--plot", metavar="FILE.png")
    parser.add_argument("--profile", metavar="PREFIX",
                        help="run the twistchat server under py-spy; raw profiles go to "
                        "PREFIX-SCENARIO-N-I.txt (CPU figures then include some sampling cost)")
    args = parser.parse_args(argv)
    try:
        extra_options(args.server_args)
    except (BenchError, ValueError) as e:
        parser.error(str(e))
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    args.servers = [s for s in args.servers.split(",") if s]
    for name, allowed in (("scenarios", SCENARIOS), ("servers", SERVERS)):
        bad = set(getattr(args, name)) - set(allowed)
        if bad:
            parser.error(f"unknown {name}: {', '.join(sorted(bad))}")
    if args.before:
        args.servers.append("before")
    if args.repeat is None:
        args.repeat = MODES[args.mode]["repeat"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if not Path("/proc/self/stat").exists():
        print("twistchat-bench: needs Linux (/proc) to read server CPU and memory",
              file=sys.stderr)
        return 2
    raise_fd_limit()
    started = time.monotonic()
    info = machine()
    print(f"# twistchat-bench {args.mode}: {info['cores']} cores, {info['cpu']}, "
          f"Python {info['python']}", flush=True)
    results = []
    try:
        for setting in settings(args):
            runs: dict[str, list[dict[str, Any]]] = {k: [] for k in args.servers}
            repeat = args.repeat
            if setting.scenario == "idle":
                repeat = min(repeat, IDLE_REPEAT_MAX)
            for _ in range(repeat):
                for kind in args.servers:
                    if (kind == "threaded" and setting.scenario == "idle"
                            and setting.members > THREADED_IDLE_MAX):
                        continue
                    runs[kind].append(run_one(kind, setting, args))
            for kind in args.servers:
                if runs[kind]:
                    results.append(median_result(runs[kind]))
    except BenchError as e:
        print(f"twistchat-bench: {e}", file=sys.stderr)
        return 1
    add_ratios(results)
    print(table(results))
    for r in results:
        r["mode"] = args.mode
        print(json.dumps(r, sort_keys=True))
    if args.plot:
        try:
            plot(results, args.plot)
        except BenchError as e:
            print(f"twistchat-bench: {e}", file=sys.stderr)
            return 1
    print(f"# done in {time.monotonic() - started:.0f} s", flush=True)
    return 0


def run() -> None:
    sys.exit(main())
