"""The operator API on a real loopback socket: authentication, listing,
verdicts and revocation."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from broker.governance.admin import AdminServer
from broker.governance.state import MemoryStore
from broker.policy.load import parse_policy
from tests.support.net import free_port

OPERATOR = "kb_operator_token_for_tests"
ALICE = "kb_alice_token_for_tests"
TENANT = "kb_tenant_token_for_tests"


def sha(t: str) -> str:
    return hashlib.sha256(t.encode()).hexdigest()


def _policy(tmp_path: Path) -> Any:
    return parse_policy(
        {
            "version": 1,
            "audit": {"path": "a.jsonl"},
            "admin": {"token_sha256": sha(OPERATOR), "operators": {"alice": sha(ALICE)}},
            "approvals": {"remember": 60},
            "tenants": {"acme": {"token_sha256": sha(TENANT)}},
        },
        "p.yaml",
        tmp_path,
    )


async def call(
    port: int, method: str, path: str, token: str | None, body: bytes = b""
) -> tuple[int, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    auth = f"authorization: Bearer {token}\r\n" if token else ""
    writer.write(
        f"{method} {path} HTTP/1.1\r\nhost: x\r\n{auth}content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    data = await reader.read()
    writer.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


REC = {
    "tenant": "acme",
    "secret": "s",
    "secrets": "s",
    "method": "POST",
    "host": "api.example.com",
    "port": "443",
    "path": "/charge",
    "since": "2026-01-01T00:00:00.000Z",
    "remember": "acme:s",
}


@pytest.fixture
def served(tmp_path: Path) -> Any:
    policy, store = _policy(tmp_path), MemoryStore()

    async def with_server(fn: Any) -> Any:
        server = AdminServer(lambda: policy, lambda: store)
        port = free_port()
        await server.start(f"127.0.0.1:{port}")
        try:
            return await fn(port, store)
        finally:
            await server.aclose()

    return lambda fn: asyncio.run(with_server(fn))


@pytest.mark.parametrize(
    "token",
    [None, TENANT, "wrong", OPERATOR + " "[:0] + "x"],
    ids=["none", "tenant", "wrong", "near"],
)
def test_refuses_without_an_operator_token(served: Any, token: str | None) -> None:
    async def go(port: int, store: MemoryStore) -> None:
        aid = await store.open_approval(REC, dedupe=None, ttl=30)
        assert (await call(port, "GET", "/v1/approvals", token))[0] == 401
        assert (await call(port, "POST", f"/v1/approvals/{aid}/approve", token))[0] == 401
        assert (await store.approval(aid) or {})["state"] == "pending"

    served(go)


def test_list_approve_deny(served: Any, caplog: pytest.LogCaptureFixture) -> None:
    async def go(port: int, store: MemoryStore) -> None:
        a = await store.open_approval(REC, dedupe="acme:s", ttl=30)
        b = await store.open_approval({**REC, "remember": ""}, dedupe=None, ttl=30)
        status, listed = await call(port, "GET", "/v1/approvals", OPERATOR)
        assert status == 200 and [r["id"] for r in listed] == [a, b]
        assert set(listed[0]) == {
            "id",
            "tenant",
            "secret",
            "secrets",
            "method",
            "host",
            "port",
            "path",
            "query_keys",
            "body_bytes",
            "since",
        }
        status, body = await call(port, "POST", f"/v1/approvals/{a}/approve", ALICE)
        assert status == 200 and body == {"id": a, "verdict": "approved", "by": "alice"}
        assert await store.remembered(["acme:s"])
        assert (await call(port, "POST", f"/v1/approvals/{a}/deny", OPERATOR))[0] == 404
        status, body = await call(port, "POST", f"/v1/approvals/{b}/deny", OPERATOR)
        assert status == 200 and body["by"] == "admin"
        assert (await call(port, "GET", f"/v1/approvals/{b}/deny", OPERATOR))[0] == 405
        assert (await call(port, "GET", "/v1/approvals", OPERATOR))[1] == []

    with caplog.at_level("WARNING", logger="keybroker"):
        served(go)
    assert "operator alice approved" in caplog.text and "operator admin denied" in caplog.text
    assert ALICE not in caplog.text and OPERATOR not in caplog.text


def test_revoke(served: Any) -> None:
    async def go(port: int, store: MemoryStore) -> None:
        body = json.dumps({"id": "ab" * 12, "expires": 2_000_000_000}).encode()
        assert (await call(port, "POST", "/v1/sessions/revoke", OPERATOR, body))[0] == 200
        assert "ab" * 12 in store.revoked()[0]
        bad = json.dumps({"id": "../x", "expires": 1}).encode()
        assert (await call(port, "POST", "/v1/sessions/revoke", OPERATOR, bad))[0] == 400

    served(go)


def test_usage_and_reset(tmp_path: Path) -> None:
    policy = parse_policy(
        {
            "version": 1,
            "audit": {"path": "a.jsonl"},
            "backends": {"l": {"type": "env"}},
            "admin": {"token_sha256": sha(OPERATOR)},
            "tenants": {
                "acme": {
                    "token_sha256": sha(TENANT),
                    "secrets": {
                        "s": {"backend": "l", "path": "X", "hosts": ["a.com"], "max_uses": 1},
                        "free": {"backend": "l", "path": "X", "hosts": ["a.com"]},
                    },
                }
            },
        },
        "p.yaml",
        tmp_path,
    )
    store = MemoryStore()

    async def go() -> None:
        from broker.governance.state import Charge

        server = AdminServer(lambda: policy, lambda: store)
        port = free_port()
        await server.start(f"127.0.0.1:{port}")
        try:
            assert await store.charge([Charge("acme", "s", None, 1)], "t") is None
            status, rows = await call(port, "GET", "/v1/usage", OPERATOR)
            assert status == 200 and rows == [
                {"tenant": "acme", "secret": "s", "rate": None, "window_uses": 0,
                 "max_uses": 1, "uses": 1}
            ]  # fmt: skip
            assert (await call(port, "GET", "/v1/usage", TENANT))[0] == 401
            body = json.dumps({"tenant": "acme", "secret": "nope"}).encode()
            assert (await call(port, "POST", "/v1/usage/reset", OPERATOR, body))[0] == 404
            body = json.dumps({"tenant": "acme", "secret": "s"}).encode()
            assert (await call(port, "POST", "/v1/usage/reset", TENANT, body))[0] == 401
            assert (await call(port, "POST", "/v1/usage/reset", OPERATOR, body))[0] == 200
            assert (await call(port, "GET", "/v1/usage", OPERATOR))[1][0]["uses"] == 0
        finally:
            await server.aclose()

    asyncio.run(go())


def test_garbage_gets_400_and_the_server_stays_up(served: Any) -> None:
    async def go(port: int, store: MemoryStore) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x00\x01garbage\r\n\r\n")
        assert b" 400 " in (await reader.read())[:20]
        writer.close()
        assert (await call(port, "GET", "/v1/health", OPERATOR))[0] == 200

    served(go)
