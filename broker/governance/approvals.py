"""Human approval before a value is used (DESIGN.md §13).

``approve: always`` holds every request that carries the secret;
``first_use`` holds the first one, and an approval is then remembered for
``approvals.remember`` seconds by every broker sharing the state;
``approve_methods`` narrows either to those methods. A held request has
sent nothing upstream and read no value; it waits for an operator's verdict
(``keybroker approvals approve|deny ID``, through any broker's admin API)
for at most ``approvals.timeout`` seconds: 403 ``approval_denied`` or
``approval_timeout`` otherwise."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from broker.governance.config import ApprovalsConfig
from broker.governance.state import StateStore
from broker.policy.secret_rule import SecretRule
from broker.request.decision import Destination, Reason

POLL = 0.1
"""Seconds between looks at a held request's verdict."""


@dataclass(frozen=True)
class Held:
    """The outcome of a hold, for the audit record (who approved what)."""

    approval_id: str
    verdict: str
    """approved, denied or timeout."""
    by: str | None

    def audit(self) -> dict[str, Any]:
        return {"approval": {"id": self.approval_id, "verdict": self.verdict, "by": self.by}}


def needs_approval(rules: Mapping[str, SecretRule], names: Iterable[str], method: str) -> list[str]:
    """The secrets of this request that need an operator's approval."""
    out = []
    for n in dict.fromkeys(names):
        rule = rules[n]
        if rule.approve != "never" and method in (rule.approve_methods or (method,)):
            out.append(n)
    return out


MAX_KEYS = 20
"""Query keys shown to the operator (the rest are counted, not named)."""


def query_keys(query: str) -> str:
    """The query's parameter names, never their values: ``a,b,+3 more``."""
    keys = [p.split("=", 1)[0][:64] for p in query.split("&") if p]
    shown = ",".join(keys[:MAX_KEYS])
    return shown + (f",+{len(keys) - MAX_KEYS} more" if len(keys) > MAX_KEYS else "")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


async def hold(
    store: StateStore,
    config: ApprovalsConfig,
    tenant: str,
    dest: Destination,
    names: list[str],
    rules: Mapping[str, SecretRule],
    *,
    query: str = "",
    body_bytes: int = 0,
    announce: Callable[[dict[str, str]], None] | None = None,
) -> tuple[Reason | None, Held | None]:
    """Wait for a verdict when this request needs one. Raises
    :class:`~broker.governance.state.StateUnavailable` if the store fails.
    429 ``rate_limited`` when the tenant already has ``max_pending`` held."""
    if not names:
        return None, None
    always = [n for n in names if rules[n].approve == "always"]
    first = [f"{tenant}:{n}" for n in names if rules[n].approve == "first_use"]
    if not always and await store.remembered(first):
        return None, None
    record = {
        "tenant": tenant,
        "secret": names[0],
        "secrets": ",".join(names),
        "method": dest.method,
        "host": dest.host,
        "port": str(dest.port),
        "path": dest.path[:512],
        "query_keys": query_keys(query),
        "body_bytes": str(body_bytes),
        "since": _now(),
        "remember": ",".join(first),
    }
    # Requests that only need a first use approved share one pending approval,
    # but only when identical in everything the operator is shown.
    seen = [tenant, sorted(first), dest.method, dest.host, dest.port, dest.path]
    seen += [record["query_keys"], body_bytes]
    dedupe = None if always else hashlib.sha256(json.dumps(seen).encode()).hexdigest()
    aid = await store.open_approval(
        record, dedupe=dedupe, ttl=config.timeout, limit=config.max_pending
    )
    if aid is None:
        return Reason.RATE_LIMITED, Held("", "too_many_pending", None)
    if announce is not None:
        announce({**record, "id": aid})
    deadline = time.monotonic() + config.timeout
    rec: dict[str, str] | None = None
    while time.monotonic() < deadline:
        rec = await store.approval(aid)
        if rec is None or rec.get("state") != "pending":
            break
        await asyncio.sleep(min(POLL, max(0.0, deadline - time.monotonic())))
    else:
        rec = await store.expire(aid, dedupe)
    state = (rec or {}).get("state", "expired")
    by = (rec or {}).get("by")
    if state == "approved":
        return None, Held(aid, "approved", by)
    if state == "denied":
        return Reason.APPROVAL_DENIED, Held(aid, "denied", by)
    return Reason.APPROVAL_TIMEOUT, Held(aid, "timeout", None)
