"""
C{twistd socketchat --redis URL --workers N}: N worker processes on one
machine share one listening port, each a node of the Redis group.

The parent binds the port (plain TCP) and passes the listening socket to each
worker as file descriptor 3 (C{spawnProcess}'s C{childFDs}); the worker is
C{twistd -n socketchat} with the parent's own options plus C{--worker-fd 3},
and adopts the socket (Twisted's C{AdoptedStreamServerEndpoint}, that is
C{reactor.adoptStreamPort}) with its own TLS on top. The kernel hands each new
connection to whichever worker accepts it first.

Why the parent passes the I{listening} socket rather than connections, and
not C{SO_REUSEPORT}: each worker terminates the TLS of its own connections,
which the login needs (the password handshake is bound to the TLS channel's
exporter value, so TLS must end in the process that checks the password); a
restarted worker takes the very same socket, so no connection waiting in the
backlog is refused meanwhile; and Twisted's TCP endpoints do not offer
C{SO_REUSEPORT}, whereas adopting a socket is Twisted's documented way to
share one between processes.

The parent supervises: a worker that ends while the parent runs is logged
and started again after a delay that doubles from L{FIRST_DELAY} to
L{MAX_DELAY} (back to the first after L{STABLE} seconds of running). SIGTERM
to the parent stops every worker with SIGTERM (each shuts down cleanly, as a
single server does) and waits for them, killing those still running after
L{STOP_TIMEOUT} seconds.

With C{shared_metrics} (C{--metrics}), the workers count into
prometheus_client's multiprocess mode: the parent makes a private temporary
directory for the metric files and gives it to every worker (the
C{PROMETHEUS_MULTIPROC_DIR} environment variable); when a worker ends, its
live gauges are dropped from that directory (C{mark_process_dead}) while its
counters stay in the sums; the directory is removed when the pool stops. The
parent serves them (L{twistchat.server.metrics.WorkersMetricsService}). A
parent killed with SIGKILL cannot remove its directory, so it holds a lock
in it (C{flock}, which the system lets go of when the process ends, however
it ends) and a pool that starts removes the directories whose lock it can
take (L{remove_abandoned}). A process id would not do: a C{$TMPDIR} shared
by containers holds directories of parents that another PID namespace runs.

Each line a worker logs is logged again by the
parent under the worker's number (C{[worker-2#info] ...}), so one log reads
as one server's. A worker whose parent dies (its standard input closes)
stops too.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Sequence
from typing import IO, Any

from twisted.application import service
from twisted.internet import defer, protocol, stdio
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from twistchat.server.service import CannotStart

#: Seconds before the first restart of a worker; each further one doubles it.
FIRST_DELAY = 1.0
MAX_DELAY = 30.0
#: A worker that ran this long is restarted after FIRST_DELAY again.
STABLE = 60.0
#: Seconds the workers have to stop after SIGTERM before they are killed.
STOP_TIMEOUT = 30.0
#: The file descriptor a worker finds the listening socket on.
WORKER_FD = 3
#: The start of the name of a pool's metrics directory.
METRICS_PREFIX = "twistchat-metrics-"
#: The file in it that its pool holds locked while it runs.
METRICS_LOCK = ".pool.lock"

# A twistd log line: time, [namespace#level], text.
_LINE = re.compile(r"^\S+ \[([^\]#]*)#?(\w*)\] (.*)$")
_LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
           "error": LogLevel.error, "critical": LogLevel.critical}


def worker_arguments(argv: Sequence[str]) -> list[str]:
    """
    The options a worker runs with: the parent's, without C{--workers}, with
    C{--worker-fd}.
    """
    args: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            args.append(arg)
    return [*args, "--worker-fd", str(WORKER_FD)]


def twistd_command(arguments: Sequence[str]) -> list[str]:
    """
    C{twistd -n socketchat ARGUMENTS} with this interpreter, logging to
    standard output, without a pid file (the parent has that).
    """
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", "--logfile=-", "socketchat", *arguments]


class _Worker(protocol.ProcessProtocol):
    """
    One worker process: its output logged under its number, its end reported.
    """

    def __init__(self, pool: WorkerPool, number: int) -> None:
        self.pool = pool
        self.number = number
        self.log = Logger(namespace=f"worker-{number}")
        self.started = pool.clock.seconds()
        self.pid: int | None = None
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._partial = {1: b"", 2: b""}

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        lines = (self._partial.get(childFD, b"") + data).split(b"\n")
        self._partial[childFD] = lines.pop()
        for line in lines:
            self._relog(line.decode("utf-8", "replace").rstrip("\r"))

    def _relog(self, line: str) -> None:
        if not line:
            return
        match = _LINE.match(line)
        if match is None:
            self.log.info("{line}", line=line)
        else:
            level = _LEVELS.get(match.group(2), LogLevel.info)
            self.log.emit(level, "{line}", line=match.group(3))

    def processEnded(self, reason: Failure) -> None:
        for rest in self._partial.values():
            if rest:
                self._relog(rest.decode("utf-8", "replace"))
        self._partial = {}
        self.pool.ended(self, reason)
        self.ended.callback(None)


class WorkerPool(service.Service):
    """
    The parent of C{--workers N}: binds the port, runs and supervises the
    workers (see the module docstring).

    @param arguments: the options each worker runs with (see
        L{worker_arguments}).
    @param check: run once at start before anything is bound (the Redis
        probe); it raises L{CannotStart} to stop the start.
    @param shared_metrics: give the workers a directory for their metrics
        (prometheus_client's multiprocess mode; see the module docstring).
    @ivar metrics_dir: that directory while the pool runs, else None.
    @ivar restarts: workers that ended while the pool ran and were (or are
        about to be) started again, since the pool was made.
    """

    log = Logger()

    def __init__(self, reactor: Any, count: int, interface: str, port: int,
                 arguments: Sequence[str], env: dict[str, str],
                 err: IO[str] | None = None, check: Any = None,
                 shared_metrics: bool = False) -> None:
        self.reactor: IReactorProcess = reactor
        self.clock: IReactorTime = reactor
        self.count = count
        self.interface = interface
        self.port = port
        self.command = twistd_command(arguments)
        self.env = {**env, "PYTHONUNBUFFERED": "1"}
        self.err = sys.stderr if err is None else err
        self.check = check
        self.shared_metrics = shared_metrics
        self.metrics_dir: str | None = None
        self._metrics_lock: int | None = None
        self.socket: socket.socket | None = None
        self.workers: dict[int, _Worker] = {}
        self._delays: dict[int, float] = {}
        # The delayed calls that will start an ended worker again, by number.
        self._starting: dict[int, IDelayedCall] = {}
        self.restarts = 0

    def startService(self) -> None:
        """
        Bind the port and start the workers.

        @raise CannotStart: if the port cannot be bound (or C{check} fails);
            its line is written to C{err} and logged.
        """
        if self.check is not None:
            self.check()
        family = socket.AF_INET6 if ":" in self.interface else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.interface, self.port))
            listener.listen(socket.SOMAXCONN)
        except OSError as e:
            listener.close()
            place = f"{self.interface}:{self.port}" if self.interface else f"port {self.port}"
            stop = CannotStart(f"cannot listen on {place}: {e.strerror or e}", reported=True)
            self.log.error("{line}", line=stop.line)
            self.err.write(stop.line + "\n")
            self.err.flush()
            raise stop from None
        listener.setblocking(False)
        listener.set_inheritable(True)
        self.socket = listener
        if self.shared_metrics:
            from twistchat.server.metrics import MULTIPROC_ENV

            for gone in remove_abandoned(tempfile.gettempdir()):
                self.log.info("workers: removed {folder}, left by a parent that is gone",
                              folder=gone)
            self.metrics_dir = tempfile.mkdtemp(prefix=METRICS_PREFIX)
            self._metrics_lock = _hold_lock(self.metrics_dir)
            self.env[MULTIPROC_ENV] = self.metrics_dir
        super().startService()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        self.log.info("workers: port {port} shared by {count} worker processes",
                      port=listener.getsockname()[1], count=self.count)
        for number in range(1, self.count + 1):
            self._spawn(number)

    def _spawn(self, number: int) -> None:
        self._starting.pop(number, None)
        if not self.running or self.socket is None:
            return
        worker = _Worker(self, number)
        process = self.reactor.spawnProcess(
            worker, self.command[0], self.command, env=self.env,
            childFDs={0: "w", 1: "r", 2: "r", WORKER_FD: self.socket.fileno()},
        )
        worker.pid = process.pid
        self.workers[number] = worker
        self.log.info("workers: worker {number} started (pid {pid})",
                      number=number, pid=process.pid)

    def ended(self, worker: _Worker, reason: Failure) -> None:
        if self.workers.get(worker.number) is worker:
            del self.workers[worker.number]
        if self.metrics_dir is not None and worker.pid is not None:
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(worker.pid, self.metrics_dir)  # type: ignore[no-untyped-call]
        status = getattr(reason.value, "exitCode", None)
        signal = getattr(reason.value, "signal", None)
        how = f"signal {signal}" if signal is not None else f"status {status}"
        if not self.running:
            self.log.info("workers: worker {number} stopped ({how})",
                          number=worker.number, how=how)
            return
        ran = self.clock.seconds() - worker.started
        delay = FIRST_DELAY if ran >= STABLE else self._delays.get(worker.number, FIRST_DELAY)
        self._delays[worker.number] = min(delay * 2, MAX_DELAY)
        self.restarts += 1
        self.log.error("workers: worker {number} ended ({how}) after {ran:.0f} s; "
                       "starting it again in {delay:.0f} s",
                       number=worker.number, how=how, ran=ran, delay=delay)
        self._starting[worker.number] = self.clock.callLater(delay, self._spawn, worker.number)

    def stopService(self) -> defer.Deferred[None]:
        """
        SIGTERM every worker and wait for them all (SIGKILL after
        L{STOP_TIMEOUT} seconds); then close the socket.
        """
        super().stopService()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        for call in self._starting.values():
            if call.active():
                call.cancel()
        self._starting = {}
        waits = []
        for worker in list(self.workers.values()):
            self._signal(worker, "TERM")
            killer = self.clock.callLater(STOP_TIMEOUT, self._signal, worker, "KILL")
            worker.ended.addCallback(_cancel, killer)
            waits.append(worker.ended)

        def close(_: Any) -> None:
            if self.socket is not None:
                self.socket.close()
                self.socket = None
            folder, self.metrics_dir = self.metrics_dir, None
            if self._metrics_lock is not None:
                os.close(self._metrics_lock)
                self._metrics_lock = None
            if folder is not None:
                try:
                    shutil.rmtree(folder)
                except OSError as e:
                    self.log.warn("workers: cannot remove the metrics directory {folder}: "
                                  "{reason}", folder=folder, reason=e.strerror or str(e))

        return defer.gatherResults(waits).addCallback(close)

    @staticmethod
    def _signal(worker: _Worker, name: str) -> None:
        transport = worker.transport
        if transport is not None and getattr(transport, "pid", None) is not None:
            try:
                transport.signalProcess(name)
            except OSError:
                pass  # it ended meanwhile


def _hold_lock(folder: str) -> int | None:
    """
    Lock L{METRICS_LOCK} in C{folder} for as long as this process runs (or
    until the descriptor returned is closed). None if it cannot be: the
    directory then only lacks the mark that lets a later pool clean it up.
    """
    lock = os.path.join(folder, METRICS_LOCK)
    try:
        fd = os.open(lock + ".new",
                     os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Locked before it has its name: no other pool can find it unlocked.
        os.rename(lock + ".new", lock)
    except OSError:
        os.close(fd)
        return None
    return fd


def remove_abandoned(folder: str) -> list[str]:
    """
    Remove the metrics directories in C{folder} that pools made and left
    behind (their parent was killed before it could remove them): those
    whose L{METRICS_LOCK} nobody holds.

    Only directories (not links) named L{METRICS_PREFIX}..., owned by this
    user and holding the lock file, are looked at; one whose lock is held (a
    running pool, in this PID namespace or another) is left alone.

    @return: the directories removed.
    """
    removed: list[str] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(METRICS_PREFIX):
            continue
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            if entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
            fd = os.open(os.path.join(entry.path, METRICS_LOCK),
                         os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # gone meanwhile, or no lock file: not known to be abandoned
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # held: its pool runs
        else:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
        finally:
            os.close(fd)
    return removed


def _cancel(_: None, call: IDelayedCall) -> None:
    if call.active():
        call.cancel()


class _ParentWatch(protocol.Protocol):
    """
    Stops a worker's reactor when its standard input (the parent's pipe)
    closes: the parent is gone.
    """

    log = Logger()

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self.reactor.running:
            self.log.warn("workers: the parent process is gone; stopping")
            self.reactor.stop()


class ParentWatchService(service.Service):
    """
    In a worker: watch standard input for the parent's end.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        # Standard output stays the log's: StandardIO writes to /dev/null.
        # (Typed from the Windows variant, which takes no descriptors.)
        stdio.StandardIO(  # type: ignore[call-arg]
            _ParentWatch(self.reactor), stdin=0,
            stdout=os.open(os.devnull, os.O_WRONLY), reactor=self.reactor)
