"""The desync suite (issue 19): a request-smuggling corpus through the real
``keybroker run`` against a deliberately lenient origin.

The vectors are data (``desync_vectors.yaml``, sources named there). Each
runs on its own tunnel (CONNECT to the plain-HTTP lenient upstream): an
attack request, then a pipelined allowed request whose Authorization header
carries the value once keybroker substitutes it. The upstream
(:mod:`tests.support.lenient`) ends lines at CR or LF, reads a folded line as
a header of its own and honours any ``chunked``, so anything keybroker
forwards ambiguously becomes a request it can see. One proxy serves the
whole corpus; vectors run concurrently. HTTP/2 streams (``h2`` in the data)
go through a TLS tunnel (ALPN h2) to the same origin behind TLS, translated
by keybroker to HTTP/1.1.

Asserted over the whole corpus, every failure listed by vector id:

- no request the upstream parsed outside ``GET /allowed*`` carries the value;
- what the upstream parsed on each tunnel's connection is exactly what the
  audit records as forwarded (``allow``/``pass``) for that vector;
- every vector is answered (a response, or a clean close) within
  :data:`BOUND` seconds, and every status the audit records was sent;
- vectors with a fixed answer (``expect``) get it first.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import re
import socket
import ssl
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h2.exceptions
import pytest
import yaml

from tests.security.conftest import H2, tunnel
from tests.support.lenient import LenientUpstream, parse_one
from tests.support.proxy import Proxy
from tests.support.tlsca import TestCA

pytestmark = pytest.mark.integration

VECTORS = Path(__file__).with_name("desync_vectors.yaml")
VALUE = "kbcanary_desync_" + hashlib.sha256(b"desync").hexdigest()[:24]
TOKEN = "desync-tenant-token"
BOUND = 8.0
"""Seconds within which every vector must be answered or closed."""
IDLE = 0.4
"""Once a response arrived, this much silence ends a vector."""
AUTH = "Authorization: Bearer <<secret:desync>>"
_ID = re.compile(r"^/(?:allowed|forbidden)/([A-Za-z0-9._-]+)")


# -- the corpus ----------------------------------------------------------------------------------
@dataclass
class Vector:
    id: str
    src: str
    data: bytes
    expect: int | None = None
    half_close: bool = False
    """Send FIN after the bytes (a truncated request)."""


def _fill(text: str, vid: str, host: str) -> str:
    smuggled = f"GET /forbidden/{vid} HTTP/1.1\r\nX-Ignore: "
    full = f"GET /forbidden/{vid} HTTP/1.1\r\nHost: {host}\r\n{AUTH}\r\nX: y\r\n\r\n"
    return (
        text.replace("{S}", smuggled)
        .replace("{RLEN}", f"{len(full):02x}")
        .replace("{R}", full)
        .replace("{P}", f"/allowed/{vid}")
        .replace("{H}", host)
        .replace("{A}", AUTH)
        .replace("{id}", vid)
    )


def _build(
    vid: str,
    head: list[str],
    body: str,
    host: str,
    *,
    nl: str = "\r\n",
    prefix: str = "",
    follow: bool = True,
    end: str | None = None,
) -> bytes:
    body_s = _fill(body, vid, host)
    lines = [_fill(h, vid, host).replace("{CL}", str(len(body_s.encode("latin-1")))) for h in head]
    then = f"GET /allowed/{vid}/f HTTP/1.1\r\nHost: {host}\r\n{AUTH}\r\n\r\n" if follow else ""
    blank = nl + nl if end is None else end
    return (prefix + nl.join(lines) + blank + body_s + then).encode("latin-1")


def corpus(host: str) -> list[Vector]:
    spec = yaml.safe_load(VECTORS.read_text())
    out: list[Vector] = []
    start = ["GET {P} HTTP/1.1", "Host: {H}", "{A}"]
    for perm in spec["permutations"]:
        for fname, framing in spec["framings"].items():
            vid = f"{perm['id']}.{fname}"
            head = [h.replace("{TE}", perm["te"]) for h in framing["head"]]
            out.append(Vector(vid, perm["src"], _build(vid, start + head, framing["body"], host)))
    ex = spec["exhaustive"]
    cl_te = spec["framings"]["cl-te"]
    for place, template in ex["places"].items():
        for b in range(256) if ex["bytes"] == "all" else ex["bytes"]:
            vid = f"x.{place}.{b:02x}"
            head = [h.replace("{TE}", template.replace("{b}", chr(b))) for h in cl_te["head"]]
            out.append(Vector(vid, ex["src"], _build(vid, start + head, cl_te["body"], host)))
    for raw in spec["raw"]:
        data = _build(
            raw["id"],
            raw["head"],
            raw["body"],
            host,
            nl=raw.get("nl", "\r\n"),
            prefix=raw.get("prefix", ""),
            follow=raw.get("follow", True),
            end=raw.get("end"),
        )
        out.append(
            Vector(raw["id"], raw["src"], data, raw.get("expect"), raw.get("half_close", False))
        )
    assert len({v.id for v in out}) == len(out), "vector ids must be unique"
    return out


# -- the run -------------------------------------------------------------------------------------
@dataclass
class Outcome:
    vector: Vector
    statuses: list[int]
    closed: bool
    seconds: float
    error: str | None = None


def _statuses(data: bytes) -> list[int]:
    """Final statuses of the complete responses in ``data`` (1xx skipped)."""
    out = []
    while data.startswith(b"HTTP/1.1 "):
        end = data.find(b"\r\n\r\n")
        if end < 0:
            break
        head = data[:end].decode("latin-1")
        status = int(head.split(" ", 2)[1])
        m = re.search(r"(?im)^content-length:\s*(\d+)", head)
        n = 0 if status < 200 else int(m.group(1)) if m else 0
        if len(data) < end + 4 + n:
            break
        data = data[end + 4 + n :]
        if status >= 200:
            out.append(status)
    return out


def run_vector(proxy: Proxy, target: str, v: Vector) -> Outcome:
    t0 = time.monotonic()
    try:
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=BOUND)
    except OSError as exc:
        return Outcome(v, [], False, 0.0, f"connect: {exc}")
    with s:
        auth = Proxy.auth_header("acme", TOKEN)
        s.sendall(
            f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {auth}\r\n\r\n".encode()
        )
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = s.recv(4096)
            if not chunk:
                return Outcome(v, [], True, 0.0, "CONNECT refused")
            got += chunk
        if not got.startswith(b"HTTP/1.1 200"):
            return Outcome(v, [], True, 0.0, f"CONNECT answered {got[:40]!r}")
        t0 = time.monotonic()
        s.sendall(v.data)
        if v.half_close:
            s.shutdown(socket.SHUT_WR)
        data, closed = b"", False
        deadline = t0 + BOUND
        while (now := time.monotonic()) < deadline:
            wait = deadline - now
            if _statuses(data):
                wait = min(wait, IDLE)
            s.settimeout(wait)
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                if _statuses(data):
                    break
                continue
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            data += chunk
        return Outcome(v, _statuses(data), closed, time.monotonic() - t0)


def audit_by_vector(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The last record of each exchange (write-ahead ``sent`` records are
    superseded by their ``done`` record), grouped by vector id."""
    last: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            last[rec["id"]] = rec
    out: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for rec in last.values():
        m = _ID.match(rec.get("path") or "")
        out[m.group(1) if m else "?"].append(rec)
    return out


def upstream_by_vector(up: LenientUpstream) -> dict[str, list[tuple[str, str, bytes]]]:
    """What the upstream parsed, per connection, labelled by the vector of the
    connection's first request (mitmproxy gives each tunnel its own)."""
    conns: dict[int, list[Any]] = collections.defaultdict(list)
    for r in up.received:
        conns[r.conn].append(r)
    out: dict[str, list[tuple[str, str, bytes]]] = collections.defaultdict(list)
    for reqs in conns.values():
        m = _ID.match(reqs[0].path)
        label = m.group(1) if m else "?"
        out[label] += [(r.method, r.path, r.raw) for r in reqs]
    return out


def _judge(
    outcomes: list[Outcome],
    audit: dict[str, list[dict[str, Any]]],
    parsed: dict[str, list[tuple[str, str, bytes]]],
) -> list[str]:
    """Every broken promise, by vector id."""
    value = VALUE.encode()
    problems: list[str] = []
    for label, reqs in parsed.items():
        for method, path, raw in reqs:
            if value in raw and not (method == "GET" and path.startswith("/allowed/")):
                problems.append(
                    f"{label}: FORBIDDEN DELIVERY {method} {path[:60]!r} with the value"
                )
    for o in outcomes:
        vid = o.vector.id
        if o.error:
            problems.append(f"{vid}: {o.error}")
            continue
        if not o.statuses and not o.closed:
            problems.append(f"{vid}: no answer within {BOUND}s")
        recs = audit.get(vid, [])
        forwarded = collections.Counter(
            (r["method"], r["path"]) for r in recs if r["decision"] in ("allow", "pass")
        )
        upstream = collections.Counter((m, p) for m, p, _ in parsed.get(vid, []))
        if forwarded != upstream:
            problems.append(f"{vid}: audit {dict(forwarded)} != upstream parsed {dict(upstream)}")
        sent = [r["status"] for r in recs if r.get("status") is not None]
        if len(sent) > len(o.statuses):
            problems.append(f"{vid}: audit records statuses {sent}, client got {o.statuses}")
        if o.vector.expect is not None:
            first = o.statuses[0] if o.statuses else 0
            if first != o.vector.expect:
                problems.append(f"{vid}: expected {o.vector.expect} first, got {o.statuses}")
    problems += [f"?: unattributed upstream request {r[:2]}" for r in parsed.get("?", [])]
    return problems


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lenient() -> Iterator[LenientUpstream]:
    up = LenientUpstream()
    yield up
    up.close()


@pytest.fixture(scope="module")
def lenient_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("lenient-ca"))


@pytest.fixture(scope="module")
def lenient_tls(lenient_ca: TestCA) -> Iterator[LenientUpstream]:
    """The same origin behind TLS (HTTP/1.1 only): HTTP/2 streams reach it translated."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*lenient_ca.issue_server_cert(["127.0.0.1"]))
    ctx.set_alpn_protocols(["http/1.1"])
    up = LenientUpstream(ctx)
    yield up
    up.close()


@pytest.fixture(scope="module")
def dproxy(
    lenient: LenientUpstream,
    lenient_tls: LenientUpstream,
    lenient_ca: TestCA,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Proxy]:
    wd = tmp_path_factory.mktemp("desync")
    policy = {
        "version": 1,
        "upstream_ca": str(lenient_ca.ca_path),
        "certs_dir": str(wd / "certs"),
        "audit": {"path": str(wd / "audit.jsonl")},
        "limits": {"max_request_body": 1 << 20},
        "backends": {"local": {"type": "env"}},
        "tenants": {
            "acme": {
                "token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest(),
                "secrets": {
                    "desync": {
                        "backend": "local",
                        "path": "KB_DESYNC_VALUE",
                        "hosts": ["127.0.0.1"],
                        "ports": [lenient.port, lenient_tls.port],
                        "schemes": ["http", "https"],
                        "methods": ["GET"],
                        "paths": ["/allowed*"],
                    }
                },
            }
        },
    }
    with Proxy(policy, wd, env={"KB_DESYNC_VALUE": VALUE}, quiet=True) as proxy:
        yield proxy


# -- tests ---------------------------------------------------------------------------------------
def test_lenient_upstream_is_desynced_by_obs_fold() -> None:
    """Control: the upstream really is lenient. The obs-fold vector written
    straight to it (value in place, no broker) is read as two requests, the
    second one ``/forbidden`` with the value: the suite can see a desync."""
    host = "127.0.0.1:1"
    v = next(x for x in corpus(host) if x.id == "badwrap.cl-te")
    data = v.data.replace(b"<<secret:desync>>", VALUE.encode())
    first = parse_one(data, 0)
    assert first is not None
    second = parse_one(data[first[1] :], 0)
    assert second is not None
    assert second[0].path == "/forbidden/badwrap.cl-te" and VALUE.encode() in second[0].raw


def test_desync_corpus(dproxy: Proxy, lenient: LenientUpstream) -> None:
    """Attack: the corpus (smuggler and http-request-smuggler techniques,
    the RFC 9110/9112 edge cases of issue 19) on one broker.
    Expected: zero forbidden deliveries with a value, the audit matches what
    the upstream parsed on every vector, every vector answered in bound."""
    target = f"127.0.0.1:{lenient.port}"
    vectors = corpus(target)
    assert len(vectors) > 1200
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(lambda v: run_vector(dproxy, target, v), vectors))
    took = time.monotonic() - started
    time.sleep(0.3)  # the last audit records are written after the last response is sent
    audit = audit_by_vector(dproxy.audit_path)
    parsed = upstream_by_vector(lenient)
    value = VALUE.encode()

    problems = _judge(outcomes, audit, parsed)
    slowest = max(outcomes, key=lambda o: o.seconds)
    print(
        f"desync corpus: {len(vectors)} vectors in {took:.1f}s; slowest {slowest.vector.id} "
        f"{slowest.seconds:.2f}s; upstream parsed {len(lenient.received)} requests"
    )
    assert not problems, "\n".join(problems)
    # The harness can see deliveries: allowed vectors did reach the upstream with the value.
    assert any(value in raw for reqs in parsed.values() for _, _, raw in reqs)
    # Request trailers are forwarded, not dropped (HTTP/1 chunked, in the last chunk).
    with_trailers = [r for r in lenient.received if r.path == "/allowed/trailers"]
    assert [r.trailers for r in with_trailers] == [[("X-Checksum", "1")]]


def test_response_trailers_relayed_scrubbed(dproxy: Proxy, lenient: LenientUpstream) -> None:
    """An HTTP/1 upstream answers chunked with a trailer that echoes the
    substituted value (mitmproxy 12 raised NotImplementedError on HTTP/1
    trailers: the client hung).
    Expected: the answer arrives, its trailer carries the placeholder, never
    the value."""
    target = f"127.0.0.1:{lenient.port}"
    req = f"GET /allowed/rt/echo-trailer HTTP/1.1\r\nHost: {target}\r\n{AUTH}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", dproxy.port), timeout=BOUND) as s:
        auth = Proxy.auth_header("acme", TOKEN)
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nProxy-Authorization: {auth}\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        s.sendall(req.encode())
        data = b""
        while not data.endswith(b"\r\n\r\n") or b"\r\n0\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 "), data[:100]
    assert VALUE.encode() not in data
    assert b"\r\n0\r\nX-Echo: Bearer <<secret:desync>>\r\n\r\n" in data, data[-200:]


# -- HTTP/2 ----------------------------------------------------------------------------------------
def h2_corpus(host: str) -> list[tuple[Vector, dict[str, Any]]]:
    out = []
    for spec in yaml.safe_load(VECTORS.read_text())["h2"]:
        vid = spec["id"]
        pseudo = {
            ":method": "GET",
            ":scheme": "https",
            ":authority": host,
            ":path": "/allowed/" + vid,
        }
        for k, v in (spec.get("set") or {}).items():
            pseudo[k] = _fill(v, vid, host)
        fields = [(k, v) for k, v in pseudo.items()]
        fields += [(k, _fill(v, vid, host)) for k, v in spec.get("add") or []]
        fields.append(("authorization", "Bearer <<secret:desync>>"))
        stream = {
            "headers": fields,
            "body": _fill(spec.get("body", ""), vid, host).encode("latin-1"),
            "trailers": [(k, _fill(v, vid, host)) for k, v in spec.get("trailers") or []],
        }
        out.append((Vector(vid, spec["src"], b"", spec.get("expect")), stream))
    return out


def run_h2(proxy: Proxy, target: str, v: Vector, stream: dict[str, Any]) -> Outcome:
    """One stream on its own HTTP/2 tunnel; a reset or a closed connection
    counts as an answer."""
    try:
        w = tunnel(proxy, target, creds=("acme", TOKEN), alpn=("h2",))
    except (OSError, ConnectionRefusedError) as exc:
        return Outcome(v, [], False, 0.0, f"tunnel: {exc}")
    t0 = time.monotonic()
    c = H2(w, validate=False)
    try:
        sid = c.conn.get_next_available_stream_id()
        body, trailers = stream["body"], stream["trailers"]
        c.conn.send_headers(sid, stream["headers"], end_stream=not (body or trailers))
        if body:
            c.conn.send_data(sid, body, end_stream=not trailers)
        if trailers:
            c.conn.send_headers(sid, trailers, end_stream=True)
        c.responses[sid] = {"status": None, "headers": [], "body": b"", "reset": False}
        c.flush()
        w.sock.settimeout(BOUND)
        try:
            c.pump([sid])
        except (TimeoutError, ssl.SSLError, OSError):
            pass
        r = c.responses[sid]
        answered = r["status"] is not None or r["reset"]
        closed = not answered
        if closed:
            try:
                closed = w.sock.recv(1) == b""
            except (TimeoutError, ssl.SSLError, OSError) as exc:
                closed = not isinstance(exc, TimeoutError)
    except h2.exceptions.ProtocolError:  # the connection was torn down under the stream
        return Outcome(v, [], True, time.monotonic() - t0)
    finally:
        w.close()
    statuses = [r["status"]] if r["status"] is not None else []
    return Outcome(v, statuses, closed or r["reset"], time.monotonic() - t0)


def test_desync_corpus_http2(dproxy: Proxy, lenient_tls: LenientUpstream) -> None:
    """Attack: HTTP/2 streams whose fields, pseudo-headers, lengths or
    trailers would split or re-frame the HTTP/1.1 request keybroker writes
    (CR/LF/NUL in values and names, spaces in :method/:path/:authority,
    connection-specific fields, content-length lies).
    Expected: as for HTTP/1: no forbidden delivery with a value, the audit
    equals what the origin parsed, every stream answered or reset in bound."""
    target = f"127.0.0.1:{lenient_tls.port}"
    vectors = h2_corpus(target)
    assert len(vectors) >= 35
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda vs: run_h2(dproxy, target, *vs), vectors))
    time.sleep(0.3)
    problems = _judge(outcomes, audit_by_vector(dproxy.audit_path), upstream_by_vector(lenient_tls))
    assert not problems, "\n".join(problems)
    value = VALUE.encode()
    parsed = upstream_by_vector(lenient_tls)
    assert any(value in raw for _, _, raw in parsed.get("h2.plain", []))
