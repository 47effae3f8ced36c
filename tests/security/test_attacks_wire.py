"""HTTP/2 wire hygiene (issue 19): malformed HTTP/2 heads, an oversized
content-length answered before its body, and request trailers carried
from HTTP/2 to the HTTP/1.1 upstream. The HTTP/1 corpus is in
``test_desync.py``."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.security.conftest import Sec, assert_no_leak, connect, h2_get, h2_tunnel
from tests.support.proxy import Proxy
from tests.support.upstream import Upstream

pytestmark = pytest.mark.integration


def _with(headers: list[tuple[str, str]], name: str, value: str) -> list[tuple[str, str]]:
    """``headers`` with ``name`` replaced (or added) by ``value``."""
    out = [(k, v) for k, v in headers if k != name]
    if name.startswith(":"):
        return [(name, value), *out]
    return [*out, (name, value)]


H2_HEADS: dict[str, tuple[str, str]] = {
    "method-lower-case": (":method", "get"),
    "method-with-space": (":method", "GET /echo/other"),
    "path-with-space": (":path", "/echo/a b"),
    "path-with-vertical-tab": (":path", "/echo/a\x0bb"),
    "authority-with-space": (":authority", "127.0.0.1 x"),
    "te-not-trailers": ("te", "gzip"),
    "host-names-other-server": ("host", "evil.example"),
    "nul-in-value": ("x-note", "a\x00b"),
}


@pytest.mark.parametrize("case", list(H2_HEADS))
def test_http2_malformed_head_refused(
    sbroker: Proxy, sec: Sec, upstream: Upstream, case: str
) -> None:
    """Attack: an HTTP/2 stream whose pseudo-headers or fields an HTTP/1
    upstream would read differently once translated (a space in :method or
    :path splits the request line; a lower-case method passes an upper-case
    rule; Host naming another server than :authority; TE other than
    trailers; a NUL).
    Expected: the stream is reset or answered 4xx; nothing reaches the
    upstream, no value anywhere. (The h2 library and mitmproxy already refuse
    all but the lower-case method, which only keybroker's rule catches; the
    rest pin that layering.)"""
    upstream.clear()
    name, value = H2_HEADS[case]
    c = h2_tunnel(sbroker, sec, "acme", validate=False)
    try:
        sid = c.send(_with(h2_get(sec, "/echo/h2wire"), name, value))
        c.flush()
        c.pump([sid])
        r = c.responses[sid]
    finally:
        c.w.close()
    assert r["reset"] or r["status"] is None or 400 <= r["status"] < 500, r
    assert upstream.received == [], [x.path for x in upstream.received]
    assert_no_leak(r["body"], sec)


def test_http2_oversized_content_length_answered_before_body(
    sbroker: Proxy, sec: Sec, upstream: Upstream
) -> None:
    """Attack: an HTTP/2 POST declaring a content-length far over
    ``limits.max_request_body``, sending three bytes and then waiting.
    Expected: 413 body_too_large at once (the body is never waited for), the
    stream then reset; nothing upstream."""
    upstream.clear()
    c = h2_tunnel(sbroker, sec, "acme")
    try:
        headers = [*h2_get(sec, "/echo/h2big"), ("content-length", str(10**12))]
        headers[0] = (":method", "POST")
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(sid, headers, end_stream=False)
        c.conn.send_data(sid, b"abc")
        c.responses[sid] = {"status": None, "headers": [], "body": b"", "reset": False}
        c.flush()
        c.w.sock.settimeout(5.0)
        t0 = time.monotonic()
        c.pump([sid])
        took = time.monotonic() - t0
        r = c.responses[sid]
    finally:
        c.w.close()
    assert r["status"] == 413, r
    assert took < 5.0
    assert upstream.received == []


def _h2_post_with_trailer(
    sbroker: Proxy, sec: Sec, path: str, trailer: tuple[str, str]
) -> dict[str, Any]:
    """POST ``hello`` over HTTP/2 to ``path``, ending the stream with ``trailer``."""
    c = h2_tunnel(sbroker, sec, "acme")
    try:
        headers = h2_get(sec, path)
        headers[0] = (":method", "POST")
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(sid, headers, end_stream=False)
        c.conn.send_data(sid, b"hello")
        c.conn.send_headers(sid, [trailer], end_stream=True)
        c.responses[sid] = {"status": None, "headers": [], "body": b"", "reset": False}
        c.flush()
        c.w.sock.settimeout(10.0)
        c.pump([sid])
        return c.responses[sid]
    finally:
        c.w.close()


def test_http2_trailers_reach_http1_upstream(sbroker: Proxy, sec: Sec, upstream: Upstream) -> None:
    """An HTTP/2 POST with request trailers, to an HTTP/1.1 upstream: HTTP/1.1
    carries trailers only in a chunked body, so the request goes chunked.
    Expected: answered 200 (no hang, no crash), the upstream receives the
    body chunked and the value substituted in the header."""
    upstream.clear()
    r = _h2_post_with_trailer(sbroker, sec, "/echo/h2trailers", ("x-checksum", "1"))
    assert r["status"] == 200, r
    got = upstream.last
    assert got is not None and got.path == "/echo/h2trailers" and got.body == b"hello"
    assert (got.header("transfer-encoding") or "").lower() == "chunked"
    assert got.header("authorization") == f"Bearer {sec.stripe_of('acme')}"
    assert_no_leak(r["body"], sec)


def test_http2_forbidden_trailer_refused(sbroker: Proxy, sec: Sec, upstream: Upstream) -> None:
    """Attack: an HTTP/2 request whose trailer is a framing or routing field
    (a Host after the body, naming another server).
    Expected: 400 malformed_request; nothing upstream."""
    upstream.clear()
    r = _h2_post_with_trailer(sbroker, sec, "/echo/h2badtrailer", ("authorization", "Bearer x"))
    assert r["reset"] or r["status"] == 400, r
    assert upstream.received == []


def test_absolute_form_host_is_the_target(sbroker: Proxy, sec: Sec, plain_upstream: Any) -> None:
    """Attack: a plain-http absolute-form request whose Host names another
    server than its target (an origin routes by Host; RFC 9112 §3.2.2 says
    the target wins).
    Expected: forwarded origin-form with Host set to the target's authority."""
    target = f"127.0.0.1:{sec.plain_port}"
    auth = Proxy.auth_header(sec.sc.acme.name, sec.sc.acme.token)
    n = len(plain_upstream.received)
    with connect(sbroker) as w:
        w.send(
            f"GET http://{target}/echo/absform HTTP/1.1\r\nHost: evil.example\r\n"
            f"Proxy-Authorization: {auth}\r\n\r\n".encode()
        )
        resp = w.response()
    assert resp.status == 200, resp.raw[:300]
    got = plain_upstream.received[n:]
    assert [r.path for r in got] == ["/echo/absform"]
    assert [v for k, v in got[0].headers if k.lower() == "host"] == [target]
