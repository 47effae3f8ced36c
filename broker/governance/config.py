"""Policy shapes for governance of use (DESIGN.md §13): the shared state
store, approvals, the operator API and session tokens, and the rules a
secret's ``rate`` must follow. :mod:`broker.policy.schema` embeds them."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from broker.policy.schema import Policy

_RATE_RE = re.compile(r"^\s*(\d{1,9})\s*/\s*(second|minute|hour|day)\s*$")
WINDOWS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DURATION_RE = re.compile(r"^\s*(\d{1,9})\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

Approve = Literal["never", "first_use", "always"]


def parse_rate(text: str) -> tuple[int, int]:
    """``"60/minute"`` -> ``(60, 60)``: at most N uses in any window of that many seconds."""
    m = _RATE_RE.match(text)
    if m is None or int(m.group(1)) < 1:
        raise ValueError(f"rate {text!r} must be N/second, N/minute, N/hour or N/day with N >= 1")
    return int(m.group(1)), WINDOWS[m.group(2)]


def parse_duration(text: str) -> int:
    """``"2h"`` -> 7200; units s, m, h, d; a bare number is seconds."""
    m = _DURATION_RE.match(text)
    if m is None or int(m.group(1)) < 1:
        raise ValueError(f"duration {text!r} must be a positive number with s, m, h or d")
    return int(m.group(1)) * _UNITS[m.group(2)]


def _digest(v: str) -> str:
    d = v.strip().lower().removeprefix("sha256:")
    if not _SHA256_RE.match(d):
        raise ValueError("must be 64 hex digits (optionally 'sha256:' first)")
    return d


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StateConfig(_Model):
    url: str
    """redis://, rediss:// or unix:// (Redis or Valkey)."""
    prefix: str = Field(default="keybroker:", min_length=1, max_length=64)
    """Key prefix, so several deployments can share one store (extension)."""
    timeout: float = Field(default=1.0, gt=0, le=30)
    """Seconds for one store operation before it counts as down (extension)."""
    password_env: str | None = None
    """Environment variable holding the store's password, kept out of the
    policy file (extension)."""

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^(redis|rediss|unix)://", v):
            raise ValueError("url must start with redis://, rediss:// or unix://")
        return v


class ApprovalsConfig(_Model):
    timeout: float = Field(default=120, gt=0, le=3600)
    remember: float = Field(default=86400, ge=0)
    max_pending: int = Field(default=20, ge=1, le=1000)
    """Requests one tenant may have awaiting approval at once; beyond it 429
    ``rate_limited`` (extension: one tenant cannot flood the list)."""


class AdminConfig(_Model):
    listen: str = "127.0.0.1:8081"
    token_sha256: str
    operators: dict[str, str] = Field(default_factory=dict)
    """Named operator tokens (``name: sha256``), so the audit says who
    approved (extension); ``token_sha256`` is the operator ``admin``."""

    @field_validator("token_sha256")
    @classmethod
    def _token(cls, v: str) -> str:
        return _digest(v)

    @field_validator("operators")
    @classmethod
    def _operators(cls, v: dict[str, str]) -> dict[str, str]:
        out, problems = {}, []
        for name, digest in v.items():
            try:
                if not re.match(r"^[A-Za-z0-9_.@-]{1,64}$", name):
                    raise ValueError("names are letters, digits, '.', '_', '@' or '-'")
                out[name] = _digest(digest)
            except ValueError as exc:
                problems.append(f"operator {name!r}: {exc}")
        if problems:
            raise ValueError("; ".join(problems))
        return out

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        from broker.policy.schema import parse_listen

        parse_listen(v)
        return v

    def digests(self) -> dict[str, str]:
        """Operator name by token digest."""
        return {self.token_sha256: "admin", **{d: n for n, d in self.operators.items()}}


class SessionsConfig(_Model):
    key_env: str = "KEYBROKER_SESSION_KEY"
    max_ttl: int = Field(default=30 * 86400, gt=0)
    """The longest ``--ttl`` a session may be given, in seconds (extension)."""

    @field_validator("key_env")
    @classmethod
    def _env(cls, v: str) -> str:
        if not _ENV_RE.match(v):
            raise ValueError("key_env must be an environment variable name")
        return v


def policy_problems(policy: Policy) -> list[str]:
    """Rules across sections: approvals need an operator API; an operator
    token is never a tenant's."""
    problems = []
    if policy.admin is None:
        for tname, t in policy.tenants.items():
            for sname, rule in t.secrets.items():
                if rule.approve != "never":
                    problems.append(
                        f"tenants.{tname}.secrets.{sname}.approve: needs an admin: section "
                        "(admin.listen, admin.token_sha256) for operators to approve"
                    )
    else:
        tenant_digests = {t.token_sha256: n for n, t in policy.tenants.items()}
        for digest, who in policy.admin.digests().items():
            if digest in tenant_digests:
                problems.append(
                    f"admin: operator {who!r}'s token is tenant {tenant_digests[digest]!r}'s "
                    "token; tenant credentials can never approve"
                )
        if policy.admin.listen == policy.listen:
            problems.append("admin.listen: must not be the proxy's listen address")
    return problems


WORKERS_NEED_STATE = (
    "--workers > 1 with rate, max_uses, approve or sessions needs state.url (a shared "
    "Redis/Valkey): each worker would count, hold and revoke apart"
)


def needs_state(policy: Policy) -> bool:
    """Does anything in the policy keep state (counters, approvals, revocations)?"""
    if policy.sessions is not None:
        return True
    return any(
        r.rate is not None or r.max_uses is not None or r.approve != "never"
        for t in policy.tenants.values()
        for r in t.secrets.values()
    )
