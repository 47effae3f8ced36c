"""Self-test of the HTTPS upstream harness (tests/support/upstream.py), no proxy."""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import json
import os
import socket
import ssl
import stat
import time
import urllib.parse
import zlib
from collections.abc import Iterator
from pathlib import Path

import brotli
import pytest
import requests
import zstandard
from cryptography import x509

from tests.support.tlsca import TestCA
from tests.support.upstream import WS_GUID, Upstream, encode

SECRET = "sk_live_A1b2/C3+d4=e5"
AUTH = {"Authorization": SECRET}


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("upstream-ca"))


@pytest.fixture(scope="module")
def up(ca: TestCA) -> Iterator[Upstream]:
    with Upstream(ca) as u:
        yield u


def session(verify: str) -> requests.Session:
    s = requests.Session()
    # Without this, REQUESTS_CA_BUNDLE / HTTPS_PROXY from the environment override
    # Session.verify and route the request elsewhere.
    s.trust_env = False
    s.verify = verify
    return s


@pytest.fixture
def http(up: Upstream, ca: TestCA) -> Iterator[requests.Session]:
    up.clear()
    with session(ca.ca_path) as s:
        yield s


def raw_request(up: Upstream, ca: TestCA, target: str, headers: str = "") -> bytes:
    """Send one HTTP/1.1 request over a raw TLS socket; return every byte received."""
    ctx = ca.client_context()
    with (
        socket.create_connection(("127.0.0.1", up.port), timeout=5) as tcp,
        ctx.wrap_socket(tcp, server_hostname="localhost") as s,
    ):
        s.sendall(
            f"GET {target} HTTP/1.1\r\nHost: localhost\r\n{headers}"
            "Connection: close\r\n\r\n".encode()
        )
        out = bytearray()
        for _ in range(100_000):
            try:
                b = s.recv(65536)
            except (ssl.SSLEOFError, ConnectionResetError):
                break
            if not b:
                break
            out += b
        return bytes(out)


def parse_chunked(raw: bytes) -> tuple[bytes, list[bytes]]:
    head, _, rest = raw.partition(b"\r\n\r\n")
    chunks: list[bytes] = []
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        n = int(size_line, 16)
        if n == 0:
            return head, chunks
        chunks.append(rest[:n])
        assert rest[n : n + 2] == b"\r\n"
        rest = rest[n + 2 :]


# -- the CA -----------------------------------------------------------------------------------


def test_ca_files_and_extensions(ca: TestCA) -> None:
    assert isinstance(ca.ca_path, str)
    assert stat.S_IMODE(os.stat(ca.key_path).st_mode) == 0o600
    cert_path, key_path = ca.issue_server_cert(["api.test", "10.1.2.3"])
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    leaf = x509.load_pem_x509_certificates(Path(cert_path).read_bytes())[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["api.test"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
    assert leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    root = ca.cert.extensions
    assert root.get_extension_for_class(x509.BasicConstraints).critical
    assert root.get_extension_for_class(x509.KeyUsage).value.key_cert_sign


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_strict_verification_and_sni(up: Upstream, ca: TestCA, host: str) -> None:
    up.clear()
    ctx = ca.client_context(strict=True)
    with (
        socket.create_connection(("127.0.0.1", up.port), timeout=5) as tcp,
        ctx.wrap_socket(tcp, server_hostname=host) as s,
    ):
        assert s.selected_alpn_protocol() in (None, "http/1.1")
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 200")
    assert up.wait_for(1)
    assert up.received[0].sni == (host if host == "localhost" else None)


def test_untrusted_client_counts_tls_failure(up: Upstream, tmp_path: os.PathLike[str]) -> None:
    up.clear()
    other = TestCA(tmp_path)
    with pytest.raises(requests.exceptions.SSLError), session(other.ca_path) as s:
        s.get(up.url("/echo"), timeout=5)
    deadline = time.monotonic() + 5
    while up.tls_failures == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert up.tls_failures == 1 and up.received == []


# -- recording and counting --------------------------------------------------------------------


def test_echo_records_and_reflects(up: Upstream, http: requests.Session) -> None:
    r = http.post(up.url("/echo/a/b?x=1&y=%3C"), data=b"hello \xff", headers={**AUTH, "X-Dup": "1"})
    assert r.status_code == 200
    j = r.json()
    assert j["method"] == "POST" and j["path"] == "/echo/a/b?x=1&y=%3C"
    assert j["headers"]["authorization"] == SECRET
    assert j["body"] == "hello \\xff"
    assert SECRET in r.text
    rec = up.received[-1]
    assert (rec.method, rec.path, rec.body, rec.http_version) == (
        "POST",
        "/echo/a/b?x=1&y=%3C",
        b"hello \xff",
        "HTTP/1.1",
    )
    assert rec.header("AUTHORIZATION") == SECRET
    assert ("X-Dup", "1") in rec.headers
    assert rec.query == {"x": ["1"], "y": ["<"]}


def test_chunked_request_body_is_recorded(up: Upstream, http: requests.Session) -> None:
    r = http.put(up.url("/echo"), data=iter([b"ab", b"cd"]))
    assert r.json()["headers"]["transfer-encoding"] == "chunked"
    assert up.received[-1].body == b"abcd"


def test_connection_counter(up: Upstream, ca: TestCA, http: requests.Session) -> None:
    assert up.connections == 0
    for _ in range(3):
        assert http.get(up.url("/echo")).status_code == 200
    assert up.connections == 1  # keep-alive
    with session(ca.ca_path) as other:
        other.get(up.url("/status/204"))
    assert up.connections == 2
    assert up.wait_for(4, timeout=1) and not up.wait_for(5, timeout=0.05)
    assert [r.conn for r in up.received][:3] == [up.received[0].conn] * 3


# -- reflected values --------------------------------------------------------------------------


def decode(form: str, data: bytes) -> bytes:
    if form == "raw":
        return data
    if form in ("b64", "basic"):
        return base64.b64decode(data)
    if form in ("b64url", "b64urlpad"):
        return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))
    if form in ("hex", "HEX"):
        return binascii.unhexlify(data)
    if form in ("pct", "pctall"):
        return urllib.parse.unquote_to_bytes(data)
    if form.startswith("json"):
        return str(json.loads(b'"' + data + b'"')).encode()
    raise AssertionError(form)


FORMS = [
    "raw",
    "b64",
    "b64url",
    "b64urlpad",
    "hex",
    "HEX",
    "pct",
    "pctall",
    "json",
    "jsonslash",
    "jsonu",
    "basic",
]


@pytest.mark.parametrize("pad", [0, 1, 2])
@pytest.mark.parametrize("form", FORMS)
def test_reflect_body_forms(up: Upstream, http: requests.Session, form: str, pad: int) -> None:
    r = http.get(up.url(f"/reflect?form={form}&pad={pad}&prefix=5"), headers=AUTH)
    assert r.status_code == 200
    if form.startswith("json"):
        assert r.json()["value"] == "The q" + "P" * pad + SECRET
        enc = r.content.split(b'"value": "', 1)[1][5:].split(b'", "end"')[0]
    else:
        assert r.content.startswith(b"reflected: The q") and r.content.endswith(b" :end\n")
        enc = r.content[len(b"reflected: ") + 5 : -len(b" :end\n")]
    want = (b"user:" if form == "basic" else b"") + b"P" * pad + SECRET.encode()
    assert decode(form, enc) == want
    assert enc == encode(form, SECRET.encode(), pad=pad)


def test_reflect_json_escapes() -> None:
    v = 'a"b\\c/d\u00e9'.encode()
    assert encode("json", v) == b'a\\"b\\\\c/d\\u00e9'
    assert encode("jsonslash", v) == b'a\\"b\\\\c\\/d\\u00e9'
    assert encode("jsonu", b"ab") == b"\\u0061\\u0062"


def test_reflect_headers(up: Upstream, http: requests.Session) -> None:
    r = http.get(
        up.url("/reflect?form=pct&where=header,location,set-cookie,link&status=302"),
        headers=AUTH,
        allow_redirects=False,
    )
    v = urllib.parse.quote(SECRET, safe="")
    assert r.status_code == 302
    assert r.headers["X-Reflect"] == v
    assert r.headers["Location"] == f"https://x/?k={v}"
    assert r.headers["Set-Cookie"].startswith(f"k={v};")
    assert r.headers["Link"] == f"<https://x/{v}>; rel=next"
    assert r.json() == {"ok": True}


@pytest.mark.parametrize(
    ("url", "kwargs", "want"),
    [
        ("/reflect?bare=1", {"headers": {"Authorization": f"Bearer {SECRET}"}}, SECRET),
        ("/reflect?bare=1", {"auth": ("me", SECRET)}, SECRET),
        ("/reflect?from=x-api-key", {"headers": {"X-Api-Key": "k1"}}, "k1"),
        ("/reflect", {"json": {"value": "from-json"}}, "from-json"),
        ("/reflect", {"data": {"value": "from-form"}}, "from-form"),
        ("/reflect?from=query:key&key=q%2Fv", {}, "q/v"),
        ("/reflect?from=body", {"data": b"whole body"}, "whole body"),
    ],
    ids=["bearer", "basic", "other-header", "json-body", "form-body", "query", "raw-body"],
)
def test_reflect_sources(
    up: Upstream, http: requests.Session, url: str, kwargs: dict[str, object], want: str
) -> None:
    method = "POST" if "json" in kwargs or "data" in kwargs else "GET"
    r = http.request(method, up.url(url), **kwargs)  # type: ignore[arg-type]
    assert r.content == f"reflected: {want} :end\n".encode()


def test_reflect_without_value_is_400(up: Upstream, http: requests.Session) -> None:
    r = http.get(up.url("/reflect"))
    assert r.status_code == 400 and r.json()["error"] == "bad_request"
    assert http.get(up.url("/reflect?form=nope"), headers=AUTH).status_code == 400
    assert http.get(up.url("/echo")).status_code == 200  # still serving, same connection


# -- streaming ---------------------------------------------------------------------------------


@pytest.mark.parametrize("split", [1, 3, 7])
def test_chunked_is_really_chunked(up: Upstream, ca: TestCA, split: int) -> None:
    raw = raw_request(
        up, ca, f"/chunked?split={split}&prefix=4&delay=0", f"Authorization: {SECRET}\r\n"
    )
    head, chunks = parse_chunked(raw)
    assert b"transfer-encoding: chunked" in head.lower()
    assert b"content-length" not in head.lower()
    body = b"".join(chunks)
    assert body == b"The " + SECRET.encode() + b"\n"
    assert all(len(c) == split for c in chunks[:-1]) and len(chunks) == -(-len(body) // split)


def test_sse_events_arrive_progressively(up: Upstream, http: requests.Session) -> None:
    t0 = time.monotonic()
    r = http.get(up.url("/sse?events=3&interval=0.3&reflect=1&hold=0.3"), headers=AUTH, stream=True)
    assert r.headers["Content-Type"] == "text/event-stream"
    arrivals: list[tuple[float, bytes]] = []
    for chunk in r.iter_content(chunk_size=None):
        arrivals.append((time.monotonic() - t0, chunk))
    end = time.monotonic() - t0
    assert arrivals[0][0] < 0.25 and end > 0.85
    assert arrivals[0][1] == b'data: {"i": 0, "value": "' + SECRET.encode() + b'"}\n\n'
    text = b"".join(c for _, c in arrivals)
    assert text.count(SECRET.encode()) == 3
    # event 1 is written in two pieces, split inside the secret
    pieces = [c for _, c in arrivals]
    assert any(p.endswith(SECRET.encode()[: len(SECRET) // 2]) for p in pieces)


def test_ndjson(up: Upstream, http: requests.Session) -> None:
    r = http.get(up.url("/sse?format=ndjson&events=2&interval=0"))
    assert r.headers["Content-Type"] == "application/x-ndjson"
    assert r.content == b'{"i": 0}\n{"i": 1}\n'


def _decompress(enc: str, data: bytes) -> bytes:
    return bytes(
        {
            "gzip": gzip.decompress,
            "deflate": zlib.decompress,
            "br": brotli.decompress,
            "zstd": lambda d: zstandard.ZstdDecompressor().decompressobj().decompress(d),
        }[enc](data)
    )


@pytest.mark.parametrize("stream", [0, 1])
@pytest.mark.parametrize("enc", ["gzip", "br", "zstd", "deflate"])
def test_compressed(up: Upstream, http: requests.Session, enc: str, stream: int) -> None:
    r = http.get(
        up.url(f"/compressed?enc={enc}&stream={stream}&form=b64"), headers=AUTH, stream=True
    )
    assert r.headers["Content-Encoding"] == enc
    assert ("Transfer-Encoding" in r.headers) == bool(stream)
    wire = r.raw.read(decode_content=False)
    assert SECRET.encode() not in wire
    body = _decompress(enc, wire)
    assert body == b"compressed: " + base64.b64encode(SECRET.encode()) + b" :end\n"


@pytest.mark.parametrize("enc", ["gzip", "zstd"])
def test_bomb_is_small_on_the_wire(up: Upstream, http: requests.Session, enc: str) -> None:
    size = 32 << 20
    r = http.get(up.url(f"/bomb?enc={enc}&size={size}"), stream=True)
    wire = r.raw.read(decode_content=False)
    assert len(wire) < 64 * 1024
    d = zlib.decompressobj(31) if enc == "gzip" else zstandard.ZstdDecompressor().decompressobj()
    assert len(d.decompress(wire)) == size


@pytest.mark.parametrize("chunked", [0, 1])
def test_large(up: Upstream, http: requests.Session, chunked: int) -> None:
    r = http.get(up.url(f"/large?size=200000&reflect=1&chunked={chunked}"), headers=AUTH)
    assert len(r.content) == 200000 + len(SECRET)
    assert r.content.endswith(SECRET.encode()) and r.content.count(SECRET.encode()) == 1
    assert ("Content-Length" in r.headers) != bool(chunked)


# -- odds and ends -----------------------------------------------------------------------------


def test_redirect_status_404(up: Upstream, http: requests.Session) -> None:
    r = http.get(up.url("/redirect?to=https%3A%2F%2Fx%2F%3Fk%3Dv"), allow_redirects=False)
    assert (r.status_code, r.headers["Location"]) == (302, "https://x/?k=v")
    r = http.get(up.url("/status/503"))
    assert (r.status_code, r.json()) == (503, {"status": 503})
    r = http.get(up.url("/nope"))
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    assert http.head(up.url("/echo")).content == b""


def test_reset_mid_stream(up: Upstream, http: requests.Session) -> None:
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        http.get(up.url("/reset?after=5000"))
    assert http.get(up.url("/echo")).status_code == 200  # server still up


def test_garbage_does_not_kill_server(up: Upstream, ca: TestCA, http: requests.Session) -> None:
    raw = raw_request(up, ca, "/echo", "Content-Length: nope\r\n")
    assert raw.startswith(b"HTTP/1.1 400")
    with socket.create_connection(("127.0.0.1", up.port), timeout=5) as s:
        s.sendall(b"not tls at all\r\n\r\n")
    assert http.get(up.url("/echo")).status_code == 200
    assert up.errors == []


def _ws_frame(op: int, payload: bytes, fin: bool = True) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | op])
    head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _ws_read(s: ssl.SSLSocket) -> tuple[int, bytes]:
    buf = b""
    for _ in range(1000):
        if len(buf) >= 2:
            n = buf[1] & 0x7F
            off = 2
            if n == 126:
                if len(buf) < 4:
                    buf += s.recv(65536)
                    continue
                n, off = int.from_bytes(buf[2:4], "big"), 4
            if len(buf) >= off + n:
                return buf[0] & 0x0F, buf[off : off + n]
        buf += s.recv(65536)
    raise AssertionError("no frame")


def test_websocket_echo_and_reflect(up: Upstream, ca: TestCA) -> None:
    up.clear()
    key = base64.b64encode(os.urandom(16)).decode()
    ctx = ca.client_context()
    with (
        socket.create_connection(("127.0.0.1", up.port), timeout=5) as tcp,
        ctx.wrap_socket(tcp, server_hostname="localhost") as s,
    ):
        s.sendall(
            (
                f"GET /ws?reflect=1 HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nAuthorization: {SECRET}\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1)
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        assert head.startswith(b"HTTP/1.1 101") and accept.encode() in head
        assert _ws_read(s) == (1, SECRET.encode())
        s.sendall(_ws_frame(1, b"hel", fin=False) + _ws_frame(0, b"lo"))
        assert _ws_read(s) == (1, b"hello")
        s.sendall(_ws_frame(1, b"reflect"))
        assert _ws_read(s) == (1, SECRET.encode())
        s.sendall(_ws_frame(8, b"\x03\xe8"))
        assert _ws_read(s)[0] == 8
    assert up.ws_messages == [(1, b"hello"), (1, b"reflect")]


def test_stop_is_bounded_with_open_streams(ca: TestCA) -> None:
    u = Upstream(ca).start()
    with session(ca.ca_path) as s:
        r = s.get(u.url("/sse?events=1&hold=30"), stream=True)
        next(r.iter_content(chunk_size=None))
        t = time.monotonic()
        u.stop()
        assert time.monotonic() - t < 2
        r.close()
    with pytest.raises(requests.exceptions.ConnectionError), session(ca.ca_path) as s:
        s.get(u.url("/echo"), timeout=2)
