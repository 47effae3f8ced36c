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
from dataclasses import dataclass

from broker.scrub import matcher, views
from broker.scrub import spellings as encodings

__all__ = ["DELTA_VALUES", "MARKER", "MAX_VALUES", "Scrubber", "ScrubberFull", "StreamScrubber"]

log = logging.getLogger("keybroker")
Owner = tuple[str, str]
_Entry = tuple[bytes, dict[Owner, bytes], list[bytes]]  # value, owners, variants

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

MARKER = b"<<redacted>>"
"""What replaces a value the reader's tenant does not own: it names no secret
and no tenant (issue 12 item 4), and it is not a placeholder, so an agent
that sends it back does not trip ``malformed_placeholder``."""


class ScrubberFull(RuntimeError):
    """The registry holds :data:`MAX_VALUES` values; no new value can be added."""


@dataclass(frozen=True)
class _Layer:
    matcher: matcher.Matcher
    replacements: tuple[bytes, ...]  # per pattern: the placeholder to write
    owners: tuple[frozenset[Owner], ...]  # per pattern: whose values produce it


Occurrence = tuple[int, int, bytes, frozenset[Owner], str | None]
"""start, end, placeholder, owners, and the codec the placeholder is written
in (None: as is; ``utf-16-le``/``-be`` for a match in a UTF-16 view)."""


@dataclass(frozen=True)
class _Snapshot:
    layers: tuple[_Layer, ...]
    max_len: int
    has_newline: bool
    generation: int
    ranks: dict[Owner, int]

    def occurrences(self, data: bytes) -> list[Occurrence]:
        """Every occurrence in every layer, by start, longest first: in the
        data as it is, and in the decoded views its triggers call for."""
        found: list[Occurrence] = []
        mask = 0
        for layer in self.layers:
            matches, triggered = layer.matcher.scan(data)
            mask |= triggered
            found += [(a, b, layer.replacements[i], layer.owners[i], None) for a, b, i in matches]
        if mask:
            layers = self.layers

            def find(view: bytes) -> list[tuple[int, int, int]]:
                return [
                    (a, b, n << 32 | i)
                    for n, layer in enumerate(layers)
                    for a, b, i in layer.matcher.find_all(view)
                ]

            for a, b, key, codec in views.view_matches(data, mask, find):
                layer, i = layers[key >> 32], key & 0xFFFFFFFF
                found.append((a, b, layer.replacements[i], layer.owners[i], codec))
        if len(self.layers) > 1 or mask:
            found.sort(key=lambda m: (m[0], -m[1]))
        return found


def _build_layer(entries: Iterable[_Entry], engine: str) -> _Layer | None:
    patterns: dict[bytes, tuple[bytes, set[Owner]]] = {}
    for _value, owners, forms in sorted(entries, key=lambda e: e[0]):
        placeholder = owners[min(owners)]  # deterministic across owners
        for form in forms:
            patterns.setdefault(form, (placeholder, set()))[1].update(owners)
    if not patterns:
        return None
    keys = list(patterns)
    shared: dict[frozenset[Owner], frozenset[Owner]] = {}  # one set per owner group, not per form
    return _Layer(
        matcher=matcher.build(keys, engine, views.TRIGGERS),
        replacements=tuple(patterns[k][0] for k in keys),
        owners=tuple(shared.setdefault(o, o) for o in (frozenset(patterns[k][1]) for k in keys)),
    )


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
        self._base: _Layer | None = None
        self._changed: dict[bytes, int] = {}  # value -> generation, changes the base lacks
        self._changed_at = 0.0  # _clock() of the last change
        self._rebuild: threading.Thread | None = None
        self._snapshot: _Snapshot | None = None

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
        out, count, _rest = _cover(self._current(), data, 0, len(data), tenant)
        return out, count

    def scrub_many(self, pieces: list[bytes], tenant: str | None = None) -> list[tuple[bytes, int]]:
        """Each piece scrubbed on its own, as :meth:`scrub` would. The common
        case, no value in any of them, costs one scan of them joined (a hit
        there only means each piece is then scanned alone)."""
        if not self.scrub(b"\n".join(pieces), tenant)[1]:
            return [(piece, 0) for piece in pieces]
        return [self.scrub(piece, tenant) for piece in pieces]

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
            pieces += [out[cursor:start], _replacement(snap, placeholder, owners[i], tenant)]
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

    def _entries(self, values: Iterable[bytes]) -> list[_Entry]:
        return [(v, dict(self._values[v]), self._variants[v]) for v in values]

    def _current(self) -> _Snapshot:
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
                _build_layer(self._entries(self._changed), self._engine) if self._changed else None
            )
            layers = tuple(layer for layer in (self._base, delta) if layer is not None)
            if not layers:
                layers = (_Layer(matcher.build([], self._engine, views.TRIGGERS), (), ()),)
            self._snapshot = _Snapshot(
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
            self._install(_build_layer(entries, self._engine), generation)
            return

        def run() -> None:
            try:
                layer = _build_layer(entries, self._engine)
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

    def _install(self, base: _Layer | None, generation: int) -> None:
        """Swap in a base covering every change up to ``generation``; lock held."""
        self._base = base
        self._changed = {v: g for v, g in self._changed.items() if g > generation}
        self._snapshot = None


def _replacement(
    snap: _Snapshot, placeholder: bytes, owners: frozenset[Owner], tenant: str | None
) -> bytes:
    if tenant is None:
        return placeholder
    own = [o for o in owners if o[0] == tenant]
    if not own:
        return MARKER
    name = min(own, key=lambda o: (snap.ranks.get(o, 0), o[1]))[1]
    return b"<<secret:" + name.encode() + b">>"


def _cover(
    snap: _Snapshot, data: bytes, begin: int, cut: int, tenant: str | None = None
) -> tuple[bytes, int, int]:
    """Scrub ``data[begin:]`` up to ``cut``; return the scrubbed bytes, the
    count of placeholders written, and where the unreleased rest begins.

    Every byte inside any occurrence is replaced, not only those of a
    leftmost-longest choice: when a spelling of one secret overlaps the start
    of another (``hex(a)`` ending where ``b`` begins), a non-overlapping choice
    would replace the first and release the tail of the second. An occurrence
    that starts inside an already replaced one has its remainder replaced by
    its own placeholder. Bytes before ``begin`` are context only: they were
    released already, but occurrences starting there still cover what follows.
    """
    pieces: list[bytes] = []
    cursor = begin
    count = 0
    for start, end, replacement, owners, codec in snap.occurrences(data):
        if end <= cursor:
            continue
        first = max(start, cursor)
        if first >= cut:
            break
        written = _replacement(snap, replacement, owners, tenant)
        if codec is not None:  # a match in a UTF-16 view: the placeholder in UTF-16 too
            written = written.decode("ascii").encode(codec)
        pieces += [data[cursor:first], written]
        cursor = end
        count += 1
    rest = max(cut, cursor)
    if not count:
        return data[begin:cut], 0, cut
    pieces.append(data[cursor:rest])
    return b"".join(pieces), count, rest


class StreamScrubber:
    """Scrubs a stream chunk by chunk, with the same result as scrubbing the
    whole stream at once. What it holds back never depends on secret content
    (DESIGN.md §7.6): with W = longest pattern - 1, when no pattern contains a
    newline everything up to the last newline is released and at most W bytes
    of the unterminated tail are held; otherwise the last W bytes are held. It
    never waits for more bytes because the tail looks like part of a secret.

    The pattern set is read at every feed, so a value added mid-stream is
    scrubbed from every byte not yet released. One per stream; not shared
    between threads."""

    def __init__(self, scrubber: Scrubber, tenant: str | None = None) -> None:
        self._scrubber = scrubber
        self._tenant = tenant
        self._context = b""  # up to W released bytes before the carry, as received
        self._carry = b""  # received, not yet released
        self.count = 0

    @property
    def held(self) -> int:
        """Bytes received but not yet released."""
        return len(self._carry)

    def feed(self, chunk: bytes) -> bytes:
        """Bytes safe to release now (possibly ``b""``)."""
        return self._step(chunk, final=False)

    def flush(self) -> bytes:
        """End of stream: scrub and release everything held."""
        return self._step(b"", final=True)

    def _step(self, chunk: bytes, final: bool) -> bytes:
        snap = self._scrubber._current()
        begin = len(self._context)
        buf = self._context + self._carry + chunk
        window = max(snap.max_len - 1, 0)
        cut = len(buf) if final else len(buf) - window
        if not snap.has_newline:
            line_end = buf.rfind(b"\n") + 1
            # After a line of wrapped base64 the value may go on past the break:
            # the fixed window decides (a rule on the data's shape, never on
            # secret content).
            if line_end and not views.wrapped_line_end(buf, line_end):
                cut = max(cut, line_end)
        cut = max(cut, begin)
        # The occurrences that decide the output before `cut` are all in buf:
        # - an occurrence covering a byte at or after `begin` starts at or after
        #   begin - W (its length is <= max_len), so the context holds its start;
        # - an occurrence starting before len(buf) - W has >= max_len bytes of
        #   buf from its start, so it lies wholly inside buf, however long;
        # - if `cut` came from the newline rule, an occurrence starting before
        #   it starts at or before the last newline and, containing none, ends
        #   there; later bytes cannot form one that starts earlier.
        # So an occurrence beginning before `cut` is replaced whole even when it
        # runs past `cut`, and nothing later can change what was released.
        out, count, rest = _cover(snap, buf, begin, cut, self._tenant)
        self._carry = buf[rest:]
        self._context = buf[max(rest - window, 0) : rest]
        self.count += count
        return out
