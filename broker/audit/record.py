"""One audit record (DESIGN.md §6): its fields, how it is built from plain
values (every agent-chosen string made writable, the query cut from the
path), the keyed fingerprint of a value, and the sink that shows records live."""

from __future__ import annotations

import hashlib
import hmac
import math
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NotRequired, Protocol, TypedDict

from broker.audit.chain import DECISIONS, PHASES

_FP_DOMAIN = b"keybroker/fingerprint/v1\x00"


class AuditRecord(TypedDict):
    """The fields of a record; ``prev`` and ``hash`` are set when it is chained."""

    ts: str
    id: str
    tenant: str | None
    decision: str
    reason: str | None
    secrets: list[str]
    method: str
    scheme: str
    host: str
    port: int
    path: str
    status: int | None
    scrubbed: int
    duration_ms: float
    phase: str
    fingerprints: NotRequired[dict[str, dict[str, str | None]]]
    approval: NotRequired[dict[str, str | None]]
    """Extension: the approval a governed request waited for (id, verdict, by)."""
    report: NotRequired[bool]
    """Extension: a report-mode egress finding (forwarded, would be refused)."""
    cookies_dropped: NotRequired[Any]
    """Extension: Cookie pairs holding a placeholder removed before the decision."""
    prev: NotRequired[str]
    hash: NotRequired[str]


class RecordSink(Protocol):
    """Where written records go to be shown (the live feed, the exit summary);
    also live events that are not records yet (a request held for approval)."""

    def push(self, rec: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


def _text(value: object) -> str:
    if type(value) is str and value.isascii():
        return value  # the common case: nothing to replace
    # Lone surrogates (from undecodable bytes) cannot be written as UTF-8.
    return str(value).encode("utf-8", "replace").decode("utf-8")


def _fingerprints(fps: Mapping[str, Any]) -> dict[str, dict[str, str | None]]:
    out: dict[str, dict[str, str | None]] = {}
    for name, entry in fps.items():
        fp = entry.get("fp") if isinstance(entry, Mapping) else None
        if not isinstance(fp, str) or len(fp) != 32 or not all(c in "0123456789abcdef" for c in fp):
            raise ValueError("an audit fingerprint must come from audit.fingerprint()")
        version = entry.get("version")
        out[_text(name)] = {"fp": fp, "version": None if version is None else _text(version)}
    return out


def build_record(
    *,
    tenant: str | None,
    decision: str,
    reason: str | None,
    secrets: Sequence[str],
    method: str,
    scheme: str,
    host: str,
    port: int,
    path: str,
    status: int | None,
    scrubbed: int,
    duration_ms: float,
    fingerprints: Mapping[str, Any] | None = None,
    phase: str = "done",
    record_id: str | None = None,
) -> AuditRecord:
    """One audit record (without ``prev``/``hash``, which :meth:`AuditLog.append` sets).
    The query and fragment are cut from ``path``. A ``done`` record of an
    exchange that was ``sent`` carries the ``record_id`` of that record."""
    if decision not in DECISIONS:
        raise ValueError(f"unknown audit decision {decision!r}")
    if phase not in PHASES:
        raise ValueError(f"unknown audit phase {phase!r}")
    ms = float(duration_ms)
    rec: AuditRecord = {
        # 2024-05-01T12:00:00.123Z (isoformat truncates to milliseconds)
        "ts": datetime.now(UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
        "id": record_id or uuid.uuid4().hex,
        "tenant": None if tenant is None else _text(tenant),
        "decision": decision,
        "reason": None if reason is None else _text(reason),
        "secrets": [_text(s) for s in secrets],
        "method": _text(method),
        "scheme": _text(scheme),
        "host": _text(host),
        "port": int(port),
        "path": _text(str(path).split("?", 1)[0].split("#", 1)[0]),
        "status": None if status is None else int(status),
        "scrubbed": int(scrubbed),
        "duration_ms": round(ms, 2) if math.isfinite(ms) else 0.0,
        "phase": phase,
    }
    if fingerprints:
        rec["fingerprints"] = _fingerprints(fingerprints)
    return rec


def fingerprint(key: bytes, value: bytes) -> str:
    """A keyed, domain-separated fingerprint of a secret value (32 hex chars):
    tells which value was used without revealing it."""
    if not key:
        raise ValueError("a fingerprint needs a non-empty key")
    return hmac.new(key, _FP_DOMAIN + value, hashlib.sha256).hexdigest()[:32]
