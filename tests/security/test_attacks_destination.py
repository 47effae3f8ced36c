"""Attacks on *where* a value goes: unlisted host/port/scheme, CONNECT target
vs Host vs SNI vs absolute-URI, nested CONNECT, plain-http downgrade.

Invariant 1: the destination is the CONNECT target; a value goes only where
every part of the rule matches, and only to the name the rule lists.
(The single-location denials and the Host-header spoof with an unlisted
CONNECT target are in ``tests/integration/test_secured_path.py``.)"""

from __future__ import annotations

from typing import Any

import pytest

from tests.security.conftest import (
    Forwarder,
    Sec,
    assert_no_leak,
    audit_records,
    connect,
    request,
    tunnel,
)
from tests.support.proxy import Proxy
from tests.support.upstream import Upstream

pytestmark = pytest.mark.integration

PH = "<<secret:anywhere>>"
# The placeholder in each location the `anywhere` secret allows.
LOCATIONS: dict[str, dict[str, Any]] = {
    "header-authorization": {"headers": [("Authorization", f"Bearer {PH}")]},
    "header-x-api-key": {"headers": [("X-Api-Key", PH)]},
    "query": {"path": "/echo/q?k=%3C%3Csecret:anywhere%3E%3E"},
    "path": {"path": "/echo/bot<<secret:anywhere>>/x"},
    "body": {
        "headers": [("Content-Type", "application/json")],
        "body": b'{"k": "<<secret:anywhere>>"}',
        "method": "POST",
    },
}


def _creds(sec: Sec, tenant: str = "acme") -> tuple[str, str]:
    t = sec.tenants()[tenant]
    return t.name, t.token


@pytest.mark.parametrize("loc", list(LOCATIONS))
@pytest.mark.parametrize("where", ["unlisted-host", "unlisted-port", "unlisted-scheme"])
def test_placeholder_to_unlisted_destination(
    sbroker: Proxy,
    sec: Sec,
    upstream: Upstream,
    alt_fwd: Forwarder,
    plain_upstream: Any,
    where: str,
    loc: str,
) -> None:
    """Attack: a placeholder the tenant may use (in a location it allows) sent
    to a host, port or scheme its rule does not list.
    Expected: 403 with host/port/scheme_not_allowed; no upstream connection,
    nothing received anywhere, no value back."""
    spec = LOCATIONS[loc]
    raw = request(
        spec.get("method", "GET"),
        spec.get("path", "/echo/u"),
        "x",
        spec.get("headers"),
        spec.get("body", b""),
    )
    upstream.clear()
    before_alt, before_plain = alt_fwd.connections, len(plain_upstream.received)
    if where == "unlisted-scheme":
        w = connect(sbroker)
        target = f"http://127.0.0.1:{plain_upstream.port}"
        line, rest = raw.split(b" ", 1)
        w.send(
            line
            + b" "
            + target.encode()
            + rest.replace(
                b"\r\n",
                f"\r\nProxy-Authorization: {Proxy.auth_header(*_creds(sec))}\r\n".encode(),
                1,
            )
        )
    else:
        port = alt_fwd.port if where == "unlisted-port" else sec.port
        host = "localhost" if where == "unlisted-host" else "127.0.0.1"
        w = tunnel(sbroker, f"{host}:{port}", creds=_creds(sec), sni=None)
        w.send(raw)
    with w:
        resp = w.response()
    reason = {
        "unlisted-host": "host_not_allowed",
        "unlisted-port": "port_not_allowed",
        "unlisted-scheme": "scheme_not_allowed",
    }[where]
    assert (resp.status, resp.reason) == (403, reason), resp.raw[:300]
    assert upstream.received == [] and upstream.connections == 0
    assert alt_fwd.connections == before_alt
    assert len(plain_upstream.received) == before_plain
    assert_no_leak(resp.raw, sec)


@pytest.mark.parametrize(
    "spoof",
    ["host-header", "sni", "absolute-uri", "all-three"],
)
def test_connect_target_decides_not_host_sni_or_uri(
    sbroker: Proxy, sec: Sec, upstream: Upstream, spoof: str
) -> None:
    """Attack: CONNECT 127.0.0.1 (which `lhonly` does not list), then name
    `localhost` (which it lists) in the Host header, the SNI, an absolute-form
    request URI, or all three.
    Expected: 403 host_not_allowed; nothing upstream."""
    name = f"localhost:{sec.port}"
    sni = "localhost" if spoof in ("sni", "all-three") else None
    host = name if spoof in ("host-header", "all-three") else f"127.0.0.1:{sec.port}"
    target = f"https://{name}/echo/abs" if spoof in ("absolute-uri", "all-three") else "/echo/abs"
    upstream.clear()
    with tunnel(sbroker, f"127.0.0.1:{sec.port}", creds=_creds(sec), sni=sni) as w:
        w.send(request("GET", target, host, [("Authorization", "<<secret:lhonly>>")]))
        resp = w.response()
    assert (resp.status, resp.reason) == (403, "host_not_allowed"), resp.raw[:300]
    assert upstream.received == []


def test_absolute_uri_inside_tunnel_cannot_redirect_the_connection(
    sbroker: Proxy, sec: Sec, upstream: Upstream, alt_fwd: Forwarder
) -> None:
    """Attack: CONNECT 127.0.0.1:P (allowed), then an absolute-form URI naming
    localhost on another port (`https://localhost:ALT/...`).
    Expected: the request is decided and sent on the CONNECT target (the
    value reaches 127.0.0.1:P only) or refused; nothing reaches the other port."""
    before = alt_fwd.connections
    upstream.clear()
    with tunnel(sbroker, f"127.0.0.1:{sec.port}", creds=_creds(sec)) as w:
        w.send(
            request(
                "GET",
                f"https://localhost:{alt_fwd.port}/echo/abs2",
                f"localhost:{alt_fwd.port}",
                [("Authorization", "Bearer <<secret:stripe>>")],
            )
        )
        resp = w.response()
    assert alt_fwd.connections == before, "the absolute URI must not choose the connection"
    assert resp.status in (200, 400, 403), resp.raw[:300]
    records = [r for r in audit_records(sbroker) if r["path"].startswith("/echo/abs2")]
    assert records and all(r["host"] == "127.0.0.1" and r["port"] == sec.port for r in records)
    assert_no_leak(resp.raw, sec)


def test_sni_mismatch_never_sends_value_to_other_name(
    sbroker: Proxy, sec: Sec, upstream: Upstream
) -> None:
    """Attack: CONNECT 127.0.0.1:P (allowed for `stripe`), TLS to the broker
    with SNI `localhost`, a name the rule does not list.
    Expected: the broker refuses, or upstream TLS fails, or upstream TLS uses
    the CONNECT host: the upstream never gets the value in a TLS session
    for `localhost`."""
    upstream.clear()
    with tunnel(sbroker, f"127.0.0.1:{sec.port}", creds=_creds(sec), sni="localhost") as w:
        w.send(
            request(
                "GET",
                "/echo/sni",
                f"127.0.0.1:{sec.port}",
                [("Authorization", "Bearer <<secret:stripe>>")],
            )
        )
        resp = w.response()
    assert_no_leak(resp.raw, sec)
    wrong = [r.sni for r in upstream.received if sec.stripe_of("acme") in str(r.headers)]
    assert "localhost" not in wrong, "the value went to a TLS session for an unlisted name"


def test_domain_fronting_by_sni(sbroker: Proxy, sec: Sec, cdn: Upstream) -> None:
    """Attack: CONNECT localhost:CDN (allowed for `cdn`), SNI and Host
    `fronted.example`, a tenant of the same server (a CDN) the rule does not list.
    Expected: refused, or upstream TLS speaks to `localhost`; never the
    value in a session for `fronted.example`."""
    cdn.clear()
    with tunnel(sbroker, f"localhost:{cdn.port}", creds=_creds(sec), sni="fronted.example") as w:
        w.send(
            request(
                "GET",
                "/echo/front",
                "fronted.example",
                [("Authorization", "Bearer <<secret:cdn>>")],
            )
        )
        resp = w.response()
    assert_no_leak(resp.raw, sec)
    assert not any(
        r.sni == "fronted.example" and sec.stripe_of("acme") in str(r.headers) for r in cdn.received
    )


def test_domain_fronting_by_host_header(sbroker: Proxy, sec: Sec, cdn: Upstream) -> None:
    """Attack: CONNECT localhost:CDN (allowed), SNI localhost, but
    `Host: fronted.example` so a CDN routes the request to another origin.
    Expected: 403 (or Host rewritten to the destination); the value never
    travels in a request addressed to `fronted.example`."""
    cdn.clear()
    with tunnel(sbroker, f"localhost:{cdn.port}", creds=_creds(sec), sni="localhost") as w:
        w.send(
            request(
                "GET",
                "/echo/front-host",
                "fronted.example",
                [("Authorization", "Bearer <<secret:cdn>>")],
            )
        )
        resp = w.response()
    assert_no_leak(resp.raw, sec)
    assert not any(
        r.header("host") == "fronted.example" and sec.stripe_of("acme") in str(r.headers)
        for r in cdn.received
    )


def test_nested_connect_inside_tunnel(
    sbroker: Proxy, sec: Sec, upstream: Upstream, alt_fwd: Forwarder
) -> None:
    """Attack: inside an allowed tunnel, a second `CONNECT` to another target,
    then a placeholder request through it.
    Expected: the inner CONNECT is refused (4xx or closed); the other target
    gets no connection and nothing holds a value."""
    before = alt_fwd.connections
    upstream.clear()
    with tunnel(sbroker, f"127.0.0.1:{sec.port}", creds=_creds(sec)) as w:
        w.send(
            f"CONNECT 127.0.0.1:{alt_fwd.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            + request("GET", "/echo/nested", "x", [("Authorization", "Bearer <<secret:stripe>>")])
        )
        try:
            first = w.response()
            status = first.status
            data = first.raw + w.rest(1.0)
        except EOFError:
            status, data = 0, b""
    assert status == 0 or 400 <= status < 500, data[:300]
    assert alt_fwd.connections == before
    assert not any(sec.stripe_of("acme") in str(r.headers) for r in upstream.received)
    assert_no_leak(data, sec)


def test_plaintext_inside_connect_tunnel_is_http(
    sbroker: Proxy, sec: Sec, upstream: Upstream
) -> None:
    """Attack (downgrade): CONNECT 127.0.0.1:P, then plain HTTP (no TLS) in
    the tunnel with a placeholder for an https-only secret.
    Expected: 403 scheme_not_allowed; nothing upstream."""
    upstream.clear()
    with tunnel(sbroker, f"127.0.0.1:{sec.port}", creds=_creds(sec), tls=False) as w:
        w.send(request("GET", "/echo/down", "x", [("Authorization", "<<secret:stripe>>")]))
        resp = w.response()
    assert (resp.status, resp.reason) == (403, "scheme_not_allowed"), resp.raw[:300]
    assert upstream.received == []


@pytest.mark.parametrize(
    ("secret", "expect"),
    [("anywhere", 403), ("plainok", 200)],
    ids=["https-only-denied", "http-listed-injected"],
)
def test_plain_http_only_when_listed(
    sbroker: Proxy, sec: Sec, plain_upstream: Any, secret: str, expect: int
) -> None:
    """Attack (downgrade): an absolute-form `http://` request through the
    proxy with a placeholder.
    Expected: 403 scheme_not_allowed for a secret without `http` in its
    schemes; substitution over plain http only for one that lists it (and
    then the echo is scrubbed)."""
    n = len(plain_upstream.received)
    with connect(sbroker) as w:
        w.send(
            request(
                "GET",
                f"http://127.0.0.1:{sec.plain_port}/echo?k=<<secret:{secret}>>",
                f"127.0.0.1:{sec.plain_port}",
                [("Proxy-Authorization", Proxy.auth_header(*_creds(sec)))],
            )
        )
        resp = w.response()
    assert resp.status == expect, resp.raw[:300]
    got = plain_upstream.received[n:]
    value = sec.sc.values["acme/anywhere"]
    if expect == 403:
        assert resp.reason == "scheme_not_allowed" and got == []
    else:
        assert len(got) == 1 and value in got[0].path
    assert_no_leak(resp.raw, sec)
