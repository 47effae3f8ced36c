"""The live decision feed (``keybroker run``) and ``keybroker tail``.

Audit records carry agent-chosen text (paths, hosts, tenant names as
configured): every field goes through :func:`sanitize` and into rich ``Text``
objects, never into markup strings, so a path cannot move the cursor, retitle
the terminal, reorder text with bidi controls or forge ``[red]`` styling.
Rendering per line is costly (MITMPROXY_NOTES.md), so the feed batches.
"""

from __future__ import annotations

import re
import threading
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

DECISION_STYLES = {"allow": "green", "pass": "dim", "deny": "bold red", "error": "bold magenta"}
DECISION_STYLES["held"] = "bold yellow"  # waiting for an operator (feed only, never audited)
_ORDER = ("allow", "pass", "deny", "error")

_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"  # CSI (7- and 8-bit)
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # OSC, DCS…
    r"|\x1b[ -/]*[0-~]?"  # any other escape, or a lone ESC
)
_INVISIBLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
_PRECAP = 4096
_TS = re.compile(r"\d{4}-\d\d-\d\dT(\d\d:\d\d:\d\d(?:\.\d{3})?)")


def sanitize(s: object, limit: int = 200) -> str:
    """Printable, single-line, length-capped text (an ellipsis marks the cut)."""
    text = (s if isinstance(s, str) else str(s))[:_PRECAP]
    if not (text.isascii() and text.isprintable()):  # else: no control, escape or bidi
        text = _INVISIBLE.sub("", _ESCAPES.sub("", text))
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fields(rec: Mapping[str, Any]) -> dict[str, str]:
    def f(key: str, default: str = "-") -> str:
        value = rec.get(key)
        return default if value is None or value == "" else sanitize(value)

    ts = f("ts")
    m = _TS.match(ts)
    secrets = rec.get("secrets")
    names = [sanitize(s, 64) for s in secrets] if isinstance(secrets, list) else []
    try:
        ms = f"{float(rec.get('duration_ms') or 0):.1f}ms"
    except (TypeError, ValueError):
        ms = "?ms"
    return {
        "time": m.group(1) if m else ts[:23],
        "decision": f("decision", "?"),
        "tenant": f("tenant"),
        "secrets": ",".join(names) or "-",
        "method": f("method"),
        "dest": f"{f('host')}:{f('port')}",
        "path": f("path", ""),
        # A write-ahead record: the value is on its way, the exchange not done.
        "status": "sent" if rec.get("phase") == "sent" else f("status"),
        "reason": f("reason", "") + (" (report)" if rec.get("report") is True else ""),
        "scrubbed": f("scrubbed", "0"),
        "ms": ms,
    }


def render_record(rec: Mapping[str, Any]) -> Text:
    """One feed line; agent text is appended as plain ``Text``, never parsed as markup."""
    v = _fields(rec)
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append(v["time"], style="dim")
    t.append(f" {v['decision']:<5} ", style=DECISION_STYLES.get(v["decision"], "bold"))
    t.append(f"{v['tenant']:<10}", style="cyan")
    t.append(f" {v['secrets']:<12}", style="yellow")
    t.append(f" {v['method']:<6} ")
    t.append(v["dest"], style="bold")
    t.append(v["path"])
    t.append(f" {v['status']}")
    if v["reason"]:
        t.append(f" {v['reason']}", style="red")
    scrubbed = v["scrubbed"] not in ("0", "-")
    t.append(f" scrubbed={v['scrubbed']}", style="bold yellow" if scrubbed else "dim")
    t.append(f" {v['ms']}", style="dim")
    return t


def render_plain(rec: Mapping[str, Any]) -> str:
    """The same line for a pipe or a file: sanitized, no styling."""
    v = _fields(rec)
    reason = f" reason={v['reason']}" if v["reason"] else ""
    return (
        f"{v['time']} {v['decision']} tenant={v['tenant']} secrets={v['secrets']} "
        f"{v['method']} {v['dest']}{v['path']} status={v['status']}{reason} "
        f"scrubbed={v['scrubbed']} {v['ms']}"
    )


class Feed:
    """Shows audit records as they happen; :meth:`push` never renders."""

    def __init__(
        self,
        console: Console | None = None,
        *,
        plain: bool | None = None,
        interval: float = 0.1,
        max_pending: int = 10_000,
    ) -> None:
        self.console = console if console is not None else Console(stderr=True)
        self.plain = (not self.console.is_terminal) if plain is None else plain
        self._pending: deque[Mapping[str, Any]] = deque()
        self._max, self._dropped, self._interval = max_pending, 0, interval
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="keybroker-feed", daemon=True)
        self._thread.start()

    def push(self, rec: Mapping[str, Any]) -> None:
        if rec.get("phase") == "sent":
            return  # live, an exchange is shown once, when it ends (tail shows both phases)
        with self._lock:
            if len(self._pending) >= self._max:  # the console is stuck: don't grow
                self._dropped += 1
            else:
                self._pending.append(rec)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()

    def flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, deque()
            dropped, self._dropped = self._dropped, 0
        if not batch and not dropped:
            return
        try:
            self._write(batch, dropped)
        except Exception:  # noqa: S110 - a broken stderr must not take the proxy down
            pass

    def _write(self, batch: Iterable[Mapping[str, Any]], dropped: int) -> None:
        note = [f"… {dropped} records not shown (feed backlog)"] if dropped else []
        if self.plain:  # one write per batch, no rich rendering at all
            out: IO[str] = self.console.file
            out.write("\n".join([*(render_plain(r) for r in batch), *note]) + "\n")
            out.flush()
            return
        texts = [*(render_record(r) for r in batch), *(Text(n, style="dim") for n in note)]
        self.console.print(Text("\n").join(texts), no_wrap=True, overflow="ellipsis")

    def close(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join(timeout=5)
        self.flush()


class Summary:
    """Counts by decision and reason, shown when ``keybroker run`` exits."""

    def __init__(self) -> None:
        self.by_decision: Counter[str] = Counter()
        self.by_reason: Counter[tuple[str, str]] = Counter()
        self.scrubbed = 0
        self._lock = threading.Lock()

    def add(self, rec: Mapping[str, Any]) -> None:
        if rec.get("phase") == "sent":
            return  # counted once, by its done record
        decision = sanitize(rec.get("decision"), 16)
        reason = sanitize(rec.get("reason") or "-", 40)
        scrubbed = rec.get("scrubbed")
        with self._lock:
            self.by_decision[decision] += 1
            self.by_reason[(decision, reason)] += 1
            if isinstance(scrubbed, int):
                self.scrubbed += scrubbed

    @property
    def total(self) -> int:
        return sum(self.by_decision.values())

    def render(self) -> RenderableType:
        table = Table(title="keybroker: decisions this run", title_justify="left")
        table.add_column("decision")
        table.add_column("reason")
        table.add_column("requests", justify="right")
        rank = {d: i for i, d in enumerate(_ORDER)}
        with self._lock:
            rows = sorted(self.by_reason.items(), key=lambda kv: (rank.get(kv[0][0], 9), kv[0]))
            total, scrubbed = self.total, self.scrubbed
        for (decision, reason), n in rows:
            style = DECISION_STYLES.get(decision, "")
            table.add_row(Text(decision, style=style), Text(reason), Text(str(n)))
        table.add_section()
        table.add_row(Text("total"), Text(""), Text(str(total)))
        return Group(table, Text(f"{scrubbed} secret occurrence(s) scrubbed from responses"))


def render_header(
    *,
    listen: str,
    tenants: Iterable[str],
    backends: Mapping[str, str],
    ca_path: str | Path,
    audit_path: str | Path,
) -> RenderableType:
    """The banner ``keybroker run`` prints once at start."""
    names = [sanitize(t, 40) for t in tenants]
    shown = ", ".join(names[:8]) + (f", … ({len(names)} in all)" if len(names) > 8 else "")
    back = ", ".join(f"{sanitize(n, 40)} ({sanitize(t, 20)})" for n, t in backends.items())
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for label, value in (
        ("listening", sanitize(listen)),
        ("tenants", shown or "(none)"),
        ("backends", back or "(none)"),
        ("trust CA", sanitize(ca_path, 400)),
        ("audit", sanitize(audit_path, 400)),
    ):
        grid.add_row(Text(label), Text(value))
    return Panel(grid, title="keybroker", title_align="left", border_style="blue", expand=False)
