"""
One class per wire error code (twistchat.errors): each code round-trips from
the server protocol through the wire to the client protocol as exactly its
class, the retry policy keeps the finality it had as string sets, no raise
site spells a code, docs/protocol.md lists the same table, and everything
still works under C{python -OO} (no docstrings at run time).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import twistchat
from twistchat import errors
from twistchat.client.api import is_final
from twistchat.client.keyring import Keyring
from twistchat.client.protocol import ChatClientProtocol, State
from twistchat.server.limits import Limits
from twistchat.server.room import Rooms
from twistchat.server.service import ChatServerFactory
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from .conftest import PASSWORD

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path(twistchat.__file__).resolve().parent

#: The retry policy as it was written before the codes had classes (the string
#: sets FINAL_CODES and RETRY_WHILE_RECONNECTING of twistchat.client.api): the
#: class attributes must give exactly the same answers.
FINAL_BEFORE = frozenset({
    "auth-failed", "wrong-password", "server-not-authenticated", "salt-changed",
    "weak-parameters", "bad-point", "name-invalid", "version", "rate",
    "room-closed", "trust", "fingerprint-changed", "tls", "config",
    "protocol", "bad-message", "unexpected-message", "frame-too-long",
})
RETRY_WHILE_RECONNECTING_BEFORE = frozenset({"name-taken", "penalty"})
#: Every code in use before the classes, wherever it was spelled.
CODES_BEFORE = FINAL_BEFORE | RETRY_WHILE_RECONNECTING_BEFORE | {
    "error", "refused", "room-full", "limit", "busy", "slow", "timeout", "shutdown",
    "internal", "closed", "rejected", "undecryptable", "replayed",
}

ALL = sorted(errors.CODES.values(), key=lambda cls: cls.code)


def test_every_error_class_has_its_own_code() -> None:
    classes = {value for value in vars(errors).values()
               if isinstance(value, type) and issubclass(value, errors.TwistchatError)}
    assert classes == set(errors.CODES.values())
    for code, cls in errors.CODES.items():
        assert cls.code == code
        assert cls.__dict__["code"] == code and cls.__dict__["default_message"]
    # The codes in use before the classes, and those added since.
    assert set(errors.CODES) == CODES_BEFORE | {"bad-signature", "bad-envelope"}


def test_a_second_class_for_a_code_is_refused() -> None:
    with pytest.raises(TypeError, match="reuses the code 'timeout' of Timeout"):
        type("AnotherTimeout", (errors.TwistchatError,),
             {"code": "timeout", "default_message": "late"})
    with pytest.raises(TypeError, match="must set its own code"):
        type("NoCode", (errors.Refused,), {"default_message": "no"})
    with pytest.raises(TypeError, match="must set its own default_message"):
        type("NoMessage", (errors.Refused,), {"code": "no-message"})
    assert "no-message" not in errors.CODES
    assert errors.CODES["timeout"] is errors.Timeout


@pytest.mark.parametrize("cls", ALL, ids=lambda cls: cls.__name__)
def test_finality_is_what_the_string_sets_said(cls: type[errors.TwistchatError]) -> None:
    error = cls()
    assert error.message == cls.default_message
    assert is_final(Failure(error), reconnecting=True) == (cls.code in FINAL_BEFORE)
    assert is_final(Failure(error), reconnecting=False) == (
        cls.code in FINAL_BEFORE or cls.code in RETRY_WHILE_RECONNECTING_BEFORE)


def test_an_unknown_code_keeps_its_code_and_text_and_is_not_final() -> None:
    error = errors.from_code("martian", "the moon is full")
    assert type(error) is errors.TwistchatError
    assert (error.code, error.message) == ("martian", "the moon is full")
    assert not is_final(Failure(error), reconnecting=True)
    assert not is_final(Failure(error), reconnecting=False)
    assert errors.TwistchatError.code == "error"


class LoginFailures:
    def __init__(self) -> None:
        self.failures: list[Failure] = []

    def login_failed(self, failure: Failure) -> None:
        self.failures.append(failure)


def through_the_wire(verifier: Any, sent: errors.TwistchatError) -> errors.TwistchatError:
    """
    The server protocol refuses a new connection with C{sent}; its bytes go to
    a client protocol waiting for the password parameters. Return the error
    the client reports.
    """
    factory = ChatServerFactory(Rooms([verifier]), Clock(), Limits(),
                                channel_binding=lambda transport: bytes(32))
    server = factory.buildProtocol(None)
    server_side = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000),
                                  hostAddress=IPv4Address("TCP", "127.0.0.1", 7777))
    server.makeConnection(server_side)
    server.fail(sent, quiet=True)
    assert server_side.disconnecting

    handler = LoginFailures()
    client = ChatClientProtocol(handler, "alice", "main",  # type: ignore[arg-type]
                                Keyring(PASSWORD, "main", lambda *a: defer.Deferred()),
                                lambda transport: bytes(32), clock=Clock(), keepalive=None)
    client_side = StringTransport()
    client.makeConnection(client_side)
    client.handshakeCompleted()
    assert client.state is State.PARAMS
    client.dataReceived(server_side.value())
    assert client_side.disconnected  # aborted: nothing more is read or sent
    client.connectionLost(None)
    (failure,) = handler.failures
    assert isinstance(failure.value, errors.TwistchatError)
    return failure.value


@pytest.mark.parametrize("cls", ALL, ids=lambda cls: cls.__name__)
def test_every_code_round_trips_through_the_wire(verifier: Any,
                                                 cls: type[errors.TwistchatError]) -> None:
    for text in (cls.default_message, f"{cls.code}: what the server says"):
        received = through_the_wire(verifier, cls(text))
        assert type(received) is cls
        assert (received.code, received.message) == (cls.code, text)
        for reconnecting in (True, False):
            assert (is_final(Failure(received), reconnecting)
                    == is_final(Failure(cls(text)), reconnecting))


def test_frame_too_long_from_the_server_is_a_frame_too_long(verifier: Any) -> None:
    """
    The server used to send frame-too-long from a LimitExceeded: the client
    rebuilt it as a FrameTooLong (a ProtocolError) all the same.
    """
    factory = ChatServerFactory(Rooms([verifier]), Clock(), Limits(),
                                channel_binding=lambda transport: bytes(32))
    server = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000),
                                hostAddress=IPv4Address("TCP", "127.0.0.1", 7777))
    server.makeConnection(transport)
    server.dataReceived(b"\xff\xff\xff\xf0")
    sent = transport.value()[4:]
    assert b'"code":"frame-too-long"' in sent
    assert isinstance(errors.from_code("frame-too-long", "x"), errors.FrameTooLong)


def _code_literals(path: Path) -> list[str]:
    """
    Where C{path} spells an error code: a C{code="..."} argument (other than
    to a C{notice}), or C{.code} compared with a string.
    """
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            is_notice = bool(node.args) and isinstance(node.args[0], ast.Constant) \
                and node.args[0].value == "notice"
            for keyword in node.keywords:
                if (keyword.arg == "code" and isinstance(keyword.value, ast.Constant)
                        and not is_notice):
                    found.append(f"{path.name}:{node.lineno}: code={keyword.value.value!r}")
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if (any(isinstance(s, ast.Attribute) and s.attr == "code" for s in sides)
                    and any(isinstance(n, ast.Constant) and isinstance(n.value, str)
                            for s in sides for n in ast.walk(s))):
                found.append(f"{path.name}:{node.lineno}: .code compared with a string")
    return sorted(found)


def test_no_raise_site_spells_a_code() -> None:
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) if path.name != "errors.py"
             for hit in _code_literals(path)]
    assert found == []


def test_the_checker_finds_a_spelled_code(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text('fail(LimitExceeded("x", code="busy"))\n'
                      'if error.code in {"penalty"}: pass\n'
                      'encode("notice", code="rate", text="slow down")\n')
    assert _code_literals(sample) == ["sample.py:1: code='busy'",
                                      "sample.py:2: .code compared with a string"]


def _final_word(cls: type[errors.TwistchatError]) -> str:
    if cls.final:
        return "yes"
    return "first login only" if cls.retry_only_when_reconnecting else "no"


def test_the_protocol_docs_list_the_same_codes() -> None:
    text = (ROOT / "docs" / "protocol.md").read_text()
    section = text[text.index("### 10.1 Error codes"):text.index("### 10.2 ")]
    rows = re.findall(r"^\| `([^`]+)` \| `([^`]+)` \| ([^|]+?) \| (.+) \|$", section, re.M)
    documented = [(code, name, final) for code, name, final, meaning in rows]
    expected = [(cls.code, cls.__name__, _final_word(cls)) for cls in errors.CODES.values()]
    table = "\n".join(f"| `{c}` | `{n}` | {f} | ... |" for c, n, f in expected)
    assert sorted(documented) == sorted(expected), "docs/protocol.md 10.1 should list:\n" + table
    assert len(documented) == len(set(documented))
    assert all(meaning.strip() for *_, meaning in rows)


#: Run under python -OO: import every module of the package (not the
#: __main__ ones, which run their command), construct every error class, and
#: check that the help texts did not come from docstrings.
OPTIMISED = """
import importlib, pkgutil, sys
import twistchat

def check(ok, what):
    # assert statements are gone under -O.
    if not ok:
        sys.exit("failed: " + what)

check(__doc__ is None and twistchat.__doc__ is None, "not running under -OO")
names = [m.name for m in pkgutil.walk_packages(twistchat.__path__, "twistchat.")
         if not m.name.endswith(".__main__")]
for name in names:
    importlib.import_module(name)
importlib.import_module("twisted.plugins.socketchat_plugin")
from twistchat import errors
for code, cls in errors.CODES.items():
    error = cls()
    check(error.message == cls.default_message and error.message != "", code)
    check(errors.from_code(code, "").message == cls.default_message, code)
from twistchat import passwd
check("twistchat-passwd" in str(passwd.Options()) and "verifier" in str(passwd.Options()), "twistchat-passwd help")
print(len(names), len(errors.CODES))
"""


def test_everything_works_under_python_OO() -> None:
    result = subprocess.run([sys.executable, "-OO", "-c", OPTIMISED], capture_output=True,
                            text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    modules, codes = map(int, result.stdout.split())
    assert modules > 30 and codes == len(errors.CODES)
