"""Tenant identity from ``Proxy-Authorization: Basic tenant:token``, compared
in constant time against the policy's ``token_sha256``."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from broker.policy.schema import Policy

_DUMMY = "0" * 64
WHOAMI_HOST = "keybroker.invalid"
"""A request to this host (never resolvable, RFC 6761) is answered by the
broker itself with the caller's tenant and secret names (``doctor`` uses it)."""


def basic_payload(value: str) -> str | None:
    """The decoded ``user:pass`` of a ``Basic`` credential, or None."""
    scheme, _, cred = value.strip().partition(" ")
    if scheme.lower() != "basic" or not cred:
        return None
    try:
        return base64.b64decode(cred.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        # ValueError: b64decode refuses a str holding non-ASCII characters.
        return None


def parse_basic(header: str | None) -> tuple[str, str] | None:
    raw = basic_payload(header) if header else None
    if raw is None:
        return None
    user, sep, token = raw.partition(":")
    return (user, token) if sep and user and token else None


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def claimed_tenant(policy: Policy, header: str | None) -> str | None:
    """The tenant a refused request *claimed*, for the audit (who tried):
    only a name the policy has, never whatever the user field held (a token
    pasted there must not reach the audit)."""
    creds = parse_basic(header)
    if creds is None:
        raw = basic_payload(header) if header else None
        user = raw.partition(":")[0] if raw else ""
    else:
        user = creds[0]
    return user if user in policy.tenants else None


def authenticate(policy: Policy, header: str | None) -> tuple[str, str] | None:
    """(tenant, token digest) when the credentials match, else None."""
    creds = parse_basic(header)
    if creds is None:
        return None
    tenant, token = creds
    digest = token_digest(token)
    t = policy.tenants.get(tenant)
    expected = t.token_sha256 if t is not None else _DUMMY
    ok = hmac.compare_digest(digest, expected)
    return (tenant, digest) if ok and t is not None else None


def still_valid(policy: Policy, tenant: str, digest: str) -> bool:
    """Re-check a connection's tenant against the live policy (reload may
    have removed the tenant or changed its token)."""
    t = policy.tenants.get(tenant)
    return t is not None and hmac.compare_digest(digest, t.token_sha256)
