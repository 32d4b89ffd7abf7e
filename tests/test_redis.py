"""
Scale-out through Redis, end to end: a real C{redis-server} (started here on
a free loopback port, in a temporary folder, with its append-only file),
real C{twistd socketchat --redis} nodes and real clients, as processes.

A missing redis-server fails these tests (tests/system-packages.sh installs
it); it never skips them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twistchat.bench.processes import Lines
from twistchat.client import ChatListener, ChatMessage, ChatSession, TrustOnFirstUse, connect
from twistchat.client import Member as ClientMember
from twisted.internet import defer, task

from tests.conftest import until
from tests.test_e2e import BIN, Client, Server, assert_one_line, chat_lines, env, twistd

PASSWORD = "scale out e2e room password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """
    A real redis-server on 127.0.0.1, its files in C{folder}.
    """

    def __init__(self, folder: Path, port: int | None = None, *extra: str) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is missing: run tests/system-packages.sh"
        self.folder = folder
        folder.mkdir(exist_ok=True)
        self.port = port or free_port()
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(folder),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            stdin=subprocess.DEVNULL,
        )
        assert self.process.stdout is not None
        self.log = Lines(self.process.stdout)
        self.log.wait_for("Ready to accept connections", timeout=20)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cli(self, *args: str) -> str:
        result = subprocess.run(["redis-cli", "-p", str(self.port), *args],
                                capture_output=True, text=True, timeout=20)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=20)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


class Node(Server):
    """
    One twistd node on C{redis}, its data in C{workdir/NAME}.
    """

    def __init__(self, workdir: Path, name: str, redis: RedisServer, *args: str) -> None:
        folder = workdir / name
        folder.mkdir(exist_ok=True)
        super().__init__(folder, "--port", "0", "--interface", "127.0.0.1",
                         "--redis", redis.url, *args)


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "room.pw"
    path.write_text(PASSWORD + "\n")
    return path


def member(workdir: Path, node: Server, name: str, *options: str) -> Client:
    client = Client(workdir, node.port, name, password=PASSWORD, options=options)
    client.out.wait_for("connected — you can start sending messages")
    return client


def members_on_both_workers(
        tmp_path: Path, node: Node, clients: list[Client],
) -> tuple[dict[str, int], dict[str, Client], str, str]:
    """
    Log members in on C{node}'s one port until both of its two workers have
    one (at most 12, added to C{clients}), and have a member of each worker
    talk to one of the other. Returns each member's worker, the members by
    name, and a member of worker 1 and one of worker 2.
    """
    on: dict[str, int] = {}  # member -> worker
    by_name: dict[str, Client] = {}
    for i in range(12):  # bounded: until both workers have a member
        name = f"m{i}"
        by_name[name] = member(tmp_path, node, name)
        clients.append(by_name[name])
        on[name] = int(node.log.wait_for(
            rf"\[worker-(\d)#info\] {name} \(127\.0\.0\.1, \d+\) connected").group(1))
        if len(set(on.values())) == 2:
            break
    assert set(on.values()) == {1, 2}, on
    first = next(n for n, w in on.items() if w == 1)
    second = next(n for n, w in on.items() if w == 2)
    by_name[first].say("from worker one")
    by_name[second].out.wait_for(re.escape(f"[ {first}: ] from worker one"))
    by_name[second].say("from worker two")
    by_name[first].out.wait_for(re.escape(f"[ {second}: ] from worker two"))
    return on, by_name, first, second


def stop_all(clients: list[Client], nodes: list[Server]) -> None:
    for client in clients:
        if client.process.poll() is None:
            client.process.kill()
            client.process.wait(timeout=10)
    for node in nodes:
        node.stop()
        assert "Traceback" not in "\n".join(node.log.seen)


class Cluster:
    """
    The nodes a test starts on one real redis-server, each serving room
    "main" with L{PASSWORD}, and the members (L{Client}) it logs in on them.

    @ivar nodes: the nodes started, in order.
    @ivar clients: the members logged in by L{member}, and any other client
        the test adds to be killed at its end.
    """

    def __init__(self, workdir: Path, redis: RedisServer, password_file: Path) -> None:
        self.workdir = workdir
        self.redis = redis
        self.password_file = password_file
        self.nodes: list[Node] = []
        self.clients: list[Client] = []

    def start(self, name: str, *args: str) -> Node:
        """
        Start node C{name} (its data in C{workdir/NAME}) with the room's
        password file and C{args}; return it once it listens.
        """
        node = Node(self.workdir, name, self.redis, "--password-file", str(self.password_file),
                    *args)
        self.nodes.append(node)
        return node

    def member(self, node: Server, name: str) -> Client:
        """
        Log C{name} in on C{node}; return it once it may send.
        """
        client = member(self.workdir, node, name)
        self.clients.append(client)
        return client

    def stop(self) -> None:
        """
        Kill the clients still running, stop the nodes, and check that no
        node logged a traceback.
        """
        stop_all(self.clients, self.nodes)


@pytest.fixture
def cluster(tmp_path: Path, redis: RedisServer, password_file: Path) -> Iterator[Cluster]:
    """
    An empty L{Cluster} on the test's redis-server; all it started is
    stopped when the test ends.
    """
    started = Cluster(tmp_path, redis, password_file)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def two_nodes(cluster: Cluster) -> Cluster:
    """
    The L{cluster} with nodes "a" and "b" started (C{two_nodes.nodes}).
    """
    cluster.start("a")
    cluster.start("b")
    return cluster


def messages(lines: list[str]) -> list[str]:
    """
    Every chat line (sender and text) a client printed, in order.
    """
    return [line for line in lines if re.match(r"^\[ [^:]+: \] ", line)]


def test_two_nodes_chat_in_one_order(tmp_path: Path, two_nodes: Cluster) -> None:
    """
    alice on node A and bob on node B chat both ways; with both sending at
    once, two listeners (one per node) see every message in the same order.
    Neither node logs a traceback (checked as L{two_nodes} stops them).
    """
    a, b = two_nodes.nodes
    alice = two_nodes.member(a, "alice")
    bob = two_nodes.member(b, "bob")
    bob.out.wait_for(r"In the room: alice \(127\.0\.0\.1:\d+\)")
    alice.out.wait_for(r"\* bob \(127\.0\.0\.1:\d+\) entered the room")
    # Name uniqueness is room-wide.
    twin = Client(tmp_path, a.port, "Bob", password=PASSWORD)
    assert twin.finish() == 1
    assert "already taken" in "\n".join(twin.err.rest())

    alice.say("hello from node A")
    bob.out.wait_for(re.escape("[ alice: ] hello from node A"))
    bob.say("hello from node B")
    alice.out.wait_for(re.escape("[ bob: ] hello from node B"))

    carol = two_nodes.member(a, "carol")
    dave = two_nodes.member(b, "dave")
    carol.out.wait_for(r"\* dave \(127\.0\.0\.1:\d+\) entered the room")
    count = 15
    for i in range(count):  # both senders at once, on both nodes
        alice.say(f"a{i}")
        bob.say(f"b{i}")
    for listener in (carol, dave, alice, bob):
        last_other = f"b{count - 1}" if listener is not bob else f"a{count - 1}"
        listener.out.wait_for(re.escape(last_other), timeout=30)
    carol.out.wait_for(re.escape(f"[ alice: ] a{count - 1}"))
    dave.out.wait_for(re.escape(f"[ alice: ] a{count - 1}"))
    dave.out.wait_for(re.escape(f"[ bob: ] b{count - 1}"))
    carol.out.wait_for(re.escape(f"[ bob: ] b{count - 1}"))
    seen_carol = [line for line in messages(carol.out.seen) if "hello" not in line]
    seen_dave = [line for line in messages(dave.out.seen) if "hello" not in line]
    assert len(seen_carol) == 2 * count
    assert seen_carol == seen_dave
    # Each member sees the others' messages in that one order too.
    assert [m for m in messages(alice.out.seen) if "bob" in m and "hello" not in m] == [
        m for m in seen_carol if "bob" in m]
    assert bob.finish() == 0
    alice.out.wait_for(r"\* bob \(127\.0\.0\.1:\d+\) left the room")
    dave.out.wait_for(r"\* bob \(127\.0\.0\.1:\d+\) left the room")


def test_history_replayed_on_the_other_node(two_nodes: Cluster) -> None:
    a, b = two_nodes.nodes
    alice = two_nodes.member(a, "alice")
    for i in range(3):
        alice.say(f"said on A {i}")
    bob = two_nodes.member(b, "bob")
    bob.out.wait_for("--- live ---")
    alice.say("live after bob joined")
    bob.out.wait_for("live after bob joined")
    assert chat_lines(bob.out.seen, "alice") == [
        *((f"said on A {i}", True) for i in range(3)), ("live after bob joined", False)]


def test_room_added_with_passwd_is_served_by_every_node(tmp_path: Path, redis: RedisServer,
                                                        two_nodes: Cluster) -> None:
    a, b = two_nodes.nodes
    (tmp_path / "dev.pw").write_text("dev room password\n")
    started = time.monotonic()
    result = subprocess.run(
        [str(BIN / "twistchat-passwd"), "--redis", redis.url, "--room", "dev",
         "--password-file", str(tmp_path / "dev.pw")],
        capture_output=True, text=True, timeout=60, env=env(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    for node in (a, b):
        node.log.wait_for(r"rooms: room 'dev' added", timeout=5)
    assert time.monotonic() - started < 15  # 5 s after the (scrypt) verifier is written
    dev = Client(tmp_path, b.port, "devon", password="dev room password", room="dev")
    two_nodes.clients.append(dev)
    dev.out.wait_for("connected — you can start sending messages")
    assert "dev room password" not in redis.cli("HGETALL", "twistchat:rooms")


def test_failed_logins_count_across_nodes(tmp_path: Path, cluster: Cluster) -> None:
    limits = ("--free-failures", "1", "--failure-penalty", "60")
    a, b = cluster.start("a", *limits), cluster.start("b", *limits)
    for node in (a, b):  # one free failure on each node: two in all
        eve = Client(tmp_path, node.port, "eve", password="not the password")
        assert eve.finish() == 1
        assert "wrong password" in "\n".join(eve.err.rest())
    # Node A saw only one; the second, on B, earned the penalty everywhere.
    eve = Client(tmp_path, a.port, "eve", password=PASSWORD)
    assert eve.finish() == 1
    assert "too many failed logins" in "\n".join(eve.err.rest())


def test_members_of_a_killed_node_leave_within_30_s(redis: RedisServer,
                                                    two_nodes: Cluster) -> None:
    a, b = two_nodes.nodes
    two_nodes.member(a, "alice")
    bob = two_nodes.member(b, "bob")
    bob.out.wait_for(r"In the room: alice")
    a.kill()
    bob.out.wait_for(r"\* alice \(127\.0\.0\.1:\d+\) left the room", timeout=30)
    b.log.wait_for(r"node \w+ is gone; alice left room 'main'")
    assert "alice" not in redis.cli("HKEYS", "twistchat:room:main:members")


def test_redis_restart_refuses_then_resumes(redis: RedisServer, two_nodes: Cluster) -> None:
    a, b = two_nodes.nodes
    alice = two_nodes.member(a, "alice")
    bob = two_nodes.member(b, "bob")
    alice.say("before the outage")
    bob.out.wait_for("before the outage")
    redis.kill()
    a.log.wait_for(r"redis: .* unavailable", timeout=15)
    alice.say("during the outage")
    alice.out.wait_for(r"cannot store messages right now", timeout=15)
    redis.process = RedisServer(redis.folder, redis.port).process
    a.log.wait_for(r"redis: .* reachable again", timeout=30)
    b.log.wait_for(r"redis: .* reachable again", timeout=30)
    alice.say("after the outage")
    bob.out.wait_for("after the outage", timeout=15)
    assert alice.process.poll() is None and bob.process.poll() is None
    late = two_nodes.member(b, "late")
    late.out.wait_for("--- live ---")
    assert chat_lines(late.out.seen, "alice") == [
        ("before the outage", True), ("after the outage", True)]
    for node in (a, b):
        log = "\n".join(node.log.seen)
        assert len(re.findall(r"redis: .* unavailable", log)) == 1


def test_redis_unreachable_at_start_is_one_line(tmp_path: Path, password_file: Path) -> None:
    port = free_port()  # nothing listens there
    result = twistd(tmp_path, "--port", "0", "--password-file", str(password_file),
                    "--redis", f"redis://127.0.0.1:{port}/0")
    assert_one_line(result, f"cannot reach Redis at redis://127.0.0.1:{port}/0",
                    "Connection refused")


def test_redis_refusing_the_password_is_one_line(tmp_path: Path, password_file: Path) -> None:
    guarded = RedisServer(tmp_path / "redis", None, "--requirepass", "the redis secret")
    try:
        (tmp_path / "redis.pw").write_text("not the redis secret\n")
        result = twistd(tmp_path, "--port", "0", "--password-file", str(password_file),
                        "--redis", guarded.url, "--redis-password-file", str(tmp_path / "redis.pw"))
        assert_one_line(result, f"cannot use Redis at {guarded.url}: AUTH refused")
        assert "not the redis secret" not in result.stdout + result.stderr
        # No password at all: Redis refuses the first command.
        result = twistd(tmp_path, "--port", "0", "--password-file", str(password_file),
                        "--redis", guarded.url)
        assert_one_line(result, f"cannot use Redis at {guarded.url}", "NOAUTH")
    finally:
        guarded.stop()


def test_workers_share_one_port(tmp_path: Path, redis: RedisServer,
                                password_file: Path) -> None:
    """
    C{--workers 2}: members connecting to the one port land on both workers
    and chat; a worker killed with SIGKILL is restarted, its members leave
    the room within 30 s and can come back; SIGTERM stops everything cleanly.
    """
    node = Node(tmp_path, "w", redis, "--password-file", str(password_file), "--workers", "2")
    clients: list[Client] = []
    try:
        for number in (1, 2):
            node.log.wait_for(rf"\[worker-{number}#info\] twistchat listening on port {node.port}")
        on, by_name, first, second = members_on_both_workers(tmp_path, node, clients)

        pid = int(node.log.wait_for(r"workers: worker 1 started \(pid (\d+)\)").group(1))
        os.kill(pid, signal.SIGKILL)
        node.log.wait_for(r"workers: worker 1 ended \(signal 9\).*starting it again in 1 s")
        by_name[second].out.wait_for(
            rf"\* {first} \(127\.0\.0\.1:\d+\) left the room", timeout=30)
        node.log.wait_for(rf"workers: worker 1 started \(pid (?!{pid}\))\d+\)", timeout=10)
        again = member(tmp_path, node, first)  # as a client with --reconnect would
        clients.append(again)
        by_name[second].out.wait_for(rf"\* {first} \(127\.0\.0\.1:\d+\) entered the room")
        again.say("back again")
        by_name[second].out.wait_for(re.escape(f"[ {first}: ] back again"))
    finally:
        for client in clients:
            if client.process.poll() is None:
                client.process.kill()
                client.process.wait(timeout=10)
        assert node.stop()
    log = "\n".join(node.log.seen)
    assert "Traceback" not in log
    for number in (1, 2):
        assert re.search(rf"workers: worker {number} stopped \(", log), log
        assert f"[worker-{number}#info] Server Shut Down." in log
    # Worker 1 listened again after its restart.
    assert len(re.findall(r"\[worker-1#info\] twistchat listening", log)) == 2


def test_password_checks_in_progress_count_across_nodes(cluster: Cluster) -> None:
    """
    With C{--max-guesses-per-address 1}, a check in progress on node A makes
    a share from the same address on node B wait its turn; it is answered
    once A's ends.
    """
    from twistchat import wire
    from twistchat.bench.hardening import _frame_io, _tls_context
    from twistchat.crypto.spake2plus import G, encode_point

    limit = ("--max-guesses-per-address", "1")
    a, b = cluster.start("a", *limit), cluster.start("b", *limit)
    context = _tls_context()
    share = encode_point(G * 424242)  # a valid point: the server tests the guess

    def guess_until_share(port: int) -> Any:
        raw = socket.create_connection(("127.0.0.1", port), timeout=20)
        tls = context.wrap_socket(raw)
        send, receive = _frame_io(tls)
        send("hello", v=wire.PROTOCOL_VERSION, room="main", name="guesser")
        assert receive().type == "params"
        send("share", X=share)
        return tls, receive

    on_a, receive_a = guess_until_share(a.port)
    assert receive_a().type == "verify"  # A's check is in progress: its slot is taken
    on_b, receive_b = guess_until_share(b.port)
    b.log.wait_for(r"\(127\.0\.0\.1\) has 1 password checks in progress on all nodes: "
                   r"1 wait", timeout=10)
    on_a.close()  # A's check ends: B's share gets the slot
    assert receive_b().type == "verify"
    on_b.close()


@pytest.mark.parametrize("pause", [2, 6])
def test_slow_redis_delays_but_loses_nothing(redis: RedisServer, two_nodes: Cluster,
                                             pause: int) -> None:
    """
    Redis paused (C{CLIENT PAUSE}, every command held) for C{pause} seconds,
    shorter and longer than a command's deadline: what alice sends meanwhile
    reaches bob on the other node afterwards, every message once and in
    order, and nobody is told a message was not sent when it was; the nodes
    answer their members meanwhile (C{/who}) and log no traceback.
    """
    a, b = two_nodes.nodes
    alice = two_nodes.member(a, "alice")
    bob = two_nodes.member(b, "bob")
    alice.say("before the pause")
    bob.out.wait_for("before the pause")
    redis.cli("CLIENT", "PAUSE", str(pause * 1000), "ALL")
    for i in range(5):
        alice.say(f"paused {i}")
    alice.say("/who")  # answered by node A without Redis
    alice.out.wait_for(r"\* In the room: alice \(you\), bob", timeout=pause / 2)
    alice.say("after the pause")
    bob.out.wait_for("after the pause", timeout=pause + 20)
    expected = ["before the pause", *(f"paused {i}" for i in range(5)), "after the pause"]
    assert [text for text, _ in chat_lines(bob.out.seen, "alice")] == expected
    late = two_nodes.member(b, "late")  # the history has each once, in order
    late.out.wait_for("--- live ---")
    assert [text for text, _ in chat_lines(late.out.seen, "alice")] == expected
    alice.say("/who")  # a fence: alice has printed all that came before its answer
    alice.out.wait_for(r"\* In the room: alice \(you\), bob \S+, late", timeout=10)
    assert alice.out.count("cannot store") == 0
    assert alice.out.count("could not confirm") == 0
    assert a.process.poll() is None and b.process.poll() is None


def test_metrics_and_health_of_a_redis_node(redis: RedisServer, cluster: Cluster) -> None:
    """
    With --redis, /healthz answers by a real write to Redis: 200, then 503
    while Redis is down, 200 again once it is back; /metrics has the Redis
    round-trip histogram and the outage gauge.
    """
    from .test_metrics import METRICS_AT, samples, scrape

    node = cluster.start("a", "--metrics", "tcp:0:interface=127.0.0.1")
    port = int(node.log.wait_for(METRICS_AT).group(1))
    cluster.member(node, "alice")
    assert scrape(port, "/healthz") == (200, "ok\n")
    values = samples(scrape(port)[1])
    assert values[("twistchat_redis_unavailable", ())] == 0
    assert values[("twistchat_redis_command_seconds_count", ())] > 0
    redis.kill()
    deadline = time.monotonic() + 30
    status, reason = scrape(port, "/healthz")
    while status == 200 and time.monotonic() < deadline:
        status, reason = scrape(port, "/healthz")
    assert status == 503 and reason.count("\n") == 1, reason
    assert samples(scrape(port)[1])[("twistchat_redis_unavailable", ())] == 1
    redis.process = RedisServer(redis.folder, redis.port).process
    deadline = time.monotonic() + 30
    while scrape(port, "/healthz")[0] != 200 and time.monotonic() < deadline:
        node.log.rest(0.5)
    assert scrape(port, "/healthz") == (200, "ok\n")


# --- one order per room, checked on every member ----------------------------------


class Sequence(ChatListener):
    """
    Everything one member is told live, in order: C{("say", sender, text)},
    C{("joined", name)} and C{("left", name)}; replayed history and refusals
    are kept apart.
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []
        self.history: list[tuple[str, str]] = []
        self.refused: list[str] = []

    def message_received(self, message: ChatMessage) -> None:
        if message.history:
            self.history.append((message.sender, message.text))
        else:
            self.events.append(("say", message.sender, message.text))

    def member_joined(self, member: ClientMember) -> None:
        self.events.append(("joined", member.name))

    def member_left(self, member: ClientMember) -> None:
        self.events.append(("left", member.name))

    def message_refused(self, reason: str) -> None:
        self.refused.append(reason)


def check_sequence(reference: list[tuple[str, ...]], name: str, heard: Sequence,
                   left: bool) -> None:
    """
    Check that what member C{name} was told is the reference's one order, with
    no gap and no repeat, over the span it was present.

    Without its own messages and its own join, the reference is C{others}.
    The member's live sequence is one unbroken stretch C{others[start:end]}:
    it starts at the node's read position when the member joined (at or
    before its own join entry: the welcome's member list is as of that
    position, and what follows is sent live), and ends at its leave. Its
    replayed history is every message of C{others} before C{start} (fewer
    than C{--history} were sent). A member that leaves closes its connection
    without waiting for the server, so it may miss the last events before its
    leave entry: its sequence is a prefix of the stretch.
    """
    others = [e for e in reference if e[:2] != ("say", name) and e != ("joined", name)]
    joined_at = reference.index(("joined", name))
    joined_before = len([e for e in reference[:joined_at]
                         if e[:2] != ("say", name) and e != ("joined", name)])
    end = others.index(("left", name)) if left else len(others)
    live = heard.events
    assert live, name
    if left:
        starts = [i for i in range(joined_before + 1) if others[i:i + len(live)] == live]
        assert starts, (name, live, others[:end])
        start = starts[-1]
        assert start + len(live) <= end, (name, live, others[start:end])
    else:
        start = end - len(live)
        assert 0 <= start <= joined_before, (name, live, others)
        assert others[start:] == live, (name, live, others[start:])
    assert heard.history == [e[1:] for e in others[:start] if e[0] == "say"], name
    assert heard.refused == [], name


@pytest_twisted.ensureDeferred
async def test_every_member_on_both_nodes_sees_one_order(
        tmp_path: Path, two_nodes: Cluster) -> None:
    """
    Eight members of the client library over real TLS, split across two
    nodes: four send at once on both nodes while others join and leave. The
    first member (present throughout) is the reference: every other member's
    full live sequence (messages and presence) is exactly the reference's over
    the span it was present, less its own messages; and every message sent
    (none was refused) is in the reference, in its sender's order.
    """
    from twisted.internet import reactor

    a, b = two_nodes.nodes
    port = {"a": a.port, "b": b.port}
    sessions: dict[str, ChatSession] = {}
    heard: dict[str, Sequence] = {}
    left: set[str] = set()

    async def join(name: str, node: str) -> ChatSession:
        heard[name] = Sequence()
        session: ChatSession = await connect(
            reactor, "127.0.0.1", port[node], name, PASSWORD, listener=heard[name],
            trust=TrustOnFirstUse(tmp_path / "known_hosts"), profile=tmp_path / "p" / name)
        sessions[name] = session
        return session

    async def leave(name: str) -> None:
        left.add(name)
        await sessions[name].leave()

    def pause(seconds: float) -> defer.Deferred[None]:
        return task.deferLater(reactor, seconds, lambda: None)

    senders = {"a1": "a", "a2": "a", "b1": "b", "b2": "b"}
    rounds = 20
    sent: dict[str, list[str]] = {name: [] for name in senders}
    try:
        await join("ref", "a")  # the reference, present throughout
        await join("wb", "b")   # a silent witness on the other node
        for name, node in senders.items():
            await join(name, node)
        comings: list[defer.Deferred[Any]] = []
        goings: list[defer.Deferred[Any]] = []
        for r in range(rounds):  # bounded: rounds x senders messages
            for name in senders:
                if name not in left:
                    text = f"{name}-{r}"
                    sessions[name].send(text)
                    sent[name].append(text)
            # Joins and leaves on both nodes while the messages flow.
            if r == 3:
                comings.append(defer.ensureDeferred(join("c1", "a")))
                comings.append(defer.ensureDeferred(join("c2", "b")))
            if r == 8:
                goings.append(defer.ensureDeferred(leave("a2")))
            if r == 12:
                goings.append(defer.ensureDeferred(leave("b2")))
                await defer.gatherResults(comings)
                goings.append(defer.ensureDeferred(leave("c1")))
            await pause(0.05)
        await defer.gatherResults(goings)

        everything = {("say", name, text) for name in senders for text in sent[name]}
        presence = {("left", name) for name in left}
        await until(lambda: everything | presence <= set(heard["ref"].events), timeout=15)
        reference = heard["ref"].events
        stayers = [name for name in heard if name != "ref" and name not in left]
        last = {n: next(e for e in reversed(reference) if e[:2] != ("say", n)) for n in stayers}
        try:  # each stayer has been told the last event (not its own) the reference was
            await until(lambda: all(last[n] in heard[n].events for n in stayers), timeout=10)
        except AssertionError:
            pass  # compared below, with what each member got
        for name in heard:
            if name != "ref":
                check_sequence(reference, name, heard[name], name in left)
        for name in senders:  # nothing accepted is lost, each sender's order kept
            said = [e[2] for e in reference if e[:2] == ("say", name)]
            assert said == sent[name]
        assert heard["ref"].refused == []
        # Every join and leave after the reference's own is in its sequence once.
        changes = [e for e in reference if e[0] != "say"]
        assert changes[:5] == [("joined", "wb"), *(("joined", n) for n in senders)]
        assert sorted(changes[5:]) == [("joined", "c1"), ("joined", "c2"),
                                        ("left", "a2"), ("left", "b2"), ("left", "c1")]
        assert sum(len(s) for s in sent.values()) == len(everything)
    finally:
        for name, session in sessions.items():
            if name not in left:
                await session.leave()


# --- moving from the embedded mode ------------------------------------------------


def test_import_embedded_data_dir_then_replay_on_a_node(tmp_path: Path, redis: RedisServer,
                                                        password_file: Path,
                                                        cluster: Cluster) -> None:
    """
    An embedded server stores history; once it is stopped, C{twistchat-passwd
    --redis URL --import-data-dir DIR} copies its rooms, decoy secret and
    history into Redis; a node on Redis replays that history, in order, to a
    late joiner, then chat goes on. Redis holds the sealed messages only. A
    second import is refused in one line, and so is one while a node runs.
    """
    (tmp_path / "embedded").mkdir()
    embedded = Server(tmp_path / "embedded", "--port", "0", "--interface", "127.0.0.1",
                      "--password-file", str(password_file))
    clients: list[Client] = []
    try:
        alice = member(tmp_path, embedded, "alice")
        clients.append(alice)
        bob = member(tmp_path, embedded, "bob")
        clients.append(bob)
        said = [f"said before the move {i}" for i in range(4)]
        for text in said:
            alice.say(text)
        bob.out.wait_for(re.escape(said[-1]))
    finally:
        stop_all(clients, [embedded])
    data = embedded.data

    def migrate() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "twistchat-passwd"), "--redis", redis.url, "--import-data-dir", str(data)],
            capture_output=True, text=True, timeout=60, env=env(tmp_path))

    done = migrate()
    assert done.returncode == 0, done.stderr
    assert "room 'main': verifier copied, 4 messages copied" in done.stderr
    assert "decoy secret copied" in done.stderr
    stored = json.loads(redis.cli("HGET", "twistchat:rooms", "main"))
    assert stored == json.loads((data / "rooms" / "main.json").read_text())
    assert redis.cli("STRLEN", "twistchat:decoy").strip() == "32"
    dump = redis.cli("XRANGE", "twistchat:room:main:log", "-", "+")
    assert not any(text in dump for text in said)

    again = migrate()  # a second run changes nothing
    assert again.returncode == 1 and again.stderr.count("\n") == 1, again.stderr
    assert "room 'main' already has 4 entries in Redis" in again.stderr
    assert "nothing was imported" in again.stderr

    node = cluster.start("a")
    late = cluster.member(node, "late")
    late.out.wait_for("--- live ---")
    assert chat_lines(late.out.seen, "alice") == [(text, True) for text in said]
    carol = cluster.member(node, "carol")
    carol.say("after the move")
    late.out.wait_for(re.escape("[ carol: ] after the move"))
    running = migrate()
    assert running.returncode == 1 and "node(s) are running" in running.stderr


def test_import_stream_ids_keep_the_order_and_the_time() -> None:
    """
    Imported entries take ids from their server time, strictly increasing
    even for two rows in one millisecond or a clock that stepped back.
    """
    from twistchat.server.history import Row
    from twistchat.server.redisimport import entry_ids

    def row(ts: float) -> Row:
        return Row(0, "main", "alice", ts, b"s" * 16, 1, b"c" * 32)

    assert entry_ids([row(1700000000.0), row(1700000000.0004), row(1699999999.0),
                      row(1700000001.5), row(0.0)]) == [
        "1700000000000-0", "1700000000000-1", "1700000000000-2", "1700000001500-0",
        "1700000001500-1"]
    assert entry_ids([row(0.0)]) == ["0-1"]


def test_one_metrics_endpoint_for_all_workers(tmp_path: Path, redis: RedisServer,
                                              password_file: Path) -> None:
    """
    C{--workers 2 --metrics}: the parent's one C{/metrics} adds up both
    workers (members logged in on each, a message from each, a failed
    login); C{promtool} accepts it. A worker killed with SIGKILL leaves the
    gauges (its members' connections) while its counters stay in the sums;
    C{/healthz} is 200 again once the restarted worker listens.
    """
    from .test_metrics import METRICS_AT, samples, scrape, until

    node = Node(tmp_path, "w", redis, "--password-file", str(password_file), "--workers", "2",
                "--metrics", "tcp:0:interface=127.0.0.1")
    clients: list[Client] = []
    try:
        port = int(node.log.wait_for(METRICS_AT).group(1))
        for number in (1, 2):
            node.log.wait_for(rf"\[worker-{number}#info\] twistchat listening on port {node.port}")
        until(lambda: scrape(port, "/healthz") == (200, "ok\n"), "healthy with both workers")
        on, by_name, first, second = members_on_both_workers(tmp_path, node, clients)
        wrong = Client(tmp_path, node.port, "mallory", password="not the room password")
        assert wrong.finish() == 1
        total = len(on)

        # Gauges are sampled by each worker every second: wait for them.
        member_state = ("twistchat_connections", (("state", "member"),))
        until(lambda: samples(scrape(port)[1]).get(member_state) == total,
              f"{total} member connections over both workers")
        status, text = scrape(port)
        assert status == 200
        got = samples(text)
        assert got[member_state] == total
        assert got["twistchat_workers_listening", ()] == 2
        assert got["twistchat_worker_restarts_total", ()] == 0
        assert got["twistchat_members", ()] == total  # room-wide: the largest, not a sum
        assert got["twistchat_rooms", ()] == 1
        assert got["twistchat_logins_total", (("result", "ok"),)] == total
        assert got["twistchat_logins_total", (("result", "failed"),)] == 1
        assert got["twistchat_messages_accepted_total", ()] == 2
        assert got["twistchat_deliveries_total", ()] == 2 * (total - 1)
        assert got["twistchat_login_duration_seconds_count", ()] == total
        assert got["twistchat_redis_command_seconds_count", ()] > 0
        assert got["twistchat_redis_unavailable", ()] == 0
        for private in (PASSWORD, "not the room password", "from worker", first, "mallory",
                        "127.0.0.1"):
            assert private not in text, private
        promtool = shutil.which("promtool")
        assert promtool, "promtool is missing: tests/system-packages.sh installs it"
        check = subprocess.run([promtool, "check", "metrics"], input=text,
                               capture_output=True, text=True, timeout=60, check=False)
        assert check.returncode == 0, check.stdout + check.stderr

        pid = int(node.log.wait_for(r"workers: worker 1 started \(pid (\d+)\)").group(1))
        os.kill(pid, signal.SIGKILL)
        node.log.wait_for(r"workers: worker 1 ended \(signal 9\)")
        node.log.wait_for(rf"workers: worker 1 started \(pid (?!{pid}\))\d+\)", timeout=10)
        node.log.wait_for(rf"\[worker-1#info\] twistchat listening on port {node.port}")
        until(lambda: scrape(port, "/healthz") == (200, "ok\n"), "healthy after the restart")
        left = sum(1 for w in on.values() if w == 2)
        until(lambda: samples(scrape(port)[1]).get(member_state) == left,
              f"only worker 2's {left} member connections")
        got = samples(scrape(port)[1])
        assert got["twistchat_workers_listening", ()] == 2
        assert got["twistchat_worker_restarts_total", ()] == 1
        # The killed worker's counts stay.
        assert got["twistchat_logins_total", (("result", "ok"),)] == total
        assert got["twistchat_messages_accepted_total", ()] == 2
    finally:
        for client in clients:
            if client.process.poll() is None:
                client.process.kill()
                client.process.wait(timeout=10)
        assert node.stop()
    assert "Traceback" not in "\n".join(node.log.seen)


# --- the dead-node sweep, in process on the real redis-server ----------------------


class Present:
    """
    A member of a room on an in-process node: what a connection is to a room.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.addr = "127.0.0.1:1"
        self.key = bytes(32)
        self.vouch = b""
        self.got: list[bytes] = []

    def deliver(self, data: bytes) -> None:
        self.got.append(data)


def in_process_node(redis: RedisServer, node: str, verifiers: list[Any]) -> Any:
    """
    A node's ordering pipeline (L{RedisHistory}) on C{redis}, serving a room
    per verifier. Its heartbeats and sweeps run only when a test calls them:
    its own clock is a L{task.Clock} nobody advances (so its reader does not
    run either); its link to Redis runs on the reactor.
    """
    from twistchat.redisurl import RedisURL
    from twistchat.server.redisnode import RedisHistory, RedisLink, RedisRooms
    from twisted.internet import reactor

    rooms = RedisRooms()
    for verifier in verifiers:
        rooms.add(verifier)
    link = RedisLink(RedisURL.parse(redis.url), reactor)
    link.open()
    history = RedisHistory(link, rooms, task.Clock(), node=node)
    history.start()
    return history


def enter(history: Any, room_name: str, name: str) -> Present:
    """
    C{name} joins room C{room_name} on C{history}'s node, as the factory does.
    """
    room = history.rooms.get(room_name)
    present = Present(name)
    history.announce(room, present, room.join(present))
    return present


def command_counts(redis: RedisServer) -> dict[str, int]:
    """
    The commands Redis ran since its last C{CONFIG RESETSTAT}, by name (those
    run inside scripts included), less those the test itself sent.
    """
    counts = {}
    for line in redis.cli("INFO", "commandstats").splitlines():
        found = re.match(r"cmdstat_([^:]+):calls=(\d+)", line)
        if found and not found.group(1).startswith(("info", "config")):
            counts[found.group(1)] = int(found.group(2))
    return counts


def leaves(redis: RedisServer, room: str) -> list[str]:
    """
    The names whose leave is in room C{room}'s stream, in order.
    """
    out = redis.cli("--no-raw", "XRANGE", f"twistchat:room:{room}:log", "-", "+")
    return re.findall(r'"k"\s+\d+\) "l"\s+\d+\) "name"\s+\d+\) "([^"]+)"', out)


@pytest_twisted.ensureDeferred
async def test_a_sweep_for_dead_nodes_costs_the_same_with_200_rooms(
        redis: RedisServer, verifier: Any) -> None:
    """
    Two nodes serve 200 rooms, each with a member in every room. One sweep
    for dead nodes (none is dead) runs a handful of Redis commands, not a
    read per room: the cost of the sweep does not grow with the rooms.
    """
    from dataclasses import replace

    names = [f"r{i}" for i in range(200)]
    verifiers = [replace(verifier, room=name) for name in names]
    a = in_process_node(redis, "a", verifiers)
    b = in_process_node(redis, "b", verifiers)
    try:
        for i, name in enumerate(names):
            enter(a, name, f"a{i}")
            enter(b, name, f"b{i}")
        await a.sweep()  # after the joins, on the same connection: they are done
        await b.sweep()
        assert redis.cli("HLEN", "twistchat:room:r199:members").strip() == "2"
        redis.cli("CONFIG", "RESETSTAT")
        await a.sweep()
        counts = command_counts(redis)
        assert sum(counts.values()) <= 4, counts
        assert leaves(redis, "r0") == []
    finally:
        await a.stop()
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_two_nodes_announce_a_dead_nodes_leaves_once(
        redis: RedisServer, verifier: Any) -> None:
    """
    Nodes A and B survive node C. While C's heartbeat lives nothing of C's is
    swept; once it expired, A and B sweeping at the same moment announce
    each of C's members' leaves exactly once (in the stream and in the log),
    leave A's member alone, and forget C. C back with the same id (after an
    outage) has its new members left alone.
    """
    from dataclasses import replace

    from twisted.logger import globalLogPublisher

    names = [f"r{i}" for i in range(5)]
    verifiers = [replace(verifier, room=name) for name in names]
    a = in_process_node(redis, "a", verifiers)
    b = in_process_node(redis, "b", verifiers)
    c = in_process_node(redis, "c", verifiers)
    gone: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if "is gone" in event.get("log_format", ""):
            gone.append(f"{event['name']}@{event['room']}")

    globalLogPublisher.addObserver(observe)
    try:
        enter(a, "r0", "alice")
        for name in names:
            enter(c, name, "carol")
        enter(c, "r0", "dave")
        await c.sweep()  # C's joins are done
        await defer.gatherResults([a.sweep(), b.sweep()])
        assert [leaves(redis, name) for name in names] == [[]] * 5  # C's heartbeat lives

        await c.link.close()  # C dies; its heartbeat expires
        redis.cli("DEL", "twistchat:node:c")
        redis.cli("CONFIG", "RESETSTAT")
        await defer.gatherResults([a.sweep(), b.sweep()])
        counts = command_counts(redis)  # C's members are read, not the rooms
        assert "hgetall" not in counts and counts["hscan"] == 1, counts
        assert counts["xadd"] == 6, counts
        assert leaves(redis, "r0") in (["carol", "dave"], ["dave", "carol"])
        for name in names[1:]:
            assert leaves(redis, name) == ["carol"]
        assert sorted(gone) == sorted(["dave@r0", *(f"carol@{n}" for n in names)])
        assert redis.cli("HKEYS", "twistchat:room:r0:members").split() == ["alice"]
        for name in names[1:]:
            assert redis.cli("HLEN", f"twistchat:room:{name}:members").strip() == "0"
        assert sorted(redis.cli("SMEMBERS", "twistchat:nodes").split()) == ["a", "b"]
        await defer.gatherResults([a.sweep(), b.sweep()])  # nothing more
        assert len(gone) == 6 and leaves(redis, "r1") == ["carol"]

        c.link.open()  # C comes back with the same id, and a member
        await c.heartbeat()
        enter(c, "r1", "erin")
        await c.sweep()
        await defer.gatherResults([a.sweep(), b.sweep()])
        assert redis.cli("HKEYS", "twistchat:room:r1:members").split() == ["erin"]
        assert leaves(redis, "r1") == ["carol"]
    finally:
        globalLogPublisher.removeObserver(observe)
        for node in (a, b, c):
            await node.stop()


@pytest_twisted.ensureDeferred
async def test_a_vouch_given_on_one_node_reaches_the_other(
        tmp_path: Path, two_nodes: Cluster) -> None:
    """
    alice logs in on node A from a second device, with a vouch made by her
    first: bob on node B gets the vouch in the C{joined} notice and in the
    member list (C{/who}), and carol, logging in on B later, in her welcome's
    list (from Redis's member hash).
    """
    from twistchat.config import DEFAULT_ROOM
    from twistchat.crypto.identity import Identity
    from twistchat.crypto.vouch import make_vouch
    from twisted.internet import reactor

    class Joins(ChatListener):
        def __init__(self) -> None:
            self.joined: list[ClientMember] = []

        def member_joined(self, member: ClientMember) -> None:
            self.joined.append(member)

    a, b = two_nodes.nodes
    sessions: list[ChatSession] = []

    async def login(name: str, node: Node, **options: Any) -> ChatSession:
        session: ChatSession = await connect(
            reactor, "127.0.0.1", node.port, name, PASSWORD,
            trust=TrustOnFirstUse(tmp_path / "known_hosts"), profile=tmp_path / "p" / name,
            **options)
        sessions.append(session)
        return session

    try:
        first, second = Identity.generate(), Identity.generate()
        vouch = make_vouch(first, DEFAULT_ROOM, "alice", second.public_key,
                           int(time.time()) + 86400)
        heard = Joins()
        bob = await login("bob", b, listener=heard)
        await login("alice", a, identity=second, vouch=vouch)
        await until(lambda: [m.name for m in heard.joined] == ["alice"], timeout=10)
        assert heard.joined[0].key == second.public_key
        assert heard.joined[0].vouch == vouch
        listed = {m.name: m for m in await bob.who()}
        assert listed["alice"].vouch == vouch and listed["bob"].vouch == b""
        carol = await login("carol", b)
        welcome = {m.name: m for m in carol.members}
        assert welcome["alice"].key == second.public_key
        assert welcome["alice"].vouch == vouch and welcome["bob"].vouch == b""
    finally:
        for session in sessions:
            await session.leave()
