"""TEMPORARY minimal audit (to be replaced by the full implementation)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


class AuditUnavailable(Exception):
    pass


def build_record(*, tenant: str | None, decision: str, reason: str | None, secrets: list[str],
                 method: str, scheme: str, host: str, port: int, path: str, status: int | None,
                 scrubbed: int, duration_ms: float,
                 fingerprints: dict[str, Any] | None = None) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "ts": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "id": uuid.uuid4().hex, "tenant": tenant, "decision": decision, "reason": reason,
        "secrets": secrets, "method": method, "scheme": scheme, "host": host, "port": port,
        "path": path.split("?", 1)[0], "status": status, "scrubbed": scrubbed,
        "duration_ms": round(duration_ms, 2),
    }
    if fingerprints:
        rec["fingerprints"] = fingerprints
    return rec


def fingerprint(key: bytes, value: bytes) -> str:
    return hmac.new(key, b"keybroker-fp\0" + value, hashlib.sha256).hexdigest()[:32]


class AuditLog:
    def __init__(self, path: Path, *, hmac_key: bytes | None = None,
                 rotate_bytes: int | None = None) -> None:
        self.path, self.key, self._lock = path, hmac_key, threading.Lock()
        self.prev = "0" * 64
        self._fd: int | None = None
        self._ok = self._open()

    def _open(self) -> bool:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            return True
        except OSError:
            return False

    def healthy(self) -> bool:
        return self._ok and self.path.is_file()

    def append(self, record: Mapping[str, Any]) -> dict[str, Any]:
        with self._lock:
            rec = dict(record)
            rec["prev"] = self.prev
            body = json.dumps(rec, sort_keys=True, separators=(",", ":")).encode()
            rec["hash"] = hashlib.sha256(body).hexdigest()
            try:
                assert self._fd is not None
                os.write(self._fd, json.dumps(rec).encode() + b"\n")
            except (OSError, AssertionError):
                self._ok = False
                raise AuditUnavailable("audit write failed") from None
            self.prev = rec["hash"]
            return rec

    def rotate(self) -> Path | None:
        return None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    records: int
    bad_line: int | None
    message: str


def verify(path: Path, *, hmac_key: bytes | None = None) -> VerifyResult:
    return VerifyResult(True, 0, None, "not implemented")
