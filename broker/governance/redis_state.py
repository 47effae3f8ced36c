"""The shared state store: Redis or Valkey through redis-py's asyncio client.
Each read-and-write is one Lua script (atomic across brokers), timed by the
store's clock (``TIME``). A dead store raises ``StateUnavailable`` within
``state.timeout``; redis-py reconnects by itself. Keys cross slots: a single
Redis/Valkey (replicas or Sentinel), not Redis Cluster."""

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
EPOCH_BROKER, EPOCH_OPERATOR = "kb:", "op:"
"""Who wrote the store's epoch marker: the first broker, or ``keybroker state init``."""
STATE_INIT = "`keybroker state init --config FILE`"


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
        self._known: dict[str, float] = {}
        """Every revocation this broker has seen (id: expiry), kept even if the store loses it."""
        self._seen = float("-inf")
        self._version: str | None = None
        self._task: asyncio.Task[None] | None = None
        self.epoch: str | None = None
        """The store's epoch marker as this broker adopted it (None: not yet)."""
        self.lost: str | None = None
        """Why the store's data cannot be trusted (its marker went missing or changed)."""

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]], *, gated: bool = True) -> T:
        if gated and self.lost is not None:
            raise StateUnavailable(f"state store: {what} refused ({self.lost})")
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
        args += [self._k("epoch"), self.epoch or ""]  # counts only in the store we know
        kind, index, wait_ms = await self._call(
            "charge", lambda: self._charge(keys=keys, args=args)
        )
        if not kind:
            return None
        if int(kind) == 3:
            self._lose("missing or changed at a charge")
            raise StateUnavailable(f"state store: charge refused ({self.lost})")
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

        await self._call("refund", run, gated=False)

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

        await self._call("revoke", run, gated=False)

    def revoked(self) -> tuple[frozenset[str], float]:
        if self.lost is not None:  # sessions: 503 until an operator re-initialises
            return self._revoked, float("inf")
        return self._revoked, time.monotonic() - self._seen

    def _lose(self, how: str) -> None:
        if self.lost is None:
            log.error(
                "keybroker: the state store's epoch marker is %s: it lost its data (a restart "
                "without persistence, a flush, an eviction, a failover) or is another store; "
                "refusing the requests that need it (503) until an operator checks and runs %s",
                how,
                STATE_INIT,
            )
        self.lost = f"its epoch marker is {how}; an operator must run {STATE_INIT}"

    async def check_epoch(self) -> None:
        """Adopt the store's epoch marker (the first broker writes it); after
        that, a missing marker, or one another broker wrote, means lost data:
        fail closed until an operator's ``state init`` writes a new one."""
        key = self._k("epoch")
        got = await self._call("epoch", lambda: self.client.get(key), gated=False)
        if self.epoch is None:
            if got is None:
                mark = EPOCH_BROKER + new_id("")
                await self._call("epoch", lambda: self.client.set(key, mark, nx=True), gated=False)
                got = await self._call("epoch", lambda: self.client.get(key), gated=False)
            self.epoch = None if got is None else str(got)
            return
        if got == self.epoch:
            return
        if got is not None and str(got).startswith(EPOCH_OPERATOR):
            log.warning("keybroker: the state store was re-initialised by an operator; resuming")
            self.epoch, self.lost, self._version = str(got), None, None  # re-read revocations
            return
        self._lose("missing" if got is None else "changed")

    async def refresh(self) -> None:
        """Check the epoch marker; re-read the revocation list when its version moved."""
        await self.check_epoch()
        version = await self._call(
            "revocations", lambda: self.client.get(self._k("revoked", "v")), gated=False
        )
        if version != self._version:
            now = int(time.time())
            got: list[Any] = await self._call(
                "revocations",
                lambda: self.client.zrangebyscore(
                    self._k("revoked"), now - 60, "+inf", withscores=True
                ),
                gated=False,
            )
            # A union with what this broker saw before: a store that lost its
            # data (then re-initialised) never un-revokes a session here.
            known = {sid: exp for sid, exp in self._known.items() if exp >= now - 60}
            known.update({str(sid): float(exp) for sid, exp in got})
            self._known = known
            self._revoked, self._version = (
                frozenset(known),
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

    async def init_epoch(self) -> str:
        """``keybroker state init``: a new epoch marker, written by an operator
        (every broker adopts it and resumes; the store's counts start over)."""
        mark = EPOCH_OPERATOR + new_id("")
        await self._call("init", lambda: self.client.set(self._k("epoch"), mark), gated=False)
        return mark

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
