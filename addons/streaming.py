"""Streamed responses (DESIGN.md §7.6): scrubbed chunk by chunk, never a
compressed stream passed through unscanned, cut rather than completed when
anything goes wrong."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from mitmproxy import http

from addons.flows import Flows, FlowState
from addons.mitmshim import cut_client
from broker.request.codings import DecodeError, IncrementalDecoder
from broker.request.decision import Reason, failure

__all__ = ["abort_stream", "start_stream"]

log = logging.getLogger("keybroker")


def start_stream(flows: Flows, flow: http.HTTPFlow, st: FlowState, coding: str | None) -> None:
    """Scrub ``flow``'s response as it streams: decode it incrementally (the
    agent gets it identity-encoded), scrub it with a stateful scrubber, and on
    any failure cut the agent's connection (:func:`abort_stream`)."""
    assert flow.response is not None
    engine = flows.engine
    resp = flow.response
    limit = engine.policy.limits.max_decoded_response
    decoder = IncrementalDecoder(coding, limit) if coding else None
    scrubber = engine.stream_scrubber(st.tenant or "")
    resp.headers.pop("content-encoding", None)
    resp.headers.pop("content-length", None)
    if resp.http_version.startswith("HTTP/1"):
        resp.headers["transfer-encoding"] = "chunked"

    base = st.scrubbed
    failed = False

    def stream(chunk: bytes) -> Iterable[bytes]:
        # Never raise here: mitmproxy would log a crash and leave the agent
        # waiting on a half-finished response.
        nonlocal failed
        if failed:
            return []
        try:
            if chunk:
                data = decoder.feed(chunk) if decoder else chunk
                out = scrubber.feed(data)
            else:
                tail = decoder.finish() if decoder else b""
                out = scrubber.feed(tail) + scrubber.flush()
            st.scrubbed = base + scrubber.count
            return [out] if out else []
        except Exception as exc:
            failed = True
            undecodable = isinstance(exc, DecodeError)  # a bomb included, as when buffered
            reason = Reason.UNDECODABLE_BODY if undecodable else Reason.INTERNAL_ERROR
            abort_stream(flow, st, reason, exc)
            return []

    st.stream = scrubber
    resp.stream = stream


def abort_stream(flow: http.HTTPFlow, st: FlowState, reason: Reason, exc: BaseException) -> None:
    """A streamed response cannot go on (undecodable, too large, a bug). Its
    headers are already out, so no error reply is possible: drop what is
    held, audit the failure and cut the agent's connection, so it sees a
    truncated transfer, never a complete-looking body."""
    log.error("keybroker: response stream failed (%s); cutting the connection", type(exc).__name__)
    secrets = st.decision.secrets if st.decision else ()
    st.decision = failure(reason, st.tenant, None, secrets, upstream=True)
    if flow.killable:
        flow.kill()  # no end-of-body marker is sent when the upstream finishes
    try:  # cut now rather than when the upstream finishes (it may never)
        cut_client(flow)
    except Exception as cut_exc:  # internal API: fall back to the kill above
        log.error("keybroker: could not cut the connection (%s)", type(cut_exc).__name__)
