"""Range requests towards hosts that can know a value (issue 12 item 6).

A client that assembles a body from ``206`` parts (several ``Range``
requests, or one ``multipart/byteranges`` answer) can rejoin a value the
scrubber only ever saw in pieces. A destination one of the policy's secrets
may be sent to (any tenant's ``hosts`` x ``ports``) is exactly one whose
responses could hold a value, so there ``Range`` and ``If-Range`` are
removed from the request: the upstream answers with the whole body, which
is scrubbed as one. Elsewhere ranges pass (resumable downloads keep working).
"""

from __future__ import annotations

from dataclasses import replace

from broker.policy.hosts import host_matches
from broker.policy.schema import Policy
from broker.request.decision import Destination
from broker.request.locations import RequestParts

__all__ = ["strip_ranges"]

_RANGE_HEADERS = ("range", "if-range")


def _could_know_a_value(policy: Policy, dest: Destination) -> bool:
    return any(
        dest.port in rule.ports and any(host_matches(dest.host, p) for p in rule.hosts)
        for tenant in policy.tenants.values()
        for rule in tenant.secrets.values()
    )


def strip_ranges(policy: Policy, dest: Destination, parts: RequestParts) -> RequestParts | None:
    """``parts`` without ``Range``/``If-Range`` when ``dest`` could echo a
    value, or None when nothing changes."""
    if not any(name.lower() in _RANGE_HEADERS for name, _ in parts.headers):
        return None
    if not _could_know_a_value(policy, dest):
        return None
    kept = tuple((n, v) for n, v in parts.headers if n.lower() not in _RANGE_HEADERS)
    return replace(parts, headers=kept)
