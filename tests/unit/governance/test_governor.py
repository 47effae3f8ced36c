"""Governance in the engine's pipeline: limits and approvals after the
policy decision and before any value is read; fail closed without the
state; session tokens as proxy passwords."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.backends.base import BackendError
from broker.engine import Engine
from broker.governance import sessions
from broker.governance.state import MemoryStore, StateUnavailable
from broker.policy.load import PolicyError, parse_policy
from broker.request.decision import Destination, Reason
from tests.unit.conftest import basic
from tests.unit.test_engine import CountingResolver, parts

DIGEST = "a" * 64
ADMIN = "c" * 64
KEY = "session-key-for-tests-0123456789"
GET = Destination.of("https", "api.example.com", 443, "GET", "/v1")
POST = Destination.of("https", "api.example.com", 443, "POST", "/v1")


def policy(tmp_path: Path, rule: dict[str, Any], **over: Any) -> Any:
    data: dict[str, Any] = {
        "version": 1,
        "certs_dir": str(tmp_path / "certs"),
        "audit": {"path": str(tmp_path / "audit.jsonl")},
        "backends": {"local": {"type": "env"}},
        "admin": {"listen": "127.0.0.1:1", "token_sha256": ADMIN},
        "sessions": {"key_env": "KB_SESSION_KEY"},
        "approvals": {"timeout": 2, "remember": 60},
        "tenants": {
            "acme": {
                "token_sha256": DIGEST,
                "secrets": {
                    "api": {
                        "backend": "local",
                        "path": "API_KEY",
                        "hosts": ["api.example.com"],
                        "methods": ["GET", "POST"],
                        **rule,
                    },
                    "free": {"backend": "local", "path": "API_KEY", "hosts": ["api.example.com"]},
                },
            }
        },
    }
    data.update(over)
    return parse_policy(data, "test.yaml", tmp_path)


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Any]:
    engines: list[Engine] = []

    def build(rule: dict[str, Any], **over: Any) -> tuple[Engine, CountingResolver]:
        e = Engine(policy(tmp_path, rule, **over), env={"API_KEY": "v" * 20, "KB_SESSION_KEY": KEY})
        fake = CountingResolver()
        e.resolver = fake  # type: ignore[assignment]
        engines.append(e)
        return e, fake

    yield build
    for e in engines:
        e.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def reason(out: Any) -> str | None:
    return None if out.reply is None else json.loads(out.reply.body)["reason"]


def test_rate_limit_refuses_with_retry_after_and_reads_nothing(make: Any) -> None:
    e, fake = make({"rate": "2/minute"})
    assert [reason(run(e.process("acme", GET, parts()))) for _ in range(2)] == [None, None]
    out = run(e.process("acme", GET, parts()))
    assert reason(out) == "rate_limited" and out.reply.status == 429
    assert 1 <= int(out.reply.headers["retry-after"]) <= 60
    assert len(fake.calls) == 2
    # Requests without the secret, or with an unlimited one, are not counted.
    assert reason(run(e.process("acme", GET, parts("Bearer <<secret:free>>")))) is None
    assert reason(run(e.process("acme", GET, parts("Bearer none")))) is None


def test_counted_once_per_request(make: Any) -> None:
    e, _ = make({"max_uses": 2, "locations": ["header:authorization", "query"]})
    out = run(e.process("acme", GET, parts(query="k=%3C%3Csecret:api%3E%3E")))
    assert reason(out) is None
    assert reason(run(e.process("acme", GET, parts()))) is None
    out = run(e.process("acme", GET, parts()))
    assert reason(out) == "uses_exhausted" and out.reply.status == 403


def test_one_shot_refunded_when_the_vault_fails(make: Any) -> None:
    e, _ = make({"max_uses": 1})
    e.resolver = CountingResolver(error=BackendError("vault down"))
    assert reason(run(e.process("acme", GET, parts()))) == "backend_unavailable"
    e.resolver = CountingResolver()
    assert reason(run(e.process("acme", GET, parts()))) is None
    assert reason(run(e.process("acme", GET, parts()))) == "uses_exhausted"


def test_denied_requests_are_not_counted(make: Any) -> None:
    e, _ = make({"max_uses": 1})
    bad = Destination.of("https", "evil.example.com", 443, "GET", "/v1")
    assert reason(run(e.process("acme", bad, parts()))) == "host_not_allowed"
    assert reason(run(e.process("acme", GET, parts()))) is None


class DownStore(MemoryStore):
    shared = True

    async def charge(self, *a: Any, **k: Any) -> Any:
        raise StateUnavailable("state store: charge failed (ConnectionError)")

    async def remembered(self, *a: Any, **k: Any) -> Any:
        raise StateUnavailable("state store: remembered failed (ConnectionError)")

    def revoked(self) -> tuple[frozenset[str], float]:
        return frozenset(), 99.0


def test_store_down_fails_closed_only_for_requests_that_need_it(make: Any) -> None:
    e, fake = make({"rate": "5/second"})
    e.governor.store = DownStore()
    out = run(e.process("acme", GET, parts()))
    assert reason(out) == "state_unavailable" and out.reply.status == 503
    assert fake.calls == []
    assert reason(run(e.process("acme", GET, parts("Bearer <<secret:free>>")))) is None
    assert e.identity_problem("acme", DIGEST) is None  # tenant tokens need no store


async def _decide_when_held(e: Engine, verdict: str, out: list[str]) -> None:
    for _ in range(200):
        pending = await e.governor.store.pending()
        if pending:
            rec = pending[0]
            out.append(rec["id"])
            remember = [k for k in rec["remember"].split(",") if k]
            await e.governor.store.decide(rec["id"], verdict, "alice", remember, 60)  # type: ignore[arg-type]
            return
        await asyncio.sleep(0.01)


def test_approval_always(make: Any) -> None:
    e, fake = make({"approve": "always"})
    fed: list[dict[str, Any]] = []
    e.feed = type("F", (), {"push": lambda self, r: fed.append(r), "close": lambda self: None})()

    async def go(verdict: str) -> tuple[Any, list[str]]:
        ids: list[str] = []
        out, _ = await asyncio.gather(
            e.process("acme", GET, parts()), _decide_when_held(e, verdict, ids)
        )
        return out, ids

    out, ids = run(go("denied"))
    assert reason(out) == "approval_denied" and fake.calls == []
    assert out.audit == {"approval": {"id": ids[0], "verdict": "denied", "by": "alice"}}
    assert fed and fed[0]["decision"] == "held" and ids[0] in fed[0]["reason"]
    out, ids = run(go("approved"))
    assert reason(out) is None and fake.calls == [("acme", "api")]
    assert out.audit["approval"] == {"id": ids[0], "verdict": "approved", "by": "alice"}
    out, ids = run(go("approved"))  # always: every request asks again
    assert reason(out) is None and len(ids) == 1


def test_approval_timeout(make: Any) -> None:
    e, fake = make({"approve": "always"}, approvals={"timeout": 0.3})
    out = run(e.process("acme", GET, parts()))
    assert reason(out) == "approval_timeout" and out.reply.status == 403
    assert fake.calls == []
    assert run(e.governor.store.pending()) == []


def test_first_use_is_remembered_and_methods_narrow(make: Any) -> None:
    e, _ = make({"approve": "first_use", "approve_methods": ["POST"]})
    assert reason(run(e.process("acme", GET, parts()))) is None  # GET needs none

    async def go() -> Any:
        ids: list[str] = []
        out, _ = await asyncio.gather(
            e.process("acme", POST, parts()), _decide_when_held(e, "approved", ids)
        )
        return out

    assert reason(run(go())) is None
    out = run(e.process("acme", POST, parts()))  # remembered: no hold
    assert reason(out) is None and out.audit == {}


def test_first_use_approval_is_not_shared_with_a_different_request(make: Any) -> None:
    """Review finding 7: a DELETE sent while a benign POST awaits its first-use
    approval gets its own approval; approving the POST does not release it.
    Identical requests (same method, host, path, query keys, body size) share one."""
    e, fake = make(
        {"approve": "first_use", "methods": ["GET", "POST", "DELETE"]},
        approvals={"timeout": 1, "remember": 60},
    )
    delete = Destination.of("https", "api.example.com", 443, "DELETE", "/v1/customers")

    async def go() -> tuple[Any, Any, Any, list[dict[str, str]]]:
        benign = asyncio.create_task(e.process("acme", POST, parts()))
        twin = asyncio.create_task(e.process("acme", POST, parts()))
        for _ in range(200):
            if await e.governor.store.pending():
                break
            await asyncio.sleep(0.01)
        evil = asyncio.create_task(e.process("acme", delete, parts(query="all=1&force=yes")))
        for _ in range(200):
            listed = await e.governor.store.pending()
            if len(listed) == 2:
                break
            await asyncio.sleep(0.01)
        first = next(r for r in listed if r["method"] == "POST")
        await e.governor.store.decide(first["id"], "approved", "alice", ["acme:api"], 60)
        return await benign, await twin, await evil, listed

    benign, twin, evil, listed = run(go())
    assert reason(benign) is None and reason(twin) is None  # twins share one approval
    assert reason(evil) == "approval_timeout"  # never shown-and-approved: never released
    shown = {r["method"]: r for r in listed}
    assert shown["DELETE"]["query_keys"] == "all,force" and "yes" not in str(shown)
    assert shown["POST"]["body_bytes"] == "0"
    assert fake.calls == [("acme", "api"), ("acme", "api")]


def test_one_tenant_cannot_flood_the_approvals_list(make: Any) -> None:
    e, fake = make({"approve": "always"}, approvals={"timeout": 1, "max_pending": 2})

    async def go() -> list[Any]:
        held = [asyncio.create_task(e.process("acme", GET, parts())) for _ in range(2)]
        for _ in range(200):
            if len(await e.governor.store.pending()) == 2:
                break
            await asyncio.sleep(0.01)
        third = await e.process("acme", GET, parts())
        return [third, *[await h for h in held]]

    third, *held = run(go())
    assert reason(third) == "rate_limited" and third.reply.status == 429
    assert third.reply.headers["retry-after"] == "1"
    assert third.audit["approval"]["verdict"] == "too_many_pending"
    assert [reason(h) for h in held] == ["approval_timeout"] * 2 and fake.calls == []


def test_limits_counted_after_approval(make: Any) -> None:
    e, _ = make({"approve": "always", "max_uses": 1}, approvals={"timeout": 0.2})
    assert reason(run(e.process("acme", GET, parts()))) == "approval_timeout"
    assert run(e.governor.store.charge([], "x")) is None
    store = e.governor.store
    assert isinstance(store, MemoryStore) and store._uses == {}


# -- sessions -----------------------------------------------------------------------


def test_session_token_is_a_proxy_password(make: Any) -> None:
    e, _ = make({})
    token = sessions.mint(KEY.encode(), "acme", DIGEST, 60)
    ident = e.authenticate(basic("acme", token))
    assert ident is not None and ident[0] == "acme" and token not in ident[1]
    assert e.identity_problem(*ident) is None
    assert e.authenticate(basic("globex", token)) is None
    s = sessions.parse(token)
    assert s is not None
    run(e.governor.store.revoke(s.id, s.expires))
    assert e.identity_problem(*ident) is Reason.UNAUTHENTICATED  # a bound connection too
    assert e.authenticate(basic("acme", token)) is None


def test_session_stale_revocations_are_503(make: Any) -> None:
    e, _ = make({})
    token = sessions.mint(KEY.encode(), "acme", DIGEST, 60)
    ident = e.authenticate(basic("acme", token))
    assert ident is not None
    e.governor.store = DownStore()
    assert e.identity_problem(*ident) is Reason.STATE_UNAVAILABLE


def test_sessions_off_refuse_session_tokens(make: Any) -> None:
    e, _ = make({}, sessions=None)
    token = sessions.mint(KEY.encode(), "acme", DIGEST, 60)
    assert e.authenticate(basic("acme", token)) is None


def test_session_key_required(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="KB_SESSION_KEY"):
        Engine(policy(tmp_path, {}), env={"API_KEY": "v"})


def test_reload_switches_the_store_and_keeps_it_when_unchanged(tmp_path: Path) -> None:
    import yaml

    from broker.governance.redis_state import RedisStore

    src = tmp_path / "policy.yaml"
    data: dict[str, Any] = {
        "version": 1,
        "certs_dir": str(tmp_path / "certs"),
        "audit": {"path": str(tmp_path / "audit.jsonl")},
        "tenants": {"acme": {"token_sha256": DIGEST}},
    }
    src.write_text(yaml.safe_dump(data))
    e = Engine.from_file(src, env={})
    try:
        first = e.governor.store
        assert isinstance(first, MemoryStore) and e.reload() == []
        assert e.governor.store is first  # unchanged state: same counters
        data["state"] = {"url": "redis://127.0.0.1:1/0"}
        src.write_text(yaml.safe_dump(data))
        assert e.reload() == []
        assert isinstance(e.governor.store, RedisStore)
        data["sessions"] = {"key_env": "KB_MISSING"}
        src.write_text(yaml.safe_dump(data))
        errors = e.reload()
        assert errors and "KB_MISSING" in errors[0]
        assert e.policy.sessions is None and e.governor.key is None  # the last good policy
    finally:
        e.close()


@pytest.mark.parametrize(
    ("change", "refused"),
    [
        pytest.param({"max_uses": 1}, True, id="max_uses"),
        pytest.param({"rate": "1/minute"}, True, id="rate"),
        pytest.param({"approve": "always"}, True, id="approve"),
        pytest.param({"sessions": {"key_env": "KB_SESSION_KEY"}}, True, id="sessions"),
        pytest.param({"methods": ["GET", "POST"]}, False, id="no-state-needed"),
    ],
)
def test_a_worker_refuses_a_reload_that_needs_shared_state(
    tmp_path: Path, change: dict[str, Any], refused: bool
) -> None:
    """Review finding 4: one of ``--workers N`` (engine given a worker index)
    refuses, on reload as at start-up, governance without ``state.url``: each
    worker would count, hold and revoke apart. The last good policy stays."""
    import yaml

    src = tmp_path / "policy.yaml"
    rule = {"backend": "local", "path": "API_KEY", "hosts": ["api.example.com"]}
    data: dict[str, Any] = {
        "version": 1,
        "certs_dir": str(tmp_path / "certs"),
        "audit": {"path": str(tmp_path / "audit.jsonl")},
        "backends": {"local": {"type": "env"}},
        "admin": {"listen": "127.0.0.1:1", "token_sha256": ADMIN},
        "tenants": {"acme": {"token_sha256": DIGEST, "secrets": {"api": rule}}},
    }
    src.write_text(yaml.safe_dump(data))
    env = {"API_KEY": "v" * 20, "KB_SESSION_KEY": KEY}
    e = Engine.from_file(src, env=env, worker=0)
    try:
        before = e.policy
        if "sessions" in change:
            data.update(change)
        else:
            rule.update(change)
        src.write_text(yaml.safe_dump(data))
        errors = e.reload()
        if refused:
            assert errors and "needs state.url" in errors[0], errors
            assert e.policy is before
            with pytest.raises(PolicyError, match=r"needs state\.url"):
                Engine.from_file(src, env=env, worker=1)  # a worker (re)starting: the same
            data["state"] = {"url": "redis://127.0.0.1:1/0"}  # shared state: accepted
            src.write_text(yaml.safe_dump(data))
            assert e.reload() == []
        else:
            assert errors == [] and e.policy is not before
        # A single broker (no worker index) keeps its in-process state.
        data.pop("state", None)
        src.write_text(yaml.safe_dump(data))
        Engine.from_file(src, env=env).close()
    finally:
        e.close()
