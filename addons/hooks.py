"""The mitmproxy addon: thin, guarded hooks that translate flows to calls on
:class:`broker.engine.Engine` (DESIGN.md §1, §10): identity, the secured
request path and the audit record here, the response path in
:mod:`addons.scrubbing`. ``addons/keybroker.py`` is the entry point
(``keybroker run`` and ``mitmdump -s``)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import weakref
from collections.abc import Callable
from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.connection import Client

from addons.egress import EgressHooks
from addons.flows import (
    FlowState,
    error_response,
    frame_body,
    guarded,
    strip_proxy_headers,
    who_tried,
)
from addons.scrubbing import ResponseHooks
from addons.upstream_trust import after_reload
from addons.wire import head_problem, install, trailer_problem
from addons.wire_http1 import TOO_LARGE, set_request_limit
from broker.engine import Engine, Outcome
from broker.policy.load import PolicyError
from broker.request.auth import WHOAMI_HOST
from broker.request.codings import DecodeError, TooLarge, decode_body
from broker.request.decision import Decision, Destination, Reason, failure
from broker.request.locations import RequestParts
from broker.request.responses import reply_for

log = logging.getLogger("keybroker")


def _wire(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class KeyBroker(ResponseHooks):
    def __init__(
        self, engine: Engine | None = None, *, feed_factory: Callable[[], Any] | None = None
    ) -> None:
        self.engine = engine
        self._feed_factory = feed_factory
        self._conn_tenant: weakref.WeakKeyDictionary[Client, tuple[str, str]] = (
            weakref.WeakKeyDictionary()
        )
        self._state: weakref.WeakKeyDictionary[http.HTTPFlow, FlowState] = (
            weakref.WeakKeyDictionary()
        )
        install()  # wire hygiene in mitmproxy's HTTP layers (addons/wire.py)
        self.egress = EgressHooks(self)
        self.addons = [self.egress]  # mitmproxy calls a sub-addon's hooks after ours
        self.fault_injection: str | None = os.environ.get("KEYBROKER_FAULT_INJECT") or None
        """Tests name a hook here to force an exception inside it (it fails closed)."""

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
        if getattr(ctx.options, "rawtcp", False):
            ctx.options.rawtcp = False  # no tunnel is relayed as raw TCP, past every hook
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

    # -- failure -----------------------------------------------------------------
    def fail_closed(self, flow: http.HTTPFlow, hook: str, exc: BaseException) -> None:
        # The exception text may hold request data: log its type only.
        log.error("keybroker: %s failed (%s); failing closed", hook, type(exc).__name__)
        st = self._state.get(flow) or FlowState()
        self._state[flow] = st
        decision = failure(
            Reason.INTERNAL_ERROR, st.tenant, None, st.decision.secrets if st.decision else ()
        )
        if hook in ("responseheaders", "websocket_message") or (
            flow.response is not None and flow.response.stream
        ):
            flow.kill()  # headers may already be on their way: cut the connection
            return
        self._restore(flow, st)
        st.decision, st.ours = decision, True
        flow.response = error_response(flow, reply_for(decision))
        if hook in ("response", "error"):
            self._finish(flow, st)

    def _inject(self, hook: str) -> None:
        if self.fault_injection == hook:
            raise RuntimeError("fault injected by a test")

    # -- identity ----------------------------------------------------------------
    def _deny_flow(self, flow: http.HTTPFlow, st: FlowState, decision: Decision) -> None:
        st.decision, st.ours = decision, True
        dest = st.dest
        flow.response = error_response(
            flow,
            reply_for(
                decision,
                host=dest.host if dest else "",
                port=dest.port if dest else 0,
                scheme=dest.scheme if dest else "",
                method=dest.method if dest else "",
            ),
        )

    @guarded
    def http_connect(self, flow: http.HTTPFlow) -> None:
        self._inject("http_connect")
        assert self.engine is not None
        header = flow.request.headers.get("proxy-authorization")
        ident = self.engine.authenticate(header)
        flow.request.headers.pop("proxy-authorization", None)
        if ident is None:
            st = FlowState(dest=self._dest(flow))
            self._state[flow] = st
            self._deny_flow(flow, st, failure(Reason.UNAUTHENTICATED, None))
            st.decision = who_tried(self.engine, header, st.decision)
            self._finish(flow, st)  # a refused CONNECT never reaches `response`
            return
        refused = self.engine.check_connect(ident[0], self._dest(flow))
        if refused is not None and refused.reply is not None:  # a value in the target
            st = FlowState(dest=self._dest(flow), tenant=ident[0], ours=True)
            st.decision, flow.response = refused.decision, error_response(flow, refused.reply)
            self._state[flow] = st
            self._finish(flow, st)
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

    @staticmethod
    def _dest(flow: http.HTTPFlow) -> Destination:
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

    @guarded
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._inject("requestheaders")
        st = FlowState(dest=self._dest(flow))
        self._state[flow] = st
        st.tenant, why = self._tenant_for(flow)
        claimed = flow.request.headers.get("proxy-authorization")
        strip_proxy_headers(flow.request.headers)
        if head_problem(flow) is not None:
            self._deny_flow(flow, st, failure(Reason.MALFORMED_REQUEST, st.tenant))
            flow.response.headers["connection"] = "close"  # type: ignore[union-attr]
            return
        if st.tenant is None:
            self._deny_flow(flow, st, failure(why, None))
            st.decision = who_tried(self.engine, claimed, st.decision)
            return
        if flow.request.host == WHOAMI_HOST and flow.request.pretty_host == WHOAMI_HOST:
            self._whoami(flow, st)
            return
        assert self.engine is not None
        set_request_limit(self.engine.policy.limits.max_request_body)
        length = flow.request.headers.get("content-length", "0")
        if length.isdigit() and int(length) > self.engine.policy.limits.max_request_body:
            self._deny_flow(flow, st, failure(Reason.BODY_TOO_LARGE, st.tenant))

    def _whoami(self, flow: http.HTTPFlow, st: FlowState) -> None:
        assert self.engine is not None and st.tenant is not None
        import json

        secrets = sorted(self.engine.policy.tenants[st.tenant].secrets)
        st.ours, st.decision = True, Decision(verdict="pass", tenant=st.tenant)
        flow.response = http.Response.make(
            200,
            json.dumps({"tenant": st.tenant, "secrets": secrets}).encode(),
            {"content-type": "application/json"},
        )

    # -- the secured path ----------------------------------------------------------
    @guarded
    async def request(self, flow: http.HTTPFlow) -> None:
        self._inject("request")
        st = self._state.get(flow)
        if st is None or st.ours or flow.response is not None:
            return
        assert self.engine is not None and st.dest is not None
        req = flow.request
        if trailer_problem(flow) is not None:
            self._deny_flow(flow, st, failure(Reason.MALFORMED_REQUEST, st.tenant))
            return
        body = self._request_body(flow, st)
        if body is None:
            return
        path, sep, query = req.path.partition("?")
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
            st.ours = True
            flow.response = error_response(flow, outcome.reply)
            return
        frame_body(req)
        if outcome.parts is None:
            return
        new = outcome.parts
        st.originals = (http.Headers(req.headers.fields), req.path, req.raw_content)
        if new.trailers != parts.trailers:
            st.original_trailers = http.Headers(req.trailers.fields) if req.trailers else None
            req.trailers = http.Headers([(_wire(k), _wire(v)) for k, v in new.trailers])
        if new.headers != parts.headers:
            req.headers = http.Headers(
                [
                    (k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
                    for k, v in new.headers
                ]
            )
        if new.path != path or new.query != query:
            req.path = new.path + (sep + new.query if sep else "")
        if new.body != body:
            req.content = new.body
        frame_body(req)
        self._inject("request_after_substitution")

    def _request_body(self, flow: http.HTTPFlow, st: FlowState) -> bytes | None:
        """The decoded request body, held to ``limits.max_request_body`` on the
        wire and once decoded (a small gzip body may expand hugely); None
        when the request was refused."""
        assert self.engine is not None
        limit = self.engine.policy.limits.max_request_body
        raw = flow.request.raw_content or b""
        encoding = flow.request.headers.get("content-encoding", "").strip().lower()
        try:
            if len(raw) > limit:
                raise TooLarge("request body over the limit")
            if raw and encoding and encoding != "identity":
                return decode_body(raw, encoding, limit)
            return raw
        except TooLarge:
            self._deny_flow(flow, st, failure(Reason.BODY_TOO_LARGE, st.tenant))
        except DecodeError:
            self._deny_flow(flow, st, failure(Reason.UNDECODABLE_BODY, st.tenant))
        return None

    def _restore(self, flow: http.HTTPFlow, st: FlowState) -> None:
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

    @guarded
    def error(self, flow: http.HTTPFlow) -> None:
        st = self._state.get(flow)
        if st is None or st.done:
            return
        if st.decision is None and flow.error and "protocol error" in flow.error.msg:
            big = TOO_LARGE in flow.error.msg  # a chunk past the limit, or a bad body
            reason = Reason.BODY_TOO_LARGE if big else Reason.MALFORMED_REQUEST
            st.decision = failure(reason, st.tenant)
            flow.response = error_response(flow, reply_for(st.decision))  # as wire.py sent it
        self._restore(flow, st)
        self._finish(flow, st)

    def _finish(self, flow: http.HTTPFlow, st: FlowState) -> None:
        if st.done or self.engine is None:
            return
        st.done = True
        decision = st.decision or failure(Reason.INTERNAL_ERROR, st.tenant)
        status = flow.response.status_code if flow.response is not None else None
        self.engine.record(
            decision=decision,
            dest=st.dest,
            status=status,
            scrubbed=st.scrubbed,
            started=st.started,
            fingerprints=st.fingerprints,
            record_id=st.record_id,
            extra=st.audit,
        )
