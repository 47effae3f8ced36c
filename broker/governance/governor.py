"""Governance of use in one object the engine calls (DESIGN.md §13): session
identities, then — after the policy allowed a request and before any value
is read — approvals, rate limits and use counts, against the state store."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.governance import sessions
from broker.governance.admin import AdminServer
from broker.governance.approvals import hold, needs_approval
from broker.governance.config import WORKERS_NEED_STATE, needs_state
from broker.governance.limits import Ticket, charges_for, retry_after
from broker.governance.state import StateStore, StateUnavailable, build_store
from broker.policy.load import PolicyError
from broker.policy.schema import Policy
from broker.request.auth import parse_basic
from broker.request.decision import Decision, Destination, Reason, failure
from broker.request.locations import RequestParts

log = logging.getLogger("keybroker")


@dataclass
class Admission:
    refusal: Decision | None = None
    headers: dict[str, str] = field(default_factory=dict)
    """Extra response headers for a refusal (``Retry-After``)."""
    ticket: Ticket | None = None
    audit: dict[str, Any] = field(default_factory=dict)
    """Extra audit fields (the approval: who approved what)."""


def session_key(policy: Policy, env: Mapping[str, str]) -> bytes | None:
    if policy.sessions is None:
        return None
    name = policy.sessions.key_env
    key = env.get(name, "")
    if len(key) < 16:
        raise PolicyError(
            [f"sessions.key_env: environment variable {name} must hold at least 16 characters"]
        )
    return key.encode("utf-8")


class Governor:
    def __init__(
        self,
        policy: Policy,
        env: Mapping[str, str],
        *,
        announce: Callable[[dict[str, Any]], None] | None = None,
        clean: Callable[[str], str] = lambda s: s,
        workers: bool = False,
    ) -> None:
        self._env = env
        self._workers = workers
        """One of several ``--workers``: state must be shared (no MemoryStore)."""
        self._check_workers(policy)
        self.key = session_key(policy, env)
        self.store: StateStore = build_store(policy.state, env)
        self._state_config = policy.state
        self._announce, self._clean = announce, clean
        self._policy = policy
        self.admin: AdminServer | None = None
        self._started = False
        self._said_down = float("-inf")

    # -- lifecycle -----------------------------------------------------------------
    def reload(self, policy: Policy) -> Callable[[], None]:
        """Check the new policy; returns the switch to call once the engine
        commits it. Raises PolicyError (the old policy stays)."""
        self._check_workers(policy)
        key = session_key(policy, self._env)
        listen = self._policy.admin.listen if self._policy.admin else None
        same = policy.state == self._state_config
        store = self.store if same else build_store(policy.state, self._env)

        def commit() -> None:
            old = self.store
            self.key, self.store, self._state_config, self._policy = (
                key,
                store,
                policy.state,
                policy,
            )
            if old is not store:
                log.warning("keybroker: state store changed; new requests use the new one")
                self._spawn(store.start())
                self._spawn(old.aclose())
            if self.admin is None and policy.admin is not None and self._started:
                self._spawn(self._start_admin())
            elif self.admin is not None and (policy.admin is None or policy.admin.listen != listen):
                log.warning("keybroker: admin.listen changed; it applies at the next restart")

        return commit

    def _check_workers(self, policy: Policy) -> None:
        """Refuse, at start-up and on reload alike, per-worker governance state."""
        if self._workers and policy.state is None and needs_state(policy):
            raise PolicyError([f"keybroker: {WORKERS_NEED_STATE}"])

    @staticmethod
    def _spawn(coro: Any) -> None:
        import asyncio

        try:
            asyncio.get_running_loop().create_task(coro)
        except RuntimeError:
            coro.close()

    async def start(self) -> None:
        """Start the revocation watch and the admin API (inside the proxy's loop)."""
        self._started = True
        await self.store.start()
        await self._start_admin()

    async def _start_admin(self) -> None:
        admin = self._policy.admin
        if admin is not None and self.admin is None:
            self.admin = AdminServer(lambda: self._policy, lambda: self.store)
            try:
                await self.admin.start(admin.listen)
            except OSError as exc:
                log.error(
                    "keybroker: admin API cannot listen on %s (%s): held requests will time out",
                    admin.listen,
                    exc.strerror or type(exc).__name__,
                )

    async def aclose(self) -> None:
        if self.admin is not None:
            await self.admin.aclose()
        await self.store.aclose()

    # -- identity --------------------------------------------------------------------
    def authenticate(self, policy: Policy, header: str | None) -> tuple[str, str] | None:
        """(tenant, session identity) for a valid, unrevoked session token."""
        if self.key is None:
            return None
        creds = parse_basic(header)
        if creds is None or not creds[1].startswith(sessions.PREFIX):
            return None
        tenant, token = creds
        t = policy.tenants.get(tenant)
        if t is None:
            return None
        s = sessions.verify(self.key, token, tenant, t.token_sha256)
        if s is None or s.id in self.store.revoked()[0]:
            return None
        return tenant, sessions.identity(s, t.token_sha256)

    def check(self, policy: Policy, tenant: str, identity: str) -> Reason | None:
        """Is a bound session still good? None, 407, or 503 when the
        revocation list cannot be known (the store is down)."""
        parsed = sessions.from_identity(identity)
        if parsed is None:
            return None
        sid, expires, digest = parsed
        t = policy.tenants.get(tenant)
        if (
            self.key is None
            or t is None
            or not hmac.compare_digest(digest, t.token_sha256)
            or expires <= time.time()
        ):
            return Reason.UNAUTHENTICATED
        revoked, age = self.store.revoked()
        if sid in revoked:
            return Reason.UNAUTHENTICATED
        if self.store.shared and age > sessions.STALE:
            return Reason.STATE_UNAVAILABLE
        return None

    # -- the request path ------------------------------------------------------------
    async def admit(
        self,
        policy: Policy,
        tenant: str,
        dest: Destination,
        decision: Decision,
        parts: RequestParts | None = None,
    ) -> Admission:
        """Approvals, then limits, for an allowed request; before any value is read."""
        rules = policy.tenants[tenant].secrets
        names = list(decision.secrets)
        need = needs_approval(rules, names, dest.method)
        charges = charges_for(tenant, names, rules)
        if not need and not charges:
            return Admission()
        store = self.store
        out = Admission()
        try:
            reason, held = await hold(
                store,
                policy.approvals,
                tenant,
                Destination(
                    dest.scheme,
                    self._clean(dest.host),
                    dest.port,
                    dest.method,
                    self._clean(dest.path),
                ),
                need,
                rules,
                query=self._clean(parts.query) if parts is not None else "",
                body_bytes=len(parts.body) if parts is not None else 0,
                announce=self._held,
            )
            if held is not None:
                out.audit.update(held.audit())
            if reason is not None:
                out.refusal = failure(reason, tenant, need[0], decision.secrets)
                if reason is Reason.RATE_LIMITED:  # too many held already
                    out.headers["retry-after"] = str(int(policy.approvals.timeout))
                    log.warning(
                        "keybroker: tenant %s already has %d requests awaiting approval; "
                        "refusing more (429)",
                        tenant,
                        policy.approvals.max_pending,
                    )
                return out
            ticket = Ticket(charges)
            refusal = await store.charge(charges, ticket.token) if charges else None
        except StateUnavailable as exc:
            self._store_down(exc)
            out.refusal = failure(Reason.STATE_UNAVAILABLE, tenant, None, decision.secrets)
            return out
        if refusal is None:
            out.ticket = ticket
        elif refusal.kind == "rate":
            out.refusal = failure(Reason.RATE_LIMITED, tenant, refusal.secret, decision.secrets)
            out.headers["retry-after"] = retry_after(refusal)
        else:
            out.refusal = failure(Reason.USES_EXHAUSTED, tenant, refusal.secret, decision.secrets)
        return out

    async def refund(self, admission: Admission) -> None:
        """Give back the uses of a request refused after it was counted."""
        if admission.ticket is not None:
            try:
                await admission.ticket.refund(self.store)
            except StateUnavailable as exc:
                self._store_down(exc)

    def _store_down(self, exc: StateUnavailable) -> None:
        """Say so at most every 10 s: a store outage under load is not a log flood."""
        now = time.monotonic()
        if now - self._said_down >= 10:
            self._said_down = now
            log.error("keybroker: %s; refusing the requests that need it (503)", exc)

    def _held(self, rec: dict[str, str]) -> None:
        log.warning(
            "keybroker: held %s for tenant %s: approve with `keybroker approvals approve %s`",
            rec["id"],
            rec["tenant"],
            rec["id"],
        )
        if self._announce is not None:
            self._announce(
                {
                    "ts": rec["since"],
                    "decision": "held",
                    "tenant": rec["tenant"],
                    "secrets": rec["secrets"].split(","),
                    "method": rec["method"],
                    "host": rec["host"],
                    "port": int(rec["port"]),
                    "path": rec["path"],
                    "status": None,
                    "reason": f"approval {rec['id']}",
                    "scrubbed": 0,
                    "duration_ms": 0.0,
                }
            )
