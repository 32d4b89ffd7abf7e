"""
Operator endpoints (twistchat.server.metrics) and JSON logs (twistchat.logs):
the real C{twistd socketchat --metrics} scraped over HTTP on 127.0.0.1 while
real clients log in, chat and fail; C{/healthz} while the history file is
locked by another process; C{twistd --logger twistchat.logs.json_observer}.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twistchat.bench.processes import ServerProcess, socketchat_command
from twistchat.logs import FIELDS, RECORD_SEPARATOR
from twistchat.server.history import HISTORY_FILE
from twistchat.server.metrics import ERROR_EVENT, ErrorCounter, HealthPage, Metrics
from twistchat.tap import Options
from twisted.internet import defer, task
from twisted.python import usage
from twisted.web.test.requesthelper import DummyRequest

from .test_e2e import REPLY_TEXT, SECRET_TEXT, Client, Server, env

ROOM = "lighthouse-seven"
PASSWORD = "correct horse battery staple 42"
WRONG = "not the password 17"
METRICS_AT = r"metrics and health on port (\d+)"


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    """
    GET C{path} from the metrics endpoint: (status, body).
    """
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=15) as answer:
            return answer.status, answer.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """
    The exposition parsed by prometheus_client's own parser: value by
    (sample name, labels).
    """
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def until(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """
    Poll C{check} (each poll is a real request, which takes its own time)
    until it is true; fail after C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "password"
    path.write_text(PASSWORD + "\n")
    return path


def test_metrics_move_with_real_clients(tmp_path: Path, password_file: Path) -> None:
    server = Server(tmp_path, "--room", ROOM, "--password-file", str(password_file),
                    "--metrics", "tcp:0:interface=127.0.0.1")
    try:
        port = int(server.log.wait_for(METRICS_AT).group(1))
        quinn = Client(tmp_path, server.port, "quinn", password=PASSWORD, room=ROOM)
        quinn.out.wait_for("connected — you can start sending messages")
        rafe = Client(tmp_path, server.port, "rafe", password=PASSWORD, room=ROOM)
        rafe.out.wait_for("connected — you can start sending messages")
        quinn.out.wait_for(r"\* rafe .* entered the room")
        quinn.say(SECRET_TEXT)
        rafe.out.wait_for(re.escape(SECRET_TEXT))
        rafe.say(REPLY_TEXT)
        quinn.out.wait_for(re.escape(REPLY_TEXT))
        mallory = Client(tmp_path, server.port, "mallory", password=WRONG, room=ROOM)
        assert mallory.finish() == 1
        # A second quinn is refused with an error (mallory's client gave up by itself).
        again = Client(tmp_path, server.port, "quinn", password=PASSWORD, room=ROOM)
        assert again.finish() == 1

        status, text = scrape(port)
        assert status == 200
        got = samples(text)
        assert got["twistchat_logins_total", (("result", "ok"),)] == 2
        assert got["twistchat_logins_total", (("result", "failed"),)] == 1
        assert got["twistchat_errors_sent_total", (("code", "name-taken"),)] == 1
        assert got["twistchat_messages_accepted_total", ()] == 2
        assert got["twistchat_deliveries_total", ()] == 2  # one recipient each
        assert got["twistchat_message_sent_bytes_total", ()] == \
            got["twistchat_message_received_bytes_total", ()] > 0
        assert got["twistchat_history_rows_stored_total", ()] == 2
        assert got["twistchat_history_store_failures_total", ()] == 0
        assert got["twistchat_relay_delay_seconds_count", ()] == 2
        assert got["twistchat_history_store_seconds_count", ()] >= 1
        assert got["twistchat_login_duration_seconds_count", ()] == 2
        assert got["twistchat_connections", (("state", "member"),)] == 2
        assert got["twistchat_rooms", ()] == 1
        assert got["twistchat_members", ()] == 2
        assert got["twistchat_history_failing", ()] == 0
        assert got["twistchat_send_queue_bytes", ()] == 0

        # Nothing private: no password, text, member or room name.
        for private in (PASSWORD, WRONG, SECRET_TEXT, REPLY_TEXT, "quinn", "rafe", "mallory",
                        ROOM, "127.0.0.1"):
            assert private not in text, private

        promtool = shutil.which("promtool")
        assert promtool, "promtool is missing: tests/system-packages.sh installs it"
        check = subprocess.run([promtool, "check", "metrics"], input=text,
                               capture_output=True, text=True, timeout=60, check=False)
        assert check.returncode == 0, check.stdout + check.stderr

        assert rafe.finish() == 0
        quinn.out.wait_for(r"\* rafe .* left the room")
        _, text = scrape(port)
        assert samples(text)["twistchat_members", ()] == 1
        assert quinn.finish() == 0
    finally:
        assert server.stop()
    assert "Traceback" not in "\n".join(server.log.seen)


def test_room_names_only_when_asked(tmp_path: Path, password_file: Path) -> None:
    server = Server(tmp_path, "--room", ROOM, "--password-file", str(password_file),
                    "--metrics", "tcp:0:interface=127.0.0.1", "--metrics-room-names")
    try:
        port = int(server.log.wait_for(METRICS_AT).group(1))
        _, text = scrape(port)
        assert samples(text)["twistchat_room_members", (("room", ROOM),)] == 0
    finally:
        assert server.stop()


def test_healthz_follows_the_history_store(tmp_path: Path, password_file: Path) -> None:
    server = Server(tmp_path, "--password-file", str(password_file),
                    "--metrics", "tcp:0:interface=127.0.0.1")
    try:
        port = int(server.log.wait_for(METRICS_AT).group(1))
        assert scrape(port, "/healthz") == (200, "ok\n")
        # Another process holds the history file's write lock: every write
        # the server tries fails as "locked" after its busy timeout.
        lock = sqlite3.connect(server.data / HISTORY_FILE, isolation_level=None)
        try:
            lock.execute("BEGIN EXCLUSIVE")
            status, body = scrape(port, "/healthz")
            assert status == 503
            assert body == "history store: database is locked\n"
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        assert scrape(port, "/healthz") == (200, "ok\n")
    finally:
        assert server.stop()


def test_json_logs_through_twistd_logger(tmp_path: Path, password_file: Path) -> None:
    command = socketchat_command("--data-dir", str(tmp_path / "data"), "--room", ROOM,
                                 "--password-file", str(password_file))
    at = command.index("-n")
    command[at:at] = ["--logger", "twistchat.logs.json_observer"]
    json_server = ServerProcess(command, tmp_path, env(tmp_path))
    try:
        alice = Client(tmp_path, json_server.port, "alice", password=PASSWORD, room=ROOM)
        alice.out.wait_for("connected — you can start sending messages")
        alice.say(SECRET_TEXT)
        eve = Client(tmp_path, json_server.port, "eve", password=WRONG, room=ROOM)
        assert eve.finish() == 1
        json_server.log.wait_for("twistchat.login_failed")
        assert alice.finish() == 0
        json_server.log.wait_for("twistchat.logout")
    finally:
        json_server.stop()
    records = [json.loads(line[1:]) for line in json_server.log.seen
               if line.startswith(RECORD_SEPARATOR)]
    assert len(records) > 5
    keys = {"time", "level", "namespace", "event", "format", "text", "failure", *FIELDS}
    assert all(set(r) == keys for r in records)
    by_event = {r["event"]: r for r in records if r["event"]}
    login, failed = by_event["twistchat.login"], by_event["twistchat.login_failed"]
    assert (login["room"], login["name"], login["level"]) == (ROOM, "alice", "info")
    assert re.fullmatch(r"127\.0\.0\.1, \d+", login["peer"])
    assert (failed["room"], failed["name"]) == (ROOM, "eve")
    assert by_event["twistchat.logout"]["namespace"] == \
        "twistchat.server.protocol.ChatServerProtocol"
    log = "\n".join(json_server.log.seen)
    for private in (PASSWORD, WRONG, SECRET_TEXT):
        assert private not in log


@pytest.mark.parametrize("args", [
    ["--port", "7777", "--metrics", "tcp:7777:interface=127.0.0.1"],
    ["--listen", "tcp:7000", "--metrics", "tcp:port=7000"],
    ["--metrics-room-names"],
    ["--metrics", "nonsense:1"],
])
def test_metrics_option_mistakes(tmp_path: Path, password_file: Path, args: list[str]) -> None:
    options = Options()
    with pytest.raises(usage.UsageError, match="metrics"):
        options.parseOptions(["--data-dir", str(tmp_path / "data"),
                              "--password-file", str(password_file), *args])


def test_health_not_listening_and_late_probe() -> None:
    clock = task.Clock()
    listening = [False]
    probe: defer.Deferred[None] = defer.Deferred()
    page = HealthPage(clock, lambda: listening[0], lambda: probe, limit=4)
    request = DummyRequest([b""])
    assert page.render_GET(request) == b"not listening\n"  # type: ignore[arg-type]
    assert request.responseCode == 503
    listening[0] = True
    late = DummyRequest([b""])
    page.render_GET(late)  # type: ignore[arg-type]
    clock.advance(3.9)
    assert not late.finished
    clock.advance(0.1)
    assert late.responseCode == 503
    assert b"".join(late.written) == b"history store: no answer within 4 s\n"
    probe.callback(None)  # too late: answered already, nothing more happens


def test_errors_counted_from_the_log_event_by_code() -> None:
    """
    The observer counts the protocol's error event by code; a C{slow} one is
    also a slow reader dropped. Other events are ignored.
    """
    metrics = Metrics()
    count = ErrorCounter(metrics)
    for code in ("slow", "slow", "timeout"):
        count({"event": ERROR_EVENT, "code": code, "log_format": "x"})
    count({"code": "busy", "log_format": "no event name"})
    got = samples(generate_latest(metrics.registry).decode("utf-8"))
    assert got["twistchat_errors_sent_total", (("code", "slow"),)] == 2
    assert got["twistchat_errors_sent_total", (("code", "timeout"),)] == 1
    assert ("twistchat_errors_sent_total", (("code", "busy"),)) not in got
    assert got["twistchat_slow_readers_dropped_total", ()] == 2


def test_health_of_workers_says_how_many_listen() -> None:
    """
    The parent of C{--workers} answers 503 with how many workers listen,
    from their sampled gauges, until all of them do.
    """
    from twistchat.server.metrics import WorkersMetricsService

    class Link:
        def probe(self) -> defer.Deferred[None]:
            return defer.succeed(None)

    listening = [1]
    service = WorkersMetricsService(
        None, "tcp:0", task.Clock(), 2, lambda: None, Link(), lambda: 0)  # type: ignore[arg-type]
    service.collector.listening = lambda: listening[0]  # type: ignore[method-assign]
    page = service.site.resource.children[b"healthz"]
    request = DummyRequest([b""])
    assert page.render_GET(request) == b"1 of 2 workers listening\n"
    assert request.responseCode == 503
    listening[0] = 2
    request = DummyRequest([b""])
    page.render_GET(request)
    assert request.finished and b"".join(request.written) == b"ok\n"
