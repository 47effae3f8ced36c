"""The engine's request pipeline with in-memory doubles (no mitmproxy)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.backends.base import BackendError
from broker.engine import Engine
from broker.policy.load import parse_policy
from broker.request.decision import Destination
from broker.request.locations import RequestParts
from broker.secret import SecretValue

TOKEN_DIGEST = "a" * 64
VALUE = "kbcanary_engine_5f1e2d3c4b5a69788796a5b4"


def make_policy(tmp_path: Path, **over: Any) -> Any:
    data: dict[str, Any] = {
        "version": 1,
        "certs_dir": str(tmp_path / "certs"),
        "audit": {"path": str(tmp_path / "audit.jsonl")},
        "backends": {"local": {"type": "env"}},
        "tenants": {
            "acme": {
                "token_sha256": TOKEN_DIGEST,
                "secrets": {
                    "api": {"backend": "local", "path": "API_KEY", "hosts": ["api.example.com"]},
                },
            },
            "globex": {
                "token_sha256": "b" * 64,
                "secrets": {
                    "api": {"backend": "local", "path": "OTHER_KEY", "hosts": ["api.example.com"]},
                },
            },
        },
    }
    data.update(over)
    return parse_policy(data, "test.yaml", tmp_path)


class CountingResolver:
    def __init__(self, value: str | None = VALUE, error: BackendError | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.value, self.error = value, error

    async def aresolve(self, tenant: str, name: str, rule: Any) -> SecretValue:
        self.calls.append((tenant, name))
        if self.error:
            raise self.error
        assert self.value is not None
        return SecretValue(self.value)


def parts(auth: str = "Bearer <<secret:api>>", **kw: Any) -> RequestParts:
    return RequestParts(
        headers=(("Authorization", auth),),
        path=kw.get("path", "/v1"),
        query=kw.get("query", ""),
        body=kw.get("body", b""),
    )


DEST = Destination.of("https", "api.example.com", 443, "GET", "/v1")


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = Engine(make_policy(tmp_path), env={"API_KEY": VALUE, "OTHER_KEY": VALUE + "x"})
    yield e
    e.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_allow_substitutes_and_teaches_the_scrubber(engine: Engine) -> None:
    out = run(engine.process("acme", DEST, parts()))
    assert out.decision.verdict == "allow" and out.reply is None
    assert out.parts is not None and out.parts.headers == (("Authorization", f"Bearer {VALUE}"),)
    scrubbed, n = engine.scrub(f"echo {VALUE}".encode())
    assert n == 1 and scrubbed == b"echo <<secret:api>>"


@pytest.mark.parametrize(
    ("dest", "reason"),
    [
        pytest.param(
            Destination.of("https", "evil.example.com", 443, "GET", "/"),
            "host_not_allowed",
            id="host",
        ),
        pytest.param(
            Destination.of("https", "api.example.com", 8443, "GET", "/"),
            "port_not_allowed",
            id="port",
        ),
        pytest.param(
            Destination.of("http", "api.example.com", 443, "GET", "/"),
            "scheme_not_allowed",
            id="scheme",
        ),
    ],
)
def test_denial_reads_no_backend(engine: Engine, dest: Destination, reason: str) -> None:
    fake = CountingResolver()
    engine.resolver = fake  # type: ignore[assignment]
    out = run(engine.process("acme", dest, parts()))
    assert out.reply is not None and json.loads(out.reply.body)["reason"] == reason
    assert fake.calls == []


def test_backend_error_maps_to_502(engine: Engine) -> None:
    engine.resolver = CountingResolver(error=BackendError("vault down"))  # type: ignore[assignment]
    out = run(engine.process("acme", DEST, parts()))
    assert out.reply is not None and out.reply.status == 502
    assert json.loads(out.reply.body)["reason"] == "backend_unavailable"


def test_audit_unavailable_refuses_before_resolving(engine: Engine, monkeypatch: Any) -> None:
    fake = CountingResolver()
    engine.resolver = fake  # type: ignore[assignment]
    monkeypatch.setattr(engine.audit, "healthy", lambda: False)
    out = run(engine.process("acme", DEST, parts()))
    assert out.reply is not None and out.reply.status == 503
    assert fake.calls == []


def test_raw_value_to_another_host_is_refused(engine: Engine) -> None:
    run(engine.process("acme", DEST, parts()))  # the value is now known
    evil = Destination.of("https", "evil.example.com", 443, "GET", "/")
    out = run(engine.process("acme", evil, parts(auth=f"Bearer {VALUE}")))
    assert out.reply is not None and json.loads(out.reply.body)["reason"] == "raw_secret_egress"
    # The same raw value where its own policy allows it passes.
    ok = run(engine.process("acme", DEST, parts(auth=f"Bearer {VALUE}")))
    assert ok.decision.verdict == "pass"
    # Another tenant's value is not looked for (no oracle): globex holds no
    # value of acme's through the broker, so it has nothing to learn.
    other = run(engine.process("globex", evil, parts(auth=f"Bearer {VALUE}")))
    assert other.reply is None and other.decision.verdict == "pass"


def test_reload_keeps_last_good_policy(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    good = yaml.safe_load(
        json.dumps(
            {
                "version": 1,
                "audit": {"path": "audit.jsonl"},
                "backends": {"local": {"type": "env"}},
                "tenants": {"acme": {"token_sha256": TOKEN_DIGEST}},
            }
        )
    )
    path.write_text(yaml.safe_dump(good))
    engine = Engine.from_file(path, env={})
    try:
        path.write_text("version: 1\ntenants: {acme: {}}\n")
        errors = engine.reload()
        assert errors and any("token_sha256" in e for e in errors)
        assert "acme" in engine.policy.tenants
        good["tenants"]["globex"] = {"token_sha256": "c" * 64}
        path.write_text(yaml.safe_dump(good))
        assert engine.reload() == []
        assert set(engine.policy.tenants) == {"acme", "globex"}
    finally:
        engine.close()


def test_record_holds_no_value(engine: Engine, tmp_path: Path) -> None:
    out = run(engine.process("acme", DEST, parts()))
    engine.record(decision=out.decision, dest=DEST, status=200, scrubbed=1, started=0.0)
    text = (tmp_path / "audit.jsonl").read_text()
    rec = json.loads(text.splitlines()[-1])
    assert rec["decision"] == "allow" and rec["secrets"] == ["api"] and rec["status"] == 200
    assert VALUE not in text


def test_record_scrubs_a_raw_value_in_host_or_path(engine: Engine, tmp_path: Path) -> None:
    run(engine.process("acme", DEST, parts()))  # the scrubber learns VALUE
    for host, path in (("api.example.com", f"/v1/{VALUE}/x"), (f"{VALUE}.example.com", "/v1")):
        dest = Destination.of("https", host, 443, "GET", path)
        out = run(engine.process("acme", dest, parts()))
        engine.record(decision=out.decision, dest=dest, status=403, scrubbed=0, started=0.0)
    text = (tmp_path / "audit.jsonl").read_text()
    assert VALUE not in text
    first, second = (json.loads(line) for line in text.splitlines()[-2:])
    assert (first["host"], first["path"]) == ("api.example.com", "/v1/<<secret:api>>/x")
    assert (second["host"], second["path"]) == ("<<secret:api>>.example.com", "/v1")


def _records(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]


def _done(engine: Engine, out: Any, dest: Destination) -> None:
    """The exchange of ``out`` ended 200: its done record."""
    engine.record(
        decision=out.decision,
        dest=dest,
        status=200,
        scrubbed=0,
        started=0.0,
        record_id=out.record_id,
    )


def test_write_ahead_sent_record_before_the_value_leaves(engine: Engine, tmp_path: Path) -> None:
    """DESIGN.md §6: the sent record is on disk when process() hands back the
    substituted request; done carries the same id."""
    out = run(engine.process("acme", DEST, parts()))
    assert out.parts is not None and out.record_id
    (sent,) = _records(tmp_path)
    assert (sent["phase"], sent["id"], sent["status"]) == ("sent", out.record_id, None)
    assert sent["decision"] == "allow" and sent["secrets"] == ["api"]
    _done(engine, out, DEST)
    done = _records(tmp_path)[-1]
    assert (done["phase"], done["id"], done["status"]) == ("done", out.record_id, 200)
    assert VALUE not in (tmp_path / "audit.jsonl").read_text()


def test_requests_without_a_value_have_one_done_record(engine: Engine, tmp_path: Path) -> None:
    out = run(engine.process("acme", DEST, parts(auth="Bearer nothing")))
    assert out.decision.verdict == "pass" and out.record_id is None
    engine.record(decision=out.decision, dest=DEST, status=200, scrubbed=0, started=0.0)
    assert [r["phase"] for r in _records(tmp_path)] == ["done"]


def test_a_stop_closes_every_open_exchange_as_interrupted(engine: Engine, tmp_path: Path) -> None:
    first = run(engine.process("acme", DEST, parts()))
    second = run(engine.process("acme", DEST, parts()))
    engine.record(
        decision=first.decision,
        dest=DEST,
        status=200,
        scrubbed=0,
        started=0.0,
        record_id=first.record_id,
    )
    assert engine.recorder.interrupt_open() == 1
    last = _records(tmp_path)[-1]
    assert (last["id"], last["phase"], last["reason"]) == (second.record_id, "done", "interrupted")
    assert engine.recorder.interrupt_open() == 0  # each exchange is closed once


def test_sent_record_unwritable_refuses_the_request(engine: Engine, monkeypatch: Any) -> None:
    """The health check passed, but the sent record itself cannot be written
    (the disk filled in between): the value must not leave."""
    from broker.audit.log import AuditUnavailable

    def broken(rec: Any) -> Any:
        raise AuditUnavailable("disk full")

    monkeypatch.setattr(engine.audit, "append", broken)
    out = run(engine.process("acme", DEST, parts()))
    assert out.parts is None and out.reply is not None
    assert out.decision.reason is not None and out.decision.reason.value == "audit_unavailable"


# -- values in names, methods and hosts never reach the audit or a reply (issue 12) ---------
OTHER_VALUE = VALUE + "x"  # globex's value (OTHER_KEY)


def _learn_both(engine: Engine) -> None:
    run(engine.process("acme", DEST, parts()))
    run(engine.process("globex", DEST, parts()))


@pytest.mark.parametrize("writer", ["acme", "globex"])
@pytest.mark.parametrize("value", [VALUE, OTHER_VALUE], ids=["acme-value", "globex-value"])
def test_a_value_used_as_a_placeholder_name_is_never_echoed(
    engine: Engine, tmp_path: Path, writer: str, value: str
) -> None:
    _learn_both(engine)
    out = run(engine.process(writer, DEST, parts(auth=f"Bearer <<secret:{value}>>")))
    assert out.reply is not None and out.decision.reason == "unknown_secret"
    assert value.lower() not in out.reply.body.decode().lower()
    assert json.loads(out.reply.body)["secret"] is None
    engine.record(decision=out.decision, dest=DEST, status=403, scrubbed=0, started=0.0)
    audit_text = (tmp_path / "audit.jsonl").read_text()
    assert value.lower() not in audit_text.lower()
    assert "<<secret:api>>" in audit_text or "<<redacted>>" in audit_text
    if writer != ("acme" if value == VALUE else "globex"):  # another tenant's: name-free
        assert "<<redacted>>" in audit_text


def test_method_and_mixed_case_host_holding_a_value_stay_out_of_the_audit(
    engine: Engine, tmp_path: Path
) -> None:
    _learn_both(engine)
    dest = Destination.of("https", f"{VALUE.upper()}.evil.test", 443, VALUE.lower(), "/")
    out = engine.check_connect("acme", dest)
    assert out is not None and out.reply is not None
    assert json.loads(out.reply.body)["reason"] == "raw_secret_egress"
    engine.record(decision=out.decision, dest=dest, status=403, scrubbed=0, started=0.0)
    run(engine.process("acme", dest, parts()))
    engine.record(decision=out.decision, dest=dest, status=403, scrubbed=0, started=0.0)
    text = (tmp_path / "audit.jsonl").read_text().lower()
    assert VALUE.lower() not in text and text.count("<<secret:api>>") >= 4


GLOBEX_VALUE = "kbcanary_globex_9d8c7b6a5f4e3d2c1b0a9988"


@pytest.mark.parametrize(
    "path",
    [
        f"/v1/{GLOBEX_VALUE}",
        f"/v1/%{ord(GLOBEX_VALUE[0]):02x}{GLOBEX_VALUE[1:]}",  # one character escaped
        f"/v1/%25{ord(GLOBEX_VALUE[0]):02x}{GLOBEX_VALUE[1:]}",  # escaped twice
        "/v1/plain",
    ],
    ids=["raw", "escaped", "escaped-twice", "none"],
)
def test_another_tenants_value_in_an_allowed_request_stays_out_of_its_records(
    tmp_path: Path, path: str
) -> None:
    """Not refused (that would be an oracle), and never in the audit: the
    sent record skips its cleaning scan only when the egress scan found no
    value of any tenant in any view; the path is also cleaned as decoded."""
    e = Engine(make_policy(tmp_path), env={"API_KEY": VALUE, "OTHER_KEY": GLOBEX_VALUE})
    try:
        run(e.process("globex", DEST, parts()))  # the scrubber learns globex's value
        dest = Destination.of("https", "api.example.com", 443, "GET", path)
        out = run(e.process("acme", dest, parts(path=path)))
        assert out.parts is not None and out.record_id is not None
        _done(e, out, dest)
        records = [r for r in _records(tmp_path) if r["tenant"] == "acme"]
        assert [r["phase"] for r in records] == ["sent", "done"]
        text = json.dumps(records).lower()
        assert GLOBEX_VALUE.lower() not in text and GLOBEX_VALUE[1:].lower() not in text
        if path == "/v1/plain":
            assert all(r["path"] == path for r in records)
        else:
            assert all(r["path"] == "/v1/<<redacted>>" for r in records)
    finally:
        e.close()


@pytest.mark.parametrize("owner", ["acme", "globex"])
def test_a_token_another_worker_minted_stays_out_of_the_audit(tmp_path: Path, owner: str) -> None:
    """``--workers N``: a token worker B minted reaches this worker through the
    shared ledger. The raw-value scan and the audit see it: the caller's own
    is refused, another tenant's is cleaned from the sent record."""
    import time

    from broker.credentials.ledger import FILE_NAME, MintLedger

    token = "ghs_minted_by_worker_b_7c1d2e3f4a5b6c7d8e9f"
    e = Engine(make_policy(tmp_path), env={"API_KEY": VALUE, "OTHER_KEY": GLOBEX_VALUE})
    try:
        run(e.process("acme", DEST, parts()))
        time.sleep(0.25)  # past the ledger's sync interval
        ledger = MintLedger(tmp_path / "certs" / FILE_NAME, lambda *a: None)
        ledger.record(owner, "api", SecretValue(token), 3600)  # as worker B does
        path = f"/v1/{token}"
        dest = Destination.of("https", "api.example.com", 443, "GET", path)
        out = run(e.process("acme", dest, parts(path=path)))
        if owner == "acme":
            assert out.reply is not None and out.decision.reason == "raw_secret_egress"
        else:
            assert out.parts is not None
        assert token not in (tmp_path / "audit.jsonl").read_text().lower()
    finally:
        e.close()
