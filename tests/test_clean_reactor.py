"""
The autouse check in conftest.py that fails a test leaving the reactor dirty:
it sees a pending timer and an open listening port, gives what is already
closing a grace period, and really fails the test that leaves them.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol

from .conftest import ReactorState, reactor_leftovers


@pytest_twisted.ensureDeferred
async def test_a_pending_timer_is_left_over() -> None:
    before = ReactorState()
    call = reactor.callLater(60, lambda: None)
    try:
        assert await reactor_leftovers(before, grace=0.05) == [call]
    finally:
        call.cancel()
    assert await reactor_leftovers(before, grace=0) == []


@pytest_twisted.ensureDeferred
async def test_a_timer_that_fires_within_the_grace_is_not() -> None:
    before = ReactorState()
    fired: list[bool] = []
    reactor.callLater(0.01, fired.append, True)
    assert await reactor_leftovers(before, grace=2) == []
    assert fired == [True]


@pytest_twisted.ensureDeferred
async def test_a_listening_port_is_left_over() -> None:
    before = ReactorState()
    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    try:
        assert await reactor_leftovers(before, grace=0.05) == [port]
    finally:
        await defer.maybeDeferred(port.stopListening)
    assert await reactor_leftovers(before, grace=0) == []


def test_the_check_fails_a_test_that_leaves_a_timer(pytester: Any) -> None:
    """
    Run the check for real, on a test that leaves a timer behind, in a pytest
    of its own (a second reactor cannot run in this process).
    """
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile(test_leaky=textwrap.dedent("""
        from twisted.internet import reactor

        def test_leaves_a_timer():
            reactor.callLater(3600, lambda: None)

        def test_leaves_nothing():
            reactor.callLater(3600, lambda: None).cancel()
    """))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    # The leaky test itself passes; its teardown is the error.
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["ERROR test_leaky.py::test_leaves_a_timer*"])
    result.stdout.fnmatch_lines(["*the test left the reactor dirty: [[]<DelayedCall*"])
