"""Request smuggling inside the tunnel: ambiguous HTTP/1.1 framing (two
Content-Length, CL+TE, obfuscated Transfer-Encoding, bare LF) and HTTP/2
framing and header tricks. The broker must reject them: no second request
hidden from its decision, nothing with a value reaching the upstream."""

from __future__ import annotations

from typing import Any

import pytest

from tests.security.conftest import Sec, assert_no_leak, connect, h2_get, h2_tunnel, tunnel
from tests.support.proxy import Proxy
from tests.support.upstream import Upstream

pytestmark = pytest.mark.integration


def smuggled(sec: Sec) -> bytes:
    """A whole request with a placeholder its rule allows (so a broker that
    saw it would substitute), to be hidden in the first request's body."""
    return (
        f"GET /echo/smuggled HTTP/1.1\r\nHost: 127.0.0.1:{sec.port}\r\n"
        "Authorization: Bearer <<secret:stripe>>\r\n\r\n"
    ).encode()


def framed(sec: Sec, head: list[str], body: bytes, nl: bytes = b"\r\n") -> bytes:
    lines = ["POST /echo/front HTTP/1.1", f"Host: 127.0.0.1:{sec.port}", *head]
    return nl.join(x.encode() for x in lines) + nl + nl + body


def cases(sec: Sec) -> dict[str, bytes]:
    s = smuggled(sec)
    chunk = b"0\r\n\r\n" + s
    return {
        "cl-cl": framed(sec, ["Content-Length: 4", f"Content-Length: {4 + len(s)}"], b"abcd" + s),
        "cl-cl-same-line": framed(sec, [f"Content-Length: 4, {4 + len(s)}"], b"abcd" + s),
        "cl-te": framed(
            sec, [f"Content-Length: {len(chunk)}", "Transfer-Encoding: chunked"], chunk
        ),
        "te-cl": framed(sec, ["Transfer-Encoding: chunked", "Content-Length: 3"], chunk),
        "te-xchunked": framed(sec, ["Content-Length: 5", "Transfer-Encoding: xchunked"], chunk),
        "te-space-before-colon": framed(
            sec, ["Content-Length: 5", "Transfer-Encoding : chunked"], chunk
        ),
        "te-tab": framed(sec, ["Content-Length: 5", "Transfer-Encoding:\tchunked"], chunk),
        "te-chunked-identity": framed(sec, ["Transfer-Encoding: chunked, identity"], chunk),
        "te-twice": framed(
            sec, ["Transfer-Encoding: chunked", "Transfer-Encoding: identity"], chunk
        ),
        "te-line-folding": framed(
            sec, ["Content-Length: 5", "Transfer-Encoding:", " chunked"], chunk
        ),
        "te-vertical-tab": framed(
            sec, ["Content-Length: 5", "Transfer-Encoding:\x0bchunked"], chunk
        ),
        "chunk-size-overflow": framed(
            sec, ["Transfer-Encoding: chunked"], b"1" + b"0" * 16 + b"5\r\nhello\r\n" + chunk
        ),
        "chunk-size-0x": framed(sec, ["Transfer-Encoding: chunked"], b"0x5\r\nhello\r\n" + chunk),
        "bare-lf": framed(
            sec, ["Content-Length: 4", f"Content-Length: {4 + len(s)}"], b"abcd" + s, nl=b"\n"
        ),
        "negative-cl": framed(sec, ["Content-Length: -1"], s),
        "cl-plus-sign": framed(sec, [f"Content-Length: +{len(s)}"], s),
    }


NAMES = [
    "cl-cl",
    "cl-cl-same-line",
    "cl-te",
    "te-cl",
    "te-xchunked",
    "te-space-before-colon",
    "te-tab",
    "te-chunked-identity",
    "te-twice",
    "te-line-folding",
    "te-vertical-tab",
    "chunk-size-overflow",
    "chunk-size-0x",
    "bare-lf",
    "negative-cl",
    "cl-plus-sign",
]


@pytest.mark.parametrize("case", NAMES)
def test_ambiguous_http1_framing_rejected(
    sbroker: Proxy, sec: Sec, upstream: Upstream, case: str
) -> None:
    """Attack: inside an allowed tunnel, a POST whose framing two parsers read
    differently, hiding a second request with an allowed placeholder.
    Expected: rejected (4xx or the connection closed, never a 2xx for the
    front request); the hidden request never reaches the upstream with a
    value, and nothing reaches it at all."""
    raw = cases(sec)[case]
    upstream.clear()
    with tunnel(sbroker, f"127.0.0.1:{sec.port}", creds=(sec.sc.acme.name, sec.sc.acme.token)) as w:
        w.send(raw)
        data = w.rest(2.0)
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    assert status == 0 or 400 <= status < 500, data[:300]
    assert b"HTTP/1.1 2" not in data, "no part of the smuggling request may succeed"
    leaked = [r.path for r in upstream.received if sec.stripe_of("acme") in str(r.headers)]
    assert leaked == [], "a hidden request reached the upstream with a value"
    assert upstream.received == []
    assert_no_leak(data, sec)


H2_CASES: dict[str, list[tuple[str, str]]] = {
    "control-legal-stream": [],
    "crlf-in-header-value": [("x-note", "a\r\nAuthorization: Bearer <<secret:stripe>>")],
    "lf-in-header-value": [("x-note", "a\nGET /echo/smuggled HTTP/1.1")],
    "transfer-encoding-header": [("transfer-encoding", "chunked")],
    "content-length-mismatch": [("content-length", "1")],
    "colon-in-header-name": [("x:evil", "1")],
    "upper-case-header-name": [("X-Upper", "1")],
    "connection-header": [("connection", "keep-alive")],
}


@pytest.mark.parametrize("case", list(H2_CASES))
def test_http2_to_http1_smuggling_rejected(
    sbroker: Proxy, sec: Sec, upstream: Upstream, case: str
) -> None:
    """Attack: an HTTP/2 stream whose headers are illegal in HTTP/2 and would
    split or re-frame the HTTP/1.1 request the broker writes upstream (CR/LF
    in a value, transfer-encoding, a content-length that lies about the DATA,
    a colon in a name, upper case, a connection header).
    Expected: the stream (or connection) is reset or answered 4xx; the
    upstream receives nothing: no split request, no value."""
    upstream.clear()
    c = h2_tunnel(sbroker, sec, "acme", validate=False)
    try:
        body = b"x" * 10 if case == "content-length-mismatch" else b""
        headers = h2_get(sec, "/echo/h2smuggle", *H2_CASES[case])
        if body:
            headers[0] = (":method", "POST")
        sid = c.send(headers, body)
        c.flush()
        c.pump([sid])
        r = c.responses[sid]
    finally:
        c.w.close()
    if case == "control-legal-stream":  # the harness can succeed: the rejections mean something
        assert r["status"] == 200 and len(upstream.received) == 1
        return
    assert r["reset"] or r["status"] is None or 400 <= r["status"] < 500, r
    assert upstream.received == [], [x.path for x in upstream.received]
    assert_no_leak(r["body"], sec)


def test_http2_body_without_length_is_framed_upstream(
    sbroker: Proxy, sec: Sec, upstream: Upstream
) -> None:
    """Attack: an HTTP/2 POST without content-length whose DATA is a whole
    HTTP/1.1 request; if the broker writes the body to the HTTP/1.1 upstream
    without framing, the upstream reads it as a second request the broker
    never decided or audited.
    Expected: the upstream receives exactly one request, whose body is the
    DATA (Content-Length or chunked), never `/echo/hidden`."""
    upstream.clear()
    hidden = (
        f"GET /echo/hidden HTTP/1.1\r\nHost: 127.0.0.1:{sec.port}\r\nX-Hidden: 1\r\n\r\n"
    ).encode()
    c = h2_tunnel(sbroker, sec, "acme")
    try:
        headers = h2_get(sec, "/echo/h2front")
        headers[0] = (":method", "POST")
        sid = c.send(headers, hidden)
        c.flush()
        c.pump([sid])
    finally:
        c.w.close()
    upstream.wait_for(2, timeout=1.0)
    assert [r.path for r in upstream.received] == ["/echo/h2front"]
    assert upstream.received[0].body == hidden


def test_h2c_upgrade_never_offered_upstream(sbroker: Proxy, sec: Sec, plain_upstream: Any) -> None:
    """Attack: a cleartext request asking the upstream to switch to h2c. Once
    switched, the connection would carry HTTP/2 mitmproxy does not parse:
    requests past the policy, responses past the scrubber.
    Expected: the request arrives without the upgrade headers (mitmproxy's
    DisableH2C stays in keybroker's addon set), so nothing switches."""
    before = len(plain_upstream.received)
    auth = Proxy.auth_header(sec.sc.acme.name, sec.sc.acme.token)
    target = f"127.0.0.1:{plain_upstream.port}"
    with connect(sbroker) as w:
        w.send(
            f"GET http://{target}/h2c HTTP/1.1\r\nHost: {target}\r\n"
            f"Proxy-Authorization: {auth}\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n".encode()
        )
        resp = w.response()
    assert resp.status == 200, resp.raw[:300]
    got = plain_upstream.received[before:]
    assert [r.path for r in got] == ["/h2c"]
    names = {k.lower() for k, _ in got[0].headers}
    assert not names & {"upgrade", "http2-settings"}, got[0].headers
    assert_no_leak(resp.raw, sec)
