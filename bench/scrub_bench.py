"""Scrubber throughput relative to one ``bytes.find`` pass (DESIGN.md §8).

Run: ``.venv/bin/python bench/scrub_bench.py [--sizes 10,100,1000,10000] [--quick]``

The buffer is random printable ASCII with no secret in it (the common case:
most responses hold no secret, so the no-match scan is what every request
pays). Secrets are random 32-character API-key-like tokens
(``secrets.token_urlsafe(24)``), each registered with all its encodings. The
baseline is one ``bytes.find`` of one secret over the same buffer; the ratio
is find time / scrub time, so 1.0 means "as fast as looking for one secret
once" and higher is better. Every figure is the best of several runs.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broker.scrub.matcher import available_engines
from broker.scrub.scrubber import Scrubber
from broker.scrub.spellings import variants

PRINTABLE = bytes(range(0x20, 0x7F))
RE_LIMIT_S = 20.0


def printable_buffer(size: int) -> bytes:
    table = bytes(PRINTABLE[i % len(PRINTABLE)] for i in range(256))
    return os.urandom(size).translate(table)


def best_of(fn: Callable[[], object], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_scrubber(engine: str, tokens: list[bytes], data: bytes, runs: int) -> dict[str, float]:
    scrubber = Scrubber(engine)
    for i, token in enumerate(tokens):
        scrubber.add(token, f"<<secret:s{i}>>".encode(), ("bench", f"s{i}"))
    start = time.perf_counter()
    scrubber.scrub(b"")  # the first use compiles the pattern set
    if not scrubber.settle(600):  # and any background rebuild it started
        raise SystemExit("scrubber rebuild did not finish")
    build = time.perf_counter() - start
    out, count = scrubber.scrub(data)
    if count or out is not data:
        raise SystemExit("the random buffer contains a secret; rerun")
    planted = b"x" + tokens[-1] + b"y" + variants(tokens[0])[-1] + b"z"
    if scrubber.scrub(planted)[1] != 2:
        raise SystemExit(f"{engine}: planted secrets were not scrubbed")
    return {"build": build, "scan": best_of(lambda: scrubber.scrub(data), runs)}


def bench_re(tokens: list[bytes], data: bytes) -> dict[str, float] | None:
    patterns = sorted({v for t in tokens for v in variants(t)}, key=len, reverse=True)
    start = time.perf_counter()
    regex = re.compile(b"|".join(re.escape(p) for p in patterns))
    build = time.perf_counter() - start
    sample = data[:100_000]
    estimate = best_of(lambda: regex.search(sample), 1) * len(data) / len(sample)
    if estimate > RE_LIMIT_S:
        return {"build": build, "scan": float("nan"), "estimate": estimate}
    return {"build": build, "scan": best_of(lambda: regex.search(data), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="10,100,1000,10000", help="secret counts, comma-separated"
    )
    parser.add_argument("--quick", action="store_true", help="1 MB buffer, fewer runs")
    parser.add_argument("--mb", type=int, default=10, help="buffer size in MB (default 10)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    size_mb = 1 if args.quick else args.mb
    runs = 2 if args.quick else 5
    data = printable_buffer(size_mb * 1_000_000)
    engines = available_engines()

    print(f"buffer: {size_mb} MB random printable ASCII; engines available: {', '.join(engines)}")
    print()
    print("| secrets | patterns | engine | build (s) | scan (ms) | bytes.find (ms) | ratio |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    for n in sizes:
        tokens = [secrets.token_urlsafe(24).encode() for _ in range(n)]
        patterns = len({v for t in tokens for v in variants(t)})
        find = best_of(partial(data.find, tokens[0]), runs)
        rows: list[tuple[str, dict[str, float] | None]] = []
        for engine in engines:
            if engine == "python" and n > 100:
                continue
            rows.append((engine, bench_scrubber(engine, tokens, data, runs)))
        if n == 1000:
            rows.append(("python `re` alternation", bench_re(tokens, data)))
        for name, result in rows:
            if result is None:
                continue
            scan = result["scan"]
            if scan != scan:  # NaN: skipped
                cells = f"skipped (est. {result['estimate']:.0f} s) | {find * 1e3:.2f} | -"
            else:
                cells = f"{scan * 1e3:.1f} | {find * 1e3:.2f} | {find / scan:.3f}"
            print(f"| {n:,} | {patterns:,} | {name} | {result['build']:.2f} | {cells} |")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
