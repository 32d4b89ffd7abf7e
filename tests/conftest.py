"""
Shared fixtures: a real TLS relay on loopback, room verifiers, and a check that
no test leaves an unexpected traceback in the log.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.logger import globalLogPublisher

from twistchat.client.api import ChatListener, ChatMessage, Member
from twistchat.crypto.verifier import make_verifier
from twistchat.server.room import Rooms
from twistchat.server.service import ChatServerFactory
from twistchat.server.tls import load_certificate, server_options

PASSWORD = "correct horse battery staple"
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
    for protocol in list(factory.connections):
        protocol.transport.abortConnection()
    await defer.maybeDeferred(port.stopListening)
    # Let aborted connections finish closing before the next test.
    await deferLater(0.01)


def deferLater(seconds: float) -> defer.Deferred[None]:
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)


class Recorder(ChatListener):
    def __init__(self) -> None:
        self.events: list[Any] = []
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


os.environ.pop("TWISTCHAT_PASSWORD", None)
