"""The scrubber knows every value the policy can resolve, from the start
(DESIGN.md §7.3; issue 12 item 3).

A broker that only scrubs what it has resolved itself leaks after a restart,
or through another ``--workers`` process: an upstream that recalls a value
sent earlier (``{"your_key": "..."}``) hands it to the agent. So every
engine reads every secret its policy names, on a background thread:

- at start-up and after each reload (a new :class:`Preloader` per policy);
- again once each backend's ``cache_ttl`` has passed (:meth:`Resolver.resolve`
  then reads afresh, so a rotated value is learned within one TTL; a TTL of
  0 re-reads every :data:`REFRESH_UNCACHED` seconds).

Every read goes through the resolver, whose ``on_value`` registers the value
with the scrubber (and refuses an unprotectable one).

**While a value is unknown** (the first pass has not finished, or its
backend is unreachable) the destinations it may be sent to are the ones
whose responses could echo it: :meth:`blocks` is true for them, and the
engine refuses such requests with ``backend_unavailable`` after waiting up
to :data:`FIRST_PASS_WAIT` seconds for the first pass. Requests to every
other destination go on. A secret the backend does not hold
(``secret_not_found``) or refuses as unprotectable has no value anyone
could echo and blocks nothing. A backend that fails is skipped for the
rest of the pass (one timeout per pass, not one per secret), and failed
reads are retried with a backoff of 1 s doubling to :data:`RETRY_MAX`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping

from broker.backends.base import BackendError, SecretNotFound
from broker.backends.resolver import Resolver
from broker.credentials.fields import secret_fields
from broker.policy.hosts import host_matches
from broker.policy.schema import Policy
from broker.policy.secret_rule import SecretRule

__all__ = ["FIRST_PASS_WAIT", "Preloader", "UnprotectableSecret"]

log = logging.getLogger("keybroker")

FIRST_PASS_WAIT = 10.0
REFRESH_UNCACHED = 60.0
RETRY_MAX = 10.0
_MARGIN = 0.5  # seconds past the TTL, so the cached value has expired

Owner = tuple[str, str]


class UnprotectableSecret(SecretNotFound):
    """The value is too weak to keep out of responses (see
    :mod:`broker.scrub.strength`); it is never used."""

    reason = "unprotectable_secret"


class Preloader:
    """Reads every secret of ``policy`` through ``resolver``, now and on expiry."""

    def __init__(self, policy: Policy, resolver: Resolver, ttls: Mapping[str, float]) -> None:
        self._resolver = resolver
        self._rules: dict[Owner, SecretRule] = {
            (t, n): rule
            for t, tenant in policy.tenants.items()
            for n, rule in tenant.secrets.items()
        }
        # A credential kind reads several KV fields; its secret ones are preloaded.
        self._reads: dict[Owner, tuple[SecretRule, ...]] = {
            owner: tuple(rule.model_copy(update={"field": f}) for f in secret_fields(rule))
            for owner, rule in self._rules.items()
        }
        used = {rule.backend for rule in self._rules.values()}
        cached = [ttls.get(b, 0.0) for b in used]
        positive = [ttl for ttl in cached if ttl > 0]
        self._refresh = min(positive) + _MARGIN if positive else REFRESH_UNCACHED
        if any(ttl <= 0 for ttl in cached):
            self._refresh = min(self._refresh, REFRESH_UNCACHED)
        self._lock = threading.Lock()
        self._pending: set[Owner] = set(self._rules)
        self._first_pass = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- queries ------------------------------------------------------------------
    @property
    def pending(self) -> frozenset[Owner]:
        """Secrets whose current value the scrubber may not know yet."""
        with self._lock:
            return frozenset(self._pending)

    @property
    def first_pass_done(self) -> bool:
        return self._first_pass.is_set()

    def blocks(self, host: str, port: int) -> bool:
        """A response from ``host:port`` could echo a value not yet known."""
        with self._lock:
            if not self._pending:
                return False
            rules = [self._rules[o] for o in self._pending]
        return any(port in r.ports and any(host_matches(host, p) for p in r.hosts) for r in rules)

    async def wait_first_pass(self, timeout: float = FIRST_PASS_WAIT) -> bool:
        if self._first_pass.is_set():
            return True
        return await asyncio.to_thread(self._first_pass.wait, timeout)

    # -- the loop -------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="keybroker-preload", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def run_once(self) -> bool:
        """Read every secret once; True when none failed."""
        failed = False
        down: set[str] = set()  # backends that failed in this pass: one timeout each
        for owner, rule in self._rules.items():
            if self._stop.is_set():
                return False
            if rule.backend in down:
                failed = True
                continue
            tenant, name = owner
            try:
                for read in self._reads[owner]:
                    try:
                        self._resolver.resolve(tenant, name, read)
                    except UnprotectableSecret:
                        raise
                    except SecretNotFound:
                        continue  # an optional field (a session token) may be absent
            except UnprotectableSecret as exc:
                # A warning, not an error: mitmproxy exits on an error logged at start-up.
                log.warning("keybroker: secret %s/%s is not used: %s", tenant, name, exc)
            except SecretNotFound:
                pass  # no value anyone could echo; a request for it fails on its own
            except BackendError as exc:
                failed = True
                down.add(rule.backend)
                log.warning("keybroker: preload of %s/%s failed: %s", tenant, name, exc)
                continue
            except Exception as exc:  # never let the loop die: the value stays pending
                failed = True
                down.add(rule.backend)
                log.warning(
                    "keybroker: preload of %s/%s failed (%s)", tenant, name, type(exc).__name__
                )
                continue
            with self._lock:
                self._pending.discard(owner)
        return not failed

    def _run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            ok = self.run_once()
            self._first_pass.set()
            if ok:
                backoff = 1.0
                self._stop.wait(self._refresh)
            else:
                self._stop.wait(backoff)
                backoff = min(backoff * 2, RETRY_MAX)
