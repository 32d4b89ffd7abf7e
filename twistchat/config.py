"""
Settings shared by the server, the client and twistchat-passwd.
"""

from __future__ import annotations

from twistchat.errors import ConfigError

#: Environment variable holding a room password.
PASSWORD_ENV = "TWISTCHAT_PASSWORD"
#: The room used when none is named.
DEFAULT_ROOM = "main"


def read_password_file(path: str, option: str = "--password-file") -> str:
    """
    The first line of C{path}, without its line ending (possibly empty).

    @param option: the option that named the file, for the error message.

    @raise ConfigError: if the file cannot be read as UTF-8 text.
    """
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\r\n")
    except OSError as e:
        reason = e.strerror or str(e)
    except UnicodeDecodeError:
        reason = "it is not UTF-8 text"
    raise ConfigError(f"cannot read {option} {path}: {reason}")
