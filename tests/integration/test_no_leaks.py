"""Invariant 4: no log line, audit record, console output or file the broker
writes holds a secret value or a tenant token. Unique canary values are driven
through allowed, denied, scrubbed and failing requests, then everything the
broker printed or wrote is grepped."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.openbao import OpenBao
from tests.support.proxy import Proxy
from tests.support.scenario import Scenario

pytestmark = pytest.mark.integration


def _forms(value: str) -> list[bytes]:
    raw = value.encode()
    return [raw, base64.b64encode(raw), raw.hex().encode()]


def test_canaries_absent_from_everything_the_broker_wrote(
    sc: Scenario, openbao: OpenBao, upstream: Any, tmp_path: Path
) -> None:
    policy = sc.policy(audit={"path": str(tmp_path / "audit" / "decisions.jsonl")})
    proxy = Proxy(policy, tmp_path, env=sc.env(openbao.root_token))
    base = f"https://127.0.0.1:{sc.upstream_port}"
    with proxy:
        for tenant in (sc.acme, sc.globex):
            p = proxy.proxies(tenant.name, tenant.token)
            for path, auth in [
                ("/echo/ok", "Bearer <<secret:stripe>>"),  # allow + scrub
                ("/reflect?form=b64&where=body,header,location", "<<secret:stripe>>"),
                ("/echo/nope", "<<secret:unknown>>"),  # deny
                ("/echo/missing", "<<secret:missing>>"),  # 502
                ("/echo/bad", "<<secret:bad name>>"),  # 400
                ("/sse?events=2&interval=0.01&reflect=1", "<<secret:stripe>>"),
            ]:
                requests.get(
                    base + path,
                    headers={"Authorization": auth},
                    proxies=p,
                    verify=str(proxy.ca_path),
                    timeout=20,
                )
            # A raw value to an unlisted host, and a wrong token.
            requests.get(
                f"https://localhost:{sc.upstream_port}/echo/raw",
                headers={"X-Leak": sc.values["acme/stripe"]},
                proxies=p,
                verify=str(proxy.ca_path),
                timeout=20,
            )
        try:
            requests.get(
                base + "/echo",
                proxies=proxy.proxies("acme", "not-the-token"),
                verify=str(proxy.ca_path),
                timeout=20,
            )
        except requests.exceptions.ProxyError:
            pass
    tail = subprocess.run(
        [sys.executable, "-m", "broker.cli", "tail", str(proxy.audit_path)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    outputs: dict[str, bytes] = {
        "proxy output": proxy.output().encode(),
        "keybroker tail": tail.stdout + tail.stderr,
    }
    for f in tmp_path.rglob("*"):
        if f.is_file():
            outputs[str(f.relative_to(tmp_path))] = f.read_bytes()
    assert proxy.audit_path.read_text().count("\n") >= 10, "the traffic must have been audited"
    secrets = [*sc.canaries(), sc.acme.token, sc.globex.token]
    for name, data in outputs.items():
        for s in secrets:
            for form in _forms(s):
                assert form not in data, f"a canary (form #{_forms(s).index(form)}) is in {name}"
