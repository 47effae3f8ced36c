"""The Aho–Corasick matcher (``ahocorasick-rs``): the fallback where
Hyperscan is not installed (non-x86 machines). Same results as
:mod:`broker.scrub.matcher`'s engines, slower on large pattern sets."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from broker.scrub.matcher import Match, Matcher, first_index, ordered


class AhoCorasick(Matcher):
    engine = "ahocorasick"

    def __init__(self, patterns: Sequence[bytes]) -> None:
        import ahocorasick_rs

        self._ac = ahocorasick_rs
        first = first_index(patterns)
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
        return ordered([(start, end, indexes[pid]) for pid, start, end in found])
