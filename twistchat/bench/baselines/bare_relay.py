"""
BASELINE (a): a bare Twisted C{Int32StringReceiver} relay over TLS.

Every frame a client sends goes, unchanged, to every other client: no
handshake, no sealing, no limits. This is the framework floor twistchat is
compared with; it is deliberately the plain, obvious code.

    python -m twistchat.bench.baselines.bare_relay CERT_DIR [PORT]
"""

from __future__ import annotations

import sys
from pathlib import Path

from twisted.internet import protocol
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import ITCPTransport
from twisted.protocols.basic import Int32StringReceiver

from twistchat.server.tls import load_certificate, server_options


class Relay(Int32StringReceiver):
    MAX_LENGTH = 1 << 20

    def connectionMade(self) -> None:
        # As twistchat does: no Nagle delay on small frames (the one change
        # made to this baseline, so that latency figures stay comparable).
        ITCPTransport(self.transport).setTcpNoDelay(True)
        self.factory.clients.add(self)

    def connectionLost(self, reason: object = None) -> None:
        self.factory.clients.discard(self)

    def stringReceived(self, frame: bytes) -> None:
        for client in self.factory.clients:
            if client is not self:
                client.sendString(frame)


class RelayFactory(protocol.ServerFactory):
    protocol = Relay
    noisy = False

    def __init__(self) -> None:
        self.clients: set[Relay] = set()


def main() -> None:
    from twisted.internet import reactor

    certificate = load_certificate(Path(sys.argv[1]))
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    endpoint = SSL4ServerEndpoint(reactor, port, server_options(certificate), interface="127.0.0.1")

    def listening(port: object) -> None:
        print(f"listening on port {port.getHost().port}", flush=True)  # type: ignore[attr-defined]

    endpoint.listen(RelayFactory()).addCallback(listening)
    reactor.run()


if __name__ == "__main__":
    main()
