"""Placeholder spellings an agent may try: nested, case, Unicode look-alikes,
CR/LF, NUL, over 1 KB, percent-encoded, double-encoded, split across chunks
or headers, hostile to the regular expressions. Each is either a placeholder
the grammar names (and then decided like any other) or text that never
becomes a value."""

from __future__ import annotations

import time

import pytest

from tests.security.conftest import Sec, assert_no_leak, request, tunnel
from tests.support.proxy import Proxy
from tests.support.upstream import Upstream

pytestmark = pytest.mark.integration

PA = "Authorization"
J = [("Content-Type", "application/json")]
T = [("Content-Type", "text/plain")]

# id -> (method, target, headers, body, expected)
#   allow: 200, the value in the upstream request; pass: 200, no value upstream;
#   malformed: 400 malformed_placeholder; unknown: 403 unknown_secret;
#   reject: any 4xx (mitmproxy's own parser may refuse first), nothing upstream.
CASES: dict[str, tuple[str, str, list[tuple[str, str]], bytes, str]] = {
    "nested": ("GET", "/echo/v", [(PA, "<<secret:<<secret:stripe>>>>")], b"", "malformed"),
    "nested-inside-name": (
        "GET",
        "/echo/v",
        [(PA, "<<secret:str<<secret:stripe>>ipe>>")],
        b"",
        "malformed",
    ),
    "keyword-upper-case": ("GET", "/echo/v", [(PA, "<<SECRET:stripe>>")], b"", "malformed"),
    "keyword-spaced": ("GET", "/echo/v", [(PA, "< < secret : stripe >>")], b"", "malformed"),
    "name-upper-case": ("GET", "/echo/v", [(PA, "<<secret:STRIPE>>")], b"", "unknown"),
    "cyrillic-s-keyword": ("GET", "/echo/v", [(PA, "<<\u0455ecret:stripe>>")], b"", "pass"),
    "fullwidth-brackets": (
        "GET",
        "/echo/v",
        [(PA, "\uff1c\uff1csecret:stripe\uff1e\uff1e")],
        b"",
        "pass",
    ),
    "cyrillic-i-in-name": ("GET", "/echo/v", [(PA, "<<secret:str\u0456pe>>")], b"", "malformed"),
    "zero-width-in-name": ("GET", "/echo/v", [(PA, "<<secret:stri\u200bpe>>")], b"", "malformed"),
    "long-s-keyword": ("GET", "/echo/v", [(PA, "<<\u017fecret:stripe>>")], b"", "pass"),
    "crlf-in-body": ("POST", "/echo/v", T, b"<<secret:any\r\nwhere>>", "malformed"),
    "crlf-percent-in-query": (
        "GET",
        "/echo/v?k=%3C%3Csecret:%0D%0Aanywhere%3E%3E",
        [],
        b"",
        "malformed",
    ),
    "header-obs-fold": ("GET", "/echo/v", [(PA, "<<secret:\r\n stripe>>")], b"", "reject"),
    "nul-in-header": ("GET", "/echo/v", [(PA, "<<secret:stripe\x00>>")], b"", "reject"),
    "nul-in-body": ("POST", "/echo/v", T, b"<<secret:anywhere\x00>>", "malformed"),
    "nul-percent-in-path": ("GET", "/echo/%3C%3Csecret:anywhere%00%3E%3E", [], b"", "malformed"),
    "name-over-1kb": ("GET", "/echo/v", [(PA, "<<secret:" + "a" * 1100 + ">>")], b"", "malformed"),
    "placeholder-after-1kb-of-angles": (
        "GET",
        "/echo/v",
        [(PA, "<" * 1500 + "<<secret:stripe>>")],
        b"",
        "allow",
    ),
    "percent-encoded-query": ("GET", "/echo/v?k=%3C%3Csecret%3Aanywhere%3E%3E", [], b"", "allow"),
    "percent-lower-path": ("GET", "/echo/%3c%3csecret%3aanywhere%3e%3e/x", [], b"", "allow"),
    "json-escaped-body": (
        "POST",
        "/echo/v",
        J,
        b'{"k": "\\u003c\\u003csecret:anywhere\\u003e\\u003e"}',
        "allow",
    ),
    "double-encoded-query": (
        "GET",
        "/echo/v?k=%253C%253Csecret%253Aanywhere%253E%253E",
        [],
        b"",
        "pass",
    ),
    "double-encoded-path": ("GET", "/echo/%253C%253Csecret:anywhere%253E%253E", [], b"", "pass"),
    "overlong-utf8-angle": ("POST", "/echo/v", T, b"\xc0\xbc\xc0\xbcsecret:anywhere>>", "pass"),
    "html-entities": ("POST", "/echo/v", T, b"&lt;&lt;secret:anywhere&gt;&gt;", "pass"),
    "split-across-headers": (
        "GET",
        "/echo/v",
        [(PA, "<<secret:"), (PA, "stripe>>")],
        b"",
        "malformed",
    ),
    "in-header-name": ("GET", "/echo/v", [("X-<<secret:stripe>>", "1")], b"", "reject"),
    "unknown-in-basic": ("GET", "/echo/v", [(PA, "Basic PDxzZWNyZXQ6bm9wZT4+")], b"", "unknown"),
}


def _expect_status(kind: str, status: int, reason: str | None) -> bool:
    return {
        "allow": status == 200,
        "pass": status == 200,
        "malformed": (status, reason) == (400, "malformed_placeholder"),
        "unknown": (status, reason) == (403, "unknown_secret"),
        "reject": 400 <= status < 500,
    }[kind]


@pytest.mark.parametrize("case", list(CASES))
def test_placeholder_variant(sbroker: Proxy, sec: Sec, upstream: Upstream, case: str) -> None:
    """Attack: a placeholder variant (see the case id) in a request to a
    destination its secret allows.
    Expected: the outcome in CASES: only a spelling the grammar names (raw,
    percent, JSON) in an allowed location gets a value; look-alikes and
    double encodings pass as inert text; broken openers are 400
    malformed_placeholder; nothing the client receives holds a value."""
    method, target, headers, body, kind = CASES[case]
    upstream.clear()
    with tunnel(sbroker, f"127.0.0.1:{sec.port}", creds=(sec.sc.acme.name, sec.sc.acme.token)) as w:
        w.send(request(method, target, f"127.0.0.1:{sec.port}", headers, body))
        try:
            resp = w.response()
            status, reason, raw = resp.status, resp.reason, resp.raw
        except EOFError:
            status, reason, raw = 499, None, b""
    assert _expect_status(kind, status, reason), raw[:400]
    assert_no_leak(raw, sec)
    wire = " ".join(f"{r.path} {r.headers} {r.body!r}" for r in upstream.received)
    values = [sec.sc.values["acme/stripe"], sec.sc.values["acme/anywhere"]]
    if kind == "allow":
        assert len(upstream.received) == 1 and any(v in wire for v in values)
    elif kind == "pass":
        assert len(upstream.received) == 1 and not any(v in wire for v in values)
    else:
        assert upstream.received == []


def test_split_across_body_chunks_is_found(sbroker: Proxy, sec: Sec, upstream: Upstream) -> None:
    """Attack: a placeholder cut across chunked-body chunks, so a scanner that
    looked at each chunk would miss it (and forward it to a place its
    policy does not allow).
    Expected: the whole body is scanned: in an allowed body location the
    value is substituted; the forwarded body holds no placeholder."""
    upstream.clear()
    body = b"6\r\n<<secr\r\n8\r\net:anywh\r\n5\r\nere>>\r\n0\r\n\r\n"
    with tunnel(sbroker, f"127.0.0.1:{sec.port}", creds=(sec.sc.acme.name, sec.sc.acme.token)) as w:
        w.send(request("POST", "/echo/chunks", "x", [*T, ("Transfer-Encoding", "chunked")], body))
        resp = w.response()
    assert resp.status == 200, resp.raw[:300]
    assert upstream.received[-1].body == sec.sc.values["acme/anywhere"].encode()
    assert_no_leak(resp.raw, sec)


@pytest.mark.parametrize(
    "text",
    [
        "<" * 200_000,
        "< " * 100_000,
        "<<\t" * 60_000 + "secret",
        "%3C" * 60_000,
        "<<secret:" * 20_000,
    ],
    ids=["angles", "angle-space", "angle-tab", "percent", "openers"],
)
def test_regex_hostile_body_is_fast(
    sbroker: Proxy, sec: Sec, upstream: Upstream, text: str
) -> None:
    """Attack: a body crafted against the placeholder expressions (long runs
    of openers, whitespace between them) to make scanning slow.
    Expected: answered within 5 s (pass or 400 malformed); no value upstream."""
    upstream.clear()
    t0 = time.monotonic()
    with tunnel(sbroker, f"127.0.0.1:{sec.port}", creds=(sec.sc.acme.name, sec.sc.acme.token)) as w:
        w.send(request("POST", "/echo/redos", "x", T, text.encode()))
        resp = w.response()
    assert time.monotonic() - t0 < 5.0
    assert resp.status in (200, 400), resp.raw[:300]
    assert not any(sec.sc.values["acme/anywhere"].encode() in r.body for r in upstream.received)
