"""Wire hygiene (issue 19): the request forwarded is the request decided on,
and every request gets an answer or a clean close in bounded time.

The rules live in :mod:`broker.request.canonical`; :func:`head_problem` and
:func:`trailer_problem` read them off a flow for the addon. :func:`install`
patches mitmproxy 12 once per process: the HTTP/1 connection layer
(:mod:`addons.wire_http1`) and, here, ``HttpStream.state_wait_for_request_headers``:
a response an addon sets in ``requestheaders`` (a refusal) is sent at once,
before any body is read and without ``100 Continue``, and the HTTP/1
connection is closed after it (a 413 for a ``Content-Length`` past the limit
was queued behind a body that never came); an absolute-form request goes
upstream origin-form with Host = the target's authority (RFC 9112 §3.2.2).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from h11._readers import ChunkedReader
from h11._receivebuffer import ReceiveBuffer
from mitmproxy import http
from mitmproxy.proxy import commands, layer
from mitmproxy.proxy.layers import http as http_layer
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.proxy.layers.http._events import (
    ErrorCode,
    ResponseProtocolError,
)
from mitmproxy.proxy.layers.http._hooks import HttpRequestHeadersHook, HttpResponseHeadersHook

from addons.wire_http1 import Gen, patch_read_body, patch_read_headers, patch_send
from broker.request.canonical import Malformed, check_request, check_trailers

__all__ = ["check_internals", "head_problem", "install", "trailer_problem"]

_installed: list[bool] = []


# -- rules read off a flow -----------------------------------------------------------------------
def head_problem(flow: http.HTTPFlow) -> Malformed | None:
    """The canonical-request rule the request head breaks, or None."""
    r = flow.request
    h2 = r.is_http2 or r.is_http3
    return check_request(
        r.data.method,
        r.data.path or b"/",
        b"HTTP/2.0" if h2 else r.data.http_version,
        r.headers.fields,
        authority=r.data.authority if h2 else b"",
        http2=h2,
    )


def trailer_problem(flow: http.HTTPFlow) -> Malformed | None:
    trailers = flow.request.trailers
    return None if not trailers else check_trailers(trailers.fields)


# -- patches -------------------------------------------------------------------------------------
def check_internals(version: str | None = None) -> None:
    """The patches below wrap mitmproxy 12 internals: refuse (at start-up)
    any other major version, or a 12.x whose internals moved, rather than
    run with guarantees no test has checked."""
    from mitmproxy.version import VERSION

    version = version or VERSION
    probe = ChunkedReader()
    missing = [
        name
        for name, ok in (
            ("Http1Server.read_headers", hasattr(_http1.Http1Server, "read_headers")),
            ("Http1Connection.read_body", hasattr(_http1.Http1Connection, "read_body")),
            (
                "HttpStream.state_wait_for_request_headers",
                hasattr(http_layer.HttpStream, "state_wait_for_request_headers"),
            ),
            ("ChunkedReader._bytes_in_chunk", hasattr(probe, "_bytes_in_chunk")),
            ("ReceiveBuffer._data", hasattr(ReceiveBuffer(), "_data")),
        )
        if not ok
    ]
    if not version.startswith("12.") or missing:
        raise RuntimeError(
            f"keybroker's wire patches (addons/wire.py) are written for mitmproxy 12; "
            f"this is mitmproxy {version}{' without ' + ', '.join(missing) if missing else ''}"
        )


def install() -> None:
    """Apply the patches once per process (idempotent)."""
    if _installed:
        return
    check_internals()
    _installed.append(True)
    server, conn, stream = _http1.Http1Server, _http1.Http1Connection, http_layer.HttpStream
    server.read_headers = patch_read_headers(server.read_headers)  # type: ignore[method-assign]
    conn.read_body = patch_read_body(conn.read_body)  # type: ignore[method-assign]
    _http1.Http1Client.send = patch_send(_http1.Http1Client.send)  # type: ignore[method-assign]
    server.send = patch_send(server.send)  # type: ignore[method-assign]
    stream.state_wait_for_request_headers = _answer_before_body(  # type: ignore[method-assign]
        stream.state_wait_for_request_headers
    )


def _answer_before_body(orig: Callable[..., Gen]) -> Callable[..., Gen]:
    @functools.wraps(orig)
    def state_wait_for_request_headers(self: http_layer.HttpStream, event: Any) -> Gen:
        req = event.request
        h1 = not (req.is_http2 or req.is_http3)
        if (
            h1
            and req.data.authority
            and req.method != "CONNECT"
            and len(req.headers.get_all("host")) <= 1
        ):
            # RFC 9112 §3.2.2: the target's authority, not Host, names the
            # server; forward origin-form with that Host (inside a tunnel the
            # destination is still the tunnel's: a differing Host is fronting).
            req.headers["host"] = req.data.authority.decode("ascii", "replace")
            if self.mode is not http_layer.HTTPMode.regular:
                req.data.authority = b""
        gen = orig(self, event)
        result: Any = None
        while True:
            try:
                cmd = gen.send(result)
            except StopIteration:
                return
            result = yield cmd
            flow = getattr(self, "flow", None)
            if (
                isinstance(cmd, HttpRequestHeadersHook)
                and not event.end_stream
                and flow is not None
                and flow.response is not None
                and flow.error is None
            ):
                gen.close()
                yield from _respond_now(self, flow, h1)
                return

    return state_wait_for_request_headers


def _respond_now(stream: http_layer.HttpStream, flow: http.HTTPFlow, h1: bool) -> Gen:
    """Send the response an addon set in ``requestheaders`` without reading the
    body; HTTP/1: ``Connection: close`` and a half-close (the rest of the body
    is read and dropped, so the close is not a reset that loses the answer);
    HTTP/2: the stream is reset once the response is out (RFC 9113 §8.1)."""
    assert flow.response is not None
    if h1:
        flow.response.headers["connection"] = "close"
    flow.response.timestamp_start = time.time()
    stream.client_state = stream.state_done
    yield HttpResponseHeadersHook(flow)
    if (yield from stream.check_killed(True)):
        return
    yield from stream.send_response()
    stream.client_state = stream.state_errored  # the body still on its way is dropped
    if h1:
        yield commands.CloseTcpConnection(stream.context.client, half_close=True)
    else:
        yield http_layer.SendHttp(
            ResponseProtocolError(stream.stream_id, "answered", ErrorCode.CLIENT_DISCONNECTED),
            stream.context.client,
        )


_ = layer  # the generator protocol above is mitmproxy's layer.CommandGenerator
