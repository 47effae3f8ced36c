"""Session tokens from the operator's side (DESIGN.md §13): minting one
(``keybroker session new``, and ``keybroker env`` for a sandbox) and
checking one a sandbox holds (``keybroker doctor``)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from broker.cli.console import sanitize
from broker.governance import sessions
from broker.governance.config import parse_duration
from broker.governance.governor import session_key
from broker.policy.schema import Policy


class CLIError(Exception):
    """A message for the operator (never holds a token)."""


def new_session(policy: Policy, tenant: str, ttl: str) -> tuple[str, int]:
    """A session token for ``tenant`` and its expiry (Unix seconds)."""
    if policy.sessions is None:
        raise CLIError("the policy has no sessions: section (sessions.key_env)")
    t = policy.tenants.get(tenant)
    if t is None:
        raise CLIError(f"tenant {tenant!r} is not in the policy")
    try:
        seconds = parse_duration(ttl)
    except ValueError as exc:
        raise CLIError(f"--ttl: {exc}") from None
    if seconds > policy.sessions.max_ttl:
        raise CLIError(f"--ttl: at most sessions.max_ttl ({policy.sessions.max_ttl} s)")
    key = session_key(policy, os.environ)
    assert key is not None
    now = time.time()
    return sessions.mint(key, tenant, t.token_sha256, seconds, now=now), int(now) + seconds


def sandbox_token(policy: Policy, args: argparse.Namespace, tenant_token: str) -> str:
    """What ``keybroker env`` hands a sandbox: a session token when the
    policy has ``sessions:`` (unless ``--long-lived``), else the tenant token."""
    if policy.sessions is None or getattr(args, "long_lived", False):
        if policy.sessions is None:
            print(
                "keybroker env: note: the sandbox gets the long-lived tenant token; with a "
                "sessions: section it would get a short-lived session token instead",
                file=sys.stderr,
            )
        return tenant_token
    try:
        return new_session(policy, args.tenant, getattr(args, "ttl", "8h"))[0]
    except CLIError as exc:
        raise ValueError(str(exc)) from None


def check_session(
    policy: Policy, tenant: str, token: str, env: Mapping[str, str]
) -> tuple[bool, str] | None:
    """For ``keybroker doctor``: None when ``token`` is not a session token;
    else whether it looks good and what to say. With the session key at hand
    the signature is checked too; without it (inside a sandbox) only the
    claims, and the broker checks the rest (revocation always)."""
    s = sessions.parse(token)
    if s is None:
        return None
    when = datetime.fromtimestamp(s.expires, UTC).isoformat(timespec="seconds")
    t = policy.tenants.get(tenant)
    if policy.sessions is None:
        return False, "a session token, but the policy has no sessions: section"
    if t is None or s.tenant != tenant:
        return False, f"the session token is for tenant {sanitize(s.tenant)!r}, not {tenant!r}"
    if s.expires <= time.time():
        return False, f"the session token expired at {when}; run `keybroker env` again"
    key = env.get(policy.sessions.key_env, "")
    if key and sessions.verify(key.encode(), token, tenant, t.token_sha256) is None:
        return False, (
            "the session token's signature does not match (another key, or the tenant "
            "token was rotated); run `keybroker env` again"
        )
    checked = "signature checked" if key else "the broker checks its signature"
    return True, f"session token for tenant {tenant!r} until {when} ({checked})"
