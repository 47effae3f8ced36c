"""The shared state store: Redis or Valkey through redis-py's asyncio client.

Each operation that reads and writes is one Lua script, so it is atomic
across brokers; windows use the store's clock (``TIME``), so brokers whose
clocks differ still count one window. A dead store raises
:class:`~broker.governance.state.StateUnavailable` within ``state.timeout``;
redis-py reconnects on the next call, so the store coming back needs no
restart. Keys cross slots: a single Redis/Valkey (with replicas or
Sentinel), not Redis Cluster."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from broker.governance.config import StateConfig
from broker.governance.lua import CHARGE, DECIDE, EXPIRE, OPEN, PENDING, USAGE
from broker.governance.state import Charge, Refusal, StateUnavailable, Verdict, new_id

log = logging.getLogger("keybroker")
T = TypeVar("T")
POLL = 0.25
"""Seconds between looks at the revocation list (a revocation reaches every broker within ~0.3 s)."""


def _pairs(flat: Sequence[Any] | None) -> dict[str, str] | None:
    if not flat:
        return None
    return {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


class RedisStore:
    shared = True

    def __init__(self, config: StateConfig, *, password: str | None = None) -> None:
        self.config = config
        self.p = config.prefix
        self.client: aioredis.Redis = aioredis.from_url(
            config.url,
            socket_timeout=config.timeout,
            socket_connect_timeout=config.timeout,
            retry=Retry(NoBackoff(), 1),  # one retry: a pooled connection from before a restart
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            decode_responses=True,
            **({"password": password} if password else {}),
        )
        s = self.client.register_script
        self._charge, self._open, self._pending = s(CHARGE), s(OPEN), s(PENDING)
        self._decide, self._expire, self._usage = s(DECIDE), s(EXPIRE), s(USAGE)
        self._revoked: frozenset[str] = frozenset()
        self._seen = float("-inf")
        self._version: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        failed = ""
        try:
            async with asyncio.timeout(self.config.timeout * 3):
                return await fn()
        except (RedisError, OSError, TimeoutError) as exc:
            failed = type(exc).__name__
        # Raised outside the except block: no chained exception (or its text) travels on.
        raise StateUnavailable(f"state store: {what} failed ({failed})")

    def _k(self, *parts: str) -> str:
        return self.p + ":".join(parts)

    async def charge(self, charges: Sequence[Charge], token: str) -> Refusal | None:
        keys: list[str] = []
        args: list[str | int] = [token]
        for c in charges:
            keys += [self._k("rate", c.tenant, c.secret), self._k("uses", c.tenant, c.secret)]
            n, window = c.rate or (0, 0)
            args += [n, window * 1000, c.max_uses or 0]
        kind, index, wait_ms = await self._call(
            "charge", lambda: self._charge(keys=keys, args=args)
        )
        if not kind:
            return None
        secret = charges[int(index) - 1].secret
        if int(kind) == 1:
            return Refusal("rate", secret, max(0.0, float(wait_ms) / 1000.0))
        return Refusal("uses", secret)

    async def refund(self, charges: Sequence[Charge], token: str) -> None:
        async def run() -> None:
            async with self.client.pipeline(transaction=True) as pipe:
                for c in charges:
                    if c.rate is not None:
                        pipe.zrem(self._k("rate", c.tenant, c.secret), token)
                    if c.max_uses is not None:
                        pipe.decr(self._k("uses", c.tenant, c.secret))
                await pipe.execute()

        await self._call("refund", run)

    async def open_approval(
        self, record: Mapping[str, str], *, dedupe: str | None, ttl: float, limit: int = 0
    ) -> str | None:
        aid = new_id("apr_")
        flat = [x for kv in record.items() for x in kv]
        keys = [
            self._k("approvals"),
            self._k("dedupe", dedupe) if dedupe else "",
            self._k("held", record.get("tenant", "")),
        ]
        args: list[str | int] = [self._k("approval", ""), aid, int((ttl + 300) * 1000)]
        args += [int(ttl * 1000), limit, *flat]
        got = await self._call("open approval", lambda: self._open(keys=keys, args=args))
        return None if got is None else str(got)

    async def approval(self, approval_id: str) -> dict[str, str] | None:
        rec: Mapping[Any, Any] = await self._call(
            "read approval",
            lambda: self.client.hgetall(self._k("approval", approval_id)),
        )
        return {str(k): str(v) for k, v in rec.items()} if rec else None

    async def pending(self) -> list[dict[str, str]]:
        ids = await self._call("list approvals", lambda: self._pending(keys=[self._k("approvals")]))

        async def read() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:
                for aid in ids:
                    pipe.hgetall(self._k("approval", str(aid)))
                return list(await pipe.execute())

        recs = await self._call("list approvals", read) if ids else []
        out = [dict(r) for r in recs if r and r.get("state") == "pending"]
        return sorted(out, key=lambda r: r.get("since", ""))

    async def decide(
        self, approval_id: str, verdict: Verdict, by: str, remember: Sequence[str], seconds: float
    ) -> dict[str, str] | None:
        keys = [self._k("approval", approval_id), self._k("approvals")]
        args: list[str | int] = [verdict, by, int(seconds * 1000), approval_id]
        args += [self._k("remember", k) for k in remember]
        return _pairs(await self._call("decide", lambda: self._decide(keys=keys, args=args)))

    async def expire(self, approval_id: str, dedupe: str | None) -> dict[str, str] | None:
        keys = [
            self._k("approval", approval_id),
            self._k("approvals"),
            self._k("dedupe", dedupe) if dedupe else "",
        ]
        flat = await self._call("expire", lambda: self._expire(keys=keys, args=[approval_id]))
        return _pairs(flat)

    async def remembered(self, keys: Sequence[str]) -> bool:
        if not keys:
            return True
        names = [self._k("remember", k) for k in keys]
        got = await self._call("remembered", lambda: self.client.mget(names))
        return all(v is not None for v in got)

    async def usage(self, charges: Sequence[Charge]) -> list[tuple[int, int]]:
        if not charges:
            return []
        keys: list[str] = []
        for c in charges:
            keys += [self._k("rate", c.tenant, c.secret), self._k("uses", c.tenant, c.secret)]
        args = [c.rate[1] * 1000 if c.rate else 0 for c in charges]
        flat = await self._call("usage", lambda: self._usage(keys=keys, args=args))
        return [(int(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def reset(self, tenant: str, secret: str) -> None:
        keys = [self._k("rate", tenant, secret), self._k("uses", tenant, secret)]
        await self._call("reset", lambda: self.client.delete(*keys))

    async def revoke(self, session_id: str, expires: int) -> None:
        async def run() -> None:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.zadd(self._k("revoked"), {session_id: expires})
                pipe.zremrangebyscore(self._k("revoked"), "-inf", int(time.time()) - 60)
                pipe.incr(self._k("revoked", "v"))
                await pipe.execute()

        await self._call("revoke", run)

    def revoked(self) -> tuple[frozenset[str], float]:
        return self._revoked, time.monotonic() - self._seen

    async def refresh(self) -> None:
        """Re-read the revocation list when its version moved."""
        version = await self._call("revocations", lambda: self.client.get(self._k("revoked", "v")))
        if version != self._version:
            now = int(time.time())
            ids = await self._call(
                "revocations",
                lambda: self.client.zrangebyscore(self._k("revoked"), now - 60, "+inf"),
            )
            self._revoked, self._version = (
                frozenset(map(str, ids)),
                (None if version is None else str(version)),
            )
        self._seen = time.monotonic()

    async def _poll(self) -> None:
        down = False
        while True:
            try:
                await self.refresh()
                if down:
                    log.warning("keybroker: state store reachable again")
                down = False
            except StateUnavailable as exc:
                if not down:
                    log.error("keybroker: %s; requests that need it are refused", exc)
                down = True
            await asyncio.sleep(POLL)

    async def start(self) -> None:
        if self._task is None:
            with contextlib.suppress(StateUnavailable):
                await self.refresh()
            self._task = asyncio.get_running_loop().create_task(self._poll())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self.client.aclose()
