"""
Measure the hardening figures quoted in docs/operations.md ("Measured"), each
against a real ``twistd -n socketchat`` process on 127.0.0.1:

  idle     server RSS with N idle unauthenticated connections (TLS done, no
           hello), and after the handshake timeout has closed them, for
           several waves (the second must not need more memory);
  slow     server RSS while one member never reads and ten others chat;
  ping     seconds from a member's last frame to its drop for not answering
           pings (short --idle-timeout and --ping-timeout);
  guess    password guesses the server evaluates for one address that tries
           wrong passwords as fast as it can for --guess-seconds (10 threads,
           each retrying 0.1 s after a refusal).

Usage (from a virtualenv with twistchat installed):

    python benchmarks/hardening_figures.py [idle|slow|ping|guess ...]
        [--connections 1000] [--waves 2] [--handshake-timeout 20] [--chat-seconds 60]
        [--guess-seconds 60]

Everything is bounded: at most --connections sockets, at most --chat-seconds
of chat, and every process started here is stopped before the script exits.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

PASSWORD = "benchmark room password 7f3a"
BIN = Path(sys.executable).parent


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Server:
    """
    One twistd socketchat process on a free loopback port.
    """

    def __init__(self, workdir: Path, *options: str) -> None:
        (workdir / "password").write_text(PASSWORD + "\n")
        self.log: list[str] = []
        self.process = subprocess.Popen(
            [str(BIN / "twistd"), "-n", "--pidfile=", "socketchat", "--port", "0",
             "--interface", "127.0.0.1", "--data-dir", str(workdir / "data"),
             "--password-file", str(workdir / "password"), *options],
            cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self._ready = threading.Event()
        self.port = 0
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(60):
            self.stop()
            raise RuntimeError("the server did not start:\n" + "\n".join(self.log))

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line.rstrip("\n"))
            match = re.search(r"listening on port (\d+)", line)
            if match:
                self.port = int(match.group(1))
                self._ready.set()

    def count(self, text: str) -> int:
        return sum(text in line for line in list(self.log))

    @property
    def rss(self) -> int:
        return rss_kib(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, needed), hard))


def idle(args: argparse.Namespace, workdir: Path) -> None:
    count = args.connections
    raise_fd_limit(2 * count + 100)  # inherited by twistd
    server = Server(workdir, "--handshake-timeout", str(args.handshake_timeout),
                    "--max-preauth-per-address", str(count + 10),
                    "--max-preauth-total", str(count + 10))
    try:
        time.sleep(1)
        print(f"idle: server RSS {server.rss} KiB before any connection")
        for wave in range(1, args.waves + 1):
            _idle_wave(args, server, wave)
    finally:
        server.stop()


def _idle_wave(args: argparse.Namespace, server: Server, wave: int) -> None:
    count = args.connections
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    sockets: list[ssl.SSLSocket] = []
    try:
        before = server.rss
        start = time.monotonic()
        for _ in range(count):
            raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sockets.append(context.wrap_socket(raw))
        opened = time.monotonic() - start
        time.sleep(1)
        during = server.rss
        print(f"idle wave {wave}: {count} TLS connections, no hello, opened in {opened:.1f} s; "
              f"server RSS {before} KiB before, {during} KiB with them open "
              f"({(during - before) / count:.1f} KiB each)")
        deadline = time.monotonic() + args.handshake_timeout + 15
        closed = 0
        for tls in sockets:
            tls.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                while tls.recv(4096):
                    pass
                closed += 1
            except (OSError, ssl.SSLError):
                closed += 1
        time.sleep(1)
        print(f"idle wave {wave}: {closed} closed by the server after the "
              f"{args.handshake_timeout:g} s handshake timeout "
              f"({server.count('timed out in state')} 'timed out' log lines so far); "
              f"server RSS {server.rss} KiB after")
    finally:
        for tls in sockets:
            tls.close()


def _frame_io(tls: ssl.SSLSocket) -> Any:
    import struct

    from twistchat import wire

    def send(kind: str, **fields: Any) -> None:
        body = wire.encode(kind, **fields)
        tls.sendall(struct.pack(">I", len(body)) + body)

    def receive() -> Any:
        head = b""
        while len(head) < 4:
            chunk = tls.recv(4 - len(head))
            if not chunk:
                return None
            head += chunk
        (length,) = struct.unpack(">I", head)
        body = b""
        while len(body) < length:
            chunk = tls.recv(length - len(body))
            if not chunk:
                return None
            body += chunk
        return wire.decode(body, wire.FROM_SERVER)

    return send, receive


def guess(args: argparse.Namespace, workdir: Path) -> None:
    from twistchat.crypto.spake2plus import G, encode_point

    server = Server(workdir)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    share = encode_point(G * 424242)  # a valid point: the server tests the guess
    evaluated: list[float] = []
    refused: dict[str, int] = {}
    lock = threading.Lock()
    start = time.monotonic()
    end = start + args.guess_seconds

    def attacker() -> None:
        while time.monotonic() < end:
            try:
                raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
                with context.wrap_socket(raw) as tls:
                    send, receive = _frame_io(tls)
                    send("hello", v=wire.PROTOCOL_VERSION, room="main", name="guesser")
                    answer = receive()
                    if answer is not None and answer.type == "params":
                        send("share", X=share)
                        answer = receive()
                    with lock:
                        if answer is not None and answer.type == "verify":
                            evaluated.append(time.monotonic() - start)
                            continue  # hang up: the guess is known to be wrong
                        code = answer["code"] if answer is not None else "closed"
                        refused[code] = refused.get(code, 0) + 1
            except (OSError, ssl.SSLError):
                with lock:
                    refused["reset"] = refused.get("reset", 0) + 1
            time.sleep(0.1)

    threads = [threading.Thread(target=attacker) for _ in range(10)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        print(f"guess: {len(evaluated)} guesses evaluated in {args.guess_seconds:g} s "
              f"from one address, at {', '.join(f'{t:.1f}' for t in evaluated)} s; "
              f"refusals: {refused}")
    finally:
        server.stop()


async def _join(reactor: Any, port: int, name: str, known_hosts: Path, listener: Any = None) -> Any:
    from twistchat.client import TrustOnFirstUse, connect

    return await connect(reactor, "127.0.0.1", port, name, PASSWORD, listener=listener,
                         trust=TrustOnFirstUse(known_hosts))


async def slow(reactor: Any, args: argparse.Namespace, workdir: Path) -> None:
    from twisted.internet import defer, task

    from twistchat.client.api import ChatListener

    server = Server(workdir)
    received = [0]

    class Count(ChatListener):
        def message_received(self, message: Any) -> None:
            received[0] += 1

    try:
        known = workdir / "known_hosts"
        reader = await _join(reactor, server.port, "neverreads", known)
        reader._protocol.transport.pauseProducing()  # stops reading its socket
        chatters = [await _join(reactor, server.port, f"chatter{i}", known, Count())
                    for i in range(10)]
        samples = [server.rss]
        text = "x" * 2000
        sent = 0
        start = reactor.seconds()
        while reactor.seconds() - start < args.chat_seconds:
            for chatter in chatters:
                chatter.send(text)  # paced by the client to the server's rate
                sent += 1
            await task.deferLater(reactor, 0.1, lambda: None)
            samples.append(server.rss)
        await task.deferLater(reactor, 2, lambda: None)
        samples.append(server.rss)
        print(f"slow: 10 members sent {sent} messages of 2000 characters in "
              f"{args.chat_seconds:g} s; each other member received "
              f"{received[0] / 10:.0f} on average (of {sent * 9 // 10})")
        print(f"slow: server RSS {samples[0]} KiB at start, at most {max(samples)} KiB, "
              f"{samples[-1]} KiB at the end; "
              f"'is not reading' log lines: {server.count('is not reading')}")
        await defer.gatherResults([c.leave() for c in chatters])
    finally:
        server.stop()


async def ping(reactor: Any, args: argparse.Namespace, workdir: Path) -> None:
    from twisted.internet import defer

    from twistchat.client.api import ChatListener
    from twistchat.client.protocol import State

    idle_timeout, ping_timeout = 2.0, 1.0
    server = Server(workdir, "--idle-timeout", str(idle_timeout),
                    "--ping-timeout", str(ping_timeout))

    try:
        ended: defer.Deferred[Any] = defer.Deferred()

        class Ended(ChatListener):
            def disconnected(self, reason: Any) -> None:
                ended.callback(reason)

        session = await _join(reactor, server.port, "mute", workdir / "known_hosts", Ended())
        # From here on this member answers no ping (and sends nothing).
        proto = session._protocol
        table = dict(proto._transitions)
        table[State.MEMBER] = {**table[State.MEMBER], "ping": lambda self, message: None}
        proto._transitions = table
        start = reactor.seconds()
        reason = await ended.addTimeout(30, reactor)
        took = reactor.seconds() - start
        print(f"ping: --idle-timeout {idle_timeout:g} --ping-timeout {ping_timeout:g}: "
              f"dropped {took:.2f} s after its last frame ({reason})")
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("figures", nargs="*", default=["idle", "slow", "ping", "guess"],
                        choices=["idle", "slow", "ping", "guess"])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--handshake-timeout", type=float, default=20.0)
    parser.add_argument("--waves", type=int, default=2,
                        help="rounds of idle connections (memory must not grow)")
    parser.add_argument("--chat-seconds", type=float, default=60.0)
    parser.add_argument("--guess-seconds", type=float, default=60.0)
    args = parser.parse_args()
    if not 1 <= args.connections <= 5000 or not 0 < args.chat_seconds <= 600 \
            or not 1 <= args.waves <= 5 or not 0 < args.guess_seconds <= 600:
        parser.error("keep --connections within 1..5000, --waves within 1..5 "
                     "and --chat-seconds and --guess-seconds within 600")
    for name, figure in (("idle", idle), ("guess", guess)):
        if name in args.figures:
            with tempfile.TemporaryDirectory(prefix="twistchat-figures-") as workdir:
                figure(args, Path(workdir))
    live = [f for f in ("slow", "ping") if f in args.figures]
    if live:
        from twisted.internet import task

        async def run(reactor: Any) -> None:
            for figure in live:
                with tempfile.TemporaryDirectory(prefix="twistchat-figures-") as workdir:
                    await {"slow": slow, "ping": ping}[figure](reactor, args, Path(workdir))

        task.react(lambda reactor: defer_run(run, reactor))


def defer_run(run: Any, reactor: Any) -> Any:
    from twisted.internet import defer

    return defer.ensureDeferred(run(reactor))


if __name__ == "__main__":
    os.environ.pop("TWISTCHAT_PASSWORD", None)
    main()
