"""broker/policy/environment.py, and the schema checks a new user trips on
(method typos, a token pasted where its hash goes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.policy.environment import missing_variables
from broker.policy.load import PolicyError, parse_policy
from broker.policy.schema import Policy

TOKEN = "kb_Zt0PASTEDTOKENvalue"


def policy(**rule: object) -> dict[str, object]:
    return {
        "version": 1,
        "audit": {"path": "a.jsonl", "hmac_key_env": "AUDIT_KEY"},
        "backends": {"local": {"type": "env"}},
        "tenants": {
            "acme": {
                "token_sha256": "0" * 64,
                "secrets": {"k": {"backend": "local", "path": "K_VAR", "hosts": ["a.x"], **rule}},
            }
        },
    }


def load(data: dict[str, object]) -> Policy:
    return parse_policy(data, "p.yaml", Path("/etc/kb"))


def test_missing_variables_are_named() -> None:
    warnings = missing_variables(load(policy()), {})
    assert any("$K_VAR (env backend 'local')" in w and "secret_not_found" in w for w in warnings)
    assert any(w.startswith("audit.hmac_key_env: $AUDIT_KEY") for w in warnings)
    assert missing_variables(load(policy()), {"K_VAR": "v", "AUDIT_KEY": "k"}) == []


@pytest.mark.parametrize(
    ("method", "hint"),
    [("GTE", "did you mean GET?"), ("XYZZY", "e.g. GET, POST"), ("get", None), ("PROPFIND", None)],
)
def test_method_names_are_checked(method: str, hint: str | None) -> None:
    if hint is None:
        load(policy(methods=[method]))
        return
    with pytest.raises(PolicyError) as info:
        load(policy(methods=[method]))
    assert hint in info.value.errors[0] and "not a known HTTP method" in info.value.errors[0]


def test_a_token_pasted_as_its_hash_is_explained_without_echoing_it() -> None:
    data = policy()
    data["tenants"]["acme"]["token_sha256"] = TOKEN  # type: ignore[index]
    with pytest.raises(PolicyError) as info:
        load(data)
    [error] = info.value.errors
    assert "looks like a tenant token, not its hash" in error and "sha256sum" in error
    assert TOKEN not in error
