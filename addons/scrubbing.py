"""The response path (a child addon of :class:`addons.hooks.KeyBroker`):
response heads, buffered bodies, trailers and WebSocket messages scrubbed of
every known value before the agent sees them (DESIGN.md §7), upgrades and
transfer codings keybroker does not relay refused. Streamed bodies go
through :mod:`addons.streaming`; what no hook sees is caught by the choke
point (:mod:`addons.chokepoint`)."""

from __future__ import annotations

import logging

from mitmproxy import http
from mitmproxy.net.http import status_codes

from addons.capturing import hold_all, refuse, refuse_at_headers
from addons.flows import Flows, FlowState, guarded
from addons.streaming import delta_joiner, start_stream
from broker.credentials.capture_parse import MAX_BODY, CaptureRefused
from broker.policy.schema import CaptureRule
from broker.request.codings import DecodeError, decode_body
from broker.request.decision import Reason, failure
from broker.request.framing import (
    Body,
    asks_for_events,
    content_coding,
    should_stream,
    transfer_codings_ok,
    valid_switch,
)
from broker.scrub.deltas import DeltaError

log = logging.getLogger("keybroker")


def _fields(headers: http.Headers) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers.fields]


class ResponsePath:
    def __init__(self, flows: Flows) -> None:
        self.flows = flows

    def scrub_head(
        self, msg: http.Response | http.Headers, st: FlowState | None, body: bytes | None = None
    ) -> bytes | None:
        """Scrub the header fields (and a response's reason phrase) in place;
        with ``body``, scrub it in the same scan and return it scrubbed (None
        when nothing was found in it)."""
        headers = msg if isinstance(msg, http.Headers) else msg.headers
        reason = [msg.data.reason] if isinstance(msg, http.Response) else []
        pieces = [*reason, *(part for f in headers.fields for part in f)]
        tenant = (st.tenant if st is not None else None) or ""  # others' values: a marker
        done = self.flows.engine.scrub_many(pieces if body is None else [*pieces, body], tenant)
        n = sum(count for _, count in done)
        if not n:  # the common case, nothing found, costs one scan of everything
            return None
        if st is not None:
            st.scrubbed += n
        body_out: bytes | None = None
        if body is not None:
            data, in_body = done.pop()
            body_out = data if in_body else None
        if reason:
            _, in_reason = done.pop(0)
            if in_reason:  # a reason phrase is free text: give the standard one
                assert isinstance(msg, http.Response)
                msg.reason = status_codes.RESPONSES.get(msg.status_code, "")
        out = [data for data, _ in done]
        headers.fields = tuple(zip(out[::2], out[1::2], strict=True))
        return body_out

    @guarded
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        st = self.flows.get(flow)
        if st is None or st.ours or flow.response is None:
            return
        resp = flow.response
        engine = self.flows.engine
        headers = _fields(resp.headers)
        request_headers = _fields(flow.request.headers)
        if not valid_switch(request_headers, resp.status_code, headers):
            secrets = st.decision.secrets if st.decision else ()
            decision = failure(Reason.PROTOCOL_NOT_ALLOWED, st.tenant, None, secrets)
            self.flows.refuse(flow, st, decision, "responseheaders")
            return
        if not transfer_codings_ok(headers):
            self._upstream_failed(flow, st, Reason.UPSTREAM_PROTOCOL_ERROR, "responseheaders")
            return
        limits = engine.policy.limits
        events = asks_for_events(flow.request.path, flow.request.raw_content or b"")
        body = should_stream(
            flow.request.method, resp.status_code, headers, limits.stream_threshold, events
        )
        rules = engine.kinds.capture_rules(st.tenant, st.dest)
        if rules and self._capture_headers(flow, st, rules, body is Body.NONE):
            return
        if body is not Body.BUFFERED:  # the head may leave before `response`: scrub it now
            self.scrub_head(resp, st)
            st.headers_scrubbed = True
        if body is Body.STREAMED:
            start_stream(self.flows, flow, st, content_coding(headers), events)
            st.body_scrubbed = True
        # Buffered: nothing leaves before `response`, which scans head and body at once.

    def _capture_headers(
        self, flow: http.HTTPFlow, st: FlowState, rules: list[CaptureRule], no_body: bool
    ) -> bool:
        """Captured tokens (DESIGN.md §11): cookies now, before any scrub; a
        body a rule reads is never streamed (:mod:`addons.capturing`). True
        when the response is dealt with here."""
        assert flow.response is not None
        resp, engine = flow.response, self.flows.engine
        length = resp.headers.get("content-length")
        try:
            if "set-cookie" in resp.headers:
                cookies = resp.headers.get_all("set-cookie")
                engine.kinds.capture(st.tenant, st.dest, rules, set_cookies=cookies)
            if no_body or not any(r.json_fields for r in rules):
                return False
            if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
                raise CaptureRefused("the response is larger than a capture can read")
        except CaptureRefused as exc:
            refuse_at_headers(flow, st, exc, no_body)
            return True
        st.capture = rules
        if length is None:
            self.scrub_head(resp, st)
            st.headers_scrubbed = st.body_scrubbed = True
            hold_all(engine, flow, st, rules)
        return True  # buffered: `response` captures, then scrubs head and body at once

    def _upstream_failed(
        self, flow: http.HTTPFlow, st: FlowState, reason: Reason, hook: str
    ) -> None:
        secrets = st.decision.secrets if st.decision else ()
        decision = failure(reason, st.tenant, None, secrets, upstream=True)
        self.flows.refuse(flow, st, decision, hook)

    @guarded
    def response(self, flow: http.HTTPFlow) -> None:
        st = self.flows.get(flow)
        if st is None or st.done:
            return
        resp = flow.response
        if st.ours and isinstance(st.capture, http.Response) and resp is not None:
            # Refused at its headers (addons.capturing): mitmproxy stored the
            # upstream's body and trailers into the refusal; send it as made.
            resp.trailers = None
            if not resp.stream:
                flow.response = st.capture
        if not st.ours and resp is not None:
            if not resp.stream:
                self._scrub_body(flow, st)
            elif not st.headers_scrubbed:
                self.scrub_head(resp, st)
            if flow.response is resp and resp.trailers:  # streamed ones are sent after this hook
                self.scrub_head(resp.trailers, st)
        if st.done:  # refused while scrubbing
            return
        self.flows.restore(flow, st)
        self.flows.finish(flow, st)

    def _scrub_body(self, flow: http.HTTPFlow, st: FlowState) -> None:
        """Decode, then scrub the body (with the head, unless done already)."""
        assert flow.response is not None
        resp = flow.response
        raw = resp.raw_content or b""
        coding = content_coding(_fields(resp.headers))
        if raw and coding:
            limit = self.flows.engine.policy.limits.max_decoded_response
            try:
                raw = decode_body(raw, coding, limit)
            except DecodeError:  # a bomb too: the upstream's body is undecodable within limits
                self._upstream_failed(flow, st, Reason.UNDECODABLE_BODY, "response")
                return
            resp.headers.pop("content-encoding", None)
            resp.set_content(raw)
        joined = self._join_deltas(flow, st, raw)
        if joined is None:
            return
        rewritten, raw = joined is not raw, joined
        if st.capture:  # a token answer to capture (DESIGN.md §11), by rule
            try:
                self.flows.engine.kinds.capture(st.tenant, st.dest, st.capture, body=raw)
            except CaptureRefused as exc:
                self.flows.restore(flow, st)
                refuse(flow, st, exc)
                st.body_scrubbed = True
                return
        if st.headers_scrubbed:
            scrubbed, n = self.flows.engine.scrub(raw, st.tenant or "")
            st.scrubbed += n
            out = scrubbed if n else None
        else:
            out = self.scrub_head(resp, st, raw)
            st.headers_scrubbed = True
        if out is not None or rewritten:
            resp.set_content(raw if out is None else out)
        st.body_scrubbed = True

    def _join_deltas(self, flow: http.HTTPFlow, st: FlowState, raw: bytes) -> bytes | None:
        """A buffered body holding SSE data lines has its LLM deltas joined as
        a stream's would be: an SDK that asked for a stream parses the answer
        as SSE whatever its type or length, and a request keybroker cannot
        read as asking for one (a compressed body) has its answer buffered.
        ``raw`` itself when nothing was rewritten; None when refused."""
        if b"data:" not in raw:
            return raw
        joiner = delta_joiner(self.flows, st)
        if joiner is None:
            return raw
        try:
            out = joiner.feed(raw) + joiner.flush()
        except DeltaError:
            self._upstream_failed(flow, st, Reason.UPSTREAM_PROTOCOL_ERROR, "response")
            return None
        st.scrubbed += joiner.count
        return out if joiner.count else raw

    @guarded
    def websocket_message(self, flow: http.HTTPFlow) -> None:
        assert flow.websocket is not None
        engine = self.flows.engine
        messages = flow.websocket.messages
        msg = messages[-1]
        st = self.flows.get(flow)
        tenant = st.tenant if st is not None else None
        if msg.from_client and engine.raw_in_message(tenant, msg.content):
            # A raw value in a WebSocket message: no policy location allows it.
            log.error("keybroker: raw secret value in a WebSocket message; closing it")
            msg.drop()
            flow.kill()
        elif not msg.from_client:
            out, n = engine.scrub(msg.content, tenant or "")
            if n:
                msg.content = out
                if st is not None:
                    st.scrubbed += n
        for old in messages[:-1]:  # do not keep a connection's history (values included)
            old.content = b""
        del messages[:-1]

    @guarded
    def websocket_end(self, flow: http.HTTPFlow) -> None:
        """The close reason was relayed scrubbed (the choke point); keep it
        out of the stored flow and mitmdump's console too."""
        ws = flow.websocket
        if ws is not None and ws.close_reason:
            _, n = self.flows.engine.scrub(ws.close_reason.encode("utf-8", "replace"), "")
            if n:
                ws.close_reason = ""
