"""
C{--workers}: its options and the parent's restart delays (with a
L{task.Clock}); tests/test_redis.py runs real workers.
"""

from __future__ import annotations

import fcntl
import io
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import pytest
from twistchat.server import workers
from twistchat.server.workers import WorkerPool, worker_arguments
from twistchat.tap import Options
from twisted.internet import error, task
from twisted.python import usage
from twisted.python.failure import Failure


def parse(data_dir: Path, *args: str) -> Options:
    options = Options()
    options.out = io.StringIO()
    options.err = io.StringIO()
    options.environ = {}
    options.parseOptions(["--data-dir", str(data_dir), "--password", "pw for tests", *args])
    return options


@pytest.mark.parametrize(("args", "message"), [
    (["--workers", "2"], "--workers needs --redis"),
    (["--workers", "-1"], "must not be negative"),
    (["--workers", "2", "--redis", "redis://127.0.0.1/0", "--listen", "tcp:0"],
     "not --listen"),
    (["--workers", "2", "--redis", "redis://127.0.0.1/0", "--worker-fd", "3"],
     "not both"),
])
def test_bad_worker_options(tmp_path: Path, args: list[str], message: str) -> None:
    with pytest.raises(usage.UsageError, match=message):
        parse(tmp_path, *args)


def test_workers_get_the_parents_options_and_the_socket() -> None:
    argv = ["--port", "7777", "--workers", "4", "--redis", "redis://h/0", "--workers=3"]
    assert worker_arguments(argv) == [
        "--port", "7777", "--redis", "redis://h/0", "--worker-fd", str(workers.WORKER_FD)]


class _Process:
    pid = 1234


class _Reactor(task.Clock):
    """
    A clock that records the processes it is asked to spawn.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[Any] = []

    def spawnProcess(self, protocol: Any, *args: Any, **kwargs: Any) -> _Process:
        self.spawned.append(protocol)
        return _Process()


def test_a_dying_worker_is_restarted_with_backoff(tmp_path: Path) -> None:
    reactor = _Reactor()
    pool = WorkerPool(reactor, 1, "127.0.0.1", 0, [], {}, err=io.StringIO())
    pool.startService()
    try:
        delays = []
        for _ in range(7):
            worker = reactor.spawned[-1]
            worker.processEnded(Failure(error.ProcessTerminated(signal=9)))
            before = len(reactor.spawned)
            delay = reactor.getDelayedCalls()[0].getTime() - reactor.seconds()
            delays.append(delay)
            reactor.advance(delay)
            assert len(reactor.spawned) == before + 1
        assert delays == [1, 2, 4, 8, 16, 30, 30]
        assert pool.restarts == 7
        # A worker that ran for a while starts again after the first delay.
        reactor.advance(workers.STABLE)
        reactor.spawned[-1].processEnded(Failure(error.ProcessTerminated(exitCode=1)))
        assert reactor.getDelayedCalls()[0].getTime() - reactor.seconds() == 1
    finally:
        pool.running = False
        for call in reactor.getDelayedCalls():
            call.cancel()
        assert pool.socket is not None
        pool.socket.close()


def test_shared_metrics_dir_keeps_counters_and_drops_a_dead_workers_gauges() -> None:
    """
    With shared metrics the workers get a private directory in their
    environment; a worker that ends loses its live gauges there (not its
    counters); the directory goes when the pool stops.
    """
    from twistchat.server.metrics import MULTIPROC_ENV

    reactor = _Reactor()
    pool = WorkerPool(reactor, 1, "127.0.0.1", 0, [], {}, err=io.StringIO(),
                      shared_metrics=True)
    pool.startService()
    folder = Path(pool.metrics_dir or "")
    assert pool.env[MULTIPROC_ENV] == str(folder) and folder.is_dir()
    assert folder.stat().st_mode & 0o077 == 0
    pid = _Process.pid
    for name in (f"gauge_livesum_{pid}.db", f"gauge_livemax_{pid}.db",
                 f"counter_{pid}.db", f"histogram_{pid}.db", "gauge_livesum_99.db"):
        (folder / name).write_bytes(b"")
    reactor.spawned[-1].processEnded(Failure(error.ProcessTerminated(signal=9)))
    assert sorted(p.name for p in folder.iterdir()) == [
        workers.METRICS_LOCK, f"counter_{pid}.db", "gauge_livesum_99.db", f"histogram_{pid}.db"]
    reactor.advance(workers.FIRST_DELAY)
    stopped = pool.stopService()
    reactor.spawned[-1].processEnded(Failure(error.ProcessTerminated(exitCode=0)))
    assert stopped.called
    assert pool.restarts == 1  # a worker stopped with the pool is not restarted
    assert not folder.exists() and pool.metrics_dir is None
    for call in reactor.getDelayedCalls():
        call.cancel()


def test_metrics_dirs_of_parents_that_are_gone_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A parent killed with SIGKILL leaves its metrics directory with its lock
    let go: the next pool to start removes it. A directory whose lock is
    held (a pool that runs, here or in another PID namespace), one without
    the lock file, a link and a file are left alone; the new pool holds the
    lock of its own, so a third pool leaves that one too.
    """
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    prefix = workers.METRICS_PREFIX

    def made(name: str, lock: bool = True) -> Path:
        folder = tmp_path / f"{prefix}{name}"
        folder.mkdir()
        (folder / "counter_1.db").write_bytes(b"x")
        if lock:
            (folder / workers.METRICS_LOCK).write_bytes(b"")
        return folder

    gone, running, old = made("gone"), made("running"), made("old", lock=False)
    held = os.open(running / workers.METRICS_LOCK, os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    link = tmp_path / f"{prefix}link"
    link.symlink_to(gone)
    afile = tmp_path / f"{prefix}file"
    afile.write_text("")
    pools = []
    try:
        for _ in range(2):
            reactor = _Reactor()
            pool = WorkerPool(reactor, 1, "127.0.0.1", 0, [], {}, err=io.StringIO(),
                              shared_metrics=True)
            pool.startService()
            pools.append((pool, reactor))
            assert not gone.exists()
            assert running.is_dir() and old.is_dir() and afile.is_file() and link.is_symlink()
        assert all(Path(p.metrics_dir or "").is_dir() for p, _ in pools)
    finally:
        os.close(held)
        for pool, reactor in pools:
            stopped = pool.stopService()
            reactor.spawned[-1].processEnded(Failure(error.ProcessTerminated(exitCode=0)))
            assert stopped.called and pool.metrics_dir is None
            for call in reactor.getDelayedCalls():
                call.cancel()
    # Once its pool let go of it, a directory is the next pool's to remove.
    assert workers.remove_abandoned(str(tmp_path)) == [str(running)]


def test_a_worker_counts_metrics_only_for_its_parent(tmp_path: Path) -> None:
    """
    C{--worker-fd} with C{--metrics} counts into the parent's directory; without
    it (not started by C{--workers}) it is refused rather than counting for
    nobody.
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        args = ["--redis", "redis://127.0.0.1/0", "--worker-fd", str(listener.fileno()),
                "--metrics", "tcp:0:interface=127.0.0.1"]
        with pytest.raises(usage.UsageError, match="PROMETHEUS_MULTIPROC_DIR"):
            parse(tmp_path, *args)
