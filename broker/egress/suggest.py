"""``keybroker audit suggest``: the ``egress.allow`` list a tenant's recorded
traffic needs, so an operator can switch it from ``report`` to ``enforce``
without breaking the agent (DESIGN.md §12).

Every destination the tenant's requests went to (forwarded, or refused as
``egress_denied``) that its policy does not already allow is suggested,
exactly (no wildcard is ever invented); the entries already listed are
kept. Destinations refused as ``private_address`` are listed as comments:
allowing them is a decision about ``egress.private``, not the allowlist.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from broker.audit.chain import chain_files
from broker.egress.addresses import parse_ip
from broker.egress.rules import EgressRules, host_key

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``24h``/``7d``/``30m`` (ago) or an ISO 8601 date or time (UTC when no zone)."""
    now = now or datetime.now(UTC)
    m = _DURATION.match(text.strip())
    if m:
        return now - timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since {text!r}: use 24h, 7d or an ISO date/time") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def audit_files(path: Path) -> list[Path]:
    """The audit and its rotated files, and those of ``--workers`` processes."""
    files = chain_files(path)
    for worker in sorted(path.parent.glob(f"{path.stem}.w*{path.suffix}")):
        files += chain_files(worker)
    return files


def read_records(files: Iterable[Path]) -> Iterable[Mapping[str, Any]]:
    for f in files:
        with f.open("rb") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a torn last line; `audit verify` reports it
                if isinstance(rec, dict):
                    yield rec


def entry(host: str, port: int) -> str:
    h = f"[{host}]" if ":" in host else host
    return h if port == 443 else f"{h}:{port}"


@dataclass
class Suggestion:
    allow: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    private: list[str] = field(default_factory=list)
    records: int = 0


def suggest(
    records: Iterable[Mapping[str, Any]],
    tenant: str,
    rules: EgressRules,
    listed: Iterable[str],
    since: datetime | None = None,
) -> Suggestion:
    """``listed``: the tenant's current ``egress.allow`` entries (kept)."""
    out = Suggestion(allow=list(listed))
    new: set[tuple[str, int]] = set()
    private: set[tuple[str, int]] = set()
    for rec in records:
        if rec.get("tenant") != tenant or not _after(rec.get("ts"), since):
            continue
        host, port = rec.get("host"), rec.get("port")
        if not isinstance(host, str) or not host or not isinstance(port, int):
            continue
        out.records += 1
        key = host_key(host)
        if rec.get("reason") == "private_address":
            private.add((key, port))
        elif rec.get("decision") in ("pass", "allow") or rec.get("reason") == "egress_denied":
            if not rules.allows(key, port):
                new.add((key, port))
    out.new = [entry(h, p) for h, p in sorted(new, key=_order)]
    out.allow += out.new
    out.private = [entry(h, p) for h, p in sorted(private, key=_order)]
    return out


def _order(dest: tuple[str, int]) -> tuple[bool, str, int]:
    host, port = dest
    return (parse_ip(host) is not None, ".".join(reversed(host.split("."))), port)


def _after(ts: object, since: datetime | None) -> bool:
    if since is None:
        return True
    if not isinstance(ts, str):
        return False
    try:
        t = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return False
    return t >= since


def render(s: Suggestion, tenant: str, mode: str | None) -> str:
    lines = [
        f"# egress for tenant {tenant}: {len(s.new)} new destination(s) from {s.records} "
        f"record(s); current mode: {mode or 'none (no allowlist)'}",
        "egress:",
        "  mode: enforce",
        "  allow:" + ("" if s.allow else " []"),
    ]
    lines += [f"    - {json.dumps(a)}" for a in s.allow]
    if s.private:
        lines.append("# refused as private addresses (name them, or list their range in private):")
        lines += [f"#   {p}" for p in s.private]
    return "\n".join(lines) + "\n"
