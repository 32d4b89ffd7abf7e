"""
TLS for the server: the certificate (given, or self-signed and kept in the data
directory), the context options (TLS 1.3 only), and the endpoint that adds
them to a listening one (L{TLSEndpoint}).
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import defer, ssl
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer

from twistchat.crypto.keyfile import write_private_file
from twistchat.errors import ConfigError

# The channel binding lives in twistchat.tlsbinding (the client uses it too); it
# stays importable from here.
from twistchat.tlsbinding import tls_exporter  # noqa: F401

log = Logger()

CERT_FILE = "server.pem"
KEY_FILE = "server.key"
#: Self-signed certificates are valid this long (clients pin them, so they are
#: replaced only by the operator: see docs/operations.md).
VALID_DAYS = 3650


def create_self_signed(cert_path: Path, key_path: Path) -> None:
    """
    Write a new ECDSA P-256 key and a self-signed certificate for it.

    P-256 rather than RSA: its TLS handshakes cost the server far less CPU.
    The key file is created readable by its owner only.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    hostname = socket.gethostname()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "twistchat")])
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    if hostname and hostname != "localhost":
        names.insert(0, x509.DNSName(hostname))
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_private_file(key_path, key_pem, replace=True)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def load_certificate(
    data_dir: Path, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.PrivateCertificate:
    """
    Load the server certificate: the given files, or the data directory's
    self-signed one, created on first use.

    @raise ConfigError: if the files cannot be read or do not match.
    """
    if cert_file is None:
        cert_file = data_dir / CERT_FILE
        key_file = data_dir / KEY_FILE
        if not cert_file.exists():
            create_self_signed(cert_file, key_file)
            log.info("created a self-signed certificate in {path}", path=str(cert_file))
    elif key_file is None:
        key_file = cert_file
    try:
        cert_pem = cert_file.read_bytes()
        key_pem = key_file.read_bytes()
        cert: ssl.PrivateCertificate = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
        return cert
    except OSError as e:
        raise ConfigError(f"cannot read the TLS certificate or key: {e}") from None
    except Exception as e:
        raise ConfigError(f"unusable TLS certificate or key: {e}") from None


def fingerprint(cert: ssl.Certificate) -> str:
    """
    The certificate's SHA-256 fingerprint, as clients show and pin it.
    """
    digest: bytes = cert.digest("sha256")
    return digest.decode("ascii")


def server_options(cert: ssl.PrivateCertificate) -> ssl.CertificateOptions:
    """
    TLS 1.3 only, no client certificates.

    Not 1.2: with an RSA certificate and no extended master secret, a man in
    the middle can make both legs of a relayed TLS 1.2 connection share one
    exporter value (the first step of the triple-handshake attack, RFC 7627
    section 1), which would let a SPAKE2+ login relay through him. There is
    no option to allow it again.
    """
    return ssl.CertificateOptions(
        privateKey=cert.privateKey.original.to_cryptography_key(),
        certificate=cert.original.to_cryptography(),
        raiseMinimumTo=ssl.TLSVersion.TLSv1_3,
    )


def release_buffers(transport: object) -> bool:
    """
    Give back the memory the TLS connection under C{transport} keeps in its
    two memory BIOs, when both are empty.

    A memory BIO keeps the capacity of the largest flight it ever carried:
    the handshake's, the C{welcome}'s member list, a history replay (up to
    about 16 KiB each way). An idle member does not need it, so a member
    that has joined, or that has been quiet long enough to be pinged, gets
    two new, empty BIOs (pyOpenSSL's own, made as pyOpenSSL makes them; the
    old ones are freed by C{SSL_set_bio}). A BIO is empty between Twisted's
    calls: it drains the send BIO after every write and the receive BIO
    after every read.

    @return: whether the BIOs were replaced (not for a transport without
        pyOpenSSL memory BIOs, or with bytes still in one).
    """
    handle = getattr(transport, "getHandle", None)
    connection = handle() if handle is not None else None
    if not isinstance(connection, SSL.Connection):
        return False
    lib, ffi = SSL._lib, SSL._ffi  # type: ignore[attr-defined]
    into, out = getattr(connection, "_into_ssl", None), getattr(connection, "_from_ssl", None)
    if into is None or out is None:
        return False  # a socket connection, or a pyOpenSSL that keeps them elsewhere
    if lib.BIO_get_mem_data(into, ffi.NULL) or lib.BIO_get_mem_data(out, ffi.NULL):
        return False
    new_into = lib.BIO_new(lib.BIO_s_mem())
    new_out = lib.BIO_new(lib.BIO_s_mem())
    if new_into == ffi.NULL or new_out == ffi.NULL:
        for bio in (new_into, new_out):
            if bio != ffi.NULL:
                lib.BIO_free(bio)
        return False
    # Both differ from the current pair: SSL_set_bio takes one reference of
    # each new BIO and frees the old ones.
    lib.SSL_set_bio(connection._ssl, new_into, new_out)
    connection._into_ssl, connection._from_ssl = new_into, new_out
    return True


class _WholeWritesFactory(TLSMemoryBIOFactory):
    """
    TLS whose every write is encrypted and handed to TCP at once.

    Twisted's default TLS transport gathers the small writes of one reactor
    turn and encrypts them together on the next, which costs a delayed call
    per connection per turn. The relay's writes do not need it when it
    batches its rooms (L{twistchat.server.room.Batcher}): each member is
    written once per window already, its acknowledgements with it, and a
    join's history in one write.
    """

    protocol = TLSMemoryBIOProtocol


@implementer(IStreamServerEndpoint)
class TLSEndpoint:
    """
    C{plain} with the server's TLS (C{options}) added to the connections it
    accepts.

    @ivar whole_writes: write each frame through TLS at once, without
        Twisted's gathering of one reactor turn's writes (for a server that
        batches its rooms' deliveries itself: see L{_WholeWritesFactory}).
    """

    def __init__(self, options: ssl.CertificateOptions, plain: IStreamServerEndpoint,
                 whole_writes: bool = False) -> None:
        self.options = options
        self.plain = plain
        self.whole_writes = whole_writes

    def listen(self, factory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        tls = _WholeWritesFactory if self.whole_writes else TLSMemoryBIOFactory
        listening: defer.Deferred[IListeningPort] = self.plain.listen(
            tls(self.options, False, factory))
        return listening
