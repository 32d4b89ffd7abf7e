"""
The one reading of C{--redis URL} and C{--redis-password-file}
(L{twistchat.redisurl}), and both commands that use it: C{twistd socketchat}
and C{twistchat-passwd} accept and refuse the same things, with one line
that never shows the password. The last tests use a real redis-server.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest
from twistchat.errors import ConfigError
from twistchat.passwd import main as passwd_main
from twistchat.redisurl import RedisURL, redis_url
from twistchat.server.service import CannotStart
from twistchat.tap import Options

from tests.test_e2e import BIN, assert_one_line, env, twistd
from tests.test_redis import RedisServer

SECRET = "s3cret-redis-pw"


@pytest.mark.parametrize(("url", "expected"), [
    ("redis://cache", RedisURL("cache", 6379, 0, False)),
    ("redis://cache:7000/3", RedisURL("cache", 7000, 3, False)),
    ("redis://cache:7000/3/", RedisURL("cache", 7000, 3, False)),
    ("rediss://cache.example:6380/1", RedisURL("cache.example", 6380, 1, True)),
    (f"redis://:{SECRET}@cache/2", RedisURL("cache", 6379, 2, False, SECRET)),
    ("rediss://chat:p%40ss%2Fword@cache:6380/0",
     RedisURL("cache", 6380, 0, True, "p@ss/word", "chat")),
    ("redis://[::1]:7000/4", RedisURL("::1", 7000, 4, False)),
    ("rediss://chat@cache:6380/0", RedisURL("cache", 6380, 0, True, None, "chat")),
])
def test_good_urls(url: str, expected: RedisURL) -> None:
    parsed = RedisURL.parse(url)
    assert parsed == expected
    assert (parsed.password, parsed.username) == (expected.password, expected.username)
    assert SECRET not in str(parsed) and SECRET not in repr(parsed)


BAD_URLS = [
    ("cache:6379", "not a Redis URL"),
    ("http://cache/0", "not a Redis URL"),
    ("redis:///0", "no host"),
    (f"redis://:{SECRET}@:6379/0", "no host"),
    (f"redis://:{SECRET}@cache:port/0", "the port must be a number"),
    ("redis://cache:70000/0", "the port must be a number"),
    ("redis://cache/db1", "the database must be a number, not 'db1'"),
    ("redis://cache/-1", "the database must be a number"),
    ("redis://cache/0/1", "the database must be a number"),
    ("redis://cache/0?ssl=true", "options after '?' or '#' are not supported"),
    (f"redis://:{SECRET}@cache/0#x", "options after '?' or '#' are not supported"),
]


@pytest.mark.parametrize(("url", "message"), BAD_URLS)
def test_bad_urls_are_one_line_without_the_password(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        RedisURL.parse(url)
    assert info.value.message.startswith("--redis: ")
    assert message in info.value.message
    assert "\n" not in info.value.message and SECRET not in info.value.message


def test_password_from_the_url_or_the_file_never_both(tmp_path: Path) -> None:
    file = tmp_path / "redis.pw"
    file.write_text(SECRET + "\n")
    assert redis_url(None, None) is None
    assert redis_url("redis://cache/1", None) == RedisURL("cache", 6379, 1, False)
    from_file = redis_url("rediss://cache/1", str(file))
    assert from_file is not None and from_file.password == SECRET and from_file.tls
    from_url = redis_url(f"redis://:{SECRET}@cache/1", None)
    assert from_url is not None and from_url.password == SECRET
    with pytest.raises(ConfigError, match="in the --redis URL and in --redis-password-file"):
        redis_url(f"redis://:{SECRET}@cache/1", str(file))
    with pytest.raises(ConfigError, match="--redis-password-file needs --redis"):
        redis_url(None, str(file))
    with pytest.raises(ConfigError, match=r"cannot read --redis-password-file .*missing"):
        redis_url("redis://cache/1", str(tmp_path / "missing"))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="its first line is empty"):
        redis_url("redis://cache/1", str(tmp_path / "empty"))


CLI_CASES = [*BAD_URLS[::3], ("both", "give it once"), ("file-only", "needs --redis")]


def redis_args(tmp_path: Path, case: str) -> list[str]:
    file = tmp_path / "redis.pw"
    file.write_text(SECRET + "\n")
    if case == "both":
        return ["--redis", f"redis://:{SECRET}@cache/0", "--redis-password-file", str(file)]
    if case == "file-only":
        return ["--redis-password-file", str(file)]
    return ["--redis", case]


@pytest.mark.parametrize(("case", "message"), CLI_CASES)
def test_both_commands_refuse_alike(tmp_path: Path, case: str, message: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """
    The same mistake gets the same words from both commands: exit status 1
    and one line (twistchat-passwd checks before it asks for a password).
    """
    args = redis_args(tmp_path, case)
    assert passwd_main(["--room", "dev", *args]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("twistchat-passwd: ")
    assert message in err and SECRET not in err

    options = Options()
    options.out, options.err, options.environ = io.StringIO(), io.StringIO(), {}
    with pytest.raises(CannotStart) as info:
        options.parseOptions(["--data-dir", str(tmp_path / "data"), "--password", "pw", *args])
    assert message in info.value.line and SECRET not in info.value.line
    assert err.removeprefix("twistchat-passwd: ").strip() == info.value.message


def test_twistd_bad_url_is_one_line(tmp_path: Path) -> None:
    result = twistd(tmp_path, "--password", "pw", "--redis", "redis://cache/db1")
    assert_one_line(result, "--redis: the database must be a number, not 'db1'")


def test_passwd_db_number_and_password_from_url_or_file(tmp_path: Path) -> None:
    """
    A real redis-server with a password: twistchat-passwd stores the room in
    the database the URL names, with the password from the URL or from the
    file alike; a wrong one is one line without the password.
    """
    guarded = RedisServer(tmp_path / "redis", None, "--requirepass", SECRET)
    try:
        (tmp_path / "room.pw").write_text("dev room password\n")
        (tmp_path / "redis.pw").write_text(SECRET + "\n")
        (tmp_path / "wrong.pw").write_text("not-" + SECRET + "\n")
        base = f"127.0.0.1:{guarded.port}"

        def passwd(room: str, *args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [str(BIN / "twistchat-passwd"), "--room", room, "--scrypt-log-n", "15",
                 "--password-file", str(tmp_path / "room.pw"), *args],
                capture_output=True, text=True, timeout=60, env=env(tmp_path))

        done = passwd("inurl", "--redis", f"redis://:{SECRET}@{base}/3")
        assert done.returncode == 0, done.stderr
        assert SECRET not in done.stderr and f"redis://{base}/3" in done.stderr
        done = passwd("infile", "--redis", f"redis://{base}/3",
                      "--redis-password-file", str(tmp_path / "redis.pw"))
        assert done.returncode == 0, done.stderr
        done = passwd("wrong", "--redis", f"redis://{base}/3",
                      "--redis-password-file", str(tmp_path / "wrong.pw"))
        assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
        assert SECRET not in done.stderr

        rooms = guarded.cli("-a", SECRET, "--no-auth-warning", "-n", "3",
                            "HKEYS", "twistchat:rooms").split()
        assert sorted(rooms) == ["infile", "inurl"]
        assert guarded.cli("-a", SECRET, "--no-auth-warning", "-n", "0",
                           "HKEYS", "twistchat:rooms").split() == []
    finally:
        guarded.stop()
