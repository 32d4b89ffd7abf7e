"""
twistchat-bench runs end to end: a tiny setting (--smoke) of every scenario,
against the real twistd plugin and a baseline, prints a table and one JSON line
per result with the expected figures and ratios. Nothing here is timed: the
figures themselves are for docs/performance.md, not for assertions.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from twistchat.bench import cli, relay
from twistchat.bench.results import METRICS

EXPECTED = {
    "fanout": {"deliveries_per_s", "cpu_us_per_delivery", "senders", "size", "sent"},
    "latency": {"p50_ms", "p99_ms", "max_ms", "rate", "cpu_us_per_delivery"},
    "idle": {"rss_kib_per_member", "admit_seconds", "room_size"},
    "handshake": {"logins_per_s", "cpu_ms_per_login", "logins"},
}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the bench reads /proc (Linux)")
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
