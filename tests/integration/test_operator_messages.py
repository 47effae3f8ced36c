"""What the operator sees (issue 14.8): a 407 names the tenant that tried,
a ``secret_not_found`` names the unset variable in the broker's log, and
``audit verify --config`` checks the policy's chains."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.net import wait_for
from tests.support.openbao import OpenBao
from tests.support.proxy import REPO, Proxy
from tests.support.scenario import Scenario

pytestmark = pytest.mark.integration


def keybroker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *args],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def own(sc: Scenario, openbao: OpenBao, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A broker whose environment lacks the env backend's variable."""
    d = tmp_path_factory.mktemp("operator")
    policy = sc.policy(audit={"path": str(d / "audit.jsonl")})
    with Proxy(policy, d, env={"KB_TEST_VAULT_TOKEN": openbao.root_token}) as p:
        yield p


def get(proxy: Proxy, sc: Scenario, path: str, token: str, auth: str = "") -> requests.Response:
    return requests.get(
        f"https://127.0.0.1:{sc.upstream_port}{path}",
        headers={"Authorization": auth} if auth else {},
        proxies=proxy.proxies("acme", token),
        verify=str(proxy.ca_path),
        timeout=30,
    )


def records(proxy: Proxy) -> list[dict[str, Any]]:
    return [json.loads(x) for x in proxy.audit_path.read_text().splitlines() if x.strip()]


def test_a_407_names_the_tenant_that_tried_in_the_audit_not_the_reply(
    own: Proxy, sc: Scenario
) -> None:
    with pytest.raises(requests.exceptions.ProxyError, match="407"):
        get(own, sc, "/echo/wrong-token", "kb_wrong")
    assert wait_for(lambda: any(r["reason"] == "unauthenticated" for r in records(own)), 10)
    [rec] = [r for r in records(own) if r["reason"] == "unauthenticated"]
    assert rec["tenant"] == "acme" and rec["status"] == 407
    assert "kb_wrong" not in own.audit_path.read_text()


def test_secret_not_found_names_the_variable_to_the_operator(own: Proxy, sc: Scenario) -> None:
    r = get(own, sc, "/echo/local", sc.acme.token, "Bearer <<secret:local>>")
    assert r.status_code == 502 and r.json()["reason"] == "secret_not_found"
    assert "KB_LOCAL_SECRET" not in r.text  # the agent learns no broker internals
    assert wait_for(lambda: "KB_LOCAL_SECRET" in own.output(), 10), own.output()


def test_audit_verify_with_config(own: Proxy, sc: Scenario, tmp_path: Path) -> None:
    assert get(own, sc, "/echo/verify", sc.acme.token).status_code == 200
    out = keybroker("audit", "verify", "--config", str(own.config))
    assert out.returncode == 0, out.stderr
    assert str(own.audit_path) in out.stdout + out.stderr or "intact" in out.stdout
