"""mitmproxy 12's HTTP/1 connection layer, patched so that every request
gets an answer or a clean close in bounded time (issue 19); installed by
:func:`addons.wire.install`:

- ``Http1Server.read_headers``: empty lines before a request-line are
  skipped (RFC 9112 §2.2; mitmproxy's buffer consumed one and then waited for
  data that had already arrived: the connection hung); a head that never ends
  in bare CRs, or larger than :data:`MAX_HEAD`, is answered 400 and closed.
- ``Http1Connection.read_body``: chunked trailers become trailer events
  (mitmproxy raised ``NotImplementedError`` and the connection hung); a
  request chunk larger than what is left of ``limits.max_request_body`` is
  refused at its chunk-size line (a 2**64 chunk waited forever); a request
  body mitmproxy cannot read (bad framing, the client's FIN mid-body) is
  answered with keybroker's JSON before the close (it was a bare close).
- ``Http1Client.send`` / ``Http1Server.send``: trailers are written in the
  last chunk; a request with trailers goes upstream chunked; mitmproxy's HTML
  page for a client error becomes keybroker's JSON 400 (sent once).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Generator
from typing import Any

import h11
from h11._readers import ChunkedReader
from mitmproxy import http
from mitmproxy.net.http.http1 import assemble_response
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.proxy.layers.http._base import ReceiveHttp
from mitmproxy.proxy.layers.http._events import (
    ErrorCode,
    RequestEndOfMessage,
    RequestHeaders,
    RequestTrailers,
    ResponseEndOfMessage,
    ResponseProtocolError,
    ResponseTrailers,
)

from broker.request.decision import Reason, failure
from broker.request.responses import reply_for

__all__ = [
    "MAX_HEAD",
    "TOO_LARGE",
    "BoundedChunks",
    "Gen",
    "patch_read_body",
    "patch_read_headers",
    "patch_send",
    "set_request_limit",
]

Gen = Generator[commands.Command, Any, None]

_limit = [32 * 1024 * 1024]
"""``limits.max_request_body`` of the live policy (set by the addon)."""


def set_request_limit(limit: int) -> None:
    _limit[0] = limit


MAX_HEAD = 64 * 1024
"""A request head (request line and fields) larger than this is refused."""
_BLANK_LINE = re.compile(rb"\n\r?\n")
_BARE_CR = re.compile(rb"\r[^\n]")


TOO_LARGE = "request body over the limit"
"""The protocol error a chunk past ``limits.max_request_body`` raises (413)."""


def _refusal(reason: Reason = Reason.MALFORMED_REQUEST) -> bytes:
    """keybroker's JSON refusal for a request too broken to reach the addon."""
    reply = reply_for(failure(reason, None))
    resp = http.Response.make(reply.status, reply.body, {**reply.headers, "connection": "close"})
    return bytes(assemble_response(resp))


def patch_read_headers(orig: Callable[..., Gen]) -> Callable[..., Gen]:
    @functools.wraps(orig)
    def read_headers(self: _http1.Http1Server, event: Any) -> Gen:
        if isinstance(event, events.DataReceived):
            buf = self.buf
            while True:
                head = bytes(buf._data[:2])  # h11's buffer has no peek
                if not (head.startswith(b"\n") or head == b"\r\n"):
                    break
                buf.maybe_extract_lines()  # consumes exactly one empty line
            data = bytes(buf._data[: MAX_HEAD + 4])
            end = _BLANK_LINE.search(data)
            # A bare CR ends a line for some parsers and not for others (RFC 9112
            # §2.2): a head whose lines end in bare CRs would never end for
            # mitmproxy. (A complete head with a bare CR is refused, and
            # audited, by the addon.)
            if end is None and (len(data) > MAX_HEAD or _BARE_CR.search(data)):
                yield commands.SendData(self.conn, _refusal())
                yield commands.CloseConnection(self.conn)
                self.state = self.done
                return
        yield from orig(self, event)

    return read_headers


class BoundedChunks(ChunkedReader):
    """h11's chunked reader, refusing a chunk larger than what is left of the
    request body limit as soon as its size line is read."""

    seen = 0
    over = False

    def __call__(self, buf: Any) -> Any:
        event = super().__call__(buf)
        if isinstance(event, h11.Data):
            self.seen += len(event.data)
        if self._bytes_in_chunk >= 1 << 63:
            raise h11.RemoteProtocolError("chunk size overflows")
        if self._bytes_in_chunk > _limit[0] - self.seen:
            self.over = True
            raise h11.RemoteProtocolError(TOO_LARGE)
        return event


def patch_read_body(orig: Callable[..., Gen]) -> Callable[..., Gen]:
    @functools.wraps(orig)
    def read_body(self: _http1.Http1Connection, event: Any) -> Gen:
        reader = self.body_reader
        if isinstance(self, _http1.Http1Server) and type(reader) is ChunkedReader:
            reader.__class__ = BoundedChunks
        if isinstance(reader, ChunkedReader):
            # h11 reports trailers on its EndOfMessage, which mitmproxy refuses:
            # take them off it and hand them on as a trailer event first.
            real = reader.__call__

            def call(buf: Any) -> Any:
                ev = real(buf)
                if isinstance(ev, h11.EndOfMessage) and ev.headers:
                    fields = [(bytes(k), bytes(v)) for k, v in ev.headers.raw_items()]
                    self._kb_trailers = http.Headers(fields)  # type: ignore[attr-defined]
                    return h11.EndOfMessage()
                return ev

            self.body_reader = _Calling(reader, call)  # type: ignore[assignment]
        try:
            for cmd in orig(self, event):
                if (
                    isinstance(cmd, commands.CloseConnection)
                    and isinstance(self, _http1.Http1Server)
                    and self.response is None
                    and getattr(self.state, "__name__", "") == "read_body"
                ):
                    # a body mitmproxy cannot read is answered, not just closed
                    big = isinstance(reader, BoundedChunks) and reader.over
                    reason = Reason.BODY_TOO_LARGE if big else Reason.MALFORMED_REQUEST
                    yield commands.SendData(self.conn, _refusal(reason))
                    self._kb_refused = True  # type: ignore[attr-defined]
                trailers = self.__dict__.pop("_kb_trailers", None)
                if trailers is not None and self.stream_id is not None:
                    cls = (
                        RequestTrailers
                        if isinstance(self, _http1.Http1Server)
                        else ResponseTrailers
                    )
                    yield ReceiveHttp(cls(self.stream_id, trailers))
                yield cmd
        finally:
            if isinstance(self.body_reader, _Calling):
                self.body_reader = reader

    return read_body


class _Calling:
    """A body reader whose call goes through ``call`` (``read_eof`` unchanged)."""

    def __init__(self, reader: Any, call: Callable[[Any], Any]) -> None:
        self._reader, self._call = reader, call

    def __call__(self, buf: Any) -> Any:
        return self._call(buf)

    def read_eof(self) -> Any:
        return self._reader.read_eof()


_CLIENT_ERRORS = (ErrorCode.GENERIC_CLIENT_ERROR, ErrorCode.REQUEST_VALIDATION_FAILED)


def _chunked(msg: http.Message) -> bool:
    return "chunked" in msg.headers.get("transfer-encoding", "").lower()


def patch_send(orig: Callable[..., Gen]) -> Callable[..., Gen]:
    """Trailers go in the last chunk (RFC 9112 §7.1.2); a request that has
    them is sent chunked. A response to an HTTP/1 client that is not chunked
    cannot carry them (RFC 9110 §6.5.1 lets a proxy discard them)."""

    @functools.wraps(orig)
    def send(self: _http1.Http1Connection, event: Any) -> Gen:
        if isinstance(event, (RequestTrailers, ResponseTrailers)):
            self._kb_out_trailers = event.trailers  # type: ignore[attr-defined]
            return
        if (
            isinstance(event, ResponseProtocolError)
            and isinstance(self, _http1.Http1Server)
            and self.response is None
            and event.code in _CLIENT_ERRORS
        ):
            # keybroker's JSON 400 (once), not mitmproxy's page quoting the request
            if not self.__dict__.pop("_kb_refused", False):
                yield commands.SendData(self.conn, _refusal())
            yield commands.CloseConnection(self.conn)
            return
        if isinstance(event, RequestHeaders) and event.request.trailers:
            req = event.request.copy()
            req.headers.pop("content-length", None)
            req.headers["transfer-encoding"] = "chunked"
            event = RequestHeaders(event.stream_id, req, event.end_stream)
        trailers = self.__dict__.pop("_kb_out_trailers", None)
        if isinstance(event, (RequestEndOfMessage, ResponseEndOfMessage)) and trailers:
            msg = self.request if isinstance(event, RequestEndOfMessage) else self.response
            head_only = isinstance(event, ResponseEndOfMessage) and (
                self.request is not None and self.request.method.upper() == "HEAD"
            )
            if msg is not None and _chunked(msg) and not head_only:
                lines = b"".join(b"%s: %s\r\n" % (k, v) for k, v in trailers.fields)
                yield commands.SendData(self.conn, b"0\r\n" + lines + b"\r\n")
                yield from self.mark_done(
                    request=isinstance(event, RequestEndOfMessage),
                    response=isinstance(event, ResponseEndOfMessage),
                )
                return
        yield from orig(self, event)

    return send
