"""
How the client decides to trust a server's TLS certificate.

Two policies:

  - L{TrustOnFirstUse} (the default): remember the certificate's SHA-256
    fingerprint in a known-hosts file the first time, and refuse loudly when it
    changes. Right for the self-signed certificate a twistchat server makes.
  - L{CertificateAuthority} (C{--ca FILE} or C{--ca system}): verify the chain
    and the host name with service_identity. Right when the operator has a
    certificate from a CA, e.g. Let's Encrypt.

Either way the password handshake is bound to the TLS channel, so a man in the
middle cannot learn or test the password; certificate checks add protection of
who you are talking to before the password is even used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

from twistchat.crypto.keyfile import locked
from twistchat.errors import ConfigError, FingerprintChanged, TrustError


def default_known_hosts() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(
        os.path.expanduser("~"), ".config"
    )
    return Path(base) / "twistchat" / "known_hosts"


def peer_fingerprint(transport: Any) -> str:
    cert = ssl.Certificate.peerFromTransport(transport)
    digest: bytes = cert.digest("sha256")
    return digest.decode("ascii")


class TrustOnFirstUse:
    """
    Pin each server's certificate fingerprint on first use.

    The known-hosts file has one line per server: C{host:port SHA256-fingerprint}.
    Clients sharing it add their lines one at a time, under its lock.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_known_hosts()
        self.host = ""
        self.first_use = False
        self.fingerprint = ""

    def connection_creator(self, host: str, port: int) -> IOpenSSLClientConnectionCreator:
        self.host = f"{host}:{port}"
        return tofu_options()

    def _load(self) -> dict[str, str]:
        try:
            lines = self.path.read_text("utf-8").splitlines()
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read known-hosts file {self.path}: {e}") from None
        known = {}
        for line in lines:
            parts = line.split()
            if len(parts) == 2 and not line.startswith("#"):
                known[parts[0]] = parts[1]
        return known

    def check(self, transport: Any) -> None:
        """
        Called once TLS is up, before anything is sent.

        @raise FingerprintChanged: if the host is known with another fingerprint.
        """
        self.fingerprint = peer_fingerprint(transport)
        known = self._load().get(self.host)
        if known == self.fingerprint:
            # Pinned already (perhaps by this session's first login, before a
            # reconnect): nothing more to write.
            self.first_use = False
            return
        if known is not None:
            raise self._changed(known)
        self.first_use = True

    def _changed(self, known: str) -> FingerprintChanged:
        return FingerprintChanged(
            f"the certificate of {self.host} has CHANGED since you last connected.\n"
            f"  known:   {known}\n"
            f"  offered: {self.fingerprint}\n"
            "Someone may be intercepting the connection, or the server's operator "
            "replaced its certificate. Ask the operator for the new fingerprint; if "
            f"it matches, delete the line for {self.host} from {self.path} and "
            "connect again."
        )

    def remember(self) -> None:
        """
        Pin the fingerprint of a first use, once the login has succeeded: a man in
        the middle on the first connection cannot log in, so it is never pinned.

        Another client of the profile may have pinned the host since L{check}:
        the file is read again under its lock (L{locked}) and the first pin
        wins.

        @raise FingerprintChanged: another client pinned another fingerprint
            for the host meanwhile.
        @raise ConfigError: the file cannot be locked, read or written.
        """
        if not self.first_use:
            return
        with locked(self.path):
            known = self._load().get(self.host)
            if known == self.fingerprint:
                return
            if known is not None:
                raise self._changed(known)
            try:
                with self.path.open("a", encoding="utf-8") as f:
                    f.write(f"{self.host} {self.fingerprint}\n")
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as e:
                raise ConfigError(f"cannot write known-hosts file {self.path}: {e}") from None


def tofu_options() -> ssl.CertificateOptions:
    """
    Client TLS options without chain verification, for a caller that checks
    the certificate itself (L{TrustOnFirstUse.check} pins its fingerprint).
    TLS 1.3 only, as on the server (see L{twistchat.server.tls.server_options}).
    """
    return ssl.CertificateOptions(verify=False, raiseMinimumTo=ssl.TLSVersion.TLSv1_3)


class CertificateAuthority:
    """
    Verify the server's certificate chain and host name (service_identity).

    @param ca_file: PEM file of the CA to trust, or None for the system store.
    """

    first_use = False

    def __init__(self, ca_file: Path | None = None) -> None:
        self.ca_file = ca_file
        self.fingerprint = ""

    @property
    def source(self) -> str:
        """
        The trusted CAs, in words.
        """
        return "the system's CAs" if self.ca_file is None else f"the CA in {self.ca_file}"

    def connection_creator(self, host: str, port: int) -> IOpenSSLClientConnectionCreator:
        if self.ca_file is None:
            trust_root = ssl.platformTrust()
        else:
            try:
                trust_root = ssl.Certificate.loadPEM(self.ca_file.read_bytes())
            except OSError as e:
                raise ConfigError(f"cannot read CA file {self.ca_file}: {e}") from None
            except Exception:
                raise ConfigError(f"CA file {self.ca_file} is not a PEM certificate") from None
        return ssl.optionsForClientTLS(
            host, trustRoot=trust_root, extraCertificateOptions={
                "raiseMinimumTo": ssl.TLSVersion.TLSv1_3
            }
        )

    def check(self, transport: Any) -> None:
        self.fingerprint = peer_fingerprint(transport)

    def remember(self) -> None:
        """Nothing to pin: the CA vouches for the server."""


__all__ = [
    "CertificateAuthority",
    "TrustError",
    "TrustOnFirstUse",
    "default_known_hosts",
    "peer_fingerprint",
    "tofu_options",
]
