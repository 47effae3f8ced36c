"""The audit writer (broker/audit.py): exact redacted records, a hash chain
that survives reopening, rotation and threads, 0600/0700 modes, and an
unwritable file that says so before any secret is used (DESIGN.md §6, §7.5).

Canaries are fake values; assertions never print them."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from broker.audit import chain
from broker.audit import log as audit
from broker.audit.chain import FIELDS, GENESIS, verify, verify_chain
from broker.audit.log import AuditLog, AuditUnavailable
from broker.audit.record import build_record, fingerprint
from tests.support.leaks import assert_no_leak

CANARY = "kbcanary_audit_9d8c7b6a5f4e3d2c1b0a"
KEY = b"kb-test-audit-hmac-key"


def rec(**over: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "tenant": "acme",
        "decision": "allow",
        "reason": None,
        "secrets": ["stripe"],
        "method": "POST",
        "scheme": "https",
        "host": "api.stripe.com",
        "port": 443,
        "path": "/v1/charges",
        "status": 200,
        "scrubbed": 0,
        "duration_ms": 12.3456,
    }
    fields.update(over)
    return build_record(**fields)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def sha_chain_hash(record: dict[str, Any]) -> str:
    """Recomputed here from DESIGN.md §6, independently of the module."""
    body = {k: v for k, v in record.items() if k != "hash"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


# -- records ---------------------------------------------------------------------
def test_record_has_exactly_the_design_fields_and_types() -> None:
    r = rec()
    assert set(r) == FIELDS - {"prev", "hash"} | {"phase"}
    assert r["phase"] == "done"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["ts"])
    assert re.fullmatch(r"[0-9a-f]{32}", r["id"]) and r["id"] != rec()["id"]
    assert (r["tenant"], r["decision"], r["reason"], r["secrets"]) == (
        "acme",
        "allow",
        None,
        ["stripe"],
    )
    assert (r["method"], r["scheme"], r["host"], r["port"]) == (
        "POST",
        "https",
        "api.stripe.com",
        443,
    )
    assert (r["status"], r["scrubbed"], r["duration_ms"]) == (200, 0, 12.35)
    assert isinstance(r["port"], int) and isinstance(r["duration_ms"], float)


@pytest.mark.parametrize(
    ("path", "stored"),
    [
        pytest.param("/v1/x?api_key=" + CANARY, "/v1/x", id="query"),
        pytest.param("/v1/x#frag" + CANARY, "/v1/x", id="fragment"),
        pytest.param("/v1/x?a=1#b", "/v1/x", id="query-and-fragment"),
        pytest.param("/v1/%3F", "/v1/%3F", id="encoded-question-mark-kept"),
        pytest.param("/p/\udcff", "/p/?", id="lone-surrogate"),
    ],
)
def test_path_never_keeps_query_values(path: str, stored: str) -> None:
    assert rec(path=path)["path"] == stored


def test_a_denied_request_has_null_status_and_a_reason() -> None:
    r = rec(decision="deny", reason="host_not_allowed", status=None, tenant=None)
    assert (r["decision"], r["reason"], r["status"], r["tenant"]) == (
        "deny",
        "host_not_allowed",
        None,
        None,
    )


def test_unknown_decisions_and_extra_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="decision"):
        rec(decision="maybe")
    with pytest.raises(TypeError):
        rec(headers={"authorization": CANARY})


def test_fingerprint_is_keyed_truncated_and_domain_separated() -> None:
    fp = fingerprint(KEY, CANARY.encode())
    assert re.fullmatch(r"[0-9a-f]{32}", fp)
    assert fp == fingerprint(KEY, CANARY.encode())
    assert fp != fingerprint(KEY + b"x", CANARY.encode())
    assert fp != fingerprint(KEY, CANARY.encode() + b"x")
    plain = hmac.new(KEY, CANARY.encode(), hashlib.sha256).hexdigest()[:32]
    assert fp != plain, "the fingerprint must not equal a bare HMAC of the value"
    with pytest.raises(ValueError):
        fingerprint(b"", CANARY.encode())


def test_fingerprints_extension_only_when_given_and_only_fingerprints() -> None:
    assert "fingerprints" not in rec()
    assert "fingerprints" not in rec(fingerprints={})
    fp = fingerprint(KEY, CANARY.encode())
    r = rec(fingerprints={"stripe": {"fp": fp, "version": 3}})
    assert r["fingerprints"] == {"stripe": {"fp": fp, "version": "3"}}
    with pytest.raises(ValueError, match="fingerprint"):
        rec(fingerprints={"stripe": {"fp": CANARY, "version": None}})


# -- the chain -------------------------------------------------------------------
def test_records_are_chained_and_hashed_as_designed(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    first, second = log.append(rec()), log.append(rec(decision="pass", secrets=[]))
    log.close()
    stored = lines(path)
    assert stored == [first, second]
    assert set(first) == FIELDS | {"phase"}
    assert first["prev"] == GENESIS and second["prev"] == first["hash"]
    assert all(r["hash"] == sha_chain_hash(r) for r in stored)
    assert verify(path).ok


def test_file_0600_and_created_parent_0700_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "new" / "dir" / "audit.jsonl"
        AuditLog(path).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_an_existing_loose_file_is_tightened_and_its_parent_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.touch()
    path.chmod(0o644)
    before = stat.S_IMODE(tmp_path.stat().st_mode)
    AuditLog(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(tmp_path.stat().st_mode) == before


def test_reopening_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.append(rec())
    last = log.append(rec())
    log.close()
    again = AuditLog(path)
    third = again.append(rec())
    again.close()
    assert third["prev"] == last["hash"]
    result = verify(path)
    assert result.ok and result.records == 3


def test_a_partial_last_line_is_kept_and_the_chain_continues_past_it(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.append(rec())
    last = log.append(rec())
    log.close()
    with path.open("ab") as f:
        f.write(b'{"decision":"allow","ts":"20')  # a crash mid-write
    assert verify(path).message.endswith("line 3 is partial (crash or truncation)")
    again = AuditLog(path)
    fourth = again.append(rec())
    again.close()
    raw = path.read_bytes().split(b"\n")
    assert raw[2] == b'{"decision":"allow","ts":"20', "the partial line is left as it was"
    assert fourth["prev"] == last["hash"]
    result = verify(path)
    assert not result.ok and result.bad_line == 3


def test_hmac_chain_needs_the_key(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, hmac_key=KEY)
    for _ in range(3):
        log.append(rec())
    log.close()
    assert verify(path, hmac_key=KEY).ok
    without = verify(path)
    assert not without.ok and without.bad_line == 1 and "HMAC key" in without.message
    wrong = verify(path, hmac_key=b"another key")
    assert not wrong.ok and wrong.bad_line == 1


def test_under_hmac_an_attacker_cannot_recompute_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, hmac_key=KEY)
    for _ in range(4):
        log.append(rec())
    log.close()
    stored = lines(path)
    stored[1]["host"] = "evil.example.com"
    prev = stored[0]["hash"]
    for r in stored[1:]:  # the attacker relinks everything with plain SHA-256
        r["prev"] = prev
        r["hash"] = prev = sha_chain_hash(r)
    path.write_text(
        "".join(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n" for r in stored)
    )
    result = verify(path, hmac_key=KEY)
    assert not result.ok and result.bad_line == 2
    assert verify(path).bad_line == 1, "the keyless check fails already at the HMAC'd first line"


# -- rotation and replacement ----------------------------------------------------------
def test_size_rotation_keeps_one_chain_across_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, rotate_bytes=1200)
    written = [log.append(rec(scrubbed=i)) for i in range(12)]
    log.close()
    files = chain.chain_files(path)
    assert len(files) >= 3 and files[-1] == path
    for f in files:
        assert f.stat().st_size <= 1200
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert [r for f in files for r in lines(f)] == written
    result = verify_chain(files)
    assert result.ok and result.records == 12
    alone = verify(path)
    assert not alone.ok and alone.bad_line == 1 and "rotated" in alone.message
    assert chain.verify_file(path).ok


def test_explicit_rotate_returns_the_old_file_and_continues(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    assert log.rotate() is None, "nothing to rotate yet"
    last = [log.append(rec()) for _ in range(3)][-1]
    rotated = log.rotate()
    assert rotated is not None and rotated.parent == tmp_path
    assert re.fullmatch(r"audit\.jsonl\.\d{8}T\d{6}Z\.\d+", rotated.name)
    assert stat.S_IMODE(rotated.stat().st_mode) == 0o600
    assert path.exists() and path.stat().st_size == 0
    nxt = log.append(rec())
    log.close()
    assert nxt["prev"] == last["hash"]
    assert verify_chain([rotated, path]).ok
    assert verify(path, expect_prev=last["hash"]).ok
    assert not verify_chain([path, rotated]).ok, "order matters"


def test_a_removed_file_is_recreated_and_the_chain_continues(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    last = log.append(rec())
    path.unlink()
    assert log.healthy()
    nxt = log.append(rec())
    log.close()
    assert nxt["prev"] == last["hash"] and lines(path) == [nxt]


# -- failure -----------------------------------------------------------------------
def unwritable(tmp_path: Path, kind: str) -> Path:
    if kind == "dev-full":
        if not Path("/dev/full").exists():
            pytest.skip("no /dev/full here")
        return Path("/dev/full")
    if kind == "under-a-file":  # works as root too, unlike a read-only directory
        (tmp_path / "file").write_text("x")
        return tmp_path / "file" / "audit.jsonl"
    if kind == "directory":
        return tmp_path
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    return fifo


@pytest.mark.parametrize("kind", ["dev-full", "under-a-file", "directory", "fifo"])
def test_unwritable_audit_is_unhealthy_and_refuses(tmp_path: Path, kind: str) -> None:
    path = unwritable(tmp_path, kind)
    mode = path.stat().st_mode if path.exists() else None
    log = AuditLog(path)
    assert not log.healthy()
    with pytest.raises(AuditUnavailable) as info:
        log.append(rec(path="/x/" + CANARY))
    assert CANARY not in str(info.value)
    log.close()
    if mode is not None:
        assert path.stat().st_mode == mode, "a non-regular path is never chmod'ed"


def test_a_failed_write_marks_unhealthy_and_retries_once_per_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(audit, "_clock", lambda: now[0])
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    first = log.append(rec())

    def disk_full(fd: int, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(audit, "_write_all", disk_full)
    with pytest.raises(AuditUnavailable):
        log.append(rec(path="/" + CANARY))
    monkeypatch.undo()
    monkeypatch.setattr(audit, "_clock", lambda: now[0])
    assert not log.healthy(), "unhealthy after a failed write"
    now[0] += 0.5
    assert not log.healthy(), "no retry within a second"
    now[0] += 0.6
    assert log.healthy(), "retried after a second"
    second = log.append(rec())
    log.close()
    assert second["prev"] == first["hash"] and verify(path).ok
    assert_no_leak(path.read_bytes(), CANARY.encode(), "audit file")


def test_a_broken_path_recovers_once_fixed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setattr(audit, "_clock", lambda: now[0])
    path = unwritable(tmp_path, "under-a-file")
    log = AuditLog(path)
    assert not log.healthy()
    (tmp_path / "file").unlink()
    (tmp_path / "file").mkdir()
    assert not log.healthy()
    now[0] += 1.5
    assert log.healthy()
    log.append(rec())
    log.close()
    assert verify(path).ok


def test_a_closed_log_refuses(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.close()
    assert not log.healthy()
    with pytest.raises(AuditUnavailable):
        log.append(rec())


def test_concurrent_appends_keep_one_valid_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, rotate_bytes=20_000)
    barrier = threading.Barrier(8)

    def worker(n: int) -> None:
        barrier.wait()
        for i in range(50):
            log.append(rec(tenant=f"t{n}", scrubbed=i))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    log.close()
    files = chain.chain_files(path)
    result = verify_chain(files)
    assert result.ok and result.records == 400, result.message
    ids = [r["id"] for f in files for r in lines(f)]
    assert len(set(ids)) == 400


def test_no_secret_value_reaches_the_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, hmac_key=KEY)
    fp = fingerprint(KEY, CANARY.encode())
    log.append(rec(path=f"/v1/x?key={CANARY}", fingerprints={"stripe": {"fp": fp, "version": "2"}}))
    log.close()
    data = path.read_bytes()
    assert_no_leak(data, CANARY.encode(), "audit file")
    assert_no_leak(data, KEY, "audit file")
    assert verify(path, hmac_key=KEY).ok


def _free_space(monkeypatch: pytest.MonkeyPatch, blocks: int, available: int) -> None:
    real = os.fstatvfs

    def fake(fd: int) -> os.statvfs_result:
        st = real(fd)
        fields = list(st)
        fields[0] = fields[1] = 4096  # f_bsize, f_frsize
        fields[2], fields[4] = blocks, available  # f_blocks, f_bavail
        return os.statvfs_result(fields)

    monkeypatch.setattr(os, "fstatvfs", fake)


def test_a_full_disk_is_unhealthy_before_a_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    assert log.healthy()
    room = audit.MIN_FREE_BYTES // 4096
    _free_space(monkeypatch, blocks=1 << 20, available=room - 1)
    assert not log.healthy(), "less than MIN_FREE_BYTES left: refuse before forwarding"
    _free_space(monkeypatch, blocks=1 << 20, available=room)
    assert log.healthy()
    _free_space(monkeypatch, blocks=0, available=0)  # a filesystem that reports no sizes
    assert log.healthy()
    log.close()


def test_a_second_writer_of_one_chain_is_refused(tmp_path: Path) -> None:
    """Two brokers appending to one file would interleave two chains."""
    from broker.audit.lock import AuditInUse

    path = tmp_path / "a.jsonl"
    first = AuditLog(path)
    with pytest.raises(AuditInUse, match="another keybroker"):
        AuditLog(path)
    first.close()
    AuditLog(path).close()  # released on close
