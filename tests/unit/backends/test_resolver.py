"""Resolver: cache and TTL on a fake clock, coalescing, errors, on_value."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from broker.backends.base import BackendError, SecretNotFound
from broker.backends.resolver import Resolver
from broker.policy.secret_rule import SecretRule
from broker.secret import SecretValue

WAIT = 5.0  # bound on every wait in this file
VALUE = "sk_live_resolver_0123456789"  # fake secret; must never show up in messages


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeBackend:
    """Answers from ``values`` (a str, or an exception to raise); counts reads.
    With ``gate`` set, each read waits for it (bounded)."""

    blocking = True

    def __init__(self, name: str = "vault", values: dict[str, Any] | None = None) -> None:
        self.name = name
        self.values: dict[str, Any] = dict(values or {})
        self.reads = 0
        self.threads: list[int] = []
        self.gate: threading.Event | None = None
        self.started = threading.Event()
        self._lock = threading.Lock()

    def read(self, path: str, field: str) -> SecretValue:
        with self._lock:
            self.reads += 1
            self.threads.append(threading.get_ident())
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(WAIT)
        got = self.values[f"{path}#{field}"]
        if isinstance(got, BaseException):
            raise got
        return SecretValue(got, version=str(self.reads))

    def close(self) -> None:
        pass


def rule(path: str = "acme/stripe", field: str = "api_key", backend: str = "vault") -> SecretRule:
    return SecretRule(backend=backend, path=path, field=field, hosts=("api.example.com",))


def make(
    ttl: float = 60.0, values: dict[str, Any] | None = None
) -> tuple[Resolver, FakeBackend, FakeClock, list[tuple[str, str, SecretValue]]]:
    backend = FakeBackend(values=values or {"acme/stripe#api_key": VALUE})
    clock = FakeClock()
    seen: list[tuple[str, str, SecretValue]] = []
    resolver = Resolver(
        {"vault": backend},
        {"vault": ttl},
        on_value=lambda t, n, v: seen.append((t, n, v)),
        clock=clock,
    )
    return resolver, backend, clock, seen


def test_hit_within_ttl_then_reread_after_it_picks_up_rotation() -> None:
    resolver, backend, clock, _ = make(ttl=30)
    assert resolver.resolve("acme", "stripe", rule()) == SecretValue(VALUE)
    clock.now += 29.9
    assert resolver.resolve("acme", "stripe", rule()) == SecretValue(VALUE)
    assert backend.reads == 1
    backend.values["acme/stripe#api_key"] = "rotated-value"
    clock.now += 0.2
    got = resolver.resolve("acme", "stripe", rule())
    assert got == SecretValue("rotated-value")
    assert got.version == "2"
    assert backend.reads == 2


@pytest.mark.parametrize("ttls", [{"vault": 0.0}, {}], ids=["ttl-zero", "ttl-absent"])
def test_no_caching_reads_every_time_and_reports_every_read(ttls: dict[str, float]) -> None:
    backend = FakeBackend(values={"acme/stripe#api_key": VALUE})
    seen: list[tuple[str, str, SecretValue]] = []
    resolver = Resolver({"vault": backend}, ttls, on_value=lambda *a: seen.append(a))
    for _ in range(3):
        resolver.resolve("acme", "stripe", rule())
    assert backend.reads == 3
    assert len(seen) == 3


def test_cache_key_is_backend_path_and_field() -> None:
    resolver, backend, _, _ = make(values={"a#x": "v-ax", "a#y": "v-ay", "b#x": "v-bx"})
    for _ in range(2):
        assert resolver.resolve("t", "n1", rule("a", "x")) == SecretValue("v-ax")
        assert resolver.resolve("t", "n2", rule("a", "y")) == SecretValue("v-ay")
        assert resolver.resolve("t", "n3", rule("b", "x")) == SecretValue("v-bx")
    assert backend.reads == 3


def test_on_value_for_each_fresh_read_and_each_new_tenant_and_name() -> None:
    resolver, backend, clock, seen = make()
    resolver.resolve("acme", "stripe", rule())
    resolver.resolve("acme", "stripe", rule())  # cached, already reported
    resolver.resolve("beta", "pay", rule())  # cached, new (tenant, name)
    assert backend.reads == 1
    assert [(t, n) for t, n, _ in seen] == [("acme", "stripe"), ("beta", "pay")]
    assert all(v == SecretValue(VALUE) for _, _, v in seen)
    clock.now += 61
    resolver.resolve("acme", "stripe", rule())  # fresh read
    assert [(t, n) for t, n, _ in seen][-1] == ("acme", "stripe") and len(seen) == 3


def test_on_value_failure_withholds_the_value_and_is_retried() -> None:
    calls = []

    def on_value(t: str, n: str, v: SecretValue) -> None:
        calls.append(n)
        if len(calls) == 1:
            raise RuntimeError("scrubber full")

    resolver = Resolver(
        {"vault": FakeBackend(values={"acme/stripe#api_key": VALUE})},
        {"vault": 60},
        on_value=on_value,
    )
    with pytest.raises(RuntimeError):
        resolver.resolve("acme", "stripe", rule())
    assert resolver.resolve("acme", "stripe", rule()) == SecretValue(VALUE)
    assert calls == ["stripe", "stripe"]


@pytest.mark.parametrize(
    "error",
    [BackendError("vault down"), SecretNotFound("no such path")],
    ids=["backend-error", "not-found"],
)
def test_errors_are_not_cached_and_keep_their_type(error: BackendError) -> None:
    resolver, backend, _, seen = make(values={"acme/stripe#api_key": error})
    with pytest.raises(type(error)) as info:
        resolver.resolve("acme", "stripe", rule())
    assert info.value.reason == error.reason
    backend.values["acme/stripe#api_key"] = VALUE
    assert resolver.resolve("acme", "stripe", rule()) == SecretValue(VALUE)
    assert backend.reads == 2 and len(seen) == 1


def test_unexpected_backend_exception_becomes_backend_error_without_its_text() -> None:
    resolver, _, _, _ = make(values={"acme/stripe#api_key": RuntimeError(f"leak {VALUE}")})
    with pytest.raises(BackendError) as info:
        resolver.resolve("acme", "stripe", rule())
    assert type(info.value) is BackendError
    assert "RuntimeError" in str(info.value) and VALUE not in str(info.value)
    assert info.value.__context__ is None and info.value.__cause__ is None


def test_unknown_backend_is_backend_error() -> None:
    resolver, _, _, _ = make()
    with pytest.raises(BackendError, match="no backend named 'nope'"):
        resolver.resolve("acme", "stripe", rule(backend="nope"))


def test_invalidate_forgets_values_and_does_not_cache_reads_in_flight() -> None:
    resolver, backend, _, _ = make()
    resolver.resolve("acme", "stripe", rule())
    resolver.invalidate()
    resolver.resolve("acme", "stripe", rule())
    assert backend.reads == 2
    backend.gate = threading.Event()
    resolver.invalidate()
    t = threading.Thread(target=resolver.resolve, args=("acme", "stripe", rule()))
    t.start()
    assert backend.started.wait(WAIT)
    resolver.invalidate()  # while the read is in flight
    backend.gate.set()
    t.join(WAIT)
    assert not t.is_alive()
    backend.gate = None
    resolver.resolve("acme", "stripe", rule())
    assert backend.reads == 4


def _concurrent(resolver: Resolver, n: int) -> list[SecretValue | BaseException]:
    out: list[SecretValue | BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            got: SecretValue | BaseException = resolver.resolve("acme", "stripe", rule())
        except BaseException as exc:
            got = exc
        with lock:
            out.append(got)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    return out if _join(threads) else []


def _join(threads: list[threading.Thread]) -> bool:
    for t in threads:
        t.join(WAIT)
    return not any(t.is_alive() for t in threads)


@pytest.mark.parametrize("ttl", [60.0, 0.0], ids=["cached", "uncached"])
def test_concurrent_misses_share_one_read(ttl: float) -> None:
    resolver, backend, _, seen = make(ttl=ttl)
    backend.gate = threading.Event()
    timer = threading.Timer(0.3, backend.gate.set)  # let all threads queue up first
    timer.start()
    out = _concurrent(resolver, 8)
    timer.join(WAIT)
    assert len(out) == 8 and all(v == SecretValue(VALUE) for v in out)
    assert backend.reads == 1
    assert len(seen) == 1  # one (tenant, name): reported once


def test_concurrent_misses_share_one_error_and_the_next_call_reads_again() -> None:
    resolver, backend, _, _ = make(values={"acme/stripe#api_key": BackendError("down")})
    backend.gate = threading.Event()
    timer = threading.Timer(0.3, backend.gate.set)
    timer.start()
    out = _concurrent(resolver, 6)
    timer.join(WAIT)
    assert len(out) == 6 and all(type(e) is BackendError for e in out)
    assert len({id(e) for e in out}) == 6  # each caller gets its own copy
    assert backend.reads == 1
    backend.gate = None
    backend.values["acme/stripe#api_key"] = VALUE
    assert resolver.resolve("acme", "stripe", rule()) == SecretValue(VALUE)


def test_aresolve_serves_hits_on_the_loop_and_misses_in_a_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    resolver, backend, _, _ = make()
    loop_thread = threading.get_ident()
    assert asyncio.run(resolver.aresolve("acme", "stripe", rule())) == SecretValue(VALUE)
    assert backend.threads and backend.threads[0] != loop_thread

    async def no_thread(*a: object, **k: object) -> None:
        raise AssertionError("a cache hit must not hop to a thread")

    monkeypatch.setattr(asyncio, "to_thread", no_thread)
    assert asyncio.run(resolver.aresolve("beta", "pay", rule())) == SecretValue(VALUE)
    assert backend.reads == 1


def test_aresolve_coalesces_and_survives_a_cancelled_waiter() -> None:
    resolver, backend, _, _ = make()
    backend.gate = threading.Event()

    async def main() -> list[SecretValue]:
        tasks = [asyncio.create_task(resolver.aresolve("acme", "stripe", rule())) for _ in range(5)]
        await asyncio.sleep(0.1)
        tasks[1].cancel()  # a waiter
        tasks[0].cancel()  # the leader: its thread still settles the read
        await asyncio.sleep(0.1)
        backend.gate.set()  # type: ignore[union-attr]
        await asyncio.wait_for(asyncio.gather(*tasks[2:]), WAIT)
        return [t.result() for t in tasks[2:]]

    got = asyncio.run(main())
    assert got == [SecretValue(VALUE)] * 3
    assert backend.reads == 1


def test_values_and_errors_never_show_the_secret() -> None:
    resolver, _, _, _ = make()
    value = resolver.resolve("acme", "stripe", rule())
    for shown in (repr(value), str(value), f"{value}", f"{value!r}", f"{[value]}"):
        assert VALUE not in shown
    assert VALUE not in repr(resolver)


def test_aresolve_leader_without_a_thread_releases_waiters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If the executor refuses the job, waiters get a BackendError and the
    next resolve reads again (nothing stays stuck in flight)."""
    resolver, backend, _, _ = make()

    async def refused(*a: object, **k: object) -> None:
        raise RuntimeError("cannot schedule new futures after shutdown")

    monkeypatch.setattr(asyncio, "to_thread", refused)
    with pytest.raises(BackendError, match="abandoned"):
        asyncio.run(resolver.aresolve("acme", "stripe", rule()))
    assert backend.reads == 0
    assert resolver.resolve("acme", "stripe", rule()) == SecretValue(VALUE)


def test_loop_closing_before_the_read_starts_releases_other_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    resolver, backend, _, _ = make()
    begun = threading.Event()

    async def never_runs(*a: object, **k: object) -> None:
        begun.set()
        await asyncio.sleep(3600)

    monkeypatch.setattr(asyncio, "to_thread", never_runs)
    waiter_got: list[BaseException | SecretValue] = []

    async def main() -> None:
        asyncio.create_task(resolver.aresolve("acme", "stripe", rule()))  # noqa: RUF006
        await asyncio.sleep(0.05)
        assert begun.is_set()
        # a thread joins the read in flight, then the loop ends under it
        t = threading.Thread(target=lambda: waiter_got.append(_try_resolve(resolver)))
        t.start()
        await asyncio.sleep(0.2)

    asyncio.run(main())  # cancels the pending leader on the way out
    deadline = time.monotonic() + WAIT
    while not waiter_got and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(waiter_got) == 1 and type(waiter_got[0]) is BackendError
    assert backend.reads == 0


def _try_resolve(resolver: Resolver) -> BaseException | SecretValue:
    try:
        return resolver.resolve("acme", "stripe", rule())
    except BaseException as exc:
        return exc
