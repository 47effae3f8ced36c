"""Responses a capture rule matches (DESIGN.md §11) are never streamed.

A token answer must be captured before any byte of it leaves, so a response
from a capture rule's host and path is held whole: with a Content-Length up
to :data:`~broker.credentials.capture_parse.MAX_BODY`, mitmproxy buffers it
and the ``response`` hook captures then scrubs; a larger declared length is
refused at once (the upstream body is discarded); without a length the body
is held by :func:`hold_all` and released scrubbed at its end, or the
connection is cut when it grows past the limit or cannot be captured (its
headers are already out). A refusal is reason ``capture_refused`` (502)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from mitmproxy import http

from addons.flows import FlowState, error_response
from addons.streaming import abort_stream
from broker.credentials.capture_parse import MAX_BODY, CaptureRefused
from broker.engine import Engine
from broker.policy.schema import CaptureRule
from broker.request.codings import DecodeError, decode_body
from broker.request.decision import Reason, failure
from broker.request.responses import reply_for

__all__ = ["hold_all", "refuse", "refuse_at_headers"]

log = logging.getLogger("keybroker")


def refuse(flow: http.HTTPFlow, st: FlowState, exc: BaseException) -> None:
    """Replace the response by a ``capture_refused`` error (its text names no value)."""
    log.error("keybroker: a captured token could not be taken (%s); refusing", type(exc).__name__)
    secrets = st.decision.secrets if st.decision else ()
    decision = failure(Reason.CAPTURE_REFUSED, st.tenant, None, secrets, upstream=True)
    st.decision, st.ours = decision, True
    flow.response = error_response(flow, reply_for(decision))
    flow.response.headers["connection"] = "close"


def refuse_at_headers(
    flow: http.HTTPFlow, st: FlowState, exc: BaseException, no_body: bool
) -> None:
    """:func:`refuse` from ``responseheaders``: the upstream's body still
    arrives, into the replacement's stream, and is dropped there. A
    body-less answer is not streamed: mitmproxy stores its empty body into
    the replacement, which `response` then puts back as made."""
    refuse(flow, st, exc)
    assert flow.response is not None
    st.capture = flow.response.copy()
    if no_body:
        return
    body = flow.response.content or b""
    sent = False

    def discard(_chunk: bytes) -> Iterable[bytes]:
        nonlocal sent
        if sent:
            return []
        sent = True
        return [body]

    flow.response.stream = discard


def hold_all(engine: Engine, flow: http.HTTPFlow, st: FlowState, rules: list[CaptureRule]) -> None:
    """Hold a body of unknown length whole; capture, scrub and release it at its end."""
    assert flow.response is not None
    resp = flow.response
    encoding = resp.headers.get("content-encoding", "").strip().lower()
    resp.headers.pop("content-encoding", None)
    resp.headers.pop("content-length", None)
    if resp.http_version.startswith("HTTP/1"):
        resp.headers["transfer-encoding"] = "chunked"
    buf = bytearray()
    failed = False

    def stream(chunk: bytes) -> Iterable[bytes]:
        nonlocal failed
        if failed:
            return []
        try:
            if chunk:
                buf.extend(chunk)
                if len(buf) > MAX_BODY:
                    raise CaptureRefused("the response is larger than a capture can read")
                return []
            raw = bytes(buf)
            if raw and encoding and encoding != "identity":
                raw = decode_body(raw, encoding, MAX_BODY)
            engine.kinds.capture(st.tenant, st.dest, rules, body=raw)
            out, n = engine.scrub(raw, st.tenant or "")
            st.scrubbed += n
            return [out] if out else []
        except Exception as exc:
            failed = True
            reason = (
                Reason.CAPTURE_REFUSED
                if isinstance(exc, CaptureRefused)
                else Reason.UNDECODABLE_BODY
                if isinstance(exc, DecodeError)
                else Reason.INTERNAL_ERROR
            )
            abort_stream(flow, st, reason, exc)
            return []

    resp.stream = stream
