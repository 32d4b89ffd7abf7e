"""
End to end: a piped ``twistchat`` whose input holds a line it cannot send
reports it on stderr and ends with exit status 3, after sending the rest.
"""

from __future__ import annotations

import re
from pathlib import Path

from .test_e2e import Client, Server, password_of


def test_a_too_long_piped_line_is_reported_and_ends_with_status_3(tmp_path: Path) -> None:
    server = Server(tmp_path)
    try:
        password = password_of(server)
        bob = Client(tmp_path, server.port, "bob", password=password)
        bob.out.wait_for("connected — you can start sending messages")
        sender = Client(tmp_path, server.port, "seqbot", password=password)
        sender.out.wait_for("connected — you can start sending messages")
        sender.say("before the long line")
        sender.say("x" * 20000)
        sender.say("after the long line")
        assert sender.finish() == 3
        errors = sender.err.rest()
        assert errors == ["! Not sent: message longer than 16384 bytes"], errors
        assert "Left the room." in sender.out.rest()
        bob.out.wait_for(re.escape("[ seqbot: ] before the long line"))
        bob.out.wait_for(re.escape("[ seqbot: ] after the long line"))
        bob.out.wait_for(r"\* seqbot \(127\.0\.0\.1:\d+\) left the room")
        assert not any("xxxx" in line for line in bob.out.seen)
        assert bob.finish() == 0
    finally:
        server.stop()


def test_a_clean_piped_run_still_ends_with_status_0(tmp_path: Path) -> None:
    server = Server(tmp_path)
    try:
        password = password_of(server)
        sender = Client(tmp_path, server.port, "seqbot", password=password)
        sender.out.wait_for("connected — you can start sending messages")
        sender.say("just one line")
        sender.say("/quit")
        sender.say("read after /quit: not a message, not counted")
        assert sender.finish() == 0
        assert sender.err.rest() == []
    finally:
        server.stop()


def test_leaving_while_reconnecting_reports_the_dropped_queue(tmp_path: Path) -> None:
    """
    End of input while the server is down: the queued line is dropped, stderr
    says so, and the status is 1 (the connection had failed).
    """
    from .test_e2e_reconnect import Member, start

    server = start(tmp_path)
    alice = Member(tmp_path, server.port, "alice", "--reconnect")
    try:
        alice.out.wait_for("connected — you can start sending messages")
        assert server.stop()
        alice.out.wait_for(r"^\* Connection lost: the server is shutting down\.")
        alice.say("typed while the server was down")
        alice.out.wait_for(r"^\* Not connected: queued")
        assert alice.finish() == 1
        assert alice.err.rest() == ["! Not sent: 1 queued line(s): the session ended"]
        alice.out.wait_for("Disconnected from chat server: 1 queued message")
    finally:
        alice.kill()
        server.stop()
