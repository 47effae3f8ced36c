"""Shared fixtures for integration tests (real servers)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.openbao import OpenBao


@pytest.fixture(scope="session")
def openbao() -> Iterator[OpenBao]:
    """One OpenBao dev server for the whole session. Tests that stop a vault
    start their own instead."""
    with OpenBao() as bao:
        yield bao
