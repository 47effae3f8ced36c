"""Size and encoding attacks on requests: bodies over `limits.max_request_body`
(with a length, chunked, HTTP/2, or small on the wire but huge once
decompressed), huge headers, invalid UTF-8 in headers, path and body."""

from __future__ import annotations

import time

import pytest

from tests.security.conftest import (
    LIMIT,
    Sec,
    Wire,
    assert_no_leak,
    h2_get,
    h2_tunnel,
    request,
    tunnel,
)
from tests.support.proxy import Proxy
from tests.support.upstream import Upstream, bomb

pytestmark = pytest.mark.integration

CT = ("Content-Type", "text/plain")


def acme_tunnel(proxy: Proxy, sec: Sec) -> Wire:
    return tunnel(proxy, f"127.0.0.1:{sec.port}", creds=(sec.sc.acme.name, sec.sc.acme.token))


def _too_large(status: int, reason: str | None) -> bool:
    return (status, reason) == (413, "body_too_large")


def test_body_over_limit_with_length(sbroker: Proxy, sec: Sec, upstream: Upstream) -> None:
    """Attack: a body just over limits.max_request_body (Content-Length),
    with a placeholder at its end.
    Expected: 413 body_too_large; nothing upstream."""
    upstream.clear()
    body = b"a" * (LIMIT - 8) + b"<<secret:anywhere>>"
    data = request("POST", "/echo/big", "x", [CT], body)
    head = data[: data.index(b"\r\n\r\n") + 4]
    with acme_tunnel(sbroker, sec) as w:
        # The head alone: keybroker answers from Content-Length, before the
        # body. (Sent whole, the body races the refusal: the broker closes
        # with body bytes unread, its kernel resets the connection, and the
        # client may get EPIPE, or lose the 413, before it reads.)
        w.send(head)
        resp = w.response()
    assert _too_large(resp.status, resp.reason), resp.raw[:300]
    assert upstream.received == [] and upstream.connections == 0


def test_body_over_limit_chunked(sbroker: Proxy, sec: Sec, upstream: Upstream) -> None:
    """Attack: the same oversized body sent chunked, without Content-Length.
    Expected: 413 body_too_large; nothing upstream."""
    upstream.clear()
    chunk = b"a" * 65536
    n = LIMIT // len(chunk) + 2
    body = (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * n + b"0\r\n\r\n"
    with acme_tunnel(sbroker, sec) as w:
        w.send(
            request("POST", "/echo/bigchunked", "x", [CT, ("Transfer-Encoding", "chunked")], body)
        )
        resp = w.response()
    assert _too_large(resp.status, resp.reason), resp.raw[:300]
    assert upstream.received == []


def test_body_over_limit_http2(sbroker: Proxy, sec: Sec, upstream: Upstream) -> None:
    """Attack: the oversized body as HTTP/2 DATA frames without content-length.
    Expected: 413 body_too_large (or a reset); nothing upstream."""
    upstream.clear()
    c = h2_tunnel(sbroker, sec, "acme")
    try:
        headers = h2_get(sec, "/echo/bigh2")
        headers[0] = (":method", "POST")
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(sid, headers)
        c.responses[sid] = {"status": None, "headers": [], "body": b"", "reset": False}
        sent = 0
        while sent <= LIMIT:
            window = min(c.conn.local_flow_control_window(sid), c.conn.max_outbound_frame_size)
            if window <= 0:
                c.flush()
                c.pump_once()
                continue
            c.conn.send_data(sid, b"a" * window)
            sent += window
            c.flush()
        c.conn.end_stream(sid)
        c.flush()
        c.pump([sid])
        r = c.responses[sid]
    finally:
        c.w.close()
    assert r["reset"] or r["status"] == 413, r["status"]
    assert upstream.received == []


@pytest.mark.parametrize("enc", ["gzip", "deflate", "br", "zstd"])
def test_request_decompression_bomb(sbroker: Proxy, sec: Sec, upstream: Upstream, enc: str) -> None:
    """Attack: a request body small on the wire (under the limit) that
    decodes to 64 MiB, 64x limits.max_request_body, so the broker's own
    decoding (to look for placeholders) exhausts memory.
    Expected: refused (413 body_too_large, or 400 undecodable_body) within a
    few seconds; nothing upstream."""
    data = bomb(enc, 64 << 20)
    assert len(data) < LIMIT
    upstream.clear()
    t0 = time.monotonic()
    with acme_tunnel(sbroker, sec) as w:
        w.send(request("POST", "/echo/bomb", "x", [CT, ("Content-Encoding", enc)], data))
        resp = w.response()
    elapsed = time.monotonic() - t0
    assert resp.status in (400, 413) and resp.reason in ("body_too_large", "undecodable_body"), (
        resp.status,
        resp.reason,
    )
    assert upstream.received == []
    assert elapsed < 5.0


@pytest.mark.parametrize("where", ["allowed", "not-allowed"])
def test_huge_header(sbroker: Proxy, sec: Sec, upstream: Upstream, where: str) -> None:
    """Attack: a 256 KiB header value with the placeholder at its very end,
    in an allowed location (Authorization) or not (X-Padding), hoping the
    scanner gives up on long values.
    Expected: decided on the whole value: not allowed -> 403
    location_not_allowed (or a 4xx), nothing upstream; allowed -> the value
    in Authorization only (the test upstream may refuse a 256 KiB line: a
    502 ``upstream_protocol_error``). The broker keeps serving."""
    name = "Authorization" if where == "allowed" else "X-Padding"
    upstream.clear()
    with acme_tunnel(sbroker, sec) as w:
        try:
            w.send(request("GET", "/echo/hh", "x", [(name, "p" * 262_144 + "<<secret:stripe>>")]))
        except OSError:  # the broker answered an oversized head and closed mid-send
            pass
        try:
            resp = w.response()
            status, reason, raw = resp.status, resp.reason, resp.raw
        except (EOFError, OSError):
            status, reason, raw = 499, None, b""
    assert_no_leak(raw, sec)
    if where == "not-allowed":
        assert 400 <= status < 500 and upstream.received == [], raw[:300]
        assert status != 403 or reason == "location_not_allowed"
    elif status == 200:
        assert sec.stripe_of("acme") in (upstream.received[-1].header("authorization") or "")
    else:  # refused by mitmproxy (4xx) or by the upstream (its line limit: keybroker's 502)
        assert 400 <= status < 500 or (status, reason) == (502, "upstream_protocol_error"), raw[
            :300
        ]
    with acme_tunnel(sbroker, sec) as w:  # still serving
        w.send(request("GET", "/echo/after", "x"))
        assert w.response().status == 200


def test_many_headers(sbroker: Proxy, sec: Sec, upstream: Upstream) -> None:
    """Attack: 5,000 headers, the last one a placeholder in a location the
    secret does not allow.
    Expected: 403 location_not_allowed or a 4xx for the header count;
    never forwarded."""
    upstream.clear()
    hs = [(f"X-F{i}", "v") for i in range(5000)] + [("X-Api-Key", "<<secret:stripe>>")]
    with acme_tunnel(sbroker, sec) as w:
        w.send(request("GET", "/echo/many", "x", hs))
        resp = w.response()
    assert 400 <= resp.status < 500 and upstream.received == [], resp.raw[:300]


INVALID = {
    "header-allowed": (
        "GET",
        "/echo/u8",
        [("Authorization", "Bearer \udcff\udcfe<<secret:stripe>>")],
        b"",
        "header",
    ),
    "header-not-allowed": ("GET", "/echo/u8", [("X-Note", "\udcff<<secret:stripe>>")], b"", None),
    "path-allowed": ("GET", "/echo/\udcff\udcfe/<<secret:anywhere>>", [], b"", "path"),
    "body-raw": ("POST", "/echo/u8", [CT], b"\xff\xfe\xc0<<secret:anywhere>>\xed\xa0\x80", "body"),
    "body-json": (
        "POST",
        "/echo/u8",
        [("Content-Type", "application/json")],
        b'{"a": "\xff\xfe", "k": "<<secret:anywhere>>"}',
        "body",
    ),
    "body-form": (
        "POST",
        "/echo/u8",
        [("Content-Type", "application/x-www-form-urlencoded")],
        b"a=\xff&k=<<secret:anywhere>>",
        "body",
    ),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_utf8(sbroker: Proxy, sec: Sec, upstream: Upstream, case: str) -> None:
    """Attack: invalid UTF-8 (lone continuation bytes, an overlong form, an
    encoded surrogate) next to a placeholder in a header, the path or the body.
    Expected: decided exactly as without it: substituted where the rule
    allows (the invalid bytes go through unchanged), 403
    location_not_allowed elsewhere; no crash (no 502), no value back."""
    method, target, headers, body, loc = INVALID[case]
    upstream.clear()
    with acme_tunnel(sbroker, sec) as w:
        w.send(request(method, target, "x", headers, body))
        resp = w.response()
    assert_no_leak(resp.raw, sec)
    if loc is None:
        assert (resp.status, resp.reason) == (403, "location_not_allowed"), resp.raw[:300]
        assert upstream.received == []
        return
    assert resp.status == 200, resp.raw[:300]
    got = upstream.received[-1]
    secret = "stripe" if loc == "header" else "anywhere"
    value = sec.sc.values[f"acme/{secret}"].encode()
    wire = {
        "header": (got.header("authorization") or "").encode("latin-1", "replace"),
        "path": got.path.encode("latin-1", "replace"),
        "body": got.body,
    }[loc]
    assert value in wire
    if loc == "body":
        assert got.body.replace(value, b"<<secret:anywhere>>") == body
