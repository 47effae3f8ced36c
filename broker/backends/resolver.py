"""From a tenant's secret rule to its value (DESIGN.md §1 step 4).

Values are cached per ``(backend, path, field)`` for that backend's
``cache_ttl`` (0: never cached), counted from the end of the read; after it a
resolve reads again, which is how rotation is picked up. Concurrent misses
for one key share a single read (and its error); errors are never cached.

``on_value(tenant, secret_name, value)`` runs on every fresh read, and the
first time each ``(tenant, secret_name)`` is served a value another tenant or
name already fetched, so a scrubber keyed on either learns every value before
it is used. If it raises, the value is not returned (fail closed) and the next
resolve calls it again.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field

from broker.backends.base import Backend, BackendError
from broker.policy.secret_rule import SecretRule
from broker.secret import SecretValue

OnValue = Callable[[str, str, SecretValue], None]
_Key = tuple[str, str, str]


@dataclass(slots=True, eq=False)
class _Entry:
    value: SecretValue
    expires: float
    told: set[tuple[str, str]] = field(default_factory=set)
    """The (tenant, secret name) pairs ``on_value`` has accepted this value for."""


class _Read(Future[_Entry]):
    """One read in flight, shared by every caller that missed on its key.

    It is running from birth, so a cancelled asyncio waiter cannot cancel it;
    ``started``/``settled`` (guarded by the resolver's lock) let a read that
    never got a thread be abandoned exactly once."""

    def __init__(self, key: _Key, generation: int) -> None:
        super().__init__()
        self.set_running_or_notify_cancel()
        self.key = key
        self.generation = generation  # stale reads (invalidated meanwhile) are not cached
        self.started = False
        self.settled = False


class Resolver:
    """Thread-safe; ``resolve`` blocks, ``aresolve`` keeps the event loop free."""

    def __init__(
        self,
        backends: Mapping[str, Backend],
        ttls: Mapping[str, float],
        *,
        on_value: OnValue | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backends = dict(backends)
        self._ttls = dict(ttls)
        self._on_value = on_value
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[_Key, _Entry] = {}
        self._inflight: dict[_Key, _Read] = {}
        self._generation = 0  # bumped by invalidate()

    def resolve(
        self, tenant: str, secret_name: str, rule: SecretRule, *, quiet: bool = False
    ) -> SecretValue:
        """The value for ``rule``. Raises BackendError or SecretNotFound."""
        got = self._begin((rule.backend, rule.path, rule.field))
        if isinstance(got, _Entry):
            return self._deliver(got, tenant, secret_name, quiet)
        read, lead = got
        if lead:
            self._lead(read)
        return self._deliver(self._outcome(read), tenant, secret_name, quiet)

    async def aresolve(
        self, tenant: str, secret_name: str, rule: SecretRule, *, quiet: bool = False
    ) -> SecretValue:
        """Like :meth:`resolve`. A cache hit is served on the loop; a miss reads
        in a worker thread, and waiters for the same key wait without one."""
        backend = self._backends.get(rule.backend)
        if backend is not None and not backend.blocking:
            return self.resolve(tenant, secret_name, rule, quiet=quiet)  # no I/O: no thread hop
        got = self._begin((rule.backend, rule.path, rule.field))
        if isinstance(got, _Entry):
            return self._deliver(got, tenant, secret_name, quiet)
        read, lead = got
        try:
            if lead:
                # Shielded: our caller's cancellation must not cancel the
                # read the waiters share. If it never gets a thread (executor
                # shut down, loop closing), the waiters are released.
                job = asyncio.ensure_future(asyncio.to_thread(self._lead, read))
                job.add_done_callback(lambda j: self._job_done(j, read))
                await asyncio.shield(job)
            else:
                await asyncio.wrap_future(read)
        except Exception:  # noqa: S110 - the outcome is re-raised below
            pass
        return self._deliver(self._outcome(read), tenant, secret_name, quiet)

    def invalidate(self) -> None:
        """Forget every cached value; reads in flight finish but are not cached."""
        with self._lock:
            self._cache.clear()
            self._generation += 1

    # -- internals -------------------------------------------------------------

    def _begin(self, key: _Key) -> _Entry | tuple[_Read, bool]:
        """A fresh cache entry, or the read to wait on and whether we lead it."""
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None:
                if self._clock() < entry.expires:
                    return entry
                del self._cache[key]
            read = self._inflight.get(key)
            if read is not None:
                return read, False
            read = self._inflight[key] = _Read(key, self._generation)
            return read, True

    def _lead(self, read: _Read) -> None:
        """Do ``read`` and settle it; never raises an Exception."""
        with self._lock:
            if read.settled:
                return  # abandoned before it got a thread
            read.started = True
        name, path, fld = read.key
        try:
            backend = self._backends.get(name)
            if backend is None:
                raise BackendError(f"no backend named {name!r}")
            value = backend.read(path, fld)
            if not isinstance(value, SecretValue):
                raise TypeError("backend returned something other than a SecretValue")
        except BaseException as exc:
            self._settle(
                read,
                exc
                if isinstance(exc, BackendError)
                else BackendError(
                    f"backend {name!r} ({path}) failed unexpectedly ({type(exc).__name__})"
                ),
            )
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt and friends: waiters got a BackendError
            return
        self._settle(read, _Entry(value, self._clock() + self._ttls.get(name, 0.0)))

    def _settle(self, read: _Read, outcome: _Entry | BackendError) -> None:
        with self._lock:
            if read.settled:
                return
            read.settled = True
            if self._inflight.get(read.key) is read:
                del self._inflight[read.key]
            if (
                isinstance(outcome, _Entry)
                and self._ttls.get(read.key[0], 0.0) > 0
                and read.generation == self._generation
            ):
                self._cache[read.key] = outcome
        if isinstance(outcome, _Entry):
            read.set_result(outcome)
        else:
            read.set_exception(outcome)

    def _job_done(self, job: asyncio.Future[None], read: _Read) -> None:
        if not job.cancelled():
            job.exception()  # retrieved, so asyncio does not log it
        with self._lock:
            abandoned = not read.started
        if abandoned:
            self._settle(read, BackendError(f"read of backend {read.key[0]!r} was abandoned"))

    @staticmethod
    def _outcome(read: _Read) -> _Entry:
        exc = read.exception()  # waits; every read is settled by its leader
        if exc is None:
            return read.result()
        # A fresh copy per caller (tracebacks of a shared instance would pile
        # up), raised outside any handler so nothing is chained to it.
        err = (
            type(exc)(*exc.args)
            if isinstance(exc, BackendError)
            else BackendError(f"read failed ({type(exc).__name__})")
        )
        raise err

    def _deliver(
        self, entry: _Entry, tenant: str, secret_name: str, quiet: bool = False
    ) -> SecretValue:
        """``quiet``: a field that is not secret (a GitHub App id), not told to ``on_value``."""
        if self._on_value is not None and not quiet:
            pair = (tenant, secret_name)
            if pair not in entry.told:
                self._on_value(tenant, secret_name, entry.value)
                entry.told.add(pair)  # a race can only repeat the (idempotent) call
        return entry.value
