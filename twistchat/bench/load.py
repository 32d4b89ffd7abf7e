"""
One load process of twistchat-bench: many simulated members on one reactor.

The controller runs C{python -m twistchat.bench.load CONFIG} and talks to it in
JSON lines: it answers C{started} once it is connected and warmed up, then runs
each command it reads on stdin (C{login}, C{fanout}, C{latency}, C{churn},
C{quit}) and prints one JSON line when the command is done.

Members of a twistchat server log in for real (TLS, then the SPAKE2+ handshake
of L{twistchat.client.protocol}); scrypt runs once per process and its result
is reused, since every member has the same password. Members of a baseline
server are logged in once TLS is up. After login, members count the bytes they
receive without framing or opening them (every relayed frame of a run has the
same length), except a few I{probe} members that read each frame's counter:
the window of the fan-out senders and the send time of the latency scenario.

Every loop here is bounded: by the command's end time, a count, or a timeout.
"""

from __future__ import annotations

import json
import re
import sys
import time
from array import array
from typing import Any

from twisted.internet import defer, protocol, stdio, task
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener
from twisted.protocols.basic import Int32StringReceiver, LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from twistchat import wire
from twistchat.bench.processes import raise_fd_limit
from twistchat.client.keyring import Keyring
from twistchat.client.protocol import ChatClientProtocol, State
from twistchat.client.trust import tofu_options
from twistchat.crypto.kdf import PasswordSecrets, ScryptParams, content_key, derive_secrets
from twistchat.crypto.seal import PAD_BLOCK, Sealer
from twistchat.framing import no_delay
from twistchat.tlsbinding import client_binding

#: Counters are sent as 16 digits, so every relayed frame of a run has one length.
COUNTER_BASE = 10**15
LOGIN_TIMEOUT = 60.0
N_FIELD = re.compile(rb'"n":(\d+)')
N_PREFIX = re.compile(rb"n=(\d+);")


def now_us() -> int:
    # CLOCK_MONOTONIC is one clock for every process of the machine.
    return time.monotonic_ns() // 1000


class _Ignore:
    """
    The client protocol's handler for a bench member: only login matters.
    """

    def __init__(self, member: TwistchatMember) -> None:
        self.member = member

    def logged_in(self, protocol: Any, welcome: wire.Message) -> None:
        self.member.ready.callback(self.member)

    def login_failed(self, failure: Failure) -> None:
        if not self.member.ready.called:
            self.member.ready.errback(failure)

    def message(self, *args: Any) -> None:
        pass

    rejected = event = message

    def closed(self, reason: Any) -> None:
        pass


class TwistchatMember(ChatClientProtocol):
    """
    The real client protocol up to the welcome; then a byte counter.
    """

    probe = False
    rx = 0

    def __init__(self, load: Load, name: str, room: str) -> None:
        self.load = load
        self.ready: defer.Deferred[Any] = defer.Deferred()
        # No keepalive: past the welcome, frames bypass the client's handling
        # (which would answer and reset it), and the server pings idle members.
        super().__init__(_Ignore(self), name, room, load.keyring(room), client_binding,
                         keepalive=None)

    def dataReceived(self, data: bytes) -> None:
        if self.state is State.MEMBER:
            self.load.rx_bytes += len(data)
            self.rx += len(data)
            if not self.probe:
                return
        super().dataReceived(data)

    def stringReceived(self, frame: bytes) -> None:
        if self.state is State.MEMBER:
            self.load.probe_frame(frame)
        else:
            super().stringReceived(frame)


@implementer(IHandshakeListener)
class RawMember(Int32StringReceiver):
    """
    A member of a baseline relay: no password handshake, frames as they are.
    """

    MAX_LENGTH = wire.MAX_FRAME_FROM_SERVER
    probe = False
    rx = 0

    def __init__(self, load: Load, name: str, room: str) -> None:
        self.load = load
        self.name = name
        self.ready: defer.Deferred[Any] = defer.Deferred()

    def connectionMade(self) -> None:
        no_delay(self.transport)  # as the real client does

    def handshakeCompleted(self) -> None:
        self.ready.callback(self)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self.ready.called:
            self.ready.errback(reason)

    def dataReceived(self, data: bytes) -> None:
        self.load.rx_bytes += len(data)
        self.rx += len(data)
        if self.probe:
            super().dataReceived(data)

    def stringReceived(self, frame: bytes) -> None:
        self.load.probe_frame(frame)


class Load:
    """
    The members of one load process and the commands that drive them.
    """

    def __init__(self, reactor: Any, config: dict[str, Any]) -> None:
        self.reactor = reactor
        self.config = config
        self.kind = config["kind"]
        self.password = config.get("password", "")
        self.size = config.get("size", 200)
        self.sender_ids = config.get("sender_ids", [])
        self.members: list[Any] = []
        self.rx_bytes = 0
        self.latencies = array("d")
        self.recording = False
        self.tls = tofu_options()
        self._cache: dict[tuple[bytes, ScryptParams], PasswordSecrets] = {}
        self._keyrings: dict[str, Keyring] = {}
        self.payload: bytes = b""
        self.member_class = TwistchatMember if self.kind == "twistchat" else RawMember

    # --- logging in -------------------------------------------------------------

    def derive(
        self, password: str, salt: bytes, params: ScryptParams
    ) -> defer.Deferred[PasswordSecrets]:
        # scrypt once per process: every member has the same password (and the
        # rooms of a run share one salt), so the load is not scrypt-bound.
        key = (bytes(salt), params)
        if key not in self._cache:
            self._cache[key] = derive_secrets(password, salt, params)
        return defer.succeed(self._cache[key])

    def keyring(self, room: str) -> Keyring:
        # One per room (the content key depends on the room); each derives
        # through the process-wide scrypt cache above.
        if room not in self._keyrings:
            self._keyrings[room] = Keyring(self.password, room, self.derive)
        return self._keyrings[room]

    def connect(self, name: str, room: str) -> defer.Deferred[Any]:
        endpoint = wrapClientTLS(
            self.tls, TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.config["port"], timeout=30)
        )
        factory = protocol.Factory.forProtocol(lambda: self.member_class(self, name, room))
        d = endpoint.connect(factory)

        def connected(member: Any) -> defer.Deferred[Any]:
            return member.ready

        d.addCallback(connected)
        d.addTimeout(LOGIN_TIMEOUT, self.reactor)
        return d

    @defer.inlineCallbacks
    def login(self, specs: list[list[str]], concurrency: int) -> Any:
        """
        Log in every C{[name, room]} of C{specs}, C{concurrency} at a time.
        """
        semaphore = defer.DeferredSemaphore(concurrency)
        if self.kind == "twistchat" and not self._cache and specs:
            # The first login runs scrypt; it is not part of the timed admission.
            self.members.append((yield self.connect(*specs[0])))
            specs = specs[1:]
        started = time.monotonic()
        results = yield defer.DeferredList(
            [semaphore.run(self.connect, name, room) for name, room in specs],
            consumeErrors=True,
        )
        seconds = time.monotonic() - started
        failures = [str(r.getErrorMessage()) for ok, r in results if not ok]
        self.members.extend(r for ok, r in results if ok)
        return {"seconds": seconds, "logged_in": len(self.members), "failed": len(failures),
                "errors": sorted(set(failures))[:3]}

    # --- frames -----------------------------------------------------------------

    def payload_frames(self) -> tuple[bytes, bytes]:
        """
        The bytes around the counter of one send frame: C{prefix + digits + suffix}.
        """
        size = self.size
        if self.kind == "threaded":
            from twistchat.bench.baselines.threaded_relay import seal

            return b"n=", b";" + seal(b"x" * size)
        if self.kind == "twistchat":
            member = self.members[0]
            secrets = next(iter(self._cache.values()))
            sealer = Sealer(content_key(secrets.content_secret, member.room),
                            member.room, member.name)
            sid, _, ct = sealer.seal("x" * size)
        else:
            sid, ct = b"s" * 16, b"c" * (PAD_BLOCK * -(-size // 32) + 16)
        frame = wire.encode("send", sid=sid, n=COUNTER_BASE, ct=ct)
        prefix, suffix = frame.split(b'"n":%d' % COUNTER_BASE)
        return prefix + b'"n":', suffix

    def probe_frame(self, frame: bytes) -> None:
        match = (N_PREFIX.match if self.kind == "threaded" else N_FIELD.search)(frame)
        if match is None:
            return
        n = int(match.group(1)) - COUNTER_BASE
        if self.recording:
            self.latencies.append((now_us() - n) / 1000.0)

    # --- scenarios ---------------------------------------------------------------

    def _senders(self) -> list[tuple[int, Any]]:
        return list(zip(self.sender_ids, self.members))

    def _probes(self, count: int) -> None:
        first = len(self.sender_ids)
        for member in self.members[first:first + count]:
            member.probe = True

    def _at(self, when: float, func: Any, *args: Any) -> None:
        self.reactor.callLater(max(0.0, when - time.monotonic()), func, *args)

    def fanout(self, start: float, end: float, window: int, frame_length: int,
               processes: int) -> defer.Deferred[Any]:
        """
        Senders send as fast as the room delivers: at most C{window} messages
        per sender beyond what the slowest local listener has received, so
        that no member's queue on the server grows without bound.
        """
        prefix, suffix = self.payload_frames()
        senders = [m for _, m in self._senders()]
        listeners = self.members[len(senders):]
        limit = window * len(senders) * processes
        d: defer.Deferred[Any] = defer.Deferred()
        marks: dict[str, Any] = {"sent": 0}

        def tick() -> None:
            if time.monotonic() >= end:
                loop.stop()
                return
            delivered = min(m.rx - marks[m] for m in listeners) // frame_length
            room = (delivered + limit) // processes - marks["sent"]
            if room <= 0:
                return
            share, extra = divmod(room, len(senders))
            for i, member in enumerate(senders):
                count = share + (i < extra)
                frames = []
                for _ in range(count):
                    marks["sent"] += 1
                    body = b"%s%d%s" % (prefix, COUNTER_BASE + marks["sent"], suffix)
                    frames.append(wire.prefixed(body))
                if frames:
                    member.transport.writeSequence(frames)

        def begin() -> None:
            marks["rx0"] = self.rx_bytes
            for m in listeners:
                marks[m] = m.rx
            loop.start(0.0005)

        def finish() -> None:
            marks["rx1"] = self.rx_bytes
            self._at(end + 0.3, d.callback, {
                "rx_bytes": marks["rx1"] - marks["rx0"], "sent": marks["sent"],
            })

        loop = task.LoopingCall(tick)
        loop.clock = self.reactor
        self._at(start, begin)
        self._at(end, finish)
        return d

    def latency(self, start: float, end: float, rate: float, probes: int) -> defer.Deferred[Any]:
        """
        Offer C{rate} messages a second, spread over the senders, and record
        each probe's delay from send to receipt.
        """
        self._probes(probes)
        prefix, suffix = self.payload_frames()
        senders = [m for _, m in self._senders()]
        d: defer.Deferred[Any] = defer.Deferred()
        marks: dict[str, Any] = {"sent": 0}

        def tick() -> None:
            now = time.monotonic()
            if now >= end:
                loop.stop()
                return
            due = int((now - start) * rate) - marks["sent"]
            for _ in range(max(0, min(due, 10000))):
                body = b"%s%d%s" % (prefix, COUNTER_BASE + now_us(), suffix)
                member = senders[marks["sent"] % len(senders)]
                member.transport.write(wire.prefixed(body))
                marks["sent"] += 1

        def begin() -> None:
            marks["rx0"] = self.rx_bytes
            self.recording = True
            loop.start(0.001)

        def finish() -> None:
            marks["rx1"] = self.rx_bytes
            self._at(end + 0.5, done)

        def done() -> None:
            self.recording = False
            lat = sorted(self.latencies)
            d.callback({
                "rx_bytes": marks["rx1"] - marks["rx0"],
                "sent": marks["sent"],
                "samples": len(lat),
                "latencies": [lat[int(q * (len(lat) - 1))] for q in (0.5, 0.99)] + [lat[-1]]
                if lat else [],
            })

        loop = task.LoopingCall(tick)
        loop.clock = self.reactor
        self._at(start, begin)
        self._at(end, finish)
        return d

    @defer.inlineCallbacks
    def churn(self, start: float, end: float, concurrency: int, room: str) -> Any:
        """
        Log members in and out, C{concurrency} at a time, until C{end}.

        Each name is new to the whole run: it carries this load process's
        C{number} (the controller's), since the load processes of one run
        share the room (and with Redis, its room-wide names) and would
        otherwise log in under each other's names at the same moment.
        """
        number = self.config.get("number", 0)
        counts: dict[str, Any] = {"ok": 0, "failed": 0, "seconds": 0.0, "errors": []}
        names = iter(range(1, 10**6))

        @defer.inlineCallbacks
        def worker(index: int) -> Any:
            while time.monotonic() < end:
                t0 = time.monotonic()
                try:
                    member = yield self.connect(f"h{number}-{index:03d}x{next(names):06d}", room)
                except Exception as e:
                    counts["failed"] += 1
                    if len(counts["errors"]) < 3:
                        counts["errors"].append(str(e) or type(e).__name__)
                    continue
                counts["ok"] += 1
                counts["seconds"] += time.monotonic() - t0
                member.transport.loseConnection()

        yield task.deferLater(self.reactor, max(0.0, start - time.monotonic()), lambda: None)
        yield defer.DeferredList([worker(i) for i in range(concurrency)])
        return counts

    def quit(self) -> defer.Deferred[Any]:
        for member in self.members:
            member.transport.loseConnection()
        return task.deferLater(self.reactor, 0.2, lambda: {})


class Commands(LineReceiver):
    """
    JSON lines from the controller on stdin; one JSON line back per command.
    """

    delimiter = b"\n"
    MAX_LENGTH = 1 << 24  # a login command lists every member

    def __init__(self, load: Load) -> None:
        self.load = load

    def connectionMade(self) -> None:
        self._reply({"event": "started"})

    def _reply(self, result: dict[str, Any]) -> None:
        assert self.transport is not None, "connected before any reply"
        self.transport.write(json.dumps(result).encode() + b"\n")

    def lineReceived(self, line: bytes) -> None:
        cmd = json.loads(line)
        load = self.load
        name = cmd.pop("cmd")
        if name == "login":
            d = load.login(cmd["members"], cmd["concurrency"])
        elif name == "fanout":
            d = load.fanout(cmd["start"], cmd["end"], cmd["window"], cmd["frame_length"],
                            cmd["processes"])
        elif name == "latency":
            d = load.latency(cmd["start"], cmd["end"], cmd["rate"], cmd["probes"])
        elif name == "churn":
            d = load.churn(cmd["start"], cmd["end"], cmd["concurrency"], cmd["room"])
        else:
            d = load.quit()
            d.addCallback(lambda _: self.load.reactor.stop())
            return

        def report(result: Any) -> None:
            if isinstance(result, Failure):
                result = {"error": result.getErrorMessage()}
            result["event"] = name
            self._reply(result)

        d.addBoth(report)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        # The controller went away: never outlive it.
        if self.load.reactor.running:
            self.load.reactor.stop()


def main() -> None:
    raise_fd_limit()
    from twisted.internet import reactor

    config = json.loads(sys.argv[1])
    load = Load(reactor, config)
    # A hard bound on the life of a load process, whatever happens.
    reactor.callLater(config.get("lifetime", 900), reactor.stop)
    stdio.StandardIO(Commands(load))
    reactor.run()


if __name__ == "__main__":
    main()
