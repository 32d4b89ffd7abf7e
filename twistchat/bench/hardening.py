"""
The hardening scenarios of twistchat-bench: the figures of docs/operations.md
("Measured"), each against the real C{twistd -n socketchat} on 127.0.0.1.

  hardening-idle   server RSS with C{--connections} idle unauthenticated
                   connections (TLS done, no hello), and after the handshake
                   timeout has closed them, for C{--waves} waves (the second
                   must not need more memory)
  hardening-slow   server RSS while one member never reads and ten others
                   chat for C{--chat-seconds}
  hardening-ping   seconds from a member's last frame to its drop for not
                   answering pings (short --idle-timeout and --ping-timeout)
  hardening-guess  password guesses the server evaluates for one address that
                   tries wrong passwords as fast as it can for
                   C{--guess-seconds} (ten threads, each retrying 0.1 s after
                   a refusal)

Each prints its lines as it goes and returns one result. Everything is
bounded: at most C{--connections} sockets, at most C{--chat-seconds} of chat
and C{--guess-seconds} of guessing, and every process started here is stopped
before the scenario returns.
"""

from __future__ import annotations

import secrets
import socket
import ssl
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twistchat import wire
from twistchat.bench.config import BenchConfig
from twistchat.bench.measure import rss_kib
from twistchat.bench.processes import (
    BenchError,
    ServerProcess,
    raise_fd_limit,
    run_clients,
    start_twistd,
)

#: Members that chat in hardening-slow, and the characters of each message.
CHATTERS = 10
SLOW_TEXT = 2000
#: The short timeouts of hardening-ping.
IDLE_TIMEOUT, PING_TIMEOUT = 2.0, 1.0
#: Threads that guess in hardening-guess.
GUESSERS = 10


def _tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def idle(config: BenchConfig, workdir: Path) -> dict[str, Any]:
    count, timeout = config.get("connections"), config.get("handshake_timeout")
    needed = 2 * count + 100
    if raise_fd_limit() < needed:  # twistd inherits the limit
        raise BenchError(f"--connections {count} needs an open-files limit of {needed}")
    server = start_twistd(workdir, secrets.token_urlsafe(18),
                          "--handshake-timeout", str(timeout),
                          "--max-preauth-per-address", str(count + 10),
                          "--max-preauth-total", str(count + 10))
    result: dict[str, Any] = {"members": count, "waves": config.get("waves"),
                              "handshake_timeout": timeout, "closed": 0}
    try:
        time.sleep(1)
        result["rss_kib_start"] = rss_kib(server.pid)
        print(f"idle: server RSS {result['rss_kib_start']} KiB before any connection", flush=True)
        for wave in range(1, result["waves"] + 1):
            _idle_wave(count, timeout, server, wave, result)
    finally:
        server.stop()
    return result


def _idle_wave(count: int, timeout: float, server: ServerProcess, wave: int,
               result: dict[str, Any]) -> None:
    context = _tls_context()
    sockets: list[ssl.SSLSocket] = []
    try:
        before = rss_kib(server.pid)
        start = time.monotonic()
        for _ in range(count):
            raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sockets.append(context.wrap_socket(raw))
        opened = time.monotonic() - start
        time.sleep(1)
        during = rss_kib(server.pid)
        print(f"idle wave {wave}: {count} TLS connections, no hello, opened in {opened:.1f} s; "
              f"server RSS {before} KiB before, {during} KiB with them open "
              f"({(during - before) / count:.1f} KiB each)", flush=True)
        deadline = time.monotonic() + timeout + 15
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
        after = rss_kib(server.pid)
        timed_out = server.log.count("timed out in state")
        print(f"idle wave {wave}: {closed} closed by the server after the "
              f"{timeout:g} s handshake timeout "
              f"({timed_out} 'timed out' log lines so far); "
              f"server RSS {after} KiB after", flush=True)
        if wave == 1:
            result["rss_kib_each"] = round((during - before) / count, 1)
        result.update(rss_kib_open=during, rss_kib_after=after, timed_out_lines=timed_out,
                      closed=result["closed"] + closed)
    finally:
        for tls in sockets:
            tls.close()


def _frame_io(tls: ssl.SSLSocket) -> Any:
    def send(kind: str, **fields: Any) -> None:
        tls.sendall(wire.prefixed(wire.encode(kind, **fields)))

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


def guess(config: BenchConfig, workdir: Path) -> dict[str, Any]:
    from twistchat.crypto.spake2plus import G, encode_point

    seconds = config.get("guess_seconds")
    server = start_twistd(workdir, secrets.token_urlsafe(18))
    context = _tls_context()
    share = encode_point(G * 424242)  # a valid point: the server tests the guess
    evaluated: list[float] = []
    refused: dict[str, int] = {}
    lock = threading.Lock()
    start = time.monotonic()
    end = start + seconds

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

    threads = [threading.Thread(target=attacker) for _ in range(GUESSERS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        print(f"guess: {len(evaluated)} guesses evaluated in {seconds:g} s "
              f"from one address, at {', '.join(f'{t:.1f}' for t in evaluated)} s; "
              f"refusals: {refused}", flush=True)
    finally:
        server.stop()
    return {"seconds": seconds, "evaluated": len(evaluated), "refused": sum(refused.values()),
            "refusals": refused, "evaluated_at": [round(t, 1) for t in evaluated]}


def slow(config: BenchConfig, workdir: Path) -> dict[str, Any]:
    seconds = config.get("chat_seconds")
    password = secrets.token_urlsafe(18)
    server = start_twistd(workdir, password)
    try:
        got = run_clients("slow", {
            "port": server.port, "pid": server.pid, "password": password,
            "workdir": str(workdir), "seconds": seconds, "chatters": CHATTERS,
            "size": SLOW_TEXT}, timeout=seconds + 120)
        not_reading = server.log.count("is not reading")
    finally:
        server.stop()
    sent = got["sent"]
    print(f"slow: {CHATTERS} members sent {sent} messages of {SLOW_TEXT} characters in "
          f"{seconds:g} s; each other member received "
          f"{got['received'] / CHATTERS:.0f} on average (of {sent * (CHATTERS - 1) // CHATTERS})")
    print(f"slow: server RSS {got['rss_kib_start']} KiB at start, "
          f"at most {got['rss_kib_max']} KiB, "
          f"{got['rss_kib_end']} KiB at the end; "
          f"'is not reading' log lines: {not_reading}", flush=True)
    return {"members": CHATTERS + 1, "seconds": seconds, "sent": sent,
            "received_each": round(got["received"] / CHATTERS, 1),
            "rss_kib_start": got["rss_kib_start"], "rss_kib_max": got["rss_kib_max"],
            "rss_kib_end": got["rss_kib_end"], "not_reading_lines": not_reading}


def ping(config: BenchConfig, workdir: Path) -> dict[str, Any]:
    password = secrets.token_urlsafe(18)
    server = start_twistd(workdir, password, "--idle-timeout", str(IDLE_TIMEOUT),
                          "--ping-timeout", str(PING_TIMEOUT))
    try:
        got = run_clients("ping", {
            "port": server.port, "pid": server.pid, "password": password,
            "workdir": str(workdir), "timeout": 30}, timeout=90)
    finally:
        server.stop()
    print(f"ping: --idle-timeout {IDLE_TIMEOUT:g} --ping-timeout {PING_TIMEOUT:g}: "
          f"dropped {got['dropped_after_s']:.2f} s after its last frame ({got['reason']})",
          flush=True)
    return {"idle_timeout": IDLE_TIMEOUT, "ping_timeout": PING_TIMEOUT, **got}


SCENARIOS: dict[str, Callable[[BenchConfig, Path], dict[str, Any]]] = {
    "hardening-idle": idle, "hardening-slow": slow,
    "hardening-ping": ping, "hardening-guess": guess,
}


def run_all(config: BenchConfig) -> list[dict[str, Any]]:
    """
    The hardening scenarios C{config} asks for, each once, in a fresh directory.

    @raise BenchError: when a server or the members fail.
    """
    results = []
    for name in config.scenarios:
        if name in SCENARIOS:
            with tempfile.TemporaryDirectory(prefix="twistchat-bench-") as workdir:
                result = SCENARIOS[name](config, Path(workdir))
            results.append({"scenario": name, "server": "twistchat", "members": 1, **result})
    return results
