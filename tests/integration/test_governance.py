"""Governance across replicas (DESIGN.md §13): two real ``keybroker run``
processes sharing one real redis-server. A rate limit and a use count hold
across both; an approval given through one broker's admin API releases a
request held by the other; a session revoked with the CLI is refused by
both within a second; the store killed mid-test refuses only what needs it
(503 state_unavailable) and recovers by itself when it comes back.

The operator drives everything with the ``keybroker`` CLI."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import requests

from tests.support.agent_env import keybroker
from tests.support.net import free_port, wait_for
from tests.support.proxy import Proxy
from tests.support.redis_server import RedisServer
from tests.support.tlsca import TestCA
from tests.support.upstream import Upstream

pytestmark = pytest.mark.integration

TOKEN = "kb_" + secrets.token_urlsafe(24)
ADMIN_TOKEN = "kb_admin_" + secrets.token_urlsafe(24)
SESSION_KEY = secrets.token_urlsafe(32)
VALUE = "kbcanary_governance_" + secrets.token_hex(12)


def _secret(up: Upstream, **extra: Any) -> dict[str, Any]:
    return {
        "backend": "local",
        "path": "KB_GOV_SECRET",
        "hosts": ["127.0.0.1"],
        "ports": [up.port],
        "paths": ["/echo*"],
        "methods": ["GET", "POST"],
        **extra,
    }


def _policy(root: Path, name: str, up: Upstream, ca: TestCA, redis_url: str) -> dict[str, Any]:
    return {
        "version": 1,
        "certs_dir": str(root / "certs"),
        "upstream_ca": ca.ca_path,
        "audit": {"path": str(root / name / "audit.jsonl")},
        "backends": {"local": {"type": "env"}},
        "state": {"url": redis_url, "timeout": 0.5},
        "approvals": {"timeout": 30, "remember": 600},
        "admin": {
            "listen": f"127.0.0.1:{free_port()}",
            "token_sha256": hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest(),
        },
        "sessions": {"key_env": "KB_GOV_SESSION_KEY"},
        "tenants": {
            "acme": {
                "token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest(),
                "secrets": {
                    "limited": _secret(up, rate="4/minute"),
                    "oneshot": _secret(up, max_uses=3),
                    "gated": _secret(up, approve="first_use", approve_methods=["POST"]),
                    "guarded": _secret(up, approve="always"),
                    "free": _secret(up),
                },
            }
        },
    }


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, upstream: Upstream, test_ca: TestCA
) -> Iterator[tuple[RedisServer, list[Proxy]]]:
    root = tmp_path_factory.mktemp("governance")
    redis = RedisServer(root / "redis").start()
    brokers = [
        Proxy(
            _policy(root, name, upstream, test_ca, redis.url),
            root / name,
            env={"KB_GOV_SECRET": VALUE, "KB_GOV_SESSION_KEY": SESSION_KEY},
        )
        for name in ("a", "b")
    ]
    try:
        for b in brokers:
            b.start()
        yield redis, brokers
    finally:
        for b in brokers:
            b.stop()
        redis.stop()


def call(
    broker: Proxy,
    up: Upstream,
    secret: str,
    *,
    method: str = "GET",
    password: str = TOKEN,
    path: str = "/echo/gov",
) -> requests.Response:
    proxy = f"http://acme:{password}@127.0.0.1:{broker.port}"
    with requests.Session() as s:  # a new connection each time
        s.trust_env = False
        return s.request(
            method,
            up.base_url + path,
            headers={"Authorization": f"Bearer <<secret:{secret}>>"},
            proxies={"http": proxy, "https": proxy},
            verify=str(broker.ca_path),
            timeout=40,
        )


def status(broker: Proxy, up: Upstream, secret: str, password: str) -> int:
    """The status, with a refused CONNECT (which requests raises) as its 407."""
    try:
        return call(broker, up, secret, password=password).status_code
    except requests.exceptions.ProxyError as exc:
        assert "407" in str(exc), exc
        return 407


def cli(broker: Proxy, *args: str) -> Any:
    os.environ["KB_GOV_ADMIN"] = ADMIN_TOKEN
    os.environ["KB_GOV_SESSION_KEY"] = SESSION_KEY
    return keybroker(*args, "--config", str(broker.config))


def reason(r: requests.Response) -> str | None:
    return r.json().get("reason") if r.headers.get("x-keybroker-decision") else None


def test_rate_limit_spread_across_brokers(env: Any, upstream: Upstream) -> None:
    _, (a, b) = env
    got = [call((a, b)[i % 2], upstream, "limited") for i in range(6)]
    assert [r.status_code for r in got] == [200, 200, 200, 200, 429, 429]
    assert {reason(r) for r in got[4:]} == {"rate_limited"}
    assert all(1 <= int(r.headers["retry-after"]) <= 60 for r in got[4:])
    assert all(VALUE not in r.text for r in got)


def test_use_count_spread_across_brokers(env: Any, upstream: Upstream) -> None:
    _, (a, b) = env
    before = len(upstream.received)
    got = [call((b, a)[i % 2], upstream, "oneshot") for i in range(5)]
    assert [r.status_code for r in got] == [200, 200, 200, 403, 403]
    assert {reason(r) for r in got[3:]} == {"uses_exhausted"}
    sent = [x for x in upstream.received[before:] if x.header("authorization") == f"Bearer {VALUE}"]
    assert len(sent) == 3
    # The operator sees the count and re-arms the secret (straight in the store).
    shown = cli(a, "usage", "show", "--tenant", "acme", "--json")
    assert shown.returncode == 0, shown.stderr
    row = next(r for r in json.loads(shown.stdout) if r["secret"] == "oneshot")
    assert (row["uses"], row["max_uses"]) == (3, 3)
    assert cli(b, "usage", "reset", "--tenant", "acme", "--secret", "oneshot").returncode == 0
    assert call(a, upstream, "oneshot").status_code == 200


def _held(broker: Proxy, secret: str) -> dict[str, Any] | None:
    out = cli(broker, "approvals", "list", "--json", "--admin-token-env", "KB_GOV_ADMIN")
    assert out.returncode == 0, out.stderr
    recs = [r for r in json.loads(out.stdout) if r["secret"] == secret]
    return recs[0] if recs else None


def _in_background(fn: Any) -> tuple[threading.Thread, list[Any]]:
    box: list[Any] = []
    t = threading.Thread(target=lambda: box.append(fn()), daemon=True)
    t.start()
    return t, box


def test_approval_on_one_broker_releases_the_other(env: Any, upstream: Upstream) -> None:
    _, (a, b) = env
    before = len(upstream.received)
    assert call(b, upstream, "gated").status_code == 200  # GET needs no approval
    t, box = _in_background(lambda: call(b, upstream, "gated", method="POST", path="/echo/pay"))
    rec: dict[str, Any] = {}
    assert wait_for(lambda: bool(rec.update(_held(a, "gated") or {}) or rec), 20)
    assert set(rec) == {"id", "tenant", "secret", "method", "host", "path", "since"} | {
        "secrets",
        "port",
        "query_keys",
        "body_bytes",
    }
    assert (rec["tenant"], rec["method"], rec["path"]) == ("acme", "POST", "/echo/pay")
    # Held: nothing went upstream yet.
    assert not [x for x in upstream.received[before:] if x.path == "/echo/pay"]
    assert rec["id"] in b.output()  # the live feed names the approval id
    tenant = cli(a, "approvals", "approve", rec["id"], "--admin-token-env", "KB_GOV_ADMIN")
    assert tenant.returncode == 0, tenant.stderr
    t.join(30)
    assert box and box[0].status_code == 200
    # first_use: remembered on every broker.
    assert call(a, upstream, "gated", method="POST").status_code == 200
    records = [json.loads(x) for x in b.audit_path.read_text().splitlines()]
    approved = [r for r in records if r.get("approval", {}).get("id") == rec["id"]]
    assert approved and approved[-1]["approval"] == {
        "id": rec["id"],
        "verdict": "approved",
        "by": "admin",
    }
    assert [r["phase"] for r in approved] == ["sent", "done"]  # on record before it left
    verified = keybroker("audit", "verify", str(b.audit_path))
    assert verified.returncode == 0, verified.stderr


def test_denial_and_tenant_credentials_cannot_approve(env: Any, upstream: Upstream) -> None:
    _, (a, b) = env
    t, box = _in_background(lambda: call(a, upstream, "guarded", path="/echo/deploy"))
    rec: dict[str, Any] = {}
    assert wait_for(lambda: bool(rec.update(_held(b, "guarded") or {}) or rec), 20)
    os.environ["KB_GOV_TENANT"] = TOKEN
    refused = cli(b, "approvals", "approve", rec["id"], "--admin-token-env", "KB_GOV_TENANT")
    assert refused.returncode == 1 and "operator token" in refused.stderr
    denied = cli(b, "approvals", "deny", rec["id"], "--admin-token-env", "KB_GOV_ADMIN")
    assert denied.returncode == 0, denied.stderr
    t.join(30)
    assert box and box[0].status_code == 403 and reason(box[0]) == "approval_denied"


def test_session_revoked_on_every_broker_within_a_second(env: Any, upstream: Upstream) -> None:
    _, (a, b) = env
    made = cli(a, "session", "new", "--tenant", "acme", "--ttl", "10m")
    assert made.returncode == 0, made.stderr
    session = made.stdout.strip()
    assert session.startswith("kbs1.")
    for broker in (a, b):
        assert status(broker, upstream, "free", session) == 200
    revoked = cli(b, "session", "revoke", session)
    assert revoked.returncode == 0, revoked.stderr
    start = time.monotonic()
    for broker in (a, b):
        assert wait_for(lambda br=broker: status(br, upstream, "free", session) == 407, 1.0), (
            f"broker still accepts the revoked session after {time.monotonic() - start:.2f} s"
        )
    assert time.monotonic() - start < 1.5
    assert call(a, upstream, "free").status_code == 200  # the tenant token still works
    for broker in (a, b):
        assert session not in broker.output() and session not in broker.audit_path.read_text()


def test_revocation_reaches_an_open_tunnel(env: Any, upstream: Upstream) -> None:
    """A tunnel opened with a session before its revocation is refused on
    its next request (the identity is re-checked per request, not per CONNECT)."""
    _, (a, b) = env
    session = cli(a, "session", "new", "--tenant", "acme", "--ttl", "5m").stdout.strip()
    proxy = f"http://acme:{session}@127.0.0.1:{a.port}"
    with requests.Session() as s:  # keep-alive: one CONNECT tunnel for every request
        s.trust_env = False

        def get() -> int:
            return s.get(
                upstream.base_url + "/echo/tunnel",
                headers={"Authorization": "Bearer <<secret:free>>"},
                proxies={"https": proxy},
                verify=str(a.ca_path),
                timeout=20,
            ).status_code

        assert get() == 200
        assert cli(b, "session", "revoke", session).returncode == 0  # through the other broker
        assert wait_for(lambda: get() == 407, 1.0)


def test_env_hands_the_sandbox_a_session(env: Any, upstream: Upstream) -> None:
    """``keybroker env`` as an operator runs it: the proxy URL carries a
    session token, never the tenant token, and it works on both brokers."""
    _, (a, b) = env
    os.environ["KB_GOV_TENANT"] = TOKEN
    out = cli(a, "env", "--tenant", "acme", "--token-env", "KB_GOV_TENANT", "--format", "dotenv")
    assert out.returncode == 0, out.stderr
    lines = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    password = unquote(urlsplit(lines["HTTPS_PROXY"]).password or "")
    assert password.startswith("kbs1.") and TOKEN not in out.stdout
    for broker in (a, b):
        assert status(broker, upstream, "free", password) == 200


def test_store_killed_then_back(env: Any, upstream: Upstream) -> None:
    redis, (a, b) = env
    made = cli(a, "session", "new", "--tenant", "acme", "--ttl", "10m")
    session = made.stdout.strip()
    before = len(upstream.received)
    redis.kill()
    for broker in (a, b):
        r = call(broker, upstream, "limited", path="/echo/down")
        assert r.status_code == 503 and reason(r) == "state_unavailable"
        assert call(broker, upstream, "free").status_code == 200  # needs no state
    assert not [x for x in upstream.received[before:] if x.path == "/echo/down"]
    # A session cannot be checked against revocations: refused (after the grace period).
    assert wait_for(lambda: status(b, upstream, "free", session) == 503, 10)
    redis.start()  # same port, empty store: its data (and epoch marker) are gone
    for broker in (a, b):  # review finding 5: no re-armed counts, no un-revoked sessions
        assert wait_for(lambda br=broker: "epoch marker is missing" in br.output(), 10)
        r = call(broker, upstream, "limited", path="/echo/lost")
        assert r.status_code == 503 and reason(r) == "state_unavailable"
        assert status(broker, upstream, "free", session) == 503
        assert call(broker, upstream, "free").status_code == 200  # needs no state
    assert not [x for x in upstream.received[before:] if x.path == "/echo/lost"]
    init = cli(a, "state", "init")  # the operator re-initialises the store
    assert init.returncode == 0, init.stderr
    for broker in (a, b):
        assert wait_for(
            lambda br=broker: call(br, upstream, "limited", path="/echo/up").status_code == 200, 10
        )
        assert wait_for(lambda br=broker: status(br, upstream, "free", session) == 200, 10)
