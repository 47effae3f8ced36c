from __future__ import annotations

import datetime
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from mitmproxy.certs import CertStore

from broker.tls import ca, trust


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _cert(p: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(p.read_bytes())


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> ca.CAFiles:
    files, created = ca.init_ca(tmp_path_factory.mktemp("ca") / "certs")
    assert created
    return files


def test_layout_and_modes(made: ca.CAFiles) -> None:
    d = made.cert.parent
    assert made == ca.ca_files(d)
    assert (made.cert.name, made.key.name, made.bundle.name) == (
        "keybroker-ca.pem",
        "keybroker-ca-key.pem",
        "keybroker-ca-bundle.pem",
    )
    assert made.confdir == d / "mitmproxy"
    assert _mode(d) == 0o700
    assert _mode(made.key) == 0o600
    assert _mode(made.mitm_ca) == 0o600
    assert _mode(made.cert) == 0o644
    assert made.mitm_cert.read_bytes() == made.cert.read_bytes()


@pytest.mark.parametrize("key_type", ["rsa", "ec"])
def test_ca_extensions(tmp_path: Path, key_type: ca.KeyType) -> None:
    files, _ = ca.init_ca(tmp_path, key_type=key_type, common_name="test CA")
    cert = _cert(files.cert)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert ku.value.digital_signature
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    cn = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value
    assert cn == "test CA" and cert.issuer == cert.subject
    days = (cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)).days
    assert 3640 <= days <= 3650
    assert cert.not_valid_before_utc < datetime.datetime.now(datetime.UTC)


def test_second_init_reuses_the_ca(made: ca.CAFiles) -> None:
    before = made.cert.read_bytes(), made.key.read_bytes()
    again, created = ca.init_ca(made.cert.parent)
    assert not created and again == made
    assert (made.cert.read_bytes(), made.key.read_bytes()) == before


def test_force_rotates(tmp_path: Path) -> None:
    files, _ = ca.init_ca(tmp_path)
    old = _cert(files.cert)
    files, created = ca.init_ca(tmp_path, force=True)
    new = _cert(files.cert)
    assert created and ca.fingerprint(new) != ca.fingerprint(old)
    assert _cert(files.mitm_cert) == new
    assert trust.in_bundle(files.cert, files.bundle)
    assert old.public_bytes(serialization.Encoding.PEM).decode() not in files.bundle.read_text()


@pytest.mark.parametrize("key_type", ["rsa", "ec"])
def test_mitmproxy_reuses_our_ca(tmp_path: Path, key_type: ca.KeyType) -> None:
    files, _ = ca.init_ca(tmp_path, key_type=key_type)
    store = CertStore.from_store(files.confdir, "mitmproxy", 2048)
    assert store.default_ca.to_pem() == files.cert.read_bytes()
    assert ca.fingerprint(_cert(files.cert)) == ca.fingerprint(_cert(files.mitm_ca))
    # A leaf mitmproxy issues verifies against the bundle under strict (3.13) rules.
    entry = store.get_cert("api.example.test", [x509.DNSName("api.example.test")])
    leaf, key = tmp_path / "leaf.pem", tmp_path / "leaf-key.pem"
    leaf.write_bytes(entry.cert.to_pem())
    key.write_bytes(
        entry.privatekey.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert _handshake(files.bundle, leaf, key, "api.example.test") == "ok"


def test_confdir_is_rederived(made: ca.CAFiles) -> None:
    made.mitm_ca.unlink()
    made.mitm_cert.unlink()
    _, created = ca.init_ca(made.cert.parent)
    assert not created
    assert CertStore.from_store(made.confdir, "mitmproxy", 2048).default_ca.to_pem() == (
        made.cert.read_bytes()
    )


def test_a_ca_mitmproxy_made_itself_is_replaced(tmp_path: Path) -> None:
    confdir = ca.ca_files(tmp_path).confdir
    CertStore.create_store(confdir, "mitmproxy", 2048)
    assert (confdir / "mitmproxy-ca-cert.p12").exists()
    files, created = ca.init_ca(tmp_path)
    assert created
    store = CertStore.from_store(files.confdir, "mitmproxy", 2048)
    assert store.default_ca.to_pem() == files.cert.read_bytes()
    assert not (confdir / "mitmproxy-ca-cert.p12").exists()
    assert not (confdir / "mitmproxy-ca.p12").exists()


@pytest.mark.parametrize("missing", ["key", "cert"])
def test_half_a_ca_is_an_error(tmp_path: Path, missing: str) -> None:
    files, _ = ca.init_ca(tmp_path)
    getattr(files, missing).unlink()
    with pytest.raises(ca.CAError, match="--force"):
        ca.init_ca(tmp_path)
    _, created = ca.init_ca(tmp_path, force=True)
    assert created


def test_a_key_from_another_ca_is_an_error(tmp_path: Path, made: ca.CAFiles) -> None:
    files, _ = ca.init_ca(tmp_path)
    files.key.write_bytes(made.key.read_bytes())
    with pytest.raises(ca.CAError, match="does not belong"):
        ca.init_ca(tmp_path)


def test_garbage_is_an_error(tmp_path: Path) -> None:
    files, _ = ca.init_ca(tmp_path)
    files.cert.write_text("not a certificate")
    with pytest.raises(ca.CAError, match="cannot load"):
        ca.load_ca(files)


def test_bundle_is_roots_plus_ours_without_an_older_keybroker_ca(
    tmp_path: Path, made: ca.CAFiles
) -> None:
    other, _ = ca.init_ca(tmp_path / "other", common_name="Some Root")
    old, _ = ca.init_ca(tmp_path / "old")  # same subject as `made`: a pre-rotation CA
    roots = tmp_path / "roots.pem"
    roots.write_text(other.cert.read_text() + "junk\n" + old.cert.read_text())
    bundle = ca.write_bundle(made, roots=roots)
    assert trust.in_bundle(made.cert, bundle)
    assert trust.in_bundle(other.cert, bundle)
    assert not trust.in_bundle(old.cert, bundle)
    assert bundle.read_text().count("BEGIN CERTIFICATE") == 2
    assert _handshake(bundle, *_leaf_signed_by(tmp_path, made), "x.test") == "ok"


def test_bundle_is_not_rewritten_when_unchanged(made: ca.CAFiles) -> None:
    ca.write_bundle(made)
    inode = made.bundle.stat().st_ino
    ca.write_bundle(made)
    assert made.bundle.stat().st_ino == inode


def test_default_bundle_has_system_roots(made: ca.CAFiles) -> None:
    roots = ca.system_roots()
    assert roots is not None
    assert made.bundle.read_text().count("BEGIN CERTIFICATE") > 10


def test_rotation_notice(tmp_path: Path, made: ca.CAFiles) -> None:
    text = ca.rotation_notice(made, root=tmp_path)
    for needle in (str(made.cert), str(made.bundle), "restart `keybroker run`", "ca install"):
        assert needle in text
    assert ca.fingerprint(_cert(made.cert)) in text
    copy = tmp_path / trust.DEBIAN_DIR / trust.DEFAULT_NAME
    copy.parent.mkdir(parents=True)
    copy.write_bytes(made.cert.read_bytes())
    assert f"installed here: {copy}" in ca.rotation_notice(made, root=tmp_path)


def _leaf_signed_by(tmp_path: Path, files: ca.CAFiles) -> tuple[Path, Path]:
    store = CertStore.from_store(files.confdir, "mitmproxy", 2048)
    entry = store.get_cert("x.test", [x509.DNSName("x.test")])
    leaf, key = tmp_path / "x.pem", tmp_path / "x-key.pem"
    leaf.write_bytes(entry.cert.to_pem())
    key.write_bytes(
        entry.privatekey.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return leaf, key


def _handshake(bundle: Path, leaf: Path, key: Path, host: str) -> str:
    """An in-memory TLS handshake; "ok" or the client's verification error."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(leaf, key)
    client_ctx = ssl.create_default_context(cafile=str(bundle))
    client_ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=host)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, obj in (("client", client), ("server", server)):
            if done[name]:
                continue
            try:
                obj.do_handshake()
                done[name] = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLCertVerificationError as exc:
                return str(exc.verify_message)
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return "ok"
    return "no handshake"
