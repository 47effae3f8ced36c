"""Decisions (DESIGN.md §5): deny by default, one reason code per branch.

The destination is what the proxy connects to (scheme, host, port), never the
Host header."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Literal
from urllib.parse import unquote

from broker.policy.hosts import HostError, host_matches, normalize_host
from broker.policy.schema import Policy
from broker.policy.secret_rule import SecretRule, glob_to_regex
from broker.request.locations import ScanResult


class Reason(StrEnum):
    UNAUTHENTICATED = "unauthenticated"
    MALFORMED_PLACEHOLDER = "malformed_placeholder"
    MALFORMED_REQUEST = "malformed_request"
    UNKNOWN_SECRET = "unknown_secret"
    HOST_NOT_ALLOWED = "host_not_allowed"
    PORT_NOT_ALLOWED = "port_not_allowed"
    SCHEME_NOT_ALLOWED = "scheme_not_allowed"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    PATH_NOT_ALLOWED = "path_not_allowed"
    LOCATION_NOT_ALLOWED = "location_not_allowed"
    RAW_SECRET_EGRESS = "raw_secret_egress"
    BACKEND_UNAVAILABLE = "backend_unavailable"
    SECRET_NOT_FOUND = "secret_not_found"
    INTERNAL_ERROR = "internal_error"
    AUDIT_UNAVAILABLE = "audit_unavailable"
    # Governance of use (§13).
    RATE_LIMITED = "rate_limited"
    USES_EXHAUSTED = "uses_exhausted"
    APPROVAL_DENIED = "approval_denied"
    APPROVAL_TIMEOUT = "approval_timeout"
    STATE_UNAVAILABLE = "state_unavailable"
    EGRESS_DENIED = "egress_denied"
    PRIVATE_ADDRESS = "private_address"
    # One choke point (§5, §7.3).
    PROTOCOL_NOT_ALLOWED = "protocol_not_allowed"
    UPSTREAM_UNREACHABLE = "upstream_unreachable"
    UPSTREAM_TLS_FAILED = "upstream_tls_failed"
    UPSTREAM_PROTOCOL_ERROR = "upstream_protocol_error"
    # Extensions (documented in README).
    BODY_TOO_LARGE = "body_too_large"
    UNDECODABLE_BODY = "undecodable_body"
    # Credential kinds (DESIGN.md §11); service/region are extensions.
    TOKEN_UNAVAILABLE = "token_unavailable"
    SERVICE_NOT_ALLOWED = "service_not_allowed"
    REGION_NOT_ALLOWED = "region_not_allowed"
    UNPROTECTABLE_SECRET = "unprotectable_secret"
    CAPTURE_REFUSED = "capture_refused"
    CREDENTIAL_VENDING = "credential_vending"


STATUS: dict[Reason, int] = {
    Reason.UNAUTHENTICATED: 407,
    Reason.MALFORMED_PLACEHOLDER: 400,
    Reason.MALFORMED_REQUEST: 400,
    Reason.UNDECODABLE_BODY: 400,
    Reason.BODY_TOO_LARGE: 413,
    Reason.BACKEND_UNAVAILABLE: 502,
    Reason.SECRET_NOT_FOUND: 502,
    Reason.INTERNAL_ERROR: 502,
    Reason.AUDIT_UNAVAILABLE: 503,
    Reason.RATE_LIMITED: 429,
    Reason.STATE_UNAVAILABLE: 503,
    Reason.TOKEN_UNAVAILABLE: 502,
    Reason.UNPROTECTABLE_SECRET: 502,
    Reason.CAPTURE_REFUSED: 502,
    Reason.UPSTREAM_UNREACHABLE: 502,
    Reason.UPSTREAM_TLS_FAILED: 502,
    Reason.UPSTREAM_PROTOCOL_ERROR: 502,
}
_ERRORS = {
    Reason.BACKEND_UNAVAILABLE,
    Reason.SECRET_NOT_FOUND,
    Reason.INTERNAL_ERROR,
    Reason.AUDIT_UNAVAILABLE,
    Reason.STATE_UNAVAILABLE,
    Reason.TOKEN_UNAVAILABLE,
    Reason.UNPROTECTABLE_SECRET,
    Reason.CAPTURE_REFUSED,
    Reason.UPSTREAM_UNREACHABLE,
    Reason.UPSTREAM_TLS_FAILED,
    Reason.UPSTREAM_PROTOCOL_ERROR,
}

Verdict = Literal["allow", "pass", "deny", "error"]


def status_of(reason: Reason) -> int:
    return STATUS.get(reason, 403)


def verdict_of(reason: Reason) -> Verdict:
    return "error" if reason in _ERRORS else "deny"


@dataclass(frozen=True)
class Destination:
    """What the proxy connects to, plus the request line."""

    scheme: str
    host: str
    port: int
    method: str
    path: str
    """Path without the query."""
    names: tuple[str, ...] = ()
    """Other names the client gave the server (TLS SNI, Host/:authority),
    normalised. A value goes only where every one of them is the destination
    (no domain fronting)."""

    @classmethod
    def of(
        cls,
        scheme: str,
        host: str,
        port: int,
        method: str,
        path: str,
        *,
        sni: str | None = None,
        authority: str | None = None,
    ) -> Destination:
        names = []
        if sni:
            names.append(_norm(sni))
        if authority:
            names.append(_norm(_authority_host(authority)))
        return cls(scheme.lower(), _norm(host), port, method.upper(), path, tuple(names))

    @property
    def fronted(self) -> bool:
        return any(n != self.host for n in self.names)


_NORM_CACHED = 255
"""Longer names (never valid hosts) are normalised each time, so the cache
stays small whatever the agent sends."""


def _norm(host: str) -> str:
    return _norm_cached(host) if len(host) <= _NORM_CACHED else _norm_uncached(host)


def _norm_uncached(host: str) -> str:
    try:
        return normalize_host(host)
    except HostError:
        return host.lower()


# A pure function of the string; every request normalises the same few names
# (host, SNI, Host header), and normalize_host is costly (ipaddress parsing).
_norm_cached = lru_cache(maxsize=1024)(_norm_uncached)


def _authority_host(authority: str) -> str:
    a = authority.strip().rsplit("@", 1)[-1]
    if a.startswith("["):
        return a[1 : a.find("]")] if "]" in a else a
    return a.rsplit(":", 1)[0] if a.count(":") == 1 else a


@dataclass(frozen=True, kw_only=True)
class Decision:
    verdict: Verdict
    reason: Reason | None = None
    tenant: str | None = None
    secret: str | None = None
    secrets: tuple[str, ...] = ()
    substitute: frozenset[tuple[str, str]] = field(default_factory=frozenset)
    """(secret name, location) pairs to write values into."""
    report: bool = False
    """Forwarded although ``reason`` would refuse it (egress ``mode: report``)."""

    @property
    def status(self) -> int | None:
        if self.reason is None or self.verdict == "pass":
            return None
        status = status_of(self.reason)
        return max(status, 502) if self.verdict == "error" else status


def failure(
    reason: Reason,
    tenant: str | None,
    secret: str | None = None,
    secrets: tuple[str, ...] = (),
    *,
    upstream: bool = False,
) -> Decision:
    """A denial or error. ``upstream=True``: the failure is the upstream's
    (e.g. an undecodable response), so it is an ``error`` (5xx), not a denial."""
    verdict: Verdict = "error" if upstream else verdict_of(reason)
    return Decision(verdict=verdict, reason=reason, tenant=tenant, secret=secret, secrets=secrets)


@lru_cache(maxsize=4096)
def _glob(g: str) -> re.Pattern[str]:
    return glob_to_regex(g)


def _has_dot_segment(path: str) -> bool:
    """A ``.`` or ``..`` segment, after up to three rounds of percent-decoding
    (servers and frameworks that decode twice), with ``\\`` read as ``/`` and
    ``;params`` ignored (``/v1/..;/admin`` climbs up on Tomcat/Spring)."""
    p = path
    for _ in range(3):
        p = unquote(p)
    p = p.replace("\\", "/")
    return any(seg.split(";", 1)[0] in (".", "..") for seg in p.split("/"))


def check_rule(rule: SecretRule, dest: Destination, location: str) -> Reason | None:
    """The first part of the destination the rule does not allow, or None."""
    if dest.scheme not in rule.schemes:
        return Reason.SCHEME_NOT_ALLOWED
    if not any(host_matches(dest.host, p) for p in rule.hosts):
        return Reason.HOST_NOT_ALLOWED
    if dest.port not in rule.ports:
        return Reason.PORT_NOT_ALLOWED
    if rule.methods is not None and dest.method not in rule.methods:
        return Reason.METHOD_NOT_ALLOWED
    if rule.paths is not None and (
        _has_dot_segment(dest.path) or not any(_glob(g).match(dest.path) for g in rule.paths)
    ):
        return Reason.PATH_NOT_ALLOWED
    if location not in rule.locations:
        return Reason.LOCATION_NOT_ALLOWED
    return None


def decide(policy: Policy, tenant: str | None, dest: Destination, found: ScanResult) -> Decision:
    """One decision for a request. Deny is the default on every branch."""
    if tenant is None or tenant not in policy.tenants:
        return failure(Reason.UNAUTHENTICATED, None)
    t = policy.tenants[tenant]
    forward = t.on_mismatch == "forward"
    names = found.names
    if found.malformed is not None and not forward:
        return failure(Reason.MALFORMED_PLACEHOLDER, tenant, None, names)
    if not found.occurrences:
        reason = Reason.MALFORMED_PLACEHOLDER if found.malformed else None
        return Decision(verdict="pass", reason=reason, tenant=tenant)
    approved: set[tuple[str, str]] = set()
    first_miss: tuple[Reason, str] | None = None
    for occ in found.occurrences:
        rule = t.secrets.get(occ.name)
        reason = Reason.UNKNOWN_SECRET if rule is None else check_rule(rule, dest, occ.location)
        if reason is None:
            approved.add((occ.name, occ.location))
            continue
        if not forward:
            return failure(reason, tenant, occ.name, names)
        first_miss = first_miss or (reason, occ.name)
    used = tuple(dict.fromkeys(n for n, _ in sorted(approved)))
    if approved and dest.fronted:  # SNI or Host names another server than the one we connect to
        if not forward:
            return failure(Reason.HOST_NOT_ALLOWED, tenant, used[0], names)
        return Decision(
            verdict="pass",
            reason=Reason.HOST_NOT_ALLOWED,
            tenant=tenant,
            secret=used[0],
            secrets=names,
        )
    if first_miss is not None and not approved:
        return Decision(
            verdict="pass", reason=first_miss[0], tenant=tenant, secret=first_miss[1], secrets=names
        )
    return Decision(verdict="allow", tenant=tenant, secrets=used, substitute=frozenset(approved))
