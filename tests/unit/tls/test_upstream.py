from __future__ import annotations

from pathlib import Path

import pytest

from broker.tls.ca import CAError
from broker.tls.upstream import PREFIX, system_store, upstream_bundle

PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_ssl_cert_file_is_the_system_store(tmp_path: Path) -> None:
    roots = tmp_path / "roots.pem"
    roots.write_bytes(PEM)
    assert system_store({"SSL_CERT_FILE": str(roots)}) == roots
    assert system_store({"SSL_CERT_FILE": str(tmp_path / "absent")}) != tmp_path / "absent"


def test_bundle_is_store_then_upstream_ca_named_by_content(tmp_path: Path) -> None:
    roots, extra = tmp_path / "roots.pem", tmp_path / "extra.pem"
    roots.write_bytes(PEM.replace(b"MIIB", b"ROOT"))
    extra.write_bytes(PEM.replace(b"MIIB", b"EXTRA"))
    env = {"SSL_CERT_FILE": str(roots)}
    certs = tmp_path / "certs"
    only = upstream_bundle(certs, None, environ=env)
    both = upstream_bundle(certs, extra, environ=env)
    assert only.name.startswith(PREFIX) and both.name.startswith(PREFIX)
    assert only.read_bytes() == roots.read_bytes()
    assert both.read_bytes() == roots.read_bytes() + extra.read_bytes()
    # mitmproxy caches TLS contexts by file name: new content, new name.
    extra.write_bytes(PEM.replace(b"MIIB", b"CHANGED"))
    assert upstream_bundle(certs, extra, environ=env) != both
    assert upstream_bundle(certs, extra, environ=env) == upstream_bundle(certs, extra, environ=env)


@pytest.mark.parametrize("content", [None, b"not a certificate"], ids=["missing", "not-pem"])
def test_a_bad_upstream_ca_is_an_error(tmp_path: Path, content: bytes | None) -> None:
    extra = tmp_path / "extra.pem"
    if content is not None:
        extra.write_bytes(content)
    with pytest.raises(CAError, match="upstream_ca"):
        upstream_bundle(tmp_path / "certs", extra)
