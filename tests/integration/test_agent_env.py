"""Issue 5 end to end: an agent whose environment holds nothing but what
``keybroker env`` printed (plus PATH, HOME, LANG) reaches an allowed upstream
through the real broker with curl, requests, httpx and urllib, and sees the
broker's denials; ``keybroker doctor`` against the running broker.
Node and undici: test_agent_env_node.py; git and the OpenAI SDK:
test_agent_env_tools.py."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent_env import (
    PLACEHOLDER,
    check_allowed,
    check_denied,
    keybroker,
    keybroker_env,
    run,
    sandbox,
)
from tests.support.net import free_port
from tests.support.proxy import Proxy
from tests.support.scenario import Scenario

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env_vars(broker: Proxy, sc: Scenario) -> dict[str, str]:
    return keybroker_env(broker, "acme", sc.acme.token)


@pytest.fixture
def agent(env_vars: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return sandbox(env_vars, tmp_path / "home")


# -- what `keybroker env` gives the sandbox ----------------------------------------------
def test_env_holds_proxy_credentials_and_a_bundle_with_the_broker_ca(
    env_vars: dict[str, str], broker: Proxy, sc: Scenario
) -> None:
    url = f"http://acme:{sc.acme.token}@127.0.0.1:{broker.port}"
    assert {
        k: env_vars[k] for k in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")
    } == dict.fromkeys(("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"), url)
    assert env_vars["NO_PROXY"] == env_vars["no_proxy"] == ""
    bundles = {
        env_vars[k]
        for k in (
            "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE",
            "CURL_CA_BUNDLE",
            "NODE_EXTRA_CA_CERTS",
            "GIT_SSL_CAINFO",
            "PIP_CERT",
            "AWS_CA_BUNDLE",
        )
    }
    assert len(bundles) == 1
    bundle = Path(bundles.pop())
    text = bundle.read_text()
    # (not parsed: system roots include certificates cryptography warns about)
    assert broker.ca_path.read_text().strip() in text, "the bundle must hold the broker CA"
    assert text.count("-----BEGIN CERTIFICATE-----") > 1, "and the system roots"
    assert env_vars["NODE_USE_ENV_PROXY"] == "1"
    from broker.cli.sandbox_env import TOOL_BUNDLE_VARS, TOOL_NO_PROXY_VARS, TOOL_PROXY_VARS

    tools = {*TOOL_BUNDLE_VARS, *TOOL_NO_PROXY_VARS, *TOOL_PROXY_VARS}
    assert len(set(env_vars) - tools) == 14  # the contract's variables; the rest are extensions
    assert {env_vars[k] for k in TOOL_BUNDLE_VARS} == {str(bundle)}


def test_shell_format_sources_to_the_same_values(
    env_vars: dict[str, str], broker: Proxy, sc: Scenario, tmp_path: Path
) -> None:
    out = keybroker(
        "env",
        "--config",
        str(broker.config),
        "--tenant",
        "acme",
        "--token",
        sc.acme.token,
        "--listen",
        f"127.0.0.1:{broker.port}",
    )
    assert out.returncode == 0, out.stderr
    (tmp_path / "agent.env").write_text(out.stdout)
    dump = run(
        ["sh", "-c", ". ./agent.env && env -0"], sandbox({}, tmp_path / "home"), cwd=tmp_path
    )
    assert dump.returncode == 0, dump.stderr
    got = dict(x.partition("=")[::2] for x in dump.stdout.split("\0") if x)
    assert {k: got.get(k) for k in env_vars} == env_vars


# -- curl ------------------------------------------------------------------------------
def test_curl(agent: dict[str, str], sc: Scenario, upstream: Any) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    upstream.clear()
    port = sc.upstream_port
    fmt = "\n%{http_code} %header{x-keybroker-decision}"
    ok = run(
        [
            "curl",
            "-sS",
            "--max-time",
            "20",
            "-H",
            f"Authorization: {PLACEHOLDER}",
            f"https://127.0.0.1:{port}/echo/agent-curl",
        ],
        agent,
    )
    assert ok.returncode == 0, ok.stderr
    check_allowed(upstream, sc.values["acme/stripe"], "/echo/agent-curl", ok.stdout)
    denied = run(
        [
            "curl",
            "-sS",
            "--max-time",
            "20",
            "-H",
            f"Authorization: {PLACEHOLDER}",
            "-w",
            fmt,
            f"https://localhost:{port}/echo/agent-curl-deny",
        ],
        agent,
    )
    assert denied.returncode == 0, denied.stderr
    body, _, tail = denied.stdout.rpartition("\n")
    status, _, decision = tail.partition(" ")
    check_denied(upstream, "/echo/agent-curl-deny", int(status), decision, body)


# -- Python clients, each reading only the environment ---------------------------------------
PY_CLIENT = r"""
import json, sys
client, urls = sys.argv[1], sys.argv[2:]
H = {"Authorization": "Bearer <<secret:stripe>>"}

def call(url):
    if client == "requests":
        import requests
        r = requests.get(url, headers=H, timeout=20)
        return r.status_code, r.headers.get("x-keybroker-decision", ""), r.text
    if client == "httpx":
        import httpx
        with httpx.Client(timeout=20) as c:
            r = c.get(url, headers=H)
        return r.status_code, r.headers.get("x-keybroker-decision", ""), r.text
    import urllib.error, urllib.request
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=H), timeout=20) as r:
            return r.status, r.headers.get("x-keybroker-decision", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("x-keybroker-decision", ""), e.read().decode()

print(json.dumps([call(u) for u in urls]))
"""


@pytest.mark.parametrize("client", ["requests", "httpx", "urllib"])
def test_python_client(client: str, agent: dict[str, str], sc: Scenario, upstream: Any) -> None:
    upstream.clear()
    port = sc.upstream_port
    ok_path, deny_path = f"/echo/agent-{client}", f"/echo/agent-{client}-deny"
    out = run(
        [
            sys.executable,
            "-c",
            PY_CLIENT,
            client,
            f"https://127.0.0.1:{port}{ok_path}",
            f"https://localhost:{port}{deny_path}",
        ],
        agent,
    )
    assert out.returncode == 0, out.stderr
    (ok_status, _, ok_body), (status, decision, body) = json.loads(out.stdout)
    assert ok_status == 200, ok_body
    check_allowed(upstream, sc.values["acme/stripe"], ok_path, out.stdout)
    check_denied(upstream, deny_path, status, decision, body)


def test_python_unknown_secret_and_whoami(
    agent: dict[str, str], sc: Scenario, upstream: Any
) -> None:
    script = r"""
import json, requests, sys
r = requests.get(sys.argv[1], headers={"Authorization": "<<secret:nope>>"}, timeout=20)
w = requests.get("https://keybroker.invalid/whoami", timeout=20)
print(json.dumps([r.status_code, r.headers.get("x-keybroker-decision"), r.text, w.json()]))
"""
    upstream.clear()
    path = "/echo/agent-unknown"
    out = run([sys.executable, "-c", script, f"https://127.0.0.1:{sc.upstream_port}{path}"], agent)
    assert out.returncode == 0, out.stderr
    status, decision, body, who = json.loads(out.stdout)
    check_denied(upstream, path, status, decision, body, reason="unknown_secret")
    assert who["tenant"] == "acme" and "stripe" in who["secrets"]


# -- keybroker doctor against the running broker ---------------------------------------
def doctor(broker: Proxy, token: str, listen: str | None = None) -> tuple[int, str]:
    out = keybroker(
        "doctor",
        "--config",
        str(broker.config),
        "--tenant",
        "acme",
        "--token",
        token,
        "--listen",
        listen or f"127.0.0.1:{broker.port}",
    )
    return out.returncode, out.stdout + out.stderr


def test_doctor_all_checks_pass(broker: Proxy, sc: Scenario) -> None:
    rc, text = doctor(broker, sc.acme.token)
    assert rc == 0, text
    steps = [ln for ln in text.splitlines() if ln[:1] in "✓✗-" and ln[2:3].isdigit()]
    assert [ln[:3] for ln in steps] == [f"✓ {n}" for n in range(1, 8)], text
    assert "/whoami: tenant 'acme'" in steps[6] and "stripe" in steps[6]
    assert sc.acme.token not in text


def test_doctor_wrong_token_names_the_broken_links(broker: Proxy, sc: Scenario) -> None:
    rc, text = doctor(broker, "kb_wrong-token")
    assert rc != 0, text
    assert "✗ 2 token does not match tenant 'acme'" in text
    assert "✗ 5 CONNECT keybroker.invalid:443: 407" in text
    assert "6 TLS inside the tunnel (skipped: needs step 5)" in text
    assert "✓ 4 proxy reachable" in text


def test_doctor_broker_not_running(broker: Proxy, sc: Scenario) -> None:
    rc, text = doctor(broker, sc.acme.token, listen=f"127.0.0.1:{free_port()}")
    assert rc != 0, text
    assert "✗ 4 cannot connect to the proxy" in text and "keybroker run" in text
    assert "5 CONNECT (skipped: needs step 4)" in text
