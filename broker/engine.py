"""The broker's request pipeline on plain values: authenticate, scan, decide,
guard raw egress, resolve, substitute, scrub and audit. The mitmproxy addon
only translates flows to these calls (DESIGN.md §10)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from broker.audit.chain import worker_file
from broker.audit.lock import AuditInUse
from broker.audit.log import AuditLog
from broker.audit.record import RecordSink, fingerprint
from broker.audit.recorder import Recorder
from broker.backends.base import Backend, BackendError
from broker.backends.preload import Preloader, UnprotectableSecret
from broker.backends.registry import build_backends, cache_ttls
from broker.backends.resolver import Resolver
from broker.credentials.capture_scrub import ChainedStream
from broker.credentials.errors import CredentialError
from broker.credentials.kinds import CredentialKinds, without
from broker.egress.check import check as egress_check
from broker.egress.resolve import Lookup, Pins, system_lookup
from broker.egress.rules import host_key
from broker.governance.governor import Governor
from broker.policy.load import PolicyError, load_policy
from broker.policy.schema import Policy
from broker.request import cookies, locations
from broker.request.auth import authenticate, still_valid
from broker.request.decision import Decision, Destination, Reason, decide, failure
from broker.request.locations import Occurrence, RequestParts, SubstitutionError
from broker.request.placeholders import placeholder
from broker.request.responses import Reply, reply_for
from broker.scrub import rawegress
from broker.scrub.ranges import strip_ranges
from broker.scrub.scrubber import Scrubber, StreamScrubber
from broker.scrub.strength import weakness
from broker.secret import SecretValue

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


class Engine:
    """Holds the live policy and the long-lived parts built from it."""

    def __init__(
        self,
        policy: Policy,
        *,
        source: Path | None = None,
        env: Mapping[str, str] | None = None,
        scrubber: Scrubber | None = None,
        feed: RecordSink | None = None,
        worker: int | None = None,
        lookup: Lookup = system_lookup,
    ) -> None:
        self.lookup = lookup
        """Resolves destination names for the egress check (tests script it)."""
        self.worker = worker
        """With ``keybroker run --workers N``, each worker keeps its own audit chain."""
        self._env = env if env is not None else os.environ
        self.source = source
        self.scrubber = scrubber or Scrubber()
        self.feed = feed
        self._lock = threading.Lock()
        self._retired: Mapping[str, Backend] = {}
        self.policy = policy
        self.resolver = self._make_resolver(policy)
        self.preloader = self._make_preloader(policy, self.resolver)
        self._hmac_key = self._audit_key(policy)
        self.audit = self._make_audit(policy, self._hmac_key)
        self.recorder = Recorder(lambda: self.audit, self._clean, feed)
        self.governor = Governor(
            policy,
            self._env,
            announce=self._announce,
            clean=lambda s: self._clean(None, s)[0],
            workers=worker is not None,  # one of --workers N: no per-process state
        )
        self.kinds = CredentialKinds(
            remember=self._remember,
            record=self.record,
            policy=lambda: self.policy,
            record_sent=self._record_sent,
        )
        self.kinds.keep_minted(policy.certs_dir, self._remember, compact=not worker)

    # -- construction and reload -------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path, **kw: Any) -> Engine:
        p = Path(path).resolve()
        return cls(load_policy(p), source=p, **kw)

    def _make_resolver(self, policy: Policy) -> Resolver:
        self._backends = build_backends(policy.backends, self._env)
        return Resolver(
            self._backends, cache_ttls(policy.backends), on_value=self._remember_resolved
        )

    def _make_preloader(self, policy: Policy, resolver: Resolver) -> Preloader:
        preloader = Preloader(policy, resolver, cache_ttls(policy.backends))
        preloader.start()
        return preloader

    def _close_backends(self, backends: Mapping[str, Backend]) -> None:
        for b in backends.values():
            b.close()

    def _audit_key(self, policy: Policy) -> bytes | None:
        name = policy.audit.hmac_key_env
        if not name:
            return None
        key = self._env.get(name)
        if not key:
            raise PolicyError([f"audit.hmac_key_env: environment variable {name} is not set"])
        return key.encode("utf-8")

    def audit_path(self, policy: Policy) -> Path:
        p = policy.audit.path
        return p if self.worker is None else worker_file(p, self.worker)

    def _make_audit(self, policy: Policy, key: bytes | None) -> AuditLog:
        return AuditLog(
            self.audit_path(policy), hmac_key=key, rotate_bytes=policy.audit.rotate_bytes
        )

    def reload(self) -> list[str]:
        """Re-read the policy file. A bad file keeps the last good policy;
        the errors are returned. The switch is atomic: no request ever sees
        an empty or partial policy."""
        if self.source is None:
            return ["no policy file to reload"]
        old_backends = self._backends
        new_audit: AuditLog | None = None
        try:
            policy = load_policy(self.source)
            key = self._audit_key(policy)
            commit_governance = self.governor.reload(policy)
            resolver = self._make_resolver(policy)
            if self.audit_path(policy) != self.audit.path:
                new_audit = self._make_audit(policy, key)  # AuditInUse: another broker's
        except PolicyError as exc:
            return exc.errors
        except AuditInUse as exc:
            return [str(exc)]
        preloader = self._make_preloader(policy, resolver)
        with self._lock:
            old_audit = self.audit
            if policy.audit != self.policy.audit:
                if new_audit is None:  # the same file: our open holds its lock, hand it over
                    old_audit.close()
                    new_audit = self._make_audit(policy, key)
                self.audit = new_audit
                old_audit.close()
            self.policy, self.resolver, self._hmac_key = policy, resolver, key
            commit_governance()
            self.preloader, old_preloader = preloader, self.preloader
        old_preloader.stop()
        # Requests in flight may still read through the old backends: close
        # them one reload later.
        self._close_backends(self._retired)
        self._retired = old_backends
        return []

    def _remember_resolved(self, tenant: str, name: str, value: SecretValue) -> None:
        """A value read from a store: refused when too weak to protect."""
        why = weakness(value.reveal_bytes())
        if why is not None:  # never used, so never needs scrubbing
            raise UnprotectableSecret(f"secret {name!r} of tenant {tenant!r}: {why}")
        self._remember(tenant, name, value)

    def _remember(self, tenant: str, name: str, value: SecretValue) -> None:
        raw = value.reveal_bytes()
        t = self.policy.tenants.get(tenant)
        rank = list(t.secrets).index(name) if t is not None and name in t.secrets else 0
        self.scrubber.add(raw, placeholder(name).encode(), (tenant, name), rank)

    # -- identity ------------------------------------------------------------------
    def authenticate(self, header: str | None) -> tuple[str, str] | None:
        policy = self.policy
        return authenticate(policy, header) or self.governor.authenticate(policy, header)

    def still_valid(self, tenant: str, digest: str) -> bool:
        return self.identity_problem(tenant, digest) is None

    def identity_problem(self, tenant: str, digest: str) -> Reason | None:
        """None while a connection's identity holds; otherwise why not
        (a session revoked or expired: 407; its revocations unknown: 503)."""
        policy = self.policy
        if digest.startswith("session:"):
            return self.governor.check(policy, tenant, digest)
        return None if still_valid(policy, tenant, digest) else Reason.UNAUTHENTICATED

    def _announce(self, rec: Mapping[str, Any]) -> None:
        if self.feed is not None:
            self.feed.push(rec)

    # -- the request path --------------------------------------------------------
    def _raw_egress(
        self, policy: Policy, tenant: str, dest: Destination, parts: RequestParts
    ) -> Decision | None:
        """A raw secret value (not a placeholder) going where it is not allowed."""
        return rawegress.check(self.scrubber, policy, tenant, dest, parts)

    def check_connect(self, tenant: str, dest: Destination) -> Outcome | None:
        """A CONNECT whose target or SNI holds one of ``tenant``'s values is
        refused before any lookup or connection."""
        refusal = rawegress.check_destination(self.scrubber, self.policy, tenant, dest)
        return None if refusal is None else self._reply(refusal, dest)

    def raw_in_message(self, tenant: str | None, data: bytes) -> bool:
        """A WebSocket message from the client holds one of its tenant's values."""
        return rawegress.in_message(self.scrubber, tenant, data)

    def _reply(self, decision: Decision, dest: Destination) -> Outcome:
        # The agent is told a secret's name only when its tenant defines it:
        # a name it made up (perhaps a value, `<<secret:VALUE>>`) is not
        # echoed, whatever it holds, so the reply depends on no value.
        t = self.policy.tenants.get(decision.tenant or "")
        shown = decision
        if decision.secret is not None and (t is None or decision.secret not in t.secrets):
            shown = replace(decision, secret=None)
        return Outcome(
            decision,
            reply=reply_for(shown, dest),
        )

    async def _values_unknown(self, dest: Destination) -> bool:
        """A response from ``dest`` could echo a value the scrubber does not
        know yet (preload unfinished or its backend unreachable)."""
        preloader = self.preloader
        if not preloader.blocks(dest.host, dest.port):
            return False
        await preloader.wait_first_pass()
        if self.policy.preload_unknown == "serve":
            return False  # the operator chose availability (policy extension)
        return preloader.blocks(dest.host, dest.port)

    async def process(
        self,
        tenant: str | None,
        dest: Destination,
        parts: RequestParts,
        *,
        pins: Pins | None = None,
    ) -> Outcome:
        """``pins``: the client connection's resolved destinations (a fresh
        table, so one lookup per call, when the caller keeps none)."""
        policy, resolver = self.policy, self.resolver
        t = policy.tenants.get(tenant or "")
        dropped: list[str] = []
        if t is not None and t.on_mismatch == "deny":  # a scrubbed cookie echoed back
            allowed = cookies.allowed_in_cookie(t, dest)
            if self.kinds.captures.active and tenant is not None:  # a captured session cookie
                allowed = self.kinds.captures.or_captured(allowed, tenant, dest)
            parts, dropped = cookies.drop_refused(parts, allowed)
        found = locations.scan(parts)
        held: tuple[Occurrence, ...] = ()
        if self.kinds.captures.active and tenant is not None:
            found, held = self.kinds.captures.split(tenant, found)
        decision = decide(policy, tenant, dest, found)
        captured: dict[str, SecretValue] = {}
        if held and tenant is not None and decision.verdict in ("allow", "pass"):
            decision, captured = self.kinds.captures.merge(decision, tenant, held, dest)
        if decision.verdict in ("deny", "error"):
            return self._reply(decision, dest)
        assert tenant is not None
        if await self._values_unknown(dest):
            pending = self.preloader.pending  # name the caller's own unknown secret, if any
            own = next((n for n in decision.secrets if (tenant, n) in pending), None)
            own = own or (decision.secrets[0] if decision.secrets else None)
            return self._reply(
                failure(Reason.BACKEND_UNAVAILABLE, tenant, own, decision.secrets), dest
            )
        egress = self._raw_egress(policy, tenant, dest, parts)
        if egress is not None:
            return self._reply(egress, dest)
        reach = policy.tenants[tenant].egress_rules
        where = await egress_check(
            reach,
            host_key(dest.host),
            dest.port,
            Pins() if pins is None else pins,
            self.lookup,
            tuple(host_key(n) for n in dest.names) if reach.mode else (),
        )
        if where.refused:
            assert where.reason is not None
            return self._reply(failure(where.reason, tenant, None, decision.secrets), dest)
        if where.report:
            decision = replace(decision, reason=where.reason, report=True)
        unranged = strip_ranges(policy, dest, parts)  # no 206 pieces from hosts that know values
        if unranged is not None:
            parts = unranged
        if decision.verdict == "pass":
            if dropped:
                return Outcome(decision, parts=parts, audit={"cookies_dropped": dropped})
            if unranged is not None:
                return Outcome(decision, parts=parts)
            return Outcome(decision)
        if not self.audit.healthy():
            return self._reply(
                failure(Reason.AUDIT_UNAVAILABLE, tenant, None, decision.secrets), dest
            )
        admission = await self.governor.admit(
            policy, tenant, dest, without(decision, captured) if captured else decision, parts
        )
        extra = {**admission.audit, "cookies_dropped": dropped} if dropped else admission.audit
        if admission.refusal is not None:
            out = self._reply(admission.refusal, dest)
            if out.reply is not None:
                out.reply.headers.update(admission.headers)
            out.audit = admission.audit
            return out
        rules = policy.tenants[tenant].secrets
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
                    values[name] = await self.kinds.token(resolver, tenant, name, rule)
            except (BackendError, CredentialError) as exc:
                log.warning("keybroker: secret %r of tenant %r: %s", name, tenant, exc)
                await self.governor.refund(admission)
                return self._reply(
                    failure(Reason(exc.reason), tenant, name, decision.secrets), dest
                )

        def approve(name: str, location: str) -> str | None:
            if (name, location) in decision.substitute and name in values:
                return values[name].reveal()
            return None

        try:
            new_parts = locations.substitute(parts, approve)
        except SubstitutionError:
            await self.governor.refund(admission)
            return self._reply(failure(Reason.INTERNAL_ERROR, tenant, None, decision.secrets), dest)
        if signed:
            try:
                new_parts = await self.kinds.sign(resolver, tenant, dest, new_parts, signed, rules)
            except (BackendError, CredentialError) as exc:
                await self.governor.refund(admission)
                return self._reply(
                    failure(Reason(exc.reason), tenant, signed[0], decision.secrets), dest
                )
        fingerprints = self._fingerprints(values)
        record_id = self._record_sent(decision, dest, fingerprints, extra)
        if record_id is None:
            await self.governor.refund(admission)
            return self._reply(
                failure(Reason.AUDIT_UNAVAILABLE, tenant, None, decision.secrets), dest
            )
        return Outcome(
            decision,
            parts=new_parts,
            fingerprints=fingerprints,
            record_id=record_id,
            audit=extra,
        )

    def _fingerprints(self, values: Mapping[str, SecretValue]) -> dict[str, dict[str, str | None]]:
        key = self._hmac_key
        if key is None or not self.policy.audit.fingerprints:
            return {}
        return {
            n: {"fp": fingerprint(key, v.reveal_bytes()), "version": v.version}
            for n, v in values.items()
        }

    # -- the response path -------------------------------------------------------
    # ``tenant`` is the reader: its own values become their placeholders,
    # every other tenant's a name-free marker (never named, never delivered).
    # Captured values (DESIGN.md §11) are scrubbed after, for their own tenant only.
    def scrub(self, data: bytes, tenant: str | None = None) -> tuple[bytes, int]:
        self.kinds.sync_minted()  # tokens another worker minted
        out, n = (
            (data, 0) if not len(self.scrubber) or not data else self.scrubber.scrub(data, tenant)
        )
        return self.kinds.captures.scrub(out, tenant, n)

    def scrub_many(self, pieces: list[bytes], tenant: str | None = None) -> list[tuple[bytes, int]]:
        self.kinds.sync_minted()
        if not len(self.scrubber):
            done = [(piece, 0) for piece in pieces]
        else:
            done = self.scrubber.scrub_many(pieces, tenant)
        if not self.kinds.captures.active:
            return done
        return [self.kinds.captures.scrub(d, tenant, n) for d, n in done]

    def stream_scrubber(self, tenant: str | None = None) -> StreamScrubber | ChainedStream:
        self.kinds.sync_minted()
        return self.kinds.captures.stream(self.scrubber.stream(tenant), tenant)

    # -- audit -------------------------------------------------------------------
    def _clean(self, tenant: str | None, *texts: str, caseless: tuple[int, ...] = ()) -> list[str]:
        """Agent-chosen text for the audit, with any known value replaced by
        its placeholder (a raw value in an allowed path must not land here),
        or by the marker for another tenant's value. Host names and methods
        reach here case-folded: the scrubber knows those spellings too."""
        done = self.scrub_many([t.encode("utf-8", "surrogateescape") for t in texts], tenant or "")
        out = [
            data.decode("utf-8", "replace") if n else t
            for (data, n), t in zip(done, texts, strict=True)
        ]
        if len(self.scrubber):  # host names and methods: in any case
            for i in caseless:
                data, n = self.scrubber.scrub_caseless(
                    out[i].encode("utf-8", "surrogateescape"), tenant or ""
                )
                if n:
                    out[i] = data.decode("utf-8", "replace")
        return out

    def _record_sent(
        self,
        decision: Decision,
        dest: Destination,
        fingerprints: Mapping[str, Any],
        extra: Mapping[str, Any] | None = None,
    ) -> str | None:
        return self.recorder.sent(decision, dest, fingerprints, extra)

    def record(
        self,
        *,
        decision: Decision,
        dest: Destination | None,
        status: int | None,
        scrubbed: int,
        started: float,
        fingerprints: Mapping[str, Any] | None = None,
        record_id: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Write the ``done`` audit record for a request (see
        :class:`~broker.audit.recorder.Recorder`); an upstream 401 to an
        allowed request also drops a minted token."""
        if status == 401 and decision.verdict == "allow":
            self.kinds.rejected(decision)
        self.recorder.done(
            decision=decision,
            dest=dest,
            status=status,
            scrubbed=scrubbed,
            started=started,
            fingerprints=fingerprints,
            record_id=record_id,
            extra=extra,
        )

    def interrupt_open(self) -> int:
        return self.recorder.interrupt_open()

    def close(self) -> None:
        self.preloader.stop()
        self.interrupt_open()
        _close_governor(self.governor)
        self._close_backends(self._backends)
        self._close_backends(self._retired)
        self.audit.close()
        if self.feed is not None:
            self.feed.close()


def _close_governor(governor: Governor) -> None:
    """Stop the admin API and the store's connections, in the loop when there is one."""
    import asyncio

    try:
        asyncio.get_running_loop().create_task(governor.aclose())
    except RuntimeError:
        asyncio.run(governor.aclose())
