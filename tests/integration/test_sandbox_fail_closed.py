"""Every documented way of loading ``keybroker env`` into a sandbox stops the
sandbox when a step is broken (a wrong token, a missing policy, ``keybroker``
not on PATH), instead of starting an agent that goes direct with no proxy.

Real bash runs the exact lines README.md and docs/agents.md give; the
"agent" is ``echo AGENT_STARTED``."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

TOKEN = "kb_first_hour_token"
BIN = Path(sys.executable).parent  # the venv's bin: holds `keybroker`
STARTED = "AGENT_STARTED"


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    data = {
        "version": 1,
        "certs_dir": str(tmp_path / "certs"),
        "audit": {"path": str(tmp_path / "audit.jsonl")},
        "backends": {"local": {"type": "env"}},
        "tenants": {
            "acme": {
                "token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest(),
                "secrets": {"k": {"backend": "local", "path": "K", "hosts": ["a.example"]}},
            }
        },
    }
    path.write_text(yaml.safe_dump(data))
    return path


def _bash(
    script: str, cwd: Path, *, with_keybroker: bool = True
) -> subprocess.CompletedProcess[str]:
    path = f"{BIN}:/usr/bin:/bin" if with_keybroker else "/usr/bin:/bin"
    assert (BIN / "keybroker").exists(), "the venv has no keybroker script"
    env = {"PATH": path, "HOME": str(cwd), "LANG": "C.UTF-8", "KB_TOKEN": TOKEN}
    bash = shutil.which("bash") or "/bin/bash"
    return subprocess.run(
        [bash, "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# The documented forms, with {args} for the keybroker env arguments.
EVAL = 'eval "$(keybroker env {args} || echo \'exit 1\')"\necho "$HTTPS_PROXY"\necho ' + STARTED
EVAL_BARE = 'eval "$(keybroker env {args})"\necho ' + STARTED
FILE = (
    "keybroker env {args} > agent.env || echo 'exit 1' >> agent.env\n"
    '. ./agent.env\necho "$HTTPS_PROXY"\necho ' + STARTED
)
DOTENV = "keybroker env {args} --format dotenv > agent.env && echo " + STARTED


def _args(policy: Path, token_env: str = "KB_TOKEN", tenant: str = "acme") -> str:
    return f"--config {policy} --tenant {tenant} --token-env {token_env}"


@pytest.mark.parametrize("form", [EVAL, FILE, DOTENV], ids=["eval", "file", "dotenv"])
def test_a_working_step_starts_the_sandbox_with_the_proxy(
    form: str, policy: Path, tmp_path: Path
) -> None:
    out = _bash(form.format(args=_args(policy)), tmp_path)
    assert out.returncode == 0, out.stderr
    assert STARTED in out.stdout
    if form is not DOTENV:
        assert f"http://acme:{TOKEN}@127.0.0.1:8080" in out.stdout


BROKEN = {
    "wrong-token": lambda p: _args(p, token_env="WRONG"),
    "unknown-tenant": lambda p: _args(p, tenant="nobody"),
    "missing-policy": lambda p: _args(p.parent / "nope.yaml"),
    "bad-arguments": lambda p: f"--config {p} --tenant acme",
}


@pytest.mark.parametrize(
    "form", [EVAL, EVAL_BARE, FILE, DOTENV], ids=["eval", "eval-bare", "file", "dotenv"]
)
@pytest.mark.parametrize("broken", sorted(BROKEN))
def test_a_broken_step_stops_the_sandbox(
    form: str, broken: str, policy: Path, tmp_path: Path
) -> None:
    script = form.format(args=BROKEN[broken](policy))
    if broken == "wrong-token":
        script = "export WRONG=kb_not_the_token\n" + script
    out = _bash(script, tmp_path)
    assert STARTED not in out.stdout, (broken, out.stdout, out.stderr)
    assert out.returncode != 0
    assert out.stderr.strip(), "the reason is shown"


@pytest.mark.parametrize("form", [EVAL, FILE, DOTENV], ids=["eval", "file", "dotenv"])
def test_keybroker_not_on_path_stops_the_sandbox(form: str, policy: Path, tmp_path: Path) -> None:
    """README once switched from .venv/bin/keybroker to bare keybroker: the
    documented guard (`|| echo 'exit 1'`, `&&`) stops the script when the
    command is not found."""
    out = _bash(form.format(args=_args(policy)), tmp_path, with_keybroker=False)
    assert STARTED not in out.stdout, out.stdout
    assert out.returncode != 0


def test_a_dotenv_refusal_is_not_an_environment(policy: Path, tmp_path: Path) -> None:
    """What a failing `--format dotenv` writes is no NAME=value file: docker's
    --env-file rejects a name holding whitespace, and our own parser too."""
    _bash("export WRONG=x\n" + DOTENV.format(args=_args(policy, token_env="WRONG")), tmp_path)
    text = (tmp_path / "agent.env").read_text()
    assert text.strip(), "the refusal is written, not an empty file"
    first = text.splitlines()[0]
    name = first.partition("=")[0]
    assert " " in name, first
