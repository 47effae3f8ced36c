"""A standard two-tenant policy over a real upstream and a real OpenBao, with
unique canary values, shared by the integration tests and the demo."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _canary(label: str) -> str:
    return f"kbcanary_{label}_{secrets.token_hex(12)}"


@dataclass
class Tenant:
    name: str
    token: str = field(default_factory=lambda: "kb_" + secrets.token_urlsafe(24))

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.token.encode()).hexdigest()


@dataclass
class Scenario:
    """Values and names every integration test agrees on."""

    upstream_port: int
    vault_url: str
    upstream_ca: Path
    workdir: Path
    acme: Tenant = field(default_factory=lambda: Tenant("acme"))
    globex: Tenant = field(default_factory=lambda: Tenant("globex"))
    values: dict[str, str] = field(
        default_factory=lambda: {
            "acme/stripe": _canary("acmestripe"),
            "acme/basic": _canary("acmebasic"),
            "acme/anywhere": _canary("acmeanywhere"),
            "acme/rotating": _canary("rotating1"),
            "globex/stripe": _canary("globexstripe"),
            "env/local": _canary("envlocal"),
        }
    )
    mount: str = "secret"

    def canaries(self) -> list[str]:
        return list(self.values.values())

    def seed_vault(self, bao: Any) -> None:
        for path, value in self.values.items():
            if not path.startswith("env/"):
                bao.put_v2(path, {"api_key": value}, mount=self.mount)

    def env(self, vault_token: str) -> dict[str, str]:
        return {"KB_TEST_VAULT_TOKEN": vault_token, "KB_LOCAL_SECRET": self.values["env/local"]}

    def secret(self, path: str, **over: Any) -> dict[str, Any]:
        rule: dict[str, Any] = {
            "backend": "vault",
            "path": path,
            "field": "api_key",
            "hosts": ["127.0.0.1"],
            "ports": [self.upstream_port],
        }
        rule.update(over)
        return rule

    def policy(self, **over: Any) -> dict[str, Any]:
        p: dict[str, Any] = {
            "version": 1,
            "certs_dir": str(self.workdir / "certs"),
            "upstream_ca": str(self.upstream_ca),
            "audit": {"path": str(self.workdir / "audit" / "decisions.jsonl")},
            "backends": {
                "vault": {
                    "type": "vault",
                    "url": self.vault_url,
                    "token_env": "KB_TEST_VAULT_TOKEN",
                    "mount": self.mount,
                    "kv_version": 2,
                    "cache_ttl": 60,
                    "timeout": 3,
                },
                "local": {"type": "env"},
            },
            "tenants": {
                "acme": {
                    "token_sha256": self.acme.digest,
                    "secrets": {
                        "stripe": self.secret(
                            "acme/stripe",
                            methods=["GET", "POST"],
                            paths=[
                                "/echo*",
                                "/reflect*",
                                "/sse*",
                                "/chunked*",
                                "/compressed*",
                                "/large*",
                                "/redirect*",
                                "/ws*",
                                "/status/*",
                                "/reset*",
                            ],
                        ),
                        "basic": self.secret("acme/basic"),
                        "anywhere": self.secret(
                            "acme/anywhere",
                            locations=[
                                "header:authorization",
                                "header:x-api-key",
                                "query",
                                "path",
                                "body",
                            ],
                        ),
                        "getonly": self.secret("acme/stripe", methods=["GET"]),
                        "pathonly": self.secret("acme/stripe", paths=["/echo/allowed/*"]),
                        "otherport": self.secret("acme/stripe", ports=[1]),
                        "plainhttp": self.secret("acme/stripe", schemes=["http"]),
                        "rotating": self.secret("acme/rotating"),
                        "missing": self.secret("acme/does-not-exist"),
                        "local": {
                            "backend": "local",
                            "path": "KB_LOCAL_SECRET",
                            "hosts": ["127.0.0.1"],
                            "ports": [self.upstream_port],
                        },
                    },
                },
                "globex": {
                    "token_sha256": self.globex.digest,
                    "secrets": {"stripe": self.secret("globex/stripe")},
                },
            },
        }
        p.update(over)
        return p
