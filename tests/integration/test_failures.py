"""Failing closed: vault down, hook exceptions, unwritable audit, rotation."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.openbao import OpenBao
from tests.support.proxy import REPO, Proxy
from tests.support.scenario import Scenario

pytestmark = pytest.mark.integration


def call(
    proxy: Proxy, sc: Scenario, path: str = "/echo/f", auth: str = "Bearer <<secret:stripe>>"
) -> requests.Response:
    return requests.get(
        f"https://127.0.0.1:{sc.upstream_port}{path}",
        headers={"Authorization": auth},
        proxies=proxy.proxies("acme", sc.acme.token),
        verify=str(proxy.ca_path),
        timeout=30,
    )


def own_proxy(sc: Scenario, tmp_path: Path, env: dict[str, str], **over: Any) -> Proxy:
    policy = sc.policy(audit={"path": str(tmp_path / "audit" / "a.jsonl")}, **over)
    return Proxy(policy, tmp_path, env=env)


def test_vault_stopped_gives_502_and_nothing_upstream(
    sc: Scenario, upstream: Any, tmp_path: Path
) -> None:
    bao = OpenBao().start()
    try:
        bao.put_v2("acme/stripe", {"api_key": sc.values["acme/stripe"]})
        policy = sc.policy(audit={"path": str(tmp_path / "a.jsonl")})
        policy["backends"]["vault"]["url"] = bao.url
        # Uncached: the broker preloads every value at start (issue 12), and
        # a cached value would keep serving while the vault is down.
        policy["backends"]["vault"]["cache_ttl"] = 0
        with Proxy(policy, tmp_path, env=sc.env(bao.root_token)) as proxy:
            bao.stop()
            upstream.clear()
            r = call(proxy, sc)
            assert r.status_code == 502, r.text
            assert r.json()["reason"] == "backend_unavailable"
            assert r.json()["secret"] == "stripe"
            assert upstream.received == []
    finally:
        bao.cleanup()


def test_rotation_picked_up_after_cache_ttl(
    sc: Scenario, openbao: OpenBao, upstream: Any, tmp_path: Path
) -> None:
    policy = sc.policy(audit={"path": str(tmp_path / "a.jsonl")})
    policy["backends"]["vault"]["cache_ttl"] = 1
    openbao.put_v2("acme/rotating", {"api_key": sc.values["acme/rotating"]})
    new_value = sc.values["acme/rotating"].replace("rotating1", "rotating2")
    with Proxy(policy, tmp_path, env=sc.env(openbao.root_token)) as proxy:
        upstream.clear()
        assert call(proxy, sc, auth="<<secret:rotating>>").status_code == 200
        assert sc.values["acme/rotating"] in str(upstream.received[-1].headers)
        openbao.put_v2("acme/rotating", {"api_key": new_value})
        time.sleep(1.3)
        upstream.clear()
        r = call(proxy, sc, auth="<<secret:rotating>>")
        assert r.status_code == 200
        assert new_value in str(upstream.received[-1].headers)
        # Both the old and the new value are scrubbed from what comes back.
        r = call(
            proxy, sc, path="/echo/x", auth=f"{sc.values['acme/rotating']} <<secret:rotating>>"
        )
        assert r.status_code == 200
        assert sc.values["acme/rotating"] not in r.text and new_value not in r.text
    openbao.put_v2("acme/rotating", {"api_key": sc.values["acme/rotating"]})


@pytest.mark.parametrize(
    "hook", ["requestheaders", "request", "request_after_substitution", "response"]
)
def test_exception_in_hook_fails_closed(
    sc: Scenario, openbao: OpenBao, upstream: Any, tmp_path: Path, hook: str
) -> None:
    faults = str(REPO / "tests" / "support" / "faults")  # a test-only sitecustomize
    env = {**sc.env(openbao.root_token), "KB_TEST_FAULT": hook, "PYTHONPATH": faults}
    with own_proxy(sc, tmp_path, env) as proxy:
        upstream.clear()
        r = call(proxy, sc)
        assert r.status_code == 502, r.text
        assert r.json()["reason"] == "internal_error"
        assert sc.values["acme/stripe"] not in r.text
        if hook != "response":
            assert upstream.received == [], "nothing may go upstream"
        out = proxy.output()
    assert "fault injected" not in out or sc.values["acme/stripe"] not in out
    assert sc.values["acme/stripe"] not in out


@pytest.mark.parametrize("where", ["dev-full", "not-a-directory"])
def test_unwritable_audit_gives_503(
    sc: Scenario, openbao: OpenBao, upstream: Any, tmp_path: Path, where: str
) -> None:
    if where == "dev-full":
        path = "/dev/full"
    else:
        (tmp_path / "file").write_text("x")
        path = str(tmp_path / "file" / "audit.jsonl")
    policy = sc.policy(audit={"path": path})
    with Proxy(policy, tmp_path, env=sc.env(openbao.root_token)) as proxy:
        upstream.clear()
        r = call(proxy, sc)
        assert r.status_code == 503, r.text
        assert r.json()["reason"] == "audit_unavailable"
        assert upstream.received == []
