"""Raw-value egress: an agent that learned a real value (from an echo before
scrubbing was possible, a log, another tool) tries to send it out itself,
outside the placeholder path: encoded in a header, in a WebSocket message,
as a label of the CONNECT host (DNS exfiltration), or through a place the
broker records (the audit)."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from tests.security.conftest import Sec, assert_no_leak, request, tunnel
from tests.support.net import wait_for
from tests.support.proxy import Proxy
from tests.support.upstream import Upstream

pytestmark = pytest.mark.integration


@pytest.fixture
def warm(sbroker: Proxy, sec: Sec) -> Iterator[str]:
    """Resolve acme/stripe and acme/anywhere once, so the broker knows the values."""
    for secret in ("stripe", "anywhere"):
        with tunnel(
            sbroker, f"127.0.0.1:{sec.port}", creds=(sec.sc.acme.name, sec.sc.acme.token)
        ) as w:
            w.send(request("GET", "/echo/warm", "x", [("Authorization", f"<<secret:{secret}>>")]))
            assert w.response().status == 200
    yield sec.stripe_of("acme")


@pytest.mark.parametrize("form", ["raw", "base64", "hex", "percent-in-query"])
def test_raw_value_encoded_to_unlisted_host(
    sbroker: Proxy, sec: Sec, upstream: Upstream, warm: str, form: str
) -> None:
    """Attack: the raw value, encoded (base64, hex, percent), sent to a host
    no rule for it lists (`localhost`), as tenant acme (its owner) and as
    tenant globex. Expected: 403 raw_secret_egress for acme, nothing
    upstream. globex gets what any string gets (refusing acme's value there
    would let globex test guesses of it, issue 12 item 4), and nothing it
    receives holds the value."""
    v = warm.encode()
    spelled = {
        "raw": v,
        "base64": base64.b64encode(b"xx" + v),
        "hex": v.hex().encode(),
        "percent-in-query": quote(v, safe="").encode(),
    }[form]
    upstream.clear()
    statuses = []
    for tenant in (sec.sc.acme, sec.sc.globex):
        with tunnel(sbroker, f"localhost:{sec.port}", creds=(tenant.name, tenant.token)) as w:
            if form == "percent-in-query":
                w.send(request("GET", "/echo/egress?k=" + spelled.decode(), "x"))
            else:
                w.send(request("GET", "/echo/egress", "x", [("X-Data", spelled.decode())]))
            resp = w.response()
        statuses.append((resp.status, resp.reason))
        assert_no_leak(resp.raw, sec)
    assert statuses[0] == (403, "raw_secret_egress")
    assert statuses[1][0] == 200
    assert len(upstream.received) == 1  # globex's only


def _ws_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_raw_value_in_websocket_message(
    sbroker: Proxy, sec: Sec, upstream: Upstream, warm: str
) -> None:
    """Attack: open a WebSocket (no placeholder: a `pass`) to the upstream
    and send the raw value in a client message.
    Expected: the message never reaches the upstream (dropped, or the
    connection killed); nothing the client gets back holds the value."""
    upstream.clear()
    with tunnel(sbroker, f"127.0.0.1:{sec.port}", creds=(sec.sc.acme.name, sec.sc.acme.token)) as w:
        w.send(
            request(
                "GET",
                "/ws",
                "x",
                [
                    ("Upgrade", "websocket"),
                    ("Connection", "Upgrade"),
                    ("Sec-WebSocket-Key", base64.b64encode(os.urandom(16)).decode()),
                    ("Sec-WebSocket-Version", "13"),
                ],
            )
        )
        assert w.response(head_only=True).status == 101
        ended = upstream.ws_ended
        w.send(_ws_frame(b"exfil " + warm.encode()))
        back = w.rest(1.0)
    assert_no_leak(back, sec)
    # The positive event first: the broker cut the upstream side of the socket.
    assert wait_for(lambda: upstream.ws_ended > ended, 5), "the upstream socket stayed open"
    sent = any(warm.encode() in m for _, m in upstream.ws_messages)
    assert not sent, "the raw value reached the upstream in a WebSocket message"


@pytest.mark.parametrize("case", ["as-is", "swapped"])
def test_raw_value_as_connect_host_label(sbroker: Proxy, sec: Sec, warm: str, case: str) -> None:
    """Attack: CONNECT `<value>.invalid:443` (the value as written, or with
    its case swapped: DNS and the audit see it lower-cased) and send a plain
    request: the broker would resolve the name (the value goes to DNS, and
    to the server as SNI) and record the host.
    Expected: the CONNECT itself is refused, 403 raw_secret_egress, before
    any lookup; the audit never holds the value, in any case."""
    label = warm if case == "as-is" else warm.swapcase()
    with pytest.raises(ConnectionRefusedError) as refused:
        with tunnel(sbroker, f"{label}.invalid:443", creds=(sec.sc.acme.name, sec.sc.acme.token)):
            pass
    assert "403" in str(refused.value) and "reason=raw_secret_egress" in str(refused.value)
    # Wait for the refusal's own record (the audit host holds `.invalid`).
    assert wait_for(lambda: ".invalid" in sbroker.audit_path.read_text(), 5), "not audited"
    in_audit = warm.lower() in sbroker.audit_path.read_text().lower()
    assert not in_audit, "the audit holds the value"


def test_audit_never_records_a_raw_value(
    sbroker: Proxy, sec: Sec, upstream: Upstream, warm: str
) -> None:
    """Attack: send the raw value of `anywhere` in the URL path, a location
    its rule allows at this destination (so raw-egress lets it pass), to
    make the broker write it into its own audit trail.
    Expected: forwarded (the policy allows it) but the audit record's path
    holds a placeholder, not the value."""
    value = sec.sc.values["acme/anywhere"]
    with tunnel(sbroker, f"127.0.0.1:{sec.port}", creds=(sec.sc.acme.name, sec.sc.acme.token)) as w:
        w.send(request("GET", f"/echo/raw/{value}/x", "x"))
        resp = w.response()
    assert resp.status == 200, resp.raw[:300]
    assert_no_leak(resp.raw, sec)
    # The positive event first: the exchange's done record is written.
    assert wait_for(lambda: "/echo/raw/<<secret:anywhere>>/x" in sbroker.audit_path.read_text(), 5)
    in_audit = value in sbroker.audit_path.read_text()
    assert not in_audit, "the audit holds the value"
