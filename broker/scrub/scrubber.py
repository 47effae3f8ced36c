"""Scrub every known secret value, in every encoding, out of response bytes
(DESIGN.md §7.3), whole or streamed (§7.6).

The :class:`Scrubber` is the broker-wide registry of resolved values. Values
are only ever added: after a rotation the old value stays, because an echo of
the old key is still a leak. Scans run outside the lock on an immutable
snapshot of two layers: a *base* matcher built from every value known at some
point, and a small *delta* matcher for the values added or changed since. A
new value costs one build of the delta (a few dozen values), not of the whole
set; when the delta passes :data:`DELTA_VALUES` the base is rebuilt (on a
background thread unless the delta is most of the values) and swapped in,
while scans go on against the old base plus the delta. A delta that has not
changed for :data:`MERGE_AFTER` seconds is folded into the base the same way,
so a settled scrubber scans one layer, not two. At any moment base + delta
cover every value, so nothing a background build has not finished yet is
ever missed. Without this,
first use of each of 1,000 values rebuilt the whole set (~0.5 s each, on the
proxy's event loop).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from broker.scrub import matcher, views
from broker.scrub import spellings as encodings
from broker.scrub.layers import (
    Entry,
    Layer,
    Owner,
    Snapshot,
    build_layer,
    cover,
    cover_many,
    replacement_for,
)
from broker.scrub.stream import StreamScrubber

__all__ = ["DELTA_VALUES", "MAX_VALUES", "Scrubber", "ScrubberFull"]

log = logging.getLogger("keybroker")

MAX_VALUES = 100_000
"""Bound on distinct values. A value yields about 12 patterns (more with
punctuation); a Hyperscan build of the whole set takes ~0.5 s at 1,000 values,
~7 s at 10,000 (on a background thread, see above), so this guards memory and
rebuild time rather than limiting a realistic deployment (100 tenants x 10
secrets, rotated, stays far below). Past it :meth:`Scrubber.add` raises
:class:`ScrubberFull`; the caller must fail closed rather than inject a value
it cannot scrub."""

DELTA_VALUES = 32
"""Changed values kept in the delta layer before the base is rebuilt."""

MERGE_AFTER = 2.0
"""Seconds without a change after which the delta is folded into the base
(each scan of two layers costs two calls into the matcher)."""

_clock = time.monotonic


class ScrubberFull(RuntimeError):
    """The registry holds :data:`MAX_VALUES` values; no new value can be added."""


class Scrubber:
    """Registry of every secret value the broker has resolved (all tenants), thread-safe.
    Each value is replaced by the placeholder that stands for it, e.g. b"<<secret:stripe>>".

    ``background=False`` rebuilds the base in the calling thread (tests, tools)."""

    def __init__(self, engine: str = "auto", *, background: bool = True) -> None:
        self._engine = engine
        self._background = background
        self._lock = threading.Lock()
        self._values: dict[bytes, dict[Owner, bytes]] = {}  # value -> owner -> placeholder
        self._rank: dict[Owner, int] = {}
        self._caseless: tuple[int, matcher.Matcher, tuple[frozenset[Owner], ...]] | None = None
        self._variants: dict[bytes, list[bytes]] = {}
        self._max_len = 0
        self._has_newline = False
        self._generation = 0
        self._base: Layer | None = None
        self._changed: dict[bytes, int] = {}  # value -> generation, changes the base lacks
        self._changed_at = 0.0  # _clock() of the last change
        self._rebuild: threading.Thread | None = None
        self._snapshot: Snapshot | None = None

    def add(self, value: bytes, placeholder: bytes, owner: tuple[str, str], rank: int = 0) -> None:
        """Register ``value`` (owned by ``(tenant, secret_name)``) to be written
        as ``placeholder``. Idempotent. When several of one tenant's secrets
        hold the same value, the reader sees the name of lowest ``rank`` (the
        engine passes the secret's position in the policy), then of lowest name."""
        if not value:
            raise ValueError("an empty secret value cannot be scrubbed")
        self._rank.setdefault(owner, rank)
        with self._lock:  # the common case (a value seen before) costs no encoding
            known = self._values.get(value)
            if known is not None and known.get(owner) == placeholder:
                return
        forms = encodings.variants(value)
        with self._lock:
            owners = self._values.get(value)
            if owners is not None and owners.get(owner) == placeholder:
                return
            if owners is None:
                if len(self._values) >= MAX_VALUES:
                    raise ScrubberFull(f"scrubber holds {MAX_VALUES} values")
                owners = self._values[value] = {}
                self._variants[value] = forms
                self._max_len = max(self._max_len, *map(len, forms))
                self._has_newline = self._has_newline or any(b"\n" in f for f in forms)
            owners[owner] = placeholder
            self._generation += 1
            self._changed[value] = self._generation
            self._changed_at = _clock()

    def scrub(self, data: bytes, tenant: str | None = None) -> tuple[bytes, int]:
        """``data`` with every byte of every occurrence of every variant replaced,
        and the number of placeholders written. With ``tenant``, a value that
        tenant owns becomes its placeholder and any other value :data:`MARKER`
        (another tenant's secret is never named); without, the placeholder of
        the first owner (tools and tests)."""
        out, count, _rest = cover(self._current(), data, 0, len(data), tenant)
        return out, count

    def scrub_many(self, pieces: list[bytes], tenant: str | None = None) -> list[tuple[bytes, int]]:
        """Each piece scrubbed on its own, as :meth:`scrub` would, in one scan
        of them joined (:func:`~broker.scrub.layers.cover_many`); should an
        occurrence span two pieces (a value with a newline), each piece is
        scanned alone."""
        done = cover_many(self._current(), pieces, tenant)
        return done if done is not None else [self.scrub(piece, tenant) for piece in pieces]

    def owners_in_caseless(self, data: bytes) -> set[tuple[str, str]]:
        """Owners whose raw value appears in ``data`` ignoring ASCII case: for
        the short fields that are case-insensitive (host names, methods,
        header names), which reach the broker and the audit case-folded."""
        found: set[Owner] = set()
        caseless, owners = self._caseless_matcher()
        for _start, _end, i in caseless.find_all(data.lower()):
            found |= owners[i]
        return found

    def scrub_caseless(self, data: bytes, tenant: str | None = None) -> tuple[bytes, int]:
        """Every raw value in ``data``, in any ASCII case, replaced as
        :meth:`scrub` would (other spellings are :meth:`scrub`'s job)."""
        out, count = data, 0
        caseless, owners = self._caseless_matcher()
        found = caseless.find(out.lower())
        if not found:
            return out, count
        snap = self._current()
        pieces, cursor = [], 0
        for start, end, i in found:
            placeholder = b"<<secret:" + min(owners[i])[1].encode() + b">>"
            pieces += [out[cursor:start], replacement_for(snap, placeholder, owners[i], tenant)]
            cursor = end
        pieces.append(out[cursor:])
        return b"".join(pieces), count + len(found)

    def _caseless_matcher(self) -> tuple[matcher.Matcher, tuple[frozenset[Owner], ...]]:
        """Lower-cased raw values (single-line, at most 1 KiB), rebuilt lazily
        when the values change; a small automaton: the fields it scans are short."""
        with self._lock:
            cached = self._caseless
            if cached is not None and cached[0] == self._generation:
                return cached[1], cached[2]
            generation = self._generation
            entries = [
                (v.lower(), frozenset(o))
                for v, o in self._values.items()
                if len(v) <= 1024 and b"\n" not in v and b"\r" not in v
            ]
        merged: dict[bytes, frozenset[Owner]] = {}
        for lowered, owners in entries:
            merged[lowered] = merged.get(lowered, frozenset()) | owners
        engine = "ahocorasick" if "ahocorasick" in matcher.available_engines() else "python"
        built = matcher.build(list(merged), engine)
        owner_sets = tuple(merged.values())
        with self._lock:
            self._caseless = (generation, built, owner_sets)
        return built, owner_sets

    def owners_in(self, data: bytes) -> set[tuple[str, str]]:
        """Owners whose values appear in ``data``, in any encoding (overlapping
        occurrences included)."""
        found: set[Owner] = set()
        for _start, _end, _placeholder, owners, _codec in self._current().occurrences(data):
            found |= owners
        return found

    @property
    def max_len(self) -> int:
        """Length of the longest pattern (0 when empty)."""
        with self._lock:
            return self._max_len

    @property
    def has_newline_pattern(self) -> bool:
        with self._lock:
            return self._has_newline

    @property
    def generation(self) -> int:
        """Bumps on every change to the values, owners or placeholders."""
        with self._lock:
            return self._generation

    @property
    def delta_size(self) -> int:
        """Values not yet in the base layer."""
        with self._lock:
            return len(self._changed)

    def settle(self, timeout: float | None = None) -> bool:
        """Wait for a background rebuild in flight; True when none is left."""
        with self._lock:
            rebuild = self._rebuild
        if rebuild is not None:
            rebuild.join(timeout)
            return not rebuild.is_alive()
        return True

    def stream(self, tenant: str | None = None) -> StreamScrubber:
        return StreamScrubber(self, tenant)

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)

    def _entries(self, values: Iterable[bytes]) -> list[Entry]:
        return [(v, dict(self._values[v]), self._variants[v]) for v in values]

    def _current(self) -> Snapshot:
        with self._lock:
            snap = self._snapshot
            if snap is not None and snap.generation == self._generation:
                if (
                    self._changed
                    and self._rebuild is None
                    and _clock() - self._changed_at >= MERGE_AFTER
                ):
                    self._start_rebuild(idle=True)  # settled: fold the delta into the base
                return snap
            if len(self._changed) > DELTA_VALUES and self._rebuild is None:
                self._start_rebuild()
            delta = (
                build_layer(self._entries(self._changed), self._engine) if self._changed else None
            )
            layers = tuple(layer for layer in (self._base, delta) if layer is not None)
            if not layers:
                layers = (Layer(matcher.build([], self._engine, views.TRIGGERS), (), ()),)
            self._snapshot = Snapshot(
                layers, self._max_len, self._has_newline, self._generation, self._rank
            )
            return self._snapshot

    def _start_rebuild(self, *, idle: bool = False) -> None:
        """Build a base of every value now known; called with the lock held.
        When the changed values are most of them (start-up, a burst) the delta
        would cost nearly as much as the whole set, so the base is built here
        instead of twice (delta now, base in the background). An ``idle``
        merge is never urgent: the delta already covers its values, so it
        always goes to the background."""
        entries, generation = self._entries(self._values), self._generation
        most = 2 * len(self._changed) > len(self._values)
        if not self._background or (most and not idle):
            self._install(build_layer(entries, self._engine), generation)
            return

        def run() -> None:
            try:
                layer = build_layer(entries, self._engine)
            except Exception:  # the delta still covers every value: scans stay correct
                log.exception("keybroker: scrubber rebuild failed; will retry")
                with self._lock:
                    self._rebuild = None
                    self._changed_at = _clock()  # an idle merge retries after MERGE_AFTER
                return
            with self._lock:
                self._install(layer, generation)
                self._rebuild = None

        self._rebuild = threading.Thread(target=run, name="keybroker-scrub-build", daemon=True)
        self._rebuild.start()

    def _install(self, base: Layer | None, generation: int) -> None:
        """Swap in a base covering every change up to ``generation``; lock held."""
        self._base = base
        self._changed = {v: g for v, g in self._changed.items() if g > generation}
        self._snapshot = None
