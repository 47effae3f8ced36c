"""What a rate limit costs per request (DESIGN.md §13): a secret with
``rate:`` against the same secret without, with the counters in a local
Redis (``state.url``) and in-process.

Two measurements, each interleaving the variants request by request so
that machine noise falls on both alike:

- ``engine``: ``Engine.process`` (decide, count, resolve, substitute, the
  write-ahead audit record) on plain values, no proxy; the difference is
  the limit's own cost (one Lua call to Redis, or a deque in memory).
- ``proxy`` (``--proxy``): a real ``keybroker run`` with ``state.url``; one
  keep-alive CONNECT tunnel sends ``Authorization: Bearer <<secret:X>>``
  to a local HTTPS upstream, alternating a limited and an unlimited secret;
  client-side latency medians.

A real ``redis-server`` is started on a free port (``--save '' --appendonly
no``); apt-get installs it when missing and we are root.

Run: ``.venv/bin/python bench/governance_bench.py [--requests N] [--proxy]``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import http.client
import os
import platform
import secrets
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from broker.engine import Engine  # noqa: E402
from broker.policy.load import parse_policy  # noqa: E402
from broker.request.decision import Destination  # noqa: E402
from broker.request.locations import RequestParts  # noqa: E402

VALUE = "kbbench_" + secrets.token_hex(16)
RATE = "100000000/minute"  # never reached: every request is counted and allowed


def policy_data(work: Path, state_url: str | None, port: int = 443) -> dict[str, Any]:
    def secret(**extra: Any) -> dict[str, Any]:
        return {
            "backend": "local",
            "path": "KB_BENCH_VALUE",
            "hosts": ["127.0.0.1"],
            "ports": [port],
            **extra,
        }

    data: dict[str, Any] = {
        "version": 1,
        "certs_dir": str(work / "certs"),
        "audit": {"path": str(work / "audit.jsonl")},
        "backends": {"local": {"type": "env", "cache_ttl": 300}},
        "tenants": {
            "acme": {
                "token_sha256": hashlib.sha256(b"kb_bench_token").hexdigest(),
                "secrets": {"plain": secret(), "limited": secret(rate=RATE)},
            }
        },
    }
    if state_url:
        data["state"] = {"url": state_url}
    return data


def summary(xs: list[float]) -> str:
    xs = sorted(xs)
    p99 = xs[min(len(xs) - 1, int(len(xs) * 0.99))]
    return f"median {statistics.median(xs) * 1e3:7.3f} ms  p99 {p99 * 1e3:7.3f} ms"


async def engine_round(engine: Engine, n: int) -> dict[str, list[float]]:
    """Wall time per request by variant, and this process's CPU time (``cpu:`` keys)."""
    dest = Destination.of("https", "127.0.0.1", 443, "GET", "/v1")
    out: dict[str, list[float]] = {"plain": [], "limited": [], "cpu:plain": [], "cpu:limited": []}
    for i in range(n * 2):
        name = ("plain", "limited")[i % 2]
        parts = RequestParts(
            headers=(("Authorization", f"Bearer <<secret:{name}>>"),),
            path="/v1",
            query="",
            body=b"",
        )
        t, c = time.perf_counter(), time.process_time()
        got = await engine.process("acme", dest, parts)
        out[name].append(time.perf_counter() - t)
        out["cpu:" + name].append(time.process_time() - c)
        assert got.parts is not None, got.reply
        if got.record_id:
            engine.record(
                decision=got.decision,
                dest=dest,
                status=200,
                scrubbed=0,
                started=time.monotonic(),
                record_id=got.record_id,
            )
    return out


def bench_engine(work: Path, urls: dict[str, str | None], n: int, redis_pid: int) -> None:
    os.environ["KB_BENCH_VALUE"] = VALUE
    for label, url in urls.items():
        d = work / f"engine-{label}"
        d.mkdir()
        engine = Engine(parse_policy(policy_data(d, url), "bench.yaml", d))

        async def go(e: Engine = engine) -> dict[str, list[float]]:
            await engine_round(e, 200)  # warm: connections, caches, scrubber
            return await engine_round(e, n)

        redis_cpu = _cpu(redis_pid)
        got = asyncio.run(go())
        redis_cpu = (_cpu(redis_pid) - redis_cpu) / (n + 200) if url else 0.0
        engine.close()
        plain, limited = statistics.median(got["plain"]), statistics.median(got["limited"])
        cpu_plain, cpu_limited = (
            statistics.mean(got["cpu:plain"]),
            statistics.mean(got["cpu:limited"]),
        )
        print(f"engine, state {label:10}  without rate: {summary(got['plain'])}")
        print(f"engine, state {label:10}  with rate:    {summary(got['limited'])}")
        print(
            f"engine, state {label:10}  added by the limit: wall {(limited - plain) * 1e3:+.3f} ms"
            f" (median), broker CPU {(cpu_limited - cpu_plain) * 1e3:+.3f} ms (mean),"
            f" store CPU {redis_cpu * 1e3:+.3f} ms\n"
        )


def _cpu(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_proxy(work: Path, redis_url: str, n: int) -> None:
    from tests.support.proxy import Proxy
    from tests.support.tlsca import TestCA
    from tests.support.upstream import Upstream

    ca = TestCA(work / "ca")
    with Upstream(ca) as up:
        data = policy_data(work / "proxy", redis_url, up.port)
        data["upstream_ca"] = ca.ca_path
        broker = Proxy(data, work / "proxy", env={"KB_BENCH_VALUE": VALUE}, quiet=True)
        with broker:
            ctx = ssl.create_default_context(cafile=str(broker.ca_path))
            conn = http.client.HTTPSConnection("127.0.0.1", broker.port, context=ctx, timeout=30)
            auth = base64.b64encode(b"acme:kb_bench_token").decode()
            conn.set_tunnel("127.0.0.1", up.port, headers={"Proxy-Authorization": f"Basic {auth}"})
            times: dict[str, list[float]] = {"plain": [], "limited": []}
            for i in range((n + 200) * 2):
                name = ("plain", "limited")[i % 2]
                t = time.perf_counter()
                conn.request(
                    "GET", "/echo/bench", headers={"Authorization": f"Bearer <<secret:{name}>>"}
                )
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    raise SystemExit(f"unexpected status {resp.status}")
                if i >= 400:  # after warm-up
                    times[name].append(time.perf_counter() - t)
            conn.close()
    plain, limited = statistics.median(times["plain"]), statistics.median(times["limited"])
    print(f"proxy, state redis  without rate: {summary(times['plain'])}")
    print(f"proxy, state redis  with rate:    {summary(times['limited'])}")
    print(f"proxy, state redis  added by the limit: {(limited - plain) * 1e3:+.3f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000, help="per variant (default 3000)")
    ap.add_argument("--proxy", action="store_true", help="also through a real keybroker run")
    args = ap.parse_args()
    from tests.support.redis_server import RedisServer

    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with RedisServer(work / "redis") as redis:
            assert redis.proc is not None
            urls = {"in-process": None, "redis tcp": redis.url, "redis unix": redis.unix_url}
            bench_engine(work, urls, args.requests, redis.proc.pid)
            if args.proxy:
                bench_proxy(work, redis.url, args.requests)
    return 0


if __name__ == "__main__":
    sys.exit(main())
