"""
A browser stand-in for the tests: logs in to C{twistd socketchat --web} over a
real WebSocket (Autobahn's client, real TLS pinned to the server's certificate),
with the browser's channel binding, and chats through the ordinary client
protocol. Run as a process::

    python tests/webclient.py PORT CERT NAME [--origin O] [--oversize N | --text]
        [--stop-reading]

The password comes from C{TWISTCHAT_PASSWORD}. Lines read on standard input
are sent as messages. It prints, one per line: C{web-hello cert ok},
C{logged in}, C{[ NAME: ] TEXT}, C{* NAME entered} / C{left}, C{error CODE:
TEXT} for an error frame, C{Unable to connect: REASON}, C{handshake refused:
STATUS}, and C{closed} at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import struct
import sys
from typing import Any

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    connectWS,
)
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twistchat import wire
from twistchat.client.connector import thread_deriver
from twistchat.client.keyring import Keyring
from twistchat.client.protocol import ChatClientProtocol
from twistchat.crypto.webbinding import web_binding
from twistchat.server.web import SUBPROTOCOL, FrameTransport
from twisted.internet import defer, ssl, stdio, task
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Handler:
    def __init__(self, done: defer.Deferred[None]) -> None:
        self.done = done
        self.protocol: ChatClientProtocol | None = None

    def logged_in(self, protocol: ChatClientProtocol, welcome: wire.Message) -> None:
        self.protocol = protocol
        say("logged in")

    def login_failed(self, error: Failure) -> None:
        say(f"Unable to connect: {getattr(error.value, 'message', error.value)}")

    def message(self, sender: str, opened: Any, message: wire.Message) -> None:
        say(f"[ {sender}: ] {opened.text}")

    def rejected(self, sender: str, error: Any, message: wire.Message) -> None:
        say(f"rejected from {sender}: {error.message}")

    def event(self, message: wire.Message) -> None:
        if message.type == "joined":
            say(f"* {message['name']} entered")
        elif message.type == "left":
            say(f"* {message['name']} left")

    def closed(self, reason: Any) -> None:
        if reason is not None:
            say(f"error {reason.code}: {reason.message}")


class Browser(WebSocketClientProtocol):  # type: ignore[misc]
    args: argparse.Namespace
    handler: Handler
    cert_sha256: bytes
    chat: ChatClientProtocol | None = None
    opened = False

    def onOpen(self) -> None:
        self.opened = True

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.chat is not None:
            self.chat.dataReceived(struct.pack("!I", len(payload)) + payload)
            return
        message = wire.decode(payload, wire.FROM_SERVER)
        if message.type != "web-hello":
            say(f"error {message.get('code')}: {message.get('text')}")
            return
        say("web-hello cert " + ("ok" if message["cert"] == self.cert_sha256 else "differs"))
        args = self.args
        if args.text:
            self.sendMessage(b'{"type": "who"}', isBinary=False)
        if args.oversize:
            self.sendMessage(b"x" * args.oversize, isBinary=True)
        if args.fragments:
            # One message in that many one-byte frames, never finished.
            self.beginMessage(isBinary=True)
            for _ in range(args.fragments):
                self.beginMessageFrame(1)
                self.sendMessageFrameData(b"x")
        if args.text or args.oversize or args.fragments:
            # From here on, print the frames the server sends.
            self.onMessage = self._print_frame  # type: ignore[method-assign]
            return
        binding = web_binding(args.origin, message["nonce"], message["cert"])
        password = os.environ["TWISTCHAT_PASSWORD"]
        from twisted.internet import reactor

        self.chat = ChatClientProtocol(
            self.handler, args.name, args.room,
            Keyring(password, args.room, thread_deriver(reactor)),
            lambda transport: binding, clock=reactor)
        self.chat.makeConnection(FrameTransport(self, binding))
        self.chat.handshakeCompleted()

    def _print_frame(self, payload: bytes, isBinary: bool) -> None:
        message = wire.decode(payload, wire.FROM_SERVER)
        say(f"error {message['code']}: {message['text']}" if message.type == "error"
            else f"frame {message.type}")

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        chat, self.chat = self.chat, None
        if chat is not None:
            from twisted.internet.error import ConnectionDone

            chat.connectionLost(Failure(ConnectionDone()))
        if not self.opened:
            say(f"handshake refused: {reason}")
        say("closed")
        if not self.handler.done.called:
            self.handler.done.callback(None)


class Typed(LineReceiver):
    delimiter = b"\n"

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    def lineReceived(self, line: bytes) -> None:
        if self.handler.protocol is not None:
            self.handler.protocol.send_text(line.decode("utf-8"))


async def main(reactor: Any, argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("cert")
    parser.add_argument("name")
    parser.add_argument("--room", default="main")
    parser.add_argument("--origin")
    parser.add_argument("--oversize", type=int, default=0)
    parser.add_argument("--text", action="store_true")
    parser.add_argument("--fragments", type=int, default=0)
    parser.add_argument("--stop-reading", action="store_true")
    args = parser.parse_args(argv)
    args.origin = args.origin or f"https://127.0.0.1:{args.port}"
    pem = open(args.cert, "rb").read()
    certificate = x509.load_pem_x509_certificate(pem)
    done: defer.Deferred[None] = defer.Deferred()
    handler = Handler(done)
    Browser.args = args
    Browser.handler = handler
    Browser.cert_sha256 = hashlib.sha256(certificate.public_bytes(Encoding.DER)).digest()
    url = f"wss://127.0.0.1:{args.port}/ws"
    factory = WebSocketClientFactory(url, origin=args.origin, protocols=[SUBPROTOCOL])
    factory.protocol = Browser
    # Trust the test server's own certificate only.
    trust = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(pem)])
    options = ssl.optionsForClientTLS("127.0.0.1", trustRoot=trust)
    connector = connectWS(factory, options)
    stdio.StandardIO(Typed(handler))
    if args.stop_reading:
        def stop() -> None:
            if handler.protocol is None:
                reactor.callLater(0.05, stop)
                return
            connector.transport.pauseProducing()
            say("stopped reading")
        reactor.callLater(0.05, stop)
    await done


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1:])))
