"""
The browser harness itself (tests/browser.py), against a plain HTTPS server on
loopback: Chromium trusts the pinned certificate and no other, and the request
log sees a request to another origin (which fails on this machine).
"""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from twistchat.server.tls import create_self_signed

from tests.browser import PHONE, Chromium, pin_of

PAGE = """<!doctype html><html><head><title>harness</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head><body>
<p>pinned page</p><label for="f">Your name</label><input id="f">
<button aria-label="Shout" onclick="document.body.append(document.getElementById('f').value)">
!</button><img src="https://example.com/pixel.png" alt=""></body></html>"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _https(directory: Path, cert: Path, key: Path) -> Iterator[int]:
    handler = lambda *a: _Quiet(*a, directory=str(directory))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text(PAGE)
    create_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem")
    for port in _https(tmp_path / "www", tmp_path / "cert.pem", tmp_path / "key.pem"):
        yield port, tmp_path / "cert.pem"


def test_pinned_certificate_is_trusted_and_controls_work(site: tuple[int, Path],
                                                          tmp_path: Path) -> None:
    port, cert = site
    with Chromium(pin_of(cert), tmp_path) as browser:
        browser.open(f"https://127.0.0.1:{port}/")
        assert "pinned page" in browser.wait_for_text("pinned page")
        browser.type("Your name", "<b>zoë</b>")
        browser.press("Shout")
        browser.wait_for_text("<b>zoë</b>")


def test_phone_size_is_emulated(site: tuple[int, Path], tmp_path: Path) -> None:
    """
    Headless Chromium keeps its window at least 500 pixels wide: the harness
    emulates the phone's screen, so the page lays out at the phone's width.
    """
    port, cert = site
    with Chromium(pin_of(cert), tmp_path, size=PHONE) as browser:
        browser.open(f"https://127.0.0.1:{port}/")
        browser.wait_for_text("pinned page")
        size = browser.driver.execute_script(
            "return [window.innerWidth, window.innerHeight, window.devicePixelRatio]")
        assert size == [PHONE[0], PHONE[1], 3]


def test_other_certificate_is_refused(site: tuple[int, Path], tmp_path: Path) -> None:
    port, _ = site
    create_self_signed(tmp_path / "other.pem", tmp_path / "other-key.pem")
    with Chromium(pin_of(tmp_path / "other.pem"), tmp_path) as browser:
        browser.open(f"https://127.0.0.1:{port}/")
        text = browser.text()
        assert "pinned page" not in text
        assert "Your connection is not private" in text or "ERR_CERT" in text, text


def test_requests_to_other_origins_are_seen(site: tuple[int, Path], tmp_path: Path) -> None:
    port, cert = site
    with Chromium(pin_of(cert), tmp_path) as browser:
        browser.open(f"https://127.0.0.1:{port}/")
        browser.wait_for_text("pinned page")
        origins = browser.origins()
        assert f"https://127.0.0.1:{port}" in origins
        assert "https://example.com" in origins
