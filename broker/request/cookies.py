"""Cookies that carry a placeholder the policy does not allow there.

When an upstream sets a cookie whose value is a secret value, keybroker
scrubs it: the agent's cookie jar stores ``session=<<secret:NAME>>`` and
sends it back in the ``Cookie`` header of every later request to that site.
Denying those requests (``location_not_allowed``) would brick the client for
as long as it keeps the cookie, across broker restarts.

So before the decision, a cookie pair in a ``Cookie`` header whose value
holds a placeholder that may not be substituted there (the secret is not
the tenant's, or its rule does not allow this destination or
``header:cookie``) is removed from the request, and the request goes on
without it; the names removed go into the audit record
(``cookies_dropped``). The literal placeholder is not a secret, so removing
it never sends a value; a value is written into a cookie only where the
policy allows ``header:cookie``. A tenant with ``on_mismatch: forward``
keeps its behaviour (the literal text is forwarded), and a malformed
placeholder is still refused by the decision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from broker.policy.schema import Tenant
from broker.request.decision import Destination, check_rule
from broker.request.locations import RequestParts
from broker.request.placeholders import find_names, might_contain

LOCATION = "header:cookie"


def allowed_in_cookie(tenant: Tenant, dest: Destination) -> Callable[[str], bool]:
    """May the secret NAME be written into this request's ``Cookie``?"""

    def allowed(name: str) -> bool:
        rule = tenant.secrets.get(name)
        return rule is not None and check_rule(rule, dest, LOCATION) is None

    return allowed


def drop_refused(
    parts: RequestParts, allowed: Callable[[str], bool]
) -> tuple[RequestParts, list[str]]:
    """``parts`` without the cookie pairs holding a placeholder ``allowed``
    refuses, and the names of those placeholders (empty: ``parts`` itself)."""
    if not any(k.lower() == "cookie" and might_contain(v) for k, v in parts.headers):
        return parts, []
    headers: list[tuple[str, str]] = []
    dropped: list[str] = []
    for key, value in parts.headers:
        if key.lower() != "cookie" or not might_contain(value):
            headers.append((key, value))
            continue
        kept = []
        for pair in value.split(";"):
            names, malformed = find_names(pair)
            if names and not malformed and not all(allowed(n) for n in names):
                dropped += names
            else:
                kept.append(pair.strip())
        if kept:
            headers.append((key, "; ".join(kept)))
    if not dropped:
        return parts, []
    return replace(parts, headers=tuple(headers)), sorted(set(dropped))
