"""
A real headless Chromium for the browser client's tests, driven by Selenium.

The browser is Debian's C{chromium}, driven through Debian's
C{/usr/bin/chromedriver} (installed by tests/system-packages.sh; a missing one
fails the test, it never skips). It trusts one certificate only: the test
server's, by the SHA-256 of its public key (C{--ignore-certificate-errors-spki-list});
every other certificate error stays an error. It contacts nothing but the
loopback test server:

  - its background networking (updates, sync, safe browsing, metrics, default
    apps, the new-tab page's fetches) is turned off by flags;
  - every host name but C{127.0.0.1} and C{localhost} resolves to nothing
    (C{--host-resolver-rules}), and anything else would go to a proxy on a closed
    loopback port (C{--proxy-server}), so a request to another origin fails on
    this machine instead of leaving it;
  - L{Chromium.requests} lists every HTTP(S) request and WebSocket the pages made
    (from the DevTools performance log), so a test can check they all went to
    the test server's origin.

A slow machine is imitated with C{storage_delay}: every IndexedDB answer
reaches the page that many seconds late, which opens the windows a loaded
machine opens now and then (a test acting before the page has read its store).
C{TWISTCHAT_BROWSER_STORAGE_DELAY=SECONDS} applies it to every browser of a
run, to shake races out of the tests.

Tests drive only what a person can: L{Chromium.type} into a labelled field,
L{Chromium.press}, L{Chromium.text} of what is rendered. Selenium calls block,
so these tests run the server as a process (tests/test_e2e.py's L{Server}),
never in the test's reactor.

    with Chromium(pin_of(server.data / "server.pem"), tmp_path) as browser:
        browser.open(f"https://127.0.0.1:{port}/")
        assert "Join a room" in browser.text()
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: Width and height of the window: a desktop, or a phone held upright.
DESKTOP = (1280, 900)
PHONE = (390, 844)
#: Run before any script of every page when answers from IndexedDB are to be
#: late: each request's success handler runs C{%(delay)s} seconds after the answer.
_SLOW_STORAGE = """
(() => {
  const late = Object.getOwnPropertyDescriptor(IDBRequest.prototype, 'onsuccess');
  Object.defineProperty(IDBRequest.prototype, 'onsuccess', {
    configurable: true,
    get: late.get,
    set(handler) {
      late.set.call(this, handler && ((event) => setTimeout(() => handler.call(this, event),
        %(delay)s * 1000)));
    },
  });
})();
"""
#: Headless Chromium keeps its window at least this wide; a narrower size is
#: emulated (DevTools' device metrics), as a phone's screen.
_NARROWEST_WINDOW = 500

# Flags that keep Chromium from contacting anything on its own.
_QUIET = [
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-breakpad",
    "--no-first-run",
    "--no-default-browser-check",
    "--no-pings",
    "--metrics-recording-only",
    "--disable-features=OptimizationHints,MediaRouter,Translate,AutofillServerCommunication,"
    "CertificateTransparencyComponentUpdater,InterestFeedContentSuggestions",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
    "--proxy-server=http://127.0.0.1:9",
]


def pin_of(cert_pem: Path) -> str:
    """
    The base64 SHA-256 of the certificate's SubjectPublicKeyInfo, as
    C{--ignore-certificate-errors-spki-list} takes it.
    """
    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def require_chromium() -> None:
    """
    Fail (not skip) with a clear message when the browser or its driver is missing.
    """
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if shutil.which(p) is None]
    if missing:
        raise AssertionError(
            f"missing {', '.join(missing)}: run tests/system-packages.sh "
            "(Debian's chromium and chromium-driver)")


class Chromium:
    """
    One headless Chromium with its own profile under C{workdir}, trusting the
    certificate whose key has the SPKI hash C{pin}. A C{size} narrower than
    headless Chromium's narrowest window (L{PHONE}) is emulated as a phone's
    screen: that width and height, 3 device pixels per CSS pixel, a mobile
    viewport. With C{storage_delay} (seconds; by default
    C{TWISTCHAT_BROWSER_STORAGE_DELAY}, else none), every IndexedDB answer
    reaches the pages that late.
    """

    def __init__(self, pin: str, workdir: Path, size: tuple[int, int] = DESKTOP,
                 storage_delay: float | None = None) -> None:
        require_chromium()
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        profile = workdir / "chromium-profile"
        for flag in [
            "--headless=new",
            # The tests run as root in CI, where Chromium's sandbox cannot start.
            "--no-sandbox",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            f"--window-size={size[0]},{size[1]}",
            f"--ignore-certificate-errors-spki-list={pin}",
            *_QUIET,
        ]:
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        self._log: list[dict[str, Any]] = []
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.driver.set_page_load_timeout(30)
        if storage_delay is None:
            storage_delay = float(os.environ.get("TWISTCHAT_BROWSER_STORAGE_DELAY", "0"))
        if storage_delay:
            self.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {
                "source": _SLOW_STORAGE % {"delay": storage_delay}})
        if size[0] < _NARROWEST_WINDOW:
            self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                "width": size[0], "height": size[1], "deviceScaleFactor": 3, "mobile": True})

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.driver.quit()

    def open(self, url: str) -> None:
        self.driver.get(url)

    def reload(self) -> None:
        self.driver.refresh()

    # --- what a person sees and does ------------------------------------------------

    def text(self) -> str:
        """
        All text rendered in the page, as a person would read it.
        """
        body: str = self.driver.find_element("tag name", "body").text
        return body

    def field(self, label: str) -> Any:
        """
        The form control whose accessible label is C{label} (a C{<label>} or
        C{aria-label}).
        """
        from selenium.webdriver.common.by import By

        found = self.driver.find_elements(By.XPATH, (
            f"//*[@aria-label={_xpath_literal(label)}]"
            f" | //input[@id=//label[normalize-space()={_xpath_literal(label)}]/@for]"
            f" | //textarea[@id=//label[normalize-space()={_xpath_literal(label)}]/@for]"
            f" | //label[normalize-space()={_xpath_literal(label)}]//input"))
        if not found:
            raise AssertionError(f"no control labelled {label!r} in the page:\n{self.text()}")
        return found[0]

    def type(self, label: str, text: str) -> None:
        """
        Click into the field labelled C{label}, clear it and type C{text}.
        """
        element = self.field(label)
        element.click()
        element.clear()
        element.send_keys(text)

    def press(self, name: str, timeout: float = 30) -> None:
        """
        Click the button whose visible text or accessible label is C{name},
        once there is one a person could click: shown and enabled. A button
        that an earlier action is about to show (the compare view's Close,
        a member's Verify) is waited for, up to C{timeout} seconds, rather
        than clicked while hidden; one the page replaces meanwhile (the
        members list is rebuilt on every change) is looked up again.
        """
        from selenium.common.exceptions import (
            ElementNotInteractableException,
            StaleElementReferenceException,
            TimeoutException,
        )
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.wait import WebDriverWait

        literal = _xpath_literal(name)
        xpath = f"//button[normalize-space()={literal} or @aria-label={literal}]"

        def clicked(driver: Any) -> bool:
            for button in driver.find_elements(By.XPATH, xpath):
                if button.is_displayed() and button.is_enabled():
                    button.click()
                    return True
            return False

        try:
            WebDriverWait(self.driver, timeout, poll_frequency=0.05, ignored_exceptions=(
                StaleElementReferenceException, ElementNotInteractableException,
            )).until(clicked)
        except TimeoutException:
            raise AssertionError(
                f"waited {timeout} s for a button {name!r} to press; the page shows:\n"
                f"{self.text()}") from None

    def wait_for_text(self, wanted: str | Callable[[str], bool], timeout: float = 30) -> str:
        """
        Wait until the rendered text contains C{wanted} (or satisfies it); return
        the text. Fails with what the page showed instead. A document being
        replaced meanwhile (a reload, a link followed) is read again once the
        new one is there.
        """
        from selenium.common.exceptions import (
            NoSuchElementException,
            StaleElementReferenceException,
            TimeoutException,
        )
        from selenium.webdriver.support.wait import WebDriverWait

        test = wanted if callable(wanted) else (lambda text: wanted in text)
        shown = [""]

        def matched(_driver: Any) -> bool:
            shown[0] = self.text()
            return test(shown[0])

        try:
            WebDriverWait(self.driver, timeout, poll_frequency=0.05, ignored_exceptions=(
                StaleElementReferenceException, NoSuchElementException,
            )).until(matched)
        except TimeoutException:
            raise AssertionError(
                f"waited {timeout} s for {wanted!r}; the page shows:\n{shown[0]}") from None
        return shown[0]

    def screenshot(self, path: Path) -> None:
        self.driver.save_screenshot(str(path))

    # --- what the browser did ---------------------------------------------------------

    def _drain(self) -> list[dict[str, Any]]:
        for entry in self.driver.get_log("performance"):
            self._log.append(json.loads(entry["message"])["message"])
        return self._log

    def requests(self) -> list[str]:
        """
        The URL of every HTTP(S) request and WebSocket the pages made so far
        (Chromium's own C{chrome:} and C{data:} URLs left out).
        """
        urls = []
        for message in self._drain():
            if message["method"] == "Network.requestWillBeSent":
                urls.append(message["params"]["request"]["url"])
            elif message["method"] == "Network.webSocketCreated":
                urls.append(message["params"]["url"])
        return [u for u in urls if urlsplit(u).scheme in ("http", "https", "ws", "wss")]

    def origins(self) -> set[str]:
        """
        The scheme, host and port of every request in L{requests}.
        """
        return {f"{p.scheme}://{p.netloc}" for p in map(urlsplit, self.requests())}

    def console(self) -> list[str]:
        """
        What the pages wrote to the console (errors included: CSP violations
        are reported there).
        """
        return [entry["message"] for entry in self.driver.get_log("browser")]


def _xpath_literal(text: str) -> str:
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    parts = text.split("'")
    return "concat(" + ", \"'\", ".join(f"'{p}'" for p in parts) + ")"
