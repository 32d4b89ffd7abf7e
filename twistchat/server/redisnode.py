"""
Scale-out: many server processes ("nodes") serve the same rooms through Redis.

Used only with C{twistd socketchat --redis URL}; the embedded default (one
process, SQLite) never imports this module. It plugs into the factory's
seams and changes none of them:

  - L{RedisHistory} is the factory's ordering pipeline (the C{history} seam:
    C{relay}, C{announce}, C{then}, C{joined}, C{start}, C{stop}). Every room
    event (message, join, leave, room closed) is appended to the room's
    stream with C{XADD}; Redis gives it its id, and that id is the room's one
    order. Each node reads every served room's stream with C{XREAD BLOCK} and
    fans each entry out to its own members in stream order, its own members'
    messages included: nothing is relayed straight after the write, so a
    message goes out only once Redis has it ("stored before relayed"), and
    every member on every node sees the same sequence.
  - L{RedisRoom}: a room whose member list (C{/who}, the welcome's list, name
    uniqueness, the member cap) is the room-wide one, mirrored from the
    stream's join and leave entries. A name is claimed atomically (a Lua
    script: C{HSETNX} on the room's member hash, then C{XADD} of the join).
  - L{SharedAddressBook}: failed-login counts and penalties kept in Redis too
    (C{INCR}/C{EXPIRE}), so that an attacker gains nothing from more nodes.
  - L{SharedGuessFactory}: the password checks in progress per address
    counted in Redis (a sorted set of slots that lapse), so that
    C{--max-guesses-per-address} holds for the whole group.
  - L{RedisNodeService}: connects, publishes this node's rooms and adopts the
    shared ones and the shared decoy secret before the listener starts;
    heartbeats; notices dead nodes (an expired heartbeat) and announces their
    members' leaves; follows rooms added or changed in Redis.

Dead nodes cost in proportion to their members, not to the rooms: each node
lists its members' claims in a hash of its own (the "held" hash, written by
the same script as the room's member hash), and is in a set of nodes. Every
node looks every L{SWEEP_INTERVAL} at that set and the heartbeats (two
commands); for a node whose heartbeat expired, one node takes a lock and
announces the leaves of the claims in its held hash, each once (a script
that takes the claim out of the held hash first).

Why streams rather than C{PUBLISH}: a stream entry is stored and ordered by
the same command, so history, order and "stored before relayed" are one
thing; a node that misses a moment (a reconnect) reads on from its last id
instead of losing what was published meanwhile.

Redis holds, per room: the stream (sealed messages as relayed: sender name,
session id, counter, ciphertext, server time; joins and leaves with name and
address), the member hash (name, address, node), the verifier; per node a
heartbeat and its held hash (room, name, address of each of its members),
and the set of node ids; per address its failed-login count and penalty and
its checks in progress, with expiry; and the decoy secret. Never plaintext,
never a password or key. docs/operations.md lists the keys.

When Redis cannot be reached, members stay connected; a message is refused
with an C{unavailable} notice (never relayed unstored: the order itself comes
from Redis); the outage and its end are logged once each; the client library
reconnects by itself.
"""

from __future__ import annotations

import base64
import json
import secrets
import socket
import ssl
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import ILogObserver, LogEvent, Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twistchat import wire
from twistchat.crypto.verifier import Verifier
from twistchat.errors import ConfigError
from twistchat.redisurl import RedisURL
from twistchat.server.history import Row, history_frame
from twistchat.server.limits import AddressBook, AddressRecord, Limits
from twistchat.server.room import Member, Room, Rooms, ack, listed
from twistchat.server.service import CannotStart, ChatServerFactory

#: Every key starts with this.
PREFIX = "twistchat:"
#: The rooms' verifiers: a hash, room name -> verifier JSON.
ROOMS_KEY = PREFIX + "rooms"
#: The decoy secret shared by every node.
DECOY_KEY = PREFIX + "decoy"
#: Seconds between heartbeats; a node's heartbeat expires after HEARTBEAT_TTL.
HEARTBEAT_INTERVAL = 5.0
HEARTBEAT_TTL = 15
#: The node ids that hold (or held) members: a set.
NODES_KEY = PREFIX + "nodes"
#: Seconds between two looks for dead nodes.
SWEEP_INTERVAL = 5.0
#: Seconds one node keeps the right to clear a dead node's members (if it
#: dies meanwhile, another takes over after that), and claims cleared per
#: script.
SWEEP_LOCK = 10
SWEEP_BATCH = 100
ROOM_POLL_INTERVAL = 2.0
#: How long XREAD blocks (milliseconds) and how many entries it takes at once.
BLOCK_MS = 1000
READ_COUNT = 500
#: Seconds a command may take before Redis counts as unavailable.
COMMAND_TIMEOUT = 3.0
#: Seconds a message or a name claim waits for Redis's answer (Redis slow,
#: not gone): past COMMAND_TIMEOUT Redis counts as unavailable, but a write
#: already sent may still be carried out, so its sender is not told it failed.
STORE_PATIENCE = 30.0
#: Entries kept per room stream, about (XADD MAXLEN ~): the size cap.
DEFAULT_MAX_ENTRIES = 10000
#: Stream entries scanned for one history replay, at most.
MAX_REPLAY_SCAN = 5000

#: Seconds between two reads of one address's shared failure count.
REFRESH_INTERVAL = 0.5

UNAVAILABLE = "unavailable"
NO_ANSWER = "no answer in time"

# Claim a name and announce the join, atomically; the claim is also listed
# in its node's held hash (claim origin -> room, name, address), so that the
# node's members can be found without reading every room when it dies.
# KEYS: members hash, stream, held hash, the node set.
# ARGV: field, value, maxlen, name, addr, origin, frame, held entry, node.
JOIN_SCRIPT = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return false end
redis.call('HSET', KEYS[3], ARGV[6], ARGV[8])
redis.call('SADD', KEYS[4], ARGV[9])
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*',
  'k', 'j', 'name', ARGV[4], 'addr', ARGV[5], 'o', ARGV[6], 'f', ARGV[7])
"""
# Release a name (only if it is still this claim) and announce the leave; the
# claim leaves its node's held hash in any case.
# KEYS: members hash, stream, held hash.
# ARGV: field, value, maxlen, name, addr, origin, frame, claim origin.
LEAVE_SCRIPT = """
redis.call('HDEL', KEYS[3], ARGV[8])
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*',
  'k', 'l', 'name', ARGV[4], 'addr', ARGV[5], 'o', ARGV[6], 'f', ARGV[7])
"""
# This node is alive: its heartbeat, and its id in the node set.
# KEYS: heartbeat, node set. ARGV: seconds kept, node.
HEARTBEAT_SCRIPT = """
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
"""
# Announce the leaves of a batch of a dead node's members, each once: a claim
# is taken out of the held hash first (one sweeper gets it), and released only
# if the member hash still holds that claim. Nothing is done if the node's
# heartbeat is back. KEYS: heartbeat, held hash, then per claim its member
# hash and stream. ARGV: maxlen, then per claim: origin, field, name, addr,
# frame. Returns false (the node is alive) or, per claim, the leave's entry id
# or 0.
SWEEP_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local done = {}
for i = 1, (#ARGV - 1) / 5 do
  local a = 2 + (i - 1) * 5
  local result = 0
  if redis.call('HDEL', KEYS[2], ARGV[a]) == 1 then
    local members = KEYS[1 + 2 * i]
    local claim = redis.call('HGET', members, ARGV[a + 1])
    if claim and cjson.decode(claim)['o'] == ARGV[a] then
      redis.call('HDEL', members, ARGV[a + 1])
      result = redis.call('XADD', KEYS[2 + 2 * i], 'MAXLEN', '~', ARGV[1], '*',
        'k', 'l', 'name', ARGV[a + 2], 'addr', ARGV[a + 3], 'o', '', 'f', ARGV[a + 4])
    end
  end
  done[i] = result
end
return done
"""
# Forget a dead node once its held hash is empty, and give up its sweep lock.
# KEYS: heartbeat, held hash, node set, lock. ARGV: node, this node.
FORGET_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SREM', KEYS[3], ARGV[1])
end
if redis.call('GET', KEYS[4]) == ARGV[2] then redis.call('DEL', KEYS[4]) end
"""
# The member hash and the stream's last id, at one instant.
SNAPSHOT_SCRIPT = """
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local id = '0-0'
if #last > 0 then id = last[1][1] end
return {id, redis.call('HGETALL', KEYS[1])}
"""
# One more failed login for an address. KEYS: counter. ARGV: seconds kept.
FAIL_SCRIPT = """
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return n
"""


# Take one of an address's password-check slots if fewer than the limit are
# taken on all nodes. A slot is a member of a sorted set scored by when it
# lapses (a check cannot outlive the handshake timeout, so a dead node's slots
# lapse by themselves). KEYS: slots. ARGV: now ms, lapse ms, limit, slot.
TAKE_SLOT_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) - tonumber(ARGV[1]) + 1000)
return 1
"""

#: Seconds between two tries for a slot while an address's checks wait.
SLOT_RETRY = 0.25


def stream_key(room: str) -> str:
    return f"{PREFIX}room:{room}:log"


def members_key(room: str) -> str:
    return f"{PREFIX}room:{room}:members"


def node_key(node: str) -> str:
    return f"{PREFIX}node:{node}"


def held_key(node: str) -> str:
    return f"{PREFIX}held:{node}"


def sweep_key(node: str) -> str:
    return f"{PREFIX}sweep:{node}"


def fail_key(host: str) -> str:
    return f"{PREFIX}fail:{host}"


def block_key(host: str) -> str:
    return f"{PREFIX}block:{host}"


def guess_key(host: str) -> str:
    return f"{PREFIX}guess:{host}"


def probe(url: RedisURL, timeout: float = COMMAND_TIMEOUT) -> None:
    """
    Check, blocking, that Redis answers at C{url} and takes its password and
    database: a node runs this once from C{startService}, before the reactor
    runs, so that Redis unreachable at start is a one-line failure with exit
    status 1 (as a port in use is) rather than a log line and a clean exit.

    It speaks just enough of Redis's protocol (RESP: C{AUTH}, C{SELECT},
    C{PING}, each answered by one status or error line); txredisapi, which
    needs the running reactor, does everything after.

    @raise ConfigError: with the reason, on one line, never the password.
    """
    commands: list[list[str]] = []
    if url.password is not None:
        commands.append(["AUTH", *([url.username] if url.username else []), url.password])
    commands += [["SELECT", str(url.db)], ["PING"]]
    try:
        with socket.create_connection((url.host, url.port), timeout=timeout) as raw:
            sock: socket.socket = raw
            if url.tls:
                sock = ssl.create_default_context().wrap_socket(raw, server_hostname=url.host)
            with sock.makefile("rb") as replies:
                for command in commands:
                    sock.sendall(_resp(command))
                    reply = replies.readline(1024).decode("utf-8", "replace").strip()
                    if not reply.startswith("+"):
                        refused = reply.lstrip("-") or "the connection was closed"
                        raise ConfigError(
                            f"cannot use Redis at {url}: {command[0]} refused: {refused}")
    except (OSError, ssl.SSLError) as e:
        reason = e.strerror or str(e) or type(e).__name__
        raise ConfigError(f"cannot reach Redis at {url}: {reason}") from None


def check_at_start(url: RedisURL, err: IO[str], timeout: float = COMMAND_TIMEOUT) -> None:
    """
    L{probe}, for a process that is starting.

    @raise CannotStart: if the probe fails; its line is written to C{err}
        and logged.
    """
    try:
        probe(url, timeout)
    except ConfigError as e:
        stop = CannotStart(e.message, reported=True)
        RedisNodeService.log.error("{line}", line=stop.line)
        err.write(stop.line + "\n")
        err.flush()
        raise stop from None


def _resp(command: Sequence[str]) -> bytes:
    """
    One command as RESP: an array of bulk strings.
    """
    parts = [f"*{len(command)}\r\n".encode()]
    for arg in command:
        data = arg.encode("utf-8")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class RedisUnavailable(Exception):
    """
    Redis did not answer (in time).
    """


class RedisLink:
    """
    Two connections to Redis (txredisapi, reconnecting by themselves): one for
    commands, one for the blocking stream reads.

    Every command has a deadline: a command that cannot be sent (Redis is
    away) or is not answered in time fails with L{RedisUnavailable}. The
    outage and its end are each logged once.

    @ivar available: whether the last command or read succeeded.
    @ivar observe: called with each answered command's round-trip time in
        seconds (the metrics' histogram), or None.
    """

    log = Logger()

    def __init__(self, url: RedisURL, clock: IReactorTime,
                 timeout: float = COMMAND_TIMEOUT) -> None:
        self.url = url
        self.clock = clock
        self.timeout = timeout
        self.available = True
        self.observe: Callable[[float], None] | None = None
        self._commands: Any = None
        self._reader: Any = None

    def _connect(self) -> Any:
        import txredisapi
        from twisted.internet import ssl

        tls: Any = ssl.optionsForClientTLS(self.url.host) if self.url.tls else False
        return txredisapi.lazyConnection(
            self.url.host, self.url.port, dbid=self.url.db, reconnect=True,
            charset=None, password=self.url.password, username=self.url.username,
            ssl_context_factory=tls, convertNumbers=False, connectTimeout=self.timeout,
        )

    def open(self) -> None:
        self._commands = self._connect()
        self._reader = self._connect()

    def close(self) -> defer.Deferred[Any]:
        done = [c.disconnect() for c in (self._commands, self._reader) if c is not None]
        self._commands = self._reader = None
        return defer.gatherResults(done, consumeErrors=True).addErrback(lambda _: None)

    def call(self, *args: Any, timeout: float | None = None,
             patience: float | None = None) -> defer.Deferred[Any]:
        """
        Run one command.

        @param patience: for a write whose outcome must be known (a message
            stored, a name claimed): how long to wait for its answer. Past
            C{timeout} Redis counts as unavailable (logged; new messages are
            refused) but this command waits on, as Redis may still carry it
            out: a slow Redis delays it rather than failing it.
        @return: a Deferred firing with the reply, or failing with
            L{RedisUnavailable} (or txredisapi's C{ResponseError} for a
            command Redis refused).
        """
        if patience is None:
            return self._run(self._commands, args, timeout or self.timeout)
        late = self.clock.callLater(timeout or self.timeout, self.down, NO_ANSWER)

        def answered(result: Any) -> Any:
            if late.active():
                late.cancel()
            return result

        return self._run(self._commands, args, patience).addBoth(answered)

    def read(self, *args: Any) -> defer.Deferred[Any]:
        """
        Run one blocking read (on the reader connection).
        """
        return self._run(self._reader, args, self.timeout + BLOCK_MS / 1000)

    def _run(self, connection: Any, args: Sequence[Any], timeout: float) -> defer.Deferred[Any]:
        import txredisapi

        if connection is None:
            return defer.fail(RedisUnavailable("not connected"))
        d: defer.Deferred[Any] = connection.execute_command(*args)
        d.addTimeout(timeout, self.clock)
        started = self.clock.seconds()

        def ok(reply: Any) -> Any:
            self.up()
            if self.observe is not None and connection is self._commands:
                self.observe(self.clock.seconds() - started)
            return reply

        def failed(failure: Failure) -> Failure:
            if failure.check(txredisapi.ResponseError):
                return failure
            if failure.check(defer.CancelledError):
                return Failure(RedisUnavailable("cancelled"))  # we stopped it: no outage
            reason = NO_ANSWER if failure.check(defer.TimeoutError) else (
                str(failure.value) or type(failure.value).__name__
            )
            self.down(reason)
            return Failure(RedisUnavailable(reason))

        return d.addCallbacks(ok, failed)

    def probe(self) -> defer.Deferred[None]:
        """
        A real write, for C{/healthz}: this node's health key, set with a
        short expiry.
        """
        d = self.call("SET", f"{PREFIX}health:{id(self):x}", str(self.clock.seconds()), "EX", 60)
        return d.addCallback(lambda _: None)

    def up(self) -> None:
        if not self.available:
            self.available = True
            self.log.warn("redis: {url} reachable again", url=str(self.url))

    def down(self, reason: str) -> None:
        if self.available:
            self.available = False
            self.log.error(
                "redis: {url} unavailable ({reason}); messages are refused until it returns",
                url=str(self.url), reason=reason,
            )


def _id(entry_id: bytes | str) -> tuple[int, int]:
    """
    A stream id as a comparable pair.
    """
    text = entry_id.decode("ascii") if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _fields(flat: Sequence[bytes]) -> dict[str, bytes]:
    return {flat[i].decode("ascii"): flat[i + 1] for i in range(0, len(flat) - 1, 2)}


class RedisRoom(Room):
    """
    A room whose member list is room-wide: this node's members (the base
    class's) and everyone the stream says is in, on any node.
    """

    def __init__(self, verifier: Verifier) -> None:
        super().__init__(verifier)
        #: casefolded name -> (name, addr, identity key and vouch as base64
        #: text; the vouch empty if none), as of the last stream entry read.
        self.everyone: dict[str, tuple[str, str, str, str]] = {}

    def __len__(self) -> int:
        return len(self.everyone.keys() | {m.name.casefold() for m in self.members})

    def taken(self, name: str) -> bool:
        return name.casefold() in self.everyone or super().taken(name)

    def roster(self, exclude: Member | None = None) -> list[dict[str, object]]:
        skip = exclude.name.casefold() if exclude is not None else None
        return [
            listed(name, addr, key, vouch)
            for folded, (name, addr, key, vouch) in self.everyone.items()
            if folded != skip
        ]


class RedisRooms(Rooms):
    """
    Rooms that are L{RedisRoom}s.
    """

    def add(self, verifier: Verifier) -> Room:
        room = RedisRoom(verifier)
        self._rooms[room.name] = room
        return room


@dataclass(eq=False)
class _Local:
    """
    One of this node's members, as the reader sees it.
    """

    member: Member
    room: RedisRoom
    #: Its claim in the room's member hash (also the origin of its entries).
    origin: str
    value: str
    #: Entries up to this id happened before it joined (its welcome's list
    #: counts them).
    since: tuple[int, int] | None
    #: Frames held while its history is fetched (None: live).
    held: list[bytes] | None = None
    timer: IDelayedCall | None = None


@dataclass
class _Stream:
    room: RedisRoom
    last: bytes = b"0-0"
    loaded: bool = False
    #: Joins waiting for the room's snapshot.
    waiting: list[_Local] = field(default_factory=list)


class RedisHistory:
    """
    The factory's ordering pipeline on Redis (see the module docstring).

    @param limit: messages replayed to a member who joins (0: none).
    @param keep_days: age in days after which entries are trimmed (0: never).
    @param max_entries: entries kept per room stream, about.
    """

    log = Logger()

    def __init__(
        self,
        link: RedisLink,
        rooms: Rooms,
        clock: IReactorTime,
        node: str | None = None,
        limit: int = 50,
        keep_days: float = 0,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = 512 * 1024,
        hold_limit: float = COMMAND_TIMEOUT,
    ) -> None:
        self.link = link
        self.rooms = rooms
        self.clock = clock
        self.node = node or secrets.token_hex(6)
        self.limit = limit
        self.keep_days = keep_days
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.hold_limit = hold_limit
        self._serial = 0
        self._locals: dict[Member, _Local] = {}
        #: The same, by room: a stream entry concerns only its room's members.
        self._in_room: dict[RedisRoom, dict[Member, _Local]] = {}
        self._streams: dict[str, _Stream] = {}
        # Actions for this node's members, by origin, done when the reader
        # reaches the room's "closed" entry.
        self._actions: dict[str, tuple[RedisRoom, Callable[[Member], None], list[Member]]] = {}
        self._pending: set[defer.Deferred[Any]] = set()
        self._running = False
        self._reading: defer.Deferred[Any] | None = None
        self._loops: list[task.LoopingCall] = []
        #: Leaves Redis has not taken yet (retried by the sweep).
        self._unannounced: list[tuple[str, str, str, str, str]] = []

    # --- life cycle -------------------------------------------------------------

    def start(self) -> None:
        self._running = True
        for room in self.rooms:
            self._stream(room)
        for interval, func in ((HEARTBEAT_INTERVAL, self.heartbeat),
                               (SWEEP_INTERVAL, self.sweep)):
            loop = task.LoopingCall(func)
            loop.clock = self.clock
            loop.start(interval, now=True)
            self._loops.append(loop)
        if self.keep_days > 0:
            loop = task.LoopingCall(self.expire)
            loop.clock = self.clock
            loop.start(600, now=True)
            self._loops.append(loop)
        self._read()

    def stop(self) -> defer.Deferred[None]:
        """
        Wait (briefly) for writes under way (the leaves of the members just
        disconnected), remove this node's heartbeat, and close the link.
        """
        self._running = False
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        writes = defer.DeferredList(list(self._pending), consumeErrors=True)

        def last(_: Any) -> defer.Deferred[Any]:
            return self._quiet(self.link.call("DEL", node_key(self.node)))

        def close(_: Any) -> defer.Deferred[Any]:
            if self._reading is not None:
                self._reading.cancel()
            return self.link.close()

        d = writes.addCallback(last).addBoth(close)
        return d.addCallback(lambda _: None)

    def _quiet(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        return d.addErrback(lambda f: f.trap(RedisUnavailable, Exception) and None)

    def _track(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        self._pending.add(d)

        def done(result: Any) -> Any:
            self._pending.discard(d)
            return result

        return d.addBoth(done)

    # --- writing ------------------------------------------------------------------

    def _origin(self) -> str:
        self._serial += 1
        return f"{self.node}.{self._serial}"

    def relay(self, room: Room, sender: Member, frame: bytes, message: wire.Message) -> None:
        """
        Append one sealed message to the room's stream; it is relayed (to
        every member but its sender, on every node) once read back.
        """
        local = self._locals.get(sender)
        if local is None:
            return
        if not self.link.available:
            self._refuse(sender)
            return
        d = self.link.call(
            "XADD", stream_key(room.name), "MAXLEN", "~", self.max_entries, "*",
            "k", "m", "o", local.origin, "f", frame,
            "ts", repr(self.clock.seconds()), patience=STORE_PATIENCE,
        )
        d.addErrback(self._not_stored, sender)
        self._track(d)

    def _not_stored(self, failure: Failure, sender: Member) -> None:
        failure.trap(Exception)
        if not failure.check(RedisUnavailable):
            self.log.warn("redis: a message was not stored: {reason}", reason=str(failure.value))
        elif str(failure.value) == NO_ANSWER:
            # Sent, but not answered even in STORE_PATIENCE: Redis may yet store it.
            self._refuse(sender, "the server could not confirm in time that this message "
                         "was stored: it may or may not reach the room")
            return
        self._refuse(sender)

    def _refuse(self, member: Member, text: str = (
            "the server cannot store messages right now, so this one was not "
            "sent; try again in a moment")) -> None:
        member.deliver(wire.prefixed(wire.encode("notice", code=UNAVAILABLE, text=text)))

    def announce(self, room: Room, member: Member, frame: bytes) -> None:
        """
        Claim C{member}'s name and announce its join, or announce its leave
        (C{frame} is the C{joined} or C{left} frame the room made).
        """
        assert isinstance(room, RedisRoom)
        if member in room:
            self._join(room, member, frame)
        else:
            self._leave(member, frame)

    def _join(self, room: RedisRoom, member: Member, frame: bytes) -> None:
        origin = self._origin()
        value = json.dumps({"node": self.node, "o": origin, "name": member.name,
                            "key": base64.b64encode(member.key).decode("ascii"),
                            "vouch": base64.b64encode(member.vouch).decode("ascii"),
                            "addr": member.addr})
        stream = self._stream(room)
        local = _Local(member, room, origin, value, None, held=[])
        self._add_local(local)
        if stream.loaded:
            local.since = _id(stream.last)
        else:
            stream.waiting.append(local)
        held = json.dumps([room.name, member.name, member.addr])
        d = self.link.call(
            "EVAL", JOIN_SCRIPT, 4, members_key(room.name), stream_key(room.name),
            held_key(self.node), NODES_KEY,
            member.name.casefold(), value, self.max_entries, member.name, member.addr,
            origin, frame, held, self.node, patience=STORE_PATIENCE,
        )
        d.addCallbacks(self._claimed, self._claim_failed,
                       callbackArgs=(local,), errbackArgs=(local,))
        self._track(d)

    def _claimed(self, entry_id: bytes | None, local: _Local) -> None:
        if entry_id is None:
            self._turn_away(local, "name-taken",
                            f"the name {local.member.name!r} is already taken in this room")

    def _claim_failed(self, failure: Failure, local: _Local) -> None:
        failure.trap(Exception)
        self._turn_away(local, UNAVAILABLE, "the server cannot reach its database; try again later")

    def _turn_away(self, local: _Local, code: str, text: str) -> None:
        member = local.member
        if self._locals.get(member) is not local:
            return
        self._drop_local(member)
        local.room.leave(member)
        shut_down = getattr(member, "shut_down", None)
        if shut_down is not None:
            shut_down(wire.encode("error", code=code, text=text))

    def _add_local(self, local: _Local) -> None:
        self._locals[local.member] = local
        self._in_room.setdefault(local.room, {})[local.member] = local

    def _drop_local(self, member: Member) -> _Local | None:
        local = self._locals.pop(member, None)
        if local is not None:
            in_room = self._in_room[local.room]
            del in_room[member]
            if not in_room:
                del self._in_room[local.room]
        return local

    def _leave(self, member: Member, frame: bytes) -> None:
        local = self._drop_local(member)
        if local is None:
            return
        if local.timer is not None and local.timer.active():
            local.timer.cancel()
        self._announce_leave(local.room.name, member.name.casefold(), local.value,
                             member.name, member.addr, local.origin, frame)

    def _announce_leave(self, room: str, key: str, value: str, name: str, addr: str,
                        origin: str, frame: bytes) -> None:
        claim = json.loads(value)
        d = self.link.call(
            "EVAL", LEAVE_SCRIPT, 3, members_key(room), stream_key(room),
            held_key(claim["node"]),
            key, value, self.max_entries, name, addr, origin, frame, claim["o"],
        )

        def failed(failure: Failure) -> None:
            failure.trap(Exception)
            self._unannounced.append((room, key, value, name, addr))

        d.addErrback(failed)
        self._track(d)

    def then(self, room: Room, action: Callable[[Member], None]) -> None:
        """
        Do C{action} to each of this node's members of C{room} once the
        reader reaches the room's "closed" entry (after every event before it).
        """
        assert isinstance(room, RedisRoom)
        origin = self._origin()
        members = list(self._in_room.get(room, ()))
        self._actions[origin] = (room, action, members)
        d = self.link.call("XADD", stream_key(room.name), "MAXLEN", "~", self.max_entries,
                           "*", "k", "c", "o", origin)

        def failed(failure: Failure) -> None:
            failure.trap(Exception)
            # Without Redis there is no order to keep: do it now.
            self._actions.pop(origin, None)
            for member in members:
                action(member)

        d.addErrback(failed)
        self._track(d)

    # --- reading ------------------------------------------------------------------

    def _stream(self, room: Room) -> _Stream:
        assert isinstance(room, RedisRoom)
        stream = self._streams.get(room.name)
        if stream is None or stream.room is not room:
            stream = self._streams[room.name] = _Stream(room)
            self._snapshot(stream)
        return stream

    def _snapshot(self, stream: _Stream) -> None:
        name = stream.room.name
        d = self.link.call("EVAL", SNAPSHOT_SCRIPT, 2, members_key(name), stream_key(name))

        def loaded(reply: list[Any]) -> None:
            last, flat = reply
            stream.last = last
            everyone = {}
            for value in flat[1::2]:
                claim = json.loads(value)
                everyone[claim["name"].casefold()] = (
                    claim["name"], claim["addr"], claim.get("key", ""), claim.get("vouch", ""))
            stream.room.everyone = everyone
            stream.loaded = True
            for local in stream.waiting:
                local.since = _id(last)
            stream.waiting = []

        def failed(failure: Failure) -> None:
            failure.trap(Exception)
            if self._running and self._streams.get(name) is stream:
                self.clock.callLater(1.0, self._snapshot, stream)

        d.addCallbacks(loaded, failed)

    def _read(self) -> None:
        if not self._running:
            return
        streams = [s for s in self._streams.values() if s.loaded]
        if not streams:
            self._reading = None
            self.clock.callLater(0.1, self._read)
            return
        keys = [stream_key(s.room.name) for s in streams]
        ids = [s.last for s in streams]
        d = self.link.read("XREAD", "COUNT", READ_COUNT, "BLOCK", BLOCK_MS,
                           "STREAMS", *keys, *ids)
        self._reading = d
        d.addCallbacks(self._got, self._read_failed, (streams,))

    def _got(self, reply: Any, streams: list[_Stream]) -> None:
        self._reading = None
        by_key = {stream_key(s.room.name).encode(): s for s in streams}
        for key, entries in reply or ():
            stream = by_key.get(key)
            if stream is None or self._streams.get(stream.room.name) is not stream:
                continue
            for entry_id, flat in entries:
                stream.last = entry_id
                try:
                    self._dispatch(stream.room, _id(entry_id), _fields(flat))
                except Exception:
                    self.log.failure("redis: cannot relay stream entry {id}", id=entry_id)
        self._read()

    def _read_failed(self, failure: Failure) -> None:
        self._reading = None
        if failure.check(defer.CancelledError):
            return
        failure.trap(Exception)
        if self._running:
            self.clock.callLater(1.0, self._read)

    def _dispatch(self, room: RedisRoom, at: tuple[int, int], entry: dict[str, bytes]) -> None:
        kind = entry.get("k")
        origin = entry.get("o", b"").decode("ascii")
        if kind == b"c":
            self._closed(origin)
            return
        if kind in (b"j", b"l"):
            name = entry["name"].decode("utf-8")
            if kind == b"j":
                # The identity key (and vouch) is in the joined frame the entry carries.
                joined = json.loads(entry["f"])
                room.everyone[name.casefold()] = (name, entry["addr"].decode("utf-8"),
                                                  joined.get("key", ""), joined.get("vouch", ""))
            else:
                room.everyone.pop(name.casefold(), None)
        data = wire.prefixed(entry["f"])
        for local in list(self._in_room.get(room, {}).values()):
            if local.origin == origin:
                if kind == b"m":
                    self._acknowledge(local, at, entry["f"])
                continue
            if local.since is None or at <= local.since:
                continue
            if local.held is not None:
                local.held.append(data)
            else:
                local.member.deliver(data)

    def _acknowledge(self, local: _Local, at: tuple[int, int], frame: bytes) -> None:
        """
        Tell this node's member who sent a message, now read back from the
        stream, that it was accepted: Redis has it, in the room's order. Its
        position is made from the stream entry id (milliseconds, then the
        entry's number within them), so it grows with the order.
        """
        sent = json.loads(frame)
        local.member.deliver(ack(sent["sid"], sent["n"], at[0] * 1_000_000 + at[1]))

    def _closed(self, origin: str) -> None:
        found = self._actions.pop(origin, None)
        if found is None:
            return  # another node's: it tells its own members
        room, action, members = found
        for member in members:
            action(member)

    # --- late joiners -------------------------------------------------------------

    def joined(self, room: Room, member: Member) -> None:
        """
        Send C{member} the room's last messages from before it joined, then
        what was read meanwhile.
        """
        local = self._locals.get(member)
        if local is None:
            return
        if self.limit <= 0:
            self._go_live(local)
            return
        local.timer = self.clock.callLater(self.hold_limit, self._history_late, local)
        self._when_placed(local).addCallback(self._replay)

    def _when_placed(self, local: _Local) -> defer.Deferred[_Local]:
        if local.since is not None:
            return defer.succeed(local)
        d: defer.Deferred[_Local] = defer.Deferred()

        def check() -> None:
            if local.since is not None:
                d.callback(local)
            elif self._locals.get(local.member) is local:
                self.clock.callLater(0.05, check)

        check()
        return d

    @defer.inlineCallbacks
    def _replay(self, local: _Local) -> Any:
        assert local.since is not None
        key = stream_key(local.room.name)
        end = "{}-{}".format(*local.since)
        rows: list[Row] = []
        scanned = 0
        try:
            while len(rows) < self.limit and scanned < MAX_REPLAY_SCAN and local.since > (0, 0):
                page = yield self.link.call("XREVRANGE", key, end, "-", "COUNT", READ_COUNT)
                for entry_id, flat in page:
                    entry = _fields(flat)
                    if entry.get("k") == b"m":
                        rows.append(_row(local.room.name, _id(entry_id), entry))
                        if len(rows) >= self.limit:
                            break
                scanned += len(page)
                if len(page) < READ_COUNT:
                    break
                end = "(" + page[-1][0].decode("ascii")
        except Exception as e:
            if self._take(local):
                self.log.warn("history: none sent to {name} in room {room!r}: {reason}",
                              name=local.member.name, room=local.room.name,
                              reason=str(e) or type(e).__name__)
                self._go_live(local)
            return
        if not self._take(local):
            return
        frames: list[bytes] = []
        size = 0
        for row in rows:  # newest first
            frame = history_frame(row)
            size += len(frame)
            if size > self.max_bytes:
                break
            frames.append(frame)
        for frame in reversed(frames):
            local.member.deliver(frame)
        if frames:
            local.member.deliver(wire.prefixed(wire.encode(
                "notice", code="history", text=f"{len(frames)} earlier messages replayed")))
        self._go_live(local)

    def _take(self, local: _Local) -> bool:
        if local.timer is None or self._locals.get(local.member) is not local:
            return False
        if local.timer.active():
            local.timer.cancel()
        local.timer = None
        return True

    def _history_late(self, local: _Local) -> None:
        local.timer = None
        if self._locals.get(local.member) is local:
            self.log.warn("history: none sent to {name} in room {room!r}: no answer in time",
                          name=local.member.name, room=local.room.name)
            self._go_live(local)

    def _go_live(self, local: _Local) -> None:
        held, local.held = local.held or [], None
        for data in held:
            local.member.deliver(data)

    # --- nodes, rooms, retention ----------------------------------------------------

    def heartbeat(self) -> defer.Deferred[Any]:
        return self._quiet(self.link.call("EVAL", HEARTBEAT_SCRIPT, 2, node_key(self.node),
                                          NODES_KEY, HEARTBEAT_TTL, self.node))

    @defer.inlineCallbacks
    def sweep(self) -> Any:
        """
        Announce the leaves Redis could not take when they happened, and
        those of the members of nodes whose heartbeat expired.

        Its cost does not grow with the rooms: the node set and the other
        nodes' heartbeats are read (two commands); only a dead node's
        members are read, from its held hash, by the one node that takes
        its sweep lock.
        """
        try:
            retry, self._unannounced = self._unannounced, []
            for room, key, value, name, addr in retry:
                self._announce_leave(room, key, value, name, addr, "",
                                     wire.encode("left", name=name, addr=addr))
            nodes = yield self.link.call("SMEMBERS", NODES_KEY)
            others = sorted(n.decode("utf-8") for n in nodes if n.decode("utf-8") != self.node)
            if not others:
                return
            beats = yield self.link.call("MGET", *(node_key(n) for n in others))
            for node, beat in zip(others, beats):
                if beat is None:
                    yield self._clear(node)
        except RedisUnavailable:
            pass
        except Exception as e:  # a command Redis refused: try again next time
            self.log.warn("redis: the sweep for dead nodes failed: {reason}",
                          reason=str(e) or type(e).__name__)

    @defer.inlineCallbacks
    def _clear(self, node: str) -> Any:
        """
        Announce the leaves of dead node C{node}'s members, if no other node
        is doing it (L{SWEEP_LOCK}), and forget the node once none is left.

        @raise RedisUnavailable: if Redis does not answer.
        """
        locked = yield self.link.call("SET", sweep_key(node), self.node, "NX", "EX", SWEEP_LOCK)
        if locked is None:
            return
        cursor: bytes | int = 0
        while True:
            cursor, flat = yield self.link.call("HSCAN", held_key(node), cursor,
                                                "COUNT", SWEEP_BATCH)
            claims = []
            for i in range(0, len(flat) - 1, 2):
                room, name, addr = json.loads(flat[i + 1])
                claims.append((flat[i].decode("ascii"), room, name, addr))
            if claims and not (yield self._sweep_batch(node, claims)):
                break  # its heartbeat is back
            if int(cursor) == 0:
                break
        yield self.link.call("EVAL", FORGET_SCRIPT, 4, node_key(node), held_key(node),
                             NODES_KEY, sweep_key(node), node, self.node)

    @defer.inlineCallbacks
    def _sweep_batch(self, node: str, claims: list[tuple[str, str, str, str]]) -> Any:
        """
        Announce the leaves of some of dead node C{node}'s members (claim
        origin, room, name, address), each once (L{SWEEP_SCRIPT}).

        @return: a Deferred firing with False if the node's heartbeat is back.
        """
        keys: list[str] = [node_key(node), held_key(node)]
        args: list[Any] = [self.max_entries]
        for origin, room, name, addr in claims:
            keys += [members_key(room), stream_key(room)]
            args += [origin, name.casefold(), name, addr,
                     wire.encode("left", name=name, addr=addr)]
        done = yield self.link.call("EVAL", SWEEP_SCRIPT, len(keys), *keys, *args)
        if done is None:
            return False
        for (_, room, name, _), result in zip(claims, done):
            if isinstance(result, bytes):
                self.log.info("redis: node {node} is gone; {name} left room {room!r}",
                              node=node, name=name, room=room)
        return True

    def expire(self) -> defer.Deferred[Any]:
        """
        Trim entries older than C{keep_days} from every room's stream.
        """
        ms = int((self.clock.seconds() - self.keep_days * 86400) * 1000)
        calls = [self._quiet(self.link.call("XTRIM", stream_key(name), "MINID", "~", ms))
                 for name in list(self._streams)]
        return defer.gatherResults(calls)

    def forget(self, name: str) -> None:
        """
        Stop reading room C{name}'s stream once its closing is done.
        """
        if not any(room.name == name for room, _, _ in self._actions.values()):
            self._streams.pop(name, None)


def _row(room: str, at: tuple[int, int], entry: dict[str, bytes]) -> Row:
    """
    A stored message entry as a history row (its id keeps the stream order).

    @raise BadMessage: if the entry's frame is not a valid C{msg}.
    """
    message = wire.decode(entry["f"], wire.FROM_SERVER)
    return Row(at[0] * 2**20 + at[1], room, message["from"], float(entry["ts"]),
               message["sid"], message["n"], message["ct"])


@implementer(ILogObserver)
def _silent(event: LogEvent) -> None:
    """A log observer that drops every event."""


def publish_room(
    url: RedisURL, verifier: Verifier, clock: IReactorTime
) -> defer.Deferred[str | None]:
    """
    Add or change a room of a Redis group (as C{twistchat-passwd --redis}).

    @return: a Deferred firing with None once stored, or with the reason it
        was not (one line).
    """
    link = RedisLink(url, clock)
    link.log = Logger(observer=_silent)  # the caller reports
    link.open()
    d = link.call("HSET", ROOMS_KEY, verifier.room, json.dumps(verifier.to_json()))

    def outcome(result: Any) -> Any:
        reason = None
        if isinstance(result, Failure):
            reason = str(result.value) or type(result.value).__name__
        return link.close().addCallback(lambda _: reason)

    return d.addBoth(outcome)


class SharedAddressBook(AddressBook):
    """
    Failed logins and penalties counted in Redis too, across every node.

    The local record stays the one the server checks (synchronously); each
    failure is counted in Redis (C{INCR}, with expiry) and the penalty that
    the room-wide count earns is written back; a new connection's address is
    refreshed from Redis, which is done long before its password is checked
    (after TLS and the hello).
    """

    def __init__(self, limits: Limits, link: RedisLink, clock: IReactorTime) -> None:
        super().__init__(limits)
        self.link = link
        self.clock = clock
        self._refreshed_at: dict[str, float] = {}

    def get(self, host: str) -> AddressRecord:
        record = super().get(host)
        now = self.clock.seconds()
        if self.link.available and now - self._refreshed_at.get(host, -1.0) >= REFRESH_INTERVAL:
            self._refreshed_at[host] = now
            d = self.link.call("MGET", fail_key(host), block_key(host))
            d.addCallbacks(self._refreshed, lambda f: None, (host,))
        return record

    def expire(self, now: float) -> None:
        super().expire(now)
        for host in [h for h in self._refreshed_at if h not in self.records]:
            del self._refreshed_at[host]

    def _refreshed(self, reply: list[bytes | None], host: str) -> None:
        record = self.records.get(host)
        if record is None:
            return
        failures, until = reply
        if failures is not None:
            record.failures = max(record.failures, int(failures))
        if until is not None:
            record.blocked_until = max(record.blocked_until, float(until))

    def failed(self, host: str, now: float) -> float:
        penalty = super().failed(host, now)
        keep = int(6 * self.limits.max_failure_penalty) + 1
        d = self.link.call("EVAL", FAIL_SCRIPT, 1, fail_key(host), keep)
        d.addCallbacks(self._counted, lambda f: None, (host, now))
        return penalty

    def _counted(self, count: Any, host: str, now: float) -> None:
        record = self.get(host)
        record.failures = max(record.failures, int(count))
        over = record.failures - self.limits.free_failures
        if over <= 0:
            return
        penalty = min(self.limits.failure_penalty * 2 ** min(over - 1, 30),
                      self.limits.max_failure_penalty)
        record.blocked_until = max(record.blocked_until, now + penalty)
        self.link.call("SET", block_key(host), repr(record.blocked_until),
                       "EX", int(penalty) + 1).addErrback(lambda f: None)


class SharedGuessFactory(ChatServerFactory):
    """
    The factory of a node: password checks in progress per address are
    counted across nodes, so that C{--max-guesses-per-address} holds for the
    whole group, as it does for one server.

    Every share waits (the protocol's C{QUEUED} state) until this node has
    taken one of the address's slots in Redis, atomically
    (L{TAKE_SLOT_SCRIPT}); a node tries again every L{SLOT_RETRY} seconds
    while its address's checks wait, and at once when one of its own ends.
    Without Redis, the slots are counted on this node alone (a login then
    fails a moment later anyway, at the name claim).
    """

    def __init__(self, *args: Any, link: RedisLink, node: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.link = link
        self.node = node
        self._serial = 0
        #: The slot each connection holds in Redis (None: a local one).
        self._slots: dict[Any, str | None] = {}
        #: Addresses with a take under way or a retry scheduled.
        self._trying: set[str] = set()
        #: Addresses whose checks wait for another node's to end.
        self._waiting: set[str] = set()

    def guess_slot_free(self, host: str) -> bool:
        return False  # every share asks Redis (queue_guess)

    def queue_guess(self, protocol: Any) -> None:
        self.addresses.get(protocol.host).queued.append(protocol)
        self._try(protocol.host)

    def guess_ended(self, protocol: Any) -> None:
        record = self.addresses.get(protocol.host)
        record.guessing -= 1
        slot = self._slots.pop(protocol, None)
        if slot is not None:
            self.link.call("ZREM", guess_key(protocol.host), slot).addErrback(lambda f: None)
        self._try(protocol.host)

    def _try(self, host: str) -> None:
        if host in self._trying or not self.addresses.get(host).queued:
            return
        self._trying.add(host)
        self._serial += 1
        slot = f"{self.node}.{self._serial}"
        now = self.clock.seconds()
        d = self.link.call("EVAL", TAKE_SLOT_SCRIPT, 1, guess_key(host), int(now * 1000),
                           int((now + self.limits.handshake_timeout) * 1000),
                           self.limits.max_guesses_per_address, slot)
        d.addCallbacks(self._taken, self._not_taken, (host, slot), errbackArgs=(host,))

    def _taken(self, taken: Any, host: str, slot: str) -> None:
        record = self.addresses.get(host)
        if not int(taken):
            if record.queued and host not in self._waiting:
                self._waiting.add(host)  # logged once per wait, not per retry
                self.log.info(
                    "({host}) has {count} password checks in progress on all nodes: "
                    "{waiting} wait", host=host, count=self.limits.max_guesses_per_address,
                    waiting=len(record.queued))
            self.clock.callLater(SLOT_RETRY, self._retry, host)
            return
        self._trying.discard(host)
        self._waiting.discard(host)
        if not record.queued:  # the waiting connection went away meanwhile
            self.link.call("ZREM", guess_key(host), slot).addErrback(lambda f: None)
            return
        self._grant(record.queued.popleft(), slot)
        self._try(host)

    def _not_taken(self, failure: Failure, host: str) -> None:
        failure.trap(Exception)
        self._trying.discard(host)
        record = self.addresses.get(host)
        while record.queued and record.guessing < self.limits.max_guesses_per_address:
            self._grant(record.queued.popleft(), None)

    def _grant(self, protocol: Any, slot: str | None) -> None:
        self.addresses.get(protocol.host).guessing += 1
        self._slots[protocol] = slot
        protocol.slot_granted()

    def _retry(self, host: str) -> None:
        self._trying.discard(host)
        self._try(host)


class RedisNodeService(service.MultiService):
    """
    Runs its child (the listening L{ChatService}) once this node has joined
    the others: Redis reached, its own rooms published where Redis has none
    of that name, the shared rooms and decoy secret adopted. Then it follows
    the rooms in Redis (added, changed, removed) every L{ROOM_POLL_INTERVAL}.
    """

    log = Logger()

    def __init__(self, link: RedisLink, factory: Any, history: RedisHistory,
                 own: Iterable[Verifier], decoy: bytes, err: IO[str] | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        self.err = sys.stderr if err is None else err
        self.link = link
        self.factory = factory
        self.history = history
        self.own = list(own)
        self.decoy = decoy
        self._poll: task.LoopingCall | None = None
        self.ready: defer.Deferred[None] = defer.Deferred()

    def startService(self) -> None:
        """
        Check that Redis answers (blocking, once: twistd starts services
        before it runs the reactor), then join the group.

        @raise CannotStart: if Redis cannot be reached or refuses the
            password or database; its line is written to C{err} and logged.
        """
        check_at_start(self.link.url, self.err, self.link.timeout)
        service.Service.startService(self)
        self.link.open()
        self._join().addCallbacks(self._joined, self._cannot_join)

    @defer.inlineCallbacks
    def _join(self) -> Any:
        for verifier in self.own:
            yield self.link.call("HSETNX", ROOMS_KEY, verifier.room,
                                 json.dumps(verifier.to_json()))
        yield self.link.call("SET", DECOY_KEY, self.decoy, "NX")
        decoy = yield self.link.call("GET", DECOY_KEY)
        if isinstance(decoy, bytes) and len(decoy) == 32:
            self.factory._decoy_secret = decoy
        yield self.sync_rooms()

    def _joined(self, _: Any) -> None:
        self.log.info("redis: node {node} joined through {url}",
                      node=self.history.node, url=str(self.link.url))
        for child in self:
            child.startService()
        self._poll = task.LoopingCall(self.sync_rooms)
        self._poll.clock = self.history.clock
        self._poll.start(ROOM_POLL_INTERVAL, now=False)
        self.ready.callback(None)

    def _cannot_join(self, failure: Failure) -> None:
        from twisted.internet import reactor

        self.log.error("twistd socketchat: cannot use Redis at {url}: {reason}",
                       url=str(self.link.url), reason=str(failure.value) or "no answer")
        reactor.stop()

    @defer.inlineCallbacks
    def sync_rooms(self) -> Any:
        """
        Serve the rooms Redis lists now: add new ones, rekey changed ones,
        close removed ones.
        """
        try:
            flat = yield self.link.call("HGETALL", ROOMS_KEY)
        except RedisUnavailable:
            return
        rooms = self.factory.rooms
        current: dict[str, Verifier] = {}
        for i in range(0, len(flat) - 1, 2):
            name = flat[i].decode("utf-8")
            try:
                current[name] = Verifier.from_json(json.loads(flat[i + 1]))
            except (ValueError, TypeError, ConfigError) as e:
                self.log.warn("rooms: skipped room {room!r} in Redis: {reason}",
                              room=name, reason=str(e))
        for name, verifier in sorted(current.items()):
            room = rooms.get(name)
            if room is None:
                self.history._stream(rooms.add(verifier))
                self.log.info("rooms: room {room!r} added", room=name)
            elif room.verifier != verifier:
                room.rekey(verifier)
                self.log.info("rooms: room {room!r} has a new verifier; its {count} members "
                              "stay, new logins need the new password", room=name, count=len(room))
        for room in list(rooms):
            if room.name not in current:
                rooms.remove(room.name)
                self.log.info("rooms: room {room!r} removed; disconnecting its members",
                              room=room.name)
                self.factory.close_room(room)

    def stopService(self) -> defer.Deferred[None]:
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        if not self.ready.called:
            service.Service.stopService(self)
            return self.link.close().addCallback(lambda _: None)
        # The child stops the history, then the link.
        stopped: defer.Deferred[None] = super().stopService()  # type: ignore[no-untyped-call]
        return stopped
