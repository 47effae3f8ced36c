"""No byte reaches the agent without passing keybroker (DESIGN.md §7.3).

A child addon of :class:`addons.hooks.KeyBroker`. It

- refuses the mitmproxy options and proxy modes that open byte paths around
  the hooks (raw TCP, UDP/DNS and every mode but ``regular``, ignored or TCP
  hosts) and forces ``rawtcp`` off;
- decides every ``next_layer`` itself (TLS and HTTP only, each HTTP layer
  guarded: :mod:`addons.mitmshim`) and answers the guarded layers as their
  :class:`~addons.mitmshim.Guard`;
- scrubs every log record any handler emits (mitmproxy quotes upstream bytes
  in its protocol errors): :mod:`addons.logscrub`.
"""

from __future__ import annotations

from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.net.http import status_codes
from mitmproxy.proxy import layer
from mitmproxy.proxy.layers.http._events import ErrorCode
from mitmproxy.proxy.mode_specs import ProxyMode, RegularMode

from addons import logscrub, mitmshim
from addons.flows import Flows
from broker.request.decision import Reason, failure
from broker.request.responses import Reply, reply_for

_FORBIDDEN_LISTS = ("ignore_hosts", "allow_hosts", "tcp_hosts", "udp_hosts")


class Chokepoint:
    def __init__(self, flows: Flows) -> None:
        self.flows = flows
        self.log_filter = logscrub.ScrubFilter(self._scrub_text)

    # -- options -------------------------------------------------------------------------------
    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        if getattr(opts, "rawtcp", False):
            opts.rawtcp = False  # a non-WebSocket 101 must close, never become a pipe
        for name in _FORBIDDEN_LISTS:
            if getattr(opts, name, None):
                raise exceptions.OptionsError(
                    f"keybroker relays every connection through its hooks: unset {name}"
                )
        for spec in getattr(opts, "mode", None) or []:
            if not isinstance(ProxyMode.parse(spec), RegularMode):
                raise exceptions.OptionsError(
                    f"keybroker runs as a regular (explicit) proxy only: mode {spec!r} refused"
                )
        logscrub.install(self.log_filter)

    def running(self) -> None:
        logscrub.install(self.log_filter)  # handlers added since configure

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        decider = ctx.master.addons.get("nextlayer")
        mitmshim.choose_layer(nextlayer, self, decider.next_layer if decider else _none)

    def _scrub_text(self, data: bytes) -> tuple[bytes, int]:
        engine = self.flows._engine()
        return engine.scrub(data, "") if engine is not None else (data, 0)

    # -- the Guard the choke point asks --------------------------------------------------------
    def head(self, flow: http.HTTPFlow | None, response: http.Response) -> None:
        engine = self.flows._engine()
        st = self.flows.get(flow)
        if engine is None or (
            st is not None
            and st.headers_scrubbed
            and flow is not None
            and flow.response is response
        ):
            return  # the hooks scrubbed this very head (reason phrase included): not twice
        pieces = [response.data.reason, *(p for f in response.headers.fields for p in f)]
        done = engine.scrub_many(pieces, self._tenant(flow))
        if not any(n for _, n in done):
            return
        if done[0][1]:
            response.reason = status_codes.RESPONSES.get(response.status_code, "")
        out = [data for data, _ in done[1:]]
        response.headers.fields = tuple(zip(out[::2], out[1::2], strict=True))

    def trailers(self, flow: http.HTTPFlow | None, trailers: http.Headers) -> None:
        engine = self.flows._engine()
        if engine is None:
            return
        done = engine.scrub_many([p for f in trailers.fields for p in f], self._tenant(flow))
        if any(n for _, n in done):
            out = [data for data, _ in done]
            trailers.fields = tuple(zip(out[::2], out[1::2], strict=True))

    def _tenant(self, flow: http.HTTPFlow | None) -> str:
        """Whose placeholders a scrub may write (any other value: the marker)."""
        st = self.flows.get(flow)
        return (st.tenant if st is not None else None) or ""

    def switch_allowed(self, flow: http.HTTPFlow | None) -> bool:
        return flow is not None and flow.websocket is not None

    def scrubbed(self, flow: http.HTTPFlow | None) -> bool:
        st = self.flows.get(flow)
        return st is not None and st.body_scrubbed

    def leaks(self, data: bytes) -> bool:
        engine = self.flows._engine()
        return engine is not None and bool(engine.scrubber.owners_in(data))

    def tail(self) -> int:
        engine = self.flows._engine()
        return max(engine.scrubber.max_len - 1, 0) if engine is not None else 0

    def refusal(self, flow: http.HTTPFlow | None, code: ErrorCode) -> Reply | None:
        st = self.flows.get(flow)
        if st is not None and st.reply is not None:
            return st.reply
        if flow is not None and flow.response is not None and flow.response.status_code == 101:
            return reply_for(failure(Reason.PROTOCOL_NOT_ALLOWED, st.tenant if st else None))
        if code.http_status_code() is None:
            return None  # a cut (kill, cancel, disconnect): nothing is said
        tenant = st.tenant if st is not None else None
        dest = st.dest if st is not None else None
        return reply_for(failure(Reason.UPSTREAM_PROTOCOL_ERROR, tenant, upstream=True), dest)

    def control(self, flow: http.HTTPFlow, from_client: bool, data: bytes) -> bytes | None:
        if not self.leaks(data):
            return data
        return None if from_client else b""

    def client_failed(self, flow: http.HTTPFlow | None) -> None:
        st = self.flows.get(flow)
        if st is not None:
            st.client_failed = True


def _none(_: Any) -> None:
    return None
