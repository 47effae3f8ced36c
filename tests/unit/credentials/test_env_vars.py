"""``keybroker env`` for a tenant with an aws_sigv4 secret (DESIGN.md §11)."""

from __future__ import annotations

from pathlib import Path

from broker.cli.sandbox_env import AWS_DUMMY_SECRET, credential_vars
from broker.policy.load import parse_policy


def policy(tmp_path: Path, secrets: dict[str, object]) -> object:
    data = {
        "version": 1,
        "audit": {"path": "a.jsonl"},
        "backends": {"v": {"type": "vault", "url": "http://127.0.0.1:1", "token_env": "T"}},
        "tenants": {"acme": {"token_sha256": "0" * 64, "secrets": secrets}},
    }
    return parse_policy(data, "p.yaml", tmp_path)


def test_aws_variables_name_the_first_aws_secret(tmp_path: Path) -> None:
    aws = {"backend": "v", "path": "p", "hosts": ["*.amazonaws.com"], "kind": "aws_sigv4"}
    p = policy(tmp_path, {"zz": {**aws, "regions": ["eu-west-1"]}, "aa": aws})
    assert credential_vars(p, "acme") == [  # type: ignore[arg-type]
        ("AWS_ACCESS_KEY_ID", "<<secret:aa>>"),
        ("AWS_SECRET_ACCESS_KEY", AWS_DUMMY_SECRET),
    ]


def test_no_aws_secret_no_aws_variables(tmp_path: Path) -> None:
    p = policy(tmp_path, {"s": {"backend": "v", "path": "p", "hosts": ["api.example.com"]}})
    assert credential_vars(p, "acme") == []  # type: ignore[arg-type]
    assert credential_vars(p, "nobody") == []  # type: ignore[arg-type]
