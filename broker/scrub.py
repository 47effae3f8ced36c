"""Scrub every known secret value, in every encoding, out of response bytes
(DESIGN.md §7.3), whole or streamed (§7.6).

The :class:`Scrubber` is the broker-wide registry of resolved values. Values
are only ever added: after a rotation the old value stays, because an echo of
the old key is still a leak. Each change marks the pattern set dirty; the
matcher is rebuilt once, lazily, by the next scan (several adds between two
scans cost one rebuild). Scans run outside the lock on an immutable snapshot.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from broker import encodings, matcher

__all__ = ["MAX_VALUES", "Scrubber", "ScrubberFull", "StreamScrubber"]

Owner = tuple[str, str]

MAX_VALUES = 100_000
"""Bound on distinct values. A value yields about 8 patterns (up to ~30 with
punctuation); a Hyperscan build takes ~0.2 s at 1,000 values, ~4 s at 10,000
and well over a minute at this bound, so it guards memory and rebuild time
rather than limiting a realistic deployment (100 tenants x 10 secrets, rotated,
stays far below). Past it :meth:`Scrubber.add` raises :class:`ScrubberFull`;
the caller must fail closed rather than inject a value it cannot scrub."""


class ScrubberFull(RuntimeError):
    """The registry holds :data:`MAX_VALUES` values; no new value can be added."""


@dataclass(frozen=True)
class _Snapshot:
    matcher: matcher.Matcher
    replacements: tuple[bytes, ...]  # per pattern: the placeholder to write
    owners: tuple[frozenset[Owner], ...]  # per pattern: whose values produce it
    max_len: int
    has_newline: bool
    generation: int


class Scrubber:
    """Registry of every secret value the broker has resolved (all tenants), thread-safe.
    Each value is replaced by the placeholder that stands for it, e.g. b"<<secret:stripe>>"."""

    def __init__(self, engine: str = "auto") -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._values: dict[bytes, dict[Owner, bytes]] = {}  # value -> owner -> placeholder
        self._variants: dict[bytes, list[bytes]] = {}
        self._max_len = 0
        self._has_newline = False
        self._generation = 0
        self._snapshot = self._compile()

    def add(self, value: bytes, placeholder: bytes, owner: tuple[str, str]) -> None:
        """Register ``value`` (owned by ``(tenant, secret_name)``) to be written
        as ``placeholder``. Idempotent."""
        if not value:
            raise ValueError("an empty secret value cannot be scrubbed")
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

    def scrub(self, data: bytes) -> tuple[bytes, int]:
        """``data`` with every byte of every occurrence of every variant replaced,
        and the number of placeholders written."""
        out, count, _rest = _cover(self._current(), data, 0, len(data))
        return out, count

    def owners_in(self, data: bytes) -> set[tuple[str, str]]:
        """Owners whose values appear in ``data``, in any encoding (overlapping
        occurrences included)."""
        snap = self._current()
        found: set[Owner] = set()
        for _start, _end, index in snap.matcher.find_all(data):
            found |= snap.owners[index]
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

    def stream(self) -> StreamScrubber:
        return StreamScrubber(self)

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)

    def _current(self) -> _Snapshot:
        with self._lock:
            if self._snapshot.generation != self._generation:
                self._snapshot = self._compile()
            return self._snapshot

    def _compile(self) -> _Snapshot:
        """Build the snapshot for the current values; called with the lock held."""
        patterns: dict[bytes, tuple[bytes, set[Owner]]] = {}
        for value in sorted(self._values):
            owners = self._values[value]
            placeholder = owners[min(owners)]  # deterministic across owners
            for form in self._variants[value]:
                entry = patterns.setdefault(form, (placeholder, set()))
                entry[1].update(owners)
        keys = list(patterns)
        return _Snapshot(
            matcher=matcher.build(keys, self._engine),
            replacements=tuple(patterns[k][0] for k in keys),
            owners=tuple(frozenset(patterns[k][1]) for k in keys),
            max_len=self._max_len,
            has_newline=self._has_newline,
            generation=self._generation,
        )


def _cover(snap: _Snapshot, data: bytes, begin: int, cut: int) -> tuple[bytes, int, int]:
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
    for start, end, index in snap.matcher.find_all(data):
        if end <= cursor:
            continue
        first = max(start, cursor)
        if first >= cut:
            break
        pieces += [data[cursor:first], snap.replacements[index]]
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

    def __init__(self, scrubber: Scrubber) -> None:
        self._scrubber = scrubber
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
            cut = max(cut, buf.rfind(b"\n") + 1)
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
        out, count, rest = _cover(snap, buf, begin, cut)
        self._carry = buf[rest:]
        self._context = buf[max(rest - window, 0) : rest]
        self.count += count
        return out
