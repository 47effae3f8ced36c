"""Tenant confusion and Proxy-Authorization: the tenant is bound to the
client connection at CONNECT; anything the agent writes later (a second
Proxy-Authorization inside the tunnel, per HTTP/2 stream) neither changes
it nor leaves the broker. (The single in-tunnel header case is
``test_secured_path.py::test_proxy_authorization_never_reaches_upstream``.)"""

from __future__ import annotations

import itertools
import threading
from typing import Any

import pytest

from tests.security.conftest import Sec, assert_no_leak, connect, h2_get, h2_tunnel, request, tunnel
from tests.support.proxy import Proxy
from tests.support.upstream import Upstream

pytestmark = pytest.mark.integration

TENANTS = ["acme", "globex", "initech"]
PAIRS = [pytest.param(a, b, id=f"{a}-then-{b}") for a, b in itertools.permutations(TENANTS, 2)]


def creds(sec: Sec, tenant: str) -> tuple[str, str]:
    t = sec.tenants()[tenant]
    return t.name, t.token


def tokens(sec: Sec) -> list[str]:
    return [t.token for t in sec.tenants().values()]


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_keepalive_second_proxy_authorization_ignored(
    sbroker: Proxy, sec: Sec, upstream: Upstream, a: str, b: str
) -> None:
    """Attack: tenant A's tunnel on HTTP/1.1 keep-alive; later requests carry
    tenant B's Proxy-Authorization (alone, twice, or after A's own).
    Expected: every request is A's: A's value substituted, never B's; the
    header is stripped (no token upstream); nothing leaks back."""
    other = {"acme": "globex", "globex": "initech", "initech": "acme"}[b]
    extra: list[list[tuple[str, str]]] = [
        [],
        [("Proxy-Authorization", Proxy.auth_header(*creds(sec, b)))],
        [
            ("Proxy-Authorization", Proxy.auth_header(*creds(sec, b))),
            ("proxy-authorization", Proxy.auth_header(*creds(sec, other))),
        ],
        [
            ("Proxy-Authorization", Proxy.auth_header(*creds(sec, a))),
            ("PROXY-AUTHORIZATION", Proxy.auth_header(*creds(sec, b))),
        ],
        [],
    ]
    upstream.clear()
    got = b""
    with tunnel(sbroker, f"127.0.0.1:{sec.port}", creds=creds(sec, a)) as w:
        for i, hs in enumerate(extra):
            w.send(
                request(
                    "GET",
                    f"/echo/ka/{a}/{i}",
                    "x",
                    [*hs, ("Authorization", "Bearer <<secret:stripe>>")],
                )
            )
            resp = w.response()
            assert resp.status == 200, resp.raw[:300]
            assert resp.header("connection") != "close"
            got += resp.raw
    assert_no_leak(got, sec)
    assert len(upstream.received) == len(extra)
    assert {r.conn for r in upstream.received} == {upstream.received[0].conn}
    for r in upstream.received:
        wire = str(r.headers)
        assert sec.stripe_of(a) in wire
        assert all(sec.stripe_of(t) not in wire for t in TENANTS if t != a)
        assert "proxy-authorization" not in wire.lower()
        assert not any(tok in wire for tok in tokens(sec))


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_http2_streams_keep_the_connect_tenant(
    sbroker: Proxy, sec: Sec, upstream: Upstream, a: str, b: str
) -> None:
    """Attack: two HTTP/2 tunnels, tenants A and B, whose streams interleave;
    streams in A's tunnel carry B's proxy-authorization.
    Expected: every stream gets its tunnel's tenant's value (A's never goes
    out in B's stream or the reverse); the header is stripped; no leak back."""
    upstream.clear()
    ca, cb = h2_tunnel(sbroker, sec, a), h2_tunnel(sbroker, sec, b)
    try:
        sids: dict[str, list[int]] = {a: [], b: []}
        for i in range(4):
            for t, c in ((a, ca), (b, cb)):
                spoof = [
                    ("proxy-authorization", Proxy.auth_header(*creds(sec, b if t == a else a)))
                ]
                sids[t].append(c.send(h2_get(sec, f"/echo/h2/{t}/{i}", *spoof)))
            ca.flush()
            cb.flush()
        threads = [threading.Thread(target=c.pump, args=(sids[t],)) for t, c in ((a, ca), (b, cb))]
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
        for t, c in ((a, ca), (b, cb)):
            assert [c.responses[s]["status"] for s in sids[t]] == [200] * 4
            assert_no_leak(b"".join(c.responses[s]["body"] for s in sids[t]), sec)
    finally:
        ca.w.close()
        cb.w.close()
    assert len(upstream.received) == 8
    for r in upstream.received:
        owner = r.path.split("/")[3]
        wire = str(r.headers)
        assert sec.stripe_of(owner) in wire, r.path
        assert all(sec.stripe_of(t) not in wire for t in TENANTS if t != owner), r.path
        assert not any(tok in wire for tok in tokens(sec))


def test_proxy_authorization_stripped_from_plain_http(
    sbroker: Proxy, sec: Sec, plain_upstream: Any
) -> None:
    """Attack: plain-http absolute-form requests (auth on every request) on
    keep-alive, with duplicated and differently-cased Proxy-Authorization,
    one of them another tenant's, and Proxy-Authorization sent again as a
    chunked-body trailer.
    Expected: each request is answered as a valid header's tenant or
    refused (the trailer request: 400 malformed_request, a Proxy-* field may
    not be a trailer); no Proxy-Authorization, Proxy-Connection or token reaches the
    upstream (headers or trailers); nothing leaks back."""
    n = len(plain_upstream.received)
    url = f"http://127.0.0.1:{sec.plain_port}/echo/pa"
    pa_a = Proxy.auth_header(*creds(sec, "acme"))
    pa_b = Proxy.auth_header(*creds(sec, "globex"))
    got = b""
    with connect(sbroker) as w:
        for hs in (
            [("Proxy-Authorization", pa_a), ("Proxy-Connection", "keep-alive")],
            [("proxy-authorization", pa_a), ("PROXY-AUTHORIZATION", pa_b)],
        ):
            w.send(request("GET", url, f"127.0.0.1:{sec.plain_port}", hs))
            resp = w.response()
            got += resp.raw
            assert resp.status in (200, 407), resp.raw[:300]
    # Request trailers are forwarded (addons/wire.py) only when each field may
    # be a trailer (RFC 9110 §6.5.1): a Proxy-Authorization trailer is refused.
    with connect(sbroker) as w:
        body = b"5\r\nhello\r\n0\r\nProxy-Authorization: " + pa_b.encode() + b"\r\n\r\n"
        w.send(
            request(
                "POST",
                url,
                f"127.0.0.1:{sec.plain_port}",
                [
                    ("Proxy-Authorization", pa_a),
                    ("Transfer-Encoding", "chunked"),
                    ("Trailer", "Proxy-Authorization"),
                ],
                body,
            )
        )
        refused = w.rest(2.0)
        got += refused
    assert refused.startswith(b"HTTP/1.1 400 ") and b"malformed_request" in refused, refused[:200]
    assert_no_leak(got, sec)
    assert not any(tok.encode() in got for tok in tokens(sec))
    for r in plain_upstream.received[n:]:
        wire = r.wire().decode("latin-1").lower()
        assert "proxy-authorization" not in wire and "proxy-connection" not in wire
        assert not any(tok.lower() in wire for tok in tokens(sec))
