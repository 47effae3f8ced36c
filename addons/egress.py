"""Egress control in the mitmproxy shell (DESIGN.md §12): a CONNECT to a
destination outside the tenant's allowlist is refused at once (no TLS
interception, no upstream connection, no DNS query), and every upstream
connection goes to exactly the address the core checked for that client
connection.

mitmproxy resolves a host name itself when it opens a connection. That
second lookup is what a rebinding DNS server answers differently, so
``server_connect`` replaces the name with the pinned address (SNI and the
Host header keep the name: the certificate is still checked against it),
and refuses a connection nothing was checked for. The check itself is
:mod:`broker.egress.check`; the request path runs it in
:meth:`broker.engine.Engine.process` with this connection's pins.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING

from mitmproxy import ctx, http
from mitmproxy.connection import Client, Server
from mitmproxy.proxy.server_hooks import ServerConnectionHookData

from addons.flows import destination
from broker.egress.addresses import canonical, private_kind
from broker.egress.check import check_listed
from broker.egress.resolve import Pins
from broker.egress.rules import host_key
from broker.request.auth import WHOAMI_HOST
from broker.request.decision import Decision, Reason, failure

if TYPE_CHECKING:
    from addons.hooks import KeyBroker

log = logging.getLogger("keybroker")
NOT_CHECKED = "keybroker: no egress check for this destination (or its name did not resolve)"


class EgressHooks:
    """A sub-addon of :class:`addons.hooks.KeyBroker` (its hooks run after
    the parent's, so the tenant is already bound to the connection)."""

    def __init__(self, broker: KeyBroker) -> None:
        self._broker = broker
        self._pins: weakref.WeakKeyDictionary[Client, Pins] = weakref.WeakKeyDictionary()
        self._names: weakref.WeakKeyDictionary[Server, tuple[str, int]] = (
            weakref.WeakKeyDictionary()
        )

    def pins(self, client: Client) -> Pins:
        pins = self._pins.get(client)
        if pins is None:
            pins = self._pins[client] = Pins()
        return pins

    # -- CONNECT -------------------------------------------------------------------
    def http_connect(self, flow: http.HTTPFlow) -> None:
        """An unlisted destination is refused at once. Nothing is resolved
        here: the private-address check runs on each request inside the
        tunnel, after the placeholder decisions (a refused placeholder keeps
        its reason), and a raw value in the host is refused before any DNS
        query can carry it."""
        if flow.response is not None:
            return  # already refused (407)
        try:
            engine = self._broker.engine
            bound = self._broker._conn_tenant.get(flow.client_conn)
            if engine is None or bound is None or flow.request.host == WHOAMI_HOST:
                return
            tenant = engine.policy.tenants.get(bound[0])
            if tenant is None:
                return  # the request inside the tunnel is refused as unauthenticated
            host, port = host_key(flow.request.host), flow.request.port
            unlisted = check_listed(tenant.egress_rules, host, port)
            if unlisted is not None and unlisted.refused:
                self._refuse(flow, failure(Reason.EGRESS_DENIED, bound[0]))
        except Exception as exc:
            log.error("keybroker: egress check failed (%s); failing closed", type(exc).__name__)
            self._refuse(flow, failure(Reason.INTERNAL_ERROR, None))

    def _refuse(self, flow: http.HTTPFlow, decision: Decision) -> None:
        """A refused CONNECT goes to ``http_connect_error``, never to
        ``response``: answered and audited at once (``Flows.refuse``)."""
        st = self._broker.flows.start(flow, destination(flow))
        self._broker.flows.refuse(flow, st, decision, "http_connect")

    # -- upstream connections ------------------------------------------------------
    def server_connect(self, data: ServerConnectionHookData) -> None:
        try:
            self._pin_connection(data)
        except Exception as exc:  # mitmproxy would log it and connect to the name
            log.error("keybroker: egress pinning failed (%s); failing closed", type(exc).__name__)
            data.server.error = NOT_CHECKED

    def _pin_connection(self, data: ServerConnectionHookData) -> None:
        server = data.server
        if server.address is None or server.via is not None:
            server.error = NOT_CHECKED
            return
        name, port = server.address[0], server.address[1]
        pins = self._pins.get(data.client)
        ip = pins.get(host_key(name), port) if pins is not None else None
        if ip is None:
            server.error = NOT_CHECKED
            return
        target = canonical(ip)
        if private_kind(ip) in ("loopback", "unspecified") and port == _listen_port():
            server.error = "keybroker: refusing to connect to itself"
            return
        if target != name:
            self._names[server] = server.address
            server.address = (target, port)

    def server_connected(self, data: ServerConnectionHookData) -> None:
        self._restore(data.server)

    def server_connect_error(self, data: ServerConnectionHookData) -> None:
        self._restore(data.server)

    def _restore(self, server: Server) -> None:
        """Give the open connection its name back: mitmproxy reuses a
        connection for the next request only when the address it asks for
        (the name) equals the connection's. ``Server`` forbids changing the
        address of an open connection; this puts back what it had before
        we changed it, for the same peer."""
        name = self._names.pop(server, None)
        if name is not None:
            object.__setattr__(server, "address", name)


def _listen_port() -> int | None:
    try:
        return int(ctx.options.listen_port)
    except (AttributeError, ValueError, TypeError):
        return None
