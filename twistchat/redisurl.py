"""
Where Redis is, and its password: the one reading of C{--redis URL} and
C{--redis-password-file FILE}, shared by C{twistd socketchat} and
C{twistchat-passwd} (and the import of a data directory) so that they accept
and refuse the same things with the same words. No Twisted, no I/O beyond
reading the password file.

  - C{redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]}, or C{rediss://...} for
    TLS; PORT defaults to 6379 and DB to 0; user and password may be
    percent-encoded.
  - The password comes from the URL or from the file's first line, never
    both (which one would win is a guess an operator should not have to make).
  - Anything else (another scheme, no host, a port or database that is not a
    number, a query or fragment, an empty password file) is one line naming
    the problem, never the password.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from twistchat.config import read_password_file
from twistchat.errors import ConfigError

#: Redis's own port.
DEFAULT_PORT = 6379

_FORM = "give redis://HOST:PORT/DB or rediss://HOST:PORT/DB"


@dataclass(frozen=True)
class RedisURL:
    """
    Where Redis is: C{redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]}, or
    C{rediss://...} for TLS.
    """

    host: str
    port: int
    db: int
    tls: bool
    password: str | None = field(default=None, repr=False)
    username: str | None = None

    @classmethod
    def parse(cls, url: str) -> RedisURL:
        """
        @raise ConfigError: if C{url} is not a Redis URL (the message names the
            problem and never the password).
        """
        try:
            parts = urlsplit(url)
            port = parts.port or DEFAULT_PORT
        except ValueError:
            # urlsplit's own words would quote the port; say it plainly.
            raise ConfigError(
                f"--redis: the port must be a number from 1 to 65535 ({_FORM})") from None
        if parts.scheme not in ("redis", "rediss"):
            raise ConfigError(f"--redis: not a Redis URL ({_FORM})")
        if not parts.hostname:
            raise ConfigError(f"--redis: no host ({_FORM})")
        if parts.query or parts.fragment or url.rstrip().endswith(("?", "#")):
            raise ConfigError(f"--redis: options after '?' or '#' are not supported ({_FORM})")
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ConfigError(f"--redis: the database must be a number, not {path!r}")
        return cls(
            host=parts.hostname,
            port=port,
            db=int(path or 0),
            tls=parts.scheme == "rediss",
            password=unquote(parts.password) if parts.password is not None else None,
            username=unquote(parts.username) if parts.username else None,
        )

    def with_password(self, password: str | None) -> RedisURL:
        if password is None:
            return self
        return RedisURL(self.host, self.port, self.db, self.tls, password, self.username)

    def __str__(self) -> str:
        # Never the password: this is what logs show.
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{self.host}:{self.port}/{self.db}"


def redis_url(url: str | None, password_file: str | None) -> RedisURL | None:
    """
    The C{--redis} and C{--redis-password-file} options read together.

    @param url: the C{--redis} value, or None when not given.
    @param password_file: the C{--redis-password-file} value, or None.
    @return: where Redis is, with its password if any; None without C{--redis}.
    @raise ConfigError: for a password file without C{--redis}, a URL that is
        not one, a password both in the URL and in a file, or a password file
        that cannot be read or is empty.
    """
    if url is None:
        if password_file is not None:
            raise ConfigError("--redis-password-file needs --redis")
        return None
    parsed = RedisURL.parse(url)
    if password_file is None:
        return parsed
    if parsed.password is not None:
        raise ConfigError(
            "the Redis password is in the --redis URL and in --redis-password-file: "
            "give it once (the file keeps it out of the process list)")
    password = read_password_file(password_file, "--redis-password-file")
    if not password:
        raise ConfigError(f"--redis-password-file {password_file}: its first line is empty")
    return parsed.with_password(password)
