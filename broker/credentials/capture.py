"""Captured tokens (DESIGN.md §11, ``tenants.<t>.capture``): a token an
upstream issues in a response (a JSON field of an OAuth token answer, a
session cookie) is registered with the scrubber under a fresh placeholder
name, so the agent receives ``<<secret:cap.…>>`` in its place, and the value
goes back only to the hosts of the capture rule (same scheme and port as
the response that issued it), only for that tenant, only for ``ttl``.
Held in memory only: a restart forgets every captured token."""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from http.cookies import CookieError, SimpleCookie

from broker.policy.hosts import host_matches
from broker.policy.schema import CaptureRule, glob_to_regex
from broker.request.decision import Decision, Destination, Reason, failure
from broker.request.locations import Occurrence, ScanResult
from broker.scrub.strength import weakness
from broker.secret import SecretValue

log = logging.getLogger("keybroker")
PREFIX = "cap."
MAX_HELD = 10_000
MAX_JSON = 1 << 20

Remember = Callable[[str, str, SecretValue], None]


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


def _json_values(body: bytes, fields: Sequence[str]) -> list[str]:
    if not fields or not body or len(body) > MAX_JSON:
        return []
    try:
        data = json.loads(body)
    except ValueError:
        return []
    if not isinstance(data, dict):
        return []
    return [v for f in fields if isinstance(v := data.get(f), str)]


def _cookie_values(set_cookies: Sequence[str], names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for header in set_cookies if names else ():
        try:
            jar = SimpleCookie(header)
        except CookieError:
            continue
        out += [m.value for n, m in jar.items() if n in names]
    return out


class CaptureStore:
    """Thread-safe; ``active`` is False until something is captured, so a
    policy without captures pays nothing per request."""

    def __init__(self, remember: Remember, clock: Callable[[], float] = time.monotonic) -> None:
        self._remember = remember
        self._clock = clock
        self._lock = threading.Lock()
        self._held: OrderedDict[tuple[str, str], Held] = OrderedDict()
        self.active = False

    # -- the response path ----------------------------------------------------------
    def capture(
        self,
        tenant: str,
        rules: Sequence[CaptureRule],
        dest: Destination,
        *,
        set_cookies: Sequence[str] = (),
        content_type: str = "",
        body: bytes | None = None,
    ) -> int:
        """Capture what ``rules`` name in this response; returns how many values."""
        taken = 0
        for rule in rules:
            if not _matches(rule, dest):
                continue
            values = _cookie_values(set_cookies, rule.cookies)
            if body is not None and "json" in content_type.lower():
                values += _json_values(body, rule.json_fields)
            for v in values:
                if any(c in v for c in "\r\n\0"):
                    continue
                if weakness(v.encode("utf-8", "surrogateescape")) is not None:
                    # Too weak to scrub without rewriting ordinary bytes: left as it is.
                    log.warning(
                        "keybroker: a captured value from %s is too weak to hold", dest.host
                    )
                    continue
                self._hold(tenant, rule, dest, v)
                taken += 1
        return taken

    def _hold(self, tenant: str, rule: CaptureRule, dest: Destination, value: str) -> None:
        name = PREFIX + secrets.token_hex(8)
        held = Held(
            SecretValue(value), rule.hosts, dest.scheme, dest.port, self._clock() + rule.ttl
        )
        self._remember(tenant, name, held.value)  # scrubbed from here on, as this placeholder
        with self._lock:
            self._held[(tenant, name)] = held
            while len(self._held) > MAX_HELD:
                self._held.popitem(last=False)
            self.active = True

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
