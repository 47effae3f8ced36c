"""Credential kinds in the policy (DESIGN.md §11): kind-specific keys only on
their kind, required keys present, errors naming the rule broken."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from broker.policy.schema import CaptureRule
from broker.policy.secret_rule import SecretRule

BASE: dict[str, Any] = {"backend": "vault", "path": "p", "hosts": ["api.example.com"]}


def test_static_is_the_default_kind() -> None:
    assert SecretRule(**BASE).kind == "static"


def test_aws_defaults_to_authorization_and_query() -> None:
    rule = SecretRule(**BASE, kind="aws_sigv4", services=["s3"], regions=["us-east-1"])
    assert rule.locations == ("header:authorization", "query")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        pytest.param(
            {"services": ["s3"]}, "services is only valid for kind aws_sigv4", id="services-static"
        ),
        pytest.param(
            {"kind": "github_app", "token_url": "https://t"},
            "token_url is only valid",
            id="token-url-gh",
        ),
        pytest.param({"kind": "oauth2_refresh"}, "needs token_url", id="oauth-no-url"),
        pytest.param(
            {"kind": "oauth2_refresh", "token_url": "http://t"},
            "must start with https://",
            id="oauth-http",
        ),
        pytest.param(
            {"kind": "aws_sigv4", "locations": ["body"]}, "takes locations", id="aws-body"
        ),
        pytest.param(
            {"kind": "oauth2_refresh", "token_url": "https://t", "token_auth": "x"},
            "token_auth",
            id="bad-auth",
        ),
        pytest.param({"kind": "kerberos"}, "kind", id="unknown-kind"),
    ],
)
def test_kind_rules(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as err:
        SecretRule(**{**BASE, **extra})
    assert message in str(err.value)


def test_capture_needs_something_to_capture() -> None:
    with pytest.raises(ValidationError, match="json_fields, cookies or both"):
        CaptureRule(hosts=["login.example.com"])
    rule = CaptureRule(hosts=["Login.Example.com"], json_fields=["access_token"], ttl=60)
    assert rule.hosts == ("login.example.com",)


def test_an_env_backend_cannot_hold_a_multi_field_kind(tmp_path: Any) -> None:
    from broker.policy.load import PolicyError, parse_policy

    data = {
        "version": 1,
        "audit": {"path": "a.jsonl"},
        "backends": {"local": {"type": "env"}},
        "tenants": {
            "acme": {
                "token_sha256": "0" * 64,
                "secrets": {"aws": {**BASE, "backend": "local", "kind": "aws_sigv4"}},
            }
        },
    }
    with pytest.raises(PolicyError) as err:
        parse_policy(data, "p.yaml", tmp_path)
    assert any(
        "tenants.acme.secrets.aws.backend" in e and "env backend" in e for e in err.value.errors
    )
