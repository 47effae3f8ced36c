"""Shared fixtures for integration tests (real servers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.openbao import OpenBao
from tests.support.proxy import Proxy
from tests.support.scenario import Scenario
from tests.support.tlsca import TestCA
from tests.support.upstream import Upstream


@pytest.fixture(scope="session")
def openbao() -> Iterator[OpenBao]:
    """One OpenBao dev server for the whole session. Tests that stop a vault
    start their own instead."""
    with OpenBao() as bao:
        yield bao


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("upstream-ca"))


@pytest.fixture(scope="session")
def upstream(test_ca: TestCA) -> Iterator[Upstream]:
    with Upstream(test_ca) as up:
        yield up


@pytest.fixture(scope="session")
def sc(
    openbao: OpenBao, upstream: Upstream, test_ca: TestCA, tmp_path_factory: pytest.TempPathFactory
) -> Scenario:
    scenario = Scenario(
        upstream_port=upstream.port,
        vault_url=openbao.url,
        upstream_ca=Path(test_ca.ca_path),
        workdir=tmp_path_factory.mktemp("broker"),
    )
    scenario.seed_vault(openbao)
    return scenario


@pytest.fixture(scope="session")
def broker(sc: Scenario, openbao: OpenBao) -> Iterator[Proxy]:
    """The shared keybroker for read-only tests (tests that change policy or
    break things start their own)."""
    proxy = Proxy(sc.policy(), sc.workdir, env=sc.env(openbao.root_token))
    with proxy:
        yield proxy


def make_broker(sc: Scenario, openbao: OpenBao, workdir: Path, **policy_over: object) -> Proxy:
    workdir.mkdir(parents=True, exist_ok=True)
    over = {"audit": {"path": str(workdir / "audit.jsonl")}, **policy_over}
    return Proxy(sc.policy(**over), workdir, env=sc.env(openbao.root_token))
