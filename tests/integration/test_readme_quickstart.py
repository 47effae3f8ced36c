"""README's quickstart, followed literally (issue 14.6): its shell blocks are
read from README.md and run by bash in a copy of the clone's layout (the
venv linked in as ``.venv``), with only what a reader must type filled in:
the pasted ``sha256:`` line, the exported values, a free port, and the
``curl`` aimed at the broker's own ``/whoami`` (no internet here). A README
edit that breaks a step breaks this test."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.net import free_port
from tests.support.openbao import OpenBao
from tests.support.proxy import REPO

pytestmark = pytest.mark.integration


def quickstart_blocks() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("Then, for your own agents") : text.index("## Commands")]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 3, "install, broker, sandbox"
    return [[ln for ln in b.splitlines() if ln.strip()] for b in blocks]


def fill(line: str, token: str, vault_token: str = "") -> str:
    """What the reader types where README shows an ellipsis."""
    code = line.split("  #", 1)[0].rstrip()
    if code.startswith("export VAULT_TOKEN="):
        return f"export VAULT_TOKEN={vault_token}"
    if code == "make install":
        return "true  # make install: done, .venv is linked in"
    if code.startswith("export KB_TOKEN="):
        return f"export KB_TOKEN={token}"
    if code.startswith("export ") and "…" in code:
        return code.replace("…", "value-typed-by-the-reader")
    if code.startswith("keybroker run "):
        return (
            code + " --quiet > run.log 2>&1 &\necho $! > run.pid\n"
            'for i in $(seq 150); do curl -s -o /dev/null "http://$LISTEN" && break; sleep 0.1; done'
        )
    if code.startswith("curl "):
        return "curl -sS --max-time 20 https://keybroker.invalid/whoami; echo"
    return code


@pytest.fixture
def openbao() -> Iterator[OpenBao]:
    """A vault of its own: the quickstart writes acme/stripe, which the
    session's shared vault holds for every other integration test."""
    with OpenBao() as bao:
        yield bao


def test_readme_quickstart_runs_as_written(tmp_path: Path, openbao: OpenBao) -> None:
    openbao.put_v2("acme/stripe", {"api_key": "kbcanary_quickstart_stripe"})
    install, broker, sandbox = quickstart_blocks()
    (tmp_path / "config").mkdir()
    shutil.copy(REPO / "config" / "policy.example.yaml", tmp_path / "config")
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    listen = f"127.0.0.1:{free_port()}"

    def bash(lines: list[str], token: str = "") -> subprocess.CompletedProcess[str]:
        filled = (fill(x, token, openbao.root_token) for x in lines)
        script = "\n".join(["set -e", f"export LISTEN={listen}", *filled])
        return subprocess.run(
            ["bash", "-c", script],
            cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    first = bash(install)
    assert first.returncode == 0, first.stderr
    token, digest = first.stdout.split()[:2]
    assert token.startswith("kb_") and digest.startswith("sha256:")
    # The edit README asks for: paste the sha256: line as tenants.acme.token_sha256.
    policy = tmp_path / "config" / "policy.yaml"
    text = policy.read_text()
    acme = re.search(r"(\n  acme:.*?token_sha256: )(\S+)", text, re.DOTALL)
    assert acme is not None
    text = text[: acme.start(2)] + digest + text[acme.end(2) :]
    text = text.replace("listen: 127.0.0.1:8080", f"listen: {listen}")
    policy.write_text(text.replace("url: http://127.0.0.1:8200", f"url: {openbao.url}"))

    both = broker + sandbox
    try:
        out = bash(['export PATH="$PWD/.venv/bin:$PATH"', *both], token)
        log = (tmp_path / "run.log").read_text() if (tmp_path / "run.log").exists() else ""
        assert out.returncode == 0, out.stdout + out.stderr + log
        assert "valid (2 tenants, 5 secrets, 2 backends)" in out.stdout
        assert "✓ 7 /whoami: tenant 'acme'" in out.stdout, out.stdout + out.stderr
        assert '{"tenant": "acme"' in out.stdout, out.stdout
        assert token not in out.stdout + out.stderr + log
    finally:
        pid_file = tmp_path / "run.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
