"""The canonical-request rules (broker/request/canonical.py)."""

from __future__ import annotations

import pytest

from broker.request.canonical import check_request, check_trailers

HOST = (b"Host", b"api.example.com")
AUTH = (b"Authorization", b"Bearer <<secret:x>>")


def h1(
    fields: list[tuple[bytes, bytes]],
    method: bytes = b"GET",
    target: bytes = b"/v1/x?a=1",
    version: bytes = b"HTTP/1.1",
) -> str | None:
    bad = check_request(method, target, version, fields)
    return None if bad is None else bad.rule


@pytest.mark.parametrize(
    ("method", "fields", "rule"),
    [
        (b"GET", [HOST, AUTH], None),
        (b"POST", [HOST, (b"Content-Length", b"12")], None),
        (b"POST", [HOST, (b"Transfer-Encoding", b"chunked")], None),
        (b"POST", [HOST, (b"Transfer-Encoding", b"Chunked")], None),
        (b"GET", [HOST, (b"Expect", b"100-Continue")], None),
        (b"GET", [HOST, (b"X-Note", b"caf\xc3\xa9")], None),  # obs-text is opaque data
        (b"GET", [HOST, (b"X-Tab", b"a\tb")], None),
        (b"get", [HOST], "method-case"),
        (b"Get", [HOST], "method-case"),
        (b"GE(T", [HOST], "method"),
        (b"", [HOST], "method"),
        (b"GET", [HOST, (b"Foo", b"bar\r\n Transfer-Encoding: chunked")], "obs-fold"),
        (b"GET", [HOST, (b"Foo", b"bar\r\n\tx")], "obs-fold"),
        (b"GET", [HOST, (b"Foo", b"bar\rTransfer-Encoding: chunked")], "bare-cr"),
        (b"GET", [HOST, (b"X", b"X\r\tTransfer-Encoding: chunked")], "bare-cr"),
        (b"GET", [HOST, (b"Foo", b"bar\nTransfer-Encoding: chunked")], "bare-lf"),
        (b"GET", [HOST, (b"X", b"a\x00b")], "nul"),
        (b"GET", [HOST, (b"X", b"a\x0bb")], "ctl"),
        (b"GET", [HOST, (b"X", b"a\x7fb")], "ctl"),
        (b"GET", [HOST, (b"Transfer-Encoding ", b"chunked")], "field-name"),
        (b"GET", [HOST, (b"Transfer Encoding", b"chunked")], "field-name"),
        (b"GET", [HOST, (b"", b"x")], "field-name"),
        (b"POST", [HOST, (b"Transfer_Encoding", b"chunked")], "framing-lookalike"),
        (b"POST", [HOST, (b"Content_Length", b"5")], "framing-lookalike"),
        (b"POST", [HOST, (b"!Transfer-Encoding", b"chunked")], "framing-lookalike"),
        (b"POST", [HOST, (b"Transfer-Encoding.", b"chunked")], "framing-lookalike"),
        (b"GET", [HOST, (b"X-Transfer-Encoding", b"chunked")], None),
        (b"GET", [HOST, (b"HOST", b"api.example.com")], "host-twice"),
        (b"POST", [HOST, (b"Transfer-Encoding", b"\xa0chunked")], "framing-octet"),
        (b"POST", [HOST, (b"Content-Length", b"1"), (b"Content-Length", b"1")], "cl-twice"),
        (b"POST", [HOST, (b"Content-Length", b"+1")], "cl-value"),
        (b"POST", [HOST, (b"Content-Length", b"1, 2")], "cl-value"),
        (b"POST", [HOST, (b"Content-Length", b"9" * 19)], "cl-value"),
        (
            b"POST",
            [HOST, (b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked")],
            "cl-te",
        ),
        (b"POST", [HOST, (b"Transfer-Encoding", b"gzip, chunked")], "te-value"),
        (b"POST", [HOST, (b"Transfer-Encoding", b"chunked, identity")], "te-value"),
        (b"POST", [HOST, (b"Transfer-Encoding", b"identity")], "te-value"),
        (
            b"POST",
            [HOST, (b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"chunked")],
            "te-value",
        ),
        (b"GET", [HOST, HOST], "host-twice"),
        (b"GET", [(b"Host", b"a b")], "host-value"),
        (b"GET", [(b"Host", b"a.example/evil")], "host-value"),
        (b"GET", [(b"Host", b"user@a.example")], "host-value"),
        (b"GET", [AUTH], "host-missing"),
        (b"GET", [HOST, (b"Expect", b"100-continue, x")], "expect"),
        (b"GET", [HOST, (b"Expect", b"200-ok")], "expect"),
        (b"GET", [HOST, (b"Expect", b"100-continue"), (b"Expect", b"100-continue")], "expect"),
    ],
)
def test_http1_rules(method: bytes, fields: list[tuple[bytes, bytes]], rule: str | None) -> None:
    assert h1(fields, method) == rule


@pytest.mark.parametrize(
    ("target", "version", "fields", "rule"),
    [
        (b"*", b"HTTP/1.1", [HOST], None),
        (b"/a", b"HTTP/1.0", [], None),  # HTTP/1.0 needs no Host
        (b"/a b", b"HTTP/1.1", [HOST], "target"),
        (b"/a\tb", b"HTTP/1.1", [HOST], "target"),
        (b"/a\x00", b"HTTP/1.1", [HOST], "target"),
        (b"", b"HTTP/1.1", [HOST], "target"),
        (b"/a", b"HTTP/1.2", [HOST], "version"),
        (b"/a", b"HTTP/2.0", [HOST], "version"),
        (b"/a", b"HTTP/1.0", [(b"Transfer-Encoding", b"chunked")], "te-version"),
    ],
)
def test_http1_request_line(
    target: bytes, version: bytes, fields: list[tuple[bytes, bytes]], rule: str | None
) -> None:
    assert h1(fields, target=target, version=version) == rule


@pytest.mark.parametrize(
    ("method", "path", "authority", "fields", "rule"),
    [
        (b"GET", b"/a", b"api.example.com", [], None),
        (b"GET", b"/a", b"api.example.com", [(b"te", b"trailers")], None),
        (b"GET", b"/a", b"api.example.com", [(b"host", b"api.example.com")], None),
        (b"GET", b"/a b", b"api.example.com", [], "target"),
        (b"GET", b"/a\r\nX: y", b"api.example.com", [], "target"),
        (b"G ET", b"/a", b"api.example.com", [], "method"),
        (b"get", b"/a", b"api.example.com", [], "method-case"),
        (b"GET", b"/a", b"api.example.com x", [], "authority"),
        (b"GET", b"/a", b"api.example.com", [(b"x", b"a\r\nb: c")], "bare-lf"),
        (
            b"GET",
            b"/a",
            b"api.example.com",
            [(b"transfer-encoding", b"chunked")],
            "h2-connection-field",
        ),
        (b"GET", b"/a", b"api.example.com", [(b"connection", b"close")], "h2-connection-field"),
        (b"GET", b"/a", b"api.example.com", [(b"te", b"gzip")], "h2-te"),
        (b"GET", b"/a", b"api.example.com", [(b"host", b"other.example")], "host-authority"),
    ],
)
def test_http2_rules(
    method: bytes,
    path: bytes,
    authority: bytes,
    fields: list[tuple[bytes, bytes]],
    rule: str | None,
) -> None:
    bad = check_request(method, path, b"HTTP/2.0", fields, authority=authority, http2=True)
    assert (None if bad is None else bad.rule) == rule


@pytest.mark.parametrize(
    ("fields", "rule"),
    [
        ([], None),
        ([(b"X-Checksum-Crc32", b"AAAAAA==")], None),
        ([(b"Content-Length", b"5")], "trailer-field"),
        ([(b"transfer-encoding", b"chunked")], "trailer-field"),
        ([(b"Host", b"evil.example")], "trailer-field"),
        ([(b"Authorization", b"Bearer x")], "trailer-field"),
        ([(b"Proxy-Foo", b"1")], "trailer-field"),
        ([(b"X", b"a\r\n b")], "obs-fold"),
        ([(b"X ", b"a")], "field-name"),
    ],
)
def test_trailers(fields: list[tuple[bytes, bytes]], rule: str | None) -> None:
    bad = check_trailers(fields)
    assert (None if bad is None else bad.rule) == rule


def test_detail_never_quotes_the_request() -> None:
    bad = check_request(b"GET", b"/", b"HTTP/1.1", [HOST, (b"X", b"secret-ish\rvalue")])
    assert bad is not None and b"secret-ish" not in bad.detail.encode()
