"""Minted tokens, cached per secret until their lifetime minus a margin;
one request in flight per secret however many requests wait for it
(single flight); a token an upstream refused (401) is dropped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

from broker.secret import SecretValue


def margin(lifetime: float) -> float:
    """Renew a minute early, or halfway through a lifetime shorter than two minutes."""
    return min(60.0, lifetime / 2)


@dataclass(frozen=True)
class Token:
    value: SecretValue
    lifetime: float
    """Seconds the issuer said the token lives."""


class TokenCache:
    """Used from the event loop only."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cache: dict[Hashable, tuple[SecretValue, float]] = {}
        self._inflight: dict[Hashable, asyncio.Future[Token]] = {}

    async def get(self, key: Hashable, fetch: Callable[[], Awaitable[Token]]) -> SecretValue:
        hit = self._cache.get(key)
        if hit is not None and self._clock() < hit[1]:
            return hit[0]
        task = self._inflight.get(key)
        if task is None:
            started = self._clock()
            task = asyncio.ensure_future(fetch())
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._settle(key, t, started))
        token = await asyncio.shield(task)  # a cancelled waiter leaves the fetch to the others
        return token.value

    def _settle(self, key: Hashable, task: asyncio.Future[Token], started: float) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if task.cancelled() or task.exception() is not None:
            return  # errors are never cached: the next request asks again
        token = task.result()
        self._cache[key] = (token.value, started + token.lifetime - margin(token.lifetime))

    def drop(self, key: Hashable) -> None:
        self._cache.pop(key, None)

    def clear(self) -> None:
        self._cache.clear()
