"""Upstream TLS is verified against the broker host's system trust store plus
``upstream_ca`` (issue 14.2), and a reload applies a changed ``upstream_ca``
while naming the fields that need a restart (issue 14.3).

The "system trust store" of the broker process is what OpenSSL reads:
``SSL_CERT_FILE`` points it at a bundle here, the way a TLS-inspecting egress
proxy's CA sits in /etc/ssl/certs on a real host."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import certifi
import pytest
import requests

from tests.support.net import wait_for
from tests.support.proxy import Proxy
from tests.support.scenario import Scenario
from tests.support.tlsca import TestCA

pytestmark = pytest.mark.integration


def get(proxy: Proxy, sc: Scenario, path: str) -> requests.Response:
    return requests.get(
        f"https://127.0.0.1:{sc.upstream_port}{path}",
        proxies=proxy.proxies("acme", sc.acme.token),
        verify=str(proxy.ca_path),
        timeout=30,
    )


def store(tmp_path: Path, *extra: Path) -> Path:
    """A system store: certifi's roots plus ``extra`` CAs."""
    out = tmp_path / "system-store.pem"
    out.write_bytes(Path(certifi.where()).read_bytes() + b"".join(p.read_bytes() for p in extra))
    return out


def broker(sc: Scenario, tmp_path: Path, system: Path, **over: Any) -> Proxy:
    policy = sc.policy(audit={"path": str(tmp_path / "audit.jsonl")}, **over)
    policy.setdefault("preload_unknown", "serve")  # no vault token here: nothing preloads
    return Proxy(policy, tmp_path, env={"SSL_CERT_FILE": str(system)})


def records(proxy: Proxy) -> list[dict[str, Any]]:
    lines = proxy.audit_path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_the_system_store_is_trusted_without_upstream_ca(
    sc: Scenario, test_ca: TestCA, upstream: Any, tmp_path: Path
) -> None:
    with broker(sc, tmp_path, store(tmp_path, Path(test_ca.ca_path)), upstream_ca=None) as p:
        r = get(p, sc, "/echo/system-store")
        assert r.status_code == 200, r.text


def test_an_untrusted_upstream_is_refused(sc: Scenario, upstream: Any, tmp_path: Path) -> None:
    """Neither the store nor upstream_ca holds the upstream's CA: nothing
    reaches it (the handshake fails before a byte of the request is sent)."""
    upstream.clear()
    with broker(sc, tmp_path, store(tmp_path), upstream_ca=None) as p:
        r = get(p, sc, "/echo/untrusted")
        assert r.status_code == 502
        assert not [x for x in upstream.received if x.path == "/echo/untrusted"]


def test_an_untrusted_upstream_is_a_json_upstream_tls_failed_with_an_error_record(
    sc: Scenario, upstream: Any, tmp_path: Path
) -> None:
    with broker(sc, tmp_path, store(tmp_path), upstream_ca=None) as p:
        r = get(p, sc, "/echo/untrusted-json")
        assert r.status_code == 502
        assert r.json()["reason"] == "upstream_tls_failed"
        assert r.headers["x-keybroker-decision"] == "error; reason=upstream_tls_failed"
        done = [x for x in records(p) if x.get("path") == "/echo/untrusted-json"]
        assert done and done[-1]["decision"] == "error"
        assert done[-1]["reason"] == "upstream_tls_failed"


def test_reload_applies_a_changed_upstream_ca_and_names_restart_fields(
    sc: Scenario, test_ca: TestCA, upstream: Any, tmp_path: Path
) -> None:
    """The same upstream_ca path, first holding an unrelated CA, then the
    upstream's: after SIGHUP the new content is trusted. A changed listen is
    named as needing a restart."""
    ca_file = tmp_path / "upstream-ca.pem"
    ca_file.write_bytes(Path(TestCA(tmp_path / "other", "unrelated CA").ca_path).read_bytes())
    with broker(sc, tmp_path, store(tmp_path), upstream_ca=str(ca_file)) as p:
        assert get(p, sc, "/echo/before-reload").status_code == 502
        ca_file.write_bytes(Path(test_ca.ca_path).read_bytes())
        p.policy["listen"] = "127.0.0.1:1"
        p.write_policy()
        p.signal(signal.SIGHUP)
        assert wait_for(lambda: "upstream trust reloaded" in p.output(), 15), p.output()
        r = get(p, sc, "/echo/after-reload")
        assert r.status_code == 200, r.text
        out = p.output()
        assert "listen changed" in out and "restart" in out
        # Each log line once: mitmproxy's termlog is the only handler of a serving process.
        assert out.count("upstream trust reloaded") == 1, out


def test_doctor_upstream_names_an_untrusted_upstream(
    sc: Scenario, upstream: Any, tmp_path: Path
) -> None:
    """`keybroker doctor --upstream` asks through the broker: the broker's
    own trust decides, and doctor says what to do (issue 14.2)."""
    import subprocess
    import sys

    from tests.support.proxy import REPO

    with broker(sc, tmp_path, store(tmp_path), upstream_ca=None) as p:
        out = subprocess.run(
            [sys.executable, "-m", "broker.cli", "doctor", "--config", str(p.config),
             "--tenant", "acme", "--token", sc.acme.token, "--listen", f"127.0.0.1:{p.port}",
             "--upstream", f"127.0.0.1:{sc.upstream_port}"],
            cwd=REPO, capture_output=True, text=True, timeout=90, check=False,
            env={"PATH": "/usr/bin:/bin", "COLUMNS": "250", "NO_COLOR": "1"},
        )  # fmt: skip
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert f"✗   the broker does not trust 127.0.0.1:{sc.upstream_port}'s certificate" in text
    assert "upstream_ca" in text
