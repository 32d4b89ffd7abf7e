"""
The page's session code (web/src/session.js, in the shipped bundle) as a real
member: C{node web/test/member.mjs} logs in to the real C{twistd socketchat}
over TLS (web/test/node-transport.mjs: length-prefixed frames, the terminal
client's exporter binding) and talks with the real terminal client.

Covered: both directions of chat; a wrong password gives the terminal client's
line and code; a late joiner gets the history between its separators; a
C{<script>} text arrives as plain data; each side pins the other's key and
both print the same safety number and room code; a server restart is
survived with reconnect and a visible state. Node must be installed: the
test fails, never skips, without it.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from twistchat import wire
from twistchat.crypto.webbinding import web_binding
from twistchat.errors import CODES, ServerNotAuthenticated

from .test_e2e import Client, Piped, Server, env, password_of
from .test_e2e_identity import DIGITS_30, DIGITS_60
from .test_e2e_reconnect import start

ROOT = Path(__file__).resolve().parent.parent
MEMBER = ROOT / "web" / "test" / "member.mjs"
HOSTILE = "<script>alert('x')</script> <img src=x onerror=alert(1)>"


class NodeMember(Piped):
    """
    web/test/member.mjs as a process: lines in on stdin, the terminal
    client's lines (and DATA lines) out.
    """

    def __init__(self, workdir: Path, port: int, name: str, password: str,
                 *options: str) -> None:
        node = shutil.which("node")
        if node is None:
            pytest.fail("node is not installed: the browser code's tests need Node.js 18 or newer"
                        " (sh tests/system-packages.sh installs it)")
        super().__init__([node, str(MEMBER), "127.0.0.1", str(port), name, *options],
                         workdir, env(workdir, TWISTCHAT_PASSWORD=password))

    def data(self, text: str) -> dict[str, object]:
        """
        The message the session handed over with exactly this text.
        """
        for line in self.out.seen:
            if line.startswith("DATA "):
                message = json.loads(line[5:])
                if message["text"] == text:
                    return message
        raise AssertionError(f"no message {text!r} in {self.out.seen}")


def test_node_and_terminal_members_chat(tmp_path: Path) -> None:
    server = Server(tmp_path)
    bob = None
    try:
        password = password_of(server)
        alice = Client(tmp_path, server.port, "alice", password=password,
                       options=["--identity", str(tmp_path / "alice.json")])
        alice.out.wait_for("connected — you can start sending messages")
        bob = NodeMember(tmp_path, server.port, "bob", password)
        bob.out.wait_for("connected — you can start sending messages")
        bob_key = bob.out.wait_for(r"^\* Your identity key: ([0-9a-f]{64})$").group(1)
        bob.out.wait_for(r"^\* In the room: alice \(127\.0\.0\.1:\d+\)$")
        alice.out.wait_for(r"\* bob \(127\.0\.0\.1:\d+\) entered the room")

        bob.say("hello from the page's code")
        alice.out.wait_for(re.escape("[ bob: ] hello from the page's code"))
        alice.say("hello from the terminal")
        bob.out.wait_for(re.escape("[ alice: ] hello from the terminal"))
        alice.say(HOSTILE)
        bob.out.wait_for(re.escape(f"[ alice: ] {HOSTILE}"))
        # Handed over as a string, verbatim: rendering it as text is the page's job.
        assert bob.data(HOSTILE) == {"sender": "alice", "text": HOSTILE, "time": None,
                                     "history": False, "signed": True, "trusted": True}

        alice.say("/verify bob")
        bob.say("/verify alice")
        on_alice = alice.out.wait_for(r"\* Safety number with bob: " + DIGITS_60).group(1)
        on_bob = bob.out.wait_for(r"\* Safety number with alice: " + DIGITS_60).group(1)
        assert on_alice == on_bob
        alice.say("/safety")
        bob.say("/safety")
        code_alice = alice.out.wait_for(r"\* Room safety code: " + DIGITS_30).group(1)
        code_bob = bob.out.wait_for(r"\* Room safety code: " + DIGITS_30).group(1)
        assert code_alice == code_bob

        assert bob.finish() == 0
        alice.out.wait_for(r"\* bob \(127\.0\.0\.1:\d+\) left the room")
        assert alice.finish() == 0
    finally:
        if bob is not None:
            bob.kill()
        server.stop()
    # The terminal client pinned the Node member's identity key.
    pins = (tmp_path / "config" / "twistchat" / "identities").read_text().splitlines()
    assert any(line.split()[2:] == ["bob", bob_key, "pinned"] for line in pins), pins
    assert not any(line.startswith("!") for line in bob.out.seen), bob.out.seen


def test_wrong_password_reads_as_in_the_terminal_client(tmp_path: Path) -> None:
    server = Server(tmp_path)
    try:
        terminal = Client(tmp_path, server.port, "eve", password="not the password")
        assert terminal.finish() == 1
        expected = [line for line in terminal.err.rest() if line.startswith("Unable to connect")]
        node = NodeMember(tmp_path, server.port, "mallory", "not the password")
        assert node.finish() == 1
        lines = node.err.rest()
    finally:
        server.stop()
    assert expected == ["Unable to connect: "
                        "wrong password, or the server could not prove it knows this room"]
    assert lines == [expected[0], f"code: {ServerNotAuthenticated.code}"]


def test_late_node_joiner_gets_history(tmp_path: Path) -> None:
    server = Server(tmp_path)
    carol = None
    try:
        password = password_of(server)
        alice = Client(tmp_path, server.port, "alice", password=password)
        alice.out.wait_for("connected — you can start sending messages")
        alice.say("first, before carol")
        alice.say("second, before carol")
        # A member who then finds both in its history proves they are stored.
        witness = Client(tmp_path, server.port, "dave", password=password)
        witness.out.wait_for(re.escape("[ alice: ] second, before carol"))
        assert witness.finish() == 0

        carol = NodeMember(tmp_path, server.port, "carol", password)
        carol.out.wait_for("connected — you can start sending messages")
        carol.out.wait_for(r"^--- history ---$")
        carol.out.wait_for(r"^\d\d:\d\d:\d\d \[ alice: \] first, before carol$")
        carol.out.wait_for(r"^\d\d:\d\d:\d\d \[ alice: \] second, before carol$")
        carol.out.wait_for(r"^--- live ---$")
        alice.out.wait_for(r"\* carol \(127\.0\.0\.1:\d+\) entered the room")
        alice.say("third, live")
        carol.out.wait_for(re.escape("[ alice: ] third, live"))
        assert carol.finish() == 0
        assert alice.finish() == 0
    finally:
        if carol is not None:
            carol.kill()
        server.stop()
    seen = carol.out.seen
    order = [seen.index("--- history ---"), seen.index("--- live ---"),
             seen.index("[ alice: ] third, live")]
    assert order == sorted(order), seen
    assert carol.data("first, before carol")["history"] is True
    assert carol.data("third, live")["history"] is False


def test_node_member_reconnects_across_a_restart(tmp_path: Path) -> None:
    server = start(tmp_path)
    port = server.port
    bob = NodeMember(tmp_path, port, "bob", "reconnect test password", "--reconnect")
    alice = None
    try:
        bob.out.wait_for("connected — you can start sending messages")
        assert server.stop()
        bob.out.wait_for(r"^\* state: waiting$")
        bob.out.wait_for(r"^\* Connection lost or attempt failed: the server is shutting down\. "
                         r"Reconnecting in \d\.\d s \(attempt 1\)\.\.\.$")
        bob.say("typed while the server was down")
        server = start(tmp_path, port=port)
        bob.out.wait_for(r"^\* state: logging-in$")
        bob.out.wait_for(r"^\* Reconnected: back in room 'main'\.$")
        bob.out.wait_for(r"^\* state: connected$")
        alice = Client(tmp_path, port, "alice", password="reconnect test password")
        alice.out.wait_for(re.escape("typed while the server was down"))
        alice.say("welcome back")
        bob.out.wait_for(re.escape("[ alice: ] welcome back"))
        assert bob.finish() == 0
        assert alice.finish() == 0
    finally:
        bob.kill()
        server.stop()


def test_error_table_and_web_hello_adapter(tmp_path: Path) -> None:
    """
    The JavaScript error classes have Python's codes, messages and reconnect
    flags; the web-hello adapter takes the first frame if it is web-hello and
    gives the web binding of its nonce and certificate hash, and otherwise
    passes the frame on and refuses to give a binding.
    """
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (sh tests/system-packages.sh installs it)")
    nonce, cert = bytes(range(32)), bytes(range(100, 132))
    request = {
        "origin": "https://chat.example:8443",
        "hello": json.dumps({"type": "web-hello", "nonce": base64.b64encode(nonce).decode(),
                             "cert": base64.b64encode(cert).decode()}),
        "params": wire.encode("params", salt=bytes(16), n=2**15, r=8, p=1).decode(),
        "error": wire.encode("error", code="busy", text="the server is busy").decode(),
    }
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))
    result = subprocess.run([node, str(ROOT / "web" / "test" / "units.mjs"), str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["codes"] == [
        [code, cls.__name__, cls.final, cls.retry_only_when_reconnecting, cls.default_message]
        for code, cls in CODES.items()
    ]
    assert out["withHello"] == {
        "seen": ["params"],
        "binding": {"hex": web_binding(request["origin"], nonce, cert).hex()},
    }
    assert out["withoutHello"] == {
        "seen": ["error"],
        "binding": {"error": "ProtocolError", "message": "the server did not start with web-hello"},
    }
