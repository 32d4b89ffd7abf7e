"""
The server factory (shared state of all connections) and the service that
listens with TLS and shuts down cleanly.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any, Callable

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.interfaces import IListeningPort, IReactorTime, IStreamServerEndpoint
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from twistchat import wire
from twistchat.crypto.kdf import DEFAULT_PARAMS, ScryptParams
from twistchat.crypto.spake2plus import ORDER, VerifierKey, encode_point, G
from twistchat.errors import LimitExceeded, TwistchatError
from twistchat.server.limits import AddressBook, Limits
from twistchat.server.protocol import ChatServerProtocol, State
from twistchat.server.room import Rooms
from twistchat.server.tls import tls_exporter


class ChatServerFactory(ServerFactory):
    """
    State shared by every connection of one server: rooms, limits and the clock.
    """

    protocol = ChatServerProtocol
    log = Logger()
    noisy = False

    def __init__(
        self,
        rooms: Rooms,
        clock: IReactorTime,
        limits: Limits = Limits(),
        channel_binding: Callable[[Any], bytes] = tls_exporter,
    ) -> None:
        self.rooms = rooms
        self.clock = clock
        rooms.use_clock(clock)
        self.limits = limits
        self.channel_binding = channel_binding
        self.connections: set[ChatServerProtocol] = set()
        self._drained: list[defer.Deferred[None]] = []
        self._pending: set[ChatServerProtocol] = set()
        self.preauth_total = 0
        self.addresses = AddressBook(limits)
        # Unknown rooms get a salt that is stable for this process and a
        # verifier nobody knows the password of.
        self._decoy_secret = secrets.token_bytes(32)
        self._decoy_key = VerifierKey(
            secrets.randbelow(ORDER - 1) + 1,
            encode_point(G * (secrets.randbelow(ORDER - 1) + 1)),
        )

    def decoy(self, room: str) -> tuple[bytes, ScryptParams, VerifierKey]:
        salt = hmac.new(self._decoy_secret, room.encode("utf-8"), hashlib.sha256)
        return salt.digest()[:16], DEFAULT_PARAMS, self._decoy_key

    def connection_made(self, protocol: ChatServerProtocol) -> TwistchatError | None:
        """
        Admit a new connection, or return why it is refused.
        """
        self.connections.add(protocol)
        blocked = self.penalty(protocol.host)
        if blocked is not None:
            return blocked
        record = self.addresses.get(protocol.host)
        if record.preauth >= self.limits.max_preauth_per_address:
            self.log.info("({host}) refused: {count} connections not logged in",
                          host=protocol.host, count=record.preauth)
            return LimitExceeded("too many connections from your address", code="limit")
        if self.preauth_total >= self.limits.max_preauth_total:
            self.log.info("refused a connection: {count} connections not logged in",
                          count=self.preauth_total)
            return LimitExceeded("the server is busy: try again later", code="busy")
        record.preauth += 1
        self.preauth_total += 1
        self._pending.add(protocol)
        return None

    def penalty(self, host: str) -> LimitExceeded | None:
        """
        The refusal for an address serving a failed-login penalty, if it is.
        """
        wait = self.addresses.penalty_left(host, self.clock.seconds())
        if wait <= 0:
            return None
        return LimitExceeded(
            f"too many failed logins from your address: try again in {wait:.0f} seconds",
            code="penalty",
        )

    def logged_in(self, protocol: ChatServerProtocol) -> None:
        self._preauth_done(protocol)

    def _preauth_done(self, protocol: ChatServerProtocol) -> None:
        if protocol in self._pending:
            self._pending.discard(protocol)
            self.preauth_total -= 1
            self.addresses.get(protocol.host).preauth -= 1

    def connection_lost(self, protocol: ChatServerProtocol) -> None:
        self._preauth_done(protocol)
        self.connections.discard(protocol)
        if not self.connections:
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)

    def login_failed(self, protocol: ChatServerProtocol) -> None:
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
        frame = wire.encode("error", code="shutdown", text="the server is shutting down")
        for protocol in list(self.connections):
            if protocol.state is not State.CLOSED:
                protocol.sendString(frame)
                protocol.close()
        return self._wait_drained()

    def _wait_drained(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        if not self.connections:
            d.callback(None)
        else:
            self._drained.append(d)
        return d


class ChatService(service.Service):
    """
    Listen on an endpoint while running; on stop, close every connection.
    """

    log = Logger()

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        factory: ChatServerFactory,
        description: str = "",
    ) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.description = description
        self.port: IListeningPort | None = None
        self._listening: defer.Deferred[IListeningPort] | None = None

    def startService(self) -> None:
        super().startService()
        self._expiry = task.LoopingCall(self.factory.expire)
        self._expiry.clock = self.factory.clock
        self._expiry.start(60, now=False)
        self._listening = self.endpoint.listen(self.factory)
        failures: list[Any] = []
        self._listening.addCallbacks(self._started, failures.append)
        if failures:
            # twistd turns an exception here into a clean exit with an error.
            failures[0].raiseException()

    def _started(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        # Announce readiness from the running reactor (twistd starts services
        # just before it installs its signal handlers), so whoever waits for
        # this line can rely on a clean SIGTERM shutdown.
        self.factory.clock.callLater(0, self._announce, port)
        return port

    def _announce(self, port: IListeningPort) -> None:
        address = port.getHost()
        self.log.info(
            "twistchat listening on port {port} ({host}){description}",
            port=address.port,
            host=address.host,
            description=self.description,
        )

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        if self._expiry.running:
            self._expiry.stop()
        self.log.info("shutting down: closing {count} connections",
                      count=len(self.factory.connections))
        port, self.port = self.port, None
        stopped = defer.maybeDeferred(port.stopListening) if port else defer.succeed(None)
        drained = self.factory.shutdown()
        return defer.gatherResults([stopped, drained]).addCallback(lambda _: None)
