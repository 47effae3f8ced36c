"""The mitmproxy addon: guarded hooks that translate flows to calls on
:class:`broker.engine.Engine` (DESIGN.md §1, §10). ``addons/keybroker.py``
is the entry point (``keybroker run`` and ``mitmdump -s``)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import weakref
from collections.abc import Callable
from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.connection import Client
from mitmproxy.flow import Error

from addons.chokepoint import Chokepoint
from addons.egress import EgressHooks
from addons.flows import (
    Flows,
    FlowState,
    destination,
    frame_body,
    guarded,
    strip_proxy_headers,
    who_tried,
    write_parts,
)
from addons.scrubbing import ResponsePath
from addons.upstream_trust import after_reload
from addons.wire import head_problem, install, trailer_problem
from addons.wire_http1 import TOO_LARGE, set_request_limit
from broker.engine import Engine
from broker.pipeline import Outcome
from broker.policy.load import PolicyError
from broker.request.auth import WHOAMI_HOST
from broker.request.codings import DecodeError
from broker.request.decision import Decision, Reason, failure
from broker.request.framing import content_coding, request_body, upgrade_allowed, upstream_reason
from broker.request.locations import RequestParts
from broker.request.responses import reply_for

log = logging.getLogger("keybroker")


class KeyBroker:
    """Identity, the secured request path, upstream failures and the
    lifecycle; the response path (:class:`addons.scrubbing.ResponsePath`)
    and the choke point (:class:`addons.chokepoint.Chokepoint`) are its
    child addons, sharing one :class:`addons.flows.Flows`."""

    def __init__(
        self, engine: Engine | None = None, *, feed_factory: Callable[[], Any] | None = None
    ) -> None:
        self.engine = engine
        self._feed_factory = feed_factory
        self._conn_tenant: weakref.WeakKeyDictionary[Client, tuple[str, str]] = (
            weakref.WeakKeyDictionary()
        )
        self.flows = Flows(lambda: self.engine)
        self.responses = ResponsePath(self.flows)
        self.chokepoint = Chokepoint(self.flows)
        self.egress = EgressHooks(self)
        # mitmproxy calls a sub-addon's hooks after ours, in this order
        self.addons = [self.egress, self.responses, self.chokepoint]
        install()  # wire hygiene in mitmproxy's HTTP layers (addons/wire.py)

    # -- lifecycle ---------------------------------------------------------------
    def load(self, loader: Any) -> None:
        loader.add_option("keybroker_config", str, "", "Path to the keybroker policy file.")

    def configure(self, updated: set[str]) -> None:
        if "keybroker_config" in updated and ctx.options.keybroker_config and self.engine is None:
            try:
                self.engine = Engine.from_file(
                    ctx.options.keybroker_config,
                    feed=self._feed_factory() if self._feed_factory else None,
                )
            except PolicyError as exc:
                raise exceptions.OptionsError("\n".join(exc.errors)) from None
            self._configure_tls()
        if getattr(ctx.options, "connection_strategy", "lazy") != "lazy":
            ctx.options.connection_strategy = "lazy"  # a denial must open no upstream connection
        if getattr(ctx.options, "ssl_insecure", False):
            raise exceptions.OptionsError(
                "keybroker always verifies upstream TLS: unset ssl_insecure"
            )
        if getattr(ctx.options, "stream_large_bodies", None):
            raise exceptions.OptionsError(
                "keybroker streams and scrubs itself: unset stream_large_bodies"
            )

    def _configure_tls(self) -> None:
        """mitmproxy uses the keybroker CA, and verifies upstream servers
        against the system trust store plus ``upstream_ca``."""
        from addons.upstream_trust import upstream_options
        from broker.tls.ca import init_ca

        assert self.engine is not None
        policy = self.engine.policy
        files, _ = init_ca(policy.certs_dir)
        update: dict[str, Any] = {}
        if ctx.options.confdir in ("~/.mitmproxy", ""):
            update["confdir"] = str(files.confdir)
        update.update(upstream_options(policy))
        ctx.options.update(**update)

    async def running(self) -> None:
        try:
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGHUP, self.reload)
            loop.add_signal_handler(signal.SIGUSR1, self.rotate_audit)
        except (RuntimeError, NotImplementedError, ValueError):
            pass
        if self.engine is not None:
            await self.engine.governor.start()  # admin API, revocation watch (§13)

    def reload(self) -> None:
        if self.engine is None:
            return
        old = self.engine.policy
        errors = self.engine.reload()
        if errors:
            log.warning(
                "keybroker: policy reload failed, keeping the last good policy:\n  %s",
                "\n  ".join(errors),
            )
        else:
            log.warning("keybroker: policy reloaded from %s", self.engine.source)
            after_reload(old, self.engine.policy)

    def rotate_audit(self) -> None:
        if self.engine is not None:
            self.engine.audit.rotate()

    def done(self) -> None:
        if self.engine is not None:
            self.engine.close()

    # -- identity ----------------------------------------------------------------
    @guarded
    def http_connect(self, flow: http.HTTPFlow) -> None:
        assert self.engine is not None
        header = flow.request.headers.get("proxy-authorization")
        ident = self.engine.authenticate(header)
        flow.request.headers.pop("proxy-authorization", None)
        if ident is None:
            st = self.flows.start(flow, destination(flow))
            refused = who_tried(self.engine, header, failure(Reason.UNAUTHENTICATED, None))
            assert refused is not None
            self.flows.refuse(flow, st, refused, "http_connect")
            return
        raw = self.engine.check_connect(ident[0], destination(flow))
        if raw is not None and raw.reply is not None:  # a value in the target
            st = self.flows.start(flow, destination(flow))
            st.tenant = ident[0]
            self.flows.refuse(flow, st, raw.decision, "http_connect")
            return
        self._conn_tenant[flow.client_conn] = ident

    def _tenant_for(self, flow: http.HTTPFlow) -> tuple[str | None, Reason]:
        """The request's tenant, or None and why (407, or 503 for a session
        whose revocations cannot be known)."""
        assert self.engine is not None
        bound = self._conn_tenant.get(flow.client_conn)
        if bound is None:
            bound = self.engine.authenticate(flow.request.headers.get("proxy-authorization"))
        if bound is None:
            return None, Reason.UNAUTHENTICATED
        problem = self.engine.identity_problem(*bound)
        return (bound[0], Reason.UNAUTHENTICATED) if problem is None else (None, problem)

    @guarded
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        st = self.flows.start(flow, destination(flow))
        st.tenant, why = self._tenant_for(flow)
        claimed = flow.request.headers.get("proxy-authorization")
        strip_proxy_headers(flow.request.headers)
        if head_problem(flow) is not None:
            decision = failure(Reason.MALFORMED_REQUEST, st.tenant)
            self.flows.refuse(flow, st, decision, "requestheaders")
            flow.response.headers["connection"] = "close"  # type: ignore[union-attr]
            return
        if st.tenant is None:
            self.flows.refuse(flow, st, failure(why, None), "requestheaders")
            st.decision = who_tried(self.engine, claimed, st.decision)
            return
        if flow.request.host == WHOAMI_HOST and flow.request.pretty_host == WHOAMI_HOST:
            self._whoami(flow, st)
            return
        assert self.engine is not None
        set_request_limit(self.engine.policy.limits.max_request_body)
        length = flow.request.headers.get("content-length", "0")
        if length.isdigit() and int(length) > self.engine.policy.limits.max_request_body:
            decision = failure(Reason.BODY_TOO_LARGE, st.tenant)
            self.flows.refuse(flow, st, decision, "requestheaders")

    def _whoami(self, flow: http.HTTPFlow, st: FlowState) -> None:
        assert self.engine is not None and st.tenant is not None
        secrets = sorted(self.engine.policy.tenants[st.tenant].secrets)
        st.ours = st.body_scrubbed = True
        st.decision = Decision(verdict="pass", tenant=st.tenant)
        flow.response = http.Response.make(
            200,
            json.dumps({"tenant": st.tenant, "secrets": secrets}).encode(),
            {"content-type": "application/json"},
        )

    # -- the secured path ----------------------------------------------------------
    @guarded
    async def request(self, flow: http.HTTPFlow) -> None:
        st = self.flows.get(flow)
        if st is None or st.ours or flow.response is not None:
            return
        assert self.engine is not None and st.dest is not None
        req = flow.request
        if trailer_problem(flow) is not None:
            self.flows.refuse(flow, st, failure(Reason.MALFORMED_REQUEST, st.tenant), "request")
            return
        if not upgrade_allowed(list(req.headers.items(multi=True))):
            decision = failure(Reason.PROTOCOL_NOT_ALLOWED, st.tenant)
            self.flows.refuse(flow, st, decision, "request")
            return
        try:
            body = request_body(
                req.raw_content or b"",
                content_coding(req.headers.items(multi=True)),
                self.engine.policy.limits.max_request_body,
            )
        except DecodeError as exc:
            self.flows.refuse(flow, st, failure(exc.reason, st.tenant), "request")
            return
        path, _, query = req.path.partition("?")
        parts = RequestParts(
            headers=tuple(req.headers.items(multi=True)),
            path=path,
            query=query,
            body=body,
            content_type=req.headers.get("content-type", ""),
            trailers=tuple(req.trailers.items(multi=True)) if req.trailers else (),
        )
        pins = self.egress.pins(flow.client_conn)
        outcome: Outcome = await self.engine.process(st.tenant, st.dest, parts, pins=pins)
        st.decision, st.fingerprints = outcome.decision, outcome.fingerprints
        st.record_id, st.audit = outcome.record_id, outcome.audit
        if outcome.reply is not None:
            st.ours, st.reply, st.body_scrubbed = True, outcome.reply, True
            reply = outcome.reply
            flow.response = http.Response.make(reply.status, reply.body, reply.headers)
            return
        if outcome.parts is not None:
            write_parts(flow, st, parts, outcome.parts)  # frames the body it writes
        else:
            frame_body(req)

    @guarded
    def error(self, flow: http.HTTPFlow) -> None:
        """An upstream that cannot be reached, fails TLS or breaks the
        protocol: an ``error`` record with its reason, and keybroker's JSON
        reply in place of mitmproxy's page (sent by the choke point). A
        request mitmproxy refused before keybroker decided on it (no
        destination, invalid headers) is ``malformed_request``."""
        st = self.flows.get(flow)
        if st is None or st.done or flow.error is None:
            return
        err, head_out = flow.error, flow.response is not None and st.headers_scrubbed
        ours = st.ours or st.client_failed or head_out or err.msg == Error.KILLED_MESSAGE
        if not ours and st.decision is None:  # never reached `request`: nothing went upstream
            big = TOO_LARGE in err.msg  # a chunk past the limit, or a bad body
            st.decision = failure(
                Reason.BODY_TOO_LARGE if big else Reason.MALFORMED_REQUEST, st.tenant
            )
        elif not ours and st.decision is not None:
            server = flow.server_conn
            reason = upstream_reason(
                err.msg,
                tcp_up=server.timestamp_tcp_setup is not None,
                tls_needed=flow.request.scheme == "https",
                tls_up=server.timestamp_tls_setup is not None,
            )
            st.decision = failure(reason, st.tenant, None, st.decision.secrets, upstream=True)
        if not ours and st.decision is not None:
            st.reply = reply_for(st.decision, st.dest)
        # mitmdump prints it, stored flows keep it: it may quote upstream bytes
        err.msg = f"keybroker: {(st.decision.reason if st.decision else None) or 'error'}"
        self.flows.restore(flow, st)
        self.flows.finish(flow, st)
