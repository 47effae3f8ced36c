"""The one module that reaches into mitmproxy internals (addons/mitmshim.py).

These tests fail loudly when mitmproxy changes under it: the supported
version, every internal name and signature the shim relies on, and the
layer decision itself (TLS and HTTP guarded, anything else refused)."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import mitmproxy.version
import pytest
from mitmproxy import http
from mitmproxy.addons import proxyserver
from mitmproxy.options import Options
from mitmproxy.proxy import layer, layers, server
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.http import HttpLayer, HTTPMode, HttpStream
from mitmproxy.proxy.layers.http._events import ErrorCode, ResponseProtocolError
from mitmproxy.proxy.layers.websocket import WebsocketConnection, WebsocketLayer
from mitmproxy.test import tflow

from addons import mitmshim
from broker.request.responses import Reply


def test_mitmproxy_version_is_one_the_shim_was_checked_against() -> None:
    """Upgrading mitmproxy? Re-read addons/mitmshim.py against the new
    layers (http/__init__.py, _http1.py, _http2.py, websocket.py,
    next_layer.py, proxyserver.py), then extend SUPPORTED."""
    assert int(mitmproxy.version.VERSION.split(".")[0]) in mitmshim.SUPPORTED


def test_the_internals_the_shim_touches_still_exist() -> None:
    params = list(inspect.signature(HttpLayer.event_to_child).parameters)
    assert params == ["self", "child", "event"]
    assert HttpStream.child_layer is None  # class default; set on a protocol switch
    assert "passthrough" in vars(HttpStream)
    ctx = Context(tflow.tclient_conn(), Options())
    h = HttpLayer(ctx, HTTPMode.regular)
    assert h.streams == {} and h.connections == {} and h.mode is HTTPMode.regular
    assert set(vars(h)) <= {
        "context",
        "mode",
        "waiting_for_establishment",
        "streams",
        "command_sources",
        "connections",
        "_paused",
        "_paused_event_queue",
        "debug",
    }, "HttpLayer.__init__ grew state: the re-tag in choose_layer must be re-checked"
    assert callable(WebsocketConnection.send2)
    assert {"client_ws", "server_ws"} <= set(WebsocketLayer.__annotations__)
    assert "connections" in vars(proxyserver.Proxyserver())
    assert callable(server.ConnectionHandler.close_connection)
    assert "reuse_port" in inspect.signature(asyncio.BaseEventLoop.create_server).parameters
    assert {"KILL", "CANCEL", "CLIENT_DISCONNECTED", "PASSTHROUGH_CLOSE"} <= set(
        ErrorCode.__members__
    )
    assert ErrorCode.KILL.http_status_code() is None
    assert ErrorCode.GENERIC_SERVER_ERROR.http_status_code() == 502


class FakeGuard:
    def __init__(self, reply: Reply | None = None) -> None:
        self.reply = reply

    def head(self, flow: Any, response: http.Response) -> None:
        response.reason = "scrubbed"

    def trailers(self, flow: Any, trailers: http.Headers) -> None:
        pass

    def switch_allowed(self, flow: Any) -> bool:
        return False

    def scrubbed(self, flow: Any) -> bool:
        return False

    def leaks(self, data: bytes) -> bool:
        return b"SECRET" in data

    def tail(self) -> int:
        return 5

    def refusal(self, flow: Any, code: ErrorCode) -> Reply | None:
        return self.reply

    def control(self, flow: Any, from_client: bool, data: bytes) -> bytes | None:
        return data

    def client_failed(self, flow: Any) -> None:
        pass


def _nextlayer(proposed: layer.Layer | None) -> layer.NextLayer:
    ctx = Context(tflow.tclient_conn(), Options())
    nl = layer.NextLayer(ctx)
    nl.layer = proposed
    return nl


def _ctx() -> Context:
    return Context(tflow.tclient_conn(), Options())


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda c: layers.TCPLayer(c), id="raw-tcp"),
        pytest.param(lambda c: layers.UDPLayer(c), id="udp"),
        pytest.param(lambda c: layers.DNSLayer(c), id="dns"),
        pytest.param(lambda c: HttpLayer(c, HTTPMode.upstream), id="http-upstream-mode"),
    ],
)
def test_layers_that_bypass_the_hooks_are_refused(make: Any) -> None:
    nl = _nextlayer(make(_ctx()))
    mitmshim.choose_layer(nl, FakeGuard(), lambda _: None)
    assert type(nl.layer).__name__ == "_Refused"


@pytest.mark.parametrize("mode", [HTTPMode.regular, HTTPMode.transparent])
def test_http_layers_are_guarded(mode: HTTPMode) -> None:
    nl = _nextlayer(HttpLayer(_ctx(), mode))
    mitmshim.choose_layer(nl, FakeGuard(), lambda _: None)
    assert type(nl.layer).__name__ == "_GuardedHttpLayer"


def test_tls_then_http_stack_is_guarded_below() -> None:
    c = _ctx()
    layers.modes.HttpProxy(c)  # the layer the TLS layer is decided under
    tls = layers.ClientTLSLayer(c)
    tls.child_layer = HttpLayer(c, HTTPMode.regular)
    nl = _nextlayer(tls)
    mitmshim.choose_layer(nl, FakeGuard(), lambda _: None)
    assert nl.layer is tls and type(tls.child_layer).__name__ == "_GuardedHttpLayer"


def test_undecided_layer_is_asked_for_and_left_for_more_data() -> None:
    nl = _nextlayer(None)
    asked: list[object] = []
    mitmshim.choose_layer(nl, FakeGuard(), asked.append)
    assert asked == [nl] and nl.layer is None


def _guarded_layer(guard: FakeGuard) -> Any:
    nl = _nextlayer(HttpLayer(_ctx(), HTTPMode.regular))
    mitmshim.choose_layer(nl, guard, lambda _: None)
    return nl.layer


def test_error_page_before_the_head_becomes_the_reply() -> None:
    g = _guarded_layer(FakeGuard(Reply(502, {"content-type": "application/json"}, b"{}")))
    out = g._kb_filter(
        ResponseProtocolError(1, "page quoting SECRET", ErrorCode.GENERIC_SERVER_ERROR)
    )
    assert [type(e).__name__ for e in out] == [
        "ResponseHeaders",
        "ResponseData",
        "ResponseEndOfMessage",
    ]
    assert out[0].response.status_code == 502 and out[0].response.headers["connection"] == "close"


def test_error_after_the_head_is_a_cut_without_the_message() -> None:
    g = _guarded_layer(FakeGuard(None))
    g._kb_sent.add(1)
    (out,) = g._kb_filter(ResponseProtocolError(1, "SECRET", ErrorCode.GENERIC_SERVER_ERROR))
    assert isinstance(out, ResponseProtocolError) and "SECRET" not in out.message


def test_tripwire_sees_a_value_split_across_sends() -> None:
    from mitmproxy.proxy.layers.http._events import ResponseData

    g = _guarded_layer(FakeGuard())
    assert g._kb_filter(ResponseData(1, b"xxSEC")) == [ResponseData(1, b"xxSEC")]
    (out,) = g._kb_filter(ResponseData(1, b"RETyy"))
    assert isinstance(out, ResponseProtocolError) and out.code is ErrorCode.KILL
