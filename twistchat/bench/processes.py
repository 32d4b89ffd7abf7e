"""
Child processes of twistchat-bench and of the end-to-end tests.

L{ServerProcess} starts a server command that prints C{listening on port N}
(the real C{twistd -n socketchat}, built by L{socketchat_command}, or a
baseline relay), waits for that line and reads the port from it, and stops
the server with SIGTERM, then SIGKILL. L{Lines} collects a child's output lines in a
background thread, so that a child never blocks on a full pipe and a caller
waits for a line with a timeout. L{LoadProcess} is one load process of the
relay scenarios (L{twistchat.bench.load}), driven by JSON lines;
L{run_clients} runs the client-library members of one scenario
(L{twistchat.bench.clients}) and returns their figures.

Everything here is bounded: every wait has a timeout, and a server that does
not start in time is killed before the error is raised.
"""

from __future__ import annotations

import json
import os
import queue
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from twistchat.config import PASSWORD_ENV

#: The line every server of the bench prints once it listens.
LISTENING = r"listening on port (\d+)"
#: Seconds a server may take to print L{LISTENING}.
START_TIMEOUT = 60.0
#: Seconds a server may take to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 20.0
#: Seconds a load process may take to answer one command.
STEP_TIMEOUT = 300.0


class BenchError(Exception):
    """
    A child process did not do what it was started for (or a setting cannot
    be run); the message says what, for the command's user.
    """


class LineNotSeen(BenchError, AssertionError):
    """
    A line was not printed in time; the message holds what was printed. (Also
    an C{AssertionError}: a test that waits for a line fails as an assertion.)
    """


class Lines:
    """
    Collect a stream's lines in a background thread; wait for one with a timeout.

    @ivar seen: the lines taken from the stream so far, in order.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._ended = False
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _take(self, timeout: float) -> bool:
        """
        Move one line to L{seen}, waiting at most C{timeout} seconds.

        @return: False at the end of the stream or when nothing came in time.
        """
        if self._ended:
            return False
        try:
            line = (self._queue.get(timeout=max(0.0, timeout)) if timeout
                    else self._queue.get_nowait())
        except queue.Empty:
            return False
        if line is None:
            self._ended = True
            return False
        self.seen.append(line)
        return True

    def wait_for(self, pattern: str, timeout: float = 30, after: int = 0) -> re.Match[str]:
        """
        The first line, seen or still to come, that matches C{pattern}; with
        C{after}, the first after the first C{after} lines (C{len(seen)} taken
        earlier: a line printed since).

        @raise LineNotSeen: when the stream ends, or C{timeout} seconds pass,
            before such a line.
        """
        deadline = time.monotonic() + timeout
        for line in self.seen[after:]:
            if (match := re.search(pattern, line)):
                return match
        while self._take(max(0.01, deadline - time.monotonic())):
            if (match := re.search(pattern, self.seen[-1])):
                return match
            if time.monotonic() >= deadline:
                break
        raise LineNotSeen(f"{pattern!r} not seen; got:\n" + "\n".join(self.seen))

    def rest(self, timeout: float = 10) -> list[str]:
        """
        Every line until the stream ends, or until C{timeout} seconds pass.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._ended:
            self._take(min(0.1, max(0.0, deadline - time.monotonic())) or 0.01)
        return self.seen

    def count(self, text: str) -> int:
        """
        How many lines printed so far contain C{text} (without waiting).
        """
        while self._take(0):
            pass
        return sum(text in line for line in self.seen)


def socketchat_command(*options: str, python: str | None = None) -> list[str]:
    """
    The command line of C{twistd -n socketchat} on 127.0.0.1, on a port the
    system picks, with no pid file, then C{options}.

    @param python: the interpreter whose twistchat to run (by default this
        one); its C{twistd} script is used where it has one.
    """
    interpreter = Path(python or sys.executable)
    script = interpreter.with_name("twistd")
    runner = [str(script)] if script.exists() else [
        str(interpreter), "-c", "from twisted.scripts.twistd import run; run()"]
    return [*runner, "-n", "--pidfile=", "socketchat", "--port", "0",
            "--interface", "127.0.0.1", *options]


def start_twistd(workdir: Path, password: str, *options: str) -> ServerProcess:
    """
    C{twistd -n socketchat} (see L{socketchat_command}) for room C{main} with
    C{password}, its data in C{workdir/data}.

    @raise LineNotSeen: when it does not start.
    """
    env = {**os.environ, PASSWORD_ENV: password}
    command = socketchat_command("--data-dir", str(workdir / "data"), *options)
    return ServerProcess(command, workdir, env)


class ServerProcess:
    """
    A server in its own process, listening on the port its output names.

    @ivar process: the child.
    @ivar log: its output (stdout and stderr), as L{Lines}.
    @ivar port: the port it listens on.
    """

    def __init__(self, command: Sequence[str], cwd: Path, env: dict[str, str] | None = None,
                 timeout: float = START_TIMEOUT, pass_fds: Sequence[int] = ()) -> None:
        """
        Start C{command} and wait for its L{LISTENING} line.

        @param pass_fds: file descriptors the child inherits (as
            L{subprocess.Popen}'s C{pass_fds}), e.g. a listening socket.

        @raise LineNotSeen: when the server exits or does not listen within
            C{timeout} seconds; it is killed first.
        """
        self.process = subprocess.Popen(
            list(command), cwd=cwd, env=env, text=True, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=pass_fds,
        )
        assert self.process.stdout is not None
        self.log = Lines(self.process.stdout)
        try:
            self.port = int(self.log.wait_for(LISTENING, timeout).group(1))
        except BaseException:
            # Not started in time, or interrupted: leave nothing running.
            self.kill()
            raise

    @property
    def pid(self) -> int:
        """
        The process id of the server itself (what to measure).
        """
        return self.process.pid

    def terminate(self) -> None:
        """
        Ask the server to shut down (SIGTERM).
        """
        self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """
        SIGTERM, then wait; SIGKILL if it is still running after C{timeout}
        seconds. Then L{log} takes the rest of its output (for 2 s at most).

        @return: True if it exited by itself with status 0 or by the SIGTERM
            (twistd re-raises SIGTERM after its clean shutdown), False if it
            had to be killed or failed.
        """
        if self.process.poll() is None:
            self.terminate()
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return False
        finally:
            self.log.rest(timeout=2)
        return status in (0, -signal.SIGTERM)

    def kill(self) -> None:
        """
        SIGKILL, and wait for the process to go.
        """
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


class RedisProcess:
    """
    A redis-server of the bench's own on 127.0.0.1 (a free port), its files
    in C{folder}: append-only file with C{appendfsync everysec}, as a
    deployment would run it.

    @raise BenchError: when redis-server is missing or does not start.
    """

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise BenchError("redis-server is missing (Debian package redis-server)")
        folder.mkdir(parents=True, exist_ok=True)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(folder),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", ""],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            stdin=subprocess.DEVNULL,
        )
        assert self.process.stdout is not None
        self.log = Lines(self.process.stdout)
        try:
            self.log.wait_for("Ready to accept connections", START_TIMEOUT)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def raise_fd_limit() -> int:
    """
    Raise this process's open-files limit to its hard limit (children
    inherit it).

    @return: the limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class LoadProcess:
    """
    One load process (L{twistchat.bench.load}), driven by JSON lines.
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
        """
        The next reply.

        @raise BenchError: when none comes within C{timeout} seconds, or the
            reply is an error.
        """
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            raise BenchError("a load process stopped answering")
        reply: dict[str, Any] = json.loads(line)
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


def run_clients(scenario: str, config: dict[str, Any], timeout: float) -> dict[str, Any]:
    """
    Run scenario C{scenario} of L{twistchat.bench.clients} and wait for it.

    @return: its figures.
    @raise BenchError: when it fails, or takes more than C{timeout} seconds.
    """
    try:
        done = subprocess.run(
            [sys.executable, "-m", "twistchat.bench.clients", scenario, json.dumps(config)],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"the {scenario} members took more than {timeout:g} s") from None
    lines = done.stdout.splitlines()
    if done.returncode != 0 or not lines:
        raise BenchError(f"the {scenario} members failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    if "error" in result:
        raise BenchError(f"the {scenario} members failed: {result['error']}")
    return result
