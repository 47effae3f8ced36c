"""Governance keys in the policy: rates, durations and cross-section rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker.governance.config import needs_state, parse_duration, parse_rate
from broker.policy.load import PolicyError, parse_policy


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("60/minute", (60, 60)),
        ("1/second", (1, 1)),
        (" 5 / hour ", (5, 3600)),
        ("2/day", (2, 86400)),
    ],
)
def test_rate(text: str, want: tuple[int, int]) -> None:
    assert parse_rate(text) == want


@pytest.mark.parametrize("text", ["0/minute", "5/week", "5", "-1/second", "1.5/hour", "/minute"])
def test_bad_rate(text: str) -> None:
    with pytest.raises(ValueError, match="rate"):
        parse_rate(text)


@pytest.mark.parametrize(("text", "want"), [("2h", 7200), ("30m", 1800), ("90", 90), ("1d", 86400)])
def test_duration(text: str, want: int) -> None:
    assert parse_duration(text) == want


def _policy(tmp_path: Path, rule: dict[str, Any], **over: Any) -> Any:
    data: dict[str, Any] = {
        "version": 1,
        "audit": {"path": "a.jsonl"},
        "backends": {"l": {"type": "env"}},
        "tenants": {
            "acme": {
                "token_sha256": "a" * 64,
                "secrets": {"s": {"backend": "l", "path": "X", "hosts": ["a.com"], **rule}},
            }
        },
        **over,
    }
    return parse_policy(data, "p.yaml", tmp_path)


@pytest.mark.parametrize(
    ("rule", "over", "needle"),
    [
        ({"rate": "fast"}, {}, "rate 'fast'"),
        ({"max_uses": 0}, {}, "max_uses"),
        ({"approve": "sometimes"}, {}, "approve"),
        ({"approve_methods": ["po st"]}, {}, "approve_methods"),
        ({"approve": "always"}, {}, "needs an admin: section"),
        ({}, {"admin": {"token_sha256": "a" * 64}}, "tenant credentials can never approve"),
        ({}, {"admin": {"token_sha256": "b" * 64, "operators": {"al": "a" * 64}}}, "'al'"),
        ({}, {"admin": {"listen": "127.0.0.1:8080", "token_sha256": "b" * 64}}, "admin.listen"),
        ({}, {"state": {"url": "http://x"}}, "redis://"),
        ({}, {"sessions": {"key_env": "1 bad"}}, "key_env"),
        ({}, {"approvals": {"timeout": 0}}, "approvals.timeout"),
    ],
    ids=[
        "rate",
        "max_uses",
        "approve",
        "methods",
        "no admin",
        "admin is tenant",
        "operator is tenant",
        "admin on proxy port",
        "state url",
        "key_env",
        "timeout",
    ],
)
def test_policy_errors(
    tmp_path: Path, rule: dict[str, Any], over: dict[str, Any], needle: str
) -> None:
    with pytest.raises(PolicyError) as err:
        _policy(tmp_path, rule, **over)
    assert needle in str(err.value)


def test_valid_and_needs_state(tmp_path: Path) -> None:
    p = _policy(tmp_path, {})
    assert not needs_state(p) and p.state is None and p.approvals.timeout == 120
    p = _policy(
        tmp_path,
        {"rate": "60/minute", "max_uses": 1, "approve": "first_use", "approve_methods": ["post"]},
        admin={"token_sha256": "sha256:" + "B" * 64},
        state={"url": "redis://127.0.0.1:6379/0"},
    )
    assert needs_state(p) and p.tenants["acme"].secrets["s"].approve_methods == ("POST",)
    assert p.admin is not None and p.admin.token_sha256 == "b" * 64
