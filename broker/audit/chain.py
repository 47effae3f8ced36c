"""The audit hash chain: how a record's hash is computed, and how a file (or a
series of rotated files) is checked.

Each line is the canonical JSON of one record (DESIGN.md §6). ``hash`` is
SHA-256 over the canonical JSON of the record without ``hash`` (HMAC-SHA256
with a key), and ``prev`` is the previous record's ``hash``. Editing a
record breaks its hash; removing, inserting or reordering records breaks a
``prev`` link; a crash or a truncation leaves a last line without a newline.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENESIS = "0" * 64
"""``prev`` of the first record of a new chain."""

FIELDS = frozenset(
    "ts id tenant decision reason secrets method scheme host port path status scrubbed"
    " duration_ms prev hash".split()
)
OPTIONAL_FIELDS = frozenset({"fingerprints", "phase", "approval", "report", "cookies_dropped"})
"""``phase`` is written on every record since the write-ahead audit; files
from before it lack it, and their records read as ``done``. ``approval``,
``report`` and ``cookies_dropped`` are extensions (governance, egress report
mode, scrubbed cookies removed from a request)."""
DECISIONS = frozenset({"allow", "pass", "deny", "error"})
PHASES = frozenset({"sent", "done"})
"""``sent``: a request carrying a secret, on record before the value left;
``done``: how an exchange ended (the second record of a sent one, with the same ``id``)."""

_HEX64 = re.compile(r"[0-9a-f]{64}")
_TAIL_WINDOW = 64 * 1024


_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical(record: Mapping[str, Any]) -> bytes:
    """The one serialisation the broker writes and hashes: ``json.dumps`` with
    sorted keys, no spaces, UTF-8 as is, no NaN (one encoder, built once)."""
    return _CANONICAL.encode(record).encode("utf-8")


def _digest(body: bytes, key: bytes | None) -> str:
    if key:
        return hmac.new(key, body, hashlib.sha256).hexdigest()
    return hashlib.sha256(body).hexdigest()


def chain_hash(record: Mapping[str, Any], key: bytes | None) -> str:
    """The ``hash`` of ``record`` (any ``hash`` key in it is ignored)."""
    return _digest(canonical({k: v for k, v in record.items() if k != "hash"}), key)


def sealed(record: Mapping[str, Any], key: bytes | None) -> tuple[str, bytes]:
    """``chain_hash(record)`` and the canonical line of ``record`` with that
    ``hash``, serialising the record once (the writer's hot path). Keys are
    sorted, so the canonical text is the keys before "hash", then "hash",
    then the keys after it: each half is serialised once and spliced."""
    head = canonical({k: v for k, v in record.items() if k < "hash"})[:-1]  # b"{..." or b"{"
    tail = canonical({k: v for k, v in record.items() if k > "hash"})[1:]  # b"...}" or b"}"
    before, after = (b"," if len(head) > 1 else b""), (b"," if len(tail) > 1 else b"")
    digest = _digest(head + (before if after else b"") + tail, key)
    return digest, head + before + b'"hash":"' + digest.encode() + b'"' + after + tail


def _hash_of(line: bytes) -> str | None:
    try:
        h = json.loads(line.decode("utf-8")).get("hash")
    except (UnicodeDecodeError, ValueError, AttributeError):
        return None
    return h if isinstance(h, str) and _HEX64.fullmatch(h) else None


def tail_state(fd: int, size: int) -> tuple[str | None, bool]:
    """Of an open chain file: the ``hash`` of its last complete line (None when
    there is none, or it is not an intact record) and whether it ends with a newline."""
    if size == 0:
        return None, True
    ends_clean = os.pread(fd, 1, size - 1) == b"\n"
    window = _TAIL_WINDOW
    for _ in range(9):  # the window doubles until it holds the whole last line
        start = max(0, size - window)
        data = os.pread(fd, size - start, start)
        head = data[: max(0, data.rfind(b"\n"))]  # up to the end of the last complete line
        nl = head.rfind(b"\n")
        if nl >= 0 or start == 0:
            return _hash_of(head[nl + 1 :]), ends_clean
        window *= 2
    return None, ends_clean


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    records: int
    bad_line: int | None
    message: str
    last_hash: str | None = None
    """``hash`` of the last intact record; what the next file's chain continues from."""
    path: Path | None = None
    """The file the result is about (the first bad one, for a chain of files)."""


class _Bad(Exception):
    pass


def _check_line(raw: bytes, key: bytes | None, prev: str) -> tuple[str, dict[str, Any]]:
    """Check one complete line against the chain; return its hash and the record."""
    if not raw.strip():
        raise _Bad("empty line")
    try:
        rec = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _Bad("not valid JSON (a partial write from a crash, or an edit)") from None
    if not isinstance(rec, dict):
        raise _Bad("not a JSON object")
    missing = sorted(FIELDS - rec.keys())
    if missing:
        raise _Bad(f"missing field(s) {', '.join(missing)}")
    extra = sorted(rec.keys() - FIELDS - OPTIONAL_FIELDS)
    if extra:
        raise _Bad(f"unexpected field(s) {', '.join(extra)}")
    stated = rec["hash"]
    if not isinstance(stated, str) or not _HEX64.fullmatch(stated):
        raise _Bad("malformed hash")
    if rec["decision"] not in DECISIONS:
        raise _Bad("unknown decision")
    if rec.get("phase", "done") not in PHASES:
        raise _Bad("unknown phase")
    try:
        written = canonical(rec)
    except ValueError:
        raise _Bad("a value JSON cannot represent") from None
    if written != raw:
        raise _Bad("altered (not in the form the broker writes)")
    if not hmac.compare_digest(chain_hash(rec, key), stated):
        hint = "" if key else "; if the chain is keyed, give the HMAC key"
        raise _Bad(f"hash mismatch: the record was edited{hint}")
    if rec["prev"] != prev:
        raise _Bad(
            "prev does not match the previous record's hash: a record was removed, "
            "inserted or reordered"
            + ("" if prev != GENESIS else " (or this file continues a rotated chain)")
        )
    return stated, rec


def verify(
    path: Path, *, hmac_key: bytes | None = None, expect_prev: str | None = None
) -> VerifyResult:
    """Check the chain in one file. The first record's ``prev`` must be
    ``expect_prev`` (default: the start of a chain, ``"0" * 64``); a file
    that continues a rotated chain is checked with :func:`verify_chain`."""
    prev = expect_prev or GENESIS
    count = 0
    line_no = 0
    open_ids: set[str] = set()
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return VerifyResult(False, 0, None, f"{path}: not a regular file", prev, path)
        with open(path, "rb") as f:
            for raw in f:
                line_no += 1
                if not raw.endswith(b"\n"):
                    return VerifyResult(
                        False,
                        count,
                        line_no,
                        f"{path}: line {line_no} is partial (crash or truncation)",
                        prev,
                        path,
                    )
                try:
                    prev, rec = _check_line(raw[:-1], hmac_key, prev)
                except _Bad as bad:
                    return VerifyResult(
                        False, count, line_no, f"{path}: line {line_no}: {bad}", prev, path
                    )
                count += 1
                _track(open_ids, rec)
    except OSError as exc:
        return VerifyResult(False, count, None, f"{path}: cannot read ({exc.strerror})", prev, path)
    return VerifyResult(
        True,
        count,
        None,
        f"{path}: {count} records, chain intact{_open_note(open_ids)}",
        prev,
        path,
    )


def _track(open_ids: set[str], rec: Mapping[str, Any]) -> None:
    """Follow the exchanges that were sent and have no ``done`` record yet."""
    if rec.get("phase") == "sent":
        open_ids.add(str(rec.get("id")))
    else:
        open_ids.discard(str(rec.get("id")))


def _open_note(open_ids: set[str]) -> str:
    """Sent without done: the broker was killed (or is still running) while
    those requests were in flight. Not tampering, but worth saying."""
    if not open_ids:
        return ""
    return f"; {len(open_ids)} exchange(s) sent with no done record (in flight, or the broker was killed)"


def verify_chain(
    paths: Sequence[Path], *, hmac_key: bytes | None = None, expect_prev: str | None = None
) -> VerifyResult:
    """Check files in order (oldest first), each continuing the previous one's chain."""
    prev = expect_prev or GENESIS
    total = 0
    for p in paths:
        res = verify(p, hmac_key=hmac_key, expect_prev=prev)
        total += res.records
        if not res.ok:
            return VerifyResult(False, total, res.bad_line, res.message, res.last_hash, p)
        prev = res.last_hash or prev
    return VerifyResult(
        True, total, None, f"{len(paths)} file(s), {total} records, chain intact", prev, None
    )


_ROTATED = r"\.(\d{8}T\d{6}Z)\.(\d+)"


def worker_file(path: Path, index: int) -> Path:
    """The chain of worker ``index`` under ``keybroker run --workers N``:
    ``<stem>.w<index><suffix>`` next to ``path``."""
    return path.with_name(f"{path.stem}.w{index}{path.suffix}")


def rotated_name(path: Path, stamp: str, n: int) -> Path:
    """``<name>.<UTC timestamp>.<n>`` next to ``path``."""
    return path.with_name(f"{path.name}.{stamp}.{n}")


def chain_files(path: Path) -> list[Path]:
    """The rotated files of ``path``, oldest first, then ``path`` itself if it exists."""
    pattern = re.compile(re.escape(path.name) + _ROTATED)
    found: list[tuple[str, int, Path]] = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        entries = []
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m:
            found.append((m.group(1), int(m.group(2)), entry))
    out = [p for _, _, p in sorted(found)]
    if path.exists():
        out.append(path)
    return out


def verify_file(path: Path, *, hmac_key: bytes | None = None) -> VerifyResult:
    """Check ``path`` together with the rotated files before it, when there are any."""
    files = chain_files(path)
    if len(files) <= 1:
        return verify(path, hmac_key=hmac_key)
    return verify_chain(files, hmac_key=hmac_key)
