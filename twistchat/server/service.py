"""
The server factory (shared state of all connections) and the service that
listens with TLS and shuts down cleanly.

A server that cannot start (its port is in use, a file is unusable) raises
L{CannotStart}: twistd then ends with exit status 1 and one line on stderr
naming the problem, without a traceback.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorTime, IStreamServerEndpoint
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from twistchat import wire
from twistchat.crypto.kdf import DEFAULT_PARAMS, ScryptParams
from twistchat.crypto.spake2plus import ORDER, G, VerifierKey, encode_point
from twistchat.errors import (
    Busy,
    ConfigError,
    LimitExceeded,
    Penalised,
    ServerShutdown,
    TwistchatError,
)
from twistchat.server.limits import AddressBook, Limits
from twistchat.server.protocol import ChatServerProtocol
from twistchat.server.room import Member, Room, Rooms, ack_frame
from twistchat.server.verifiers import check_room, load_verifier
from twistchat.tlsbinding import server_binding

if TYPE_CHECKING:
    pass

#: Seconds between two scans of the data directory's rooms/ folder.
RELOAD_INTERVAL = 5.0


class CannotStart(SystemExit, Exception):
    """
    The server cannot start for a reason outside its options (a port in use,
    a missing or unusable file): the process ends with exit status 1 and one
    line naming the problem.

    Python ends the process on a C{SystemExit} by printing its message alone:
    no traceback. It is also an C{Exception}, so that when it comes from
    starting the service, twistd's runner handles it as it does any failure
    there: it removes its pid file and, when it runs as a daemon, passes the
    reason to the parent process waiting for the daemon to start (which
    prints it and exits 1; it would otherwise wait forever). twistd's usage
    text is for a C{usage.UsageError}, that is mistakes in the options.
    """

    def __init__(self, message: str, reported: bool = False) -> None:
        """
        @param reported: the line has already been written where it belongs:
            end with status 1 and print nothing more.
        """
        #: The reason, on one line.
        self.message = " ".join(message.split())
        #: The line shown.
        self.line = f"twistd socketchat: {self.message}"
        super().__init__(self.message if reported else self.line)
        if reported:
            self.code = 1


class Connection(Member, Protocol):
    """
    What the server needs of a connection (besides what its room needs).
    """

    #: The source address its per-address limits count against.
    host: str
    #: The room it said hello to (None before that).
    room: Room | None

    def slot_granted(self) -> None:
        """
        Its share, queued by L{ChatServerFactory.queue_guess}, has a slot now.
        """

    def room_closed(self) -> None:
        """
        Its room is no longer served.
        """

    def shut_down(self, frame: bytes) -> None:
        """
        The server stops: send C{frame} and close.
        """


class RoomLog(Protocol):
    """
    What the factory needs of the store that orders and keeps a room's events:
    L{twistchat.server.history.History} (SQLite) or
    L{twistchat.server.redisnode.RedisHistory} (Redis).
    """

    def relay(self, room: Room, sender: Member, frame: bytes, message: wire.Message) -> None:
        """Store C{frame} from C{sender}, then relay it in the room's order."""

    def announce(self, room: Room, member: Member, frame: bytes) -> None:
        """Relay a presence C{frame} in the room's order (not stored)."""

    def joined(self, room: Room, member: Member) -> None:
        """Replay the room's history to C{member}, who has just been welcomed."""

    def then(self, room: Room, action: Callable[[Member], None]) -> None:
        """Do C{action} to each member once every event accepted before has been relayed."""

    def start(self) -> None:
        """Open the store."""

    def stop(self) -> defer.Deferred[None]:
        """Finish pending writes and close the store."""


class ChatServerFactory(ServerFactory):
    """
    State shared by every connection of one server: rooms, limits and the clock.

    It provides what a connection needs of its server
    (L{twistchat.server.protocol.ConnectionServices}) and sees its connections
    only as L{Connection}s.
    """

    # Twisted types Factory.protocol as making protocols that see a Factory; ours
    # sees its factory only through ConnectionServices, which this class provides.
    protocol = ChatServerProtocol  # type: ignore[assignment]
    log = Logger()
    noisy = False

    def __init__(
        self,
        rooms: Rooms,
        clock: IReactorTime,
        limits: Limits = Limits(),
        channel_binding: Callable[[Any], bytes] = server_binding,
        history: RoomLog | None = None,
        decoy_secret: bytes | None = None,
    ) -> None:
        self.rooms = rooms
        self.history = history
        self.clock = clock
        self.limits = limits
        self.channel_binding = channel_binding
        self.connections: set[Connection] = set()
        self._drained: list[defer.Deferred[None]] = []
        self._pending: set[Connection] = set()
        self.preauth_total = 0
        self.addresses = AddressBook(limits)
        # Unknown rooms get a salt that is stable (across restarts too, given a
        # secret kept in the data directory) and a verifier nobody knows the
        # password of.
        self._decoy_secret = decoy_secret or secrets.token_bytes(32)
        self._decoy_key = VerifierKey(
            secrets.randbelow(ORDER - 1) + 1,
            encode_point(G * (secrets.randbelow(ORDER - 1) + 1)),
        )

    def decoy(self, room: str) -> tuple[bytes, ScryptParams, VerifierKey]:
        salt = hmac.new(self._decoy_secret, room.encode("utf-8"), hashlib.sha256)
        return salt.digest()[:16], DEFAULT_PARAMS, self._decoy_key

    def connection_made(self, protocol: Connection) -> TwistchatError | None:
        """
        Admit a new connection, or return why it is refused.
        """
        self.connections.add(protocol)
        blocked = self.penalty(protocol.host)
        if blocked is not None:
            return blocked
        refusal = self.take_preauth(protocol.host)
        if refusal is None:
            self._pending.add(protocol)
        return refusal

    def take_preauth(self, host: str) -> TwistchatError | None:
        """
        Count one more connection not logged in from C{host} (the chat port's,
        or the web port's before its WebSocket), or return why it is refused;
        L{release_preauth} gives the slot back.
        """
        record = self.addresses.get(host)
        if record.preauth >= self.limits.max_preauth_per_address:
            self.log.info("({host}) refused: {count} connections not logged in",
                          host=host, count=record.preauth)
            return LimitExceeded("too many connections from your address")
        if self.preauth_total >= self.limits.max_preauth_total:
            self.log.info("refused a connection: {count} connections not logged in",
                          count=self.preauth_total)
            return Busy()
        record.preauth += 1
        self.preauth_total += 1
        return None

    def release_preauth(self, host: str) -> None:
        """
        Give back a slot taken with L{take_preauth}.
        """
        self.preauth_total -= 1
        self.addresses.get(host).preauth -= 1

    def penalty(self, host: str) -> Penalised | None:
        """
        The refusal for an address serving a failed-login penalty, if it is.
        """
        wait = self.addresses.penalty_left(host, self.clock.seconds())
        if wait <= 0:
            return None
        return Penalised(
            f"too many failed logins from your address: try again in {wait:.0f} seconds"
        )

    def guess_slot_free(self, host: str) -> bool:
        """
        Whether C{host} has a free slot for a password check (a share answered
        and not yet confirmed).
        """
        return self.addresses.get(host).guessing < self.limits.max_guesses_per_address

    def take_guess_slot(self, protocol: Connection) -> None:
        """
        Take one of the address's slots for a password check.
        """
        self.addresses.get(protocol.host).guessing += 1

    def queue_guess(self, protocol: Connection) -> None:
        """
        Queue C{protocol} for its address's next free slot: its C{slot_granted}
        is called when one frees up.
        """
        record = self.addresses.get(protocol.host)
        record.queued.append(protocol)
        self.log.info(
            "({host}) has {count} password checks in progress: one more waits",
            host=protocol.host, count=record.guessing,
        )

    def guess_unqueued(self, protocol: Connection) -> None:
        try:
            self.addresses.get(protocol.host).queued.remove(protocol)
        except ValueError:
            pass  # already given its slot

    def guess_ended(self, protocol: Connection) -> None:
        record = self.addresses.get(protocol.host)
        record.guessing -= 1
        if record.queued:
            # A queued connection leaves the queue when it closes: the first is waiting.
            waiting = record.queued.popleft()
            record.guessing += 1
            waiting.slot_granted()

    def logged_in(self, protocol: Connection) -> None:
        self._preauth_done(protocol)

    def _preauth_done(self, protocol: Connection) -> None:
        if protocol in self._pending:
            self._pending.discard(protocol)
            self.release_preauth(protocol.host)

    def connection_lost(self, protocol: Connection) -> None:
        self._preauth_done(protocol)
        self.connections.discard(protocol)
        if not self.connections:
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)

    # A room's events (messages, joins, leaves, its closing) reach every member
    # in the order they were received here. Without history everything goes
    # out at once, so that order is kept by itself; with history a message
    # waits for its commit, and the events after it wait behind it (History).

    def relay(self, room: Room, sender: Member, frame: bytes, message: wire.Message) -> None:
        """
        Relay one sealed message (C{frame}, already encoded) to the room,
        through the history store when there is one.

        A room that is no longer served (closed, its members about to be
        told) takes no more messages: they are dropped, not stored.
        """
        if self.rooms.get(room.name) is not room:
            return
        if self.history is None:
            room.send_to(room.recipients(sender), wire.prefixed(frame),
                         (sender, ack_frame(room, message)))
        else:
            self.history.relay(room, sender, frame, message)

    def join(self, room: Room, member: Member) -> None:
        """
        Add C{member} to C{room} and tell the others, in order with the
        room's other events.

        @raise NameTaken: if another member already uses that name.
        """
        self._announce(room, member, room.join(member))

    def leave(self, room: Room, member: Member) -> None:
        """
        Remove C{member} from C{room}, if it is in it, and tell the others
        (after the messages it sent). In a room no longer served nobody is
        told: everyone in it is told the room closed instead.
        """
        frame = room.leave(member)
        if frame is not None and self.rooms.get(room.name) is room:
            self._announce(room, member, frame)

    def _announce(self, room: Room, member: Member, frame: bytes) -> None:
        if self.history is None:
            room.broadcast(frame, exclude=member)
        else:
            self.history.announce(room, member, frame)

    def member_joined(self, room: Room, member: Member) -> None:
        """
        C{member} has been welcomed into C{room}: replay its history.
        """
        if self.history is not None:
            self.history.joined(room, member)

    def close_room(self, room: Room) -> None:
        """
        Disconnect the members of a room that is no longer served, and the
        logins to it still in progress (as a wrong password: a moment later
        that is what they would get).

        Logins in progress are refused at once; members are told the room
        was closed after the messages the room received before.
        """
        members: list[Connection] = []
        for protocol in list(self.connections):
            if protocol.room is room:
                if protocol in room:
                    members.append(protocol)
                else:
                    protocol.room_closed()  # a closed connection ignores it
        if self.history is None:
            room.flush()  # the messages the room received before go first
            for protocol in members:
                protocol.room_closed()
        else:
            self.history.then(room, self._room_closed)

    def _room_closed(self, member: Member) -> None:
        # The members of a factory's rooms are its connections.
        if member in self.connections:
            member.room_closed()  # narrowed to a Connection by the test

    def login_failed(self, protocol: Connection) -> None:
        """
        Count a wrong password against the source address.
        """
        penalty = self.addresses.failed(protocol.host, self.clock.seconds())
        if penalty:
            self.log.info("({host}) failed logins: address blocked for {penalty:g} s",
                          host=protocol.host, penalty=penalty)

    def expire(self) -> None:
        """
        Forget addresses with no recent failures (run periodically).
        """
        self.addresses.expire(self.clock.seconds())

    def shutdown(self) -> defer.Deferred[None]:
        """
        Tell every connection the server is going away and close them all.

        @return: fires when every connection has closed (each is aborted after
            the close grace period if its peer does not finish closing).
        """
        shutdown = ServerShutdown()
        frame = wire.encode("error", code=shutdown.code, text=shutdown.message)
        for room in self.rooms:
            room.flush()  # what the rooms hold for their batch windows goes first
        for protocol in list(self.connections):
            protocol.shut_down(frame)  # a closed connection ignores it
        return self._wait_drained()

    def _wait_drained(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        if not self.connections:
            d.callback(None)
        else:
            self._drained.append(d)
        return d


class RoomReloader:
    """
    Keep the served rooms in step with the verifier files of a folder.

    Each scan compares every C{NAME.json} file's size, modification time and
    inode with the previous scan, and reads only the files that changed: a new
    file adds a room, a changed one gives its room the new verifier (members
    already in stay; new logins need the new password), a deleted one closes
    its room and disconnects its members. A file that cannot be used is logged
    once and skipped; its room keeps the verifier it had. Rooms that did not
    come from the folder are left alone.
    """

    log = Logger()

    def __init__(self, factory: ChatServerFactory, folder: Path) -> None:
        self.factory = factory
        self.folder = folder
        self._seen: dict[str, tuple[int, int, int]] = {}

    def scan(self) -> None:
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            entries = []
        except OSError as e:
            self.log.warn("rooms: cannot read {folder}: {reason}",
                          folder=str(self.folder), reason=e.strerror)
            return
        current: dict[str, tuple[int, int, int]] = {}
        for entry in entries:
            if not entry.name.endswith(".json") or entry.name.startswith("."):
                continue
            try:
                st = entry.stat()
            except OSError:
                continue  # removed meanwhile; the next scan sees it gone
            current[entry.name[: -len(".json")]] = (st.st_mtime_ns, st.st_size, st.st_ino)
        for name, key in sorted(current.items()):
            if self._seen.get(name) != key:
                self._seen[name] = key
                self._load(name)
        for name in sorted(set(self._seen) - set(current)):
            del self._seen[name]
            self._remove(name)

    def _load(self, name: str) -> None:
        rooms = self.factory.rooms
        path = self.folder / f"{name}.json"
        try:
            check_room(name)
            verifier = load_verifier(path)
            if verifier.room != name:
                raise ConfigError(
                    f"verifier file {path} is for room {verifier.room!r}, not {name!r}"
                )
        except ConfigError as e:
            kept = " (the room keeps its previous verifier)" if rooms.get(name) else ""
            self.log.warn("rooms: skipped: {reason}{kept}", reason=e.message, kept=kept)
            return
        room = rooms.get(name)
        try:
            if room is None:
                rooms.add(verifier)
            elif room.verifier != verifier:
                room.rekey(verifier)
            else:
                return
        except (TwistchatError, ValueError) as e:
            self.log.warn("rooms: skipped {path}: {reason}", path=str(path), reason=e)
            return
        if room is None:
            self.log.info("rooms: room {room!r} added", room=name)
        else:
            self.log.info(
                "rooms: room {room!r} has a new verifier; its {count} members stay, "
                "new logins need the new password",
                room=name, count=len(room),
            )

    def _remove(self, name: str) -> None:
        room = self.factory.rooms.remove(name)
        if room is None:
            return
        self.log.info("rooms: room {room!r} removed; disconnecting its {count} members",
                      room=name, count=len(room))
        self.factory.close_room(room)


class ChatService(service.Service):
    """
    Listen on one or more endpoints while running; on stop, close every
    connection.

    @param endpoint: where to listen: one endpoint, or a sequence of
        (description, endpoint) pairs, the description being how the operator
        named the place (a Twisted endpoint description, used in error
        messages). Each endpoint must already add the server's TLS: the login
        is bound to the TLS channel of the connection.
    @param rooms_dir: a folder of room verifier files to rescan every
        C{reload_interval} seconds (None: the rooms are fixed).
    @param err: where a failure to start is reported, as one line: the
        standard error the service was built with (twistd sends the process's
        own to its log once it starts the service).
    @ivar ports: the ports listening now, in the order they started.
    """

    log = Logger()

    def __init__(
        self,
        endpoint: IStreamServerEndpoint | Sequence[tuple[str, IStreamServerEndpoint]],
        factory: ChatServerFactory,
        description: str = "",
        rooms_dir: Path | None = None,
        reload_interval: float = RELOAD_INTERVAL,
        err: IO[str] | None = None,
    ) -> None:
        if isinstance(endpoint, Sequence):
            self.endpoints = list(endpoint)
        else:
            self.endpoints = [("", endpoint)]
        self.err = sys.stderr if err is None else err
        self.factory = factory
        self.description = description
        self.ports: list[IListeningPort] = []
        self._listening: list[defer.Deferred[IListeningPort]] = []
        # Listen failures while startService runs; None once it has returned.
        self._failed_now: list[tuple[str, Failure]] | None = None
        self.reloader = RoomReloader(factory, rooms_dir) if rooms_dir is not None else None
        self.reload_interval = reload_interval
        self._reload: task.LoopingCall | None = None

    @property
    def endpoint(self) -> IStreamServerEndpoint:
        """
        The first (often the only) endpoint.
        """
        return self.endpoints[0][1]

    @property
    def port(self) -> IListeningPort | None:
        """
        The first port listening, or None.
        """
        return self.ports[0] if self.ports else None

    def startService(self) -> None:
        """
        Listen, then start the periodic tasks and the history.

        A listen that fails later (an endpoint that needs time, unlike TCP,
        UNIX and inherited sockets) is logged as an error, as one line; the
        other endpoints keep listening.

        @raise CannotStart: if an endpoint fails to listen at once (e.g. the
            port is in use); nothing else has been started then, and the
            endpoints that did listen are closed again. The reason is also
            logged, for a daemon whose standard error goes nowhere.
        """
        # As twisted.application.internet's StreamServerEndpointService does
        # for strports.service: a failure that is already there when listen()
        # returns is raised, so that twistd hears of it at start.
        self._failed_now = []
        for where, endpoint in self.endpoints:
            listening = endpoint.listen(self.factory)
            listening.addCallbacks(self._started, self._not_listening, errbackArgs=(where,))
            self._listening.append(listening)
        failed, self._failed_now = self._failed_now, None
        if failed:
            for port in self.ports:
                port.stopListening()
            self.ports = []
            self._cannot_start(*failed[0])
        super().startService()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        self._expiry = task.LoopingCall(self.factory.expire)
        self._expiry.clock = self.factory.clock
        self._expiry.start(60, now=False)
        if self.reloader is not None:
            self._reload = task.LoopingCall(self.reloader.scan)
            self._reload.clock = self.factory.clock
            self._reload.start(self.reload_interval, now=True)
        if self.factory.history is not None:
            self.factory.history.start()

    def _not_listening(self, failure: Failure, where: str) -> None:
        if failure.check(defer.CancelledError):
            return  # stopped before it listened
        if self._failed_now is not None:
            self._failed_now.append((where, failure))
            return
        self.log.error("{line}", line=CannotStart(_listen_failed(failure, where)).line)

    def _cannot_start(self, where: str, failure: Failure) -> None:
        """
        Report a failure to listen as one line and end the process.

        @raise CannotStart: always; its line is written to C{err} here, and
            logged, and the exception carries no message of its own: by now
            Python's standard error leads to the log.
        """
        stop = CannotStart(_listen_failed(failure, where), reported=True)
        self.log.error("{line}", line=stop.line)
        self.err.write(stop.line + "\n")
        self.err.flush()
        raise stop

    def _started(self, port: IListeningPort) -> IListeningPort:
        self.ports.append(port)
        # Announce readiness from the running reactor (twistd starts services
        # just before it installs its signal handlers), so whoever waits for
        # this line can rely on a clean SIGTERM shutdown.
        self.factory.clock.callLater(0, self._announce, port)
        return port

    def _announce(self, port: IListeningPort) -> None:
        if port not in self.ports:
            return  # closed again before the reactor ran
        address = port.getHost()
        if isinstance(address, (IPv4Address, IPv6Address)):
            self.log.info(
                "twistchat listening on port {port} ({host}){description}",
                port=address.port,
                host=address.host,
                description=self.description,
            )
        else:
            self.log.info(
                "twistchat listening on {address}{description}",
                address=str(address),
                description=self.description,
            )

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        if self._expiry.running:
            self._expiry.stop()
        if self._reload is not None and self._reload.running:
            self._reload.stop()
        self.log.info("shutting down: closing {count} connections",
                      count=len(self.factory.connections))
        for listening in self._listening:
            listening.cancel()  # one still under way; no-op for the others
        self._listening = []
        ports, self.ports = self.ports, []
        # Twisted's maybeDeferred types a Deferred | None result as Deferred[Deferred | None].
        stopped: list[defer.Deferred[Any]] = [
            defer.maybeDeferred(port.stopListening) for port in ports
        ]
        drained = self.factory.shutdown()
        done = defer.gatherResults([*stopped, drained])
        history = self.factory.history
        if history is not None:
            done.addCallback(lambda _: history.stop())
        return done.addCallback(lambda _: None)


def _listen_failed(failure: Failure, where: str) -> str:
    """
    Why an endpoint could not listen, on one line and short: a daemon's
    parent shows only its first 100 bytes or so.

    @param where: the endpoint's description, or "" for the one endpoint
        made from --port and --interface.
    """
    error = failure.value
    if isinstance(error, CannotListenError):
        if isinstance(error.port, str):
            place = error.port  # a UNIX socket's path
        elif not error.interface:
            place = f"port {error.port}"
        elif ":" in error.interface:
            place = f"[{error.interface}]:{error.port}"
        else:
            place = f"{error.interface}:{error.port}"
        reason = getattr(error.socketError, "strerror", None) or str(error.socketError)
        return f"cannot listen on {place}: {reason}"
    reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
    if where:
        return f"cannot listen on {where}: {reason}"
    return f"cannot listen: {reason}"
