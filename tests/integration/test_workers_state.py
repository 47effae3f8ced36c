"""``keybroker run --workers 2`` and governance state (review finding 4).

Without ``state.url`` a SIGHUP reload that adds a use count is refused by
every worker, as start-up refuses it (each worker would count apart). With
``state.url``, a session revoked with the CLI is refused by every worker,
not only the one that binds the admin API."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

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
SESSION_KEY = secrets.token_urlsafe(32)
VALUE = "kbcanary_workers_" + secrets.token_hex(12)


def _policy(root: Path, up: Upstream, ca: TestCA) -> dict[str, Any]:
    return {
        "version": 1,
        "certs_dir": str(root / "certs"),
        "upstream_ca": ca.ca_path,
        "audit": {"path": str(root / "audit.jsonl")},
        "backends": {"local": {"type": "env"}},
        "tenants": {
            "acme": {
                "token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest(),
                "secrets": {
                    "s": {
                        "backend": "local",
                        "path": "KB_W_SECRET",
                        "hosts": ["127.0.0.1"],
                        "ports": [up.port],
                    }
                },
            }
        },
    }


def call(broker: Proxy, up: Upstream, password: str = TOKEN) -> int:
    proxy = f"http://acme:{password}@127.0.0.1:{broker.port}"
    try:
        with requests.Session() as s:  # a new connection each time: any worker
            s.trust_env = False
            return s.get(
                up.base_url + "/echo/w",
                headers={"Authorization": "Bearer <<secret:s>>"},
                proxies={"http": proxy, "https": proxy},
                verify=str(broker.ca_path),
                timeout=20,
            ).status_code
    except requests.exceptions.ProxyError as exc:
        assert "407" in str(exc), exc
        return 407


def workers_seen(broker: Proxy) -> set[int]:
    """The workers that wrote an audit record (each has its own chain)."""
    base = broker.audit_path
    return {
        i
        for i in range(2)
        if (f := base.with_name(f"{base.stem}.w{i}.jsonl")).exists() and f.read_text().strip()
    }


def test_reload_adding_max_uses_without_state_is_refused_by_every_worker(
    tmp_path: Path, upstream: Upstream, test_ca: TestCA
) -> None:
    policy = _policy(tmp_path, upstream, test_ca)
    env = {"KB_W_SECRET": VALUE}
    with Proxy(policy, tmp_path / "w", env=env, extra_args=("--workers", "2")) as p:
        assert wait_for(lambda: call(p, upstream) == 200 and workers_seen(p) == {0, 1}, 30)
        new = copy.deepcopy(policy)
        new["tenants"]["acme"]["secrets"]["s"]["max_uses"] = 1
        p.reload(new)
        assert wait_for(lambda: p.output().count("needs state.url") >= 2, 20), p.output()
        assert "keeping the last good policy" in p.output()
        codes = [call(p, upstream) for _ in range(6)]
        assert codes == [200] * 6, codes  # the last good policy: no per-worker one-shot


def test_session_revoked_is_refused_by_every_worker(
    tmp_path: Path, upstream: Upstream, test_ca: TestCA
) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    try:
        policy = _policy(tmp_path, upstream, test_ca)
        policy["state"] = {"url": redis.url, "timeout": 0.5}
        policy["sessions"] = {"key_env": "KB_W_SESSION_KEY"}
        policy["admin"] = {"listen": f"127.0.0.1:{free_port()}", "token_sha256": "c" * 64}
        env = {"KB_W_SECRET": VALUE, "KB_W_SESSION_KEY": SESSION_KEY}
        with Proxy(policy, tmp_path / "w", env=env, extra_args=("--workers", "2")) as p:
            os.environ["KB_W_SESSION_KEY"] = SESSION_KEY
            made = keybroker("session", "new", "--config", str(p.config), "--tenant", "acme")
            assert made.returncode == 0, made.stderr
            session = made.stdout.strip()
            assert wait_for(
                lambda: call(p, upstream, session) == 200 and workers_seen(p) == {0, 1}, 30
            )
            files = [p.audit_path.with_name(f"{p.audit_path.stem}.w{i}.jsonl") for i in range(2)]
            marks = [len(f.read_text().splitlines()) for f in files]
            revoked = keybroker("session", "revoke", "--config", str(p.config), session)
            assert revoked.returncode == 0, revoked.stderr
            since = time.monotonic()

            def refused_by_both() -> bool:
                code = call(p, upstream, session)
                # Every worker polls the store every 0.25 s: after 1.5 s, never accepted again.
                assert code == 407 or (code == 200 and time.monotonic() - since < 1.5), code
                return all(
                    any(
                        json.loads(line).get("reason") == "unauthenticated"
                        for line in f.read_text().splitlines()[m:]
                    )
                    for f, m in zip(files, marks, strict=True)
                )

            assert wait_for(refused_by_both, 30)
            assert call(p, upstream) == 200  # the tenant token still works
    finally:
        redis.stop()
