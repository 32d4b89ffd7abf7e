"""
``twistd socketchat``: command-line options and the service they build.

Option parsing does all the checking and the file work that can fail (reading
the password or verifier, creating the data directory and certificate). A
mistake in the options themselves (a bad value, options that conflict) is a
usage error from twistd; a file or directory that cannot be used is
L{CannotStart}: one line on stderr and exit status 1. Neither is a traceback.
L{makeService} only builds the service; nothing listens until twistd starts it
(a port in use is then L{CannotStart} too).

Where to listen is C{--port} and C{--interface} (TCP), or one or more
C{--listen} Twisted endpoint descriptions (e.g. C{systemd:domain=INET:index=0}
for systemd socket activation). Either way the server adds its own TLS on top:
the login is bound to that TLS channel, so a description that is already TLS
is a usage error.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, MutableMapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, cast

from twisted.application import service
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    AdoptedStreamServerEndpoint,
    TCP4ServerEndpoint,
    serverFromString,
    wrapServerTLS,
)
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.python import usage

from twistchat.config import DEFAULT_ROOM, PASSWORD_ENV, read_password_file
from twistchat.crypto.kdf import random_password
from twistchat.crypto.keyfile import make_private_dirs
from twistchat.crypto.verifier import Verifier, make_verifier
from twistchat.errors import ConfigError
from twistchat.server.history import (
    DEFAULT_LIMIT,
    HISTORY_FILE,
    History,
    HistoryStore,
    PoolReactor,
)
from twistchat.server.limits import Limits
from twistchat.server.room import Rooms
from twistchat.server.service import CannotStart, ChatServerFactory, ChatService
from twistchat.server.tls import TLSEndpoint, fingerprint, load_certificate, server_options

if TYPE_CHECKING:
    from twistchat.redisurl import RedisURL
    from twistchat.server.metrics import Metrics
from twistchat.server.verifiers import (
    ROOMS_DIR,
    check_room,
    decoy_secret,
    load_rooms,
    load_verifier,
    room_path,
    save_verifier,
)

LIMIT_HELP = {
    "max_frame": "Largest frame a member may send (bytes).",
    "handshake_timeout": "Seconds allowed for TLS and the password handshake.",
    "idle_timeout": "Seconds of silence before a member is pinged.",
    "ping_timeout": "Seconds a member has to answer a ping.",
    "message_rate": "Messages per second a member may send, sustained.",
    "message_burst": "Messages a member may send in a burst above the rate.",
    "max_members": "Members per room.",
    "max_send_queue": "Bytes queued to a member that does not read before it is dropped.",
    "max_preauth_per_address": "Connections not yet logged in, per source address.",
    "max_preauth_total": "Connections not yet logged in, in total.",
    "max_guesses_per_address":
        "Password handshakes past the share stage at once, per source address.",
    "free_failures": "Failed logins per address before penalties start.",
    "failure_penalty": "Seconds of the first penalty; each further failure doubles it.",
    "max_failure_penalty": "Longest penalty (seconds).",
}

#: Limits that may be 0 (no failed login is free); every other one must be
#: positive, as 0 would refuse everyone or drop every connection at once.
ZERO_ALLOWED = {"free_failures"}
#: Most messages a join may replay (each join reads them into memory).
MAX_HISTORY = 1000
#: --batch-window: the default and the most allowed, in milliseconds (the
#: trade-off measured in docs/performance.md, "Adaptive batching").
DEFAULT_BATCH_WINDOW = 4.0
MAX_BATCH_WINDOW = 50.0
#: A member frame limit below this leaves too little room for a message.
MIN_MAX_FRAME = 1024
#: Endpoint types that are TLS already: twistd adds its own TLS to a --listen
#: description, and the login is bound to that channel.
TLS_ENDPOINTS = frozenset({"ssl", "tls"})
#: Endpoint types that wrap the description that follows them.
WRAPPING_ENDPOINTS = frozenset({"haproxy"})


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 0..65535")
    return port


def _count(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"expected a whole number of messages, not {value!r}") from None


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run a twistchat relay: members join a room with its password (checked "
        "with SPAKE2+ over TLS, so the server never learns it) and exchange "
        "messages sealed with a key the server never has. With no password "
        "source, a strong room password is generated and printed once."
    )
    optParameters = [
        ["port", "p", 7777, "TCP port to listen on (0 picks a free one).", _port],
        ["interface", "i", "", "Address to listen on (default: all IPv4 addresses)."],
        ["data-dir", "d", "twistchat-data",
         "Directory for the certificate and room verifiers (created if missing)."],
        ["room", None, DEFAULT_ROOM,
         "Room that --password, --password-file or TWISTCHAT_PASSWORD applies to."],
        ["password-file", None, None, "File whose first line is the room password."],
        ["verifier-file", None, None, "Room verifier written by twistchat-passwd."],
        ["password", None, None,
         "Room password (visible to other local users in the process list: "
         "prefer --password-file)."],
        ["tls-cert", None, None,
         "PEM certificate (chain) to serve instead of a self-signed one."],
        ["tls-key", None, None,
         "PEM private key for --tls-cert (default: read it from --tls-cert)."],
        ["history", None, DEFAULT_LIMIT,
         "Sealed messages replayed to a member who joins; 0 turns history off "
         "(nothing is stored).", _count],
        ["history-days", None, 0.0,
         "Delete stored messages older than this many days (0: keep them).", float],
        ["batch-window", None, DEFAULT_BATCH_WINDOW,
         "Milliseconds a busy room may hold a message to send it together with "
         "the next ones, one write per member (0: every message at once). A room "
         "that sent nothing in the last window sends at once. Not with --redis.",
         float],
        ["redis", None, None,
         "Serve the rooms together with every other node on this Redis "
         "(redis://HOST:PORT/DB or rediss:// for TLS; needs twistchat[redis]). "
         "History, rooms and penalties then live in Redis; see docs/operations.md."],
        ["redis-password-file", None, None, "File whose first line is the Redis password."],
        ["redis-max-entries", None, 10000,
         "With --redis: entries kept per room stream, about (the size cap).", _count],
        ["metrics", None, None,
         "Serve Prometheus metrics (/metrics) and a health check (/healthz) on "
         "this Twisted endpoint description, e.g. tcp:9108:interface=127.0.0.1 "
         "(needs twistchat[metrics]; see docs/operations.md)."],
        ["web", None, None,
         "Also serve the browser page and its WebSocket over HTTPS, with the "
         "server's certificate: a port, or a Twisted endpoint description such as "
         "tcp:8443:interface=127.0.0.1 (needs twistchat[web]; see docs/operations.md)."],
        ["workers", None, 0,
         "With --redis: run this many worker processes sharing the port (each a "
         "node of the group), supervised by this one (0: serve in this process).", _count],
        ["worker-fd", None, None,
         "Used by --workers: serve the listening socket inherited on this file "
         "descriptor, as a worker of the parent that passed it.", int],
    ]
    optFlags = [
        ["metrics-room-names", None,
         "With --metrics: also give the members of each room, labelled with "
         "the room's name (room names are otherwise kept out of metrics)."],
    ]

    # One option per server limit, e.g. --max-members; see docs/operations.md.
    optParameters += [
        [name.replace("_", "-"), None, getattr(Limits(), name), help_,
         type(getattr(Limits(), name))]
        for name, help_ in LIMIT_HELP.items()
    ]

    environ: MutableMapping[str, str] = os.environ
    out = sys.stdout
    err = sys.stderr

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["web-origin"] = []
        self.web_origins: list[str] = []
        #: The arguments as given (the workers of --workers get them again).
        self.argv: list[str] = []

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        self.argv = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def opt_listen(self, description: str) -> None:
        self["listen"].append(description)

    # The help text (set here rather than as a docstring, so that it is there
    # under python -OO too).
    opt_listen.__doc__ = (
        "Listen where this Twisted endpoint description says, instead of "
        "--port and --interface: e.g. tcp:7777:interface=127.0.0.1, or "
        "systemd:domain=INET:index=0 for a socket passed by systemd. The server "
        "adds its own TLS, so give the plain transport (tcp:, not ssl:). Repeat "
        "to listen in several places."
    )

    def opt_web_origin(self, origin: str) -> None:
        self["web-origin"].append(origin)

    opt_web_origin.__doc__ = (
        "With --web: also accept WebSocket logins from a page of this origin "
        "(e.g. https://chat.example.org behind a reverse proxy). The origins of "
        "the names in the certificate, on the --web port, are accepted anyway. "
        "Repeat for more."
    )

    def postOptions(self) -> None:
        try:
            self.limits = Limits(**{
                name: self[name.replace("_", "-")] for name in LIMIT_HELP
            })
        except (TypeError, ValueError) as e:
            raise usage.UsageError(str(e)) from None
        for name in LIMIT_HELP:
            option = name.replace("_", "-")
            if name in ZERO_ALLOWED:
                if self[option] < 0:
                    raise usage.UsageError(f"--{option} must not be negative")
            elif self[option] <= 0:
                raise usage.UsageError(f"--{option} must be more than 0")
        if self["max-frame"] < MIN_MAX_FRAME:
            raise usage.UsageError(
                f"--max-frame must be at least {MIN_MAX_FRAME} bytes, "
                "so that a message of some length fits"
            )
        if not 0 <= self["batch-window"] <= MAX_BATCH_WINDOW:
            raise usage.UsageError(
                f"--batch-window must be within 0..{MAX_BATCH_WINDOW:g} milliseconds")
        for name in ("history", "history-days"):
            if self[name] < 0:
                raise usage.UsageError(f"--{name} must not be negative")
        if self["history"] > MAX_HISTORY:
            # Each join reads that many rows (up to 16 KiB each) into memory.
            raise usage.UsageError(f"--history must be at most {MAX_HISTORY}")
        if self["tls-key"] and not self["tls-cert"]:
            raise usage.UsageError("--tls-key needs --tls-cert")
        given = [o for o in ("password", "password-file", "verifier-file")
                 if self[o] is not None]
        if len(given) > 1:
            raise usage.UsageError(
                "give only one of " + ", ".join("--" + o for o in given)
            )
        try:
            check_room(self["room"])
        except ConfigError as e:
            raise usage.UsageError(e.message) from None
        if self["password"] == "":
            raise usage.UsageError("the --password given is empty")
        if self["listen"] and (self["port"] != self.defaults["port"]
                               or self["interface"] != self.defaults["interface"]):
            raise usage.UsageError(
                "give either --listen or --port/--interface, not both "
                "(e.g. --listen tcp:7777:interface=127.0.0.1)"
            )
        self._check_workers()
        self.endpoints = self._endpoints()
        self.metrics_endpoint = self._metrics_endpoint()
        self.web_endpoint = self._web_endpoint()
        self.redis = self._redis()
        # From here on the options are fine; what fails is a file or folder.
        self.data_dir = Path(self["data-dir"])
        try:
            if self.data_dir.exists() and not self.data_dir.is_dir():
                raise ConfigError(f"the data directory {self.data_dir} is not a directory")
            make_private_dirs(self.data_dir)
            self.verifiers = self._verifiers()
            self.decoy_secret = decoy_secret(self.data_dir)
        except ConfigError as e:
            raise CannotStart(e.message) from None
        except OSError as e:
            raise CannotStart(
                f"cannot use the data directory {self.data_dir}: {_os_reason(e)}"
            ) from None
        cert = Path(self["tls-cert"]) if self["tls-cert"] else None
        key = Path(self["tls-key"]) if self["tls-key"] else None
        try:
            self.certificate = load_certificate(self.data_dir, cert, key)
        except ConfigError as e:
            if cert is None:
                source = f"in {self.data_dir}"
            else:
                source = f"--tls-cert {cert}" + (f", --tls-key {key}" if key else "")
            raise CannotStart(f"{e.message} ({source})") from None
        except OSError as e:
            # Creating the self-signed certificate in the data directory.
            raise CannotStart(
                f"cannot use the data directory {self.data_dir}: {_os_reason(e)}"
            ) from None

    def _check_workers(self) -> None:
        """
        @raise usage.UsageError: for C{--workers} without C{--redis}, or with
            C{--listen}.
        """
        if self["workers"] < 0:
            raise usage.UsageError("--workers must not be negative")
        if not self["workers"]:
            return
        if self["redis"] is None:
            raise usage.UsageError(
                "--workers needs --redis: the workers serve the rooms together through Redis")
        if self["listen"]:
            raise usage.UsageError("--workers shares one --port/--interface, not --listen")
        if self["worker-fd"] is not None:
            raise usage.UsageError("give --workers or --worker-fd, not both")

    def _endpoints(self) -> list[tuple[str, IStreamServerEndpoint]]:
        """
        Parse the --listen descriptions (without TLS: L{makeService} adds it).

        @raise usage.UsageError: for a description that is not one, or that
            is TLS already.
        @raise CannotStart: for a systemd description naming a socket that
            systemd did not pass to this process.
        """
        from twisted.internet import reactor

        if self["worker-fd"] is not None:
            try:
                inherited = socket.socket(fileno=os.dup(self["worker-fd"]))
            except OSError as e:
                raise CannotStart(
                    f"--worker-fd {self['worker-fd']}: no listening socket there ({e})"
                ) from None
            family = inherited.family
            inherited.close()
            # The worker's own TLS is added on top (by makeService), as for --listen.
            return [("the socket of the parent", AdoptedStreamServerEndpoint(
                reactor, self["worker-fd"], family))]
        endpoints: list[tuple[str, IStreamServerEndpoint]] = []
        for description in self["listen"]:
            _refuse_tls(description)
            try:
                endpoints.append((description, serverFromString(reactor, description)))
            except LookupError:
                # The systemd parser looks the index or name up in the
                # sockets this process inherited (LISTEN_FDS, LISTEN_FDNAMES,
                # LISTEN_PID).
                raise CannotStart(
                    f"cannot listen on {description}: no such socket was passed "
                    "to this process (is it started by its systemd socket unit?)"
                ) from None
            except (ValueError, TypeError, AttributeError) as e:
                raise usage.UsageError(
                    f"--listen {description}: not an endpoint description "
                    f"twistd can use ({e})"
                ) from None
        return endpoints

    def _metrics_endpoint(self) -> IStreamServerEndpoint | None:
        """
        Parse --metrics, or None without it.

        @raise usage.UsageError: for a description that is not one, or that
            names the chat port.
        @raise CannotStart: without prometheus_client installed.
        """
        description = self["metrics"]
        if description is None:
            if self["metrics-room-names"]:
                raise usage.UsageError("--metrics-room-names needs --metrics")
            return None
        port = _tcp_port(description)
        if description in self["listen"] or (port and port in self._chat_ports()):
            raise usage.UsageError(
                f"--metrics {description}: that is the chat port; give metrics a "
                "port of their own (e.g. tcp:9108:interface=127.0.0.1)"
            )
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            raise CannotStart(
                "--metrics needs prometheus_client: pip install 'twistchat[metrics]'"
            ) from None
        from twistchat.server.metrics import MULTIPROC_ENV

        if self["worker-fd"] is not None and not self.environ.get(MULTIPROC_ENV):
            # Its counters would stay in this process, which serves none.
            raise usage.UsageError(
                f"--worker-fd with --metrics needs {MULTIPROC_ENV}, which the "
                "parent of --workers sets for its workers"
            )
        return _server_endpoint(description, f"--metrics {description}",
                                "an endpoint description")

    def _chat_ports(self) -> list[int | None]:
        """
        The TCP ports of the chat listeners (None for one that is not TCP or
        names no port), which --metrics and --web must not take.
        """
        if self["listen"]:
            return [_tcp_port(d) for d in self["listen"]]
        return [self["port"]]

    def _web_endpoint(self) -> IStreamServerEndpoint | None:
        """
        Parse --web (a port, or an endpoint description without TLS) and
        --web-origin; None without --web.

        @raise usage.UsageError: for a description that is not one, that is
            TLS already, or that names the chat or metrics port.
        @raise CannotStart: without autobahn installed.
        """
        description = self["web"]
        if description is None:
            if self["web-origin"]:
                raise usage.UsageError("--web-origin needs --web")
            return None
        if self["workers"]:
            raise usage.UsageError("--web is served by one process: not with --workers")
        if description.strip().isdigit():
            interface = self["interface"].replace(":", "\\:")
            description = f"tcp:{int(description)}" + (
                f":interface={interface}" if interface else "")
        try:
            _refuse_tls(description)
        except usage.UsageError:
            raise usage.UsageError(
                f"--web {self['web']}: the page is served with the server's own TLS "
                "(its certificate, TLS 1.3 only), so describe the plain transport: tcp:..."
            ) from None
        port = _tcp_port(description)
        taken = self._chat_ports() + ([_tcp_port(self["metrics"])] if self["metrics"] else [])
        if port and port in taken:
            raise usage.UsageError(
                f"--web {self['web']}: that port is taken by the chat or metrics port; "
                "give the page a port of its own (e.g. --web 8443)"
            )
        try:
            from twistchat.server.web import normalise_origin
        except ImportError:
            raise CannotStart(
                "--web needs autobahn: pip install 'twistchat[web]'"
            ) from None
        try:
            self.web_origins = [normalise_origin(o) for o in self["web-origin"]]
        except ValueError as e:
            raise usage.UsageError(f"--web-origin: {e}") from None
        return _server_endpoint(description, f"--web {self['web']}",
                                "a port or an endpoint description")

    def _redis(self) -> RedisURL | None:
        """
        The --redis URL with its password, or None (L{twistchat.redisurl}).

        @raise usage.UsageError: for a bad --redis-max-entries.
        @raise CannotStart: for a URL that is not one, a password given twice
            or in a file that cannot be read, or without txredisapi installed.
        """
        from twistchat.redisurl import redis_url

        try:
            url = redis_url(self["redis"], self["redis-password-file"])
        except ConfigError as e:
            raise CannotStart(e.message) from None
        if url is None:
            return None
        if self["redis-max-entries"] < 1:
            raise usage.UsageError("--redis-max-entries must be more than 0")
        try:
            import txredisapi  # noqa: F401
        except ImportError:
            raise CannotStart("--redis needs txredisapi: pip install 'twistchat[redis]'") from None
        return url

    def _password(self) -> str | None:
        if self["password"] is not None:
            self.err.write(
                "twistd socketchat: warning: a password given with --password is "
                "visible to other local users; prefer --password-file\n"
            )
            return str(self["password"])
        if self["password-file"] is not None:
            line = read_password_file(self["password-file"])
            if not line:
                raise ConfigError("the first line of --password-file is empty")
            return line
        # Not needed again, nor by anything the server starts (nor visible in
        # /proc/PID/environ for longer than start-up).
        return self.environ.pop(PASSWORD_ENV, None) or None

    def _verifiers(self) -> list[Verifier]:
        if self["verifier-file"] is not None:
            return [load_verifier(Path(self["verifier-file"]))]
        room = self["room"]
        path = room_path(self.data_dir, room)
        password = self._password()
        if password is not None:
            return [*self._other_rooms(room), self._keep_or_replace(path, room, password)]
        stored = load_rooms(self.data_dir)
        if stored:
            return stored
        password = random_password()
        save_verifier(path, make_verifier(password, room))
        self.out.write(
            f"\ntwistchat: no room password was given, so this one was generated "
            f"for room {room!r}:\n\n    {password}\n\n"
            "Share it with the members of the room. It is shown only this once: "
            f"the server keeps only a verifier ({path}).\n"
            "To choose your own, use --password-file or twistchat-passwd.\n\n"
        )
        self.out.flush()
        return [load_verifier(path)]

    def _other_rooms(self, room: str) -> list[Verifier]:
        return [v for v in load_rooms(self.data_dir) if v.room != room]

    @staticmethod
    def _keep_or_replace(path: Path, room: str, password: str) -> Verifier:
        """
        Reuse the stored verifier (same salt, so the same content key) when it
        matches the password; otherwise store a new one.
        """
        if path.exists():
            stored = load_verifier(path)
            if make_verifier(password, room, stored.params, stored.salt) == stored:
                return stored
        verifier = make_verifier(password, room)
        save_verifier(path, verifier)
        return verifier


def _refuse_tls(description: str) -> None:
    """
    @raise usage.UsageError: if C{description} is TLS already (also inside a
        wrapper such as C{haproxy:}).
    """
    kind, _, rest = description.partition(":")
    kind = kind.strip().lower()
    if kind in WRAPPING_ENDPOINTS:
        _refuse_tls(rest)
    elif kind in TLS_ENDPOINTS:
        raise usage.UsageError(
            f"--listen {description}: twistd adds its own TLS (its certificate, "
            "TLS 1.3 only; the login is bound to that TLS channel), so describe "
            f"the plain transport: tcp:..., not {kind}:..."
        )


def _server_endpoint(description: str, given: str, kind: str) -> IStreamServerEndpoint:
    """
    Parse C{description} with L{serverFromString} on the global reactor.

    @param given: the option as given, to begin the error with (e.g.
        C{--metrics tcp:x}).
    @param kind: what the option takes, for the error (e.g. C{an endpoint
        description}).
    @raise usage.UsageError: for a description that is not one.
    """
    from twisted.internet import reactor

    try:
        return serverFromString(reactor, description)
    except (ValueError, TypeError, AttributeError, LookupError) as e:
        raise usage.UsageError(f"{given}: not {kind} twistd can use ({e})") from None


def _tcp_port(description: str) -> int | None:
    """
    The port a C{tcp:}/C{tcp6:} description names (its first argument or
    C{port=}), or None for another kind or no port.
    """
    kind, _, rest = description.partition(":")
    if kind.strip().lower() not in ("tcp", "tcp6"):
        return None
    for i, arg in enumerate(rest.split(":")):
        key, eq, value = arg.partition("=")
        text = value if eq and key.strip() == "port" else arg if i == 0 and not eq else None
        if text is not None:
            try:
                return int(text)
            except ValueError:
                return None
    return None


def _os_reason(error: OSError) -> str:
    """
    An OS error as the reason and the file it is about.
    """
    reason = error.strerror or str(error)
    return f"{reason} ({error.filename})" if error.filename else reason


def makeService(options: Options) -> service.IService:
    """
    Build (not start) the relay service described by parsed C{options}.
    """
    from twisted.internet import reactor

    history: History | None = None
    if options["workers"]:
        return _workers(options)
    if options.redis is not None:
        return _redis_service(options)
    metrics = _metrics(options)
    store: HistoryStore | None = None
    if options["history"] > 0:
        # Twisted types its global reactor without IReactorThreads, which
        # every real reactor provides.
        path, pool_reactor = options.data_dir / HISTORY_FILE, cast(PoolReactor, reactor)
        if metrics is None:
            store = HistoryStore(path, pool_reactor)
        else:
            from twistchat.server.metrics import MeasuredStore

            store = MeasuredStore(path, pool_reactor, metrics, reactor)
        history = History(
            store,
            reactor,
            limit=options["history"],
            keep_days=options["history-days"],
            max_bytes=options.limits.max_send_queue // 2,
        )
    factory = _factory(metrics)(
        Rooms(options.verifiers, reactor, options["batch-window"] / 1000),
        reactor, options.limits, history=history,
        decoy_secret=options.decoy_secret,
    )
    chat = _chat_service(options, factory)
    if metrics is None and options.web_endpoint is None:
        return chat
    top = service.MultiService()
    chat.setServiceParent(top)
    _web_service(options, factory, top)
    if metrics is None:
        return top
    probe = getattr(store, "probe", None)
    _metrics_service(options, factory, metrics, chat, probe).setServiceParent(top)
    return top


def _metrics(options: Options) -> Metrics | None:
    """
    The counters of a server run with --metrics, or None.
    """
    if options.metrics_endpoint is None:
        return None
    from twistchat.server.metrics import Metrics

    return Metrics()


def _factory(
    metrics: Metrics | None, base: type[ChatServerFactory] = ChatServerFactory
) -> Callable[..., ChatServerFactory]:
    """
    The factory class C{base}, or, when there are C{metrics}, a subclass of it
    that also counts into them.
    """
    if metrics is None:
        return base
    from twistchat.server.metrics import MeasuredFactory

    if base is ChatServerFactory:
        return partial(MeasuredFactory, metrics=metrics)
    measured = type(f"Measured{base.__name__}", (MeasuredFactory, base), {})
    return partial(measured, metrics=metrics)


def _metrics_service(options: Options, factory: ChatServerFactory, metrics: Metrics,
                     chat: ChatService,
                     probe: Callable[[], Deferred[None]] | None) -> service.IService:
    from twisted.internet import reactor

    from twistchat.server.metrics import MetricsService, StateCollector

    assert options.metrics_endpoint is not None
    endpoint = MetricsService(
        options.metrics_endpoint, options["metrics"], metrics,
        StateCollector(factory, room_names=bool(options["metrics-room-names"])),
        reactor, listening=lambda: bool(chat.ports), probe=probe,
    )
    endpoint.err = options.err
    return endpoint


def _web_service(options: Options, factory: ChatServerFactory,
                 parent: service.MultiService) -> None:
    """
    With --web: serve the page and the WebSocket into C{factory}'s rooms,
    under C{parent}, after the chat port.
    """
    if options.web_endpoint is None:
        return
    from twisted.internet import reactor

    from twistchat.server import web

    certificate = options.certificate.original.to_cryptography()
    factory.channel_binding = web.channel_binding(factory.channel_binding)
    sockets = web.ChatSocketFactory(factory, web.certificate_sha256(certificate))
    # A self-signed certificate is accepted by a browser only after a click,
    # which HSTS would rule out for a year: only a CA-issued one gets it.
    hsts = options["tls-cert"] is not None and web.is_ca_issued(certificate)
    # An HTTP connection holds a slot for connections not logged in (see
    # web.CountedChannel): it may be silent as long as a login may take.
    site = web.site(sockets, hsts, timeout=options.limits.handshake_timeout)
    endpoint = wrapServerTLS(server_options(options.certificate), options.web_endpoint,
                             reactor)
    page = web.WebService(endpoint, options["web"], sockets, site,
                          web.certificate_names(certificate), options.web_origins)
    page.err = options.err
    page.setServiceParent(parent)


def _chat_service(options: Options, factory: ChatServerFactory,
                  watch_rooms: bool = True) -> ChatService:
    from twisted.internet import reactor

    certificate: ssl.PrivateCertificate = options.certificate
    tls = server_options(certificate)
    # With rooms batched (embedded mode, a window over 0), the relay writes
    # each member once per window itself: Twisted's TLS need not gather writes.
    whole = options.redis is None and options["batch-window"] > 0
    endpoint: IStreamServerEndpoint | list[tuple[str, IStreamServerEndpoint]]
    if options.endpoints:
        endpoint = [
            (description, TLSEndpoint(tls, plain, whole))
            for description, plain in options.endpoints
        ]
    else:
        endpoint = TLSEndpoint(
            tls, TCP4ServerEndpoint(reactor, options["port"], interface=options["interface"]),
            whole)
    rooms = ", ".join(sorted(v.room for v in options.verifiers))
    return ChatService(
        endpoint,
        factory,
        description=f", rooms: {rooms}; TLS certificate SHA-256 {fingerprint(certificate)}",
        # A --verifier-file room is served alone: rooms/ is not watched then.
        rooms_dir=None if options["verifier-file"] is not None or not watch_rooms
        else options.data_dir / ROOMS_DIR,
        err=options.err,
    )


def _redis_service(options: Options) -> service.IService:
    """
    A node of a Redis-backed group: the rooms, history and penalties shared
    through Redis (L{twistchat.server.redisnode}); it listens once it has
    reached Redis.
    """
    from twisted.internet import reactor

    from twistchat.server.redisnode import (
        RedisHistory,
        RedisLink,
        RedisNodeService,
        RedisRooms,
        SharedAddressBook,
        SharedGuessFactory,
    )

    assert options.redis is not None
    link = RedisLink(options.redis, reactor)
    rooms = RedisRooms()
    history = RedisHistory(
        link, rooms, reactor, limit=options["history"], keep_days=options["history-days"],
        max_entries=options["redis-max-entries"], max_bytes=options.limits.max_send_queue // 2,
    )
    metrics = _metrics(options)
    factory = _factory(metrics, SharedGuessFactory)(
        rooms, reactor, options.limits, history=history,
        decoy_secret=options.decoy_secret, link=link, node=history.node)
    factory.addresses = SharedAddressBook(options.limits, link, reactor)
    node = RedisNodeService(link, factory, history, options.verifiers, options.decoy_secret,
                            err=options.err)
    # Rooms come from Redis (twistchat-passwd --redis), not the rooms folder.
    chat = _chat_service(options, factory, watch_rooms=False)
    chat.setServiceParent(node)
    _web_service(options, factory, node)
    if metrics is not None:
        link.observe = metrics.redis_seconds.observe
        if options["worker-fd"] is None:
            # Health: listening, and Redis takes a real write.
            _metrics_service(options, factory, metrics, chat, link.probe).setServiceParent(node)
        else:
            # A worker: its parent serves every worker's metrics and health.
            from twistchat.server.metrics import (
                SampledGauges,
                StateCollector,
                WorkerMetricsService,
            )

            gauges = SampledGauges(
                StateCollector(factory, room_names=bool(options["metrics-room-names"])),
                metrics.registry, listening=lambda: bool(chat.ports))
            WorkerMetricsService(metrics, gauges, reactor).setServiceParent(node)
    if options["worker-fd"] is None:
        return node
    from twistchat.server.workers import ParentWatchService

    worker = service.MultiService()
    ParentWatchService(reactor).setServiceParent(worker)
    node.setServiceParent(worker)
    return worker


def _workers(options: Options) -> service.IService:
    """
    The parent of C{--workers N} (L{twistchat.server.workers}).
    """
    from twisted.internet import reactor

    from twistchat.server.redisnode import check_at_start
    from twistchat.server.workers import WorkerPool, worker_arguments

    url = options.redis
    assert url is not None
    pool = WorkerPool(
        reactor, options["workers"], options["interface"], options["port"],
        worker_arguments(options.argv), dict(os.environ), err=options.err,
        check=lambda: check_at_start(url, options.err),
        shared_metrics=options.metrics_endpoint is not None,
    )
    if options.metrics_endpoint is None:
        return pool
    from twistchat.server.metrics import WorkersMetricsService
    from twistchat.server.redisnode import RedisLink

    # One endpoint for every worker; it listens before the workers start.
    top = service.MultiService()
    endpoint = WorkersMetricsService(
        options.metrics_endpoint, options["metrics"], reactor, options["workers"],
        lambda: pool.metrics_dir, RedisLink(url, reactor), lambda: pool.restarts,
    )
    endpoint.err = options.err
    endpoint.setServiceParent(top)
    pool.setServiceParent(top)
    return top
