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

Hyperscan and the Python engine search for *keys* (the first :data:`_KEY_LEN`
bytes of each pattern) and confirm the whole pattern at every key hit: every
occurrence of a pattern starts with an occurrence of its key, so nothing is
missed, and patterns sharing a key (an encoding with and without padding)
cost one literal instead of several.
"""

from __future__ import annotations

import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import hyperscan

__all__ = ["ENGINES", "Matcher", "available_engines", "build"]

ENGINES = ("hyperscan", "ahocorasick", "python")
Match = tuple[int, int, int]
_KEY_LEN = 16
_NOT_ALNUM = re.compile(rb"[^A-Za-z0-9]")


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


def build(patterns: Sequence[bytes], engine: str = "auto") -> Matcher:
    """A matcher for ``patterns`` (non-empty byte strings; duplicates allowed,
    the lowest index is reported)."""
    if any(not p for p in patterns):
        raise ValueError("empty patterns match everywhere")
    if engine == "auto":
        engine = available_engines()[0]
    if engine not in ENGINES:
        raise ValueError(f"unknown matcher engine {engine!r}; choose from {ENGINES}")
    if engine not in available_engines():
        raise RuntimeError(f"matcher engine {engine!r} is not installed")
    if not patterns:
        return _Empty(engine)
    if engine == "hyperscan":
        return _Hyperscan(patterns)
    if engine == "ahocorasick":
        return _AhoCorasick(patterns)
    return _Python(patterns)


class Matcher(ABC):
    engine: str

    def find(self, data: bytes) -> list[Match]:
        """Non-overlapping (start, end, pattern_index), leftmost-longest."""
        return _select(self.find_all(data))

    @abstractmethod
    def find_all(self, data: bytes) -> list[Match]:
        """Every occurrence (start, end, pattern_index), sorted by start, then
        longest first."""


def _first_index(patterns: Sequence[bytes]) -> dict[bytes, int]:
    first: dict[bytes, int] = {}
    for index, pattern in enumerate(patterns):
        first.setdefault(pattern, index)
    return first


def _ordered(candidates: list[Match]) -> list[Match]:
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
        groups: dict[bytes, list[tuple[bytes, int]]] = {}
        for pattern, index in _first_index(patterns).items():
            groups.setdefault(pattern[:_KEY_LEN], []).append((pattern, index))
        self._keys = list(groups)
        self._groups = [groups[key] for key in self._keys]

    def _confirm(self, data: bytes, hits: Iterable[tuple[int, int]]) -> list[Match]:
        candidates: list[Match] = []
        for key_id, start in hits:
            for pattern, index in self._groups[key_id]:
                if data.startswith(pattern, start):
                    candidates.append((start, start + len(pattern), index))
        return _ordered(candidates)


class _Hyperscan(_Keyed):
    engine = "hyperscan"

    def __init__(self, patterns: Sequence[bytes]) -> None:
        import hyperscan

        super().__init__(patterns)
        self._hs = hyperscan
        # Literal mode stops at a NUL byte, so the keys are compiled as
        # expressions with every non-alphanumeric byte escaped as \xHH.
        expressions = [
            _NOT_ALNUM.sub(lambda m: b"\\x%02x" % m.group(0)[0], key) for key in self._keys
        ]
        self._db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        self._db.compile(
            expressions=expressions,
            ids=list(range(len(expressions))),
            elements=len(expressions),
            flags=0,
        )
        self._key_lens = [len(key) for key in self._keys]
        self._local = threading.local()

    def _scratch(self) -> hyperscan.Scratch:
        scratch: hyperscan.Scratch | None = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._hs.Scratch(database=self._db)
            self._local.scratch = scratch
        return scratch

    def find_all(self, data: bytes) -> list[Match]:
        hits: list[tuple[int, int]] = []
        key_lens = self._key_lens

        def on_match(key_id: int, _from: int, to: int, _flags: int, _ctx: object) -> None:
            hits.append((key_id, to - key_lens[key_id]))

        self._db.scan(data, match_event_handler=on_match, scratch=self._scratch())
        return self._confirm(data, hits) if hits else []


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


class _AhoCorasick(Matcher):
    engine = "ahocorasick"

    def __init__(self, patterns: Sequence[bytes]) -> None:
        import ahocorasick_rs

        self._ac = ahocorasick_rs
        first = _first_index(patterns)
        self._unique = list(first)
        self._indexes = list(first.values())
        self._longest = ahocorasick_rs.BytesAhoCorasick(
            self._unique, matchkind=ahocorasick_rs.MatchKind.LeftmostLongest
        )
        self._standard: ahocorasick_rs.BytesAhoCorasick | None = None
        self._lock = threading.Lock()

    def find(self, data: bytes) -> list[Match]:
        indexes = self._indexes
        return [
            (start, end, indexes[pid])
            for pid, start, end in self._longest.find_matches_as_indexes(data)
        ]

    def find_all(self, data: bytes) -> list[Match]:
        with self._lock:
            if self._standard is None:
                self._standard = self._ac.BytesAhoCorasick(
                    self._unique, matchkind=self._ac.MatchKind.Standard
                )
            standard = self._standard
        indexes = self._indexes
        found = standard.find_matches_as_indexes(data, overlapping=True)
        return _ordered([(start, end, indexes[pid]) for pid, start, end in found])
