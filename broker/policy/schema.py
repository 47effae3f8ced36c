"""What a policy is (DESIGN.md §3): frozen pydantic models with the rules
each field must follow. Loading a file and reporting its errors by file,
field path and rule: :mod:`broker.policy.load`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    Field,
    PrivateAttr,
    StringConstraints,
    field_validator,
    model_validator,
)

from broker.egress.rules import EgressRules, EntryError, host_key, parse_entry, parse_network
from broker.governance.config import (
    AdminConfig,
    ApprovalsConfig,
    SessionsConfig,
    StateConfig,
    policy_problems,
)
from broker.policy.backend_config import BackendConfig
from broker.policy.model import Model as _Model
from broker.policy.model import raise_all as _raise_all
from broker.policy.secret_rule import SecretName, SecretRule

TENANT_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
TenantName = Annotated[str, StringConstraints(pattern=TENANT_NAME_RE.pattern)]


class CaptureRule(_Model):
    """Tokens an upstream issues, handed to the agent as placeholders (DESIGN.md §11)."""

    hosts: tuple[str, ...] = Field(min_length=1)
    paths: tuple[str, ...] | None = None
    json_fields: tuple[str, ...] = ()
    cookies: tuple[str, ...] = ()
    ttl: float = Field(default=3600.0, gt=0, le=7 * 86400)

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return SecretRule._hosts(v)

    @field_validator("paths")
    @classmethod
    def _paths(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return SecretRule._paths(v)

    @model_validator(mode="after")
    def _names_something(self) -> CaptureRule:
        if not self.json_fields and not self.cookies:
            raise ValueError("a capture names json_fields, cookies or both")
        return self


class Egress(_Model):
    """Where a tenant may connect at all (DESIGN.md §12)."""

    mode: Literal["enforce", "report"] = "enforce"
    allow: tuple[str, ...] = ()
    """``host``, ``*.suffix``, ``host:port`` or ``[v6]:port``; no port means 443."""
    private: tuple[str, ...] = ()
    """CIDRs of private addresses the tenant may reach."""

    @field_validator("allow")
    @classmethod
    def _allow(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        problems = []
        for entry in v:
            try:
                parse_entry(entry)
            except EntryError as exc:
                problems.append(f"allow {entry!r}: {exc}")
        _raise_all(problems)
        return v

    @field_validator("private")
    @classmethod
    def _private(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        problems = []
        for cidr in v:
            try:
                parse_network(cidr)
            except EntryError as exc:
                problems.append(f"private {cidr!r}: {exc}")
        _raise_all(problems)
        return v


class Tenant(_Model):
    token_sha256: str
    secrets: dict[SecretName, SecretRule] = Field(default_factory=dict)
    on_mismatch: Literal["deny", "forward"] = "deny"
    capture: tuple[CaptureRule, ...] = ()
    egress: Egress | None = None
    stream_deltas: Literal["scan", "off"] = "scan"
    """Extension (issue 12): ``scan`` joins the LLM deltas of this tenant's
    SSE responses per channel and scrubs the joined text, holding each delta
    until the longest pattern's length of text followed it
    (:mod:`broker.scrub.deltas`); ``off`` scrubs each event on its own, with
    no hold (a value split across deltas then reaches the agent in pieces)."""
    _egress_rules: EgressRules = PrivateAttr()

    def model_post_init(self, _context: object) -> None:
        # Indexed once per load: a check costs the same with 10 or 1,000 entries.
        e = self.egress
        destinations = [
            (h if h.startswith("*.") else host_key(h), p)
            for r in self.secrets.values()
            for h in r.hosts
            for p in r.ports
        ]
        if e is not None:
            destinations += [parse_entry(a) for a in e.allow]
        networks = [parse_network(c) for c in e.private] if e is not None else []
        self._egress_rules = EgressRules.build(e.mode if e else None, destinations, networks)

    @property
    def egress_rules(self) -> EgressRules:
        return self._egress_rules

    @field_validator("token_sha256")
    @classmethod
    def _digest(cls, v: str) -> str:
        d = v.strip().lower().removeprefix("sha256:")
        if not _SHA256_RE.match(d):
            if v.strip().startswith("kb_"):  # never echo the value: it is a live token
                raise ValueError(
                    "this looks like a tenant token, not its hash: put the sha256: line "
                    "`keybroker token new` printed here (or the output of "
                    '`printf %s "$TOKEN" | sha256sum`), and give the token itself only '
                    "to the sandbox"
                )
            raise ValueError("token_sha256 must be 64 hex digits (optionally 'sha256:' first)")
        return d


class AuditConfig(_Model):
    path: Path
    hmac_key_env: str | None = None
    """Environment variable holding a key: the chain becomes an HMAC chain (extension)."""
    rotate_bytes: int | None = Field(default=None, gt=0)
    """Rotate the file when it grows past this size (extension)."""
    fingerprints: bool = True
    """With a key, allow records carry a keyed fingerprint of each value used (extension)."""


class Limits(_Model):
    """Size limits (extension)."""

    max_request_body: int = Field(default=32 * 1024 * 1024, gt=0)
    max_decoded_response: int = Field(default=64 * 1024 * 1024, gt=0)
    stream_threshold: int = Field(default=1024 * 1024, gt=0)
    """Responses larger than this, without a length, or SSE are scrubbed as a stream."""


class Policy(_Model):
    version: Literal[1]
    listen: str = "127.0.0.1:8080"
    certs_dir: Path = Path("../certs")
    upstream_ca: Path | None = None
    audit: AuditConfig
    backends: dict[str, BackendConfig] = Field(default_factory=dict)
    tenants: dict[TenantName, Tenant] = Field(default_factory=dict)
    limits: Limits = Limits()
    state: StateConfig | None = None
    approvals: ApprovalsConfig = ApprovalsConfig()
    admin: AdminConfig | None = None
    sessions: SessionsConfig | None = None
    preload_unknown: Literal["refuse", "serve"] = "refuse"
    """Extension (issue 12): while a secret's value could not be preloaded
    (its backend unreachable or misconfigured), requests to the destinations
    it may be sent to are refused (``backend_unavailable``), since their
    responses could echo a value the scrubber does not know; ``serve``
    forwards them anyway (availability over that risk)."""

    @model_validator(mode="after")
    def _governance(self) -> Policy:
        _raise_all(policy_problems(self))
        return self

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_listen(v)
        return v


def parse_listen(v: str) -> tuple[str, int]:
    host, sep, port = v.rpartition(":")
    # isascii(): str.isdigit() also accepts "²" and other digits int() rejects or misreads.
    ok_port = port.isascii() and port.isdigit()
    if not sep or not host or not ok_port or not 1 <= int(port) <= 65535:
        raise ValueError(f"listen {v!r} must be HOST:PORT with a port in 1-65535")
    return host.strip("[]"), int(port)
