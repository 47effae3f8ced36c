"""One egress check for a destination (DESIGN.md §12): the allowlist first
(an unlisted destination in ``enforce`` mode is refused before any DNS
query, so a name cannot carry data out through the resolver), then the
address: resolved once, pinned, and refused when private unless the tenant
names the host or address, or lists its range in ``egress.private``."""

from __future__ import annotations

from dataclasses import dataclass

from broker.egress.addresses import canonical, parse_ip, private_kind
from broker.egress.resolve import Lookup, LookupFailed, Pins
from broker.egress.rules import EgressRules
from broker.request.decision import Reason


@dataclass(frozen=True)
class EgressVerdict:
    reason: Reason | None = None
    """``egress_denied`` or ``private_address``; None when the destination is fine."""
    report: bool = False
    """Report mode: forward, but audit ``reason: egress_denied, report: true``."""
    address: str | None = None
    """The pinned address (None when the name did not resolve: the connection
    is then refused where it would be opened)."""
    detail: str = ""
    """Why, for the operator (never a value; the range's label)."""

    @property
    def refused(self) -> bool:
        return self.reason is not None and not self.report


def listed(rules: EgressRules, host: str, port: int) -> bool:
    """Is (host, port) allowed by the tenant's allowlist (always, without one)?"""
    return rules.mode is None or rules.allows(host, port)


def check_listed(
    rules: EgressRules, host: str, port: int, names: tuple[str, ...] = ()
) -> EgressVerdict | None:
    """The allowlist part alone (a CONNECT is refused on it at once); None when
    listed. ``names``: the other names the client gave (TLS SNI, Host): each
    must be listed too, so a listed CDN edge cannot front an unlisted site."""
    if listed(rules, host, port) and all(listed(rules, n, port) for n in names):
        return None
    report = rules.mode == "report"
    return EgressVerdict(Reason.EGRESS_DENIED, report=report, detail="not in egress.allow")


async def check(
    rules: EgressRules,
    host: str,
    port: int,
    pins: Pins,
    lookup: Lookup,
    names: tuple[str, ...] = (),
) -> EgressVerdict:
    """``host`` and ``names`` as :func:`broker.egress.rules.host_key` gives them."""
    unlisted = check_listed(rules, host, port, names)
    if unlisted is not None and unlisted.refused:
        return unlisted
    ip = pins.get(host, port)
    if ip is None:
        literal = parse_ip(host)
        if literal is not None:
            found = [literal]
        else:
            try:
                found = await pins.resolve(host, port, lookup)
            except LookupFailed:
                return unlisted or EgressVerdict()
        named = rules.names(host, port)
        ok = [c for c in found if named or private_kind(c) is None or rules.private_ok(c, port)]
        ip = ok[0] if ok else found[0]
        if not pins.pin(host, port, ip):
            return EgressVerdict(Reason.EGRESS_DENIED, detail="too many destinations")
    kind = private_kind(ip)
    if kind is not None and not rules.names(host, port) and not rules.private_ok(ip, port):
        return EgressVerdict(Reason.PRIVATE_ADDRESS, detail=kind)
    if unlisted is not None:
        return EgressVerdict(Reason.EGRESS_DENIED, report=True, address=canonical(ip))
    return EgressVerdict(address=canonical(ip))
