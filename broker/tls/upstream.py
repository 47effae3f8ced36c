"""Which certificate authorities the broker trusts for upstream servers: the
host's system trust store plus the policy's ``upstream_ca``.

mitmproxy, left alone, verifies upstreams against certifi's bundle, not the
system store: behind a TLS-inspecting egress proxy whose CA the operator put
into the system store, every call then failed. So the broker always hands
mitmproxy a bundle of its own (``ssl_verify_upstream_trusted_ca``), made of

1. the system store as OpenSSL sees it: ``$SSL_CERT_FILE`` when set, else
   Python's default verify file, else the usual distribution paths, else
   certifi's bundle;
2. ``upstream_ca`` when the policy names one.

The bundle's file name carries a hash of its content: mitmproxy caches its
TLS contexts by file name, so a reload that changes ``upstream_ca`` (or the
file it names) must produce a new name to take effect.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import tempfile
from collections.abc import Mapping
from pathlib import Path

from broker.tls.ca import CAError, system_roots

PREFIX = "upstream-bundle-"


def system_store(environ: Mapping[str, str] | None = None) -> Path | None:
    """The host's root bundle, as OpenSSL would pick it."""
    env = os.environ if environ is None else environ
    override = env.get("SSL_CERT_FILE")
    if override and Path(override).is_file():
        return Path(override)
    default = ssl.get_default_verify_paths().cafile
    if default and Path(default).is_file():
        return Path(default)
    return system_roots()


def bundle_bytes(upstream_ca: Path | None, roots: Path | None) -> bytes:
    """The system roots followed by ``upstream_ca``; an unreadable
    ``upstream_ca`` is an error (never silently trust less, or more)."""
    base = roots.read_bytes().rstrip(b"\n") + b"\n" if roots else b""
    if upstream_ca is None:
        return base
    try:
        extra = upstream_ca.read_bytes()
    except OSError as exc:
        raise CAError(f"upstream_ca {upstream_ca}: cannot read: {exc.strerror or exc}") from None
    if b"-----BEGIN CERTIFICATE-----" not in extra:
        raise CAError(f"upstream_ca {upstream_ca}: no PEM certificate in it")
    return base + extra


def upstream_bundle(
    certs_dir: Path, upstream_ca: Path | None, *, environ: Mapping[str, str] | None = None
) -> Path:
    """Write (once per content) and return the bundle mitmproxy verifies
    upstream servers against."""
    data = bundle_bytes(upstream_ca, system_store(environ))
    out = certs_dir / f"{PREFIX}{hashlib.sha256(data).hexdigest()[:16]}.pem"
    if out.is_file() and out.read_bytes() == data:
        return out
    certs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=certs_dir, prefix=".upstream-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
