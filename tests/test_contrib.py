"""
The systemd unit pair in contrib/systemd/ (twistchat.socket, twistchat.service),
which docs/operations.md shows: the files are what the docs show, they parse as
INI, systemd knows every key they use (systemd-analyze verify, where
installed), and the service's command line uses socketchat options that exist,
listening on the socket the socket unit opens.
"""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from twistchat.tap import Options

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "contrib" / "systemd"
NAMES = ["twistchat.socket", "twistchat.service"]
BIN = Path(sys.executable).parent


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((UNITS / name).read_text(), source=name)
    return parser


def command() -> list[str]:
    return shlex.split(unit("twistchat.service")["Service"]["ExecStart"])


@pytest.mark.parametrize("name", NAMES)
def test_docs_show_the_files(name: str) -> None:
    """
    docs/operations.md shows each file whole, as an indented block after a
    line naming it.
    """
    docs = (ROOT / "docs" / "operations.md").read_text()
    match = re.search(rf"`contrib/systemd/{re.escape(name)}`[^\n]*:\n\n((?:    [^\n]*\n|\n)+)",
                      docs)
    assert match, f"docs/operations.md does not show {name}"
    shown = "\n".join(line[4:] for line in match.group(1).splitlines()).strip()
    assert shown == (UNITS / name).read_text().strip()


@pytest.mark.parametrize("name", NAMES)
def test_units_parse_as_ini(name: str) -> None:
    sections = unit(name).sections()
    assert sections[0] == "Unit" and sections[-1] == "Install"
    assert {"Socket": "twistchat.socket", "Service": "twistchat.service"}.get(
        sections[1]) == name


def test_service_uses_the_socket() -> None:
    socket_unit = unit("twistchat.socket")
    service = unit("twistchat.service")
    assert socket_unit["Socket"]["Service"] == "twistchat.service"
    assert "twistchat.socket" in service["Unit"]["Requires"].split()
    assert "twistchat.socket" in service["Unit"]["After"].split()
    # One IPv4 socket (domain=INET), index 0; TCP only: twistd adds TLS.
    [listen] = [v for k, v in socket_unit["Socket"].items() if k.startswith("Listen")]
    assert re.fullmatch(r"0\.0\.0\.0:\d+", listen)
    assert "ListenStream" in socket_unit["Socket"]
    args = command()
    assert args[args.index("--listen") + 1] == "systemd:domain=INET:index=0"


def test_service_command_uses_options_that_exist() -> None:
    args = command()
    assert Path(args[0]).name == "twistd"
    assert args[1:4] == ["-n", "--pidfile=", "socketchat"]
    known = Options().synonyms
    given = [a.split("=")[0][2:] for a in args[4:] if a.startswith("--")]
    assert given == ["data-dir", "listen"]
    assert all(name in known for name in given)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (it checks every key)")
def test_systemd_knows_every_key(tmp_path: Path) -> None:
    """
    systemd-analyze verify reports unknown sections and keys; the unit's
    /opt/twistchat virtualenv is replaced by this one, which exists.
    """
    for name in NAMES:
        text = (UNITS / name).read_text().replace("/opt/twistchat/bin/", f"{BIN}/")
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / n) for n in NAMES)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Unknown" not in result.stdout + result.stderr, result.stderr
