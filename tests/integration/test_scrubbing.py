"""Invariant 3 through the real proxy: a hostile upstream reflects the value
keybroker injected (acme's ``stripe`` in ``Authorization``) in every encoding
it knows, in the body and headers; buffered, compressed, large, as a
decompression bomb, cut mid-body. Streams, splits, SSE and WebSocket are in
``test_scrubbing_stream.py``, which shares the helpers here.

Every leak check runs the independent detector (``tests/support/leaks.py``)
over the bytes received and their percent- and ``\\uXXXX``-decoded views (it
has no everything-escaped forms); the negative control proves the check finds
every form in the raw upstream output."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from http.cookiejar import DefaultCookiePolicy
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

import pytest
import requests

from tests.support.leaks import find_leak
from tests.support.openbao import OpenBao
from tests.support.proxy import Proxy
from tests.support.scenario import Scenario
from tests.support.upstream import FORMS, Upstream, filler

pytestmark = pytest.mark.integration

PLACEHOLDER = b"<<secret:stripe>>"
AUTH = {"Authorization": "Bearer <<secret:stripe>>"}
SMALL_LIMIT = 1 << 20  # max_decoded_response of the dedicated proxy
BASE64_FORMS = ("b64", "b64url", "b64urlpad", "basic")
FORM_CASES = [
    pytest.param(form, pad, id=f"{form}-pad{pad}")
    for form in FORMS
    for pad in ((0, 1, 2) if form in BASE64_FORMS else (0,))
]
WHERE_ALL = "body,header,location,set-cookie,link"
_UNICODE_ESCAPE = re.compile(rb"\\u([0-9a-fA-F]{4})")


# -- helpers (also used by test_scrubbing_stream.py) ----------------------------------
def views(data: bytes) -> dict[str, bytes]:
    """The bytes as received, and decoded once more: some encoders escape every
    byte (``%6B%62..``, ``\\u006b\\u0062..``), spellings leaks.py has no form for."""
    return {
        "as received": data,
        "percent-decoded": unquote_to_bytes(data),
        "unicode-unescaped": _UNICODE_ESCAPE.sub(
            lambda m: chr(int(m.group(1), 16)).encode("utf-8", "surrogatepass"), data
        ),
    }


def leak_in(data: bytes, value: str) -> str | None:
    for view, d in views(data).items():
        found = find_leak(d, value.encode())
        if found is not None:
            return f"{found[0]} at offset {found[1]} ({view})"
    return None


def assert_clean(data: bytes, value: str, what: str) -> None:
    """No spelling of ``value`` in ``data``; the message never holds the value."""
    found = leak_in(data, value)
    assert found is None, f"{what} leaks the canary as {found}"


def header_bytes(r: requests.Response) -> bytes:
    """Every response header line as received (duplicates kept)."""
    return "\r\n".join(f"{k}: {v}" for k, v in r.raw.headers.items()).encode("latin-1")


def read_all(r: requests.Response) -> tuple[bytes, Exception | None]:
    """The body as it arrives, and the error that cut it short, if any."""
    got = bytearray()
    try:
        for chunk in r.iter_content(None):
            got += chunk
    except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError) as e:
        return bytes(got), e
    return bytes(got), None


def agent_session(proxy: Proxy, sc: Scenario) -> requests.Session:
    """An agent's keep-alive session through ``proxy`` (environment ignored).
    No cookie jar: a scrubbed ``Set-Cookie`` would come back as a placeholder
    in the Cookie header, which policy rightly refuses (location_not_allowed)."""
    s = requests.Session()
    s.trust_env = False
    s.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    s.proxies = proxy.proxies("acme", sc.acme.token)
    s.verify = str(proxy.ca_path)
    s.headers.update(AUTH)
    return s


def fetch(
    s: requests.Session,
    proxy: Proxy,
    sc: Scenario,
    path: str,
    *,
    host: str = "127.0.0.1",
    **kw: Any,
) -> requests.Response:
    kw.setdefault("timeout", 30)
    return s.get(f"https://{host}:{sc.upstream_port}{path}", verify=str(proxy.ca_path), **kw)


def audit_ids(proxy: Proxy) -> set[str]:
    return {r["id"] for r in audit_records(proxy.audit_path)}


def audit_records(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "scrubbed" in rec and "id" in rec:
            if rec.get("phase") != "sent":  # the done record carries the scrub count
                out.append(rec)
    return out


def new_record(proxy: Proxy, before: set[str], path: str, timeout: float = 5.0) -> dict[str, Any]:
    """The audit record written after ``before`` for ``path`` (records of a
    streamed response land once its last byte has gone out)."""
    deadline = time.monotonic() + timeout
    while True:
        fresh = [
            r
            for r in audit_records(proxy.audit_path)
            if r["id"] not in before and r["path"] == path
        ]
        if fresh or time.monotonic() > deadline:
            assert len(fresh) == 1, f"expected one new audit record for {path}, got {len(fresh)}"
            return fresh[0]
        time.sleep(0.05)


# -- fixtures ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def agent(broker: Proxy, sc: Scenario) -> Iterator[requests.Session]:
    with agent_session(broker, sc) as s:
        yield s


@pytest.fixture(scope="module")
def small(
    sc: Scenario, openbao: OpenBao, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    """A keybroker that decodes at most 1 MiB and buffers up to 16 MiB."""
    wd = tmp_path_factory.mktemp("scrub-small-limits")
    policy = sc.policy(
        limits={"max_decoded_response": SMALL_LIMIT, "stream_threshold": 16 << 20},
        audit={"path": str(wd / "audit.jsonl")},
    )
    with Proxy(policy, wd, env=sc.env(openbao.root_token)) as proxy:
        yield proxy


# -- the negative control ------------------------------------------------------------------
@pytest.mark.parametrize(("form", "pad"), FORM_CASES)
def test_negative_control_raw_upstream_output_leaks(
    upstream: Upstream, sc: Scenario, form: str, pad: int
) -> None:
    """Fetched directly (no keybroker), the reflection holds the value in every
    form, body and headers, and the check used below finds it: a scrubbing
    failure would fail those tests."""
    value = sc.values["acme/stripe"]
    r = requests.get(
        upstream.url(f"/reflect?bare=1&form={form}&pad={pad}&where={WHERE_ALL}"),
        headers={"Authorization": f"Bearer {value}"},
        verify=str(upstream.ca.ca_path),
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert leak_in(r.content, value) is not None, "the detector misses the body's form"
    for name in ("X-Reflect", "Location", "Set-Cookie", "Link"):
        line = f"{name}: {r.headers[name]}".encode("latin-1")
        assert leak_in(line, value) is not None, f"the detector misses {name}"


# -- every form, body and headers, buffered ----------------------------------------
@pytest.mark.parametrize(("form", "pad"), FORM_CASES)
def test_reflected_value_scrubbed_from_body_and_headers(
    agent: requests.Session, broker: Proxy, sc: Scenario, upstream: Upstream, form: str, pad: int
) -> None:
    value = sc.values["acme/stripe"]
    r = fetch(agent, broker, sc, f"/reflect?bare=1&form={form}&pad={pad}&where={WHERE_ALL}")
    assert r.status_code == 200, r.text
    assert value in (upstream.last.header("authorization") if upstream.last else ""), (
        "the value must have gone upstream, or there is nothing to reflect"
    )
    assert_clean(r.content, value, f"body ({form}, pad {pad})")
    assert_clean(header_bytes(r), value, f"headers ({form}, pad {pad})")
    assert PLACEHOLDER in r.content
    for name in ("X-Reflect", "Location", "Set-Cookie", "Link"):
        assert PLACEHOLDER.decode() in r.headers[name], f"{name} was not scrubbed in place"


@pytest.mark.parametrize("post", [1, 2, 3])
def test_base64_alignment_after_the_value(
    agent: requests.Session, broker: Proxy, sc: Scenario, post: int
) -> None:
    """Bytes after the value change the last base64 characters too."""
    r = fetch(agent, broker, sc, f"/reflect?bare=1&form=b64&pad=1&post={post}&where=body,header")
    assert r.status_code == 200
    assert_clean(r.content + header_bytes(r), sc.values["acme/stripe"], f"b64 post={post}")


@pytest.mark.parametrize("enc", ["gzip", "br", "zstd", "deflate", "gzip,br", "zstd,deflate"])
@pytest.mark.parametrize(("form", "pad"), [("raw", 0), ("b64", 1), ("hex", 0), ("jsonu", 0)])
def test_compressed_buffered(
    agent: requests.Session, broker: Proxy, sc: Scenario, enc: str, form: str, pad: int
) -> None:
    """Compressed bodies are decoded, scrubbed and sent on decoded."""
    r = fetch(agent, broker, sc, f"/compressed?enc={enc}&bare=1&form={form}&pad={pad}&prefix=3000")
    assert r.status_code == 200, r.text
    assert "content-encoding" not in r.headers
    assert r.headers["content-length"] == str(len(r.content))
    assert_clean(r.content, sc.values["acme/stripe"], f"{enc} body")
    assert r.content.startswith(b"compressed: " + filler(3000)) and PLACEHOLDER in r.content


# -- size: large bodies, bombs -----------------------------------------------------------
def test_value_at_the_end_of_a_large_buffered_body(small: Proxy, sc: Scenario) -> None:
    """5.5 MB with Content-Length, below this proxy's stream threshold: buffered."""
    size = 5_500_000
    with agent_session(small, sc) as s:
        r = fetch(s, small, sc, f"/large?size={size}&reflect=1&bare=1")
    assert r.status_code == 200
    assert r.headers["content-length"] == str(size + len(PLACEHOLDER))
    assert_clean(r.content[-65536:], sc.values["acme/stripe"], "the tail of a large body")
    assert r.content == filler(size) + PLACEHOLDER


@pytest.mark.parametrize("enc", ["zstd", "gzip", "br", "deflate"])
def test_decompression_bomb_buffered_gets_502(small: Proxy, sc: Scenario, enc: str) -> None:
    before = audit_ids(small)
    with agent_session(small, sc) as s:
        s.headers.pop("Authorization")
        r = fetch(s, small, sc, f"/bomb?enc={enc}&size={8 * SMALL_LIMIT}")
    assert r.status_code == 502, r.status_code
    assert r.json()["reason"] == "undecodable_body"
    assert len(r.content) < 1024 and b"\0" not in r.content, "nothing of the body may pass"
    assert new_record(small, before, "/bomb")["reason"] == "undecodable_body"


@pytest.mark.parametrize("enc", ["zstd", "gzip"])
def test_decompression_bomb_streamed_is_cut(small: Proxy, sc: Scenario, enc: str) -> None:
    """Chunked, so streamed: the headers are out before the bomb shows. The
    transfer is cut (no end-of-body marker) once the limit is passed; the
    agent never sees a complete-looking body and the audit says why."""
    before = audit_ids(small)
    with agent_session(small, sc) as s:
        s.headers.pop("Authorization")
        t0 = time.monotonic()
        r = fetch(s, small, sc, f"/bomb?enc={enc}&size={64 * SMALL_LIMIT}&chunked=1", stream=True)
        got, err = read_all(r)
    assert err is not None, "a bomb must not end like a complete body"
    assert time.monotonic() - t0 < 10, "the cut must not wait for a timeout"
    assert len(got) <= SMALL_LIMIT
    rec = new_record(small, before, "/bomb")
    assert (rec["decision"], rec["reason"]) == ("error", "undecodable_body")


# -- egress and audit ----------------------------------------------------------------------
@pytest.mark.parametrize("where", ["header", "query", "body-json", "body-base64"])
def test_raw_value_to_unlisted_host_refused(
    agent: requests.Session, broker: Proxy, sc: Scenario, upstream: Upstream, where: str
) -> None:
    """Once resolved, the raw value (not a placeholder) may only go where its
    policy allows; a plain request carrying it elsewhere is refused."""
    value = sc.values["acme/stripe"]
    assert fetch(agent, broker, sc, "/echo/warm").status_code == 200  # the value is known
    upstream.clear()
    kw: dict[str, Any] = {
        "header": {"headers": {"X-Leak": value}},
        "query": {"params": {"k": value}},
        "body-json": {"json": {"note": value}},
        "body-base64": {"data": base64.b64encode(b"user:" + value.encode())},
    }[where]
    kw["headers"] = {**kw.get("headers", {}), "Authorization": None}  # no placeholder
    r = agent.post(
        f"https://localhost:{sc.upstream_port}/echo/raw",
        timeout=30,
        verify=str(broker.ca_path),
        **kw,
    )
    assert r.status_code == 403, r.text
    assert r.json()["reason"] == "raw_secret_egress"
    assert upstream.received == [], "nothing may reach the unlisted host"
    assert_clean(r.content + header_bytes(r), value, "the refusal")


@pytest.mark.parametrize(
    ("path", "count"),
    [
        ("/reflect?bare=1&where=body", 1),
        ("/reflect?bare=1&where=body,header,set-cookie", 3),
        ("/reflect?bare=1&form=b64&pad=2&where=body,link", 2),
        ("/status/200", 0),
    ],
)
def test_audit_counts_scrubbed_occurrences(
    agent: requests.Session, broker: Proxy, sc: Scenario, path: str, count: int
) -> None:
    before = audit_ids(broker)
    r = fetch(agent, broker, sc, path)
    assert r.status_code == 200
    assert (r.content + header_bytes(r)).count(PLACEHOLDER) == count
    rec = new_record(broker, before, path.split("?")[0])
    assert (rec["decision"], rec["secrets"], rec["scrubbed"]) == ("allow", ["stripe"], count)
