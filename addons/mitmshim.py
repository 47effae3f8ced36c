"""Every reach into mitmproxy internals, in one place (DESIGN.md §7.3).

The choke point. In mitmproxy 12 each byte bound for the agent is produced
by one of the proxy's layers. keybroker lets only three kinds of layer run
(the ``next_layer`` decision, :func:`choose_layer`): TLS towards the client
and the server, and the HTTP layer. Anything else — raw TCP, UDP, DNS, QUIC,
an HTTP layer in another proxy mode — is replaced by a layer that closes the
connection. The HTTP layer is re-tagged as :class:`_GuardedHttpLayer`, whose
one override sees every HTTP event on its way to the agent's connection
(HTTP/1 and HTTP/2 alike, WebSocket frames included, since a switched
stream's bytes are handed to the agent's connection as response data):

- response heads: the reason phrase and every header field pass
  :meth:`Guard.head`, which scrubs them (mitmproxy's own 1xx, CONNECT
  answers and error pages included);
- a ``101`` that is not a valid WebSocket switch is refused;
- trailers pass :meth:`Guard.trailers`;
- body bytes of a response keybroker's hooks did not scrub, and every byte
  of a switched (WebSocket) stream, pass a tripwire (:meth:`Guard.leaks`):
  if a value shows, the agent's connection is cut;
- mitmproxy's error pages (a ``ResponseProtocolError`` before the head left)
  become keybroker's JSON reply (:meth:`Guard.refusal`);
- WebSocket ping/pong payloads and close reasons pass
  :meth:`Guard.control` in both directions.

Nothing here decides policy; :class:`addons.chokepoint.Chokepoint` is the
:class:`Guard`. The module refuses to load on a mitmproxy it was not written
for (``tests/unit/addons/test_mitmshim.py`` fails loudly on an upgrade).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

import mitmproxy.version
import wsproto.events
from mitmproxy import ctx, http
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.layers import ClientTLSLayer, ServerTLSLayer, websocket
from mitmproxy.proxy.layers.http import HttpLayer, HTTPMode, HttpStream
from mitmproxy.proxy.layers.http._events import (
    ErrorCode,
    RequestProtocolError,
    ResponseData,
    ResponseEndOfMessage,
    ResponseHeaders,
    ResponseProtocolError,
    ResponseTrailers,
)
from mitmproxy.proxy.layers.websocket import WebsocketStartHook

from broker.request.responses import Reply

__all__ = [
    "SUPPORTED",
    "Guard",
    "choose_layer",
    "cut_client",
    "enable_reuse_port",
]

SUPPORTED = (12,)
"""mitmproxy major versions whose internals this module was checked against."""

MAJOR = int(mitmproxy.version.VERSION.split(".")[0])
if MAJOR not in SUPPORTED:  # pragma: no cover - exercised by the version test
    raise ImportError(
        f"keybroker's mitmproxy shim was written for mitmproxy {SUPPORTED}, not "
        f"{mitmproxy.version.VERSION}: re-check addons/mitmshim.py before upgrading"
    )

log = logging.getLogger("keybroker")
_TO_CLIENT = (ResponseHeaders, ResponseData, ResponseTrailers, ResponseProtocolError)
_CUT = "keybroker: connection cut"


class Guard(Protocol):
    """What the choke point asks keybroker (every method must not raise)."""

    def head(self, flow: http.HTTPFlow | None, response: http.Response) -> None:
        """Scrub the reason phrase and header fields in place."""

    def trailers(self, flow: http.HTTPFlow | None, trailers: http.Headers) -> None:
        """Scrub trailer fields in place."""

    def switch_allowed(self, flow: http.HTTPFlow | None) -> bool:
        """May this ``101`` go to the agent?"""

    def scrubbed(self, flow: http.HTTPFlow | None) -> bool:
        """Did keybroker's hooks scrub this flow's response body?"""

    def leaks(self, data: bytes) -> bool:
        """Does ``data`` hold any value (in any spelling the scrubber knows)?"""

    def tail(self) -> int:
        """How many bytes of context a split value can span (longest pattern - 1)."""

    def refusal(self, flow: http.HTTPFlow | None, code: ErrorCode) -> Reply | None:
        """The reply replacing mitmproxy's error page, or None to pass a cut on."""

    def control(self, flow: http.HTTPFlow, from_client: bool, data: bytes) -> bytes | None:
        """A WebSocket control payload to relay (scrubbed), or None to close."""

    def client_failed(self, flow: http.HTTPFlow | None) -> None:
        """The agent's side of ``flow`` failed (disconnect, reset, bad request)."""


# -- the next_layer decision -------------------------------------------------------------------
class _Refused(layer.Layer):
    """Stands in for a layer whose bytes would not pass keybroker: closes."""

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Start):
            yield commands.Log(
                "keybroker: refused a connection in a protocol it does not relay", logging.WARNING
            )
            yield commands.CloseConnection(self.context.client)


_ALLOWED_MODES = (HTTPMode.regular, HTTPMode.transparent)


def choose_layer(nextlayer: layer.NextLayer, guard: Guard, decide: Callable[[Any], None]) -> None:
    """The ``next_layer`` hook's work: let ``decide`` (mitmproxy's NextLayer
    addon) propose a layer if none is set, then allow TLS and HTTP layers
    only, with every HTTP layer guarded; anything else is refused."""
    if nextlayer.layer is None:
        decide(nextlayer)
        if nextlayer.layer is None:
            return  # mitmproxy needs more bytes to decide; asked again later
    node: layer.Layer | None = nextlayer.layer
    while node is not None and not isinstance(node, layer.NextLayer):
        if isinstance(node, HttpLayer) and node.mode in _ALLOWED_MODES:
            _guard_http_layer(node, guard)
            break
        if type(node) not in (ServerTLSLayer, ClientTLSLayer):
            nextlayer.layer = _Refused(nextlayer.context)
            return
        node = getattr(node, "child_layer", None)


def _guard_http_layer(node: HttpLayer, guard: Guard) -> None:
    if type(node) is HttpLayer:
        node.__class__ = _GuardedHttpLayer  # no state added by __init__; see the class
    node._kb_guard = guard  # type: ignore[attr-defined]
    node._kb_sent = set()  # type: ignore[attr-defined]
    node._kb_tails = {}  # type: ignore[attr-defined]


# -- the HTTP layer, guarded ---------------------------------------------------------------------
class _GuardedHttpLayer(HttpLayer):
    """mitmproxy's HTTP layer with one override on the way to the agent.

    Instances are made by mitmproxy as ``HttpLayer`` and re-tagged by
    :func:`choose_layer` before they start, so the class adds attributes
    there, never in ``__init__``."""

    _kb_guard: Guard
    _kb_sent: set[int]
    """Streams whose response head has gone to the agent."""
    _kb_tails: dict[int, bytes]
    """Per switched stream: the last bytes sent, so a value split across sends is seen."""

    def event_to_child(
        self, child: layer.Layer | HttpStream, event: events.Event
    ) -> layer.CommandGenerator[None]:
        if isinstance(event, _TO_CLIENT) and child is self.connections.get(self.context.client):
            for out in self._kb_filter(event):
                yield from super().event_to_child(child, out)
            return
        if isinstance(event, RequestProtocolError) and isinstance(child, HttpStream):
            self._kb_guard.client_failed(getattr(child, "flow", None))
        for command in super().event_to_child(child, event):
            if isinstance(command, WebsocketStartHook):
                self._kb_wrap_websocket(command.flow)  # before any frame is relayed
            yield command

    # Each branch returns the events that replace ``event`` (usually itself).
    def _kb_filter(self, event: events.Event) -> list[events.Event]:
        sid: int = event.stream_id  # type: ignore[attr-defined]
        stream = self.streams.get(sid)
        flow: http.HTTPFlow | None = getattr(stream, "flow", None)
        guard = self._kb_guard
        if isinstance(event, ResponseHeaders):
            if event.response.status_code == 101 and not guard.switch_allowed(flow):
                return self._kb_reply(sid, flow, ErrorCode.GENERIC_SERVER_ERROR, event)
            guard.head(flow, event.response)
            self._kb_sent.add(sid)
            return [event]
        if isinstance(event, ResponseData):
            switched = stream is not None and stream.child_layer is not None
            if switched and flow is not None and flow.request.method == "CONNECT":
                return [event]  # a tunnel: its bytes come from guarded layers inside it
            if not switched and guard.scrubbed(flow):
                return [event]
            return self._kb_tripwire(sid, event)
        if isinstance(event, ResponseTrailers):
            guard.trailers(flow, event.trailers)
            return [event]
        assert isinstance(event, ResponseProtocolError)
        self._kb_tails.pop(sid, None)
        if sid not in self._kb_sent:
            return self._kb_reply(sid, flow, event.code, event)
        return [ResponseProtocolError(sid, _CUT, event.code)]

    def _kb_tripwire(self, sid: int, event: ResponseData) -> list[events.Event]:
        guard = self._kb_guard
        before = self._kb_tails.get(sid, b"")
        window = before + event.data
        if guard.leaks(window):
            log.error("keybroker: a value in bytes bound for the agent; cutting the connection")
            self._kb_tails.pop(sid, None)
            return [ResponseProtocolError(sid, _CUT, ErrorCode.KILL)]
        keep = guard.tail()
        self._kb_tails[sid] = window[-keep:] if keep else b""
        return [event]

    def _kb_reply(
        self, sid: int, flow: http.HTTPFlow | None, code: ErrorCode, event: events.Event
    ) -> list[events.Event]:
        reply = self._kb_guard.refusal(flow, code)
        if reply is None:
            if isinstance(event, ResponseProtocolError):
                return [ResponseProtocolError(sid, _CUT, event.code)]
            return [ResponseProtocolError(sid, _CUT, ErrorCode.KILL)]
        self._kb_sent.add(sid)
        resp = http.Response.make(
            reply.status, reply.body, {**reply.headers, "connection": "close"}
        )
        return [
            ResponseHeaders(sid, resp, end_stream=False),
            ResponseData(sid, reply.body),
            ResponseEndOfMessage(sid),
        ]

    def _kb_wrap_websocket(self, flow: http.HTTPFlow) -> None:
        for stream in self.streams.values():
            ws = stream.child_layer
            if getattr(stream, "flow", None) is flow and isinstance(ws, websocket.WebsocketLayer):
                guard = self._kb_guard
                ws.server_ws.send2 = _control(ws.server_ws.send2, guard, flow, True, ws)  # type: ignore[method-assign,assignment]
                ws.client_ws.send2 = _control(ws.client_ws.send2, guard, flow, False, ws)  # type: ignore[method-assign,assignment]


def _control(
    send2: Callable[[wsproto.events.Event], commands.SendData],
    guard: Guard,
    flow: http.HTTPFlow,
    from_client: bool,
    ws: websocket.WebsocketLayer,
) -> Callable[[wsproto.events.Event], commands.Command]:
    """Wrap one direction's ``send2`` so control frames pass :meth:`Guard.control`."""

    def send(event: wsproto.events.Event) -> commands.Command:
        if isinstance(event, (wsproto.events.Ping, wsproto.events.Pong)):
            payload = guard.control(flow, from_client, bytes(event.payload))
            if payload is None:
                return commands.CloseConnection(ws.context.client)
            event = type(event)(payload=payload)
        elif isinstance(event, wsproto.events.CloseConnection) and event.reason:
            reason = guard.control(flow, from_client, event.reason.encode("utf-8", "replace"))
            clean = reason.decode("utf-8", "replace") if reason is not None else ""
            event = wsproto.events.CloseConnection(code=event.code, reason=clean)
        return send2(event)

    return send


# -- the other two reaches -----------------------------------------------------------------------
def cut_client(flow: http.HTTPFlow) -> None:
    """Close the agent's connection now (``flow.kill()`` alone waits for the
    upstream to finish, which may never happen)."""
    server = ctx.master.addons.get("proxyserver")
    handler = server.connections.get(flow.client_conn.id) if server else None
    if handler is not None:
        handler.close_connection(handler.client)


def enable_reuse_port() -> None:
    """mitmproxy binds with ``asyncio.start_server`` and no SO_REUSEPORT;
    ``--workers`` processes need it to share one listen address."""
    original = asyncio.start_server

    async def start_server(*args: Any, **kwargs: Any) -> asyncio.Server:
        kwargs.setdefault("reuse_port", True)
        return await original(*args, **kwargs)

    asyncio.start_server = start_server
