"""Helpers for the bounded load test (tests/integration/test_load.py): a leak
scanner for many values and many responses built on tests.support.leaks, an
atomic drain of the upstream's records, /proc sampling, and the tally that the
agents share."""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable
from urllib.parse import unquote_to_bytes

from tests.support.leaks import find_leak, leak_forms
from tests.support.upstream import Received, Upstream

MAX_NOTES = 20


_UNICODE_ESCAPE = re.compile(rb"\\u([0-9a-fA-F]{4})")


def views(data: bytes) -> dict[str, bytes]:
    """The bytes as received, and decoded once more where that changes them:
    some encoders escape every byte (``%6B%62..``, ``\\u006b\\u0062..``),
    spellings leaks.py has no form for (as in test_scrubbing.py)."""
    out = {"as received": data}
    if b"%" in data:
        out["percent-decoded"] = unquote_to_bytes(data)
    if b"\\u" in data:
        out["unicode-unescaped"] = _UNICODE_ESCAPE.sub(
            lambda m: chr(int(m.group(1), 16)).encode("utf-8", "surrogatepass"), data
        )
    return out


class LeakScanner:
    """``leaks.find_leak`` for several values at once, fast enough to run on
    every response, over every view of it (see ``views``): the spellings of
    each value are built once, and each base64/hex run is decoded once (at
    every alignment, as leaks.py does) and searched for every value. Runs too
    short to hold the shortest value once decoded are skipped, which cannot
    miss anything find_leak would find."""

    def __init__(self, values: Iterable[str]) -> None:
        self.values = [v.encode() for v in values]
        assert self.values and all(self.values)
        self.forms = [f for v in self.values for f in leak_forms(v).values()]
        shortest = min(len(v) for v in self.values)
        self._b64 = re.compile(rb"[A-Za-z0-9+/=_-]{%d,}" % (4 * shortest // 3))
        self._hex = re.compile(rb"[0-9A-Fa-f]{%d,}" % (2 * shortest))

    def _in(self, decoded: bytes) -> bool:
        return any(v in decoded for v in self.values)

    def leaks(self, data: bytes) -> bool:
        return any(self._leaks(view) for view in views(data).values())

    def _leaks(self, data: bytes) -> bool:
        if any(f in data for f in self.forms):
            return True
        for m in self._b64.finditer(data.replace(b"\\/", b"/")):
            run = m.group(0).replace(b"-", b"+").replace(b"_", b"/").replace(b"=", b"")
            for shift in range(4):
                body = run[shift:]
                if self._in(base64.b64decode(body[: len(body) - len(body) % 4])):
                    return True
        for m in self._hex.finditer(data):
            for shift in range(2):
                body = m.group(0)[shift:]
                if self._in(binascii.unhexlify(body[: len(body) // 2 * 2])):
                    return True
        return False

    def describe(self, data: bytes) -> str:
        """Which canary (by index) and form, never the value."""
        for name, view in views(data).items():
            for i, v in enumerate(self.values):
                found = find_leak(view, v)
                if found is not None:
                    return f"canary #{i} as {found[0]} at offset {found[1]} ({name})"
        return "a canary (only the fast scanner saw it)"


def drain(up: Upstream) -> list[Received]:
    """Take and forget every request the upstream recorded so far. Atomic,
    unlike ``up.received`` then ``up.clear()``, which would lose the requests
    arriving in between."""
    with up._cond:
        recs = list(up._received)
        up._received.clear()
    return recs


def proc_sample(pid: int) -> tuple[int, int]:
    """(VmRSS in KiB, open file descriptors) of a live process."""
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 if empty)."""
    if not sorted_values:
        return 0.0
    k = max(0, min(len(sorted_values) - 1, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


class Tally:
    """What the agents did, shared between their threads. Claims request
    numbers up to ``total``; records outcomes, latencies and a few notes."""

    def __init__(self, total: int, deadline: float) -> None:
        self.total = total
        self.deadline = deadline
        self.lock = threading.Lock()
        self.issued = 0
        self.done = 0
        self.finished_agents = 0
        self.release = threading.Event()  # agents keep their connections until set
        self.outcomes: dict[str, Counter[str]] = defaultdict(Counter)
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.forwarded_ids: set[int] = set()  # non-denied requests answered as expected
        self.leaks = 0
        self.notes: list[str] = []
        self.last_done_at = 0.0

    def claim(self, now: float) -> int | None:
        with self.lock:
            if self.issued >= self.total or now >= self.deadline:
                return None
            self.issued += 1
            return self.issued

    def record(
        self,
        cat: str,
        n: int,
        outcome: str,
        latency: float,
        leak: str | None,
        forwarded: bool,
        now: float,
    ) -> None:
        with self.lock:
            self.done += 1
            self.last_done_at = now
            self.outcomes[cat][outcome] += 1
            self.latency[cat].append(latency)
            if forwarded and outcome == "ok":
                self.forwarded_ids.add(n)
            if leak is not None:
                self.leaks += 1
            for note in (leak, None if outcome == "ok" else f"{cat} #{n}: {outcome}"):
                if note is not None and len(self.notes) < MAX_NOTES:
                    self.notes.append(note)

    def agent_finished(self) -> None:
        with self.lock:
            self.finished_agents += 1
