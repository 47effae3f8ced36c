"""Host normalisation: the policy side and the connection side must agree on
case, trailing dot, IDNA and IPv6 literals, and spellings that resolve to a
listed address without being that name must not match it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.security.conftest import Forwarder, Sec, assert_no_leak, audit_records, request, tunnel
from tests.support.proxy import Proxy
from tests.support.upstream import Upstream

pytestmark = pytest.mark.integration

# (secret, CONNECT host, port key): each pair is the same host on both sides.
SAME = [
    pytest.param("lhnorm", "localhost", "up", id="policy-LocalHost.-connect-localhost"),
    pytest.param("lhnorm", "LOCALHOST", "up", id="connect-upper-case"),
    pytest.param("lhnorm", "localhost.", "up", id="connect-trailing-dot"),
    pytest.param("lhnorm", "LocalHost.", "up", id="connect-mixed-case-trailing-dot"),
    pytest.param("v6", "[::1]", "v6", id="ipv6-compressed"),
    pytest.param("v6", "[0:0:0:0:0:0:0:1]", "v6", id="ipv6-full"),
    pytest.param("v6", "[0000::0001]", "v6", id="ipv6-leading-zeros"),
]


@pytest.mark.parametrize(("secret", "host", "port"), SAME)
def test_equivalent_spellings_match(
    sbroker: Proxy,
    sec: Sec,
    upstream: Upstream,
    v6_fwd: Forwarder,
    secret: str,
    host: str,
    port: str,
) -> None:
    """Attack surface: a host spelled differently in the policy (`LocalHost.`,
    `[0:0::1]`) and on the CONNECT line (case, trailing dot, IPv6 forms).
    Expected: the same host on both sides: the decision allows with the
    canonical host, and the value reaches the upstream at that address (the
    echo comes back scrubbed). This resolver does not know `localhost.`, so
    there the connection fails after the allow (502 from mitmproxy)."""
    p = v6_fwd.port if port == "v6" else sec.port
    path = f"/echo/norm/{secret}/{host.strip('[]').replace(':', '-')}"
    upstream.clear()
    with tunnel(sbroker, f"{host}:{p}", creds=(sec.sc.acme.name, sec.sc.acme.token)) as w:
        w.send(request("GET", path, "x", [("Authorization", f"<<secret:{secret}>>")]))
        resp = w.response()
    rec = [r for r in audit_records(sbroker) if r["path"] == path][-1]
    assert rec["host"] == ("::1" if port == "v6" else "localhost")
    if host.endswith("."):  # allowed, then the connection failed: keybroker's own 502
        assert resp.status in (200, 502), resp.raw[:300]
        allowed = ("allow", None) if resp.status == 200 else ("error", "upstream_unreachable")
        assert (rec["decision"], rec["reason"]) == allowed
    else:
        assert rec["decision"] == "allow"
        assert resp.status == 200, resp.raw[:300]
    if resp.status == 200:
        assert sec.stripe_of("acme") in str(upstream.received[-1].headers)
    assert_no_leak(resp.raw, sec)


# Spellings an OS resolver may map to 127.0.0.1, which the policy lists as an
# address: none is that address, so none may match it.
NOT_SAME = [
    pytest.param("stripe", "127.000.000.001", id="ipv4-zero-padded"),
    pytest.param("stripe", "127.1", id="ipv4-short-form"),
    pytest.param("stripe", "2130706433", id="ipv4-decimal"),
    pytest.param("stripe", "0x7f000001", id="ipv4-hex"),
    pytest.param("stripe", "[::ffff:127.0.0.1]", id="ipv4-mapped-ipv6"),
    pytest.param("stripe", "localhost", id="name-for-listed-address"),
    pytest.param("lhonly", "127.0.0.1", id="address-for-listed-name"),
    pytest.param("lhonly", "localhost..", id="two-trailing-dots"),
    pytest.param("lhonly", "localhost%00.evil", id="percent-nul"),
    pytest.param("lhonly", "sub.localhost", id="subdomain-of-exact-name"),
]


@pytest.mark.parametrize(("secret", "host"), NOT_SAME)
def test_other_spellings_do_not_match(
    sbroker: Proxy, sec: Sec, upstream: Upstream, secret: str, host: str
) -> None:
    """Attack: name a listed address or host by a spelling the resolver
    accepts but that is not the listed one (zero-padded, short, decimal, hex
    IPv4, IPv4-mapped IPv6, a name for the address, an address for the name,
    double dots, an embedded NUL, a subdomain).
    Expected: refused (403 host_not_allowed, or the CONNECT itself refused);
    nothing upstream."""
    upstream.clear()
    try:
        w = tunnel(sbroker, f"{host}:{sec.port}", creds=(sec.sc.acme.name, sec.sc.acme.token))
    except (ConnectionRefusedError, OSError):
        assert upstream.received == []
        return
    with w:
        w.send(request("GET", "/echo/notsame", "x", [("Authorization", f"<<secret:{secret}>>")]))
        resp = w.response()
    assert (resp.status, resp.reason) == (403, "host_not_allowed"), resp.raw[:300]
    assert upstream.received == []


@pytest.mark.parametrize(
    "host", ["xn--bcher-kva.invalid", "XN--BCHER-KVA.INVALID.", "bücher.invalid", "BÜCHER.invalid"]
)
def test_idna_policy_matches_a_label_connection(sbroker: Proxy, sec: Sec, host: str) -> None:
    """Attack surface: the policy lists `bücher.invalid` (U-label); the agent
    CONNECTs to its A-label, an upper-case A-label with a trailing dot, or the
    U-label itself (raw UTF-8 on the CONNECT line).
    Expected: the decision treats all as `xn--bcher-kva.invalid` and allows
    (the host does not resolve, so the answer is keybroker's 502
    `upstream_unreachable`, never a 403), or mitmproxy refuses the raw UTF-8
    CONNECT line."""
    try:
        w = tunnel(sbroker, f"{host}:{sec.port}", creds=(sec.sc.acme.name, sec.sc.acme.token))
    except ConnectionRefusedError:
        assert not host.isascii(), "an ASCII CONNECT target must be accepted"
        return
    with w:
        w.send(request("GET", "/echo/idna", "x", [("Authorization", "<<secret:idna>>")]))
        resp = w.response()
    assert (resp.status, resp.reason) == (502, "upstream_unreachable"), resp.raw[:300]
    recs: list[dict[str, Any]] = [r for r in audit_records(sbroker) if r["path"] == "/echo/idna"]
    assert recs[-1]["host"] == "xn--bcher-kva.invalid"
    assert (recs[-1]["decision"], recs[-1]["secrets"]) == ("error", ["idna"])
