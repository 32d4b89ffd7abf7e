"""
Operator endpoints: Prometheus metrics at C{/metrics} and a health check at
C{/healthz}, served with twisted.web on their own endpoint (C{--metrics}).

Needs the C{metrics} extra (C{prometheus_client}). Nothing here sits on the
relay path of a server started without C{--metrics}. With it:

  - gauges are read from the factory when Prometheus scrapes
    (L{StateCollector}): connections by state, rooms, members, send queues;
  - logins, relayed messages and history writes are counted by
    L{MeasuredFactory} and L{MeasuredStore}, subclasses that count once per
    login, per message (its deliveries as one number) and per history batch,
    never per delivery;
  - errors sent to peers are counted from the server's
    C{twistchat.error_sent} log event, by code (L{ErrorCounter}).

No metric or label holds a member name, an address or (unless
C{room_names}) a room name; none holds a password, a key or a message.

With C{--workers} (L{twistchat.server.workers}), prometheus_client's
multiprocess mode joins the workers: each worker's counters and histograms
live in files of a directory the parent gives it, and its gauges, which
multiprocess mode cannot compute at scrape time, are sampled every
L{SAMPLE_INTERVAL} into multiprocess gauges (L{SampledGauges},
L{WorkerMetricsService}); the parent serves the sums, and health from all
workers listening and its own Redis probe (L{WorkersMetricsService}).

The exposition is rendered in the reactor thread, not in a thread pool as
C{prometheus_client.twisted.MetricsResource} does, because the collector
reads the factory's state, which only the reactor thread may touch.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.logger import ILogObserver, LogEvent, Logger, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web import resource, server
from zope.interface import implementer

from twistchat import wire
from twistchat.server.history import HistoryStore, PoolReactor
from twistchat.server.protocol import ChatServerProtocol
from twistchat.server.room import Member, Room
from twistchat.server.service import ChatServerFactory, Connection
from twistchat.server.siteservice import SiteService

#: The log event every error sent to a peer emits (see the protocol module).
ERROR_EVENT = "twistchat.error_sent"
#: Seconds a /healthz answer waits for its store probe before it says 503.
PROBE_LIMIT = 4.0
#: The table the health probe writes its one row to (outside the history's
#: own schema: nothing reads it).
HEALTH_TABLE = "health_probe"

#: Histogram buckets (seconds): a login runs scrypt on the client, so
#: seconds; a commit is milliseconds.
LOGIN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """
    The counters and histograms of one server, in their own registry.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.logins = Counter("twistchat_logins", "Logins, by result (ok, failed).",
                              ["result"], registry=r)
        self.logins_ok = self.logins.labels(result="ok")
        self.logins_failed = self.logins.labels(result="failed")
        self.errors = Counter(
            "twistchat_errors_sent",
            "Errors sent to peers (refusals and disconnections), by error code.",
            ["code"], registry=r)
        self.slow_readers = Counter(
            "twistchat_slow_readers_dropped", "Members dropped for not reading.", registry=r)
        self.messages = Counter("twistchat_messages_accepted",
                                "Messages accepted for relay.", registry=r)
        self.deliveries = Counter(
            "twistchat_deliveries",
            "Deliveries of accepted messages (recipients when accepted).", registry=r)
        self.bytes_in = Counter("twistchat_message_received_bytes",
                                "Bytes of accepted message frames.", registry=r)
        self.bytes_out = Counter("twistchat_message_sent_bytes",
                                 "Bytes of message frames to deliver.", registry=r)
        self.rows_stored = Counter("twistchat_history_rows_stored",
                                   "Messages committed to the history store.", registry=r)
        self.store_failures = Counter(
            "twistchat_history_store_failures",
            "History writes (batches) that failed.", registry=r)
        self.login_seconds = Histogram(
            "twistchat_login_duration_seconds",
            "From connection to welcome, for logins that succeed.",
            buckets=LOGIN_BUCKETS, registry=r)
        self.relay_seconds = Histogram(
            "twistchat_relay_delay_seconds",
            "From accepting a message to committing it to history (it is relayed then).",
            buckets=STORE_BUCKETS, registry=r)
        self.redis_seconds = Histogram(
            "twistchat_redis_command_seconds",
            "Round trip of one Redis command (with --redis).",
            buckets=STORE_BUCKETS, registry=r)
        self.store_seconds = Histogram(
            "twistchat_history_store_seconds",
            "Duration of one history write (a batch of messages, one transaction).",
            buckets=STORE_BUCKETS, registry=r)

    def error_sent(self, code: str) -> None:
        """
        Count an error with C{code} sent to a peer.
        """
        self.errors.labels(code=code).inc()
        if code == "slow":
            self.slow_readers.inc()


class MeasuredFactory(ChatServerFactory):
    """
    A L{ChatServerFactory} that counts logins and relayed messages into
    C{metrics} (set before it serves): once per login, once per message.
    """

    def __init__(self, *args: Any, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metrics = metrics
        self._opened: dict[Connection, float] = {}

    def connection_made(self, protocol: Connection) -> Any:
        self._opened[protocol] = self.clock.seconds()
        return super().connection_made(protocol)

    def logged_in(self, protocol: Connection) -> None:
        super().logged_in(protocol)
        opened = self._opened.pop(protocol, None)
        self.metrics.logins_ok.inc()
        if opened is not None:
            self.metrics.login_seconds.observe(self.clock.seconds() - opened)

    def login_failed(self, protocol: Connection) -> None:
        super().login_failed(protocol)
        self.metrics.logins_failed.inc()

    def connection_lost(self, protocol: Connection) -> None:
        self._opened.pop(protocol, None)
        super().connection_lost(protocol)

    def relay(self, room: Room, sender: Member, frame: bytes, message: wire.Message) -> None:
        if self.rooms.get(room.name) is room:
            m = self.metrics
            recipients = len(room) - 1 if sender in room else len(room)
            m.messages.inc()
            m.deliveries.inc(recipients)
            m.bytes_in.inc(len(frame))
            m.bytes_out.inc(len(frame) * recipients)
        super().relay(room, sender, frame, message)


class MeasuredStore(HistoryStore):
    """
    A L{HistoryStore} that times its writes and counts their rows and
    failures into C{metrics}, once per batch.
    """

    def __init__(self, path: Path, reactor: PoolReactor, metrics: Metrics,
                 clock: IReactorTime, **kwargs: Any) -> None:
        super().__init__(path, reactor, **kwargs)
        self.metrics = metrics
        self.clock = clock

    def append(
        self, rows: Sequence[tuple[str, str, float, bytes, int, bytes]]
    ) -> defer.Deferred[list[int]]:
        started = self.clock.seconds()
        accepted = [row[2] for row in rows]

        def stored(ids: list[int]) -> list[int]:
            now = self.clock.seconds()
            m = self.metrics
            m.store_seconds.observe(now - started)
            m.rows_stored.inc(len(ids))
            for ts in accepted:
                m.relay_seconds.observe(now - ts)
            return ids

        def failed(failure: Failure) -> Failure:
            self.metrics.store_seconds.observe(self.clock.seconds() - started)
            self.metrics.store_failures.inc()
            return failure

        return super().append(rows).addCallbacks(stored, failed)

    def probe(self) -> defer.Deferred[None]:
        """
        Write one row to the health table and commit: fails as a write of
        history would (locked, full, read-only, gone).
        """
        at = self.clock.seconds()

        def write(txn: Any) -> None:
            txn.execute(f"CREATE TABLE IF NOT EXISTS {HEALTH_TABLE} "
                        "(id INTEGER PRIMARY KEY CHECK (id = 1), at REAL NOT NULL)")
            txn.execute(f"INSERT OR REPLACE INTO {HEALTH_TABLE} (id, at) VALUES (1, ?)", (at,))

        d: defer.Deferred[None] = self.pool.runInteraction(write)
        return d


class StateCollector(Collector):
    """
    Gauges read from the factory at scrape time.
    """

    def __init__(self, factory: ChatServerFactory, room_names: bool = False) -> None:
        self.factory = factory
        self.room_names = room_names

    def collect(self) -> Iterable[Metric]:
        by_state = {"preauth": 0, "queued": 0, "member": 0}
        queued_sum = queued_max = 0
        for connection in self.factory.connections:
            if not isinstance(connection, ChatServerProtocol):
                continue
            phase = connection.stage.phase
            if phase == "MEMBER":
                by_state["member"] += 1
            elif phase == "QUEUED":
                by_state["queued"] += 1
            elif phase != "CLOSED":
                by_state["preauth"] += 1
            size = connection.queued
            queued_sum += size
            queued_max = max(queued_max, size)
        connections = GaugeMetricFamily(
            "twistchat_connections", "Open connections, by state.", labels=["state"])
        for state, count in by_state.items():
            connections.add_metric([state], count)
        yield connections
        rooms = list(self.factory.rooms)
        yield GaugeMetricFamily("twistchat_rooms", "Rooms served.", value=len(rooms))
        yield GaugeMetricFamily("twistchat_members", "Members in all rooms.",
                                value=sum(len(room) for room in rooms))
        if self.room_names:
            per_room = GaugeMetricFamily("twistchat_room_members", "Members, by room.",
                                         labels=["room"])
            for room in rooms:
                per_room.add_metric([room.name], len(room))
            yield per_room
        yield GaugeMetricFamily("twistchat_send_queue_bytes",
                                "Bytes queued to members that do not read, in all.",
                                value=queued_sum)
        yield GaugeMetricFamily("twistchat_send_queue_largest_bytes",
                                "Bytes queued to the member with the most queued.",
                                value=queued_max)
        link = getattr(self.factory.history, "link", None)
        if link is not None:
            yield GaugeMetricFamily("twistchat_redis_unavailable",
                                    "1 while Redis is unavailable (messages are refused).",
                                    value=0 if link.available else 1)
        failing = getattr(self.factory.history, "failing", None)
        yield GaugeMetricFamily("twistchat_history_failing",
                                "1 while the history store is failing (messages go unstored).",
                                value=1 if failing is not None else 0)


@implementer(ILogObserver)
class ErrorCounter:
    """
    A log observer counting the C{twistchat.error_sent} events by code.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def __call__(self, event: LogEvent) -> None:
        if event.get("event") == ERROR_EVENT:
            self.metrics.error_sent(str(event.get("code", "")))


class MetricsPage(resource.Resource):
    """
    C{/metrics}: the registry in Prometheus's text format.
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        self.registry = registry

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.registry)


class HealthPage(resource.Resource):
    """
    C{/healthz}: 200 C{ok} when the server listens and its store takes a
    write, probed for this answer (requests that come during a probe share
    it); else 503 and the reason, on one line.

    @param listening: whether the chat server listens now.
    @param probe: a real write to the store, or None (no store).
    @param reason: why it does not listen, or None for C{not listening}.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, clock: IReactorTime, listening: Callable[[], bool],
                 probe: Callable[[], defer.Deferred[None]] | None,
                 limit: float = PROBE_LIMIT,
                 reason: Callable[[], str] | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        self.clock = clock
        self.listening = listening
        self.reason = reason
        self.probe = probe
        self.limit = limit
        self._waiting: list[server.Request] = []
        self._timer: IDelayedCall | None = None

    def render_GET(self, request: server.Request) -> bytes | int:
        if not self.listening():
            why = "not listening" if self.reason is None else self.reason()
            return self._answer(request, why)
        if self.probe is None:
            return self._answer(request, None)
        self._waiting.append(request)
        request.notifyFinish().addErrback(lambda _: self._gone(request))
        if len(self._waiting) == 1:
            self._timer = self.clock.callLater(
                self.limit, self._done, f"history store: no answer within {self.limit:g} s")
            self.probe().addCallbacks(lambda _: self._done(None), self._failed)
        return server.NOT_DONE_YET

    def _gone(self, request: server.Request) -> None:
        if request in self._waiting:
            self._waiting.remove(request)

    def _failed(self, failure: Failure) -> None:
        reason = str(failure.value) or type(failure.value).__name__
        self._done(f"history store: {reason}")

    def _done(self, reason: str | None) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        waiting, self._waiting = self._waiting, []
        for request in waiting:
            if not request.finished:
                request.write(self._answer(request, reason))
                request.finish()

    def _answer(self, request: server.Request, reason: str | None) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        if reason is None:
            return b"ok\n"
        request.setResponseCode(503)
        return (" ".join(reason.split()) + "\n").encode("utf-8")


class MetricsEndpoint(SiteService):
    """
    Serve C{/metrics} (C{registry}) and C{/healthz} (C{health}) on
    C{endpoint} while running.
    """

    log = Logger()
    serving = "metrics"

    def __init__(self, endpoint: IStreamServerEndpoint, description: str,
                 registry: CollectorRegistry, health: HealthPage) -> None:
        root = resource.Resource()
        root.putChild(b"metrics", MetricsPage(registry))
        root.putChild(b"healthz", health)
        site = server.Site(root)
        site.noisy = False
        super().__init__(endpoint, description, site)

    def _listening(self, port: IListeningPort) -> None:
        super()._listening(port)
        address = port.getHost()
        self.log.info("metrics and health on port {port} ({host})",
                      event="twistchat.metrics_listening",
                      port=getattr(address, "port", None), host=getattr(address, "host", None))


class MetricsService(MetricsEndpoint):
    """
    Serve one server's C{/metrics} and C{/healthz} on C{endpoint} while
    running, and count the errors sent to peers from the log.

    @param listening: whether the chat server listens now.
    @param probe: a real write to the history store, or None.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, description: str,
                 metrics: Metrics, collector: StateCollector, clock: IReactorTime,
                 listening: Callable[[], bool],
                 probe: Callable[[], defer.Deferred[None]] | None) -> None:
        self.metrics = metrics
        metrics.registry.register(collector)
        ProcessCollector(registry=metrics.registry)
        PlatformCollector(registry=metrics.registry)
        super().__init__(endpoint, description, metrics.registry,
                         HealthPage(clock, listening, probe))
        self.observer = ErrorCounter(metrics)

    def startService(self) -> None:
        """
        @raise CannotStart: if the endpoint cannot listen.
        """
        super().startService()
        globalLogPublisher.addObserver(self.observer)

    def stopService(self) -> defer.Deferred[None]:
        globalLogPublisher.removeObserver(self.observer)
        return super().stopService()


#: With --workers: how the parent adds up each gauge over the live workers
#: (prometheus_client's multiprocess modes), and its labels. Connections and
#: send queues are each worker's own, so they are summed; rooms and members
#: are room-wide in every node of a Redis group (each worker counts everyone
#: in the room, on any node), so the largest count is taken, as for the
#: 0-or-1 outage gauges (1 when any worker has the outage).
WORKER_GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "twistchat_connections": ("livesum", ("state",)),
    "twistchat_rooms": ("livemax", ()),
    "twistchat_members": ("livemax", ()),
    "twistchat_room_members": ("livemax", ("room",)),
    "twistchat_send_queue_bytes": ("livesum", ()),
    "twistchat_send_queue_largest_bytes": ("livemax", ()),
    "twistchat_redis_unavailable": ("livemax", ()),
    "twistchat_history_failing": ("livemax", ()),
}
#: The gauge each worker sets to 1 while it listens (summed: workers listening).
LISTENING_GAUGE = "twistchat_workers_listening"
#: Seconds between a worker's samples of its gauges.
SAMPLE_INTERVAL = 1.0
#: The environment variable prometheus_client's multiprocess mode reads.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class SampledGauges:
    """
    In a worker of C{--workers}: the gauges of L{StateCollector}, read from
    this worker's state by L{sample} into prometheus_client's multiprocess
    gauges, which the parent adds up (see L{WORKER_GAUGES}).

    Multiprocess mode keeps values in files, so a gauge computed when
    Prometheus scrapes cannot be: the parent cannot call into a worker.
    Sampling on a timer keeps the relay path as it is (send-queue sizes
    change with every write) at the cost of gauges up to one interval old.
    A room that is gone keeps its C{--metrics-room-names} series at 0:
    multiprocess mode cannot remove a label.
    """

    def __init__(self, collector: StateCollector, registry: CollectorRegistry,
                 listening: Callable[[], bool]) -> None:
        self.collector = collector
        self.listening = listening
        self.listening_gauge = Gauge(
            LISTENING_GAUGE, "Workers listening on the chat port.",
            multiprocess_mode="livesum", registry=registry)
        self.gauges: dict[str, Gauge] = {}
        self.registry = registry
        self._labelled: dict[str, set[tuple[str, ...]]] = {}

    def _gauge(self, family: Metric) -> Gauge:
        gauge = self.gauges.get(family.name)
        if gauge is None:
            mode, labels = WORKER_GAUGES[family.name]
            gauge = self.gauges[family.name] = Gauge(
                family.name, family.documentation, labels,
                multiprocess_mode=mode, registry=self.registry)  # type: ignore[arg-type]
        return gauge

    def sample(self) -> None:
        """
        Set every gauge from this worker's state now.
        """
        self.listening_gauge.set(1 if self.listening() else 0)
        for family in self.collector.collect():
            gauge = self._gauge(family)
            _, names = WORKER_GAUGES[family.name]
            if not names:
                for s in family.samples:
                    gauge.set(s.value)
                continue
            seen = set()
            for s in family.samples:
                values = tuple(s.labels[name] for name in names)
                seen.add(values)
                gauge.labels(*values).set(s.value)
            for gone in self._labelled.get(family.name, set()) - seen:
                gauge.labels(*gone).set(0)
            self._labelled[family.name] = seen


class WorkerMetricsService(service.Service):
    """
    In a worker of C{--workers}: count the errors sent to peers from the log
    and sample the gauges every L{SAMPLE_INTERVAL}; the parent serves them
    (L{WorkersMetricsService}). The counters and histograms of L{Metrics}
    are in the shared files already, kept current on every change.
    """

    def __init__(self, metrics: Metrics, gauges: SampledGauges, clock: IReactorTime) -> None:
        self.observer = ErrorCounter(metrics)
        self.gauges = gauges
        self.loop = task.LoopingCall(gauges.sample)
        self.loop.clock = clock

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        globalLogPublisher.addObserver(self.observer)
        self.loop.start(SAMPLE_INTERVAL, now=True)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        if self.loop.running:
            self.loop.stop()
        globalLogPublisher.removeObserver(self.observer)


class WorkersCollector(Collector):
    """
    In the parent of C{--workers}: every worker's metrics, read from the
    files of prometheus_client's multiprocess mode at scrape time (the
    directory is the pool's, None until it starts), and the pool's own count
    of worker restarts (C{restarts}).
    """

    def __init__(self, folder: Callable[[], str | None], restarts: Callable[[], int]) -> None:
        self.folder = folder
        self.restarts = restarts

    def _merged(self, pattern: str) -> Iterable[Metric]:
        folder = self.folder()
        if folder is None:
            return []
        files = glob.glob(os.path.join(folder, pattern))
        # (prometheus_client leaves merge unannotated)
        merge: Callable[..., Iterable[Metric]] = MultiProcessCollector.merge
        return merge(files, accumulate=True)

    def collect(self) -> Iterable[Metric]:
        yield from self._merged("*.db")
        yield CounterMetricFamily(
            "twistchat_worker_restarts",
            "Workers that ended while the server ran and were started again.",
            value=self.restarts())

    def listening(self) -> int:
        """
        How many workers listen, as of their last samples.
        """
        for family in self._merged("gauge_livesum_*.db"):
            if family.name == LISTENING_GAUGE:
                return int(sum(s.value for s in family.samples))
        return 0


class WorkersMetricsService(MetricsEndpoint):
    """
    In the parent of C{--workers N}: one C{/metrics} for every worker
    (L{WorkersCollector}; counters of workers that ended stay in the sums,
    their gauges leave them) and one C{/healthz}: 200 when all N workers
    listen and Redis takes a real write from the parent's own connection.

    @param count: the number of workers.
    @param folder: the pool's directory of metric files, or None.
    @param link: the parent's L{twistchat.server.redisnode.RedisLink}, opened
        while this runs.
    @param restarts: the pool's count of worker restarts.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, description: str,
                 clock: IReactorTime, count: int, folder: Callable[[], str | None],
                 link: Any, restarts: Callable[[], int]) -> None:
        registry = CollectorRegistry()
        self.collector = WorkersCollector(folder, restarts)
        registry.register(self.collector)
        PlatformCollector(registry=registry)
        self.count = count
        self.link = link
        super().__init__(endpoint, description, registry,
                         HealthPage(clock, self.all_listening, link.probe,
                                    reason=self.not_listening))

    def all_listening(self) -> bool:
        return self.collector.listening() >= self.count

    def not_listening(self) -> str:
        return f"{self.collector.listening()} of {self.count} workers listening"

    def startService(self) -> None:
        """
        @raise CannotStart: if the endpoint cannot listen.
        """
        super().startService()
        self.link.open()

    def stopService(self) -> defer.Deferred[None]:
        closed = self.link.close()
        return defer.gatherResults([super().stopService(), closed]).addCallback(lambda _: None)


__all__ = [
    "ErrorCounter", "HealthPage", "MeasuredFactory", "MeasuredStore", "Metrics",
    "MetricsEndpoint", "MetricsPage", "MetricsService", "SampledGauges", "StateCollector",
    "WorkerMetricsService", "WorkersCollector", "WorkersMetricsService",
]
