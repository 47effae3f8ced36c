"""Multi-pattern literal matching behind one small interface.

``build(patterns).find(data)`` returns the non-overlapping occurrences chosen
*leftmost-longest*: from the current position, the match that starts first
and, among those, the longest (the lowest index among equal patterns); then
the search resumes at its end. ``find_all(data)`` returns every occurrence,
overlapping ones included (the scrubber needs them: a leftmost match that
overlaps the start of another secret must not leave that secret's tail).
Three engines give identical results:

- ``hyperscan``: Intel Hyperscan in block mode, compiled once per pattern set,
  one scratch space per thread. Data without a match never calls back into
  Python, so the no-match path costs one native scan.
- ``ahocorasick``: ``ahocorasick_rs`` with ``MatchKind.LeftmostLongest``,
  which implements the rule natively, and a ``Standard`` automaton, built on
  first use, for overlapping matches (portable: wheels for every platform).
- ``python``: ``bytes.find`` per pattern; for tests and tiny sets only.

``auto`` picks the first of those that imports.

Hyperscan and the Python engine search for *keys* (a :data:`_KEY_LEN`-byte
window of each pattern at a fixed offset) and confirm the whole pattern at
every key hit: every occurrence of a pattern contains its key at that offset,
so nothing is missed. The window is the first one free of the bytes in which
spellings of one value differ (``+/`` vs ``-_`` in base64 and base64url,
``\\/``, ``=`` padding, ``%`` escapes), so those spellings share one literal;
Hyperscan further merges keys equal but for case (hex, ``%6b``/``%6B``) into one
caseless literal. Fewer literals is what keeps Hyperscan fast: on a 2-core VM
its literal matcher slows by about half past ~4,500 literals.

A large input is scanned by Hyperscan in :data:`_WORKERS` segments on threads
(the scan releases the GIL): the same CPU time, less latency for one big body.
"""

from __future__ import annotations

import os
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import hyperscan

__all__ = ["ENGINES", "Matcher", "available_engines", "build"]

ENGINES = ("hyperscan", "ahocorasick", "python")
Match = tuple[int, int, int]
_KEY_LEN = 16
_CLEAN_WINDOW = re.compile(rb"[^-+/_=%%\\]{%d}" % _KEY_LEN)
_NOT_ALNUM = re.compile(rb"[^A-Za-z0-9]")
_WORKERS = max(1, min(4, len(os.sched_getaffinity(0))))
_SEGMENT_MIN = 1 << 20  # below this a segment's thread hand-off is not worth it
_TRIGGER_SPAN = 128  # segments overlap this much, so a trigger across a boundary is seen
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _key(pattern: bytes) -> tuple[bytes, int]:
    """The literal searched for ``pattern`` and its offset inside it."""
    if len(pattern) > _KEY_LEN and (clean := _CLEAN_WINDOW.search(pattern)):
        return clean.group(), clean.start()
    return pattern[:_KEY_LEN], 0


def _scan_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(_WORKERS - 1, thread_name_prefix="keybroker-scan")
        return _pool


def available_engines() -> tuple[str, ...]:
    """The engines that import on this machine, in order of preference."""
    found: list[str] = []
    try:
        import hyperscan  # noqa: F401

        found.append("hyperscan")
    except ImportError:
        pass
    try:
        import ahocorasick_rs  # noqa: F401

        found.append("ahocorasick")
    except ImportError:
        pass
    return (*found, "python")


def build(
    patterns: Sequence[bytes], engine: str = "auto", triggers: Sequence[bytes] = ()
) -> Matcher:
    """A matcher for ``patterns`` (non-empty byte strings; duplicates allowed,
    the lowest index is reported). ``triggers`` are regular expressions
    :meth:`Matcher.scan` reports as a bit mask (bit ``i``: ``triggers[i]``
    occurs), found in the same pass by Hyperscan, each reported once."""
    if any(not p for p in patterns):
        raise ValueError("empty patterns match everywhere")
    if engine == "auto":
        engine = available_engines()[0]
    if engine not in ENGINES:
        raise ValueError(f"unknown matcher engine {engine!r}; choose from {ENGINES}")
    if engine not in available_engines():
        raise RuntimeError(f"matcher engine {engine!r} is not installed")
    matcher: Matcher
    if not patterns:
        matcher = _Empty(engine)
    elif engine == "hyperscan":
        matcher = _Hyperscan(patterns, triggers)
    elif engine == "ahocorasick":
        from broker.scrub.aho import AhoCorasick  # the fallback where Hyperscan is missing

        matcher = AhoCorasick(patterns)
    else:
        matcher = _Python(patterns)
    if triggers and not isinstance(matcher, _Hyperscan):
        matcher.triggers = tuple(re.compile(t) for t in triggers)
    return matcher


class Matcher(ABC):
    engine: str
    triggers: tuple[re.Pattern[bytes], ...] = ()

    def scan(self, data: bytes) -> tuple[list[Match], int]:
        """:meth:`find_all`, and the mask of the triggers that occur in ``data``."""
        mask = 0
        for i, trigger in enumerate(self.triggers):
            if trigger.search(data):
                mask |= 1 << i
        return self.find_all(data), mask

    def find(self, data: bytes) -> list[Match]:
        """Non-overlapping (start, end, pattern_index), leftmost-longest."""
        return _select(self.find_all(data))

    @abstractmethod
    def find_all(self, data: bytes) -> list[Match]:
        """Every occurrence (start, end, pattern_index), sorted by start, then
        longest first."""


def first_index(patterns: Sequence[bytes]) -> dict[bytes, int]:
    first: dict[bytes, int] = {}
    for index, pattern in enumerate(patterns):
        first.setdefault(pattern, index)
    return first


def ordered(candidates: list[Match]) -> list[Match]:
    candidates.sort(key=lambda m: (m[0], -m[1], m[2]))
    return candidates


def _select(ordered: Iterable[Match]) -> list[Match]:
    """Leftmost-longest, non-overlapping choice from every occurrence, ordered."""
    chosen: list[Match] = []
    cursor = 0
    for start, end, index in ordered:
        if start >= cursor:
            chosen.append((start, end, index))
            cursor = end
    return chosen


class _Empty(Matcher):
    def __init__(self, engine: str) -> None:
        self.engine = engine

    def find_all(self, data: bytes) -> list[Match]:
        return []


class _Keyed(Matcher):
    """Search for pattern keys, then confirm the patterns behind each key hit."""

    def __init__(self, patterns: Sequence[bytes]) -> None:
        groups: dict[bytes, list[tuple[bytes, int, int]]] = {}
        for pattern, index in first_index(patterns).items():
            key, offset = _key(pattern)
            groups.setdefault(key, []).append((pattern, index, offset))
        self._keys = list(groups)
        # Tuples, not lists: tuples of plain values leave the cyclic GC's
        # lists, which a full collection would otherwise walk every time.
        self._groups = tuple(tuple(groups[key]) for key in self._keys)

    def _confirm(self, data: bytes, hits: Iterable[tuple[int, int]]) -> list[Match]:
        """Patterns found around key hits ``(key_id, start of the key)``."""
        candidates: list[Match] = []
        for key_id, key_start in hits:
            for pattern, index, offset in self._groups[key_id]:
                start = key_start - offset
                if start >= 0 and data.startswith(pattern, start):
                    candidates.append((start, start + len(pattern), index))
        return ordered(candidates)


class _Hyperscan(_Keyed):
    engine = "hyperscan"

    def __init__(self, patterns: Sequence[bytes], triggers: Sequence[bytes] = ()) -> None:
        import hyperscan

        super().__init__(patterns)
        self._hs = hyperscan
        literals: dict[bytes, list[int]] = {}
        for key_id, key in enumerate(self._keys):
            literals.setdefault(key.lower(), []).append(key_id)
        self._literal_keys = tuple(tuple(ids) for ids in literals.values())
        self._literal_lens = tuple(len(lower) for lower in literals)
        # Literal mode stops at a NUL byte, so the literals are compiled as
        # expressions with every non-alphanumeric byte escaped as \\xHH.
        sources = [
            self._keys[ids[0]] if len(ids) == 1 else lower for lower, ids in literals.items()
        ]
        expressions = [_NOT_ALNUM.sub(lambda m: b"\\x%02x" % m.group(0)[0], s) for s in sources]
        flags = [0 if len(ids) == 1 else hyperscan.HS_FLAG_CASELESS for ids in literals.values()]
        # Triggers ride along in the same database, each reported once per scan.
        self._first_trigger = len(expressions)
        expressions += list(triggers)
        flags += [hyperscan.HS_FLAG_SINGLEMATCH] * len(triggers)
        self._db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        self._db.compile(
            expressions=expressions,
            ids=list(range(len(expressions))),
            elements=len(expressions),
            flags=flags,
        )
        self._local = threading.local()

    def _scratch(self) -> hyperscan.Scratch:
        scratch: hyperscan.Scratch | None = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._hs.Scratch(database=self._db)
            self._local.scratch = scratch
        return scratch

    def _scan(self, data: memoryview, first: int, last: int) -> tuple[list[tuple[int, int]], int]:
        """Key hits ``(key_id, start)`` starting in ``[first, last)``, and the
        trigger mask."""
        hits: list[tuple[int, int]] = []
        mask = [0]
        literal_keys, literal_lens = self._literal_keys, self._literal_lens
        first_trigger = self._first_trigger

        def on_match(literal: int, _from: int, to: int, _flags: int, _ctx: object) -> None:
            if literal >= first_trigger:
                mask[0] |= 1 << (literal - first_trigger)
                return
            start = first + to - literal_lens[literal]
            if start < last:
                hits.extend((key_id, start) for key_id in literal_keys[literal])

        end = min(len(data), last + max(_KEY_LEN - 1, _TRIGGER_SPAN))
        segment = data[first:end]  # a view: the extension reads any buffer, no copy
        self._db.scan(segment, match_event_handler=on_match, scratch=self._scratch())  # type: ignore[type-var]
        return hits, mask[0]

    def find_all(self, data: bytes) -> list[Match]:
        return self.scan(data)[0]

    def scan(self, data: bytes) -> tuple[list[Match], int]:
        view = memoryview(data)
        segments = max(1, min(_WORKERS, len(data) // _SEGMENT_MIN))
        bounds = [len(data) * i // segments for i in range(segments + 1)]
        pending = [
            _scan_pool().submit(self._scan, view, bounds[i], bounds[i + 1])
            for i in range(segments - 1)
        ]
        hits, mask = self._scan(view, bounds[-2], bounds[-1])
        for future in pending:
            more, more_mask = future.result()
            hits += more
            mask |= more_mask
        return (self._confirm(data, hits) if hits else []), mask


class _Python(_Keyed):
    engine = "python"

    def find_all(self, data: bytes) -> list[Match]:
        hits: list[tuple[int, int]] = []
        for key_id, key in enumerate(self._keys):
            start = data.find(key)
            for _ in range(len(data)):  # at most one hit per position
                if start < 0:
                    break
                hits.append((key_id, start))
                start = data.find(key, start + 1)
        return self._confirm(data, hits) if hits else []
