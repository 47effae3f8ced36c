"""Per-flow state, shared by the addon's parts (:mod:`addons.hooks`,
:mod:`addons.scrubbing`, :mod:`addons.chokepoint`), and the one place a flow
is refused, restored and recorded."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from mitmproxy import http

from broker.credentials.capture_scrub import ChainedStream
from broker.engine import Engine
from broker.request.auth import claimed_tenant
from broker.request.decision import Decision, Destination, Reason, failure
from broker.request.locations import RequestParts
from broker.request.responses import Reply, reply_for
from broker.scrub.stream import StreamScrubber

__all__ = [
    "FlowState",
    "Flows",
    "destination",
    "error_response",
    "frame_body",
    "guarded",
    "strip_proxy_headers",
    "who_tried",
    "write_parts",
]

log = logging.getLogger("keybroker")

_BEFORE_UPSTREAM = frozenset({"http_connect", "requestheaders", "request"})
"""Hooks that run before anything went upstream: a refusal is a plain response."""
_RECORD_NOW = frozenset({"http_connect", "response", "error"})
"""Hooks after which mitmproxy calls neither ``response`` nor ``error`` for the flow."""


@dataclass
class FlowState:
    started: float = field(default_factory=time.monotonic)
    tenant: str | None = None
    dest: Destination | None = None
    decision: Decision | None = None
    ours: bool = False
    """The response was made by keybroker (denial or error)."""
    reply: Reply | None = None
    """keybroker's reply, for the choke point to send if mitmproxy would send its own page."""
    done: bool = False
    """The audit record has been written."""
    originals: tuple[http.Headers, str, bytes | None] | None = None
    original_trailers: http.Headers | None = None
    """Request trailers as the agent sent them (placeholders), when substituted."""
    scrubbed: int = 0
    headers_scrubbed: bool = False
    """The response headers were scrubbed (a buffered response's wait for its body)."""
    body_scrubbed: bool = False
    """The response body passes keybroker's scrubber (buffered, streamed or our own)."""
    client_failed: bool = False
    stream: StreamScrubber | ChainedStream | None = None
    capture: Any = None
    """The capture rules (DESIGN.md §11) that read this response's body."""
    fingerprints: dict[str, Any] = field(default_factory=dict)
    record_id: str | None = None
    """The id of the ``sent`` audit record, once a value is on its way."""
    audit: dict[str, Any] = field(default_factory=dict)
    """Extra audit fields from the engine (governance: the approval)."""


class Flows:
    """The live flows' state, and what every part does to a flow."""

    def __init__(self, engine: Callable[[], Engine | None]) -> None:
        self._engine = engine
        self._state: weakref.WeakKeyDictionary[http.HTTPFlow, FlowState] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def engine(self) -> Engine:
        engine = self._engine()
        assert engine is not None, "keybroker_config is not set"
        return engine

    def get(self, flow: http.HTTPFlow | None) -> FlowState | None:
        return self._state.get(flow) if flow is not None else None

    def start(self, flow: http.HTTPFlow, dest: Destination | None) -> FlowState:
        st = self._state[flow] = FlowState(dest=dest)
        return st

    def ensure(self, flow: http.HTTPFlow) -> FlowState:
        st = self._state.get(flow)
        if st is None:
            st = self._state[flow] = FlowState()
        return st

    def refuse(self, flow: http.HTTPFlow, st: FlowState, decision: Decision, hook: str) -> None:
        """The one way a flow is refused. Before anything went upstream the
        agent gets keybroker's JSON reply as the response; in ``response``
        (the body read, nothing sent) likewise; otherwise the flow is killed
        and the choke point sends the reply instead of mitmproxy's page, or
        cuts the connection if the response head already left."""
        self.restore(flow, st)
        st.decision, st.ours = decision, True
        st.reply = reply_for(decision, st.dest)
        st.body_scrubbed = True
        streamed = flow.response is not None and bool(flow.response.stream)
        if hook in _BEFORE_UPSTREAM or (hook == "response" and not streamed):
            flow.response = http.Response.make(st.reply.status, st.reply.body, st.reply.headers)
        elif flow.killable:
            flow.kill()
        if hook in _RECORD_NOW:
            self.finish(flow, st)

    def fail_closed(self, flow: http.HTTPFlow, hook: str, exc: BaseException) -> None:
        # The exception text may hold request data: log its type only.
        log.error("keybroker: %s failed (%s); failing closed", hook, type(exc).__name__)
        st = self.ensure(flow)
        secrets = st.decision.secrets if st.decision else ()
        self.refuse(flow, st, failure(Reason.INTERNAL_ERROR, st.tenant, None, secrets), hook)

    def restore(self, flow: http.HTTPFlow, st: FlowState) -> None:
        """Put the placeholders back so stored flows never hold a value."""
        if st.originals is None:
            return
        headers, path, raw = st.originals
        if st.original_trailers is not None:
            flow.request.trailers = st.original_trailers
            st.original_trailers = None
        flow.request.headers = headers
        flow.request.path = path
        flow.request.raw_content = raw
        st.originals = None

    def finish(self, flow: http.HTTPFlow, st: FlowState) -> None:
        """Write the flow's audit record (once)."""
        engine = self._engine()
        if st.done or engine is None:
            return
        st.done = True
        decision = st.decision or failure(Reason.INTERNAL_ERROR, st.tenant)
        if st.reply is not None:
            status: int | None = st.reply.status
        else:
            status = flow.response.status_code if flow.response is not None else None
        engine.record(
            decision=decision,
            dest=st.dest,
            status=status,
            scrubbed=st.scrubbed,
            started=st.started,
            fingerprints=st.fingerprints,
            record_id=st.record_id,
            extra=st.audit,
        )


def error_response(flow: http.HTTPFlow, reply: Reply) -> http.Response:
    """``reply`` as a mitmproxy response (for :mod:`addons.capturing`)."""
    return http.Response.make(reply.status, reply.body, reply.headers)


def destination(flow: http.HTTPFlow) -> Destination:
    """What the flow connects to (never the Host header), and the other names
    the client gave (SNI, Host/:authority) for the fronting check."""
    r = flow.request
    authority = None if r.method == "CONNECT" else r.host_header
    return Destination.of(
        r.scheme,
        r.host,
        r.port,
        r.method,
        r.path.split("?", 1)[0],
        sni=flow.client_conn.sni,
        authority=authority,
    )


def write_parts(flow: http.HTTPFlow, st: FlowState, old: RequestParts, new: RequestParts) -> None:
    """Write the substituted parts into the request, keeping the originals
    to restore once it has been sent."""
    req = flow.request
    path, sep, query = req.path.partition("?")
    st.originals = (http.Headers(req.headers.fields), req.path, req.raw_content)
    if new.trailers != old.trailers:
        st.original_trailers = http.Headers(req.trailers.fields) if req.trailers else None
        req.trailers = http.Headers([(_wire(k), _wire(v)) for k, v in new.trailers])
    if new.headers != old.headers:
        req.headers = http.Headers([(_wire(k), _wire(v)) for k, v in new.headers])
    if new.path != path or new.query != query:
        req.path = new.path + (sep + new.query if sep else "")
    if new.body != old.body:
        req.content = new.body
    frame_body(req)


def _wire(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def frame_body(req: http.Request) -> None:
    """mitmproxy writes an HTTP/2 body that came without content-length to an
    HTTP/1.1 upstream unframed, so the upstream could read a second request
    nobody decided on. Give every forwarded body a length."""
    if (
        req.raw_content
        and "content-length" not in req.headers
        and ("transfer-encoding" not in req.headers)
    ):
        req.headers["content-length"] = str(len(req.raw_content))


_PROXY_HEADERS = (b"proxy-authorization", b"proxy-connection")


def strip_proxy_headers(headers: http.Headers) -> None:
    """Drop every Proxy-Authorization and Proxy-Connection field, in one pass
    (names compare case-insensitively, as ``Headers.pop`` does)."""
    fields = headers.fields
    if any(k.lower() in _PROXY_HEADERS for k, _ in fields):
        headers.fields = tuple(f for f in fields if f[0].lower() not in _PROXY_HEADERS)


class _HasFlows(Protocol):
    flows: Flows


def guarded[F: Callable[..., Any]](hook: F) -> F:
    """mitmproxy logs addon exceptions and forwards the flow; we fail closed."""

    @functools.wraps(hook)
    def sync_wrapper(self: _HasFlows, flow: http.HTTPFlow, *a: Any) -> Any:
        try:
            return hook(self, flow, *a)
        except Exception as exc:
            self.flows.fail_closed(flow, hook.__name__, exc)
            return None

    @functools.wraps(hook)
    async def async_wrapper(self: _HasFlows, flow: http.HTTPFlow, *a: Any) -> Any:
        try:
            return await hook(self, flow, *a)
        except Exception as exc:
            self.flows.fail_closed(flow, hook.__name__, exc)
            return None

    wrapper = async_wrapper if asyncio.iscoroutinefunction(hook) else sync_wrapper
    return wrapper  # type: ignore[return-value]


def who_tried(
    engine: Engine | None, header: str | None, refused: Decision | None
) -> Decision | None:
    """The refusal as the audit records it: with the tenant the request
    claimed (when the policy has that name). The 407 the client got names
    no tenant, so it confirms no names."""
    if engine is None or refused is None:
        return refused
    return dataclasses.replace(refused, tenant=claimed_tenant(engine.policy, header))
