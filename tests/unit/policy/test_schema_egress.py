"""The ``egress`` policy keys (DESIGN.md §12): every key, its default and
every error, reported by file, field path and rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker.policy.load import PolicyError, parse_policy
from broker.policy.schema import Policy

SRC = "policy.yaml"
DIGEST = "a" * 64


def policy(egress: Any = None, **tenant: Any) -> dict[str, Any]:
    t: dict[str, Any] = {"token_sha256": DIGEST, **tenant}
    if egress is not None:
        t["egress"] = egress
    backends = {"b": {"type": "env"}}
    return {
        "version": 1,
        "audit": {"path": "a.jsonl"},
        "backends": backends,
        "tenants": {"acme": t},
    }


def parse(data: dict[str, Any]) -> Policy:
    return parse_policy(data, SRC, Path("/p"))


def errors_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse(data)
    return info.value.errors


def test_without_egress_there_is_no_allowlist() -> None:
    t = parse(policy()).tenants["acme"]
    assert t.egress is None and t.egress_rules.mode is None


def test_defaults_and_index() -> None:
    secrets = {
        "s": {"backend": "b", "path": "p", "hosts": ["api.stripe.com"], "ports": [443, 8443]}
    }
    t = parse(policy({"allow": ["api.openai.com", "*.gh.com:8443"]}, secrets=secrets)).tenants[
        "acme"
    ]
    assert t.egress is not None
    assert (t.egress.mode, t.egress.private) == ("enforce", ())
    r = t.egress_rules
    assert r.mode == "enforce"
    assert r.allows("api.openai.com", 443) and r.allows("x.gh.com", 8443)
    assert r.allows("api.stripe.com", 8443)  # a secret's hosts x ports
    assert not r.allows("api.stripe.com", 80)


def test_report_mode_and_private() -> None:
    t = parse(policy({"mode": "report", "private": ["10.0.0.0/8", "fd00::/8"]})).tenants["acme"]
    assert t.egress_rules.mode == "report" and len(t.egress_rules.networks) == 2


@pytest.mark.parametrize(
    ("egress", "field", "fragment"),
    [
        pytest.param({"mode": "audit"}, "egress.mode", "'enforce' or 'report'", id="mode"),
        pytest.param({"allow": ["*"]}, "egress.allow", "'*' alone", id="allow-star"),
        pytest.param({"allow": ["a.*.com"]}, "egress.allow", "leading", id="allow-inner-star"),
        pytest.param({"allow": ["x.com:0"]}, "egress.allow", "1-65535", id="allow-port"),
        pytest.param({"allow": "x.com"}, "egress.allow", "tuple", id="allow-not-a-list"),
        pytest.param({"private": ["10.0.0.1/8"]}, "egress.private", "host bits", id="cidr-bits"),
        pytest.param({"private": ["0.0.0.0/0"]}, "egress.private", "/0", id="cidr-everything"),
        pytest.param({"private": ["intranet"]}, "egress.private", "CIDR", id="cidr-name"),
        pytest.param({"deny": ["x.com"]}, "egress.deny", "unknown key", id="unknown-key"),
    ],
)
def test_errors_name_file_field_and_rule(egress: Any, field: str, fragment: str) -> None:
    errors = errors_of(policy(egress))
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{SRC}: tenants.acme.{field}"), errors
    assert fragment in errors[0], errors


def test_every_bad_entry_is_named() -> None:
    errors = errors_of(policy({"allow": ["*", "ok.com", "x:99999"], "private": ["a", "b/7"]}))
    assert len(errors) == 2, errors
    allow, private = sorted(errors)
    assert "'*'" in allow and "'x:99999'" in allow and "ok.com" not in allow
    assert "'a'" in private and "'b/7'" in private


def test_secret_hosts_are_keyed_like_destinations() -> None:
    """A secret host written as an odd IPv4 spelling names that address."""
    secrets = {"s": {"backend": "b", "path": "p", "hosts": ["2130706433", "*.corp.example"]}}
    r = parse(policy(None, secrets=secrets)).tenants["acme"].egress_rules
    assert r.names("127.0.0.1", 443) and r.allows("127.0.0.1", 443)
    assert r.allows("db.corp.example", 443) and not r.names("db.corp.example", 443)
