"""What the credential kinds (DESIGN.md §11) cost a static secret: the
broker CPU of one allowed request on the engine path (``Engine.process``,
the write-ahead and done audit records, and the response-path hook for
captured tokens), with a static secret from the ``env`` backend.

Run it against this tree and against a checkout without the credential
hooks (``--tree DIR``, e.g. ``git archive <commit> | tar -x -C DIR``) in
alternation; the difference of the medians is what the hooks add::

    .venv/bin/python bench/credentials_bench.py [--tree DIR] [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", default=str(Path(__file__).resolve().parents[1]))
    ap.add_argument("--requests", type=int, default=5000)
    args = ap.parse_args()
    sys.path.insert(0, args.tree)
    from broker.engine import Engine
    from broker.policy.load import parse_policy
    from broker.request.decision import Destination
    from broker.request.locations import RequestParts

    os.environ["KB_BENCH_VALUE"] = "kbbench_" + "ab12" * 8
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        data: dict[str, Any] = {
            "version": 1,
            "certs_dir": str(d / "certs"),
            "audit": {"path": str(d / "audit.jsonl")},
            "backends": {"local": {"type": "env", "cache_ttl": 300}},
            "tenants": {
                "acme": {
                    "token_sha256": hashlib.sha256(b"t").hexdigest(),
                    "secrets": {
                        "plain": {
                            "backend": "local",
                            "path": "KB_BENCH_VALUE",
                            "hosts": ["api.example.com"],
                        }
                    },
                }
            },
        }
        engine = Engine(parse_policy(data, "bench.yaml", d))
        dest = Destination.of("https", "api.example.com", 443, "POST", "/v1/charges")
        parts = RequestParts(
            headers=(
                ("Authorization", "Bearer <<secret:plain>>"),
                ("Content-Type", "application/json"),
            ),
            path="/v1/charges",
            query="",
            body=b'{"amount": 100}',
        )
        kinds = getattr(engine, "kinds", None)
        capture = getattr(kinds, "capture", None)

        async def one() -> None:
            got = await engine.process("acme", dest, parts)
            assert got.parts is not None
            if capture is not None:
                capture("acme", dest, content_type="application/json", body=b'{"id": 1}')
            engine.record(
                decision=got.decision,
                dest=dest,
                status=200,
                scrubbed=0,
                started=time.monotonic(),
                record_id=got.record_id,
            )

        async def run(n: int) -> list[float]:
            out = []
            for _ in range(n):
                c = time.process_time()
                await one()
                out.append(time.process_time() - c)
            return out

        asyncio.run(run(500))  # warm
        cpu = asyncio.run(run(args.requests))
        engine.close()
    print(
        f"{args.tree}: CPU per request mean {statistics.mean(cpu) * 1e6:.1f} us, "
        f"median {statistics.median(cpu) * 1e6:.1f} us over {args.requests}"
    )


if __name__ == "__main__":
    main()
