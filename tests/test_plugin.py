"""
The twistd plugin: discoverable, light to import, and installed where twistd
looks for it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import twistchat.tap
from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin, getPlugins

ROOT = Path(__file__).resolve().parent.parent


def _outside_source_tree(path: str) -> bool:
    # Only the source tree's own plugin folder is left out: the installed copy
    # may live under the checkout too (CI's venv is .venv inside it).
    return Path(path).resolve() != (ROOT / "twisted" / "plugins").resolve()


def test_get_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    getPlugins finds exactly one service maker called "socketchat", backed by
    L{twistchat.tap}.

    getPlugins writes a dropin.cache next to the plugin modules it scans, so
    the source tree's twisted/plugins is left out of the search: the plugin is
    found in the installed package, and the working tree stays clean.
    """
    import twisted.plugins

    monkeypatch.setattr(
        twisted.plugins, "__path__",
        [p for p in twisted.plugins.__path__ if _outside_source_tree(p)],
    )
    makers = [p for p in getPlugins(IServiceMaker) if p.tapname == "socketchat"]
    assert len(makers) == 1
    [maker] = makers
    assert IPlugin.providedBy(maker)
    assert IServiceMaker.providedBy(maker)
    assert maker.options is twistchat.tap.Options
    assert maker.makeService is twistchat.tap.makeService
    assert "chat" in maker.description.lower()


def test_plugin_module_is_light(tmp_path: Path) -> None:
    """
    twistd imports every plugin module to list them: importing this one must not
    import the server, the crypto or TLS libraries.
    """
    code = (
        "import sys; import twisted.plugins.socketchat_plugin as p; "
        "print(p.socketchat.tapname); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('twistchat', 'Crypto', 'cryptography', 'OpenSSL')))"
    )
    for cwd in (ROOT, tmp_path):
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == ["socketchat", "[]"]

    result = subprocess.run(
        [sys.executable, "-c",
         "import sys; import twisted.plugins.socketchat_plugin; "
         "print('twistchat.tap' in sys.modules)"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_installed_plugin_is_listed_by_twistd(tmp_path: Path) -> None:
    """
    Run from an empty directory (so the source tree is not on sys.path),
    twistd lists socketchat: the installed package provides the plugin.
    """
    result = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--help"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "socketchat" in result.stdout
    assert not list(tmp_path.iterdir())


def test_installed_plugin_options(tmp_path: Path) -> None:
    """
    ``twistd socketchat --help`` loads the installed twistchat.tap options.
    """
    result = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
         "socketchat", "--help"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for option in ("--port", "--data-dir", "--password-file", "--verifier-file", "--tls-cert"):
        assert option in result.stdout
    # --help exits before postOptions: no data directory appears.
    assert not list(tmp_path.iterdir())
