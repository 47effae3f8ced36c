"""Rate limits and use counts per tenant × secret (DESIGN.md §13).

``rate: N/unit`` allows at most N uses in any window of that length (a
sliding window, so no burst of 2N across a boundary): past it, 429
``rate_limited`` with ``Retry-After``. ``max_uses: N`` allows N uses in all
(1 = one-shot): past it, 403 ``uses_exhausted``. A use is a request that
carries the value; a request that names a secret twice counts once, and a
request refused later (the vault down) gives its use back."""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from broker.governance.config import parse_rate
from broker.governance.state import Charge, Refusal, StateStore
from broker.policy.secret_rule import SecretRule


@lru_cache(maxsize=1024)
def _rate(text: str) -> tuple[int, int]:
    return parse_rate(text)


def charges_for(tenant: str, names: Iterable[str], rules: Mapping[str, SecretRule]) -> list[Charge]:
    """The charges of one request: one per limited secret it carries."""
    out = []
    for name in dict.fromkeys(names):
        rule = rules[name]
        if rule.rate is None and rule.max_uses is None:
            continue
        rate = _rate(rule.rate) if rule.rate is not None else None
        out.append(Charge(tenant, name, rate, rule.max_uses))
    return out


def limited(policy_tenants: Mapping[str, Any], tenant: str | None = None) -> list[Charge]:
    """A charge for every limited secret (of one tenant, or all): what usage reports."""
    out: list[Charge] = []
    for tname, t in policy_tenants.items():
        if tenant is None or tname == tenant:
            out += charges_for(tname, t.secrets, t.secrets)
    return out


def retry_after(refusal: Refusal) -> str:
    """Whole seconds for the ``Retry-After`` header (at least 1)."""
    return str(max(1, math.ceil(refusal.retry_after)))


@dataclass
class Ticket:
    """What a request was charged, so it can be given back."""

    charges: list[Charge] = field(default_factory=list)
    token: str = field(default_factory=lambda: secrets.token_hex(8))

    async def refund(self, store: StateStore) -> None:
        if self.charges:
            await store.refund(self.charges, self.token)
            self.charges = []


async def usage_rows(
    store: StateStore, tenants: Mapping[str, Any], tenant: str | None
) -> list[dict[str, Any]]:
    """What ``keybroker usage`` shows: each limited secret's counts."""
    charges = limited(tenants, tenant)
    counts = await store.usage(charges)
    return [
        {
            "tenant": c.tenant,
            "secret": c.secret,
            "rate": tenants[c.tenant].secrets[c.secret].rate,
            "window_uses": recent,
            "max_uses": c.max_uses,
            "uses": uses,
        }
        for c, (recent, uses) in zip(charges, counts, strict=True)
    ]
