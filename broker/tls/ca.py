"""The keybroker CA (DESIGN.md §2 ``ca init``/``ca path``, §3 ``certs_dir``).

One key pair under ``certs_dir``, laid out three ways: the certificate clients
trust, a bundle (system roots plus our CA) for sandbox environments, and
mitmproxy's confdir, so that mitmproxy reuses this CA instead of making its
own (file names as in ``mitmproxy/certs.py``, never imported here)."""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from broker.tls import trust

if sys.platform != "win32":
    import fcntl

KeyType = Literal["rsa", "ec"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

MITM_BASENAME = "mitmproxy"  # mitmproxy.options.CONF_BASENAME
VALIDITY = datetime.timedelta(days=3650)
BACKDATE = datetime.timedelta(days=1)  # tolerate clients whose clock runs behind
SYSTEM_BUNDLES = (
    Path("/etc/ssl/certs/ca-certificates.crt"),  # Debian, Ubuntu, Alpine
    Path("/etc/pki/tls/certs/ca-bundle.crt"),  # RHEL, Fedora
    Path("/etc/ssl/cert.pem"),  # macOS, BSD
)
_PEM_RE = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?", re.DOTALL)


class CAError(Exception):
    """The CA on disk cannot be used; the message says what to do."""


@dataclass(frozen=True)
class CAFiles:
    cert: Path
    key: Path
    bundle: Path
    confdir: Path

    @property
    def mitm_ca(self) -> Path:
        """Key then certificate: what ``CertStore.from_store`` loads."""
        return self.confdir / f"{MITM_BASENAME}-ca.pem"

    @property
    def mitm_cert(self) -> Path:
        return self.confdir / f"{MITM_BASENAME}-ca-cert.pem"


def ca_files(certs_dir: Path) -> CAFiles:
    d = Path(os.path.abspath(certs_dir.expanduser()))
    return CAFiles(
        cert=d / "keybroker-ca.pem",
        key=d / "keybroker-ca-key.pem",
        bundle=d / "keybroker-ca-bundle.pem",
        confdir=d / "mitmproxy",
    )


def init_ca(
    certs_dir: Path,
    *,
    force: bool = False,
    common_name: str = "keybroker CA",
    key_type: KeyType = "rsa",
) -> tuple[CAFiles, bool]:
    """Create the CA if absent (``created`` is then True) or reuse it;
    ``force`` replaces key and certificate (rotation). Either way the
    mitmproxy confdir and the bundle are brought in line with the CA."""
    files = ca_files(certs_dir)
    _make_dir(files.cert.parent)
    with _locked(files.cert.parent):
        have_cert, have_key = files.cert.exists(), files.key.exists()
        if not force and have_cert != have_key:
            present, missing = (files.cert, files.key) if have_cert else (files.key, files.cert)
            raise CAError(
                f"{present} exists but {missing} does not: restore it, or run "
                "`keybroker ca init --force` to make a new CA (clients must then trust the new one)"
            )
        created = force or not have_cert
        if created:
            key, cert = _new_ca(common_name, key_type)
            _write(files.key, _key_pem(key), 0o600)
            _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        else:
            key, cert = load_ca(files)
        _write_confdir(files, key, cert)
        write_bundle(files)
    return files, created


def load_ca(files: CAFiles) -> tuple[PrivateKey, x509.Certificate]:
    """Key and certificate, checked to belong together and to be in date."""
    try:
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise CAError(
            f"cannot load the CA in {files.cert.parent}: {exc}; "
            "run `keybroker ca init --force` to make a new one"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise CAError(f"{files.key}: only RSA and EC keys are supported")
    if key.public_key() != cert.public_key():
        raise CAError(
            f"{files.key} does not belong to {files.cert}; "
            "run `keybroker ca init --force` to make a new CA"
        )
    if cert.not_valid_after_utc <= datetime.datetime.now(datetime.UTC):
        raise CAError(
            f"{files.cert} expired on {cert.not_valid_after_utc:%Y-%m-%d}; "
            "run `keybroker ca init --force` and re-distribute the new certificate"
        )
    return key, cert


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint, colon-separated upper-case hex."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def system_roots() -> Path | None:
    """The platform's root bundle, else certifi's, else None."""
    for p in SYSTEM_BUNDLES:
        if p.is_file():
            return p
    try:
        import certifi
    except ImportError:  # pragma: no cover - certifi comes with requests/mitmproxy
        return None
    return Path(certifi.where())


def write_bundle(files: CAFiles, *, roots: Path | None = None) -> Path:
    """System roots (``roots`` or :func:`system_roots`) followed by our CA.
    Any earlier keybroker CA in the roots (same subject, e.g. installed into
    the system store before a rotation) is left out. Rewritten only when the
    content changes."""
    ours = x509.load_pem_x509_certificate(files.cert.read_bytes())
    subject = ours.subject.public_bytes()
    src = roots if roots is not None else system_roots()
    kept: list[str] = []
    if src is not None:
        for block in _PEM_RE.findall(src.read_text(encoding="utf-8", errors="replace")):
            # Compared as DER, unparsed: system bundles hold roots that
            # cryptography warns about (negative serial numbers).
            body = "".join(block.strip().splitlines()[1:-1])
            try:
                der = base64.b64decode(body, validate=True)
            except binascii.Error:
                continue  # not a certificate a TLS client could use either
            if subject not in der:
                kept.append(block.rstrip("\n") + "\n")
    header = f"# keybroker CA bundle: roots from {src or '(none found)'} plus the keybroker CA\n"
    ca_pem = ours.public_bytes(serialization.Encoding.PEM).decode("ascii")
    text = header + "".join(kept) + f"# keybroker CA {fingerprint(ours)}\n" + ca_pem
    _write_if_changed(files.bundle, text.encode("utf-8"), 0o644)
    return files.bundle


def rotation_notice(files: CAFiles, *, root: Path = Path("/")) -> str:
    """What must be re-distributed after ``ca init --force``."""
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    lines = [
        f"New keybroker CA {fingerprint(cert)}. Clients that trusted the old one fail TLS until you:",
        "  1. restart `keybroker run` (it loads the CA at start-up; SIGHUP does not)",
        f"  2. re-distribute the certificate: {files.cert}",
        f"  3. re-distribute the bundle: {files.bundle}",
        "     restart containers that bind-mount it (a bind-mounted file keeps the old",
        "     copy) and agents that read it at start-up (NODE_EXTRA_CA_CERTS, SSL_CERT_FILE)",
    ]
    where = ", ".join(str(p) for p in trust.installed_copies(root))
    lines.append(
        f"  4. run `keybroker ca install` again (installed here: {where})"
        if where
        else "  4. run `keybroker ca install` again wherever you installed the old one"
    )
    return "\n".join(lines)


def _new_ca(common_name: str, key_type: KeyType) -> tuple[PrivateKey, x509.Certificate]:
    key: PrivateKey = (
        ec.generate_private_key(ec.SECP256R1())
        if key_type == "ec"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "keybroker"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_confdir(files: CAFiles, key: PrivateKey, cert: x509.Certificate) -> None:
    _make_dir(files.confdir)
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    _write_if_changed(files.mitm_ca, _key_pem(key) + cert_pem, 0o600)
    _write_if_changed(files.mitm_cert, cert_pem, 0o644)
    # Left by a mitmproxy that generated its own CA here: they would name the wrong CA.
    for stale in ("ca.p12", "ca-cert.p12", "ca-cert.cer"):
        (files.confdir / f"{MITM_BASENAME}-{stale}").unlink(missing_ok=True)


def _make_dir(d: Path) -> None:
    if not d.is_dir():
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        d.chmod(0o700)


@contextlib.contextmanager
def _locked(d: Path) -> Iterator[None]:
    """Serialise concurrent ``init_ca`` calls on one directory."""
    if sys.platform == "win32":  # pragma: no cover
        yield
        return
    fd = os.open(d / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_if_changed(path: Path, data: bytes, mode: int) -> None:
    try:
        same = path.read_bytes() == data
    except OSError:
        same = False
    if not same:
        _write(path, data, mode)
    path.chmod(mode)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomic replace; the file never exists with a wider mode than ``mode``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
