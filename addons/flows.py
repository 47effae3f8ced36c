"""Per-flow state and the small helpers the hooks in :mod:`addons.hooks` share."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mitmproxy import http

from broker.request.auth import claimed_tenant
from broker.request.decision import Decision, Destination
from broker.request.responses import Reply

if TYPE_CHECKING:
    from broker.engine import Engine

__all__ = [
    "FlowState",
    "error_response",
    "frame_body",
    "guarded",
    "strip_proxy_headers",
    "who_tried",
]


@dataclass
class FlowState:
    started: float = field(default_factory=time.monotonic)
    tenant: str | None = None
    dest: Destination | None = None
    decision: Decision | None = None
    ours: bool = False
    """The response was made by keybroker (denial or error)."""
    done: bool = False
    """The audit record has been written."""
    originals: tuple[http.Headers, str, bytes | None] | None = None
    original_trailers: http.Headers | None = None
    """Request trailers as the agent sent them (placeholders), when substituted."""
    scrubbed: int = 0
    headers_scrubbed: bool = False
    """The response headers were scrubbed (a buffered response's wait for its body)."""
    stream: Any = None
    capture: Any = None
    """The capture rules (DESIGN.md §11) that read this response's body."""
    fingerprints: dict[str, Any] = field(default_factory=dict)
    record_id: str | None = None
    """The id of the ``sent`` audit record, once a value is on its way."""
    audit: dict[str, Any] = field(default_factory=dict)
    """Extra audit fields from the engine (governance: the approval)."""


def error_response(flow: http.HTTPFlow, reply: Reply) -> http.Response:
    return http.Response.make(reply.status, reply.body, reply.headers)


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


def guarded[F: Callable[..., Any]](hook: F) -> F:
    """mitmproxy logs addon exceptions and forwards the flow; we fail closed."""

    @functools.wraps(hook)
    def sync_wrapper(self: Any, flow: http.HTTPFlow, *a: Any) -> Any:
        try:
            return hook(self, flow, *a)
        except Exception as exc:
            self.fail_closed(flow, hook.__name__, exc)
            return None

    @functools.wraps(hook)
    async def async_wrapper(self: Any, flow: http.HTTPFlow, *a: Any) -> Any:
        try:
            return await hook(self, flow, *a)
        except Exception as exc:
            self.fail_closed(flow, hook.__name__, exc)
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
