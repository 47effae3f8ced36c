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
