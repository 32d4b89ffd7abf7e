"""
twistchat-bench runs end to end: a tiny setting (--smoke) of every scenario,
against the real twistd plugin (and a baseline for the relay scenarios), prints
a table and one JSON line per result with the expected figures and ratios.
Nothing here is timed: the figures themselves are for docs/performance.md and
docs/operations.md, not for assertions.
"""

from __future__ import annotations

import configparser
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twistchat.bench import cli, relay
from twistchat.bench.results import (
    METRICS,
    TARGETS,
    add_ratios,
    check_targets,
    median_result,
    targets,
)

EXPECTED = {
    "fanout": {"deliveries_per_s", "cpu_us_per_delivery", "senders", "size", "sent"},
    "latency": {"p50_ms", "p99_ms", "max_ms", "rate", "cpu_us_per_delivery"},
    "idle": {"rss_kib_per_member", "admit_seconds", "room_size"},
    "handshake": {"logins_per_s", "cpu_ms_per_login", "logins"},
}


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(),
                                reason="the bench reads /proc (Linux)")


@needs_proc
def test_smoke_run_prints_json_results(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "twistchat.bench", "--smoke", "--servers", "twistchat,bare"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[1].split()[:3] == ["scenario", "server", "setting"]
    results = [json.loads(line) for line in lines if line.startswith("{")]
    seen = {(r["scenario"], r["server"]) for r in results}
    assert seen == {(s, k) for s in EXPECTED for k in ("twistchat", "bare")}
    for r in results:
        assert r["mode"] == "smoke" and r["runs"] == 1
        assert EXPECTED[r["scenario"]] <= set(r), r
        if r["server"] == "twistchat":
            # Ratios to the baseline measured in the same run.
            metrics = {m for m, _ in METRICS[r["scenario"]]}
            assert set(r["vs_bare"]) <= metrics and r["vs_bare"], r
            assert "server_options" in r
    fanout = next(r for r in results if r["scenario"] == "fanout" and r["server"] == "twistchat")
    assert fanout["deliveries_per_s"] > 0 and fanout["sent"] > 0
    assert "--message-rate" in fanout["server_options"]


def test_cprofile_runs_twistd_under_its_own_profiler(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """
    --profiler cprofile: twistd's own profiling options, before the
    subcommand, instead of a py-spy command around twistd. Without py-spy,
    --profile with the default profiler is a usage error naming the way out
    (it was a traceback when the server was started).
    """
    assert cli.parse(["--profile", "p", "--profiler", "cprofile"]).profiler == "cprofile"
    monkeypatch.setattr(cli, "py_spy", lambda: "/opt/spy/py-spy")
    assert cli.parse(["--profile", "p"]).profiler == "py-spy"
    monkeypatch.setattr(cli, "py_spy", lambda: None)
    with pytest.raises(SystemExit) as stopped:
        cli.parse(["--profile", "p"])
    assert stopped.value.code == 2
    assert "--profile needs py-spy" in capsys.readouterr().err
    assert cli.parse(["--profile", "p", "--profiler", "cprofile"]).profiler == "cprofile"
    out = str(tmp_path / "p-fanout-10-0.pstats")
    command = relay.server_command("twistchat", tmp_path, ["--history", "0"], profile=out)
    at = command.index("socketchat")
    assert command[at - 3:at] == [f"--profile={out}", "--profiler=cprofile", "--savestats"]
    assert command[-2:] == ["--history", "0"]
    assert "py-spy" not in " ".join(command)
    spied = relay.server_command("twistchat", tmp_path, [], profile=str(tmp_path / "p.txt"))
    assert "record" in spied and "--profiler=cprofile" not in spied


def test_options() -> None:
    args = cli.parse(["--quick", "--scenarios", "fanout", "--servers", "twistchat"])
    assert (args.mode, args.scenarios, args.servers, args.repeat) == (
        "quick", ["fanout"], ["twistchat"], 1)
    with pytest.raises(SystemExit):
        cli.parse(["--scenarios", "nosuch"])
    settings = list(relay.settings(cli.parse(["--scenarios", "fanout,idle"])))
    assert [(s.scenario, s.members) for s in settings] == [
        ("idle", 1000), ("idle", 10000), ("fanout", 10), ("fanout", 100), ("fanout", 1000)]


def test_server_args_keep_the_server_on_loopback() -> None:
    assert relay.extra_options("--history 0 --max-members=5") == [
        "--history", "0", "--max-members=5"]
    for text in ("--interface 0.0.0.0", "--port=7777", "-i ::", "--data-dir /"):
        with pytest.raises(SystemExit):
            cli.parse(["--server-args", text])


def test_server_options_raise_only_what_the_load_needs() -> None:
    assert relay.server_options(relay.Setting("idle", 1000, room_size=100), 200) == []
    assert relay.server_options(relay.Setting("handshake", 0), 200) == []
    latency = relay.server_options(relay.Setting("latency", 100, senders=10, rate=1000), 200)
    assert latency == ["--message-rate", "200"]


def run_smoke(tmp_path: Path, *options: str) -> tuple[list[str], list[dict[str, Any]]]:
    """
    C{twistchat-bench --smoke} with C{options}: its output lines and results.
    """
    done = subprocess.run(
        [sys.executable, "-m", "twistchat.bench", "--smoke", *options],
        cwd=tmp_path, capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    return lines, [json.loads(line) for line in lines if line.startswith("{")]


@needs_proc
def test_hardening_idle_closes_every_idle_connection(tmp_path: Path) -> None:
    lines, [result] = run_smoke(tmp_path, "--scenarios", "hardening-idle", "--connections", "3")
    assert (result["scenario"], result["members"], result["waves"]) == ("hardening-idle", 3, 2)
    # The server logged one "timed out" line per connection of both waves.
    assert result["timed_out_lines"] == 6 and result["closed"] == 6
    assert {"rss_kib_start", "rss_kib_each", "rss_kib_open", "rss_kib_after"} <= set(result)
    assert any(line.startswith("idle wave 2: 3 closed by the server") for line in lines)


@needs_proc
def test_hardening_slow_keeps_the_others_chatting(tmp_path: Path) -> None:
    lines, [result] = run_smoke(tmp_path, "--scenarios", "hardening-slow")
    assert result["scenario"] == "hardening-slow" and result["sent"] > 0
    assert 0 < result["received_each"] <= result["sent"]
    assert result["rss_kib_start"] <= result["rss_kib_max"]
    assert result["not_reading_lines"] >= 0
    assert [line.split(":")[0] for line in lines if line.startswith("slow")] == ["slow", "slow"]


@needs_proc
def test_hardening_ping_drops_a_mute_member(tmp_path: Path) -> None:
    lines, [result] = run_smoke(tmp_path, "--scenarios", "hardening-ping")
    assert result["scenario"] == "hardening-ping"
    assert "no answer to a ping" in result["reason"]
    assert result["dropped_after_s"] > 0
    assert any(line.startswith("ping: --idle-timeout 2 --ping-timeout 1: dropped")
               for line in lines)


@needs_proc
def test_hardening_guess_counts_evaluated_and_refused(tmp_path: Path) -> None:
    lines, [result] = run_smoke(tmp_path, "--scenarios", "hardening-guess")
    assert result["scenario"] == "hardening-guess"
    # The server evaluates the first few guesses at once, then refuses.
    assert result["evaluated"] >= 1 and len(result["evaluated_at"]) == result["evaluated"]
    assert result["refused"] == sum(result["refusals"].values())
    assert any(line.startswith("guess: ") for line in lines)


@needs_proc
def test_history_runs_off_then_on(tmp_path: Path) -> None:
    lines, results = run_smoke(tmp_path, "--scenarios", "history")
    assert [(r["scenario"], r["history"], r["runs"]) for r in results] == [
        ("history", 0, 1), ("history", 50, 1)]
    for r in results:
        assert r["msgs_per_s"] > 0 and r["deliveries_per_s"] == pytest.approx(2 * r["msgs_per_s"], rel=1e-3)
        assert r["cpu_ms_per_1000"] >= 0
    assert [line[:17] for line in lines if line.startswith("round")] == [
        "round 1 history o", "round 1 history o"]


def test_hardening_options() -> None:
    config = cli.parse(["--scenarios", "hardening,history", "--connections", "7"])
    assert config.scenarios == [
        "hardening-idle", "hardening-slow", "hardening-ping", "hardening-guess", "history"]
    assert (config.get("connections"), config.get("waves"), config.get("guess_seconds")) == (
        7, 2, 60.0)
    assert cli.parse(["--smoke"]).get("connections") == 4
    # Bounded: the hardening scenarios refuse sizes beyond their limits.
    for bad in (["--connections", "0"], ["--connections", "5001"], ["--waves", "6"],
                ["--chat-seconds", "601"], ["--guess-seconds", "-1"]):
        with pytest.raises(SystemExit):
            cli.parse(bad)


def test_before_runs_the_other_interpreter_and_twistchat_this_one(tmp_path: Path) -> None:
    other = str(tmp_path / "bin" / "python")
    twistchat = relay.server_command("twistchat", tmp_path, [], before=other)
    before = relay.server_command("before", tmp_path, [], before=other)
    assert str(Path(sys.executable).parent) in twistchat[0]
    assert before[:2] == [other, "-c"]
    assert before[-4:] == ["--data-dir", str(tmp_path), "--room", "main"]


def test_setup_cfg_ships_every_package_with_the_bench() -> None:
    """
    The wheel holds twistchat-bench with its baselines (docs/performance.md
    says a plain install has all three servers): setup.cfg lists every
    package of the source tree.
    """
    root = Path(__file__).resolve().parents[1]
    setup = configparser.ConfigParser()
    setup.read(root / "setup.cfg")
    listed = set(setup["options"]["packages"].split())
    found = {".".join(init.parent.relative_to(root).parts)
             for init in (root / "twistchat").rglob("__init__.py")}
    assert {"twistchat.bench", "twistchat.bench.baselines"} <= found
    assert found <= listed, found - listed


@needs_proc
def test_targets_smoke_prints_each_target(tmp_path: Path) -> None:
    """
    C{--targets --smoke}: twistchat and bare only, the targets' settings that
    fit a smoke run, then one line per target with its verdict and ratios.
    """
    lines, results = run_smoke(tmp_path, "--targets")
    assert {(r["scenario"], r["server"]) for r in results} == {
        (s, k) for s in EXPECTED for k in ("twistchat", "bare")}
    assert sorted(r.get("rate") for r in results if r["scenario"] == "latency") == [
        200, 200, 1000, 1000]
    start = lines.index(next(line for line in lines if line.startswith("# targets")))
    rows = lines[start + 1:start + 1 + len(TARGETS)]
    assert [row.split(None, 2)[2].split(":")[0] for row in rows] == [
        t.label.split(":")[0] for t in TARGETS]
    for row, target in zip(rows, TARGETS):
        server, verdict = row.split()[:2]
        assert server == "twistchat"
        if target.members == 100:  # not in the smoke sizes
            assert verdict == "unmeasured"
        else:
            assert verdict in ("met", "MISSED") and "vs_bare" in row, row


def _result(scenario: str, server: str, members: int = 100, rate: float | None = None,
            **figures: float) -> dict[str, Any]:
    return {"scenario": scenario, "server": server, "members": members, "rate": rate, **figures}


def test_check_targets_compares_with_bare_and_the_limits() -> None:
    results = [
        _result("latency", "twistchat", rate=1000, p99_ms=8.0, cpu_us_per_delivery=4.0),
        _result("latency", "bare", rate=1000, p99_ms=20.0, cpu_us_per_delivery=8.0),
        _result("fanout", "twistchat", members=10, deliveries_per_s=300.0),
        _result("fanout", "bare", members=10, deliveries_per_s=200.0),
        _result("idle", "twistchat", members=2000, rss_kib_per_member=30.0),
        _result("handshake", "twistchat", members=0, cpu_ms_per_login=1.5),
    ]
    rows = {row["target"]: row for row in check_targets(results)}
    p99 = rows["latency 1000/s into 100: p99 < 10 ms"]
    assert (p99["figure"], p99["bare"], p99["vs_bare"], p99["met"], p99["margin"]) == (
        8.0, 20.0, 0.4, True, 0.8)
    cpu = rows["latency 1000/s into 100: CPU/delivery <= 0.4 x bare"]
    assert (cpu["vs_bare"], cpu["met"], cpu["margin"]) == (0.5, False, 1.25)
    fan = rows["fanout at 10, history on: deliveries/s >= 1.0 x bare"]
    assert (fan["vs_bare"], fan["met"]) == (1.5, True)
    assert rows["fanout at 100, history on: deliveries/s >= 1.0 x bare"]["met"] is None
    assert rows["idle members: <= 24 KiB RSS each"]["met"] is False
    assert rows["server CPU per login <= 2 ms"]["met"] is True
    assert rows["latency 200/s into 100: p99 < 10 ms"]["met"] is None


def test_targets_say_in_how_many_runs_each_was_within_its_limit() -> None:
    """
    A median near a limit says little on a noisy machine: with the runs
    kept, each target also counts the runs within its limit, a relative
    one pairing each run with bare's of the same round.
    """
    runs = {
        "twistchat": [{"scenario": "latency", "server": "twistchat", "members": 100,
                       "rate": 1000, "p99_ms": p99, "cpu_us_per_delivery": cpu}
                      for p99, cpu in ((8.0, 4.0), (12.0, 5.0), (9.0, 3.0))],
        "bare": [{"scenario": "latency", "server": "bare", "members": 100, "rate": 1000,
                  "p99_ms": 20.0, "cpu_us_per_delivery": cpu} for cpu in (10.0, 10.0, 6.0)],
    }
    results = [median_result(runs["twistchat"]), median_result(runs["bare"])]
    assert results[0]["each"]["p99_ms"] == [8.0, 12.0, 9.0]
    rows = {row["target"]: row for row in check_targets(results)}
    assert rows["latency 1000/s into 100: p99 < 10 ms"]["each"] == [8.0, 12.0, 9.0]
    assert rows["latency 1000/s into 100: CPU/delivery <= 0.4 x bare"]["each"] == [
        0.4, 0.5, 0.5]
    lines = targets(results).splitlines()
    p99 = next(line for line in lines if "p99 < 10 ms" in line and "1000/s" in line)
    assert p99.split()[1] == "met"
    assert p99.endswith("within the limit in 2 of 3 runs (8 to 12)")
    cpu = next(line for line in lines if "1000/s into 100: CPU" in line)
    # The ratio of the medians (4 / 10) is within 0.4; the runs mostly were not.
    assert cpu.split()[1] == "met"
    assert cpu.endswith("within the limit in 1 of 3 runs (0.4 to 0.5)")
    single = median_result(runs["twistchat"][:1])
    assert "each" not in single
    assert check_targets([single])[0]["each"] is None


def test_variants_run_twistchat_with_more_options() -> None:
    config = cli.parse(["--targets", "--variant", "w0=--batch-window 0"])
    assert (config.mode, config.scenarios, config.servers, config.repeat) == (
        "targets", ["fanout", "latency", "idle", "handshake"], ["twistchat", "bare", "w0"], 5)
    assert cli.parse(["--targets", "--smoke"]).mode == "targets-smoke"
    assert relay.server_command("w0", Path("d"), ["--batch-window", "0"])[-2:] == [
        "--batch-window", "0"]
    for bad in ("bare=--history 0", "nameless", "w1=--port 1"):
        with pytest.raises(SystemExit):
            cli.parse(["--variant", bad])
    results = [_result("fanout", k, deliveries_per_s=v)
               for k, v in (("twistchat", 2.0), ("bare", 4.0), ("w0", 3.0))]
    add_ratios(results)
    assert results[2]["vs_bare"] == {"deliveries_per_s": 0.75}
    assert results[2]["vs_twistchat"] == {"deliveries_per_s": 1.5}
    assert "vs_twistchat" not in results[0]
def test_redis_servers_run_one_and_two_nodes_on_their_own_redis(tmp_path: Path) -> None:
    """
    C{--servers redis1,redis2}: the bench starts its own redis-server and
    one or two nodes on it (members split between them), and reports the
    same figures as for one process.
    """
    lines, results = run_smoke(tmp_path, "--scenarios", "fanout,latency",
                               "--servers", "redis1,redis2")
    seen = {(r["scenario"], r["server"]) for r in results}
    assert seen == {(s, k) for s in ("fanout", "latency") for k in ("redis1", "redis2")}
    for r in results:
        assert EXPECTED[r["scenario"]] <= set(r), r
        assert "--redis redis://127.0.0.1:" in r["server_options"]
        if r["scenario"] == "fanout":
            assert r["deliveries_per_s"] > 0 and r["sent"] > 0
        else:
            assert r["latency_samples"] > 0


@pytest_twisted.ensureDeferred
async def test_churn_names_differ_between_load_processes() -> None:
    """
    The handshake scenario's load processes (one per node with redis2) log
    members in under names no other load process uses: with Redis, a name is
    room-wide, and two processes counting the same names got "already taken"
    now and then (the one failed login in 17 seen with --servers redis2).
    The names each process tries are recorded through its C{connect}; the
    churn lasts a tenth of a second.
    """
    import time

    from twistchat.bench.load import Load
    from twisted.internet import defer, reactor, task

    tried: dict[int, list[str]] = {0: [], 1: []}

    class Logged:
        class transport:
            @staticmethod
            def loseConnection() -> None:
                pass

    class Recording(Load):
        def connect(self, name: str, room: str) -> defer.Deferred[Any]:
            tried[self.config["number"]].append(name)
            return task.deferLater(reactor, 0.001, Logged)

    end = time.monotonic() + 0.1
    await defer.gatherResults([
        Recording(reactor, {"kind": "twistchat", "number": number}).churn(0.0, end, 2, "main")
        for number in (0, 1)])
    assert tried[0] and tried[1]
    assert not set(tried[0]) & set(tried[1]), sorted(set(tried[0]) & set(tried[1]))[:3]



@needs_proc
def test_redis_workers2_runs_one_node_with_two_workers(tmp_path: Path) -> None:
    """
    C{--servers redis1,redis-workers2}: one twistd with C{--workers 2} on the
    bench's own redis-server, members on its one port landing on both
    workers, server CPU summed over the parent, its workers and
    redis-server; the figures are also given as ratios to C{redis1}'s.
    """
    lines, results = run_smoke(tmp_path, "--scenarios", "fanout", "--members", "12",
                               "--servers", "redis1,redis-workers2")
    by_server = {r["server"]: r for r in results}
    assert set(by_server) == {"redis1", "redis-workers2"}
    workers = by_server["redis-workers2"]
    assert "--workers 2" in workers["server_options"]
    assert "--workers" not in by_server["redis1"]["server_options"]
    assert workers["deliveries_per_s"] > 0 and workers["sent"] > 0
    # Both workers took members (their log lines), not one alone.
    assert 0 < workers["min_worker_share"] <= 0.5
    assert set(workers["vs_redis1"]) == {"deliveries_per_s", "cpu_us_per_delivery"}
    assert any(line.startswith("fanout") and "redis-workers2" in line and "xredis1" in line
               for line in lines), lines
