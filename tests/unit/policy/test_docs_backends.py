"""The policies shown in docs/backends.md and the README's Backends section
load: every ``backends:`` block, with its tenants, passes ``keybroker check``'s
validation (a tenant's ``token_sha256`` added, as the docs leave it out)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.policy.load import parse_policy

REPO = Path(__file__).resolve().parents[3]
BLOCK = re.compile(r"```yaml\n(.*?)```", re.DOTALL)


def blocks() -> list[Any]:
    out = []
    for doc in ("docs/backends.md", "README.md"):
        for i, text in enumerate(BLOCK.findall((REPO / doc).read_text())):
            if not text.startswith("backends:"):
                continue  # other sections' fragments
            data = yaml.safe_load(text.replace("…", "x"))
            if isinstance(data, dict) and "backends" in data:
                out.append(pytest.param(data, id=f"{doc}#{i}"))
    return out


@pytest.mark.parametrize("data", blocks())
def test_documented_policy_loads(data: dict[str, Any]) -> None:
    for tenant in (data.get("tenants") or {}).values():
        tenant["token_sha256"] = hashlib.sha256(b"t").hexdigest()
    policy = parse_policy({"version": 1, "audit": {"path": "a.jsonl"}, **data}, "doc", REPO)
    assert policy.backends


def test_every_backend_type_has_a_documented_policy() -> None:
    types = {b["type"] for p in blocks() for b in p.values[0]["backends"].values()}
    assert types >= {
        "aws_secrets_manager",
        "onepassword_connect",
        "doppler",
        "infisical",
        "exec",
        "env",
    }
