"""The engine: the live policy and the long-lived parts built from it
(backends, scrubber, audit, governance, credential kinds), reloaded whole.
The request path is :mod:`broker.pipeline`; the addon only translates (§10)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from broker import pipeline
from broker.audit.cleaning import clean_texts
from broker.audit.lock import AuditInUse
from broker.audit.log import AuditLog
from broker.audit.record import RecordSink
from broker.audit.recorder import Recorder, audit_file, audit_key, open_audit
from broker.backends.base import Backend
from broker.backends.preload import Preloader, UnprotectableSecret
from broker.backends.registry import build_backends, cache_ttls
from broker.backends.resolver import Resolver
from broker.credentials.capture_scrub import ChainedStream
from broker.credentials.kinds import CredentialKinds
from broker.egress.resolve import Lookup, Pins, system_lookup
from broker.governance.governor import Governor
from broker.pipeline import Outcome, refuse
from broker.policy.load import PolicyError, load_policy
from broker.policy.schema import Policy
from broker.request.auth import authenticate, still_valid
from broker.request.decision import Decision, Destination, Reason
from broker.request.locations import RequestParts
from broker.request.placeholders import placeholder
from broker.scrub import rawegress
from broker.scrub.scrubber import Scrubber
from broker.scrub.stream import StreamScrubber
from broker.scrub.strength import weakness
from broker.secret import SecretValue

log = logging.getLogger("keybroker")


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
        self._hmac_key = audit_key(policy, self._env)
        self.audit = open_audit(policy, self._hmac_key, worker)
        self.recorder = Recorder(lambda: self.audit, partial(clean_texts, self), feed)
        self.governor = Governor(
            policy,
            self._env,
            announce=self._announce,
            clean=lambda s: clean_texts(self, None, s)[0],
            workers=worker is not None,  # one of --workers N: no per-process state
        )
        self.kinds = CredentialKinds(
            remember=self._remember,
            record=self.record,
            policy=lambda: self.policy,
            record_sent=self.recorder.sent,
        )
        self.kinds.keep_minted(policy.certs_dir, self._remember, compact=not worker)

    @classmethod
    def from_file(cls, path: str | Path, **kw: Any) -> Engine:
        return cls(load_policy(Path(path).resolve()), source=Path(path).resolve(), **kw)

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

    def audit_path(self, policy: Policy) -> Path:
        return audit_file(policy, self.worker)

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
            key = audit_key(policy, self._env)
            commit_governance = self.governor.reload(policy)
            resolver = self._make_resolver(policy)
            if self.audit_path(policy) != self.audit.path:
                new_audit = open_audit(policy, key, self.worker)  # AuditInUse: another broker's
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
                    new_audit = open_audit(policy, key, self.worker)
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

    def authenticate(self, header: str | None) -> tuple[str, str] | None:
        p = self.policy
        return authenticate(p, header) or self.governor.authenticate(p, header)

    def still_valid(self, tenant: str, digest: str) -> bool:
        return self.identity_problem(tenant, digest) is None

    def identity_problem(self, tenant: str, digest: str) -> Reason | None:
        """None while a connection's identity holds; otherwise why not
        (a session revoked or expired: 407; its revocations unknown: 503)."""
        policy = self.policy
        if digest.startswith("session:"):
            return self.governor.check(policy, tenant, digest)
        return None if still_valid(policy, tenant, digest) else Reason.UNAUTHENTICATED

    def _announce(self, rec: Mapping[str, Any]) -> None:  # a held request, live
        if self.feed is not None:
            self.feed.push(rec)

    # -- the request path --------------------------------------------------------
    def check_connect(self, tenant: str, dest: Destination) -> Outcome | None:
        """A CONNECT whose target or SNI holds one of ``tenant``'s values is
        refused before any lookup or connection."""
        refusal = rawegress.check_destination(self.scrubber, self.policy, tenant, dest)
        return None if refusal is None else refuse(self.policy, refusal, dest)

    def raw_in_message(self, tenant: str | None, data: bytes) -> bool:
        """A WebSocket message from the client holds one of its tenant's values."""
        return rawegress.in_message(self.scrubber, tenant, data)

    async def process(
        self,
        tenant: str | None,
        dest: Destination,
        parts: RequestParts,
        *,
        pins: Pins | None = None,
    ) -> Outcome:
        """One request (:mod:`broker.pipeline`). ``pins``: the client
        connection's resolved destinations (a fresh table, so one lookup per
        call, when the caller keeps none)."""
        return await pipeline.process(self, tenant, dest, parts, pins)

    @property
    def hmac_key(self) -> bytes | None:
        """The audit's HMAC key (also keys value fingerprints), if any."""
        return self._hmac_key

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

    def close(self) -> None:
        self.preloader.stop()
        self.recorder.interrupt_open()
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
