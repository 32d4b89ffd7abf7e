"""
Shared fixtures: a real TLS relay on loopback, room verifiers, and two checks
on every test: that it leaves no unexpected traceback in the log, and that it
leaves the reactor clean (no timer still pending, no connection or listening
port still open).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twistchat.client.api import Alarm, ChatListener, ChatMessage, Member
from twistchat.crypto.identity import Identity
from twistchat.crypto.verifier import make_verifier
from twistchat.server.room import Rooms
from twistchat.server.service import ChatServerFactory
from twistchat.server.tls import load_certificate, server_options
from twisted.internet import defer, reactor
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.logger import globalLogPublisher

pytest_plugins = ["pytester"]

PASSWORD = "correct horse battery staple"
#: An identity key for peers that speak the wire protocol by hand.
IDENTITY = Identity.from_seed(bytes(range(32)))
IDENTITY_KEY = IDENTITY.public_key
OTHER_PASSWORD = "not the room password"


def pytest_addoption(parser: Any) -> None:
    parser.addoption(
        "--run-slow", action="store_true", default=False,
        help="also run slow tests (soak runs, the 1 GiB scrypt vector)",
    )


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow test: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def no_logged_errors(request: Any) -> Iterator[list[dict[str, Any]]]:
    """
    Fail any test during which something logged a traceback (log.failure) or
    an event at critical level, unless the test takes the list and empties it.
    """
    errors: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if "log_failure" in event:
            errors.append(event)

    globalLogPublisher.addObserver(observe)
    yield errors
    globalLogPublisher.removeObserver(observe)
    if errors:
        failure = errors[0]["log_failure"]
        pytest.fail(
            f"{len(errors)} traceback(s) logged; first: {failure.getTraceback()}"
        )


#: Seconds a test's connections and timers get, after it ends, to finish
#: closing (an aborted TLS connection needs a reactor turn or two).
CLOSING_GRACE = 2.0


class ReactorState:
    """
    What of the reactor a test may leave behind: its pending timers, and its
    readers and writers (connections, listening ports, process pipes).
    """

    def __init__(self) -> None:
        self.calls = {c for c in reactor.getDelayedCalls() if c.active()}
        self.selectables = {
            s for s in (*reactor.getReaders(), *reactor.getWriters())
            # The reactor's own wakers come with the reactor, not from a test.
            if not type(s).__name__.endswith("Waker")
        }

    def since(self, before: ReactorState) -> list[Any]:
        """
        What is here now and was not in C{before}.
        """
        return sorted(
            (self.calls - before.calls) | (self.selectables - before.selectables), key=repr
        )


async def reactor_leftovers(before: ReactorState, grace: float = CLOSING_GRACE) -> list[Any]:
    """
    The timers and readers/writers added since C{before} that are still there
    once those already closing have had C{grace} seconds to go.
    """
    try:
        await until(lambda: not ReactorState().since(before), grace)
    except AssertionError:
        pass
    return ReactorState().since(before)


@pytest.fixture(autouse=True)
def private_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """
    Keep every client profile (identity key, pins, transcript state) of a
    test in its own directory, never the user's.
    """
    config = tmp_path / "xdg-config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    return config


@pytest.fixture(autouse=True)
def clean_reactor(request: Any) -> Iterator[None]:
    """
    Fail any test that leaves a timer pending or a connection, listening port
    or pipe open in the reactor (after a short grace for those closing).
    """
    before = ReactorState()
    yield
    left = pytest_twisted.blockon(defer.ensureDeferred(reactor_leftovers(before)))
    if left:
        pytest.fail(f"the test left the reactor dirty: {left}")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: Any) -> Path:
    return tmp_path_factory.mktemp("server-data")


@pytest.fixture(scope="session")
def certificate(data_dir: Path) -> Any:
    return load_certificate(data_dir)


@pytest.fixture(scope="session")
def verifier() -> Any:
    return make_verifier(PASSWORD, "main")


@pytest.fixture
def known_hosts(tmp_path: Path) -> Path:
    return tmp_path / "known_hosts"


class RunningServer:
    def __init__(self, factory: ChatServerFactory, port: Any) -> None:
        self.factory = factory
        self.listening = port
        self.port = port.getHost().port

    @property
    def rooms(self) -> Rooms:
        return self.factory.rooms


@pytest_twisted.async_yield_fixture
async def server(certificate: Any, verifier: Any) -> Any:
    """
    A relay with room "main" listening with TLS on 127.0.0.1, on a free port.
    """
    factory = ChatServerFactory(Rooms([verifier]), reactor)
    endpoint = SSL4ServerEndpoint(reactor, 0, server_options(certificate), interface="127.0.0.1")
    port = await endpoint.listen(factory)
    yield RunningServer(factory, port)
    await stop_server(factory, port)


async def stop_server(factory: ChatServerFactory, port: Any) -> None:
    """
    Stop listening and abort every connection of C{factory}; return once
    they have all closed.
    """
    for protocol in list(factory.connections):
        protocol.transport.abortConnection()
    await defer.maybeDeferred(port.stopListening)
    await until(lambda: not factory.connections)


def deferLater(seconds: float) -> defer.Deferred[None]:
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)


def until(test: Callable[[], bool], timeout: float = 5.0) -> defer.Deferred[None]:
    """
    Fire once C{test()} holds, checking after each reactor turn; fail with
    C{AssertionError} after C{timeout} seconds.
    """

    async def wait() -> None:
        deadline = reactor.seconds() + timeout
        while not test():
            if reactor.seconds() > deadline:
                raise AssertionError(f"condition not reached within {timeout:g} seconds")
            await deferLater(0.001)

    return defer.ensureDeferred(wait())


class Recorder(ChatListener):
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.alarms: list[Alarm] = []
        self.waiting: list[tuple[Any, defer.Deferred[Any]]] = []

    def _add(self, event: Any) -> None:
        self.events.append(event)
        for item in list(self.waiting):
            test, d = item
            if test(event):
                self.waiting.remove(item)
                d.callback(event)

    def wait_for(self, test: Any, timeout: float = 30) -> defer.Deferred[Any]:
        for event in self.events:
            if test(event):
                return defer.succeed(event)
        d: defer.Deferred[Any] = defer.Deferred()
        self.waiting.append((test, d))
        return d.addTimeout(timeout, reactor)

    def message_received(self, message: ChatMessage) -> None:
        self._add(message)

    def member_joined(self, member: Member) -> None:
        self._add(("joined", member))

    def member_left(self, member: Member) -> None:
        self._add(("left", member))

    def message_rejected(self, sender: str, reason: str) -> None:
        self._add(("rejected", sender, reason))

    def disconnected(self, reason: str | None) -> None:
        self._add(("disconnected", reason))

    def transcript_alarm(self, alarm: Alarm) -> None:
        self.alarms.append(alarm)
        self._add(("alarm", alarm.kind, alarm.sender))

    def member_key_changed(self, name: str, old: bytes, new: bytes) -> None:
        self._add(("key changed", name, new))

    def message_undelivered(self, count: int) -> None:
        self._add(("undelivered", count))


os.environ.pop("TWISTCHAT_PASSWORD", None)


@pytest.fixture
def members() -> Iterator[list[Any]]:
    """
    Client processes a test starts (anything with a C{process}); those still
    running at its end are killed, and all are waited for.
    """
    started: list[Any] = []
    yield started
    for client in started:
        if client.process.poll() is None:
            client.process.kill()
        client.process.wait(timeout=30)
