"""npm behind the broker (issue 14.5). A global npmrc with its own ``cafile``
(as on machines behind a TLS-inspecting proxy) and a user npmrc naming
another proxy both lose to what ``keybroker env`` sets (``npm_config_*``):
``npm ping`` reaches a local HTTPS registry through the real broker, with
the registry token written as a placeholder in the npmrc. Without
``npm_config_cafile`` the same run fails the way users saw it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import make_broker
from tests.support.agent_env import keybroker_env, run, sandbox
from tests.support.leaks import assert_no_leak
from tests.support.openbao import OpenBao
from tests.support.proxy import Proxy
from tests.support.scenario import Scenario
from tests.support.tlsca import TestCA

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def npm_broker(
    sc: Scenario, openbao: OpenBao, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    """npm verifies an IP-literal registry behind a proxy against "localhost"
    (a client quirk), so the registry is https://localhost:PORT, and the
    registry token's rule names that host."""
    tenants = sc.policy()["tenants"]
    tenants["acme"]["secrets"]["npm"] = sc.secret("acme/stripe", hosts=["localhost"])
    with make_broker(sc, openbao, tmp_path_factory.mktemp("npm-broker"), tenants=tenants) as p:
        yield p


@pytest.fixture
def npm_agent(npm_broker: Proxy, sc: Scenario, tmp_path: Path) -> tuple[str, dict[str, str], str]:
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed")
    broker = npm_broker
    registry = f"https://localhost:{sc.upstream_port}/echo/npm/"
    other_ca = TestCA(tmp_path / "corp", "corp egress CA").ca_path
    global_rc = tmp_path / "global-npmrc"
    global_rc.write_text(f"cafile={other_ca}\nstrict-ssl=true\n")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".npmrc").write_text(
        "https-proxy=http://127.0.0.1:9/\nproxy=http://127.0.0.1:9/\n"
        f"//localhost:{sc.upstream_port}/echo/npm/:_authToken=<<secret:npm>>\n"
    )
    env = sandbox(keybroker_env(broker, "acme", sc.acme.token), home)
    env |= {"npm_config_globalconfig": str(global_rc), "npm_config_fetch_retries": "0",
            "npm_config_update_notifier": "false", "npm_config_cache": str(tmp_path / "cache")}  # fmt: skip
    return npm, env, registry


def test_npm_ping_through_the_broker_despite_npmrc(
    npm_agent: tuple[str, dict[str, str], str], sc: Scenario, upstream: Any
) -> None:
    npm, env, registry = npm_agent
    upstream.clear()
    out = run([npm, "ping", "--registry", registry], env, timeout=90)
    assert out.returncode == 0, out.stdout + out.stderr
    got = [r for r in upstream.received if r.path.startswith("/echo/npm/-/ping")]
    assert got, "the registry was reached"
    assert got[0].header("authorization") == f"Bearer {sc.values['acme/stripe']}"
    assert_no_leak((out.stdout + out.stderr).encode(), sc.values["acme/stripe"].encode(), "npm")


def test_without_npm_config_cafile_the_npmrc_cafile_wins(
    npm_agent: tuple[str, dict[str, str], str], upstream: Any
) -> None:
    """The control: the failure users saw (and so the test above can fail)."""
    npm, env, registry = npm_agent
    env = {k: v for k, v in env.items() if k != "npm_config_cafile"}
    out = run([npm, "ping", "--registry", registry], env, timeout=90)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert any(
        code in text
        for code in ("UNABLE_TO_VERIFY_LEAF_SIGNATURE", "SELF_SIGNED_CERT_IN_CHAIN",
                     "UNABLE_TO_GET_ISSUER_CERT_LOCALLY")
    ), text  # fmt: skip
