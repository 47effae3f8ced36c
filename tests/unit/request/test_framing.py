"""Framing decisions on plain values (broker/request/framing.py)."""

from __future__ import annotations

import gzip

import pytest

from broker.request.codings import DecodeError, TooLarge
from broker.request.decision import Reason
from broker.request.framing import (
    Body,
    asks_for_events,
    content_coding,
    request_body,
    should_stream,
    transfer_codings_ok,
    upgrade_allowed,
    upstream_reason,
    valid_switch,
)

WS = [("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param([], None, id="none"),
        pytest.param([("Content-Encoding", "identity")], None, id="identity"),
        pytest.param([("content-encoding", " GZIP ")], "gzip", id="case-and-space"),
        pytest.param(
            [("Content-Encoding", "gzip"), ("Content-Encoding", "br")], "gzip,br", id="two-fields"
        ),
    ],
)
def test_content_coding(headers: list[tuple[str, str]], expected: str | None) -> None:
    assert content_coding(headers) == expected


def test_request_body_limits_wire_and_decoded_size() -> None:
    assert request_body(b"abc", None, 3) == b"abc"
    assert request_body(gzip.compress(b"x" * 40), "gzip", 40) == b"x" * 40
    with pytest.raises(TooLarge) as big:
        request_body(b"abcd", None, 3)
    assert big.value.reason is Reason.BODY_TOO_LARGE
    with pytest.raises(TooLarge):
        request_body(gzip.compress(b"x" * 1000), "gzip", 50)
    with pytest.raises(DecodeError) as bad:
        request_body(b"not gzip", "gzip", 100)
    assert bad.value.reason is Reason.UNDECODABLE_BODY


@pytest.mark.parametrize(
    ("method", "status", "headers", "expected"),
    [
        pytest.param("HEAD", 200, [("content-length", "5")], Body.NONE, id="head"),
        pytest.param("GET", 101, [], Body.NONE, id="101"),
        pytest.param("GET", 204, [], Body.NONE, id="204"),
        pytest.param("GET", 304, [], Body.NONE, id="304"),
        pytest.param("GET", 200, [("content-length", "5")], Body.BUFFERED, id="small"),
        pytest.param("GET", 200, [("content-length", "11")], Body.STREAMED, id="over-threshold"),
        pytest.param("GET", 200, [], Body.STREAMED, id="unknown-length"),
        pytest.param("GET", 200, [("content-length", "x")], Body.STREAMED, id="bad-length"),
        pytest.param(
            "GET",
            200,
            [("content-type", "Text/Event-Stream"), ("content-length", "1")],
            Body.STREAMED,
            id="sse",
        ),
    ],
)
def test_should_stream(
    method: str, status: int, headers: list[tuple[str, str]], expected: Body
) -> None:
    assert should_stream(method, status, headers, 10) is expected


def test_a_request_for_events_streams_its_answer_whatever_it_is_labelled() -> None:
    """The LLM SDKs parse the answer to ``stream: true`` as SSE whatever its
    Content-Type: it must pass the delta scanner, so it streams."""
    small_json = [("content-type", "application/json"), ("content-length", "5")]
    assert should_stream("POST", 200, small_json, 10, events=True) is Body.STREAMED
    assert should_stream("HEAD", 200, small_json, 10, events=True) is Body.NONE


@pytest.mark.parametrize(
    ("target", "body", "asked"),
    [
        pytest.param("/v1/chat/completions", b'{"model":"m","stream":true}', True, id="openai"),
        pytest.param("/v1/messages", b'{"stream" :  true, "model": "c"}', True, id="spaced"),
        pytest.param("/v1/chat/completions", b'{"stream": false}', False, id="false"),
        pytest.param("/v1/chat/completions", b'{"streaming": true}', False, id="other-key"),
        pytest.param("/v1beta/models/g:streamGenerateContent?alt=sse", b"{}", True, id="gemini"),
        pytest.param("/v1beta/models/g:streamGenerateContent", b"{}", False, id="gemini-array"),
        pytest.param("/x?salt=sse", b"", False, id="other-param"),
        pytest.param("/v1/responses/resp_1?stream=true", b"", True, id="retrieve-stream"),
        pytest.param("/v1/responses/resp_1?stream=false", b"", False, id="retrieve-no-stream"),
        pytest.param("/v1/x", b"model=m&stream=true", True, id="form"),
        pytest.param("/v1/x", b"model=m&streams=true", False, id="form-other"),
        pytest.param(
            "/v1/audio/transcriptions",
            b'--b\r\nContent-Disposition: form-data; name="stream"\r\n\r\ntrue\r\n--b--\r\n',
            True,
            id="multipart",
        ),
        pytest.param(
            "/v1/audio/transcriptions",
            b'--b\r\nContent-Disposition: form-data; name="stream"\r\n\r\nfalse\r\n--b--\r\n',
            False,
            id="multipart-false",
        ),
        pytest.param("//[x?alt=sse", b"", False, id="not-a-url"),
    ],
)
def test_asks_for_events(target: str, body: bytes, asked: bool) -> None:
    assert asks_for_events(target, body) is asked


@pytest.mark.parametrize(
    ("te", "ok"),
    [
        (None, True),
        ("chunked", True),
        ("Chunked", True),
        ("gzip, chunked", False),
        ("gzip", False),
        ("deflate,chunked", False),
        ("compress", False),
    ],
)
def test_only_chunked_transfer_coding_is_relayed(te: str | None, ok: bool) -> None:
    assert transfer_codings_ok([("Transfer-Encoding", te)] if te else []) is ok


@pytest.mark.parametrize(
    ("headers", "ok"),
    [
        pytest.param([], True, id="no-upgrade"),
        pytest.param(WS, True, id="websocket-13"),
        pytest.param([("Upgrade", "WebSocket"), ("Sec-WebSocket-Version", " 13")], True, id="case"),
        pytest.param([("Upgrade", "websocket"), ("Sec-WebSocket-Version", "8")], False, id="ws-8"),
        pytest.param([("Upgrade", "websocket")], False, id="ws-no-version"),
        pytest.param([("Upgrade", "h2c")], False, id="h2c"),
        pytest.param([("Upgrade", "TLS/1.2")], False, id="tls"),
    ],
)
def test_upgrade_allowed(headers: list[tuple[str, str]], ok: bool) -> None:
    assert upgrade_allowed(headers) is ok


@pytest.mark.parametrize(
    ("request_headers", "status", "response_headers", "ok"),
    [
        pytest.param([], 200, [], True, id="not-a-switch"),
        pytest.param(WS, 101, [("Upgrade", "websocket")], True, id="websocket"),
        pytest.param([], 101, [("Upgrade", "websocket")], False, id="nobody-asked"),
        pytest.param(WS, 101, [("Upgrade", "foo")], False, id="other-protocol"),
        pytest.param(WS[:1], 101, [("Upgrade", "websocket")], False, id="no-version"),
    ],
)
def test_valid_switch(
    request_headers: list[tuple[str, str]],
    status: int,
    response_headers: list[tuple[str, str]],
    ok: bool,
) -> None:
    assert valid_switch(request_headers, status, response_headers) is ok


@pytest.mark.parametrize(
    ("message", "tcp", "tls_needed", "tls", "reason"),
    [
        ("[Errno 111] Connect call failed", False, True, False, Reason.UPSTREAM_UNREACHABLE),
        ("Certificate verify failed: x", False, True, False, Reason.UPSTREAM_TLS_FAILED),
        ("TLS handshake failed", False, False, False, Reason.UPSTREAM_UNREACHABLE),
        ("anything", True, True, False, Reason.UPSTREAM_TLS_FAILED),
        ("Cannot parse HTTP response", True, True, True, Reason.UPSTREAM_PROTOCOL_ERROR),
        ("server closed connection", True, False, False, Reason.UPSTREAM_PROTOCOL_ERROR),
    ],
)
def test_upstream_reason(
    message: str, tcp: bool, tls_needed: bool, tls: bool, reason: Reason
) -> None:
    assert upstream_reason(message, tcp_up=tcp, tls_needed=tls_needed, tls_up=tls) is reason
