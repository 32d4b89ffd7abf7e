"""
The page in a real headless Chromium (tests/browser.py) against the real
C{twistd -n socketchat --web} and the real terminal client, as processes.

The tests drive only what a person can: they type into labelled fields, press
buttons and keys, and read the rendered text. Each checks that the pages
contacted no origin but the server's and that the console reports no
Content-Security-Policy violation.

With C{TWISTCHAT_SCREENSHOT=PATH} set, the chat test also saves its screenshot
there (README's docs/browser.png is made so).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser import PHONE, Chromium, pin_of
from tests.test_e2e import Client
from tests.test_e2e_identity import DIGITS_30, DIGITS_60
from tests.test_web_server import PASSWORD, WebServer

WRONG = "Unable to connect: wrong password, or the server could not prove it knows this room"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[WebServer]:
    running = WebServer(tmp_path)
    try:
        yield running
    finally:
        assert running.stop()
        log = "\n".join(running.log.seen)
        assert "Traceback" not in log
        # The server never sees what the page typed (only sealed messages).
        assert "from the page" not in log and PASSWORD not in log


def terminal(server: WebServer, members: list[Client], name: str, *options: str) -> Client:
    client = Client(server.workdir, server.port, name, password=PASSWORD, options=options)
    members.append(client)
    client.out.wait_for("connected — you can start sending messages")
    return client


def origin(server: WebServer) -> str:
    return f"https://127.0.0.1:{server.web}"


def open_page(browser: Chromium, server: WebServer) -> None:
    browser.open(origin(server) + "/")
    browser.wait_for_text("Not connected")


def reload_page(browser: Chromium) -> str:
    """
    Reload, and wait until the page can take a join (its state line reads
    "Not connected" once it has read its store and wired its form; the
    static "Join a room" is there long before).
    """
    browser.reload()
    return browser.wait_for_text("Not connected")


def join(browser: Chromium, name: str, password: str = PASSWORD, room: str = "main") -> str:
    browser.type("Room", room)
    browser.type("Name", name)
    browser.type("Password", password)
    browser.press("Join")
    return browser.wait_for_text(lambda t: "Connected to room" in t or "Unable to connect" in t)


def say(browser: Chromium, text: str) -> None:
    browser.type("Message", text)
    browser.press("Send")


def check_clean(browser: Chromium, server: WebServer, server_was_down: bool = False) -> None:
    """
    Only the server's origins were asked; no CSP violation, error or alert.
    C{server_was_down}: Chromium's own line for a WebSocket the page tried
    while the server was not listening (a reconnect attempt) is expected.
    """
    assert browser.origins() <= {origin(server), f"wss://127.0.0.1:{server.web}"}
    console = browser.console()
    if server_was_down:
        console = [line for line in console if not (
            f"wss://127.0.0.1:{server.web}/ws" in line and "ERR_CONNECTION_REFUSED" in line)]
    assert not [line for line in console if "Content Security Policy" in line], console
    assert not [line for line in console if "SEVERE" in line or "error" in line.lower()], console
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        browser.driver.switch_to.alert.text  # noqa: B018


def test_first_screen_says_who_serves_the_code(server: WebServer, tmp_path: Path) -> None:
    with Chromium(pin_of(server.cert), tmp_path) as browser:
        open_page(browser, server)
        text = browser.text()
        assert "whoever serves this page can serve different code" in text
        from selenium.webdriver.common.by import By

        browser.driver.find_element(By.LINK_TEXT, "how to check the page").click()
        browser.wait_for_text("Checking the page you run")
        assert "sha256sum" in browser.text()
        check_clean(browser, server)


def test_join_form_waits_for_the_page(server: WebServer, tmp_path: Path) -> None:
    """
    Until the page has read its store and wired its form, the form takes no
    input: Join pressed (or Enter typed) before would send the form as a
    plain GET, the password in the address, and join nothing. IndexedDB
    answering 2 s late keeps the page starting long enough to look.
    """
    with Chromium(pin_of(server.cert), tmp_path, storage_delay=2) as browser:
        browser.open(origin(server) + "/")
        assert "Loading" in browser.text()
        for label in ("Room", "Name", "Password"):
            assert not browser.field(label).is_enabled(), label
        from selenium.webdriver.common.by import By

        join_button = "//button[normalize-space()='Join']"
        assert not browser.driver.find_element(By.XPATH, join_button).is_enabled()
        browser.wait_for_text("Not connected")
        for label in ("Room", "Name", "Password"):
            assert browser.field(label).is_enabled(), label
        assert browser.driver.find_element(By.XPATH, join_button).is_enabled()
        # Ready: the Room field has the focus, as without the delay.
        assert browser.driver.switch_to.active_element.get_attribute("id") == "room"
        check_clean(browser, server)


def test_browser_and_terminal_chat(server: WebServer, members: list[Client],
                                   tmp_path: Path) -> None:
    alice = terminal(server, members, "alice")
    with Chromium(pin_of(server.cert), tmp_path) as browser:
        open_page(browser, server)
        started = time.monotonic()
        text = join(browser, "bob")
        login = time.monotonic() - started
        assert "Connected to room main as bob" in text, text
        assert "* In the room: alice (127.0.0.1:" in text
        alice.out.wait_for(r"\* bob \(127\.0\.0\.1:\d+\) entered the room")
        browser.wait_for_text(lambda t: "Members (2)" in t)
        say(browser, "hello from the page")
        alice.out.wait_for(re.escape("[ bob: ] hello from the page"))
        alice.say("hello from the terminal")
        text = browser.wait_for_text("hello from the terminal")
        assert re.search(r"alice\s*:\s*hello from the terminal", text), text
        shot = tmp_path / "browser.png"
        browser.screenshot(shot)
        assert shot.read_bytes().startswith(b"\x89PNG")
        if os.environ.get("TWISTCHAT_SCREENSHOT"):
            shutil.copy(shot, os.environ["TWISTCHAT_SCREENSHOT"])
        alice.say("/quit")
        browser.wait_for_text(re.compile(r"\* alice \(127\.0\.0\.1:\d+\) left the room").search)
        browser.wait_for_text("* The room is empty.")
        check_clean(browser, server)
    # The login's time is printed, not asserted: speed is the benchmark's to measure.
    print(f"\nlogin in the page (scrypt, SPAKE2+, WebSocket): {login:.2f} s")


def test_wrong_password_same_message_as_terminal(server: WebServer, tmp_path: Path) -> None:
    wrong = Client(server.workdir, server.port, "eve", password="not it")
    assert wrong.finish() == 1
    assert WRONG in wrong.err.rest()
    with Chromium(pin_of(server.cert), tmp_path) as browser:
        open_page(browser, server)
        text = join(browser, "mallory", password="not it")
        assert WRONG in text
        assert "Connected" not in text
        # The password field is empty again, and focused for the next try.
        assert browser.field("Password").get_attribute("value") == ""
        check_clean(browser, server)


HOSTILE_NAME = "<img src=x onerror=alert(1)>"
HOSTILE_TEXT = ("<script>alert('s')</script> <img src=x onerror=alert('i')> "
                "\u202eevil\u202c <b>bold</b> \u2067isolated\u2069")
#: Hebrew first, then an unterminated right-to-left override.
RTL_TEXT = "\u05e9\u05dc\u05d5\u05dd 1 \u202eunterminated"


def test_hostile_names_and_text_are_inert_text(server: WebServer, members: list[Client],
                                                tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    mallory = terminal(server, members, "mallory")
    with Chromium(pin_of(server.cert), tmp_path) as browser:
        page = browser.driver
        open_page(browser, server)
        # The server allows only plain ASCII names: the page shows its refusal as text.
        text = join(browser, HOSTILE_NAME)
        assert "Unable to connect: invalid name: use 1 to 32 letters" in text
        join(browser, "bob")
        mallory.say(HOSTILE_TEXT)
        mallory.say(RTL_TEXT)
        browser.wait_for_text("unterminated")
        text = browser.text()
        assert HOSTILE_TEXT in text and RTL_TEXT in text
        # No element came from a text: any <img>, <script> or <b> would be seen.
        for tag in ("img", "script", "b"):
            assert page.find_elements(By.CSS_SELECTOR, f"body {tag}") == []
        # Each sender and text is isolated: on screen the sender stays left of
        # the colon, and the colon left of the text, whatever the text holds.
        lines = page.find_elements(By.CSS_SELECTOR, "#messages li.message")
        assert len(lines) == 2
        for line in lines:
            sender, text_part = line.find_elements(By.TAG_NAME, "bdi")
            colon = line.find_element(By.CLASS_NAME, "colon")
            assert sender.get_attribute("dir") == text_part.get_attribute("dir") == "auto"
            assert sender.rect["x"] < colon.rect["x"] < text_part.rect["x"], line.text
        check_clean(browser, server)


def test_reload_asks_again_and_shows_history(server: WebServer, members: list[Client],
                                             tmp_path: Path) -> None:
    alice = terminal(server, members, "alice")
    with Chromium(pin_of(server.cert), tmp_path) as browser:
        open_page(browser, server)
        join(browser, "bob")
        say(browser, "before the reload")
        alice.out.wait_for(re.escape("[ bob: ] before the reload"))
        alice.say("while bob reloads")
        browser.wait_for_text("while bob reloads")
        text = reload_page(browser)
        assert "Join a room" in text and "Connected" not in text
        # Nothing kept without the opt-in: the password is asked again.
        browser.press("Join")
        browser.wait_for_text("Type the room password.")
        text = join(browser, "bob")
        assert "Connected to room main as bob" in text
        text = browser.wait_for_text("--- live ---")
        history = text[text.index("--- history ---"):text.index("--- live ---")]
        assert "before the reload" in history and "while bob reloads" in history
        assert "NOT VERIFIED" not in text and "!!!" not in text
        alice.out.wait_for(r"\* bob \(127\.0\.0\.1:\d+\) entered the room")
        check_clean(browser, server)


def test_kept_keys_log_in_after_a_reload_without_the_password(server: WebServer,
                                                              tmp_path: Path) -> None:
    with Chromium(pin_of(server.cert), tmp_path) as browser:
        open_page(browser, server)
        browser.field("Keep my keys on this device (never the password)").click()
        join(browser, "bob")
        assert "you may leave the password empty" in reload_page(browser)
        browser.press("Join")
        assert "Connected to room main as bob" in browser.wait_for_text("Connected to room")
        assert "you may leave the password empty" in reload_page(browser)
        browser.press("Forget my keys")
        browser.press("Join")
        browser.wait_for_text("Type the room password.")
        check_clean(browser, server)


def test_key_change_warning_and_same_safety_numbers(server: WebServer, members: list[Client],
                                                    tmp_path: Path) -> None:
    alice = terminal(server, members, "alice", "--identity", str(tmp_path / "alice.json"))
    with Chromium(pin_of(server.cert), tmp_path) as browser:
        open_page(browser, server)
        join(browser, "bob")
        alice.out.wait_for(r"\* bob \(127\.0\.0\.1:\d+\) entered the room")
        # The safety number with alice, from both sides.
        alice.say("/verify bob")
        theirs = alice.out.wait_for(rf"\* Safety number with bob: ({DIGITS_60})").group(1)
        browser.press("Verify alice")
        text = browser.wait_for_text("Compare this")
        assert " ".join(theirs.split()) in " ".join(text.split())
        browser.press("Close")
        # The button's verify left its own line: wait for the command's.
        say(browser, "/verify alice")
        text = browser.wait_for_text(lambda t: t.count("* Safety number with alice:") == 2)
        assert text.count(f"* Safety number with alice: {theirs}") == 2, text
        browser.press("Close")
        # The room code too.
        alice.say("/safety")
        code = alice.out.wait_for(rf"\* Room safety code: ({DIGITS_30})").group(1)
        browser.press("Room safety code")
        browser.press("Close")
        assert f"* Room safety code: {code}" in browser.wait_for_text("Room safety code:")
        # alice comes back with another identity key: a warning, and marks.
        alice.say("/quit")
        assert alice.finish() == 0
        browser.wait_for_text(re.compile(r"alice \(127\.0\.0\.1:\d+\) left the room").search)
        other = terminal(server, members, "alice", "--identity", str(tmp_path / "other.json"))
        text = browser.wait_for_text("safety number has changed")
        assert ("!!! WARNING: alice's safety number has changed. Someone else may be using "
                "the name alice.") in text
        other.say("it is me, honest")
        text = browser.wait_for_text("it is me, honest")
        assert re.search(r"alice \(NOT VERIFIED: key changed\)\s*:\s*it is me, honest", text), text
        say(browser, "/verify alice")
        browser.wait_for_text("Safety number with alice (CHANGED: not accepted yet):")
        browser.press("Close")
        say(browser, "/accept alice")
        browser.wait_for_text("* alice's new identity key is now trusted.")
        other.say("and now")
        text = browser.wait_for_text("and now")
        assert re.search(r"alice\s*:\s*and now", text), text
        check_clean(browser, server)


def test_phone_and_keyboard_alone(server: WebServer, members: list[Client],
                                  tmp_path: Path) -> None:
    from selenium.webdriver.common.keys import Keys

    alice = terminal(server, members, "alice")
    with Chromium(pin_of(server.cert), tmp_path, size=PHONE) as browser:
        page = browser.driver
        open_page(browser, server)
        assert page.execute_script("return window.innerWidth") == PHONE[0]

        def keys(*typed: str) -> None:
            page.switch_to.active_element.send_keys(*typed)

        # The Room field has the focus; Tab goes Room, Name, Password; Enter joins.
        assert page.switch_to.active_element.get_attribute("id") == "room"
        keys(Keys.TAB, "bob", Keys.TAB, PASSWORD, Keys.ENTER)
        browser.wait_for_text("Connected to room main as bob")
        # Focus is in the message field: Enter sends.
        keys("typed on a phone", Keys.ENTER)
        alice.out.wait_for(re.escape("[ bob: ] typed on a phone"))
        # Nothing wider than the phone: no sideways scrolling, Send on screen.
        assert page.execute_script("return document.documentElement.scrollWidth") <= PHONE[0]
        from selenium.webdriver.common.by import By

        send = page.find_element(By.XPATH, "//button[normalize-space()='Send']").rect
        assert 0 <= send["x"] and send["x"] + send["width"] <= PHONE[0]
        assert send["y"] + send["height"] <= PHONE[1]
        browser.screenshot(tmp_path / "phone.png")
        check_clean(browser, server)


def test_reconnect_with_visible_state(tmp_path: Path, members: list[Client]) -> None:
    server = WebServer(tmp_path)
    web = server.web
    try:
        with Chromium(pin_of(server.cert), tmp_path) as browser:
            open_page(browser, server)
            join(browser, "bob")
            assert server.stop()
            text = browser.wait_for_text(
                re.compile(r"Reconnecting in \d+ s \(attempt \d+\): the server is shutting down").search)
            assert "Connection lost: the server is shutting down" in text
            # The same port again; the page finds it on its own.
            server = WebServer(tmp_path, "--web", f"tcp:{web}:interface=127.0.0.1")
            browser.wait_for_text("* Reconnected: back in room main")
            browser.wait_for_text("Connected to room main as bob")
            alice = terminal(server, members, "alice")
            say(browser, "after the restart")
            alice.out.wait_for(re.escape("[ bob: ] after the restart"))
            browser.press("Leave")
            browser.wait_for_text("Left the room")
            assert not browser.field("Message").is_enabled()
            check_clean(browser, server, server_was_down=True)
    finally:
        server.stop()


#: A page-side micro benchmark, run in Chromium on the shipped bundle (what
#: the page does per message: sign with the WebCrypto key and seal; open and
#: verify a peer's). Seconds per message, and the bundle's own scrypt.
MEASURE = """
const done = arguments[arguments.length - 1];
(async () => {
  const tc = await import('/twistchat.js');
  const { kdf, seal, signed } = tc;
  const subtle = crypto.subtle;
  const pair = await subtle.generateKey({ name: 'Ed25519' }, false, ['sign', 'verify']);
  const me = { publicKey: new Uint8Array(await subtle.exportKey('raw', pair.publicKey)),
    sign: async (d) => new Uint8Array(await subtle.sign('Ed25519', pair.privateKey, d)) };
  const key = crypto.getRandomValues(new Uint8Array(32));
  const sealer = await seal.Sealer.create(key, 'main', 'bob');
  const opener = new seal.Opener(key, 'main');
  const count = 200;
  const sealed = [];
  let t = performance.now();
  let prev = signed.NO_HASH;
  for (let i = 0; i < count; i++) {
    const sent = await signed.sealSigned(sealer, me, { seq: BigInt(i + 1), prev,
      seen: signed.NO_HASH, text: 'a short message of about forty characters' });
    sealed.push(sent);
    prev = sent.hash;
  }
  const sealMs = (performance.now() - t) / count;
  t = performance.now();
  for (const m of sealed) await signed.openMessage(opener, 'bob', m.sid, m.n, m.ciphertext);
  const openMs = (performance.now() - t) / count;
  t = performance.now();
  await kdf.deriveSecrets('correct horse', new Uint8Array(16), { n: 32768, r: 8, p: 1 });
  const scryptMs = performance.now() - t;
  done({ sealMs, openMs, scryptMs });
})().catch((e) => done({ error: String(e) }));
"""


def test_measure_the_page(server: WebServer, tmp_path: Path) -> None:
    """
    docs/browser.md's figures: load size, login time, per-message cost, in Chromium.
    """
    import gzip

    from tests.test_web_crypto import BUNDLE

    files = ["index.html", "style.css", "app.js", "twistchat.js", "favicon.svg"]
    raw = sum((BUNDLE.parent / name).stat().st_size for name in files)
    packed = sum(len(gzip.compress((BUNDLE.parent / name).read_bytes(), 9)) for name in files)
    with Chromium(pin_of(server.cert), tmp_path) as browser:
        open_page(browser, server)
        logins = []
        for _ in range(3):
            started = time.monotonic()
            assert "Connected to room main as bob" in join(browser, "bob")
            logins.append(time.monotonic() - started)
            browser.press("Leave")
            browser.wait_for_text("Left the room")
            reload_page(browser)
        browser.driver.set_script_timeout(120)
        got = browser.driver.execute_async_script(MEASURE)
        assert "error" not in got, got
        check_clean(browser, server)
    print(f"\npage files: {raw} bytes, {packed} gzipped;"
          f" login (median of 3, press Join to 'Connected'): {sorted(logins)[1]:.2f} s;"
          f" scrypt alone: {got['scryptMs']:.0f} ms;"
          f" sign and seal: {got['sealMs']:.2f} ms; open and verify: {got['openMs']:.2f} ms")
    # Times are printed for docs/browser.md, not asserted (the benchmark measures
    # speed): each login above reached "Connected", and the page sealed, opened
    # and verified every message (MEASURE reports an error otherwise).
    assert raw < 200_000
    assert sorted(got) == ["openMs", "scryptMs", "sealMs"], got


VOUCH = r"^([A-Za-z0-9+/]{139}=)$"


def vouched_by(alice: Client, browser: Chromium) -> tuple[str, str]:
    """
    The page's device key as alice, shown by the page, and the vouch alice's
    terminal gives it for 7 days.
    """
    browser.type("Name", "alice")
    browser.press("Show this device's key")
    shown = browser.wait_for_text("This device's key as alice:")
    key = re.search(r"This device's key as alice: ([0-9a-f]{64})", shown).group(1)
    alice.say(f"/vouch {key} 7")
    return key, alice.out.wait_for(VOUCH).group(1)
CHANGED = "safety number has changed"


def test_terminal_vouches_for_the_page(server: WebServer, members: list[Client],
                                       tmp_path: Path) -> None:
    """
    bob and carol (terminals) pinned alice's terminal device A; alice logs in
    from the page with a vouch A made: bob reads "new device", not the
    warning. The page keeps the vouch: after a reload its next login presents
    it again, and carol, who pinned only A, reads "new device" too.
    """
    alice = terminal(server, members, "alice", "--identity", str(tmp_path / "alice.json"))
    # bob and carol are other people: profiles (pins) of their own.
    for name in ("bob", "carol"):
        (tmp_path / name).mkdir()
    bob = Client(tmp_path / "bob", server.port, "bob", password=PASSWORD)
    members.append(bob)
    bob.out.wait_for("connected — you can start sending messages")  # pins alice's A
    carol = Client(tmp_path / "carol", server.port, "carol", password=PASSWORD)
    members.append(carol)
    carol.out.wait_for("connected — you can start sending messages")  # pins alice's A
    alice.say("/key")
    key_a = alice.out.wait_for(r"\* Your identity key: ([0-9a-f]{64})").group(1)
    carol.say("/quit")
    assert carol.finish() == 0
    with Chromium(pin_of(server.cert), tmp_path) as browser:
        open_page(browser, server)
        key_b, vouch = vouched_by(alice, browser)
        mark = len(bob.out.seen)
        alice.say("/quit")
        assert alice.finish() == 0
        bob.out.wait_for(r"\* alice .* left the room", after=mark)
        browser.field("I have a vouch from my other device").click()
        browser.type("Vouch from your other device", vouch)
        assert "Connected to room main as alice" in join(browser, "alice")
        bob.out.wait_for(re.escape(
            f"* alice: new device {key_b[:8]} (vouched for by alice's device {key_a[:8]})"))
        say(browser, "written in the page")
        bob.out.wait_for(re.escape("[ alice: ] written in the page"))
        # A reload: the vouch is still there, and presented again.
        browser.press("Leave")
        browser.wait_for_text("Left the room")
        reload_page(browser)
        assert browser.field("I have a vouch from my other device").is_selected()
        assert browser.field("Vouch from your other device").get_attribute("value") == vouch
        assert "Connected to room main as alice" in join(browser, "alice")
        carol = Client(tmp_path / "carol", server.port, "carol", password=PASSWORD)
        members.append(carol)
        carol.out.wait_for(re.escape(
            f"* alice: new device {key_b[:8]} (vouched for by alice's device {key_a[:8]})"))
        say(browser, "and again")
        carol.out.wait_for(re.escape("[ alice: ] and again"))
        check_clean(browser, server)
    assert bob.finish() == 0 and carol.finish() == 0
    assert not [line for line in bob.out.seen + carol.out.seen if CHANGED in line]


def test_page_vouches_for_a_terminal(server: WebServer, members: list[Client],
                                     tmp_path: Path) -> None:
    """
    bob (a page) pinned alice's page device P; P vouches for alice's terminal
    device T with the visible control; T joins with --vouch: bob's page reads
    "new device", not the warning, and /verify lists one number per device,
    the one in use the number T shows.
    """
    from twistchat.crypto.identity import Identity

    key_t = Identity.generate()
    key_t.save(tmp_path / "alice-t.json")
    t_hex = key_t.public_key.hex()
    (tmp_path / "bob").mkdir()
    (tmp_path / "alice").mkdir()
    with Chromium(pin_of(server.cert), tmp_path / "bob") as bob, \
            Chromium(pin_of(server.cert), tmp_path / "alice") as alice:
        open_page(bob, server)
        assert "Connected to room main as bob" in join(bob, "bob")
        open_page(alice, server)
        assert "Connected to room main as alice" in join(alice, "alice")
        bob.wait_for_text(re.compile(r"alice \(127\.0\.0\.1:\d+\) entered the room").search)
        say(alice, "/key")
        shown = alice.wait_for_text("Your identity key:")
        key_p = re.search(r"\* Your identity key: ([0-9a-f]{64})", shown).group(1)
        alice.press("My devices")
        assert f"This device's key: {key_p}" in alice.wait_for_text("Your devices")
        alice.type("Key of your other device", t_hex)
        alice.type("Days", "7")
        alice.press("Make a vouch")
        text = alice.wait_for_text("on that device paste it")
        assert f"* Vouch for device {t_hex[:8]} as alice in room main, for 7 days" in text
        vouch = re.search(VOUCH, text, re.M).group(1)
        alice.press("Leave")
        bob.wait_for_text(re.compile(r"alice \(127\.0\.0\.1:\d+\) left the room").search)
        t = terminal(server, members, "alice", "--identity", str(tmp_path / "alice-t.json"),
                     "--vouch", vouch)
        bob.wait_for_text(
            f"* alice: new device {t_hex[:8]} (vouched for by alice's device {key_p[:8]})")
        t.say("written in the terminal")
        text = bob.wait_for_text("written in the terminal")
        assert re.search(r"alice\s*:\s*written in the terminal", text), text
        say(bob, "/verify alice")
        # The heading comes first, then one line per device as each number is made.
        lines = [rf"device {key_p[:8]}: {DIGITS_60}", rf"device {t_hex[:8]} \(in use\): {DIGITS_60}"]
        text = bob.wait_for_text(lambda shown: all(re.search(line, shown) for line in lines))
        bob.press("Close")
        assert "* Safety numbers with alice, one per device:" in text
        in_use = re.search(lines[1], text).group(1)
        t.say("/verify bob")
        assert t.out.wait_for(rf"\* Safety number with bob: {DIGITS_60}").group(1) == in_use
        assert CHANGED not in bob.text()
        check_clean(bob, server)
        check_clean(alice, server)


def test_enter_in_the_name_field_waits_for_the_kept_vouch(server: WebServer,
                                                          members: list[Client],
                                                          tmp_path: Path) -> None:
    """
    The page keeps alice's vouch for room main. IndexedDB answers late (0.5 s);
    the name is erased (the form shows no vouch) and typed again with Enter
    right after it: Join waits until the form has read the vouch kept for
    that name, presents it (carol, who pinned only alice's terminal device,
    reads "new device", not the warning), and keeps it for the next login.
    """
    from selenium.webdriver.common.keys import Keys

    alice = terminal(server, members, "alice", "--identity", str(tmp_path / "alice.json"))
    (tmp_path / "carol").mkdir()
    carol = Client(tmp_path / "carol", server.port, "carol", password=PASSWORD)
    members.append(carol)
    carol.out.wait_for("connected — you can start sending messages")  # pins alice's A
    carol.say("/quit")
    assert carol.finish() == 0
    alice.say("/key")
    key_a = alice.out.wait_for(r"\* Your identity key: ([0-9a-f]{64})").group(1)
    with Chromium(pin_of(server.cert), tmp_path, storage_delay=0.5) as browser:
        open_page(browser, server)
        key_b, vouch = vouched_by(alice, browser)
        alice.say("/quit")
        assert alice.finish() == 0
        browser.field("I have a vouch from my other device").click()
        browser.type("Vouch from your other device", vouch)
        assert "Connected to room main as alice" in join(browser, "alice")
        browser.press("Leave")
        browser.wait_for_text("Left the room")
        reload_page(browser)
        # The remembered room and name: the kept vouch fills the form.
        assert browser.field("Vouch from your other device").get_attribute("value") == vouch
        browser.type("Password", PASSWORD)
        name = browser.field("Name")
        name.clear()
        browser.wait_for_text(lambda t: "Vouch from your other device" not in t)
        name.send_keys("alice", Keys.ENTER)
        assert "Connected to room main as alice" in browser.wait_for_text(
            lambda t: "Connected to room" in t or "Unable to connect" in t)
        carol = Client(tmp_path / "carol", server.port, "carol", password=PASSWORD)
        members.append(carol)
        seen = carol.out.wait_for(rf"alice: new device|{CHANGED}").group(0)
        assert seen == "alice: new device", carol.out.seen
        carol.out.wait_for(re.escape(
            f"* alice: new device {key_b[:8]} (vouched for by alice's device {key_a[:8]})"))
        # Still kept: the next login presents it again.
        browser.press("Leave")
        browser.wait_for_text("Left the room")
        reload_page(browser)
        assert browser.field("I have a vouch from my other device").is_selected()
        assert browser.field("Vouch from your other device").get_attribute("value") == vouch
        check_clean(browser, server)
    carol.say("/quit")
    assert carol.finish() == 0
