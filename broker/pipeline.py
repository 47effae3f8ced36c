"""The request path on plain values (DESIGN.md §1): one :func:`process` call
per request, in stages, each of which may end it with a refusal:

1. ``_screen``: refused cookie echoes dropped, placeholders found, the
   policy decision (captured tokens merged in);
2. ``_guard``: values the scrubber cannot know yet, raw values going where
   they may not, the egress allowlist and private addresses (the address is
   pinned), ranges stripped towards hosts that know values;
3. governance (limits, approvals) for a request that carries a value;
4. ``_obtain``: values resolved, minted or signed, written in;
5. the write-ahead ``sent`` record, then the :class:`Outcome` to forward.

It reads the :class:`~broker.engine.Engine`'s live parts and changes none."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from broker.audit.record import fingerprint
from broker.backends.base import BackendError
from broker.credentials.errors import CredentialError
from broker.credentials.kinds import without
from broker.egress.check import check as egress_check
from broker.egress.resolve import Pins
from broker.egress.rules import host_key
from broker.governance.governor import Admission
from broker.policy.schema import Policy
from broker.request import cookies, locations
from broker.request.decision import Decision, Destination, Reason, decide, failure
from broker.request.locations import Occurrence, RequestParts, SubstitutionError
from broker.request.responses import Reply, reply_for
from broker.scrub import rawegress
from broker.scrub.ranges import strip_ranges
from broker.secret import SecretValue

if TYPE_CHECKING:
    from broker.engine import Engine

log = logging.getLogger("keybroker")


@dataclass
class Outcome:
    decision: Decision
    parts: RequestParts | None = None
    """The request with values written in (allow only)."""
    reply: Reply | None = None
    """The response to give the agent instead of forwarding (deny/error)."""
    fingerprints: dict[str, dict[str, str | None]] = field(default_factory=dict)
    record_id: str | None = None
    """The ``id`` of the ``sent`` audit record (allow only): the ``done``
    record of the exchange carries it too."""
    audit: dict[str, Any] = field(default_factory=dict)
    """Extra audit fields (governance: who approved what)."""


def refuse(policy: Policy, decision: Decision, dest: Destination) -> Outcome:
    """The one refusal of the request path. The agent is told a secret's
    name only when its tenant defines it: a name it made up (perhaps a
    value, ``<<secret:VALUE>>``) is not echoed, so the reply depends on no value."""
    t = policy.tenants.get(decision.tenant or "")
    shown = decision
    if decision.secret is not None and (t is None or decision.secret not in t.secrets):
        shown = replace(decision, secret=None)
    return Outcome(decision, reply=reply_for(shown, dest))


@dataclass
class _Screened:
    decision: Decision
    parts: RequestParts
    dropped: list[str]
    captured: dict[str, SecretValue]
    clean_at: int | None = None
    """See :attr:`broker.scrub.rawegress.RawScan.clean_at`."""


async def process(
    engine: Engine, tenant: str | None, dest: Destination, parts: RequestParts, pins: Pins | None
) -> Outcome:
    policy = engine.policy
    screened = _screen(engine, policy, tenant, dest, parts)
    if isinstance(screened, Outcome):
        return screened
    assert tenant is not None
    guarded = await _guard(engine, policy, tenant, dest, screened, pins)
    if isinstance(guarded, Outcome):
        return guarded
    decision, parts, dropped, captured = (
        screened.decision,
        screened.parts,
        screened.dropped,
        screened.captured,
    )
    if decision.verdict == "pass":
        if dropped:
            return Outcome(decision, parts=parts, audit={"cookies_dropped": dropped})
        return Outcome(decision, parts=parts if guarded else None)
    if not engine.audit.healthy():
        return refuse(
            policy, failure(Reason.AUDIT_UNAVAILABLE, tenant, None, decision.secrets), dest
        )
    admission = await engine.governor.admit(
        policy, tenant, dest, without(decision, captured) if captured else decision, parts
    )
    extra = {**admission.audit, "cookies_dropped": dropped} if dropped else admission.audit
    if admission.refusal is not None:
        out = refuse(policy, admission.refusal, dest)
        if out.reply is not None:
            out.reply.headers.update(admission.headers)
        out.audit = admission.audit
        return out
    obtained = await _obtain(engine, policy, tenant, dest, decision, parts, captured, admission)
    if isinstance(obtained, Outcome):
        return obtained
    new_parts, values = obtained
    fingerprints = _fingerprints(engine, values)
    engine.kinds.sync_minted()  # one minted since the scan: the generation moves, no skip
    clean = screened.clean_at == engine.scrubber.generation and not engine.kinds.captures.active
    record_id = engine.recorder.sent(decision, dest, fingerprints, extra, clean=clean)
    if record_id is None:
        await engine.governor.refund(admission)
        return refuse(
            policy, failure(Reason.AUDIT_UNAVAILABLE, tenant, None, decision.secrets), dest
        )
    return Outcome(
        decision, parts=new_parts, fingerprints=fingerprints, record_id=record_id, audit=extra
    )


def _screen(
    engine: Engine, policy: Policy, tenant: str | None, dest: Destination, parts: RequestParts
) -> _Screened | Outcome:
    """Cookies, placeholders and the policy decision."""
    t = policy.tenants.get(tenant or "")
    captures = engine.kinds.captures
    dropped: list[str] = []
    if t is not None and t.on_mismatch == "deny":  # a scrubbed cookie echoed back
        allowed = cookies.allowed_in_cookie(t, dest)
        if captures.active and tenant is not None:  # a captured session cookie
            allowed = captures.or_captured(allowed, tenant, dest)
        parts, dropped = cookies.drop_refused(parts, allowed)
    found = locations.scan(parts)
    held: tuple[Occurrence, ...] = ()
    if captures.active and tenant is not None:
        found, held = captures.split(tenant, found)
    decision = decide(policy, tenant, dest, found)
    captured: dict[str, SecretValue] = {}
    if held and tenant is not None and decision.verdict in ("allow", "pass"):
        decision, captured = captures.merge(decision, tenant, held, dest)
    if decision.verdict in ("deny", "error"):
        return refuse(policy, decision, dest)
    return _Screened(decision, parts, dropped, captured)


async def _guard(
    engine: Engine,
    policy: Policy,
    tenant: str,
    dest: Destination,
    screened: _Screened,
    pins: Pins | None,
) -> Outcome | bool:
    """The destination-side checks; True when ranges were stripped (the
    parts in ``screened`` were replaced), False when nothing changed."""
    decision = screened.decision
    if await _values_unknown(engine, policy, dest):
        pending = engine.preloader.pending  # name the caller's own unknown secret, if any
        own = next((n for n in decision.secrets if (tenant, n) in pending), None)
        own = own or (decision.secrets[0] if decision.secrets else None)
        return refuse(
            policy, failure(Reason.BACKEND_UNAVAILABLE, tenant, own, decision.secrets), dest
        )
    engine.kinds.sync_minted()  # tokens another worker minted are values to look for too
    also = (dest.path, *decision.secrets)  # what else the audit record will hold
    raw = rawegress.scan(engine.scrubber, policy, tenant, dest, screened.parts, also)
    if raw.refusal is not None:
        return refuse(policy, raw.refusal, dest)
    screened.clean_at = raw.clean_at
    reach = policy.tenants[tenant].egress_rules
    where = await egress_check(
        reach,
        host_key(dest.host),
        dest.port,
        Pins() if pins is None else pins,
        engine.lookup,
        tuple(host_key(n) for n in dest.names) if reach.mode else (),
    )
    if where.refused:
        assert where.reason is not None
        return refuse(policy, failure(where.reason, tenant, None, decision.secrets), dest)
    if where.report:
        screened.decision = replace(decision, reason=where.reason, report=True)
    unranged = strip_ranges(
        policy, dest, screened.parts
    )  # no 206 pieces from hosts that know values
    if unranged is None:
        return False
    screened.parts = unranged
    return True


async def _values_unknown(engine: Engine, policy: Policy, dest: Destination) -> bool:
    """A response from ``dest`` could echo a value the scrubber does not
    know yet (preload unfinished or its backend unreachable)."""
    preloader = engine.preloader
    if not preloader.blocks(dest.host, dest.port):
        return False
    await preloader.wait_first_pass()
    if policy.preload_unknown == "serve":
        return False  # the operator chose availability (policy extension)
    return preloader.blocks(dest.host, dest.port)


async def _obtain(
    engine: Engine,
    policy: Policy,
    tenant: str,
    dest: Destination,
    decision: Decision,
    parts: RequestParts,
    captured: dict[str, SecretValue],
    admission: Admission,
) -> Outcome | tuple[RequestParts, dict[str, SecretValue]]:
    """Values resolved (static), minted (tokens) or signed (aws_sigv4), and
    written where the decision approved; any failure refunds the admission."""
    resolver, rules = engine.resolver, policy.tenants[tenant].secrets
    values: dict[str, SecretValue] = dict(captured)
    signed: list[str] = []  # aws_sigv4: re-signed after substitution
    for name in decision.secrets:
        if name in values:
            continue
        rule = rules[name]
        try:
            if rule.kind == "static":
                values[name] = await resolver.aresolve(tenant, name, rule)
            elif rule.kind == "aws_sigv4":
                signed.append(name)
            else:
                values[name] = await engine.kinds.token(resolver, tenant, name, rule)
        except (BackendError, CredentialError) as exc:
            log.warning("keybroker: secret %r of tenant %r: %s", name, tenant, exc)
            await engine.governor.refund(admission)
            return refuse(policy, failure(Reason(exc.reason), tenant, name, decision.secrets), dest)

    def approve(name: str, location: str) -> str | None:
        if (name, location) in decision.substitute and name in values:
            return values[name].reveal()
        return None

    try:
        new_parts = locations.substitute(parts, approve)
    except SubstitutionError:
        await engine.governor.refund(admission)
        return refuse(policy, failure(Reason.INTERNAL_ERROR, tenant, None, decision.secrets), dest)
    if signed:
        try:
            new_parts = await engine.kinds.sign(resolver, tenant, dest, new_parts, signed, rules)
        except (BackendError, CredentialError) as exc:
            await engine.governor.refund(admission)
            reason = Reason(exc.reason)
            return refuse(policy, failure(reason, tenant, signed[0], decision.secrets), dest)
    return new_parts, values


def _fingerprints(
    engine: Engine, values: Mapping[str, SecretValue]
) -> dict[str, dict[str, str | None]]:
    key = engine.hmac_key
    if key is None or not engine.policy.audit.fingerprints:
        return {}
    return {
        n: {"fp": fingerprint(key, v.reveal_bytes()), "version": v.version}
        for n, v in values.items()
    }
