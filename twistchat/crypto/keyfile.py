"""
Owner-only files for secrets: identity keys, room verifiers, the server's TLS
key and decoy secret.

L{write_private_file} never writes through a symbolic link, never leaves a
temporary file behind, and sets the mode explicitly (0600 for files, 0700 for
the directories it creates) rather than leaving it to the umask, so a leftover
file with looser permissions cannot survive a rewrite. L{read_private_file}
refuses links, non-regular files, files of another user and files that group
or others may read.

L{locked} serialises the read-modify-write of a file that several processes
of one profile update (the pinned identities, known_hosts): an exclusive
C{flock} on a lock file beside it (C{.NAME.lock}, owner-only, kept), since
the file itself is replaced whole and a lock on it would be on the old copy.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from twistchat.errors import ConfigError

__all__ = ["check_header", "locked", "make_private_dirs", "read_private_file",
           "write_private_file"]


def make_private_dirs(directory: Path) -> None:
    """
    Create C{directory} and any missing parents with mode 0700 (set explicitly, not
    left to the umask). Directories that exist already are left as they are.

    @raise OSError: one cannot be created, or C{directory} is not a directory.
    """
    missing: list[Path] = []
    d = directory
    while not os.path.lexists(d):
        missing.append(d)
        if d.parent == d:
            break
        d = d.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue
        os.chmod(d, 0o700)
    if not directory.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(directory))


def write_private_file(path: Path, data: bytes, *, replace: bool = False) -> None:
    """
    Write C{data} to C{path} atomically, readable and writable by the owner only.

    The parent directories are created with mode 0700 if missing. The data goes to a
    new, randomly named temporary file in the same directory, created with
    C{O_WRONLY|O_CREAT|O_EXCL|O_NOFOLLOW} and given mode 0600 with C{fchmod}, then
    synced and moved into place: renamed over C{path} (C{os.replace}) when
    C{replace} is true, otherwise hard-linked to C{path}, which fails if C{path}
    exists (on a file system without hard links: renamed, after checking that
    C{path} does not exist). The temporary file never survives.

    @raise FileExistsError: C{path} exists and C{replace} is false.
    @raise ConfigError: the directory or file cannot be created or written.
    """
    path = Path(path)
    try:
        make_private_dirs(path.parent)
    except OSError as e:
        raise ConfigError(f"cannot create directory {path.parent}: {e.strerror}") from None
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmp, flags, 0o600)
    except OSError as e:
        raise ConfigError(f"cannot create {tmp}: {e.strerror}") from None
    try:
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
    except FileExistsError:
        raise
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror}") from None
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """
    Hold an exclusive lock for updating C{path} while the C{with} block runs:
    C{fcntl.flock} on C{.NAME.lock} in C{path}'s directory (created owner-only,
    never through a symbolic link, and left in place). It waits for another
    process that holds it; a holder keeps it only for a read and a write, and
    the system releases it when the holder exits.

    @raise ConfigError: the lock file cannot be created or locked.
    """
    path = Path(path)
    lock = path.parent / f".{path.name}.lock"
    try:
        make_private_dirs(path.parent)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                     0o600)
    except OSError as e:
        raise ConfigError(f"cannot create lock file {lock}: {e.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            raise ConfigError(f"cannot lock {lock}: {e.strerror}") from None
        yield
    finally:
        os.close(fd)


def _link_new(tmp: Path, path: Path) -> None:
    """
    Make C{tmp}'s file appear at C{path}, which must not exist.

    @raise FileExistsError: C{path} exists.
    """
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV):
            raise
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "File exists", str(path)) from None
        os.replace(tmp, path)


def read_private_file(path: Path, max_bytes: int, what: str = "file") -> bytes:
    """
    Read an owner-only file, refusing links, non-regular files, other owners, group or
    other permissions, and more than C{max_bytes} bytes. C{what} names the
    file in errors (e.g. "key file").

    @raise FileNotFoundError: there is no file (nor link) at C{path}.
    @raise ConfigError: anything else is wrong.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as e:
        if e.errno == errno.ELOOP or os.path.islink(path):
            raise ConfigError(
                f"{path} is a symbolic link; refusing to use it as a {what}"
            ) from None
        raise ConfigError(f"cannot open {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path} is not a regular file")
        geteuid = getattr(os, "geteuid", None)
        if geteuid is not None and st.st_uid != geteuid():
            raise ConfigError(f"{path} belongs to another user; refusing to use it as a {what}")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"{path} is accessible to other users (mode {mode:04o});"
                f" make it private with: chmod 600 {path}"
            )
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = os.read(fd, max_bytes + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise ConfigError(f"{path} is larger than {max_bytes} bytes; not a {what}")
        return b"".join(chunks)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    finally:
        os.close(fd)


def check_header(
    d: object, what: str, members: set[str] | frozenset[str], file_format: str, version: int
) -> dict[str, object]:
    """
    Check the envelope every twistchat JSON key or verifier file shares: a JSON
    object with exactly C{members}, whose C{format} is C{file_format} and whose
    C{version} is the integer C{version}.

    @param what: names the file in errors (e.g. "verifier").
    @return: C{d}, known to be a dict.
    @raise ConfigError: otherwise, saying what is wrong.
    """
    if not isinstance(d, dict):
        raise ConfigError(f"the {what} must be a JSON object")
    keys = set(d)
    if keys != members:
        missing = sorted(str(k) for k in members - keys)
        extra = sorted(str(k) for k in keys - members)
        raise ConfigError(f"{what} members wrong (missing: {missing}, unknown: {extra})")
    if d["format"] != file_format:
        raise ConfigError(f"not a {file_format} file")
    if type(d["version"]) is not int or d["version"] != version:
        raise ConfigError(f"unsupported {what} version {d['version']!r}")
    return d
