"""The audit of exchanges (DESIGN.md §6): a ``sent`` record before a value
leaves, a ``done`` record with the same ``id`` when the exchange ends, and
``done``/``interrupted`` for every exchange still open when the broker stops.
Each record is built from plain values, its agent-chosen text cleaned of
any known value, appended to the live :class:`~broker.audit.log.AuditLog`
and shown in the feed."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from broker.audit.chain import worker_file
from broker.audit.log import AuditLog, AuditUnavailable
from broker.audit.record import AuditRecord, RecordSink, build_record
from broker.policy.load import PolicyError
from broker.policy.schema import Policy
from broker.request.decision import Decision, Destination

log = logging.getLogger("keybroker")

Clean = Callable[..., list[str]]
"""``clean(tenant, *texts, caseless=(indexes,))``: the texts with known values replaced."""


def audit_key(policy: Policy, env: Mapping[str, str]) -> bytes | None:
    """The HMAC key the policy names (``audit.hmac_key_env``), if any."""
    name = policy.audit.hmac_key_env
    if not name:
        return None
    key = env.get(name)
    if not key:
        raise PolicyError([f"audit.hmac_key_env: environment variable {name} is not set"])
    return key.encode("utf-8")


def audit_file(policy: Policy, worker: int | None) -> Path:
    """The chain this process writes: with ``--workers N``, one per worker."""
    p = policy.audit.path
    return p if worker is None else worker_file(p, worker)


def open_audit(policy: Policy, key: bytes | None, worker: int | None) -> AuditLog:
    """Raises :class:`~broker.audit.lock.AuditInUse` when another broker writes it."""
    return AuditLog(
        audit_file(policy, worker), hmac_key=key, rotate_bytes=policy.audit.rotate_bytes
    )


@dataclass(frozen=True)
class _Open:
    """An exchange whose ``sent`` record is written and ``done`` is not."""

    decision: Decision
    dest: Destination
    started: float
    fingerprints: Mapping[str, Any]
    cleaned: tuple[str, ...]
    """The sent record's cleaned host, path, method and secrets: the done
    record of the same exchange reuses them (one cleaning scan, not two)."""


class Recorder:
    """Writes the records of exchanges to whichever audit log is live
    (``current()``: a reload may swap it) and to the feed."""

    def __init__(
        self, current: Callable[[], AuditLog], clean: Clean, feed: RecordSink | None = None
    ) -> None:
        self._current, self._clean, self.feed = current, clean, feed
        self._lock = threading.Lock()
        self._open: dict[str, _Open] = {}

    def sent(
        self,
        decision: Decision,
        dest: Destination,
        fingerprints: Mapping[str, Any],
        extra: Mapping[str, Any] | None = None,
        *,
        clean: bool = False,
    ) -> str | None:
        """Write-ahead: the ``sent`` record of a request that carries a value,
        before the value leaves. Its id, or None when it could not be written
        (the request must then be refused). ``clean``: the caller has just
        scanned the host, path, method and secret names, in every spelling,
        and found no known value (the texts need no cleaning)."""
        started = time.monotonic()
        if clean:
            cleaned = (dest.host, dest.path, dest.method, *decision.secrets)
        else:
            cleaned = self._cleaned(decision, dest)
        rec = self._build(decision, dest, None, 0, started, fingerprints, "sent", None, cleaned)
        written = self.write(_with(rec, extra))
        if written is None:
            return None
        record_id: str = written["id"]
        with self._lock:
            self._open[record_id] = _Open(decision, dest, started, fingerprints, cleaned)
        return record_id

    def done(
        self,
        *,
        decision: Decision,
        dest: Destination | None,
        status: int | None,
        scrubbed: int,
        started: float,
        fingerprints: Mapping[str, Any] | None = None,
        record_id: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """The ``done`` record of a request (with the ``record_id`` of its
        ``sent`` record, if it had one). ``extra``: fields beyond §6."""
        ex = None
        if record_id is not None:
            with self._lock:
                ex = self._open.pop(record_id, None)
        same = ex is not None and ex.dest is dest and ex.decision.secrets == decision.secrets
        cleaned = ex.cleaned if ex is not None and same else self._cleaned(decision, dest)
        rec = self._build(
            decision, dest, status, scrubbed, started, fingerprints, "done", record_id, cleaned
        )
        self.write(_with(rec, extra))

    def interrupt_open(self) -> int:
        """A stop: ``done`` with reason ``interrupted`` for every exchange
        still in flight; returns how many."""
        with self._lock:
            pending, self._open = self._open, {}
        for record_id, ex in pending.items():
            rec = self._build(
                ex.decision, ex.dest, None, 0, ex.started, ex.fingerprints, "done", record_id,
                ex.cleaned,
            )  # fmt: skip
            rec["reason"] = "interrupted"
            self.write(rec)
        return len(pending)

    def _cleaned(self, decision: Decision, dest: Destination | None) -> tuple[str, ...]:
        """Host, path, method and secret names as the audit may hold them."""
        fields = (dest.host, dest.path, dest.method) if dest else ("", "", "")
        texts = self._clean(decision.tenant, *fields, *decision.secrets, caseless=(0, 2), decoded=1)
        return tuple(texts)

    def write(self, rec: AuditRecord) -> AuditRecord | None:
        """Append ``rec`` and show it in the feed; None when the audit is down."""
        audit = self._current()
        try:
            rec = audit.append(rec)
        except AuditUnavailable:
            log.error("keybroker: audit record could not be written (%s)", audit.path)
            return None
        if self.feed is not None:
            self.feed.push(rec)
        return rec

    def _build(
        self,
        decision: Decision,
        dest: Destination | None,
        status: int | None,
        scrubbed: int,
        started: float,
        fingerprints: Mapping[str, Any] | None,
        phase: str,
        record_id: str | None,
        cleaned: tuple[str, ...],
    ) -> AuditRecord:
        host, path, method, *secrets = cleaned
        rec = build_record(
            tenant=decision.tenant,
            decision=decision.verdict,
            reason=decision.reason.value if decision.reason else None,
            secrets=secrets,
            method=method,
            scheme=dest.scheme if dest else "",
            host=host,
            port=dest.port if dest else 0,
            path=path,
            status=status,
            scrubbed=scrubbed,
            duration_ms=(time.monotonic() - started) * 1000.0,
            fingerprints=dict(fingerprints) if fingerprints else None,
            phase=phase,
            record_id=record_id,
        )
        if decision.report:
            rec["report"] = True  # egress mode: report (forwarded, would be refused)
        return rec


def _with(rec: AuditRecord, extra: Mapping[str, Any] | None) -> AuditRecord:
    """``rec`` plus extension fields (never replacing a §6 field)."""
    if extra:
        return cast(AuditRecord, {**{k: v for k, v in extra.items() if k not in rec}, **rec})
    return rec
