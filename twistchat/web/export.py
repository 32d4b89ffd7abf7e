"""
C{twistchat-web export DIR}: write the browser page's files, as installed, into
a directory of the person's own, with a C{SHA256SUMS} file and one overall
digest (the SHA-256 of that file) to compare with the one published for the
release.

The copy is the page the server serves, with one change: its C{index.html}
carries its own Content-Security-Policy (a static file server sends none) and
a mark that makes the page ask for the chat server's address (a Server field),
since the copy is not served by it. The person serves the copy from their own
machine (e.g. C{python3 -m http.server --bind 127.0.0.1 8000 --directory
DIR}) and the chat server accepts that origin with C{--web-origin}
(docs/browser.md).
"""

from __future__ import annotations

import hashlib
import sys
from importlib import resources
from pathlib import Path

from twisted.python import usage

from twistchat import __version__

#: The page's files, as shipped in C{twistchat/web/static/} (every one of them).
FILES = (
    "LICENSES.txt", "app.js", "favicon.svg", "index.html", "local-copy.html", "style.css",
    "twistchat.js",
)
#: The sums file, in the format of C{sha256sum} (C{sha256sum -c SHA256SUMS}).
SUMS = "SHA256SUMS"

#: The local copy's own policy, as a meta element (no header carries one). It
#: is the server's, but for C{connect-src}: the chat server is chosen in the
#: page, so any C{wss:} address is allowed (a static policy cannot name it);
#: nothing else, not even the copy's own origin, may be fetched by script.
#: C{frame-ancestors} cannot be given in a meta element (browsers ignore it
#: there), so a local copy can be framed; nothing on it is of use to a framer
#: but what the person types, which the frame cannot read.
LOCAL_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src wss:; base-uri 'none'; form-action 'none'"
)
#: What is put into the copy's index.html, right after its charset.
LOCAL_HEAD = (
    f'<meta http-equiv="Content-Security-Policy" content="{LOCAL_POLICY}">\n'
    '<meta name="twistchat-copy" content="local">\n'
)
_CHARSET = '<meta charset="utf-8">\n'


class ExportError(Exception):
    """
    The copy cannot be written; the message says why, for the command's user.
    """


def page_file(name: str) -> bytes:
    """
    The installed page file C{name}, as the local copy has it.

    @raise ExportError: if the installed file is missing or not as expected.
    """
    try:
        data = (resources.files("twistchat.web") / "static" / name).read_bytes()
    except OSError as e:
        raise ExportError(f"the installed page file {name} cannot be read: {e}") from None
    if name != "index.html":
        return data
    text = data.decode("utf-8")
    if text.count(_CHARSET) != 1 or "twistchat-copy" in text:
        raise ExportError("the installed index.html is not the one this command knows")
    return text.replace(_CHARSET, _CHARSET + LOCAL_HEAD).encode("utf-8")


def sums(files: dict[str, bytes]) -> bytes:
    """
    The C{SHA256SUMS} file of C{files} (name to content), sorted by name.
    """
    return "".join(f"{hashlib.sha256(files[name]).hexdigest()}  {name}\n"
                   for name in sorted(files)).encode("ascii")


def export(folder: Path) -> str:
    """
    Write the page's files and C{SHA256SUMS} into C{folder} (created if
    missing; it must be empty).

    @return: the overall digest: the hex SHA-256 of C{SHA256SUMS}.
    @raise ExportError: if C{folder} is not an empty directory, or cannot be
        written.
    """
    files = {name: page_file(name) for name in FILES}
    listing = sums(files)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if any(folder.iterdir()):
            raise ExportError(f"{folder} is not empty: give a new or empty directory")
        for name, data in [*files.items(), (SUMS, listing)]:
            (folder / name).write_bytes(data)
    except OSError as e:
        raise ExportError(f"cannot write the copy into {folder}: {e.strerror or e}") from None
    return hashlib.sha256(listing).hexdigest()


class Options(usage.Options):
    synopsis = "Usage: twistchat-web export DIR"
    longdesc = (
        "Write the browser page's files, as installed with this release of twistchat, "
        "into DIR (new or empty), with SHA256SUMS, and print the SHA-256 of SHA256SUMS: "
        "compare it with the digest published for the release, serve DIR from your own "
        "machine and start the server with --web-origin for that address "
        "(docs/browser.md)."
    )

    def opt_version(self) -> None:
        """
        Display twistchat's version and exit.
        """
        print(f"twistchat-web (twistchat) {__version__}")
        raise SystemExit(0)

    def parseArgs(self, command: str, folder: str) -> None:  # type: ignore[override]
        if command != "export":
            raise usage.UsageError(f"unknown command {command!r}: the command is export")
        self.folder = Path(folder)


def main(argv: list[str]) -> int:
    options = Options()
    try:
        options.parseOptions(argv)
        digest = export(options.folder)
    except usage.UsageError as e:
        sys.stderr.write(f"twistchat-web: {e}\n{options.synopsis}\n")
        return 2
    except ExportError as e:
        sys.stderr.write(f"twistchat-web: {e}\n")
        return 1
    folder = options.folder
    sys.stdout.write(
        f"Wrote the page of twistchat {__version__} into {folder}, with {SUMS}.\n"
        f"SHA-256 of {SUMS}: {digest}\n"
        "Compare it with the digest published for this release; check the files with\n"
        f"  (cd {folder} && sha256sum -c {SUMS})\n"
        "Serve the copy from this machine, e.g.\n"
        f"  python3 -m http.server --bind 127.0.0.1 8000 --directory {folder}\n"
        "start the chat server with --web-origin http://127.0.0.1:8000 and open\n"
        "http://127.0.0.1:8000/ (the page asks for the server's address).\n"
    )
    return 0


def run() -> None:
    sys.exit(main(sys.argv[1:]))
