"""The backend section of a policy (broker/policy/backend_config.py): each
type's keys, defaults and rules, and the path shape each type wants of a
secret rule, reported by file and field path like every policy error."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from broker.policy.backend_config import (
    AwsSecretsManagerBackend,
    DopplerBackend,
    ExecBackend,
    InfisicalBackend,
    OnePasswordConnectBackend,
    rule_problem,
)
from broker.policy.load import PolicyError, parse_policy

DIGEST = hashlib.sha256(b"t").hexdigest()

GOOD: dict[str, dict[str, Any]] = {
    "aws": {"type": "aws_secrets_manager", "region": "us-east-1"},
    "op": {"type": "onepassword_connect", "url": "https://op:8080", "token_env": "OP_TOKEN"},
    "doppler": {"type": "doppler", "token_env": "DOPPLER_TOKEN"},
    "infisical": {
        "type": "infisical",
        "client_id_env": "INF_ID",
        "client_secret_env": "INF_SECRET",
    },
    "cli": {"type": "exec", "command": ["op", "read", "op://{path}/{field}"], "timeout": 5},
}


def policy(backends: dict[str, Any], path: str = "a/b", backend: str = "op") -> dict[str, Any]:
    return {
        "version": 1,
        "audit": {"path": "audit.jsonl"},
        "backends": backends,
        "tenants": {
            "acme": {
                "token_sha256": DIGEST,
                "secrets": {"s": {"backend": backend, "path": path, "hosts": ["api.example.com"]}},
            }
        },
    }


def errors(data: dict[str, Any]) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(data, "p.yaml", Path("/base"))
    return info.value.errors


def test_every_type_loads_with_its_defaults() -> None:
    p = parse_policy(policy(GOOD), "p.yaml", Path("/base"))
    assert isinstance(p.backends["aws"], AwsSecretsManagerBackend)
    assert p.backends["aws"].endpoint_url is None and p.backends["aws"].cache_ttl == 60
    assert isinstance(p.backends["op"], OnePasswordConnectBackend)
    d = p.backends["doppler"]
    assert isinstance(d, DopplerBackend) and d.url == "https://api.doppler.com"
    i = p.backends["infisical"]
    assert isinstance(i, InfisicalBackend) and i.url == "https://app.infisical.com"
    e = p.backends["cli"]
    assert isinstance(e, ExecBackend) and e.env_pass == () and e.timeout == 5


def test_relative_ca_cert_resolves_against_the_policy_folder() -> None:
    b = {**GOOD, "op": {**GOOD["op"], "ca_cert": "certs/op.pem"}}
    p = parse_policy(policy(b), "p.yaml", Path("/base"))
    assert p.backends["op"].ca_cert == Path("/base/certs/op.pem")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        pytest.param("aws", {"regoin": "x"}, "backends.aws.regoin: unknown key", id="aws-typo"),
        pytest.param(
            "aws", {"endpoint_url": "ftp://x"}, "backends.aws.endpoint_url: url must", id="aws-url"
        ),
        pytest.param("op", {"token_env": None}, "backends.op.token_env", id="op-no-token"),
        pytest.param("op", {"url": "op:8080"}, "backends.op.url: url must", id="op-url"),
        pytest.param(
            "op",
            {"url": "https://u:p@op:8080"},
            "must not hold credentials",
            id="op-url-credentials",
        ),
        pytest.param(
            "doppler", {"token_env": "DOPPLER-TOKEN"}, "not environment variable", id="env-name"
        ),
        pytest.param(
            "infisical", {"client_secret_env": None}, "client_secret_env", id="inf-no-secret"
        ),
        pytest.param("cli", {"command": []}, "backends.cli.command", id="exec-empty"),
        pytest.param(
            "cli", {"command": ["{path}", "x"]}, "command[0] must name", id="exec-template-program"
        ),
        pytest.param(
            "cli",
            {"command": ["op", "read", "{path.__class__}"]},
            "only {path} and {field}",
            id="exec-format-attack",
        ),
        pytest.param("cli", {"env_pass": ["A B"]}, "not environment variable", id="exec-env"),
        pytest.param("cli", {"timeout": 0}, "backends.cli.timeout", id="exec-timeout"),
        pytest.param("doppler", {"cache_ttl": -1}, "backends.doppler.cache_ttl", id="ttl"),
    ],
)
def test_bad_keys_are_reported_by_field_path(
    name: str, change: dict[str, Any], message: str
) -> None:
    cfg = {k: v for k, v in {**GOOD[name], **change}.items() if v is not None}
    errs = errors(policy({**GOOD, name: cfg}))
    assert any(message in e and e.startswith("p.yaml: ") for e in errs), errs


@pytest.mark.parametrize(
    ("backend", "path", "ok"),
    [
        ("op", "Private/Stripe", True),
        ("op", "Private/Stripe/live", True),  # an item title may hold "/"
        ("op", "Private", False),
        ("op", "/Stripe", False),
        ("doppler", "web/prd", True),
        ("doppler", "web", False),
        ("doppler", "web/prd/x", False),
        ("infisical", "6f1e/prod", True),
        ("infisical", "6f1e/prod/payments/stripe", True),
        ("infisical", "6f1e", False),
        ("infisical", "6f1e/prod/", False),
        ("aws", "anything/at/all", True),
        ("cli", "x", True),
    ],
)
def test_rule_path_shape_per_backend(backend: str, path: str, ok: bool) -> None:
    data = policy(GOOD, path=path, backend=backend)
    if ok:
        parse_policy(data, "p.yaml", Path("/base"))
    else:
        problem = rule_problem(GOOD[backend]["type"], path)
        assert problem is not None and path in problem
        assert errors(data) == [f"p.yaml: tenants.acme.secrets.s.path: {problem}"]


# --- plain http only to loopback (review finding 12) ----------------------------------------------

VAULT = {"type": "vault", "url": "https://vault:8200", "token_env": "VAULT_TOKEN"}


@pytest.mark.parametrize(
    ("name", "cfg", "field"),
    [
        pytest.param("op", {**GOOD["op"], "url": "http://op-connect.internal:8080"}, "op.url"),
        pytest.param("doppler", {**GOOD["doppler"], "url": "http://api.doppler.com"}, "doppler"),
        pytest.param("infisical", {**GOOD["infisical"], "url": "http://10.0.0.5"}, "infisical"),
        pytest.param("vault", {**VAULT, "url": "http://vault.internal:8200"}, "vault"),
        pytest.param("aws", {**GOOD["aws"], "endpoint_url": "http://sm.example"}, "aws"),
        pytest.param(
            "op", {**GOOD["op"], "url": "http://127.0.0.1.evil.com"}, "op", id="lookalike"
        ),
    ],
)
def test_plain_http_to_a_remote_host_is_refused(name: str, cfg: dict[str, Any], field: str) -> None:
    errs = errors(policy({**GOOD, name: cfg}))
    assert any(
        e.startswith(f"p.yaml: backends.{field}") and "http:// only to a loopback host" in e
        for e in errs
    ), errs


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080", "http://127.9.9.9"],
)
def test_plain_http_to_loopback_and_https_anywhere_load(url: str) -> None:
    b = {
        **GOOD,
        "op": {**GOOD["op"], "url": url},
        "doppler": {**GOOD["doppler"], "url": "https://doppler.internal"},
        "vault": {**VAULT, "url": url},
    }
    p = parse_policy(policy(b), "p.yaml", Path("/base"))
    assert p.backends["op"].url == url  # type: ignore[union-attr]
