"""doctor's backend check (broker/cli/backend_check.py): each configured
backend is probed with one of its rules, through the broker's own backend
code; what this environment cannot check is a warning, not a failure; the
value read is never printed."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from broker.cli.backend_check import backend_advice
from broker.cli.doctor import run_doctor
from broker.policy.load import parse_policy
from broker.policy.schema import Policy
from broker.request.auth import token_digest
from tests.support.net import free_port

VALUE = "sk_live_doctor_0123456789abcdef"  # fake; never printed


def make_policy(tmp: Path, backends: dict[str, Any], secrets: dict[str, Any]) -> Policy:
    data = {
        "version": 1,
        "certs_dir": str(tmp / "certs"),
        "audit": {"path": str(tmp / "a.jsonl")},
        "backends": backends,
        "tenants": {
            "acme": {"token_sha256": token_digest("t"), "secrets": {"mine": secrets.pop("mine")}},
            "globex": {"token_sha256": token_digest("u"), "secrets": secrets},
        },
    }
    return parse_policy(data, "p.yaml", tmp)


def rule(backend: str, path: str = "P", field: str = "value") -> dict[str, Any]:
    return {"backend": backend, "path": path, "field": field, "hosts": ["api.example.com"]}


def test_each_backend_gets_one_line(tmp_path: Path) -> None:
    dead = f"https://127.0.0.1:{free_port()}"
    printer = [sys.executable, "-c", f"print({VALUE!r})"]
    policy = make_policy(
        tmp_path,
        {
            "local": {"type": "env"},
            "cli": {"type": "exec", "command": printer},
            "nocli": {"type": "exec", "command": ["kb-no-such-cli", "{path}"]},
            "dp": {"type": "doppler", "url": dead, "token_env": "DP_T", "timeout": 2},
            "dp_unset": {"type": "doppler", "token_env": "DP_UNSET"},
            "idle": {"type": "env"},
        },
        {
            "mine": rule("local", "KB_SET"),
            "also": rule("local", "KB_UNSET"),  # globex's, so acme's own rule is tried first
            "cli": rule("cli"),
            "nocli": rule("nocli"),
            "dp": rule("dp", "web/prd"),
            "dpu": rule("dp_unset", "web/prd"),
        },
    )
    lines = backend_advice(policy, "acme", {"KB_SET": VALUE, "DP_T": "dp.st.x"})
    got = [(a.level, a.what) for a in lines]
    assert got[0] == (
        "ok",
        "backend 'local' (env) answers: secret 'mine' of tenant 'acme' resolves",
    )
    assert got[1] == (
        "ok",
        "backend 'cli' (exec) answers: secret 'cli' of tenant 'globex' resolves",
    )
    assert got[2] == (
        "warn",
        "backend 'nocli' (exec): not checked here (kb-no-such-cli is not on this PATH)",
    )
    assert got[3][0] == "fail" and "gives backend_unavailable: " in got[3][1]
    assert "cannot connect" in got[3][1]
    assert got[4] == ("warn", "backend 'dp_unset' (doppler): not checked here (DP_UNSET not set)")
    assert got[5] == ("warn", "backend 'idle' (env): no secret uses it, not checked")
    assert all(VALUE not in a.what and VALUE not in a.fix for a in lines)


def test_a_missing_secret_fails_with_its_reason(tmp_path: Path) -> None:
    printer = [sys.executable, "-c", "import sys; sys.exit(sys.argv[1] == 'nope')", "{path}"]
    policy = make_policy(
        tmp_path,
        {"cli": {"type": "exec", "command": printer}, "local": {"type": "env"}},
        {"mine": rule("cli", "nope"), "other": rule("local", "KB_UNSET")},
    )
    cli, local = backend_advice(policy, "acme", {})
    assert cli.level == "fail"
    assert cli.what.startswith(
        "backend 'cli' (exec): secret 'mine' of tenant 'acme' gives secret_not_found"
    )
    assert "path and field" in cli.fix
    # the env backend's value lives in the broker's environment, not necessarily here
    assert (local.level, local.what) == (
        "warn",
        "backend 'local' (env): not checked here (KB_UNSET not set)",
    )


def test_doctor_prints_the_backend_lines_and_fails_on_a_failing_backend(tmp_path: Path) -> None:
    policy = {
        "version": 1,
        "listen": f"127.0.0.1:{free_port()}",
        "certs_dir": str(tmp_path / "certs"),
        "audit": {"path": str(tmp_path / "a.jsonl")},
        "backends": {"dp": {"type": "doppler", "url": f"https://127.0.0.1:{free_port()}",
                            "token_env": "DP_T", "timeout": 2}},
        "tenants": {"acme": {"token_sha256": token_digest("t"),
                             "secrets": {"mine": rule("dp", "web/prd")}}},
    }  # fmt: skip

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(policy))
    buf = io.StringIO()
    rc = run_doctor(path, "acme", "t", out=Console(file=buf, width=200), environ={"DP_T": "x"})
    text = buf.getvalue()
    assert rc == 1
    assert (
        "✗   backend 'dp' (doppler): secret 'mine' of tenant 'acme' gives backend_unavailable"
        in text
    )
    assert text.index("backend 'dp'") < text.index(" 3 ")  # with the policy, before the proxy
