"""The Redis state store against a real redis-server: the same contract as
the in-process store, atomic under concurrency, and failing closed (then
recovering by itself) when the server dies."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.governance.config import StateConfig
from broker.governance.redis_state import RedisStore
from broker.governance.state import Charge, StateUnavailable
from tests.support.redis_server import RedisServer
from tests.unit.governance.test_state import CONTRACT

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as srv:
        yield srv


def store_run(server: RedisServer, prefix: str, fn: Any) -> Any:
    async def go() -> Any:
        store = RedisStore(StateConfig(url=server.url, prefix=prefix, timeout=0.5))
        try:
            return await fn(store)
        finally:
            await store.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize("case", CONTRACT, ids=list(CONTRACT))
def test_contract(server: RedisServer, case: str) -> None:
    store_run(server, f"kbtest-{case}:", CONTRACT[case])


def test_concurrent_charges_never_overshoot(server: RedisServer) -> None:
    """60 requests at once from 3 clients (as 3 brokers would) for 10 uses."""

    async def go(_: RedisStore) -> list[Any]:
        stores = [RedisStore(StateConfig(url=server.url, prefix="kbtest-race:")) for _ in range(3)]
        charge = Charge("acme", "s", (25, 60), 10)
        try:
            return await asyncio.gather(
                *(stores[i % 3].charge([charge], f"t{i}") for i in range(60))
            )
        finally:
            for s in stores:
                await s.aclose()

    results = store_run(server, "unused:", go)
    assert sum(r is None for r in results) == 10
    assert all(r.kind == "uses" for r in results if r is not None)


def test_dead_store_fails_closed_and_recovers(tmp_path: Path) -> None:
    srv = RedisServer(tmp_path).start()

    async def go() -> None:
        store = RedisStore(StateConfig(url=srv.url, timeout=0.5))
        charge = Charge("acme", "s", (100, 60), None)
        try:
            assert await store.charge([charge], "a") is None
            srv.kill()
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(StateUnavailable) as err:
                await store.charge([charge], "b")
            assert loop.time() - start < 3.0
            assert "ConnectionError" in str(err.value) and err.value.__cause__ is None
            with pytest.raises(StateUnavailable):
                await store.refresh()
            srv.start()  # same port; no restart of the client
            assert await store.charge([charge], "c") is None
            await store.refresh()
            assert store.revoked()[1] < 1
        finally:
            await store.aclose()

    try:
        asyncio.run(go())
    finally:
        srv.stop()


def test_password_from_the_environment(tmp_path: Path) -> None:
    """``state.password_env``: the password stays out of the policy file."""
    from broker.governance.state import build_store

    with RedisServer(tmp_path, "--requirepass", "kb-store-pass") as srv:

        async def go() -> None:
            for env, ok in (({}, False), ({"KB_STORE_PASS": "kb-store-pass"}, True)):
                config = StateConfig(url=srv.url, password_env="KB_STORE_PASS", timeout=0.5)
                store = build_store(config, env)
                try:
                    if ok:
                        assert await store.charge([Charge("a", "s", None, 5)], "t") is None
                    else:
                        with pytest.raises(StateUnavailable):
                            await store.charge([Charge("a", "s", None, 5)], "t")
                finally:
                    await store.aclose()

        asyncio.run(go())


def test_a_store_that_lost_its_data_fails_closed_until_an_operator_reinitialises(
    tmp_path: Path,
) -> None:
    """Review finding 5: redis-server restarted without persistence (data
    lost) must not un-revoke sessions or re-arm one-shot secrets: the brokers
    that knew the store's epoch marker refuse (503) until ``keybroker state
    init``; a broker (re)started meanwhile writing a new marker does not
    lift that."""
    from tests.support.agent_env import keybroker

    srv = RedisServer(tmp_path / "redis").start()
    config = tmp_path / "policy.yaml"
    config.write_text(
        "version: 1\naudit: {path: a.jsonl}\nbackends: {}\ntenants: {}\n"
        f"state: {{url: '{srv.url}', timeout: 0.5}}\n"
    )
    one_shot = Charge("acme", "deploy", None, 1)
    sid = "ab" * 12

    def store() -> RedisStore:
        return RedisStore(StateConfig(url=srv.url, timeout=0.5))

    async def go() -> None:
        a, b, c = store(), store(), store()
        try:
            await a.refresh()
            await b.refresh()
            assert a.epoch is not None and a.epoch.startswith("kb:") and b.epoch == a.epoch
            assert await a.charge([one_shot], "t1") is None
            assert (await b.charge([one_shot], "t2")) is not None  # spent, shared
            await a.revoke(sid, 2_000_000_000)
            await a.refresh()
            assert sid in a.revoked()[0]

            srv.kill()
            srv.start()  # same port, no persistence: every key is gone

            with pytest.raises(StateUnavailable):  # b has not looked yet: the charge itself checks
                await b.charge([one_shot], "t3")
            await a.refresh()
            assert a.lost is not None and "state init" in a.lost
            with pytest.raises(StateUnavailable):
                await a.charge([one_shot], "t4")
            with pytest.raises(StateUnavailable):
                await a.open_approval({"tenant": "acme"}, dedupe=None, ttl=5)
            assert a.revoked()[1] == float("inf")  # sessions: 503, never un-revoked
            await c.refresh()  # a broker starting now writes a new marker ...
            assert c.epoch is not None and c.epoch != a.epoch
            await a.refresh()
            assert a.lost is not None  # ... which does not re-arm the brokers that knew

            init = keybroker("state", "init", "--config", str(config))
            assert init.returncode == 0, init.stderr
            assert "op:" in init.stdout and "initialised" in init.stdout
            await a.refresh()
            await b.refresh()
            assert a.lost is None and a.epoch == b.epoch and a.epoch.startswith("op:")
            assert sid in a.revoked()[0] and a.revoked()[1] < 1  # kept: never un-revoked here
            assert await a.charge([one_shot], "t5") is None  # the operator re-armed the store
        finally:
            for s in (a, b, c):
                await s.aclose()

    try:
        asyncio.run(go())
    finally:
        srv.stop()
