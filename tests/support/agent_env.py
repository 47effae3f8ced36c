"""An agent sandbox made of nothing but ``keybroker env``'s output: helpers
for the end-to-end client tests (tests/integration/test_agent_env*.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.leaks import assert_no_leak
from tests.support.proxy import REPO, Proxy
from tests.support.upstream import Upstream


def parse_dotenv(text: str) -> dict[str, str]:
    """``NAME=value`` lines, values literal (as ``docker run --env-file`` reads them)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"not a dotenv line: {line!r}"
            out[name] = value
    return out


def keybroker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``keybroker ARGS`` as the operator runs it (this machine's environment)."""
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def keybroker_env(proxy: Proxy, tenant: str, token: str) -> dict[str, str]:
    """What ``keybroker env --format dotenv`` prints for ``proxy``'s policy file."""
    out = keybroker(
        "env",
        "--config",
        str(proxy.config),
        "--tenant",
        tenant,
        "--token",
        token,
        "--listen",
        f"127.0.0.1:{proxy.port}",
        "--format",
        "dotenv",
    )
    assert out.returncode == 0, out.stderr
    return parse_dotenv(out.stdout)


def sandbox(env_vars: dict[str, str], home: Path) -> dict[str, str]:
    """A minimal base (PATH, HOME, LANG) plus exactly ``env_vars``: no CA or
    proxy variable of this machine leaks in. ``home`` is empty, so no
    ~/.gitconfig, ~/.curlrc or ~/.npmrc applies either."""
    home.mkdir(parents=True, exist_ok=True)
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}
    return {**base, **env_vars}


def run(
    cmd: list[str], env: dict[str, str], *, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd,
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


PLACEHOLDER = "Bearer <<secret:stripe>>"


def check_allowed(upstream: Upstream, value: str, path: str, output: str) -> None:
    """The upstream got ``Bearer <value>`` on ``path`` (once); the client's
    output holds the placeholder the echo was scrubbed back to, never the value."""
    got = [r for r in upstream.received if r.path == path]
    assert len(got) == 1, f"expected one request on {path}, got {len(got)}"
    assert got[0].header("authorization") == f"Bearer {value}"
    assert_no_leak(output.encode(), value.encode(), "the client's output")
    assert PLACEHOLDER in output, "the echoed header comes back as the placeholder"


def check_denied(
    upstream: Upstream,
    path: str,
    status: int,
    decision: str,
    body: str,
    reason: str = "host_not_allowed",
) -> None:
    """A keybroker denial as the client surfaced it; nothing reached the upstream."""
    assert status == 403, body
    assert decision == f"deny; reason={reason}"
    assert json.loads(body)["reason"] == reason
    assert not [r for r in upstream.received if r.path == path], "nothing sent upstream"
