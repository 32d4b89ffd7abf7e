"""
End to end: ``twistchat --reconnect`` (the installed command) across a SIGTERM
and restart of the real ``twistd socketchat`` on the same port.
"""

from __future__ import annotations

import re
from pathlib import Path

from .test_e2e import Client, Server

PASSWORD = "reconnect test password"


class Member(Client):
    """
    The installed twistchat command, options first, fed lines by the test.
    """

    def __init__(self, workdir: Path, port: int, name: str, *options: str) -> None:
        super().__init__(workdir, port, name, password=PASSWORD, options=options)


def start(workdir: Path, password: str = PASSWORD, port: int = 0) -> Server:
    (workdir / "pw").write_text(password + "\n")
    return Server(workdir, "--password-file", str(workdir / "pw"), "--port", str(port))


def test_reconnect_across_sigterm_and_restart(tmp_path: Path) -> None:
    server = start(tmp_path)
    port = server.port
    alice = Member(tmp_path, port, "alice", "--reconnect")
    bob = None
    try:
        alice.out.wait_for("connected — you can start sending messages")
        assert server.stop()
        alice.out.wait_for(
            r"^\* Connection lost: the server is shutting down\. "
            r"Reconnecting in [12]\.\d s \(attempt 1\)\.\.\.$")
        alice.say("typed while the server was down")
        alice.out.wait_for(r"^\* Not connected: queued, to be sent after reconnecting "
                           r"\(1 waiting\)\.$")
        server = start(tmp_path, port=port)
        alice.out.wait_for(r"^\* Reconnected: back in room 'main'; "
                           r"sending 1 queued message\(s\)\.$")
        bob = Member(tmp_path, port, "bob")
        bob.out.wait_for(r"In the room: alice \(127\.0\.0\.1:\d+\)")
        alice.out.wait_for(r"^\* bob \(127\.0\.0\.1:\d+\) entered the room$")
        bob.say("welcome back")
        alice.out.wait_for(re.escape("[ bob: ] welcome back"))
        alice.say("thanks")
        bob.out.wait_for(re.escape("[ alice: ] thanks"))
        assert bob.finish() == 0
        alice.out.wait_for(r"^\* bob \(127\.0\.0\.1:\d+\) left the room$")
        assert alice.finish() == 0
        lines = alice.out.rest()
    finally:
        alice.kill()
        if bob is not None:
            bob.kill()
        server.stop()
    # One line per attempt: each failed attempt is announced once, in order.
    attempts = [int(m.group(1)) for line in lines
                if (m := re.search(r"\(attempt (\d+)\)", line))]
    assert attempts == list(range(1, len(attempts) + 1)), lines
    failed = [line for line in lines if line.startswith("* Reconnect attempt")]
    assert all("Connection refused" in line for line in failed), lines
    assert sum("entered the room" in line for line in lines) == 1
    assert "Disconnected from chat server" not in "\n".join(lines)
    assert alice.err.rest(timeout=1) == []


def test_changed_room_password_stops_reconnecting(tmp_path: Path) -> None:
    """
    The server comes back with another room password (a new salt): the keys
    kept for the old one cannot log in, and the client stops with status 1.
    """
    server = start(tmp_path)
    port = server.port
    alice = Member(tmp_path, port, "alice", "--reconnect")
    try:
        alice.out.wait_for("connected — you can start sending messages")
        assert server.stop()
        alice.out.wait_for(r"Reconnecting in .* \(attempt 1\)")
        server = start(tmp_path, password="the rotated password", port=port)
        alice.out.wait_for(
            r"^Disconnected from chat server: the server now asks for another password "
            r"salt than when this session logged in", timeout=30)
        assert alice.process.wait(timeout=20) == 1
    finally:
        alice.kill()
        server.stop()
    assert "Traceback" not in "\n".join(alice.err.rest(timeout=1))
