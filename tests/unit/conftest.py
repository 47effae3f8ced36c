"""Builders the unit tests share (plain functions: import them from here)."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from broker.policy.load import parse_policy
from broker.policy.schema import Policy


def basic(user: str, token: str, scheme: str = "Basic") -> str:
    """A ``Proxy-Authorization``/``Authorization`` value for ``user:token``."""
    return f"{scheme} " + base64.b64encode(f"{user}:{token}".encode()).decode()


def one_secret_policy(tmp_path: Path, token: str) -> Policy:
    """Tenant ``acme`` (``token``) with one env-backed secret ``api`` (the
    broker's ``API_KEY``) for ``api.example.com``; audit and CA in ``tmp_path``."""
    return parse_policy(
        {
            "version": 1,
            "certs_dir": str(tmp_path / "certs"),
            "audit": {"path": str(tmp_path / "audit.jsonl")},
            "backends": {"local": {"type": "env"}},
            "tenants": {
                "acme": {
                    "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
                    "secrets": {
                        "api": {"backend": "local", "path": "API_KEY", "hosts": ["api.example.com"]}
                    },
                }
            },
        },
        "t.yaml",
        tmp_path,
    )
