"""Captured tokens (DESIGN.md §11, ``tenants.<t>.capture``): a token an
upstream issues in a response (a JSON field of an OAuth token answer, a
session cookie) is registered with the scrubber under a fresh placeholder
name, so the agent receives ``<<secret:cap.…>>`` in its place, and the value
goes back only to the hosts of the capture rule (same scheme and port as
the response that issued it), only for that tenant, only for ``ttl``.
Held in memory only: a restart forgets every captured token.

An upstream picks what it issues, so a captured value must be as strong as
a stored secret (:func:`broker.scrub.strength.weakness`), is scrubbed in its
tenant's responses only (:mod:`broker.credentials.capture_scrub`), at most
:data:`MAX_PER_TENANT` are held per tenant, and an expired or evicted one is
no longer scrubbed."""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

from broker.credentials.capture_parse import CaptureRefused, body_values, cookie_values
from broker.credentials.capture_scrub import ChainedStream, TenantScrubbers
from broker.policy.hosts import host_matches
from broker.policy.schema import CaptureRule
from broker.policy.secret_rule import glob_to_regex
from broker.request.decision import Decision, Destination, Reason, failure
from broker.request.locations import Occurrence, ScanResult
from broker.scrub.scrubber import Scrubber
from broker.scrub.stream import StreamScrubber
from broker.secret import SecretValue

__all__ = ["MAX_HELD", "MAX_PER_TENANT", "CaptureRefused", "CaptureStore", "matching"]

PREFIX = "cap."
MAX_HELD = 10_000
MAX_PER_TENANT = 256
"""Captured values one tenant holds at once; past it the oldest is dropped."""


@dataclass(frozen=True)
class Held:
    value: SecretValue
    hosts: tuple[str, ...]
    scheme: str
    port: int
    expires: float


_glob = lru_cache(maxsize=1024)(glob_to_regex)


def _matches(rule: CaptureRule, dest: Destination) -> bool:
    if not any(host_matches(dest.host, p) for p in rule.hosts):
        return False
    return rule.paths is None or any(_glob(g).match(dest.path) for g in rule.paths)


def matching(rules: Sequence[CaptureRule], dest: Destination) -> list[CaptureRule]:
    """The rules that apply to a response from ``dest``."""
    return [r for r in rules if _matches(r, dest)]


class CaptureStore:
    """Thread-safe; ``active`` is False until something is captured, so a
    policy without captures pays nothing per request."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._held: OrderedDict[tuple[str, str], Held] = OrderedDict()
        self._per_tenant: dict[str, int] = {}
        self._next_sweep = 0.0
        self.scrubbers = TenantScrubbers()
        self.active = False

    # -- the response path ----------------------------------------------------------
    def capture(
        self,
        tenant: str,
        rules: Sequence[CaptureRule],
        dest: Destination,
        *,
        set_cookies: Sequence[str] = (),
        body: bytes | None = None,
    ) -> int:
        """Capture what ``rules`` name in this response; returns how many values.
        Raises :class:`CaptureRefused` when a named field is present but cannot
        be captured (nothing is held then: the response must be refused)."""
        found: list[tuple[CaptureRule, str]] = []
        for rule in matching(rules, dest):
            values = cookie_values(set_cookies, rule.cookies)
            if body is not None:
                values += body_values(body, rule.json_fields)
            found += [(rule, v) for v in values]
        for rule, v in found:
            self._hold(tenant, rule, dest, v)
        return len(found)

    def _hold(self, tenant: str, rule: CaptureRule, dest: Destination, value: str) -> None:
        name = PREFIX + secrets.token_hex(8)
        now = self._clock()
        held = Held(SecretValue(value), rule.hosts, dest.scheme, dest.port, now + rule.ttl)
        # Scrubbed from here on, as this placeholder, in this tenant's responses only.
        self.scrubbers.add(tenant, name, held.value.reveal_bytes())
        gone: list[tuple[str, str]] = []
        with self._lock:
            self._held[(tenant, name)] = held
            self._per_tenant[tenant] = self._per_tenant.get(tenant, 0) + 1
            if self._per_tenant[tenant] > MAX_PER_TENANT:  # the tenant's oldest goes
                gone.append(next(k for k in self._held if k[0] == tenant))
            while len(self._held) - len(gone) > MAX_HELD:
                gone.append(next(k for k in self._held if k not in gone))
            gone += [k for k, h in self._held.items() if h.expires <= now and k not in gone]
            self._drop(gone)
            self.active = True
        self._unscrub(gone)

    def _drop(self, keys: list[tuple[str, str]]) -> None:
        """Forget ``keys`` (lock held)."""
        for k in keys:
            if self._held.pop(k, None) is not None:
                self._per_tenant[k[0]] -= 1

    def _unscrub(self, keys: list[tuple[str, str]]) -> None:
        by_tenant: dict[str, list[str]] = {}
        for tenant, name in keys:
            by_tenant.setdefault(tenant, []).append(name)
        for tenant, names in by_tenant.items():
            self.scrubbers.remove(tenant, names)

    def expire(self) -> int:
        """Forget expired values and stop scrubbing them; returns how many.
        Called on the response path at most once a second."""
        now = self._clock()
        if now < self._next_sweep:
            return 0
        with self._lock:
            self._next_sweep = now + 1.0
            gone = [k for k, h in self._held.items() if h.expires <= now]
            self._drop(gone)
        self._unscrub(gone)
        return len(gone)

    # -- scrubbing a tenant's responses -----------------------------------------------
    def scrub(self, data: bytes, tenant: str | None, count: int = 0) -> tuple[bytes, int]:
        """``data`` (already scrubbed of policy values, ``count`` of them) with
        this tenant's captured values replaced too."""
        if not self.active or tenant is None:
            return data, count
        self.expire()
        s = self.scrubbers.get(tenant)
        if s is None or not data:
            return data, count
        out, n = s.scrub(data, tenant)
        return out, count + n

    def stream(self, first: StreamScrubber, tenant: str | None) -> StreamScrubber | ChainedStream:
        if not self.active or tenant is None:
            return first
        return ChainedStream(first, self.scrubbers.stream(tenant))

    def live(self, tenant: str | None) -> list[Scrubber]:
        """The tenant's captured values, as a scrubber that follows them (for
        :class:`~broker.scrub.deltas.DeltaStream`); none while nothing is captured."""
        if not self.active or tenant is None:
            return []
        return [self.scrubbers.live(tenant)]

    # -- the request path -------------------------------------------------------------
    def split(self, tenant: str, found: ScanResult) -> tuple[ScanResult, tuple[Occurrence, ...]]:
        """The occurrences of this tenant's live captured names, apart."""
        now = self._clock()
        with self._lock:
            live = {
                o.name
                for o in found.occurrences
                if (h := self._held.get((tenant, o.name))) is not None and now < h.expires
            }
        if not live:
            return found, ()
        rest = tuple(o for o in found.occurrences if o.name not in live)
        held = tuple(o for o in found.occurrences if o.name in live)
        return replace(found, occurrences=rest), held

    def permits(self, tenant: str, name: str, dest: Destination) -> bool:
        """A live captured token of this tenant may go to ``dest``."""
        with self._lock:
            h = self._held.get((tenant, name))
        return (
            h is not None
            and self._clock() < h.expires
            and not dest.fronted
            and any(host_matches(dest.host, p) for p in h.hosts)
            and (dest.scheme, dest.port) == (h.scheme, h.port)
        )

    def or_captured(
        self, allowed: Callable[[str], bool], tenant: str, dest: Destination
    ) -> Callable[[str], bool]:
        return lambda name: allowed(name) or self.permits(tenant, name, dest)

    def merge(
        self, decision: Decision, tenant: str, held: tuple[Occurrence, ...], dest: Destination
    ) -> tuple[Decision, dict[str, SecretValue]]:
        """``decision`` (allow or pass) extended with the captured occurrences,
        and their values; or a denial when one goes elsewhere than it came from."""
        values: dict[str, SecretValue] = {}
        with self._lock:
            for occ in held:
                h = self._held.get((tenant, occ.name))
                if h is None:
                    return failure(Reason.UNKNOWN_SECRET, tenant, occ.name), {}
                if dest.fronted or not any(host_matches(dest.host, p) for p in h.hosts):
                    return failure(Reason.HOST_NOT_ALLOWED, tenant, occ.name), {}
                if (dest.scheme, dest.port) != (h.scheme, h.port):
                    return failure(Reason.PORT_NOT_ALLOWED, tenant, occ.name), {}
                values[occ.name] = h.value
        names = tuple(dict.fromkeys([*decision.secrets, *values]))
        pairs = decision.substitute | {(o.name, o.location) for o in held}
        return (
            Decision(verdict="allow", reason=None, tenant=tenant, secrets=names, substitute=pairs),
            values,
        )
