"""The egress shell (addons/egress.py): CONNECT refusal at once, and every
upstream connection going to the pinned address and nowhere else."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from mitmproxy.connection import ConnectionState, Server
from mitmproxy.proxy.server_hooks import ServerConnectionHookData
from mitmproxy.test import taddons, tflow

from addons.egress import NOT_CHECKED
from addons.keybroker import KeyBroker
from broker.engine import Engine
from broker.policy.load import parse_policy

TOKEN = "kb_test_token_for_egress"
DNS = {"api.example.com": ["93.184.216.34"], "meta.example": ["169.254.169.254"]}
CALLS: list[str] = []


async def lookup(host: str, port: int) -> Sequence[str]:
    CALLS.append(host)
    return DNS[host]


@pytest.fixture
def addon(tmp_path: Path) -> Iterator[KeyBroker]:
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    policy = parse_policy(
        {
            "version": 1,
            "certs_dir": str(tmp_path / "certs"),
            "audit": {"path": str(tmp_path / "audit.jsonl")},
            "tenants": {
                "acme": {"token_sha256": digest, "egress": {"allow": ["api.example.com"]}},
                "free": {"token_sha256": hashlib.sha256(b"free-token").hexdigest()},
            },
        },
        "t.yaml",
        tmp_path,
    )
    engine = Engine(policy, lookup=lookup)
    a = KeyBroker(engine)
    CALLS.clear()
    with taddons.context(a):
        yield a
    engine.close()


def connect_flow(addon: KeyBroker, host: str, port: int = 443, cred: str = f"acme:{TOKEN}"):  # type: ignore[no-untyped-def]
    f = tflow.tflow()
    f.request.method, f.request.host, f.request.port = "CONNECT", host, port
    f.request.headers["proxy-authorization"] = "Basic " + base64.b64encode(cred.encode()).decode(
        "ascii"
    )
    addon.http_connect(f)
    asyncio.run(addon.egress.http_connect(f))
    return f


def audit(tmp: KeyBroker) -> list[dict[str, object]]:
    assert tmp.engine is not None
    path = tmp.engine.policy.audit.path
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_unlisted_connect_refused_at_once(addon: KeyBroker) -> None:
    f = connect_flow(addon, "evil.example")
    assert f.response is not None and f.response.status_code == 403
    assert f.response.headers["x-keybroker-decision"] == "deny; reason=egress_denied"
    assert json.loads(f.response.content or b"")["reason"] == "egress_denied"
    assert CALLS == []  # refused before any DNS query
    rec = audit(addon)[-1]
    assert (rec["method"], rec["host"], rec["reason"], rec["status"]) == (
        "CONNECT",
        "evil.example",
        "egress_denied",
        403,
    )


def test_listed_connect_pins_the_address(addon: KeyBroker) -> None:
    f = connect_flow(addon, "api.example.com")
    assert f.response is None
    pinned = addon.egress.pins(f.client_conn).get("api.example.com", 443)
    assert pinned == ipaddress.ip_address("93.184.216.34")


def test_private_ip_connect_refused(addon: KeyBroker) -> None:
    assert addon.engine is not None
    f = connect_flow(addon, "169.254.169.254", 443)
    assert f.response is not None and f.response.status_code == 403
    # the allowlist comes first for this tenant; a listed private name:
    DNS["api.example.com"] = ["169.254.169.254"]
    try:
        g = connect_flow(addon, "api.example.com")
        assert g.response is None  # named exactly in egress.allow: exempt
    finally:
        DNS["api.example.com"] = ["93.184.216.34"]


def hook_data(client, host: str, port: int = 443) -> ServerConnectionHookData:  # type: ignore[no-untyped-def]
    return ServerConnectionHookData(server=Server(address=(host, port)), client=client)


def test_server_connect_uses_the_pinned_address_then_restores_the_name(addon: KeyBroker) -> None:
    f = connect_flow(addon, "api.example.com")
    data = hook_data(f.client_conn, "API.example.com")
    addon.egress.server_connect(data)
    assert data.server.error is None
    assert data.server.address == ("93.184.216.34", 443)
    data.server.state = ConnectionState.OPEN  # as mitmproxy sets it before server_connected
    addon.egress.server_connected(data)
    assert data.server.address == ("API.example.com", 443)  # connection reuse matches names


@pytest.mark.parametrize(
    ("host", "port"),
    [
        pytest.param("other.example", 443, id="never-checked"),
        pytest.param("api.example.com", 8443, id="checked-on-another-port"),
    ],
)
def test_server_connect_refuses_what_was_not_checked(
    addon: KeyBroker, host: str, port: int
) -> None:
    f = connect_flow(addon, "api.example.com")
    data = hook_data(f.client_conn, host, port)
    addon.egress.server_connect(data)
    assert data.server.error == NOT_CHECKED


def test_server_connect_without_any_pins(addon: KeyBroker) -> None:
    data = hook_data(tflow.tclient_conn(), "api.example.com")
    addon.egress.server_connect(data)
    assert data.server.error == NOT_CHECKED


def test_server_connect_fails_closed_on_error(
    addon: KeyBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = connect_flow(addon, "api.example.com")

    def boom(*a: object) -> None:
        raise RuntimeError("kbcanary")

    monkeypatch.setattr(addon.egress, "_pin_connection", boom)
    data = hook_data(f.client_conn, "api.example.com")
    addon.egress.server_connect(data)
    assert data.server.error == NOT_CHECKED


def test_a_known_value_in_the_connect_host_is_never_resolved(addon: KeyBroker) -> None:
    """DNS exfiltration: a raw value as a label of the CONNECT host must not
    reach the resolver (the request inside is refused as raw_secret_egress)."""
    assert addon.engine is not None
    value = "kbcanary_dns_0123456789abcdef"
    addon.engine.scrubber.add(value.encode(), b"<<secret:x>>", ("acme", "x"))
    for host in (f"{value}.evil.example", f"{value.upper()}.evil.example"):
        f = connect_flow(addon, host, cred="free:free-token")
        assert f.response is None
    assert CALLS == []
    connect_flow(addon, "meta.example", cred="free:free-token")
    assert CALLS == ["meta.example"]  # the guard is only for hosts carrying a value
