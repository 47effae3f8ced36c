"""Streamed responses (DESIGN.md §7.6): scrubbed chunk by chunk, never a
compressed stream passed through unscanned, cut rather than completed when
anything goes wrong. Server-sent events also have their LLM deltas joined
per channel and scrubbed (:mod:`broker.scrub.deltas`) before the bytes are."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from urllib.parse import parse_qs, urlsplit

from mitmproxy import http

from addons.flows import Flows, FlowState
from addons.mitmshim import cut_client
from broker.request.codings import DecodeError, IncrementalDecoder
from broker.request.decision import Reason, failure
from broker.scrub.deltas import DeltaError, DeltaStream, is_event_stream

__all__ = ["abort_stream", "delta_joiner", "start_stream"]

log = logging.getLogger("keybroker")


def start_stream(
    flows: Flows, flow: http.HTTPFlow, st: FlowState, coding: str | None, events: bool = False
) -> None:
    """Scrub ``flow``'s response as it streams: decode it incrementally (the
    agent gets it identity-encoded), scrub it with a stateful scrubber, and on
    any failure cut the agent's connection (:func:`abort_stream`). SSE (by
    Content-Type, or ``events``: the request asked for it, and its SDK parses
    the answer as SSE whatever it says) also has its LLM deltas joined."""
    assert flow.response is not None
    engine = flows.engine
    resp = flow.response
    limit = engine.policy.limits.max_decoded_response
    decoder = IncrementalDecoder(coding, limit) if coding else None
    scrubber = engine.stream_scrubber(st.tenant or "")
    deltas = None
    if events or is_event_stream(resp.headers.get("content-type")):
        deltas = delta_joiner(flows, st, events, reads_lines(flow.request.path))
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
            # Deltas first: the bytes they release (some events written
            # again) all pass the byte scrubber, which holds no event back.
            if chunk:
                data = decoder.feed(chunk) if decoder else chunk
                out = scrubber.feed(deltas.feed(data) if deltas else data)
            else:
                tail = decoder.finish() if decoder else b""
                if deltas:
                    tail = deltas.feed(tail) + deltas.flush()
                out = scrubber.feed(tail) + scrubber.flush()
            st.scrubbed = base + scrubber.count + (deltas.count if deltas else 0)
            return [out] if out else []
        except Exception as exc:
            failed = True
            if isinstance(exc, DecodeError):  # a bomb included, as when buffered
                reason = Reason.UNDECODABLE_BODY
            elif isinstance(exc, DeltaError):  # text that cannot be scanned before release
                reason = Reason.UPSTREAM_PROTOCOL_ERROR
            else:
                reason = Reason.INTERNAL_ERROR
            abort_stream(flow, st, reason, exc)
            return []

    st.stream = scrubber
    resp.stream = stream


def delta_joiner(
    flows: Flows, st: FlowState, events: bool = False, lines: bool = False
) -> DeltaStream | None:
    """LLM deltas joined for the reading tenant, unless it turned that off
    (``stream_deltas: off``); ``events``: the request asked for events (every
    event must then be read, or the stream is cut); ``lines``: its client may
    read lines, not events (a JSON line outside an event cuts)."""
    engine = flows.engine
    tenant = engine.policy.tenants.get(st.tenant or "")
    if tenant is not None and tenant.stream_deltas != "scan":
        return None
    sources = [engine.scrubber, *engine.kinds.captures.live(st.tenant)]
    return DeltaStream(sources, st.tenant or "", events=events, lines=lines)


def reads_lines(target: str) -> bool:
    """``alt=sse`` in the query: google-genai, which reads each line that
    parses as JSON as a chunk (after an optional ``data: ``)."""
    values = parse_qs(urlsplit(target).query).get("alt", ())
    return any(v.lower() == "sse" for v in values)


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
