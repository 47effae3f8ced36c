"""Scale-out: two keybroker instances behind HAProxy in TCP mode on loopback.

Agents keep one proxy address; HAProxy spreads their TCP connections (each a
CONNECT tunnel, so the tenant binding stays inside one instance). Substitution
and denial must work whichever instance a connection lands on, and each
instance writes its own audit chain. The instances share one CA (one
``certs_dir``), so agents trust a single certificate.

HAProxy comes from apt when it is missing and we are root; otherwise the test
is skipped with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.net import free_port, port_open, wait_for
from tests.support.proxy import Proxy
from tests.support.tlsca import TestCA
from tests.support.upstream import Upstream

pytestmark = pytest.mark.integration

REQUESTS = 12


def _haproxy() -> str:
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("haproxy is not installed (and we are not root with apt-get to install it)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "haproxy"]
    try:
        if subprocess.run(install, env=env, capture_output=True, timeout=300).returncode:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
            subprocess.run(install, env=env, capture_output=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"haproxy could not be installed with apt-get ({type(exc).__name__})")
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if not found:
        pytest.skip("haproxy could not be installed with apt-get")
    return found


def _policy(workdir: Path, certs: Path, up: Upstream, ca: TestCA, digest: str) -> dict[str, Any]:
    return {
        "version": 1,
        "certs_dir": str(certs),
        "upstream_ca": ca.ca_path,
        "audit": {"path": str(workdir / "audit.jsonl")},
        "backends": {"local": {"type": "env"}},
        "tenants": {
            "acme": {
                "token_sha256": digest,
                "secrets": {
                    "stripe": {
                        "backend": "local",
                        "path": "KB_SCALE_SECRET",
                        "hosts": ["127.0.0.1"],
                        "ports": [up.port],
                        "paths": ["/echo*"],
                    }
                },
            }
        },
    }


@pytest.fixture
def cluster(
    tmp_path: Path, upstream: Upstream, test_ca: TestCA
) -> Iterator[tuple[int, str, str, list[Proxy]]]:
    """(LB port, token, secret value, [instance A, instance B])."""
    haproxy = _haproxy()
    token = "kb_" + secrets.token_urlsafe(24)
    digest = "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    value = "kbcanary_scaleout_" + secrets.token_hex(12)
    certs = tmp_path / "certs"
    proxies = [
        Proxy(
            _policy(tmp_path / name, certs, upstream, test_ca, digest),
            tmp_path / name,
            env={"KB_SCALE_SECRET": value},
            quiet=True,
        )
        for name in ("a", "b")
    ]
    lb_port = free_port()
    cfg = tmp_path / "haproxy.cfg"
    backends = "\n".join(
        f"    server kb{i} 127.0.0.1:{p.port} check inter 500ms" for i, p in enumerate(proxies)
    )
    cfg.write_text(
        "global\n    maxconn 256\n"
        "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n"
        "    timeout server 30s\n"
        f"frontend agents\n    bind 127.0.0.1:{lb_port}\n    default_backend brokers\n"
        f"backend brokers\n    balance roundrobin\n{backends}\n"
    )
    lb: subprocess.Popen[bytes] | None = None
    try:
        proxies[0].start()  # the first creates the shared CA; then the second reuses it
        proxies[1].start()
        with (tmp_path / "haproxy.out").open("wb") as out:
            lb = subprocess.Popen(
                [haproxy, "-db", "-f", str(cfg)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if not wait_for(lambda: port_open(lb_port) or lb.poll() is not None, 15):
            pytest.fail("haproxy did not start")
        if lb.poll() is not None:
            pytest.fail(f"haproxy exited:\n{(tmp_path / 'haproxy.out').read_text()}")
        yield lb_port, token, value, proxies
    finally:
        if lb is not None and lb.poll() is None:
            lb.terminate()
            try:
                lb.wait(10)
            except subprocess.TimeoutExpired:
                lb.kill()
                lb.wait(5)
        for p in proxies:
            p.stop()


def _get(lb_port: int, token: str, ca: Path, url: str, path: str) -> requests.Response:
    proxy = f"http://acme:{token}@127.0.0.1:{lb_port}"
    # A fresh session per call: a new TCP connection, so HAProxy picks again.
    with requests.Session() as s:
        s.trust_env = False
        return s.get(
            url + path,
            headers={"Authorization": "Bearer <<secret:stripe>>"},
            proxies={"http": proxy, "https": proxy},
            verify=str(ca),
            timeout=20,
        )


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in recs if r.get("phase") != "sent"]  # one done record per request


def test_substitution_and_denial_through_the_load_balancer(
    cluster: tuple[int, str, str, list[Proxy]], upstream: Upstream
) -> None:
    lb_port, token, value, proxies = cluster
    ca = proxies[0].ca_path
    assert ca == proxies[1].ca_path
    base = upstream.base_url
    before = len(upstream.received)

    for i in range(REQUESTS):
        r = _get(lb_port, token, ca, base, f"/echo/scale/{i}")
        assert r.status_code == 200, r.text
        assert value not in r.text  # the echoed value came back scrubbed
        assert "<<secret:stripe>>" in r.text
    got = [rec for rec in upstream.received[before:] if rec.path.startswith("/echo/scale/")]
    assert len(got) == REQUESTS
    assert all(rec.header("authorization") == f"Bearer {value}" for rec in got)

    denied = _get(lb_port, token, ca, base, "/status/200")  # not in the secret's paths
    assert denied.status_code == 403
    assert denied.json()["reason"] == "path_not_allowed"
    assert value not in denied.text
    assert not any(rec.path == "/status/200" for rec in upstream.received[before:])

    audits = [_records(p.audit_path) for p in proxies]
    for name, recs in zip("ab", audits, strict=True):
        allowed = [r for r in recs if r["decision"] == "allow" and r["path"].startswith("/echo/")]
        assert allowed, f"instance {name} served no request (audit {recs})"
        assert all(r["scrubbed"] >= 1 for r in allowed)
    assert sum(r["decision"] == "allow" for recs in audits for r in recs) == REQUESTS
    denials = [r for recs in audits for r in recs if r["decision"] == "deny"]
    assert [r["reason"] for r in denials] == ["path_not_allowed"]
    for p in proxies:
        text = p.audit_path.read_text() + p.output()
        assert value not in text and token not in text
