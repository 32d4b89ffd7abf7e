"""
``--ca``: a throwaway certificate authority, a server certificate it signs for
localhost and 127.0.0.1, and the client verifying chain and host name with
service_identity. It accepts that certificate, and refuses one for another
host name and a self-signed one, each with a clear message.
"""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twistchat import errors
from twistchat.client import CertificateAuthority, connect
from twistchat.server.room import Rooms
from twistchat.server.service import ChatServerFactory
from twistchat.server.tls import create_self_signed, load_certificate, server_options
from twisted.internet import reactor
from twisted.internet.endpoints import SSL4ServerEndpoint

from .conftest import PASSWORD
from .test_cli import run_client
from .test_e2e import BIN, Server, env


def _write_key(key: Any, path: Path) -> None:
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))


class ThrowawayCA:
    """
    A certificate authority valid for a day, kept in C{folder/ca.pem}.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "twistchat test CA")])
        self.cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = folder / "ca.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, stem: str, *names: str) -> tuple[Path, Path]:
        """
        A server certificate for C{names} (DNS names or IP addresses).
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        sans: list[x509.GeneralName] = []
        for name in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )
        cert_file, key_file = self.folder / f"{stem}.pem", self.folder / f"{stem}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_file)
        return cert_file, key_file


@pytest.fixture
def pki(tmp_path: Path) -> ThrowawayCA:
    return ThrowawayCA(tmp_path)


async def serve(folder: Path, verifier: Any, cert_file: Path, key_file: Path) -> Any:
    certificate = load_certificate(folder, cert_file, key_file)
    endpoint = SSL4ServerEndpoint(reactor, 0, server_options(certificate), interface="127.0.0.1")
    return await endpoint.listen(ChatServerFactory(Rooms([verifier]), reactor))


@pytest_twisted.ensureDeferred
async def test_ca_signed_certificate_accepted_for_its_names(pki: ThrowawayCA, verifier: Any) -> None:
    port = await serve(pki.folder, verifier, *pki.issue("good", "localhost", "127.0.0.1"))
    try:
        for host in ("127.0.0.1", "localhost"):
            trust = CertificateAuthority(pki.ca_file)
            session = await connect(reactor, host, port.getHost().port, "alice", PASSWORD,
                                    trust=trust, timeout=10)
            assert session.connected
            assert trust.fingerprint  # seen, though nothing is pinned
            await session.leave()
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_certificate_for_another_host_refused(pki: ThrowawayCA, verifier: Any) -> None:
    port = await serve(pki.folder, verifier, *pki.issue("other", "chat.example.org"))
    try:
        for host in ("127.0.0.1", "localhost"):
            with pytest.raises(errors.TrustError) as info:
                await connect(reactor, host, port.getHost().port, "alice", PASSWORD,
                              trust=CertificateAuthority(pki.ca_file), timeout=10)
            assert info.value.message == (
                f"the server's certificate is not valid for {host}; "
                f"trusted: the CA in {pki.ca_file}"
            )
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_self_signed_certificate_refused(pki: ThrowawayCA, verifier: Any) -> None:
    create_self_signed(pki.folder / "self.pem", pki.folder / "self.key")
    port = await serve(pki.folder, verifier, pki.folder / "self.pem", pki.folder / "self.key")
    try:
        with pytest.raises(errors.TrustError) as info:
            await connect(reactor, "127.0.0.1", port.getHost().port, "alice", PASSWORD,
                          trust=CertificateAuthority(pki.ca_file), timeout=10)
    finally:
        await port.stopListening()
    assert info.value.message == (
        "the server's certificate is not signed by a trusted certificate authority "
        f"(certificate verify failed); trusted: the CA in {pki.ca_file}"
    )


@pytest_twisted.ensureDeferred
async def test_command_with_ca(pki: ThrowawayCA, verifier: Any, tmp_path: Path) -> None:
    """
    The real command: accepted (nothing pinned), then refused for another
    host name with exit status 1 and one line.
    """
    good = await serve(pki.folder, verifier, *pki.issue("good", "localhost", "127.0.0.1"))
    other = await serve(pki.folder, verifier, *pki.issue("other", "chat.example.org"))
    try:
        run = await run_client(tmp_path, "--ca", str(pki.ca_file), "localhost",
                               str(good.getHost().port), "alice", password=PASSWORD)
        assert run.code == 0, run
        assert "Left the room." in run.stdout
        assert "First connection" not in run.stdout
        assert not (tmp_path / "config" / "twistchat" / "known_hosts").exists()
        run = await run_client(tmp_path, "--ca", str(pki.ca_file), "127.0.0.1",
                               str(other.getHost().port), "alice", password=PASSWORD)
        assert run.code == 1, run
        assert run.stderr == (
            "Unable to connect: the server's certificate is not valid for 127.0.0.1; "
            f"trusted: the CA in {pki.ca_file}\n"
        )
    finally:
        await good.stopListening()
        await other.stopListening()


def test_twistd_serves_a_ca_signed_certificate(pki: ThrowawayCA, tmp_path: Path) -> None:
    """
    End to end: twistd socketchat --tls-cert/--tls-key with the CA-signed
    certificate, the installed twistchat command with --ca.
    """
    cert_file, key_file = pki.issue("good", "localhost", "127.0.0.1")
    (tmp_path / "pw").write_text("a password for the CA test\n")
    server = Server(tmp_path, "--password-file", str(tmp_path / "pw"),
                    "--tls-cert", str(cert_file), "--tls-key", str(key_file))
    try:
        result = subprocess.run(
            [str(BIN / "twistchat"), "--ca", str(pki.ca_file), "127.0.0.1", str(server.port),
             "carol"],
            input="", capture_output=True, text=True, timeout=60,
            env=env(tmp_path, TWISTCHAT_PASSWORD="a password for the CA test"),
        )
        assert result.returncode == 0, result
        assert "connected — you can start sending messages" in result.stdout
        assert "Left the room." in result.stdout
        assert not (tmp_path / "data" / "server.pem").exists()
    finally:
        assert server.stop()
