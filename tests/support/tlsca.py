"""A throwaway certificate authority for the local HTTPS upstream used by tests.

The CA and the server certificates it issues carry every extension that strict
X.509 verification (``ssl.VERIFY_X509_STRICT``, the default from Python 3.13)
demands: a critical BasicConstraints, a critical KeyUsage, SubjectKeyIdentifier
and AuthorityKeyIdentifier, and a SubjectAltName on the leaf.

Paths are returned as ``str`` on purpose: ``requests`` silently ignores a
``pathlib.Path`` passed as ``verify=``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_NAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _san(names: Sequence[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


class TestCA:
    """A CA written to ``directory``: ``ca.pem`` (``ca_path``) and ``ca.key`` (0600)."""

    __test__ = False  # not a pytest test class

    def __init__(
        self, directory: str | os.PathLike[str], common_name: str = "keybroker test CA"
    ) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "keybroker tests"),
            ]
        )
        pub = self._key.public_key()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(pub), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_path: str = str(self.dir / "ca.pem")
        self.key_path: str = str(self.dir / "ca.key")
        Path(self.ca_path).write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        _write_key(Path(self.key_path), self._key)
        self._issued = 0

    @property
    def ca_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue_server_cert(self, names: Sequence[str] | None = None) -> tuple[str, str]:
        """Issue a serverAuth leaf for DNS names and IP addresses; returns
        ``(cert_path, key_path)`` (the cert file holds the leaf then the CA)."""
        names = list(names) if names else list(DEFAULT_NAMES)
        self._issued += 1
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        ski = x509.SubjectKeyIdentifier.from_public_key(self._key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(_san(names)), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        cert_path = self.dir / f"server-{self._issued}.pem"
        key_path = self.dir / f"server-{self._issued}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + self.ca_pem)
        _write_key(key_path, key)
        return str(cert_path), str(key_path)

    def client_context(self, *, strict: bool = True) -> ssl.SSLContext:
        """A client context trusting only this CA (for http.client / raw sockets)."""
        ctx = ssl.create_default_context(cafile=self.ca_path)
        if strict:
            ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        return ctx
