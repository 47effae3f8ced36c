"""``keybroker doctor`` against the running broker says when a client can go
around it: a shell without the proxy variables, a destination reachable
directly, a Node whose ``fetch()`` ignores the proxy (issue 14.1, 14.5)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.agent_env import keybroker_env
from tests.support.proxy import REPO, Proxy
from tests.support.scenario import Scenario

pytestmark = pytest.mark.integration


def doctor(
    broker: Proxy, sc: Scenario, env: dict[str, str], *extra: str
) -> subprocess.CompletedProcess[str]:
    base = {"PATH": env.get("PATH", os.environ["PATH"]), "HOME": env.get("HOME", "/nonexistent")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "broker.cli",
            "doctor",
            "--config",
            str(broker.config),
            "--tenant",
            "acme",
            "--token",
            sc.acme.token,
            "--listen",
            f"127.0.0.1:{broker.port}",
            *extra,
        ],
        cwd=REPO,
        env={**base, **env, "COLUMNS": "250", "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def fake_node(tmp_path: Path, version: str) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    node = bin_dir / "node"
    node.write_text(f"#!/bin/sh\necho {version}\n")
    node.chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}"


def test_a_shell_without_the_proxy_and_direct_egress_are_called_out(
    broker: Proxy, sc: Scenario, tmp_path: Path
) -> None:
    out = doctor(broker, sc, {"PATH": fake_node(tmp_path, "v20.20.2")})
    text = out.stdout + out.stderr
    assert out.returncode == 0, text  # warnings, not failures: the chain itself works
    assert "⚠   HTTPS_PROXY is not set in this shell" in text
    # The scenario's secrets live on 127.0.0.1:<upstream>: reachable without the proxy.
    assert f"⚠   direct egress is possible: 127.0.0.1:{sc.upstream_port}" in text
    assert "⚠   node v20.20 on PATH ignores NODE_USE_ENV_PROXY" in text
    assert sc.acme.token not in text


def test_a_sandbox_shell_from_keybroker_env_passes(
    broker: Proxy, sc: Scenario, tmp_path: Path
) -> None:
    env = keybroker_env(broker, "acme", sc.acme.token)
    out = doctor(broker, sc, {**env, "PATH": fake_node(tmp_path, "v24.11.0")})
    text = out.stdout + out.stderr
    assert f"✓   this shell's HTTPS_PROXY is the broker at 127.0.0.1:{broker.port}" in text
    assert "✓   node v24.11 honours NODE_USE_ENV_PROXY" in text


def test_upstream_the_broker_trusts(broker: Proxy, sc: Scenario) -> None:
    out = doctor(broker, sc, {}, "--upstream", f"127.0.0.1:{sc.upstream_port}")
    text = out.stdout + out.stderr
    assert f"✓   GET https://127.0.0.1:{sc.upstream_port}/ through the broker" in text, text
    assert "upstream TLS verified" in text
