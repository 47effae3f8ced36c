"""``keybroker tail --config``: every chain a broker writes. With
``keybroker run --workers N`` each worker keeps its own chain,
``<stem>.w<i><suffix>`` beside the policy's ``audit.path``; tail shows (and
with ``-f`` follows) all of them, each file in order."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

from broker.cli import console as feed


def audit_files(base: Path) -> list[Path]:
    """``base`` (when it exists or nothing else does) and its worker chains."""
    pattern = re.compile(re.escape(base.stem) + r"\.w(\d+)" + re.escape(base.suffix) + "$")
    workers = sorted(
        (int(m[1]), p)
        for p in (base.parent.glob(f"{base.stem}.w*{base.suffix}") if base.parent.is_dir() else ())
        if (m := pattern.match(p.name))
    )
    files = [p for _, p in workers]
    return [base, *files] if base.exists() or not files else files


def tail_all(paths: list[Path], *, follow: bool, **kw: Any) -> int:
    """One file: :func:`console.tail`. Several: each in turn, or with
    ``follow`` each on its own thread (lines of different workers
    interleave as they arrive). Exit code: the worst of them."""
    if len(paths) == 1 or not follow:
        return max(feed.tail(p, follow=follow, **kw) for p in paths)
    codes: list[int] = []
    threads = [
        threading.Thread(
            target=lambda p=p: codes.append(feed.tail(p, follow=True, **kw)), daemon=True
        )
        for p in paths
    ]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            time.sleep(0.2)
    except KeyboardInterrupt:
        return 0
    return max(codes, default=0)
