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
from broker.request.decision import Destination, Reason
from broker.request.locations import RequestParts

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
    addon.egress.http_connect(f)
    return f


def request(addon: KeyBroker, client, tenant: str, host: str, port: int = 443, auth: str = ""):  # type: ignore[no-untyped-def]
    """The request path inside a tunnel, as KeyBroker.request runs it."""
    assert addon.engine is not None
    headers = (("authorization", auth),) if auth else ()
    dest = Destination.of("https", host, port, "GET", "/")
    parts = RequestParts(headers=headers, path="/", query="", body=b"")
    return asyncio.run(addon.engine.process(tenant, dest, parts, pins=addon.egress.pins(client)))


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


def test_connect_resolves_nothing(addon: KeyBroker) -> None:
    """Listed or not, private or not: no DNS query at CONNECT time (the
    private check runs per request, after the placeholder decisions)."""
    for host, cred in [
        ("api.example.com", f"acme:{TOKEN}"),
        ("meta.example", "free:free-token"),
        ("kbcanary_dns_0123456789abcdef.evil.example", "free:free-token"),
    ]:
        f = connect_flow(addon, host, cred=cred)
        assert f.response is None
    assert CALLS == []


def test_private_refused_on_the_request_path(addon: KeyBroker) -> None:
    client = tflow.tclient_conn()
    out = request(addon, client, "free", "meta.example")
    assert out.reply is not None and out.reply.status == 403
    assert out.decision.reason is Reason.PRIVATE_ADDRESS
    out = request(addon, client, "free", "169.254.169.254")
    assert out.decision.reason is Reason.PRIVATE_ADDRESS
    # a refused placeholder keeps its own reason
    out = request(addon, client, "free", "meta.example", auth="Bearer <<secret:nope>>")
    assert out.decision.reason is Reason.UNKNOWN_SECRET


def test_named_private_host_is_reached_and_pinned(addon: KeyBroker) -> None:
    DNS["api.example.com"] = ["169.254.169.254"]
    try:
        client = tflow.tclient_conn()
        out = request(addon, client, "acme", "api.example.com")
        assert out.reply is None  # named exactly in egress.allow: exempt
        pinned = addon.egress.pins(client).get("api.example.com", 443)
        assert pinned == ipaddress.ip_address("169.254.169.254")
    finally:
        DNS["api.example.com"] = ["93.184.216.34"]


def hook_data(client, host: str, port: int = 443) -> ServerConnectionHookData:  # type: ignore[no-untyped-def]
    return ServerConnectionHookData(server=Server(address=(host, port)), client=client)


def test_server_connect_uses_the_pinned_address_then_restores_the_name(addon: KeyBroker) -> None:
    client = tflow.tclient_conn()
    assert request(addon, client, "acme", "api.example.com").reply is None
    data = hook_data(client, "API.example.com")
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
    client = tflow.tclient_conn()
    assert request(addon, client, "acme", "api.example.com").reply is None
    data = hook_data(client, host, port)
    addon.egress.server_connect(data)
    assert data.server.error == NOT_CHECKED


def test_server_connect_without_any_pins(addon: KeyBroker) -> None:
    data = hook_data(tflow.tclient_conn(), "api.example.com")
    addon.egress.server_connect(data)
    assert data.server.error == NOT_CHECKED


def test_server_connect_fails_closed_on_error(
    addon: KeyBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = tflow.tclient_conn()
    assert request(addon, client, "acme", "api.example.com").reply is None

    def boom(*a: object) -> None:
        raise RuntimeError("kbcanary")

    monkeypatch.setattr(addon.egress, "_pin_connection", boom)
    data = hook_data(client, "api.example.com")
    addon.egress.server_connect(data)
    assert data.server.error == NOT_CHECKED
