"""The response path of :class:`addons.hooks.KeyBroker`: response headers,
buffered bodies, trailers and WebSocket messages scrubbed of every known
value before the agent sees them (DESIGN.md §7). Streamed bodies go through
:mod:`addons.streaming`."""

from __future__ import annotations

import logging
import weakref

from mitmproxy import http

from addons.capturing import hold_all, refuse, refuse_at_headers
from addons.flows import FlowState, error_response, guarded
from addons.streaming import start_stream
from broker.credentials.capture_parse import MAX_BODY, CaptureRefused
from broker.engine import Engine
from broker.policy.schema import CaptureRule
from broker.request.codings import DecodeError, decode_body
from broker.request.decision import Reason, failure
from broker.request.responses import reply_for

log = logging.getLogger("keybroker")
_NO_BODY_STATUS = (204, 304)


class ResponseHooks:
    """Mixed into :class:`addons.hooks.KeyBroker`, which provides the engine,
    the per-flow state, restoring placeholders, the audit record and failing
    closed."""

    engine: Engine | None
    _state: weakref.WeakKeyDictionary[http.HTTPFlow, FlowState]

    def fail_closed(self, flow: http.HTTPFlow, hook: str, exc: BaseException) -> None:
        raise NotImplementedError

    def _inject(self, hook: str) -> None:
        raise NotImplementedError

    def _restore(self, flow: http.HTTPFlow, st: FlowState) -> None:
        raise NotImplementedError

    def _finish(self, flow: http.HTTPFlow, st: FlowState) -> None:
        raise NotImplementedError

    def _scrub_headers(
        self, msg: http.Message | http.Headers, st: FlowState, body: bytes | None = None
    ) -> bytes | None:
        """Scrub the header fields in place; with ``body``, scrub it in the same
        scan and return it scrubbed (None when nothing was found in it)."""
        assert self.engine is not None
        headers = msg if isinstance(msg, http.Headers) else msg.headers
        pieces = [part for field in headers.fields for part in field]
        done = self.engine.scrub_many(pieces if body is None else [*pieces, body], st.tenant or "")
        n = sum(count for _, count in done)
        if not n:  # the common case, nothing found, costs one scan of everything
            return None
        st.scrubbed += n
        body_out: bytes | None = None
        if body is not None:
            data, in_body = done.pop()
            body_out = data if in_body else None
        out = [data for data, _ in done]
        headers.fields = tuple(zip(out[::2], out[1::2], strict=True))
        return body_out

    @guarded
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._inject("responseheaders")
        st = self._state.get(flow)
        if st is None or st.ours or flow.response is None:
            return
        assert self.engine is not None
        resp = flow.response
        length = resp.headers.get("content-length")
        no_body = (
            flow.request.method == "HEAD"
            or resp.status_code < 200  # 101: the connection switches protocol, no body
            or resp.status_code in _NO_BODY_STATUS
        )
        rules = self.engine.kinds.capture_rules(st.tenant, st.dest)
        if rules and self._capture_headers(flow, st, rules, no_body, length):
            return
        streaming = not no_body and (
            "text/event-stream" in resp.headers.get("content-type", "").lower()
            or length is None
            or not length.isdigit()
            or int(length) > self.engine.policy.limits.stream_threshold
        )
        if no_body or streaming:  # the headers may leave before `response`: scrub them now
            self._scrub_headers(resp, st)
            st.headers_scrubbed = True
        if streaming:
            start_stream(self.engine, flow, st)
        # Buffered: nothing leaves before `response`, which scans headers and body at once.

    @guarded
    def response(self, flow: http.HTTPFlow) -> None:
        self._inject("response")
        st = self._state.get(flow)
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
                self._scrub_headers(resp, st)
            if flow.response is resp and resp.trailers:  # streamed ones are sent after this hook
                self._scrub_headers(resp.trailers, st)
        self._restore(flow, st)
        self._finish(flow, st)

    def _capture_headers(
        self,
        flow: http.HTTPFlow,
        st: FlowState,
        rules: list[CaptureRule],
        no_body: bool,
        length: str | None,
    ) -> bool:
        """Captured tokens (DESIGN.md §11): cookies now, before any scrub; a
        body a rule reads is never streamed (:mod:`addons.capturing`). True
        when the response is dealt with here."""
        assert self.engine is not None and flow.response is not None
        resp = flow.response
        try:
            if "set-cookie" in resp.headers:
                cookies = resp.headers.get_all("set-cookie")
                self.engine.kinds.capture(st.tenant, st.dest, rules, set_cookies=cookies)
            if no_body or not any(r.json_fields for r in rules):
                return False
            if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
                raise CaptureRefused("the response is larger than a capture can read")
        except CaptureRefused as exc:
            refuse_at_headers(flow, st, exc, no_body)
            return True
        st.capture = rules
        if length is None:
            self._scrub_headers(resp, st)
            st.headers_scrubbed = True
            hold_all(self.engine, flow, st, rules)
        return True  # buffered: `response` captures, then scrubs headers and body at once

    def _scrub_body(self, flow: http.HTTPFlow, st: FlowState) -> None:
        """Decode, then scrub the body (with the headers, unless done already)."""
        assert self.engine is not None and flow.response is not None
        resp = flow.response
        raw = resp.raw_content or b""
        encoding = resp.headers.get("content-encoding", "").strip().lower()
        if raw and encoding and encoding != "identity":
            try:
                raw = decode_body(raw, encoding, self.engine.policy.limits.max_decoded_response)
            except DecodeError:
                secrets = st.decision.secrets if st.decision else ()
                decision = failure(Reason.UNDECODABLE_BODY, st.tenant, None, secrets, upstream=True)
                self._restore(flow, st)
                st.decision, st.ours = decision, True
                flow.response = error_response(flow, reply_for(decision))
                return
            resp.headers.pop("content-encoding", None)
            resp.set_content(raw)
        if st.capture:  # a token answer to capture (DESIGN.md §11), by rule
            try:
                self.engine.kinds.capture(st.tenant, st.dest, st.capture, body=raw)
            except CaptureRefused as exc:
                self._restore(flow, st)
                refuse(flow, st, exc)
                return
        if st.headers_scrubbed:
            scrubbed, n = self.engine.scrub(raw, st.tenant or "")
            st.scrubbed += n
            out = scrubbed if n else None
        else:
            out = self._scrub_headers(resp, st, raw)
            st.headers_scrubbed = True
        if out is not None:
            resp.set_content(out)

    @guarded
    def websocket_message(self, flow: http.HTTPFlow) -> None:
        assert self.engine is not None and flow.websocket is not None
        messages = flow.websocket.messages
        msg = messages[-1]
        st = self._state.get(flow)
        tenant = st.tenant if st is not None else None
        if msg.from_client and self.engine.raw_in_message(tenant, msg.content):
            # A raw value in a WebSocket message: no policy location allows it.
            log.error("keybroker: raw secret value in a WebSocket message; closing it")
            msg.drop()
            flow.kill()
        elif not msg.from_client:
            out, n = self.engine.scrub(msg.content, tenant or "")
            if n:
                msg.content = out
                if st is not None:
                    st.scrubbed += n
        for old in messages[:-1]:  # do not keep a connection's history (values included)
            old.content = b""
        del messages[:-1]
