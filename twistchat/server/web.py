"""
The web port (C{twistd socketchat --web}): the browser page's files over HTTPS
and the chat protocol over a WebSocket at C{/ws}, into the same rooms.

A WebSocket connection is one more transport for the ordinary
L{twistchat.server.protocol.ChatServerProtocol}: L{FrameTransport} turns each
binary WebSocket message into one length-prefixed frame for it, and each frame
it writes into one binary message, so the life cycle table, the limits (frame
size before and after login, handshake deadline, rate, penalties, guess slots,
slow readers through the TLS transport's producer, idle timeouts) and the
rooms are exactly those of the chat port; before its upgrade, an HTTP
connection holds one of its address's pre-login slots (L{CountedChannel}),
as a chat port connection does. What differs:

  - the first frame on a WebSocket is C{web-hello} (a fresh nonce and the
    SHA-256 of the server certificate), and the SPAKE2+ context binds
    L{twistchat.crypto.webbinding.web_binding} of the page's origin, that
    nonce and that hash instead of the TLS exporter, which page scripts
    cannot read (docs/security.md);
  - the handshake must name the subprotocol C{twistchat.3} and an C{Origin}
    the server serves the page from (or one given with C{--web-origin});
    anything else is refused with 403 and one log line;
  - WebSocket pings are answered at most at the message rate (a faster
    one is refused with the chat protocol's error frame: a pong piles up
    for a peer that does not read);
  - a text message, or a message longer than the frame limit of the
    connection's stage, is refused with the chat protocol's own error frame
    (before any of an oversize message is kept).

Every HTTP response carries a strict Content-Security-Policy and the other
headers of L{SECURITY_HEADERS}; HSTS is added only for a CA-issued
certificate (a self-signed one is accepted by a browser only after a click,
which HSTS would forbid). The page's files are sent gzipped to a client that
accepts it (L{PageEncoding}): they are static and hold no secret, so there is
nothing for a compression oracle such as BREACH to find.

Autobahn is an optional dependency (C{twistchat[web]}): only this module and
its callers import it.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from collections.abc import Callable, Iterable
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IPushProducer,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.web import http, pages, resource, server, static
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from twistchat import wire
from twistchat.crypto.webbinding import NONCE_BYTES, web_binding
from twistchat.errors import BadMessage
from twistchat.framing import Int32Framer
from twistchat.ratelimit import TokenBucket
from twistchat.server.limits import source
from twistchat.server.protocol import ChatServerProtocol, format_address
from twistchat.server.service import ChatServerFactory
from twistchat.server.siteservice import SiteService

#: The WebSocket subprotocol: the chat protocol of this protocol version.
SUBPROTOCOL = f"twistchat.{wire.PROTOCOL_VERSION}"
#: Where the WebSocket is served.
WEBSOCKET_PATH = b"ws"
#: Most WebSocket frames one message may come in. A browser sends a frame as
#: one WebSocket frame; each fragment costs the server a list entry even when
#: empty, and empty ones would otherwise never reach the frame limit.
MAX_FRAGMENTS = 64
#: The page's files, shipped inside the package.
STATIC = FilePath(__file__).parent().sibling("web").child("static")

#: Headers on every HTTP response.
SECURITY_HEADERS = {
    b"Content-Security-Policy": (
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"no-referrer",
    b"X-Frame-Options": b"DENY",
    b"Cross-Origin-Opener-Policy": b"same-origin",
    b"Cross-Origin-Resource-Policy": b"same-origin",
}
#: Added with a CA-issued certificate only (one year; no includeSubDomains:
#: the server speaks for its own name, not for its siblings).
HSTS = b"max-age=31536000"

#: Content types of the page's files (with nosniff, a browser runs a module
#: script only if it is served as JavaScript).
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".webmanifest": "application/manifest+json",
}

_PREFIX = struct.Struct("!I")

log = Logger()


# --- the certificate: origins, hash, CA or not ----------------------------------------


def certificate_sha256(certificate: x509.Certificate) -> bytes:
    """
    SHA-256 of the certificate's DER encoding (what C{web-hello} states).
    """
    return hashlib.sha256(certificate.public_bytes(Encoding.DER)).digest()


def certificate_names(certificate: x509.Certificate) -> list[str]:
    """
    The host names and addresses the certificate is for (its subject
    alternative names; wildcard names are left out: give those origins with
    C{--web-origin}).
    """
    try:
        names = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    hosts = [name for name in names.get_values_for_type(x509.DNSName) if "*" not in name]
    hosts += [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
    return hosts


def is_ca_issued(certificate: x509.Certificate) -> bool:
    """
    Whether the certificate was issued by someone else than itself (a
    self-signed certificate names itself as its issuer).
    """
    return certificate.issuer != certificate.subject


def origins_for(hosts: Iterable[str], port: int) -> set[str]:
    """
    The origins a browser sends for a page from C{https://HOST:PORT/}, one per
    host (IPv6 addresses bracketed; port 443 left out, as browsers do).
    """
    origins = set()
    for host in hosts:
        host = host.lower()
        netloc = f"[{host}]" if ":" in host else host
        origins.add(f"https://{netloc}" if port == 443 else f"https://{netloc}:{port}")
    return origins


def normalise_origin(origin: str) -> str:
    """
    An origin as browsers serialise it: lower case, no trailing slash.

    @raise ValueError: for something that is not an C{http(s)://host[:port]}
        origin.
    """
    value = origin.strip().rstrip("/").lower()
    scheme, sep, rest = value.partition("://")
    if scheme not in ("https", "http") or not sep or not rest or "/" in rest:
        raise ValueError(f"not an origin (like https://chat.example.org): {origin!r}")
    return value


# --- a WebSocket as the chat protocol's transport -------------------------------------


class FrameTransport:
    """
    The transport a L{ChatServerProtocol} (or, in tests, a client protocol)
    writes to when its peer is a WebSocket: every length-prefixed frame
    written becomes one binary WebSocket message (without the prefix).

    @ivar binding: the channel binding of this connection (see
        L{channel_binding}).
    """

    def __init__(self, socket: Any, binding: bytes) -> None:
        #: The WebSocket protocol (autobahn's, or a client's in tests).
        self._socket: Any = socket
        self._framer = Int32Framer()
        self.binding = binding
        self.disconnecting = False

    def write(self, data: bytes) -> None:
        framer = self._framer
        framer.feed(data)
        while (frame := framer.next_frame(wire.MAX_FRAME_FROM_SERVER)) is not None:
            if self._socket.state == WebSocketServerProtocol.STATE_OPEN:
                self._socket.sendMessage(frame, isBinary=True)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self.disconnecting = True
        if self._socket.state == WebSocketServerProtocol.STATE_OPEN:
            self._socket.sendClose(1000)
        else:
            self._socket.dropConnection(abort=False)

    def abortConnection(self) -> None:
        self.disconnecting = True
        self._socket.dropConnection(abort=True)

    def getPeer(self) -> IAddress:
        peer: IAddress = self._socket.transport.getPeer()
        return peer

    def getHost(self) -> IAddress:
        host: IAddress = self._socket.transport.getHost()
        return host

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        # The TLS transport under the WebSocket: when the browser stops
        # reading, its buffer fills and the chat protocol is paused, exactly
        # as on the chat port.
        self._socket.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        transport = self._socket.transport
        if transport is not None:
            transport.unregisterProducer()


def channel_binding(otherwise: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """
    The factory's channel binding with WebSockets: a L{FrameTransport}'s own
    binding, C{otherwise(transport)} for a TLS connection of the chat port.
    """
    def binding(transport: Any) -> bytes:
        if isinstance(transport, FrameTransport):
            return transport.binding
        return otherwise(transport)

    return binding


class ChatWebSocket(WebSocketServerProtocol):
    """
    One browser connection: the WebSocket handshake (origin and subprotocol),
    C{web-hello}, then a L{ChatServerProtocol} on a L{FrameTransport}.
    """

    # Autobahn's own logger stays (self.log, txaio's, at info); ours is _log.
    _log = Logger()
    factory: ChatSocketFactory

    def __init__(self) -> None:
        super().__init__()
        self.chat: ChatServerProtocol | None = None
        self._origin = ""
        #: A message is being refused: what is left of it is not kept.
        self._refusing = False
        #: Pings allowed (each queues a pong), made at the first ping.
        self._pings: TokenBucket | None = None
        #: WebSocket frames of the message being received.
        self._fragments = 0

    def onConnect(self, request: ConnectionRequest) -> str:
        """
        Accept only the server's own origins and the chat subprotocol.

        @raise ConnectionDeny: 403 for another origin, 400 without the
            subprotocol.
        """
        assert self.transport is not None
        peer, _ = format_address(self.transport.getPeer())
        origin = request.headers.get("origin", "")
        if origin.lower() not in self.factory.origins:
            self._log.info("({peer}) WebSocket refused: origin {origin!r} is not one this "
                          "server serves the page from", event="twistchat.web_origin_refused",
                          peer=peer, origin=origin)
            raise ConnectionDeny(403, "origin not allowed")
        if SUBPROTOCOL not in request.protocols:
            self._log.info("({peer}) WebSocket refused: no subprotocol {subprotocol}",
                          peer=peer, subprotocol=SUBPROTOCOL)
            raise ConnectionDeny(400, f"subprotocol {SUBPROTOCOL} required")
        self._origin = origin.lower()
        return SUBPROTOCOL

    def onOpen(self) -> None:
        nonce = secrets.token_bytes(NONCE_BYTES)
        cert = self.factory.cert_sha256
        self.sendMessage(wire.encode("web-hello", nonce=nonce, cert=cert), isBinary=True)
        assert self.transport is not None
        chat = self.factory.services.buildProtocol(self.transport.getPeer())
        assert isinstance(chat, ChatServerProtocol)
        self.chat = chat
        chat.makeConnection(FrameTransport(self, web_binding(self._origin, nonce, cert)))

    def onMessageBegin(self, isBinary: bool) -> None:
        if self._refusing or self.chat is None:
            return
        if not isBinary:
            self._refusing = True
            self.chat.fail(BadMessage(
                "a text WebSocket message: send each frame as one binary message"))
            return
        self._fragments = 0
        super().onMessageBegin(isBinary)

    def onMessageFrameBegin(self, length: int) -> None:
        if self._refusing or self.chat is None:
            return
        self._fragments += 1
        if self._fragments > MAX_FRAGMENTS:
            self._refusing = True
            self.chat.fail(BadMessage(
                f"a WebSocket message in more than {MAX_FRAGMENTS} fragments"))
            return
        total = self.message_data_total_length + length
        if total > self.chat.MAX_LENGTH:
            # What the chat port does for a frame prefix over the limit: the
            # protocol's own error and close, and none of the frame is kept.
            self._refusing = True
            self.chat.dataReceived(_PREFIX.pack(total))
            return
        super().onMessageFrameBegin(length)

    def onMessageFrameData(self, payload: bytes) -> None:
        if not self._refusing:
            super().onMessageFrameData(payload)

    def onMessageFrameEnd(self) -> None:
        if not self._refusing:
            super().onMessageFrameEnd()

    def onMessageEnd(self) -> None:
        if not self._refusing:
            super().onMessageEnd()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.chat is not None:
            self.chat.dataReceived(_PREFIX.pack(len(payload)) + payload)

    def onPing(self, payload: bytes) -> None:
        # Each ping queues a pong, which a peer that does not read would let
        # pile up without bound: pings are held to the message rate.
        if self._refusing or self.chat is None:
            return
        services = self.factory.services
        limits, now = services.limits, services.clock.seconds()
        if self._pings is None:
            self._pings = TokenBucket(limits.message_rate, limits.message_burst, now)
        if self._pings.take(now):
            super().onPing(payload)
            return
        self._refusing = True
        self.chat.fail(BadMessage(
            f"WebSocket pings faster than {limits.message_rate:g} per second"))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        chat, self.chat = self.chat, None
        if chat is not None:
            chat.connectionLost(Failure(ConnectionDone()))


class ChatSocketFactory(WebSocketServerFactory):
    """
    Builds L{ChatWebSocket}s into the chat server's factory C{services}.

    @ivar origins: the origins allowed (set once the port listens).
    """

    protocol = ChatWebSocket  # type: ignore[assignment]  # a protocol class is a callable

    def __init__(self, services: ChatServerFactory, cert_sha256: bytes) -> None:
        super().__init__(server=None)
        self.services = services
        self.cert_sha256 = cert_sha256
        self.origins: set[str] = set()
        limits = services.limits
        self.setProtocolOptions(
            # A backstop only: ChatWebSocket refuses a message over the
            # connection's own limit before this one is reached.
            maxMessagePayloadSize=limits.max_frame + 1,
            maxFramePayloadSize=limits.max_frame + 1,
            openHandshakeTimeout=limits.handshake_timeout,
            closeHandshakeTimeout=limits.close_grace,
            autoPingInterval=0,
            # No status page and no ?redirect= on a request without Upgrade.
            webStatus=False,
        )


# --- the page -------------------------------------------------------------------------


class PageEncoding(server.GzipEncoderFactory):
    """
    gzip for a whole GET of one of the page's files, when the client accepts
    it. A HEAD request or a range is answered as it is (a range counts bytes
    of the file, not of the gzip stream).
    """

    def encoderForRequest(self, request: IRequest) -> Any:
        if request.method != b"GET" or request.getHeader(b"range") is not None:
            return None
        request.responseHeaders.addRawHeader(b"Vary", b"Accept-Encoding")
        return super().encoderForRequest(request)


class PageFiles(static.File):
    """
    The page's static files: no directory listings, fixed content types,
    gzipped when the client accepts it.
    """

    def __init__(self, path: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(path, *args, **kwargs)
        self.contentTypes = dict(CONTENT_TYPES)
        self.indexNames = ["index.html"]

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        child = super().getChild(path, request)
        if isinstance(child, static.File) and not child.isdir():
            return resource.EncodingResourceWrapper(child, [PageEncoding()])
        return child

    def directoryListing(self) -> IResource:
        return pages.notFound("No such file", "There is no such file.")


class HeadersRequest(server.Request):
    """
    A request whose response, whatever it is (a file, an error page), carries
    L{SECURITY_HEADERS}.
    """

    def process(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.setHeader(name, value)
        if getattr(getattr(self.channel, "site", None), "hsts", False):
            self.setHeader(b"Strict-Transport-Security", HSTS)
        super().process()


class CountedChannel(http.HTTPChannel):
    """
    An HTTP connection to the web port. Until it becomes a WebSocket (whose
    chat protocol then counts itself) or closes, it takes one of its
    address's slots for connections not logged in, as a connection to the
    chat port does: slow or idle HTTP connections cannot pile up past
    C{max_preauth_per_address} and C{max_preauth_total}.
    """

    site: server.Site

    def __init__(self) -> None:
        super().__init__()
        #: The address key holding a slot, or None.
        self._slot: str | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        assert self.transport is not None
        peer = self.transport.getPeer()
        host = source(getattr(peer, "host", str(peer)))
        services: ChatServerFactory = self.site.services  # type: ignore[attr-defined]
        if services.take_preauth(host) is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        self._slot = host

    def handed_over(self) -> None:
        """
        The connection is now a WebSocket's: give back its slot.
        """
        host, self._slot = self._slot, None
        if host is not None:
            self.site.services.release_preauth(host)  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.handed_over()
        super().connectionLost(reason)


class _SocketResource(WebSocketResource):
    """
    Autobahn's resource, first releasing the TLS transport from twisted.web's
    HTTP channel: its idle timeout and its place as the transport's producer
    (the chat protocol registers itself there once logged in).
    """

    def render(self, request: IRequest) -> Any:
        upgrade = request.getHeader(b"upgrade") or b""
        if request.method != b"GET" or upgrade.strip().lower() != b"websocket":
            # Not a WebSocket handshake: refused here, with the security
            # headers (Autobahn would answer with its status page, or a
            # redirect to any URL given in the query).
            request.setResponseCode(400)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"This is the chat's WebSocket: open the page at / instead.\n"
        channel = request.channel  # type: ignore[attr-defined]
        channel.setTimeout(None)
        channel.handed_over()
        if channel.transport is not None:
            channel.transport.unregisterProducer()
        return super().render(request)


def site(sockets: ChatSocketFactory, hsts: bool, timeout: float,
         folder: FilePath[str] = STATIC) -> server.Site:
    """
    The web port's site: the files of C{folder} and the WebSocket at C{/ws}.
    """
    root = PageFiles(folder.path)
    root.putChild(WEBSOCKET_PATH, _SocketResource(sockets))
    web = server.Site(root, timeout=timeout)
    web.protocol = CountedChannel  # type: ignore[method-assign, assignment]
    web.services = sockets.services  # type: ignore[attr-defined]
    web.requestFactory = HeadersRequest
    web.hsts = hsts  # type: ignore[attr-defined]
    web.noisy = False
    web.displayTracebacks = False
    return web


class WebService(SiteService):
    """
    Serve the page and the WebSocket on C{endpoint} (which adds the server's
    TLS) while running.

    @param hosts: the names the certificate is for: C{https://HOST:PORT} of
        each, with the port listened on, is an allowed origin.
    @param extra_origins: more allowed origins (C{--web-origin}).
    """

    log = Logger()
    serving = "the web page"

    def __init__(self, endpoint: IStreamServerEndpoint, description: str,
                 sockets: ChatSocketFactory, web: server.Site, hosts: Iterable[str],
                 extra_origins: Iterable[str] = ()) -> None:
        super().__init__(endpoint, description, web)
        self.sockets = sockets
        self.hosts = list(hosts)
        self.extra_origins = set(extra_origins)

    def _listening(self, port: IListeningPort) -> None:
        super()._listening(port)
        address = port.getHost()
        number = getattr(address, "port", 0)
        self.sockets.origins = origins_for(self.hosts, number) | self.extra_origins
        self.log.info("serving the web page and WebSocket on port {port} ({host}); "
                      "origins: {origins}", event="twistchat.web_listening", port=number,
                      host=getattr(address, "host", None),
                      origins=" ".join(sorted(self.sockets.origins)))


__all__ = [
    "CONTENT_TYPES", "ChatSocketFactory", "ChatWebSocket", "CountedChannel", "FrameTransport",
    "HSTS", "HeadersRequest", "MAX_FRAGMENTS", "PageEncoding", "PageFiles", "SECURITY_HEADERS",
    "STATIC", "SUBPROTOCOL",
    "WEBSOCKET_PATH", "WebService", "certificate_names", "certificate_sha256",
    "channel_binding", "is_ca_issued", "normalise_origin", "origins_for", "site",
]
