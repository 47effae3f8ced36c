"""Redirects: the broker never follows them (a followed redirect would carry
the substituted request to a host the policy never saw), and a Location
that reflects a value comes back scrubbed."""

from __future__ import annotations

from urllib.parse import quote

import pytest
import requests

from tests.security.conftest import Forwarder, Sec, assert_no_leak, request, tunnel
from tests.support.proxy import Proxy
from tests.support.upstream import Upstream

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_not_followed(
    sbroker: Proxy, sec: Sec, upstream: Upstream, alt_fwd: Forwarder, status: int
) -> None:
    """Attack: an allowed request (value substituted) whose upstream answers
    with a redirect to another host and port (an open redirect on the
    allowed API).
    Expected: the redirect goes back to the agent unchanged; the broker sends
    exactly one request upstream and opens nothing towards the new target."""
    to = f"https://localhost:{alt_fwd.port}/echo/followed"
    before = alt_fwd.connections
    upstream.clear()
    with tunnel(sbroker, f"127.0.0.1:{sec.port}", creds=(sec.sc.acme.name, sec.sc.acme.token)) as w:
        w.send(
            request(
                "POST",
                f"/redirect?status={status}&to={quote(to, safe='')}",
                "x",
                [("Authorization", "Bearer <<secret:stripe>>")],
                b"{}",
            )
        )
        resp = w.response()
    assert resp.status == status and resp.header("location") == to
    assert [r.path.split("?")[0] for r in upstream.received] == ["/redirect"]
    assert alt_fwd.connections == before
    assert_no_leak(resp.raw, sec)


@pytest.mark.parametrize("spelling", ["raw", "percent", "b64"])
def test_location_carrying_value_is_scrubbed(
    sbroker: Proxy, sec: Sec, upstream: Upstream, spelling: str
) -> None:
    """Attack: put an allowed placeholder in the query of a redirect endpoint
    so that the upstream's `Location` reflects the value (raw, percent-encoded
    or base64), then follow it with a client that re-sends what it got.
    Expected: the Location the client receives holds no value in any
    encoding; following it (requests, redirects on) leaks nothing either, and
    the follow-up is itself decided (the placeholder back in Location is
    substituted again only where the policy allows)."""
    if spelling == "raw":
        target = "/reflect?where=location&from=query:k&k=<<secret:anywhere>>&status=302"
    elif spelling == "percent":
        target = "/reflect?where=location&from=query:k&form=pctall&status=302&k=<<secret:anywhere>>"
    else:
        target = "/reflect?where=location&from=query:k&form=b64&status=302&k=<<secret:anywhere>>"
    upstream.clear()
    with tunnel(sbroker, f"127.0.0.1:{sec.port}", creds=(sec.sc.acme.name, sec.sc.acme.token)) as w:
        w.send(request("GET", target, "x"))
        resp = w.response()
    assert resp.status == 302, resp.raw[:300]
    assert sec.sc.values["acme/anywhere"] in upstream.received[-1].path
    assert_no_leak(resp.raw, sec)
    r = requests.get(
        f"https://127.0.0.1:{sec.port}{target}",
        proxies=sbroker.proxies(sec.sc.acme.name, sec.sc.acme.token),
        verify=str(sbroker.ca_path),
        timeout=20,
        allow_redirects=True,
    )
    history = b"".join(str(h.headers).encode() + h.content for h in [*r.history, r])
    assert_no_leak(history, sec)
