"""Decisions about message framing on plain values (DESIGN.md §5, §7.3): the
content coding of a body, the request body under its limit, whether a
response streams, which upgrades and transfer codings keybroker relays, and
what an upstream failure is called. The addon only reads headers off flows
and calls these."""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import Enum
from urllib.parse import parse_qs, urlsplit

from broker.request.codings import TooLarge, decode_body, parse_encoding
from broker.request.decision import Reason

__all__ = [
    "Body",
    "asks_for_events",
    "content_coding",
    "request_body",
    "should_stream",
    "transfer_codings_ok",
    "upgrade_allowed",
    "upstream_reason",
    "valid_switch",
]

Headers = Iterable[tuple[str, str]]
_NO_BODY_STATUS = frozenset({204, 304})
WEBSOCKET_VERSION = "13"


def _get(headers: Headers, name: str) -> str | None:
    """The field values of ``name`` joined with ", " (as HTTP reads a list)."""
    found = [v for k, v in headers if k.lower() == name]
    return ", ".join(found) if found else None


def content_coding(headers: Headers) -> str | None:
    """The Content-Encoding to undo before scanning, or None for identity."""
    value = _get(headers, "content-encoding")
    return ",".join(parse_encoding(value)) or None if value else None


def request_body(raw: bytes, coding: str | None, limit: int) -> bytes:
    """The decoded request body, held to ``limit`` on the wire and once
    decoded (a small gzip body may expand hugely). Raises
    :class:`~broker.request.codings.DecodeError` (its ``reason`` says which)."""
    if len(raw) > limit:
        raise TooLarge("request body over the limit")
    if raw and coding:
        return decode_body(raw, coding, limit)
    return raw


class Body(Enum):
    NONE = "none"
    """No body follows (HEAD, 1xx, 204, 304): headers may leave at once."""
    BUFFERED = "buffered"
    """Read whole, then scanned with the headers in one pass."""
    STREAMED = "streamed"
    """Scrubbed chunk by chunk as it arrives."""


_STREAM_TRUE = re.compile(rb'"stream"\s*:\s*true\b')
_FORM_STREAM = re.compile(rb"(?:^|&)stream=(?:true|1)(?:&|$)", re.IGNORECASE)
_MULTIPART_STREAM = re.compile(
    rb'name="?stream"?[^\r\n]*\r?\n(?:[^\r\n]+\r?\n)*\r?\n[ \t]*(?:true|1)[ \t]*\r?\n',
    re.IGNORECASE,
)
_TRUE = ("true", "1")


def asks_for_events(target: str, body: bytes) -> bool:
    """The request asks for server-sent events, which the LLM SDKs parse as
    such whatever Content-Type the answer carries: ``"stream": true`` in a
    JSON body (OpenAI, Anthropic and the APIs that copy them), ``stream=true``
    in the query (OpenAI's ``retrieve(..., stream=True)``), a form or a
    multipart field (OpenAI's audio transcriptions), or ``alt=sse`` in the
    query (Gemini). A compressed body is not looked into: its answer, when
    buffered, still has its deltas joined (``addons/scrubbing.py``)."""
    if b"stream" in body and (
        _STREAM_TRUE.search(body) or _FORM_STREAM.search(body) or _MULTIPART_STREAM.search(body)
    ):
        return True
    try:
        query = urlsplit(target).query
    except ValueError:  # not a URL a client would send: nothing asked
        return False
    if "alt" not in query and "stream" not in query:
        return False
    params = parse_qs(query)
    return "sse" in params.get("alt", ()) or any(
        v.lower() in _TRUE for v in params.get("stream", ())
    )


def should_stream(
    method: str, status: int, headers: Headers, threshold: int, events: bool = False
) -> Body:
    """How a response body travels: server-sent events (by Content-Type, or
    ``events``: the request asked for them), bodies of unknown length and
    bodies over ``threshold`` stream; the rest are buffered."""
    if method.upper() == "HEAD" or status < 200 or status in _NO_BODY_STATUS:
        return Body.NONE
    length = _get(headers, "content-length")
    if (
        events
        or "text/event-stream" in (_get(headers, "content-type") or "").lower()
        or length is None
        or not length.isdigit()
        or int(length) > threshold
    ):
        return Body.STREAMED
    return Body.BUFFERED


def transfer_codings_ok(headers: Headers) -> bool:
    """Only ``chunked`` is relayed: any other transfer coding (``gzip``,
    ``deflate``, ``compress``, with or without ``chunked``) would reach the
    agent compressed and unscanned, so such a response is refused."""
    value = _get(headers, "transfer-encoding")
    if value is None:
        return True
    return all(c.strip().lower() in ("chunked", "") for c in value.split(","))


def _is_websocket_request(headers: Headers) -> bool:
    return (_get(headers, "upgrade") or "").strip().lower() == "websocket" and (
        _get(headers, "sec-websocket-version") or ""
    ).strip() == WEBSOCKET_VERSION


def upgrade_allowed(headers: Headers) -> bool:
    """A request may ask to switch protocols only to a version-13 WebSocket
    (the one protocol whose messages pass keybroker's hooks)."""
    return _get(headers, "upgrade") is None or _is_websocket_request(headers)


def valid_switch(request_headers: Headers, status: int, response_headers: Headers) -> bool:
    """A ``101`` is relayed only as the answer to a version-13 WebSocket
    request, switching to ``websocket``; anything else would turn the
    connection into a pipe no hook sees."""
    if status != 101:
        return True
    return (
        _is_websocket_request(request_headers)
        and (_get(response_headers, "upgrade") or "").strip().lower() == "websocket"
    )


_TLS_WORDS = ("tls", "ssl", "certificate", "handshake")


def upstream_reason(message: str, *, tcp_up: bool, tls_needed: bool, tls_up: bool) -> Reason:
    """What an upstream failure is called, from how far the connection got
    and, when it never got up, whether mitmproxy's message speaks of TLS
    (the message is only classified: it may quote upstream bytes)."""
    if not tcp_up:
        text = message.lower()
        tls = tls_needed and any(w in text for w in _TLS_WORDS)
        return Reason.UPSTREAM_TLS_FAILED if tls else Reason.UPSTREAM_UNREACHABLE
    if tls_needed and not tls_up:
        return Reason.UPSTREAM_TLS_FAILED
    return Reason.UPSTREAM_PROTOCOL_ERROR
