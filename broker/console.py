"""TEMPORARY minimal console (to be replaced by the full implementation)."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Mapping
from typing import Any


class Feed:
    def __init__(self, console: Any = None, *, plain: bool | None = None) -> None:
        self.console = console

    def push(self, rec: Mapping[str, Any]) -> None:
        print(f"{rec['decision']} {rec['tenant']} {rec['method']} {rec['host']}{rec['path']} "
              f"{rec['status']} {rec['reason']}", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


class Summary:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, rec: Mapping[str, Any]) -> None:
        self.counts[str(rec["decision"])] += 1

    def render(self) -> str:
        return str(dict(self.counts))


def render_header(**kw: Any) -> str:
    return str(kw)


def tail(*a: Any, **kw: Any) -> int:
    return 0
