"""The state behind governance (DESIGN.md §13): rate windows, use counts,
held requests and revoked sessions, behind one Protocol. Without
``state.url`` it lives in this process (:class:`MemoryStore`); with it, in
Redis or Valkey (:mod:`broker.governance.redis_state`), so every broker
sharing the store behaves as one.

Every operation is atomic across brokers. A store that cannot answer raises
:class:`StateUnavailable`; callers refuse the request (503
``state_unavailable``), never let it through."""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from broker.governance.config import StateConfig


class StateUnavailable(Exception):
    """The state store did not answer (the message never holds a value)."""


@dataclass(frozen=True)
class Charge:
    """One use of one secret by one request."""

    tenant: str
    secret: str
    rate: tuple[int, int] | None
    """(N, window seconds): at most N uses in any window of that length."""
    max_uses: int | None


@dataclass(frozen=True)
class Refusal:
    kind: Literal["rate", "uses"]
    secret: str
    retry_after: float = 0.0


Verdict = Literal["approved", "denied"]
APPROVAL_FIELDS = (
    "id",
    "tenant",
    "secret",
    "secrets",
    "method",
    "host",
    "port",
    "path",
    "query_keys",
    "body_bytes",
    "since",
)


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(8)


class StateStore(Protocol):
    shared: bool
    """True when other brokers see the same state."""

    async def charge(self, charges: Sequence[Charge], token: str) -> Refusal | None:
        """Count one use of each charge, all or none: the first limit a use
        would break, or None once every use is counted."""
        ...

    async def refund(self, charges: Sequence[Charge], token: str) -> None:
        """Undo :meth:`charge` (the value was never sent)."""
        ...

    async def open_approval(
        self, record: Mapping[str, str], *, dedupe: str | None, ttl: float, limit: int = 0
    ) -> str | None:
        """Store a held request (pending) and return its id; with ``dedupe``,
        join a request already pending under that key instead. With
        ``limit``, None when ``record["tenant"]`` already has that many pending."""
        ...

    async def approval(self, approval_id: str) -> dict[str, str] | None: ...

    async def pending(self) -> list[dict[str, str]]: ...

    async def decide(
        self, approval_id: str, verdict: Verdict, by: str, remember: Sequence[str], seconds: float
    ) -> dict[str, str] | None:
        """Set the verdict of a pending request (None if not pending); an
        approval also remembers ``remember`` (``tenant:secret`` keys) for
        ``seconds``."""
        ...

    async def expire(self, approval_id: str, dedupe: str | None) -> dict[str, str] | None:
        """Take a request off the pending list; its record as it stands
        (a verdict given meanwhile wins over the timeout)."""
        ...

    async def remembered(self, keys: Sequence[str]) -> bool:
        """Every ``tenant:secret`` key has a live first-use approval."""
        ...

    async def revoke(self, session_id: str, expires: int) -> None: ...

    async def usage(self, charges: Sequence[Charge]) -> list[tuple[int, int]]:
        """(uses in the current rate window, uses in all) for each charge."""
        ...

    async def reset(self, tenant: str, secret: str) -> None:
        """Forget a secret's rate window and use count (an operator re-arms it)."""
        ...

    def revoked(self) -> tuple[frozenset[str], float]:
        """Revoked session ids as last seen, and how many seconds ago they were seen."""
        ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


class MemoryStore:
    """In-process state: the default without ``state.url`` (one broker)."""

    shared = False

    def __init__(self) -> None:
        self._windows: dict[tuple[str, str], deque[tuple[float, str]]] = {}
        self._uses: dict[tuple[str, str], int] = {}
        self._approvals: dict[str, dict[str, str]] = {}
        self._deadline: dict[str, float] = {}
        self._dedupe: dict[str, str] = {}
        self._remember: dict[str, float] = {}
        self._revoked: dict[str, int] = {}

    async def charge(self, charges: Sequence[Charge], token: str) -> Refusal | None:
        now = time.monotonic()
        for c in charges:
            key = (c.tenant, c.secret)
            if c.rate is not None:
                n, window = c.rate
                q = self._windows.setdefault(key, deque())
                while q and q[0][0] <= now - window:
                    q.popleft()
                if len(q) >= n:
                    return Refusal("rate", c.secret, q[len(q) - n][0] + window - now)
            if c.max_uses is not None and self._uses.get(key, 0) >= c.max_uses:
                return Refusal("uses", c.secret)
        for c in charges:
            key = (c.tenant, c.secret)
            if c.rate is not None:
                self._windows.setdefault(key, deque()).append((now, token))
            if c.max_uses is not None:
                self._uses[key] = self._uses.get(key, 0) + 1
        return None

    async def refund(self, charges: Sequence[Charge], token: str) -> None:
        for c in charges:
            key = (c.tenant, c.secret)
            q = self._windows.get(key)
            if c.rate is not None and q is not None:
                for entry in [e for e in q if e[1] == token]:
                    q.remove(entry)
            if c.max_uses is not None and self._uses.get(key, 0) > 0:
                self._uses[key] -= 1

    def _sweep(self) -> None:
        """Forget requests well past their deadline (waiters read the verdict until then)."""
        now = time.monotonic()
        for aid in [a for a, d in self._deadline.items() if d + 300 < now]:
            self._deadline.pop(aid, None)
            self._approvals.pop(aid, None)

    async def open_approval(
        self, record: Mapping[str, str], *, dedupe: str | None, ttl: float, limit: int = 0
    ) -> str | None:
        self._sweep()
        if dedupe is not None:
            known = self._dedupe.get(dedupe)
            if known is not None and self._approvals.get(known, {}).get("state") == "pending":
                return known
        if limit > 0:
            now, tenant = time.monotonic(), record.get("tenant")
            waiting = sum(
                1
                for aid, r in self._approvals.items()
                if r.get("tenant") == tenant
                and r.get("state") == "pending"
                and self._deadline.get(aid, 0.0) > now
            )
            if waiting >= limit:
                return None
        aid = new_id("apr_")
        self._approvals[aid] = {**record, "id": aid, "state": "pending"}
        self._deadline[aid] = time.monotonic() + ttl
        if dedupe is not None:
            self._dedupe[dedupe] = aid
        return aid

    async def approval(self, approval_id: str) -> dict[str, str] | None:
        rec = self._approvals.get(approval_id)
        return dict(rec) if rec is not None else None

    async def pending(self) -> list[dict[str, str]]:
        self._sweep()
        now = time.monotonic()
        recs = [
            dict(r)
            for aid, r in self._approvals.items()
            if r.get("state") == "pending" and self._deadline.get(aid, 0.0) > now
        ]
        return sorted(recs, key=lambda r: r.get("since", ""))

    async def decide(
        self, approval_id: str, verdict: Verdict, by: str, remember: Sequence[str], seconds: float
    ) -> dict[str, str] | None:
        rec = self._approvals.get(approval_id)
        if rec is None or rec.get("state") != "pending":
            return None
        rec.update(state=verdict, by=by)
        if verdict == "approved" and seconds > 0:
            for key in remember:
                self._remember[key] = time.monotonic() + seconds
        return dict(rec)

    async def expire(self, approval_id: str, dedupe: str | None) -> dict[str, str] | None:
        rec = self._approvals.get(approval_id)
        if dedupe is not None and self._dedupe.get(dedupe) == approval_id:
            del self._dedupe[dedupe]
        if rec is None:
            return None
        if rec.get("state") == "pending":
            rec["state"] = "expired"
        return dict(rec)

    async def remembered(self, keys: Sequence[str]) -> bool:
        now = time.monotonic()
        return all(self._remember.get(k, 0.0) > now for k in keys)

    async def usage(self, charges: Sequence[Charge]) -> list[tuple[int, int]]:
        now = time.monotonic()
        out = []
        for c in charges:
            key = (c.tenant, c.secret)
            window = c.rate[1] if c.rate else 0
            recent = sum(1 for t, _ in self._windows.get(key, ()) if t > now - window)
            out.append((recent, self._uses.get(key, 0)))
        return out

    async def reset(self, tenant: str, secret: str) -> None:
        self._windows.pop((tenant, secret), None)
        self._uses.pop((tenant, secret), None)

    async def revoke(self, session_id: str, expires: int) -> None:
        now = time.time()
        for sid in [s for s, e in self._revoked.items() if e < now]:
            del self._revoked[sid]
        self._revoked[session_id] = expires

    def revoked(self) -> tuple[frozenset[str], float]:
        return frozenset(self._revoked), 0.0

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def build_store(config: StateConfig | None, env: Mapping[str, str] | None = None) -> StateStore:
    if config is None:
        return MemoryStore()
    from broker.governance.redis_state import RedisStore

    password = None
    if config.password_env:
        import os

        password = (env if env is not None else os.environ).get(config.password_env) or None
    return RedisStore(config, password=password)
