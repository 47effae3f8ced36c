"""Micro-benchmark: the per-request cost of the egress check with 10 and with
1,000 ``egress.allow`` entries (half exact names, half wildcards), for a
destination found by exact name, by wildcard, and not listed (report mode).

    .venv/bin/python bench/egress_bench.py [--n 200000]

The check runs as the request path runs it: ``host_key`` on the host, then
:func:`broker.egress.check.check` against the client connection's pins (the
address is pinned after the first request, as on a keep-alive connection).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence

from broker.egress.check import check
from broker.egress.resolve import Pins
from broker.egress.rules import host_key
from broker.policy.schema import Tenant


async def _lookup(host: str, port: int) -> Sequence[str]:
    return ["93.184.216.34"]


def tenant(entries: int, mode: str) -> Tenant:
    allow = [f"api{i}.example{i}.com" for i in range(entries // 2)]
    allow += [f"*.cdn{i}.example.net" for i in range(entries - entries // 2)]
    secrets = {
        f"s{i}": {"backend": "b", "path": "p", "hosts": [f"svc{i}.example.org"]} for i in range(10)
    }
    return Tenant.model_validate(
        {"token_sha256": "a" * 64, "egress": {"mode": mode, "allow": allow}, "secrets": secrets}
    )


async def per_call(t: Tenant, host: str, n: int) -> float:
    rules, pins = t.egress_rules, Pins()
    await check(rules, host_key(host), 443, pins, _lookup)  # pin it
    start = time.perf_counter()
    for _ in range(n):
        await check(rules, host_key(host), 443, pins, _lookup)
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    args = ap.parse_args()
    cases = [
        ("exact", "api3.example3.com"),
        ("wildcard", "a.b.cdn4.example.net"),
        ("unlisted (report)", "elsewhere.example.io"),
    ]
    print(f"{'destination':<20} {'10 entries':>12} {'1,000 entries':>14}  (µs per check)")
    for label, host in cases:
        row = []
        for entries in (10, 1000):
            t = tenant(entries, "report")
            best = min(asyncio.run(per_call(t, host, args.n)) for _ in range(7))
            row.append(best)
        print(f"{label:<20} {row[0]:>12.3f} {row[1]:>14.3f}")


if __name__ == "__main__":
    main()
