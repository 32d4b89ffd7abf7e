"""
L{twistchat.client.BlockingChat} in a script of its own (it runs the global
reactor in a thread, so never inside the test's reactor), against the real
``twistd socketchat`` and the real ``twistchat`` command as the other member.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

from .test_e2e import Client, Lines, Server, env

PASSWORD = "blocking chat test password"

#: The script's imports and arguments (port, password).
PRELUDE = """\
import queue, sys, time
from twistchat.client import BlockingChat
from twistchat.errors import TwistchatError
port, password = int(sys.argv[1]), sys.argv[2]
"""


class Script:
    """
    A Python script using BlockingChat, as its own process.
    """

    def __init__(self, workdir: Path, port: int, body: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", PRELUDE + textwrap.dedent(body), str(port), PASSWORD],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(workdir),
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        self.out = Lines(self.process.stdout)
        self.err = Lines(self.process.stderr)

    def wait(self) -> int:
        try:
            return self.process.wait(timeout=60)
        finally:
            self.out.rest(timeout=2)
            self.err.rest(timeout=2)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def start(workdir: Path) -> Server:
    (workdir / "pw").write_text(PASSWORD + "\n")
    return Server(workdir, "--password-file", str(workdir / "pw"))


def test_connect_send_members_receive_close(tmp_path: Path) -> None:
    """
    The whole blocking API over a real server: connect (which raised a
    TypeError for every call, its timeout colliding with the helper's),
    send, members, receive and leaving through the context manager.
    """
    server = start(tmp_path)
    alice = Client(tmp_path, server.port, "alice", password=PASSWORD)
    script = None
    try:
        alice.out.wait_for("connected")
        script = Script(tmp_path, server.port, """
            with BlockingChat.connect("127.0.0.1", port, "script", password, timeout=30) as chat:
                print("joined", chat.name, chat.room, flush=True)
                chat.send("hello from a script")
                print("members", sorted(m.name for m in chat.members()), flush=True)
                message = chat.receive(timeout=30)
                print("got", message.sender, message.text, message.history, flush=True)
                print("verify", chat.verify("alice"), flush=True)
                print("safety", chat.safety(), flush=True)
            print("closed", flush=True)
        """)
        alice.out.wait_for(r"\[ script: \] hello from a script")
        alice.say("hello script")
        assert script.wait() == 0, script.err.seen
        number = script.out.seen[3].removeprefix("verify ")
        alice.say("/verify script")
        alice.out.wait_for(re.escape(f"* Safety number with script: {number}"))
        assert script.out.seen == [
            "joined script main",
            "members ['alice', 'script']",
            "got alice hello script False",
            f"verify {number}",
            script.out.seen[4],
            "closed",
        ]
        assert re.fullmatch(r"safety (\d{5} ){5}\d{5}", script.out.seen[4])
        alice.out.wait_for(r"\* script \(127\.0\.0\.1:\d+\) left the room")
        assert alice.finish() == 0
    finally:
        if script is not None:
            script.kill()
        assert server.stop()


def test_after_the_server_ended_the_session(tmp_path: Path) -> None:
    """
    When the server ends the session, receive() says so, and keeps saying so
    at once (it waited for its whole timeout, or forever); close() and the
    end of the with block do not fail; send() says the session is over.
    """
    server = start(tmp_path)
    script = Script(tmp_path, server.port, """
        with BlockingChat.connect("127.0.0.1", port, "script", password) as chat:
            print("joined", flush=True)
            for _ in range(2):
                began = time.monotonic()
                try:
                    chat.receive(timeout=10)
                except TwistchatError as e:
                    print("receive:", e, flush=True)
                except TimeoutError:
                    print("receive: timed out", flush=True)
            print("second within 1 s:", time.monotonic() - began < 1, flush=True)
            try:
                chat.send("too late")
            except TwistchatError as e:
                print("send:", e, flush=True)
            chat.close()
            print("closed", flush=True)
        print("left the with block", flush=True)
    """)
    try:
        script.out.wait_for("joined")
        assert server.stop()
        assert script.wait() == 0, script.err.seen
    finally:
        script.kill()
    assert script.out.seen == [
        "joined",
        "receive: disconnected: the server is shutting down",
        "receive: disconnected: the server is shutting down",
        "second within 1 s: True",
        "send: not connected to a room",
        "closed",
        "left the with block",
    ]
    assert script.err.seen == []


def test_called_from_the_reactor_thread(tmp_path: Path) -> None:
    """
    A blocking call made from the reactor's own thread (a Twisted callback)
    can never get its answer, since it blocks the thread that would give it:
    it is refused at once instead of hanging until its timeout.
    """
    server = start(tmp_path)
    script = Script(tmp_path, server.port, """
        from twisted.internet import reactor
        chat = BlockingChat.connect("127.0.0.1", port, "script", password)
        outcome = queue.Queue()

        def inside(call):
            try:
                call()
            except Exception as e:
                outcome.put(type(e).__name__)
            else:
                outcome.put("no error")

        for call in (lambda: chat.members(timeout=5), lambda: chat.send("hi"),
                     lambda: BlockingChat.connect("127.0.0.1", port, "other", password,
                                                  timeout=5)):
            began = time.monotonic()
            reactor.callFromThread(inside, call)
            print(outcome.get(timeout=30), time.monotonic() - began < 1, flush=True)
        print("still works:", [m.name for m in chat.members()], flush=True)
        chat.close()
    """)
    try:
        assert script.wait() == 0, script.err.seen
    finally:
        script.kill()
        assert server.stop()
    assert script.out.seen == [
        "RuntimeError True",
        "RuntimeError True",
        "RuntimeError True",
        "still works: ['script']",
    ]
