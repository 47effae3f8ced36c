"""Every value the policy can resolve is known to the scrubber from the
start, refreshed on expiry, and requests that could receive an unknown one
are refused until it is (issue 12 item 3)."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from broker.backends import preload
from broker.backends.base import BackendError, SecretNotFound
from broker.backends.preload import Preloader
from broker.backends.resolver import Resolver
from broker.engine import Engine
from broker.policy.load import parse_policy
from broker.policy.schema import Policy
from broker.request.decision import Destination
from broker.request.locations import RequestParts
from broker.scrub.scrubber import Scrubber
from broker.secret import SecretValue

VALUE = "kbcanary_preload_4c9a1e7f2b8d6035"
ROTATED = "kbcanary_preload_rotated_e1d2c3b4a5"
OTHER = "kbcanary_preload_globex_77f0a9b8c6"
API = "api.example.com"


def make_policy(tmp_path: Path, backend: str = "local", **secrets: Any) -> Policy:
    rules = secrets or {"api": {"backend": backend, "path": "API_KEY", "hosts": [API]}}
    data: dict[str, Any] = {
        "version": 1,
        "certs_dir": str(tmp_path / "certs"),
        "audit": {"path": str(tmp_path / "audit.jsonl")},
        "backends": {"local": {"type": "env"}},
        "tenants": {
            "acme": {"token_sha256": "a" * 64, "secrets": rules},
            "globex": {
                "token_sha256": "b" * 64,
                "secrets": {"other": {"backend": "local", "path": "OTHER", "hosts": ["b.test"]}},
            },
        },
    }
    return parse_policy(data, "t.yaml", tmp_path)


class Flaky:
    """A backend that is down until ``up`` is set, then serves ``values``."""

    name = "local"
    blocking = True

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.up = threading.Event()
        self.reads = 0

    def read(self, path: str, field: str) -> SecretValue:
        self.reads += 1
        if not self.up.is_set():
            raise BackendError("backend 'local' is unreachable")
        if path not in self.values:
            raise SecretNotFound(f"nothing at {path}")
        return SecretValue(self.values[path])

    def close(self) -> None:
        pass


def parts(auth: str = "") -> RequestParts:
    return RequestParts(
        headers=(("Authorization", auth),) if auth else (), path="/", query="", body=b""
    )


def dest(host: str = API) -> Destination:
    return Destination.of("https", host, 443, "GET", "/")


def test_every_value_is_known_before_any_request(tmp_path: Path) -> None:
    engine = Engine(make_policy(tmp_path), env={"API_KEY": VALUE, "OTHER": OTHER})
    try:
        assert asyncio.run(engine.preloader.wait_first_pass(5))
        # An upstream recalling either tenant's value, with no request made yet.
        out, n = engine.scrub(f"{VALUE} {OTHER}".encode(), "acme")
        assert n == 2 and out == b"<<secret:api>> <<redacted>>"
        assert engine.preloader.pending == frozenset()
    finally:
        engine.close()


def _engine_with(tmp_path: Path, backend: Flaky) -> Engine:
    engine = Engine(make_policy(tmp_path), env={})
    engine.preloader.stop()
    engine.resolver = Resolver({"local": backend}, {"local": 60.0}, on_value=engine._remember)
    engine.preloader = Preloader(engine.policy, engine.resolver, {"local": 60.0})
    return engine


def test_unreachable_vault_blocks_only_destinations_that_could_echo_an_unknown_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(preload, "FIRST_PASS_WAIT", 0.05)
    backend = Flaky({"API_KEY": VALUE, "OTHER": OTHER})
    engine = _engine_with(tmp_path, backend)
    try:
        assert not engine.preloader.run_once()
        assert engine.preloader.pending == {("acme", "api"), ("globex", "other")}
        engine.preloader._first_pass.set()
        for tenant in ("acme", "globex"):  # any tenant: the upstream could echo acme's value
            out = asyncio.run(engine.process(tenant, dest(), parts()))
            assert out.reply is not None and out.reply.status == 502
            assert json.loads(out.reply.body)["reason"] == "backend_unavailable"
        elsewhere = asyncio.run(engine.process("acme", dest("unrelated.test"), parts()))
        assert elsewhere.reply is None and elsewhere.decision.verdict == "pass"
        backend.up.set()  # the vault comes back: the next pass learns the values
        assert engine.preloader.run_once()
        assert engine.scrubber.scrub(VALUE.encode(), "acme")[1] == 1
        ok = asyncio.run(engine.process("acme", dest(), parts()))
        assert ok.reply is None
    finally:
        engine.close()


def test_a_request_waits_for_the_first_pass_rather_than_failing(tmp_path: Path) -> None:
    backend = Flaky({"API_KEY": VALUE, "OTHER": OTHER})
    engine = _engine_with(tmp_path, backend)
    try:

        async def scenario() -> Any:
            task = asyncio.create_task(engine.process("acme", dest(), parts()))
            await asyncio.sleep(0.05)
            assert not task.done()  # held, not refused
            backend.up.set()
            engine.preloader.start()
            return await asyncio.wait_for(task, 5)

        out = asyncio.run(scenario())
        assert out.reply is None and engine.scrubber.scrub(VALUE.encode())[1] == 1
    finally:
        engine.close()


def test_a_rotated_value_is_learned_after_the_cache_expires(tmp_path: Path) -> None:
    backend = Flaky({"API_KEY": VALUE, "OTHER": OTHER})
    backend.up.set()
    now = [0.0]
    policy = make_policy(tmp_path)
    scrubber = Scrubber("python", background=False)

    def remember(tenant: str, name: str, value: SecretValue) -> None:
        scrubber.add(value.reveal_bytes(), f"<<secret:{name}>>".encode(), (tenant, name))

    resolver = Resolver(
        {"local": backend}, {"local": 60.0}, on_value=remember, clock=lambda: now[0]
    )
    loader = Preloader(policy, resolver, {"local": 60.0})
    assert loader.run_once() and backend.reads == 2
    backend.values["API_KEY"] = ROTATED
    assert loader.run_once() and backend.reads == 2  # still cached: no read
    now[0] += 61  # the loop waits cache_ttl + a margin, so the entry has expired
    assert loader.run_once() and backend.reads == 4
    assert scrubber.scrub(f"{VALUE} {ROTATED}".encode())[1] == 2  # old and new


def test_refresh_period_follows_the_shortest_ttl(tmp_path: Path) -> None:
    resolver = Resolver({}, {})
    assert Preloader(make_policy(tmp_path), resolver, {"local": 30.0})._refresh == 30.5
    assert Preloader(make_policy(tmp_path), resolver, {"local": 0.0})._refresh == 60.0


@pytest.mark.parametrize("weak", ["1234", "true", "12345678", "aaaaaaaaaaaaaaaaaaaa"])
def test_an_unprotectable_value_is_never_used_and_blocks_nothing(tmp_path: Path, weak: str) -> None:
    engine = Engine(make_policy(tmp_path), env={"API_KEY": weak, "OTHER": OTHER})
    try:
        assert asyncio.run(engine.preloader.wait_first_pass(5))
        assert engine.preloader.pending == frozenset()
        out = asyncio.run(engine.process("acme", dest(), parts("Bearer <<secret:api>>")))
        assert out.reply is not None and out.reply.status == 502
        body = json.loads(out.reply.body)
        assert body["reason"] == "unprotectable_secret" and weak not in out.reply.body.decode()
        assert engine.scrubber.scrub(f"x{weak}x".encode())[1] == 0  # not a pattern
    finally:
        engine.close()


def test_reload_preloads_the_new_policys_secrets(tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "policy.yaml"
    data: dict[str, Any] = {
        "version": 1,
        "audit": {"path": "audit.jsonl"},
        "backends": {"local": {"type": "env"}},
        "tenants": {"acme": {"token_sha256": "a" * 64}},
    }
    path.write_text(yaml.safe_dump(data))
    engine = Engine.from_file(path, env={"API_KEY": VALUE})
    try:
        first = engine.preloader
        data["tenants"]["acme"]["secrets"] = {
            "api": {"backend": "local", "path": "API_KEY", "hosts": [API]}
        }
        path.write_text(yaml.safe_dump(data))
        assert engine.reload() == []
        assert engine.preloader is not first and first._stop.is_set()
        assert asyncio.run(engine.preloader.wait_first_pass(5))
        assert engine.scrubber.scrub(VALUE.encode(), "acme") == (b"<<secret:api>>", 1)
    finally:
        engine.close()


def test_preload_unknown_serve_forwards_after_the_first_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = Flaky({"API_KEY": VALUE, "OTHER": OTHER})
    engine = _engine_with(tmp_path, backend)
    try:
        engine.policy = engine.policy.model_copy(update={"preload_unknown": "serve"})
        assert not engine.preloader.run_once()
        engine.preloader._first_pass.set()
        out = asyncio.run(engine.process("globex", dest(), parts()))
        assert out.reply is None and out.decision.verdict == "pass"
    finally:
        engine.close()
