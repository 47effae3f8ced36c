"""Issue 12 items 2-6: a hostile agent probing every field it controls for
raw-value egress, a second tenant probing for an oracle on the first
tenant's values, and a broker that must know every value from its first
request. Every test reads every byte the agent received, the upstream's
record and the audit, case-insensitively."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote_to_bytes

import pytest

from broker.scrub.decoded import json_unescape
from tests.security.conftest import Sec, assert_no_leak, h2_tunnel, request, tunnel
from tests.support.leaks import find_leak
from tests.support.net import wait_for
from tests.support.openbao import OpenBao
from tests.support.proxy import Proxy
from tests.support.upstream import Upstream

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def warm(sbroker: Proxy, sec: Sec) -> str:
    """acme/stripe's value (the broker preloads it; no request needed)."""
    return sec.stripe_of("acme")


def _creds(sec: Sec, tenant: str) -> tuple[str, str]:
    t = sec.tenants()[tenant]
    return t.name, t.token


def _json_escape_some(value: str) -> str:
    return "".join(f"\\u{ord(c):04x}" if i % 3 == 1 else c for i, c in enumerate(value))


def _fields(value: str, port: int) -> dict[str, tuple[str, bytes]]:
    """Requests (target host, wire bytes) that each carry ``value`` in one
    agent-controlled field; the policy allows none of them."""
    swapped = value.swapcase()
    chunked = (
        b"POST /echo/t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Trailer: X-Sig\r\n\r\n4\r\nbody\r\n0\r\nX-Sig: " + value.encode() + b"\r\n\r\n"
    )
    return {
        "method": ("127.0.0.1", request(value, "/echo/m", "x")),
        "header-name": ("127.0.0.1", request("GET", "/echo/h", "x", [(f"X-{swapped}", "1")])),
        "trailer": ("127.0.0.1", chunked),
        "query-one-char-escaped": (
            "localhost",
            request("GET", f"/echo/q?k=%{ord(value[0]):02x}{quote(value[1:])}", "x"),
        ),
        "json-some-chars-escaped": (
            "localhost",
            request(
                "POST",
                "/echo/j",
                "x",
                [("Content-Type", "application/json")],
                json.dumps({"k": "X"}).replace("X", _json_escape_some(value)).encode(),
            ),
        ),
        "fronted-host-header": (
            "127.0.0.1",
            request("GET", "/echo/f", f"fronted.example:{port}", [("Authorization", value)]),
        ),
    }


FIELDS = [
    "method",
    "header-name",
    "trailer",
    "query-one-char-escaped",
    "json-some-chars-escaped",
    "fronted-host-header",
]


@pytest.mark.parametrize("field", FIELDS)
def test_own_value_in_any_agent_field_is_refused(
    sbroker: Proxy, sec: Sec, upstream: Upstream, warm: str, field: str
) -> None:
    """Attack: acme's agent writes acme's raw value into one field the
    policy never allows (the method, a header name in swapped case, a
    chunked trailer, a query or JSON body with some characters escaped, an
    allowed header with a Host naming another server).
    Expected: 403 raw_secret_egress (a method is refused as
    malformed_request first when it is not canonical); nothing upstream; nothing the agent
    gets back and nothing in the audit holds the value in any case."""
    host, wire = _fields(warm, sec.port)[field]
    upstream.clear()
    before = len(sbroker.audit_path.read_text().splitlines())
    with tunnel(sbroker, f"{host}:{sec.port}", creds=_creds(sec, "acme")) as w:
        w.send(wire)
        resp = w.response()
    expected = {(403, "raw_secret_egress")}
    if field == "method":  # the wire checks refuse a non-canonical method first
        expected.add((400, "malformed_request"))
    assert (resp.status, resp.reason) in expected, resp.raw[:300]
    assert upstream.received == []
    assert warm.lower() not in resp.raw.decode("utf-8", "replace").lower()
    assert wait_for(lambda: len(sbroker.audit_path.read_text().splitlines()) > before, 5)
    assert warm.lower() not in sbroker.audit_path.read_text().lower()


def test_http2_trailer_with_own_value_or_misplaced_placeholder(
    sbroker: Proxy, sec: Sec, upstream: Upstream, warm: str
) -> None:
    """Attack: HTTP/2 request trailers, never inspected before: one carries
    acme's raw value, another a placeholder in a trailer the policy does not
    allow. Expected: 403 raw_secret_egress and 403 location_not_allowed;
    nothing upstream."""
    upstream.clear()
    h = h2_tunnel(sbroker, sec, "acme")
    try:
        got = {}
        for name, trailer in (("raw", warm), ("placeholder", "<<secret:stripe>>")):
            sid = h.conn.get_next_available_stream_id()
            head = [
                (":method", "POST"),
                (":scheme", "https"),
                (":authority", f"127.0.0.1:{sec.port}"),
                (":path", "/echo/trailer"),
            ]
            h.conn.send_headers(sid, head)
            h.conn.send_data(sid, b"body")
            h.conn.send_headers(sid, [("x-sig", trailer)], end_stream=True)
            h.responses[sid] = {"status": None, "headers": [], "body": b"", "reset": False}
            h.flush()
            h.pump([sid])
            got[name] = h.responses[sid]
    finally:
        h.w.close()
    assert got["raw"]["status"] == 403
    assert json.loads(got["raw"]["body"])["reason"] == "raw_secret_egress"
    assert got["placeholder"]["status"] == 403
    assert json.loads(got["placeholder"]["body"])["reason"] == "location_not_allowed"
    assert upstream.received == []
    for r in got.values():
        assert_no_leak(r["body"], sec)


def test_another_tenants_value_is_no_egress_oracle(
    sbroker: Proxy, sec: Sec, upstream: Upstream, warm: str
) -> None:
    """Attack: globex posts guesses of acme's value (acme's real value among
    random decoys) in a header, the query and the body, and reads
    `raw_secret_egress` as "hit". Expected: every guess gets the same
    answer (forwarded, 200): acme's value is not looked for in globex's
    requests. The echo of the right guess comes back as a name-free marker,
    never acme's value nor its secret's name."""
    guesses = [f"kbcanary_acmestripe_{secrets.token_hex(12)}" for _ in range(3)] + [warm]
    answers = []
    for guess in guesses:
        with tunnel(sbroker, f"localhost:{sec.port}", creds=_creds(sec, "globex")) as w:
            w.send(
                request(
                    "POST",
                    f"/echo/guess?g={guess}",
                    "x",
                    [("X-Guess", guess), ("Content-Type", "text/plain")],
                    guess.encode(),
                )
            )
            resp = w.response()
        answers.append(resp.status)
        assert_no_leak(resp.raw, sec)
        if guess == warm:
            text = resp.body.decode()
            assert "<<redacted>>" in text and "<<secret:" not in text
    assert answers == [200] * len(guesses)


@pytest.fixture
def pin_broker(sec: Sec, openbao: OpenBao, tmp_path: Path) -> Any:
    """A broker where acme also holds a 4-digit PIN (`acme/pin`)."""
    pin = f"{secrets.randbelow(9000) + 1000}"
    openbao.put_v2("acme/pin", {"api_key": pin}, mount=sec.sc.mount)
    policy = sec.policy(tmp_path)
    policy["tenants"]["acme"]["secrets"]["pin"] = sec.sc.secret("acme/pin")
    with Proxy(policy, tmp_path, env=sec.sc.env(openbao.root_token)) as proxy:
        yield proxy, pin


def test_a_pin_is_refused_as_unprotectable_and_never_an_oracle(
    pin_broker: tuple[Proxy, str], sec: Sec, upstream: Upstream
) -> None:
    """Attack: acme holds a 4-digit PIN. globex fetches a page listing every
    4-digit PIN and looks for the one the broker replaces.
    Expected: the broker refuses to use a value it cannot protect (acme's
    `<<secret:pin>>` gets 502 unprotectable_secret, nothing upstream), so it
    never scrubs one either: globex gets all 10,000 PINs back untouched."""
    proxy, pin = pin_broker
    page = "\n".join(f"{n:04d}" for n in range(10_000)).encode()
    try:
        tunnel(proxy, f"127.0.0.1:{sec.port}", creds=_creds(sec, "globex")).close()
    except EOFError:
        raise AssertionError(proxy.output()[-3000:]) from None
    with tunnel(proxy, f"127.0.0.1:{sec.port}", creds=_creds(sec, "globex")) as w:
        w.send(request("POST", "/reflect?from=body", "x", [("Content-Type", "text/plain")], page))
        resp = w.response()
    assert resp.status == 200 and page in resp.body and b"redacted" not in resp.body
    upstream.clear()
    with tunnel(proxy, f"127.0.0.1:{sec.port}", creds=_creds(sec, "acme")) as w:
        w.send(request("GET", "/echo/pin", "x", [("Authorization", "<<secret:pin>>")]))
        used = w.response()
    assert (used.status, used.reason) == (502, "unprotectable_secret")
    assert upstream.received == []
    assert pin.encode() not in used.body


def test_first_request_of_a_fresh_broker_scrubs_a_recalled_value(
    sec: Sec, openbao: OpenBao, upstream: Upstream, tmp_path: Path
) -> None:
    """Attack: a freshly started broker (or another worker) has resolved
    nothing yet; an upstream recalls acme's value from an earlier session
    (here: globex's agent hands it over, the upstream reflects it).
    Expected: the broker preloaded every value at start, so the very first
    response is scrubbed, with a marker that names nothing."""
    value = sec.stripe_of("acme")
    with Proxy(sec.policy(tmp_path), tmp_path, env=sec.sc.env(openbao.root_token)) as proxy:
        with tunnel(proxy, f"127.0.0.1:{sec.port}", creds=_creds(sec, "globex")) as w:
            w.send(
                request(
                    "POST",
                    "/reflect?from=body",
                    "x",
                    [("Content-Type", "text/plain")],
                    value.encode(),
                )
            )
            resp = w.response()
    assert resp.status == 200, resp.raw[:300]
    assert_no_leak(resp.raw, sec)
    assert b"<<redacted>>" in resp.body and b"<<secret:" not in resp.body


def _decoded_leaks(body: bytes, value: str, form: str) -> bool:
    """Whether ``body`` still yields ``value`` once a client decodes it the
    way ``form`` asks (or in any standard spelling)."""
    v = value.encode()
    if form.startswith("utf16"):
        codec = "utf-16-le" if form.endswith("le") else "utf-16-be"
        return value.encode(codec) in body or value.encode(codec)[1:-1] in body
    if form.startswith("b64wrap"):
        return find_leak(body.replace(b"\r", b"").replace(b"\n", b""), v) is not None
    if form == "jsonusome":
        return v in json_unescape(body)
    if form == "pctsafe":
        return v in unquote_to_bytes(body)
    return find_leak(body, v) is not None


SPELLINGS = ["jsonusome", "b64wrap64", "b64wrap76", "utf16le", "utf16be", "pctsafe"]


@pytest.mark.parametrize("endpoint", ["reflect", "chunked"])
@pytest.mark.parametrize("form", SPELLINGS)
def test_hostile_upstream_spellings_clients_decode(
    sbroker: Proxy, sec: Sec, warm: str, form: str, endpoint: str
) -> None:
    """Attack: the upstream reflects the substituted value in a spelling an
    ordinary client decodes on its own: JSON `\\u` escapes of every other
    character, base64 wrapped at 64 (LF) or 76 (CRLF) columns, UTF-16 LE/BE,
    percent-encoding that keeps `/:@+`; buffered, or chunked in 7-byte pieces.
    Expected: nothing the agent receives decodes to the value."""
    path = f"/{endpoint}?form={form}&from=authorization&bare=1&split=7&nl=1"
    with tunnel(sbroker, f"127.0.0.1:{sec.port}", creds=_creds(sec, "acme")) as w:
        w.send(request("GET", path, "x", [("Authorization", "Bearer <<secret:stripe>>")]))
        resp = w.response()
    assert resp.status == 200, resp.raw[:300]
    assert not _decoded_leaks(resp.raw, warm, form), resp.body[:400]


def test_range_requests_to_a_host_that_knows_values_get_the_whole_body(
    sbroker: Proxy, sec: Sec, upstream: Upstream
) -> None:
    """Attack: fetch a response in `Range` pieces (or as
    `multipart/byteranges`) so no single piece holds the whole value and the
    client rejoins them. Expected: towards a host a secret may be sent to,
    `Range` and `If-Range` never reach the upstream (it answers whole)."""
    upstream.clear()
    with tunnel(sbroker, f"127.0.0.1:{sec.port}", creds=_creds(sec, "globex")) as w:
        w.send(
            request("GET", "/echo/range", "x", [("Range", "bytes=0-9,20-29"), ("If-Range", "x")])
        )
        resp = w.response()
    assert resp.status == 200
    sent = {k.lower() for k, _ in upstream.received[-1].headers}
    assert "range" not in sent and "if-range" not in sent
