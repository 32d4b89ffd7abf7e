"""
The web port end to end: a real C{twistd -n socketchat --web} on loopback with
real TLS; a browser stand-in (tests/webclient.py: Autobahn's WebSocket client
over TLS pinned to the server's certificate, the browser's channel binding, the
ordinary client protocol) as a process; the real terminal client as another.
"""

from __future__ import annotations

import re
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from twistchat.bench.processes import LineNotSeen, Lines

from tests.test_e2e import Client, Server, env

HERE = Path(__file__).parent
PASSWORD = "correct horse battery staple"
WEB_LINE = r"web page and WebSocket on port (\d+)"


class WebServer(Server):
    def __init__(self, workdir: Path, *args: str) -> None:
        (workdir / "pw").write_text(PASSWORD + "\n")
        super().__init__(workdir, "--password-file", str(workdir / "pw"),
                         "--web", "tcp:0:interface=127.0.0.1", *args)
        self.web = int(self.log.wait_for(WEB_LINE).group(1))
        self.cert = self.data / "server.pem"


class Browser:
    """
    tests/webclient.py as a process.
    """

    def __init__(self, server: WebServer, name: str, *options: str,
                 password: str = PASSWORD) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "webclient.py"), str(server.web), str(server.cert),
             name, *options],
            cwd=server.workdir, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
            env=env(server.workdir, TWISTCHAT_PASSWORD=password))
        assert self.process.stdout is not None
        self.out = Lines(self.process.stdout)

    def say(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def finish(self) -> list[str]:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        return self.out.rest(timeout=5)


@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    running = WebServer(tmp_path)
    try:
        yield running
    finally:
        assert running.stop()
        assert "Traceback" not in "\n".join(running.log.seen)


def get(server: WebServer, path: str, method: str = "GET", trust: Path | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """
    One HTTPS request, trusting the test server's own certificate only (or
    the CA certificate C{trust}).
    """
    context = ssl.create_default_context(cafile=str(trust or server.cert))
    request = urllib.request.Request(f"https://127.0.0.1:{server.web}{path}", method=method,
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'")


@pytest.mark.parametrize("path", ["/", "/index.html", "/twistchat.js", "/no-such-file"])
def test_headers_on_every_response(server: WebServer, path: str) -> None:
    status, headers, body = get(server, path)
    assert status == (404 if "no-such" in path else 200)
    assert headers["Content-Security-Policy"].startswith(CSP)
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Frame-Options"] == "DENY"
    # A self-signed certificate: no HSTS (a browser would then refuse the click-through).
    assert "Strict-Transport-Security" not in headers
    if path == "/twistchat.js":
        assert headers["Content-Type"].startswith("text/javascript")
    if path in ("/", "/index.html"):
        assert b'<script type="module" src="/app.js"></script>' in body


def test_only_get_and_no_listings(server: WebServer) -> None:
    assert get(server, "/", method="POST")[0] == 405
    assert get(server, "/", method="HEAD")[0] == 200
    assert get(server, "/../setup.cfg")[0] == 404


def raw(server: WebServer, request: bytes) -> bytes:
    """
    Send C{request} as it is over TLS to the web port; everything the server
    answers before it closes (or 10 seconds pass).
    """
    import socket

    context = ssl.create_default_context(cafile=str(server.cert))
    with socket.create_connection(("127.0.0.1", server.web), timeout=10) as plain, \
            context.wrap_socket(plain, server_hostname="localhost") as tls:
        tls.sendall(request)
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize("query", ["", "?redirect=https%3A%2F%2Felsewhere.example%2F",
                                   "?redirect=https%3A%2F%2Felsewhere.example%2F&after=0"])
def test_websocket_path_without_upgrade(server: WebServer, query: str) -> None:
    # Autobahn's own answer to a GET without Upgrade is a status page, or a
    # redirect to any URL named in the query: an open redirect on the page's
    # origin, without the security headers. It must be a plain refusal.
    answer = raw(server, b"GET /ws" + query.encode() + b" HTTP/1.1\r\nHost: localhost\r\n"
                 b"Connection: close\r\n\r\n")
    head = answer.split(b"\r\n\r\n")[0].decode().lower()
    assert head.startswith("http/1.1 400 "), head
    assert "location:" not in head
    assert "elsewhere" not in answer.decode(errors="replace")
    assert "autobahn" not in answer.decode(errors="replace").lower()
    assert "content-security-policy: default-src 'none'" in head
    assert "x-frame-options: deny" in head


def test_http_connections_count_as_not_logged_in(tmp_path: Path) -> None:
    # Before the WebSocket upgrade a connection to the web port is as
    # unauthenticated as one to the chat port: it takes one of its address's
    # pre-login slots, so slow or idle HTTP connections cannot pile up.
    import socket

    server = WebServer(tmp_path, "--max-preauth-per-address", "3")
    context = ssl.create_default_context(cafile=str(server.cert))
    held = []
    try:
        for _ in range(3):
            plain = socket.create_connection(("127.0.0.1", server.web), timeout=10)
            tls = context.wrap_socket(plain, server_hostname="localhost")
            tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n")  # never finished
            held.append(tls)
        refused = False
        try:
            with socket.create_connection(("127.0.0.1", server.web), timeout=10) as plain, \
                    context.wrap_socket(plain, server_hostname="localhost") as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                refused = tls.recv(65536) == b""
        except OSError:  # reset, or TLS cut short: refused before any answer
            refused = True
        assert refused, "a fourth HTTP connection was served"
        server.log.wait_for(r"\(127\.0\.0\.1\) refused: 3 connections not logged in")
        for tls in held:
            tls.close()
        held = []
        # The slots are free again: the page loads and a browser logs in.
        browser = Browser(server, "bob")
        try:
            browser.out.wait_for("logged in")
        finally:
            browser.finish()
    finally:
        for tls in held:
            tls.close()
        assert server.stop()
    assert "Traceback" not in "\n".join(server.log.seen)


def test_ping_flood_is_refused(server: WebServer) -> None:
    # Every WebSocket ping queues a pong: a peer that sends pings and never
    # reads made the server buffer them without bound (about 1 byte kept per
    # byte sent), before login too. Pings count like messages now.
    import base64
    import os
    import socket

    context = ssl.create_default_context(cafile=str(server.cert))
    with socket.create_connection(("127.0.0.1", server.web), timeout=10) as plain, \
            context.wrap_socket(plain, server_hostname="localhost") as tls:
        key = base64.b64encode(os.urandom(16)).decode()
        tls.sendall(
            f"GET /ws HTTP/1.1\r\nHost: localhost:{server.web}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nOrigin: https://localhost:{server.web}\r\n"
            f"Sec-WebSocket-Protocol: twistchat.3\r\n\r\n".encode())
        assert tls.recv(4096).startswith(b"HTTP/1.1 101 ")
        ping = bytes([0x89, 0x80 | 125]) + bytes(4) + b"x" * 125
        try:
            for _ in range(20):  # bounded: 2,000 pings in all
                tls.sendall(ping * 100)
        except OSError:
            pass  # closed by the server while we were still sending
        server.log.wait_for(r"WebSocket pings faster than 10 per second")


def test_browser_and_terminal_chat_in_one_room(server: WebServer) -> None:
    terminal = Client(server.workdir, server.port, "alice", password=PASSWORD)
    terminal.out.wait_for("connected — you can start sending messages")
    browser = Browser(server, "bob")
    try:
        browser.out.wait_for("web-hello cert ok")
        browser.out.wait_for("logged in")
        terminal.out.wait_for(r"\* bob \(127\.0\.0\.1:\d+\) entered the room")
        terminal.say("hello from the terminal")
        browser.out.wait_for(re.escape("[ alice: ] hello from the terminal"))
        browser.say("hello from the page")
        terminal.out.wait_for(re.escape("[ bob: ] hello from the page"))
        server.log.wait_for(r"bob \(127\.0\.0\.1, \d+\) connected to room 'main'")
    finally:
        browser.finish()
    terminal.out.wait_for(r"\* bob \(127\.0\.0\.1:\d+\) left the room")
    assert terminal.finish() == 0
    log = "\n".join(server.log.seen)
    assert "hello from" not in log


def test_wrong_password_same_error_as_terminal(server: WebServer) -> None:
    terminal = Client(server.workdir, server.port, "eve", password="not it")
    assert terminal.finish() == 1
    said = [line for line in terminal.err.rest() if "Unable to connect" in line]
    browser = Browser(server, "mallory", password="not it")
    browser.out.wait_for("closed")
    lines = browser.finish()
    assert said == ["Unable to connect: wrong password, or the server could not prove "
                    "it knows this room"]
    assert set(said) == {line for line in browser.out.seen + lines if "Unable to connect" in line}
    server.log.wait_for(r"failed to join room 'main' as mallory")


def test_other_origin_is_refused_with_403(server: WebServer) -> None:
    browser = Browser(server, "bob", "--origin", "https://evil.example")
    browser.out.wait_for("handshake refused: .*403")
    browser.finish()
    server.log.wait_for(r"WebSocket refused: origin 'https://evil.example' is not one")
    assert not any("logged in" in line for line in browser.out.seen)


def test_oversize_message_is_refused_others_unaffected(server: WebServer) -> None:
    terminal = Client(server.workdir, server.port, "alice", password=PASSWORD)
    terminal.out.wait_for("connected — you can start sending messages")
    browser = Browser(server, "bob", "--oversize", "100000")
    browser.out.wait_for("error frame-too-long: frame of 100000 bytes exceeds the limit "
                         "of 4096 bytes")
    browser.out.wait_for("closed")
    browser.finish()
    server.log.wait_for(r"sent a frame of 100000 bytes, over the limit of 4096")
    other = Browser(server, "carol")
    try:
        other.out.wait_for("logged in")
        terminal.say("still here")
        other.out.wait_for("still here")
    finally:
        other.finish()
    assert terminal.finish() == 0


def test_text_message_is_refused(server: WebServer) -> None:
    browser = Browser(server, "bob", "--text")
    browser.out.wait_for("error bad-message: a text WebSocket message: send each frame as "
                         "one binary message")
    browser.out.wait_for("closed")
    browser.finish()


def test_message_in_endless_fragments_is_refused(server: WebServer) -> None:
    """
    Each continuation frame costs the server a list entry (an empty one
    without ever nearing the frame limit or reaching the chat protocol's
    timers): a message in more than MAX_FRAGMENTS frames is refused (here 200
    one-byte frames, far under the 4096-byte limit), and others chat on.
    """
    from twistchat.server.web import MAX_FRAGMENTS

    browser = Browser(server, "bob", "--fragments", "200")
    browser.out.wait_for(f"error bad-message: a WebSocket message in more than {MAX_FRAGMENTS} "
                         "fragments")
    browser.out.wait_for("closed")
    browser.finish()
    other = Browser(server, "carol")
    try:
        other.out.wait_for("logged in")
    finally:
        other.finish()


def test_slow_websocket_reader_is_dropped(tmp_path: Path) -> None:
    server = WebServer(tmp_path, "--max-send-queue", "65536", "--message-rate", "10000",
                       "--message-burst", "10000")
    try:
        slow = Browser(server, "slow", "--stop-reading")
        slow.out.wait_for("stopped reading")
        terminal = Client(server.workdir, server.port, "alice", password=PASSWORD)
        terminal.out.wait_for("connected — you can start sending messages")
        line = "y" * 3000
        dropped = False
        for _ in range(40):  # bounded: at most 2000 messages of 3000 characters
            for _ in range(50):
                terminal.say(line)
            try:
                server.log.wait_for(r"slow \(127\.0\.0\.1, \d+\) is not reading", timeout=1)
            except LineNotSeen:
                continue
            dropped = True
            break
        assert dropped, "the slow WebSocket reader was not dropped"
        terminal.out.wait_for(r"\* slow \(127\.0\.0\.1:\d+\) left the room")
        slow.finish()
        assert terminal.finish() == 0
    finally:
        assert server.stop()
    assert "Traceback" not in "\n".join(server.log.seen)


# --- options (no listening) --------------------------------------------------------


#: twistd as in tests/test_e2e.py's servers, in a Python where autobahn cannot
#: be imported (as if not installed: an import of it raises ImportError).
WITHOUT_AUTOBAHN = ("import sys; sys.modules['autobahn'] = None; "
                    "from twisted.scripts.twistd import run; run()")


def test_web_without_autobahn_is_one_clear_line(tmp_path: Path) -> None:
    """
    The real twistd, in a process of its own whose autobahn is hidden: one
    line, exit status 1, no traceback. (In the test's own process, hiding it
    meant rewriting sys.modules while the reactor's pool threads may import,
    and anything an earlier test left to be logged counted against this one.)
    """
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_AUTOBAHN, "-n", "--pidfile=", "socketchat",
         "--data-dir", str(tmp_path / "data"), "--web", "8443"],
        capture_output=True, text=True, timeout=120, env=env(tmp_path))
    assert (done.returncode, done.stdout) == (1, ""), done.stdout + done.stderr
    assert done.stderr == "twistd socketchat: --web needs autobahn: pip install 'twistchat[web]'\n"


@pytest.mark.parametrize("args, message", [
    (["--web-origin", "https://x.example"], "--web-origin needs --web"),
    (["--web", "ssl:8443"], "describe the plain transport"),
    (["--web", "7777"], "taken by the chat or metrics port"),
    (["--web", "8443", "--web-origin", "x.example"], "not an origin"),
])
def test_web_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    from twisted.python import usage

    from tests.test_tap import parse

    with pytest.raises(usage.UsageError, match=message):
        parse(tmp_path, *args)


def test_origins_and_hsts_rule() -> None:
    from twistchat.server.web import normalise_origin, origins_for

    assert origins_for(["localhost", "::1", "Chat.Example"], 8443) == {
        "https://localhost:8443", "https://[::1]:8443", "https://chat.example:8443"}
    assert origins_for(["chat.example"], 443) == {"https://chat.example"}
    assert normalise_origin("HTTPS://Chat.Example:8443/") == "https://chat.example:8443"


# --- HSTS: only with a CA-issued certificate ------------------------------------------


def write_certificate(folder: Path, name: str, issuer: tuple[Any, Any] | None = None,
                      ca: bool = False) -> tuple[Any, Any]:
    """
    A P-256 key and a certificate for 127.0.0.1 into C{folder/NAME.pem} and
    C{NAME.key}, signed by C{issuer} (a certificate and its key), or by itself.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_cert, issuer_key = issuer or (None, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None),
                       critical=True)
    )
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert, key


@pytest.mark.parametrize("issued", [True, False], ids=["ca-issued", "self-signed"])
def test_hsts_only_with_a_ca_issued_certificate(tmp_path: Path, issued: bool) -> None:
    """
    A certificate from a (tiny, real) CA gets HSTS on every response; one the
    operator signed himself, given the same way, does not.
    """
    if issued:
        ca = write_certificate(tmp_path, "ca", ca=True)
        write_certificate(tmp_path, "server", issuer=ca)
        trust = tmp_path / "ca.pem"
    else:
        write_certificate(tmp_path, "server")
        trust = tmp_path / "server.pem"
    server = WebServer(tmp_path, "--tls-cert", str(tmp_path / "server.pem"),
                       "--tls-key", str(tmp_path / "server.key"))
    try:
        for path in ("/", "/app.js", "/no-such-file"):
            status, headers, _ = get(server, path, trust=trust)
            assert status == (404 if "no-such" in path else 200)
            if issued:
                assert headers["Strict-Transport-Security"] == "max-age=31536000"
            else:
                assert "Strict-Transport-Security" not in headers
            assert headers["X-Content-Type-Options"] == "nosniff"
    finally:
        assert server.stop()
    assert "Traceback" not in "\n".join(server.log.seen)


# --- gzip for the page's files ----------------------------------------------------------

PAGE_FILES = ["/", "/app.js", "/twistchat.js", "/style.css", "/favicon.svg"]


def test_page_files_gzipped_when_accepted(server: WebServer) -> None:
    import gzip

    sent = {"plain": 0, "gzip": 0}
    for path in PAGE_FILES:
        name = path.strip("/") or "index.html"
        status, plain, body = get(server, path)
        assert status == 200 and "Content-Encoding" not in plain
        assert body == (HERE.parent / "twistchat/web/static" / name).read_bytes()
        assert plain["Content-Length"] == str(len(body))
        status, packed, zipped = get(server, path, headers={"Accept-Encoding": "gzip, br"})
        assert status == 200
        assert packed["Content-Encoding"] == "gzip"
        assert "Accept-Encoding" in packed["Vary"] and "Accept-Encoding" in plain["Vary"]
        assert gzip.decompress(zipped) == body
        # The same policy and headers, whatever the encoding.
        assert packed["Content-Security-Policy"] == plain["Content-Security-Policy"]
        assert packed["Content-Type"] == plain["Content-Type"]
        sent["plain"] += len(body)
        sent["gzip"] += len(zipped)
    print(f"\nthe page's files over the wire: {sent['plain']} bytes plain, "
          f"{sent['gzip']} gzipped")
    assert sent["gzip"] < sent["plain"] / 2


def test_ranges_heads_and_refusals_are_not_gzipped(server: WebServer) -> None:
    body = (HERE.parent / "twistchat/web/static/twistchat.js").read_bytes()
    status, headers, part = get(server, "/twistchat.js",
                                headers={"Accept-Encoding": "gzip", "Range": "bytes=0-99"})
    assert (status, part) == (206, body[:100])
    assert "Content-Encoding" not in headers
    status, headers, _ = get(server, "/twistchat.js", method="HEAD",
                             headers={"Accept-Encoding": "gzip"})
    assert status == 200 and "Content-Encoding" not in headers
    assert headers["Content-Length"] == str(len(body))
    status, headers, _ = get(server, "/no-such-file", headers={"Accept-Encoding": "gzip"})
    assert status == 404 and "Content-Encoding" not in headers


def test_not_modified_with_gzip_leaves_the_connection_sound(server: WebServer) -> None:
    """
    A 304 has no body, not even an empty gzip stream: the next response on
    the same connection is read intact.
    """
    import gzip
    import http.client

    context = ssl.create_default_context(cafile=str(server.cert))
    connection = http.client.HTTPSConnection("127.0.0.1", server.web, timeout=10,
                                             context=context)
    try:
        connection.request("GET", "/app.js", headers={"Accept-Encoding": "gzip"})
        first = connection.getresponse()
        body = gzip.decompress(first.read())
        since = first.getheader("Last-Modified")
        assert since
        connection.request("GET", "/app.js",
                           headers={"Accept-Encoding": "gzip", "If-Modified-Since": since})
        cached = connection.getresponse()
        assert (cached.status, cached.read()) == (304, b"")
        connection.request("GET", "/app.js", headers={"Accept-Encoding": "gzip"})
        again = connection.getresponse()
        assert again.status == 200 and gzip.decompress(again.read()) == body
    finally:
        connection.close()
