"""The flow side of the canonical-request rules (addons/wire.py) and the
bounded chunk reader (addons/wire_http1.py); the layer patches run end to end in tests/security/test_desync.py."""

from __future__ import annotations

from collections.abc import Iterator

import h11
import pytest
from h11._receivebuffer import ReceiveBuffer
from mitmproxy import http
from mitmproxy.test import tflow

from addons import wire, wire_http1


def flow(fields: list[tuple[bytes, bytes]], method: bytes = b"GET") -> http.HTTPFlow:
    f = tflow.tflow()
    f.request.data.method = method
    f.request.headers = http.Headers([(b"Host", b"api.example.com"), *fields])
    return f


@pytest.mark.parametrize(
    ("method", "fields", "rule"),
    [
        (b"GET", [], None),
        (b"GET", [(b"Foo", b"bar\r\n Transfer-Encoding: chunked")], "obs-fold"),
        (b"GET", [(b"Foo", b"bar\rTransfer-Encoding: chunked")], "bare-cr"),
        (b"get", [], "method-case"),
        (b"POST", [(b"Transfer_Encoding", b"chunked")], "framing-lookalike"),
    ],
)
def test_head_problem(method: bytes, fields: list[tuple[bytes, bytes]], rule: str | None) -> None:
    bad = wire.head_problem(flow(fields, method))
    assert (None if bad is None else bad.rule) == rule


def test_head_problem_http2_reads_authority() -> None:
    f = flow([])
    f.request.headers = http.Headers([(b"host", b"other.example")])
    f.request.http_version = "HTTP/2.0"
    f.request.authority = "api.example.com"
    bad = wire.head_problem(f)
    assert bad is not None and bad.rule == "host-authority"


def test_trailer_problem() -> None:
    f = flow([])
    assert wire.trailer_problem(f) is None
    f.request.trailers = http.Headers([(b"X-Checksum", b"1")])
    assert wire.trailer_problem(f) is None
    f.request.trailers = http.Headers([(b"Content-Length", b"5")])
    bad = wire.trailer_problem(f)
    assert bad is not None and bad.rule == "trailer-field"


@pytest.fixture
def limit() -> Iterator[int]:
    before = wire_http1._limit[0]
    wire_http1.set_request_limit(100)
    yield 100
    wire_http1.set_request_limit(before)


def reader() -> wire_http1.BoundedChunks:
    r = h11._readers.ChunkedReader()
    r.__class__ = wire_http1.BoundedChunks
    assert isinstance(r, wire_http1.BoundedChunks)
    return r


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"10000000000000005\r\nhello", "chunk size overflows"),
        (b"65\r\n", wire_http1.TOO_LARGE),  # 101 > 100
        (b"40\r\n" + b"a" * 64 + b"\r\n25\r\n", wire_http1.TOO_LARGE),  # 64 + 37 > 100
    ],
)
def test_bounded_chunks_refuse_at_the_size_line(limit: int, body: bytes, message: str) -> None:
    r, buf = reader(), ReceiveBuffer()
    buf += body
    with pytest.raises(h11.RemoteProtocolError, match=message):
        while r(buf) is not None:
            pass


def test_bounded_chunks_read_a_body_within_the_limit(limit: int) -> None:
    r, buf = reader(), ReceiveBuffer()
    buf += b"40\r\n" + b"a" * 64 + b"\r\n24\r\n" + b"b" * 36 + b"\r\n0\r\n\r\n"
    events = []
    while (ev := r(buf)) is not None:
        events.append(ev)
        if isinstance(ev, h11.EndOfMessage):
            break
    data = b"".join(bytes(e.data) for e in events if isinstance(e, h11.Data))
    assert data == b"a" * 64 + b"b" * 36 and r.seen == 100


def test_install_is_idempotent() -> None:
    from mitmproxy.proxy.layers.http import _http1

    wire.install()
    patched = _http1.Http1Server.read_headers
    wire.install()
    assert _http1.Http1Server.read_headers is patched


def test_other_mitmproxy_versions_are_refused() -> None:
    wire.check_internals()  # the installed one is fine
    with pytest.raises(RuntimeError, match=r"mitmproxy 13\.0\.0"):
        wire.check_internals("13.0.0")
