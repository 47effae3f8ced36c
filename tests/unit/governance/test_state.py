"""The in-process state store: sliding windows, use counts, refunds,
approvals and revocations (the Redis store passes the same table in
tests/integration/test_governance_store.py)."""

from __future__ import annotations

import asyncio

import pytest

from broker.governance.state import Charge, MemoryStore, StateStore


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


RATE = Charge("acme", "stripe", (3, 60), None)
USES = Charge("acme", "stripe", None, 2)
BOTH = Charge("acme", "stripe", (5, 60), 2)


async def contract_rate(store: StateStore) -> None:
    for i in range(3):
        assert await store.charge([RATE], f"t{i}") is None
    refused = await store.charge([RATE], "t3")
    assert refused is not None and refused.kind == "rate" and refused.secret == "stripe"
    assert 0 < refused.retry_after <= 60
    # Another tenant's or secret's window is its own.
    assert await store.charge([Charge("globex", "stripe", (3, 60), None)], "g") is None
    assert await store.charge([Charge("acme", "other", (3, 60), None)], "o") is None
    # A refund frees exactly the refunded use.
    await store.refund([RATE], "t1")
    assert await store.charge([RATE], "t4") is None
    assert await store.charge([RATE], "t5") is not None


async def contract_uses(store: StateStore) -> None:
    assert await store.charge([USES], "a") is None
    assert await store.charge([USES], "b") is None
    refused = await store.charge([USES], "c")
    assert refused is not None and refused.kind == "uses"
    await store.refund([USES], "b")
    assert await store.charge([USES], "d") is None


async def contract_all_or_none(store: StateStore) -> None:
    """A request carrying two secrets, one exhausted: neither is counted."""
    one_shot = Charge("acme", "deploy", None, 1)
    free = Charge("acme", "read", (2, 60), None)
    assert await store.charge([one_shot], "x") is None
    assert (await store.charge([free, one_shot], "y")) is not None
    assert await store.charge([free], "z1") is None
    assert await store.charge([free], "z2") is None  # "y" did not use a slot


async def contract_approvals(store: StateStore) -> None:
    rec = {
        "tenant": "acme",
        "secret": "s",
        "secrets": "s",
        "method": "POST",
        "host": "h",
        "port": "443",
        "path": "/p",
        "since": "2026-01-01T00:00:00.000Z",
        "remember": "acme:s",
    }
    a = await store.open_approval(rec, dedupe="acme:s", ttl=30)
    assert await store.open_approval(rec, dedupe="acme:s", ttl=30) == a  # joins
    b = await store.open_approval(rec, dedupe=None, ttl=30)
    assert a != b and a.startswith("apr_")
    assert {r["id"] for r in await store.pending()} == {a, b}
    assert not await store.remembered(["acme:s"])
    done = await store.decide(a, "approved", "alice", ["acme:s"], 60)
    assert done is not None and done["state"] == "approved" and done["by"] == "alice"
    assert await store.decide(a, "denied", "bob", [], 60) is None  # only once
    assert await store.remembered(["acme:s"])
    assert not await store.remembered(["acme:s", "acme:t"])
    assert [r["id"] for r in await store.pending()] == [b]
    got = await store.expire(b, None)
    assert got is not None and got["state"] == "expired"
    assert await store.decide(b, "approved", "alice", [], 60) is None  # too late
    assert await store.pending() == []
    denied = await store.open_approval(rec, dedupe=None, ttl=30)
    await store.decide(denied, "denied", "bob", ["acme:x"], 60)
    assert not await store.remembered(["acme:x"])  # a denial remembers nothing


async def contract_pending_cap(store: StateStore) -> None:
    """Review finding 7: one tenant holds at most ``limit`` requests at once;
    joining a pending one and other tenants are not held back; a verdict frees a slot."""
    rec = {"tenant": "capped", "secret": "s", "method": "POST", "path": "/p"}
    a = await store.open_approval(rec, dedupe=None, ttl=30, limit=2)
    b = await store.open_approval(rec, dedupe="cap-join", ttl=30, limit=2)
    assert a is not None and b is not None
    assert await store.open_approval(rec, dedupe=None, ttl=30, limit=2) is None
    assert await store.open_approval(rec, dedupe="cap-join", ttl=30, limit=2) == b  # a join
    other = await store.open_approval({**rec, "tenant": "other"}, dedupe=None, ttl=30, limit=2)
    assert other is not None
    await store.decide(a, "denied", "bob", [], 60)
    c = await store.open_approval(rec, dedupe=None, ttl=30, limit=2)
    assert c is not None and c not in (a, b)
    assert await store.open_approval(rec, dedupe=None, ttl=30, limit=2) is None
    for aid in (b, c, other):
        await store.expire(aid, None)
    assert await store.open_approval(rec, dedupe=None, ttl=30, limit=2) is not None


async def contract_revoke(store: StateStore) -> None:
    await store.revoke("ab" * 12, 2_000_000_000)
    refresh = getattr(store, "refresh", None)
    if refresh is not None:
        await refresh()
    ids, age = store.revoked()
    assert "ab" * 12 in ids and age < 1


async def contract_usage_and_reset(store: StateStore) -> None:
    both = Charge("acme", "u", (10, 60), 5)
    rate_only = Charge("acme", "r", (10, 60), None)
    for i in range(3):
        assert await store.charge([both, rate_only], f"u{i}") is None
    assert await store.usage([both, rate_only]) == [(3, 3), (3, 0)]
    await store.reset("acme", "u")
    assert await store.usage([both, rate_only]) == [(0, 0), (3, 0)]
    assert await store.charge([Charge("acme", "u", None, 1)], "again") is None


CONTRACT = {
    "rate": contract_rate,
    "uses": contract_uses,
    "all_or_none": contract_all_or_none,
    "approvals": contract_approvals,
    "pending_cap": contract_pending_cap,
    "revoke": contract_revoke,
    "usage_and_reset": contract_usage_and_reset,
}


@pytest.mark.parametrize("case", CONTRACT, ids=list(CONTRACT))
def test_memory_store(case: str) -> None:
    run(CONTRACT[case](MemoryStore()))


def test_memory_window_slides(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("broker.governance.state.time.monotonic", lambda: clock[0])
    store = MemoryStore()
    c = Charge("acme", "s", (2, 10), None)
    assert run(store.charge([c], "a")) is None
    clock[0] += 6
    assert run(store.charge([c], "b")) is None
    refused = run(store.charge([c], "c"))
    assert refused is not None and refused.retry_after == pytest.approx(4)
    clock[0] += 4.01  # "a" left the window; "b" still in it
    assert run(store.charge([c], "d")) is None
    assert run(store.charge([c], "e")) is not None
