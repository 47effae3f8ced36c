"""The addon's hooks with mitmproxy's taddons/tflow: identity, fail-closed
guards, restoring placeholders in stored flows, stream framing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.test import taddons, tflow

from addons.keybroker import KeyBroker
from broker.engine import Engine
from broker.scrub.layers import Snapshot
from tests.unit.conftest import basic, one_secret_policy

TOKEN = "kb_test_token_for_addon"
VALUE = "kbcanary_addon_0a1b2c3d4e5f60718293a4b5"


def auth(tenant: str = "acme", token: str = TOKEN) -> str:
    return basic(tenant, token)


@pytest.fixture
def addon(tmp_path: Path) -> Iterator[KeyBroker]:
    policy = one_secret_policy(tmp_path, TOKEN)
    engine = Engine(policy, env={"API_KEY": VALUE})
    a = KeyBroker(engine)
    with taddons.context(a):
        yield a
    engine.close()


def flow(host: str = "api.example.com", headers: dict[str, str] | None = None) -> http.HTTPFlow:
    f = tflow.tflow()
    f.request.scheme, f.request.host, f.request.port = "https", host, 443
    f.client_conn.sni = host
    f.request.headers.clear()
    f.request.headers["host"] = host  # HTTP/1.1 requires one (RFC 9112 §3.2)
    for k, v in (headers or {}).items():
        f.request.headers[k] = v
    return f


def send(a: KeyBroker, f: http.HTTPFlow) -> None:
    a.requestheaders(f)
    asyncio.run(a.request(f))


def test_no_credentials_407(addon: KeyBroker) -> None:
    f = flow(headers={"Authorization": "<<secret:api>>"})
    send(addon, f)
    assert f.response is not None and f.response.status_code == 407
    assert f.response.headers["proxy-authenticate"].startswith("Basic")


def test_connect_binds_tenant_to_connection(addon: KeyBroker) -> None:
    connect = flow()
    connect.request.method = "CONNECT"
    connect.request.headers["proxy-authorization"] = auth()
    addon.http_connect(connect)
    assert connect.response is None
    f = flow(
        headers={
            "Authorization": "Bearer <<secret:api>>",
            "Proxy-Authorization": auth("globex", "other"),
        }
    )
    f.client_conn = connect.client_conn
    send(addon, f)
    assert f.response is None
    assert f.request.headers["authorization"] == f"Bearer {VALUE}"
    assert "proxy-authorization" not in f.request.headers


def test_placeholders_restored_after_response(addon: KeyBroker) -> None:
    f = flow(headers={"Authorization": "Bearer <<secret:api>>", "Proxy-Authorization": auth()})
    send(addon, f)
    f.response = http.Response.make(
        200, f"echo {VALUE}".encode(), {"content-type": "text/plain", "content-length": "41"}
    )
    addon.responses.responseheaders(f)
    addon.responses.response(f)
    assert f.request.headers["authorization"] == "Bearer <<secret:api>>"
    assert VALUE.encode() not in (f.response.content or b"")
    assert VALUE not in json.dumps(f.get_state(), default=repr)


def _boom(*_: object, **__: object) -> None:
    raise RuntimeError(f"fault injected by a test {VALUE}")


@pytest.mark.parametrize(
    ("hook", "target"),
    [
        ("requestheaders", "addons.hooks.strip_proxy_headers"),
        ("request", "addons.hooks.request_body"),
        ("request_after_substitution", "addons.hooks.write_parts"),
    ],
)
def test_exception_in_hook_fails_closed(
    addon: KeyBroker, hook: str, target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(target, _boom)
    f = flow(headers={"Authorization": "Bearer <<secret:api>>", "Proxy-Authorization": auth()})
    send(addon, f)
    assert f.response is not None and f.response.status_code == 502
    assert json.loads(f.response.content or b"{}")["reason"] == "internal_error"
    assert VALUE not in str(f.request.headers)


def test_stream_never_returns_empty_bytes_midstream(addon: KeyBroker) -> None:
    f = flow(headers={"Proxy-Authorization": auth()})
    send(addon, f)
    f.response = http.Response.make(200, b"", {"content-type": "text/event-stream"})
    del f.response.headers["content-length"]
    addon.responses.responseheaders(f)
    stream = f.response.stream
    assert callable(stream)
    out = stream(b"data: partial")  # no newline: may be held, must not be b""
    assert out != b""
    assert f.response.headers.get("transfer-encoding") == "chunked"
    assert b"".join(stream(b"\n\n")) + b"".join(stream(b"")) != b""


@pytest.mark.parametrize(
    ("sni", "host_header"),
    [("cdn.example.net", None), (None, "fronted.example")],
    ids=["sni", "host-header"],
)
def test_domain_fronting_refused(
    addon: KeyBroker, sni: str | None, host_header: str | None
) -> None:
    headers = {"Authorization": "Bearer <<secret:api>>", "Proxy-Authorization": auth()}
    if host_header:
        headers["Host"] = host_header
    f = flow(headers=headers)
    f.client_conn.sni = sni
    send(addon, f)
    assert f.response is not None and f.response.status_code == 403
    assert json.loads(f.response.content or b"{}")["reason"] == "host_not_allowed"
    assert VALUE not in str(f.request.headers)


def test_every_proxy_header_field_is_stripped(addon: KeyBroker) -> None:
    f = flow(headers={"Authorization": "Bearer <<secret:api>>"})
    f.request.headers.fields += (
        (b"PROXY-Authorization", auth().encode()),
        (b"Proxy-Connection", b"keep-alive"),
        (b"proxy-connection", b"close"),
        (b"X-Other", b"kept"),
    )
    send(addon, f)
    assert f.response is None
    names = [k.lower() for k, _ in f.request.headers.fields]
    assert b"proxy-authorization" not in names and b"proxy-connection" not in names
    assert f.request.headers["x-other"] == "kept"


def _echoing_response(a: KeyBroker, body: bytes, headers: dict[str, str]) -> http.HTTPFlow:
    f = flow(headers={"Authorization": "Bearer <<secret:api>>", "Proxy-Authorization": auth()})
    send(a, f)
    f.response = http.Response.make(200, body, headers)
    return f


def test_buffered_response_headers_and_body_scrubbed_in_one_scan(
    addon: KeyBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = _echoing_response(addon, f"echo {VALUE}".encode(), {"x-reflect": VALUE})
    assert addon.engine is not None
    scans: list[int] = []
    real = Snapshot.occurrences
    monkeypatch.setattr(
        Snapshot, "occurrences", lambda snap, d: scans.append(len(d)) or real(snap, d)
    )
    addon.responses.responseheaders(f)
    assert f.response is not None and f.response.headers["x-reflect"] == VALUE  # nothing sent yet
    assert scans == []
    pieces = [f.response.data.reason]
    pieces += [part for field in f.response.headers.fields for part in field]
    pieces.append(f.response.raw_content or b"")
    addon.responses.response(f)
    assert f.response.headers["x-reflect"] == "<<secret:api>>"
    assert f.response.content == b"echo <<secret:api>>"
    assert f.response.headers["content-length"] == str(len(b"echo <<secret:api>>"))
    # One scan of reason, headers and body joined (6 pieces: the reason, 2
    # header fields before the content-length was set, and the body), each
    # occurrence then written into the piece it lies in. The done record
    # reuses the host and path its sent record cleaned: no further scan.
    assert len(pieces) == 6 and scans == [len(b"\n\n".join(pieces))]


@pytest.mark.parametrize(
    ("status", "method", "headers"),
    [
        (200, "GET", {"content-type": "text/event-stream"}),  # streamed
        (204, "GET", {}),  # no body
        (200, "HEAD", {}),
        (101, "GET", {"upgrade": "websocket"}),
    ],
    ids=["streamed", "204", "head", "101"],
)
def test_headers_that_leave_before_the_body_are_scrubbed_at_once(
    addon: KeyBroker, status: int, method: str, headers: dict[str, str]
) -> None:
    f = _echoing_response(addon, b"", {**headers, "x-reflect": VALUE})
    assert f.response is not None
    f.request.method = method
    if status == 101:  # a valid WebSocket handshake
        f.request.headers["upgrade"] = "websocket"
        f.request.headers["sec-websocket-version"] = "13"
    f.response.status_code = status
    if "text/event-stream" in headers.values():
        del f.response.headers["content-length"]
    addon.responses.responseheaders(f)
    assert f.response.headers["x-reflect"] == "<<secret:api>>"


def test_failing_buffered_response_hook_never_sends_unscrubbed_headers(
    addon: KeyBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = _echoing_response(addon, b"ok", {"x-reflect": VALUE})
    addon.responses.responseheaders(f)
    monkeypatch.setattr(addon.responses, "_scrub_body", _boom)
    addon.responses.response(f)
    assert f.response is not None and f.response.status_code == 502
    assert VALUE not in str(f.response.headers) and VALUE.encode() not in f.response.raw_content


def test_a_buffered_answer_holding_sse_deltas_has_them_joined(addon: KeyBroker) -> None:
    """An SDK that asked for a stream parses the answer as SSE whatever its
    type and length; a request keybroker cannot read as asking for one (a
    compressed body) gets that answer buffered: its deltas are joined too."""
    from tests.support.llm_stream import reassemble, stream_of

    pieces = [VALUE[i : i + 3] for i in range(0, len(VALUE), 3)]
    body = stream_of("chat", pieces)
    assert VALUE.encode() not in body  # no byte scan could find it
    f = _echoing_response(addon, body, {"content-type": "application/json"})
    addon.responses.responseheaders(f)
    addon.responses.response(f)
    assert f.response is not None
    text = "".join(reassemble(f.response.content or b"").values())
    assert VALUE not in text and "<<secret:api>>" in text
    assert f.response.headers["content-length"] == str(len(f.response.content or b""))
