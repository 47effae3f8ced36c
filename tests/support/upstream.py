"""A real local HTTPS upstream for integration tests.

``with Upstream(ca) as up:`` serves HTTP/1.1 (keep-alive, ALPN ``http/1.1``
only) over TLS on 127.0.0.1:<free port> from background threads. It records
every request (``up.received``: ``Received``) and counts accepted TCP
connections (``up.connections``), so tests can check what the broker sent and
that a denied request never connected.

The value to reflect (``V``), for every endpoint taking ``form``:
  the ``value`` field of a JSON or form-urlencoded request body if there is one
  and ``from`` is not given; else ``from``: a request header name (default
  ``authorization``), ``body`` (the raw body) or ``query:<name>``. ``bare=1``
  strips an auth scheme (``Bearer X`` -> ``X``, ``Basic b64(u:p)`` -> ``p``).
  No value -> 400. ``E = encode(form, P*pad + V + P*post)`` (``form`` in
  ``FORMS``, default raw; ``pad`` shifts base64 alignment; ``basic`` encodes
  ``b64(user:...)`` with ``user=``, default "user").

Endpoints (GET unless said; any method works; bad parameters -> 400 JSON):
  /echo*        200 JSON {method, path, headers{lower: value}, header_list,
                body (utf-8, backslashreplace), http_version}
  /reflect      where=body|header|location|set-cookie|link (comma list, default
                body), prefix=<n> filler bytes before E in the body, status=,
                hname= (header name for where=header, default X-Reflect),
                ctype=. Body: ``reflected: <filler>E :end\n`` or, for json*
                forms, ``{"note": "reflected", "value": "<filler>E", "end": true}``.
                Headers: ``X-Reflect: E``, ``Location: https://x/?k=E``,
                ``Set-Cookie: k=E; Path=/; Secure``, ``Link: <https://x/E>; rel=next``.
  /chunked      body = filler(prefix) + E + filler(suffix) + "\n" (nl=0: none),
                Transfer-Encoding: chunked, chunks of split=<n> bytes (default 16,
                0 = one chunk), delay=<s> between chunks (default 0.001).
  /sse          events=<n> (3), interval=<s> (0.05), hold=<s> (0) after the last
                event before ending, reflect=1 puts E in each event as
                ``data: {"i": i, "value": "E"}``; event split_event=<i> (default 1)
                is written in two chunks cut in the middle of E. format=ndjson
                sends ``{...}\n`` lines as application/x-ndjson. Chunked.
  /compressed   enc=gzip|br|zstd|deflate|identity (comma list applied in order),
                body ``compressed: <filler(prefix)>E :end\n``; stream=1 sends the
                compressed bytes chunked in chunks=<n> (4) pieces.
  /large        size=<bytes> of filler (no newline), then E when reflect=1
                (total size + len(E)); chunked=1 streams 64 KiB chunks, else
                Content-Length.
  /bomb         enc=zstd|gzip|br|deflate, size=<decoded bytes> (64 MiB) of zeros,
                small on the wire (cached per enc/size); chunked=1.
  /redirect     to=<url> (default /echo), status= (302): Location: <to>.
  /status/<c>   that status (200-599) with {"status": c}; delay=<s> first.
  /reset        after=<bytes> (100) of body (then E with reflect=1) under a much
                larger Content-Length, then the TCP connection dies without TLS
                close_notify: mode=rst (SO_LINGER 0, default) or fin.
  /ws           RFC 6455 echo (text/binary, fragmented messages reassembled,
                ping -> pong, close echoed). reflect=1: first server message is
                E, and a client text "reflect" gets E again; frag=<n> sends
                server messages in n-byte fragments. ``up.ws_messages`` records
                client messages.
  anything else 404 JSON.
Sleeps end early when the upstream stops; handler errors never kill it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gzip
import hashlib
import json
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
import urllib.parse
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import brotli
import zstandard

from tests.support.tlsca import TestCA

MAX_BODY = 256 * 1024 * 1024
HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 30.0
MAX_SLEEP = 60.0
PAD_BYTE = b"P"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_FILLER_UNIT = b"The quick brown fox jumps over the lazy dog. "
_FILLER = (_FILLER_UNIT * (65536 // len(_FILLER_UNIT) + 1))[:65536]


def filler(n: int) -> bytes:
    """``n`` bytes of filler text (no newline); the same bytes every endpoint uses."""
    if n <= len(_FILLER):
        return _FILLER[:n]
    q, r = divmod(n, len(_FILLER))
    return _FILLER * q + _FILLER[:r]


# -- encodings ------------------------------------------------------------------------------


def _json_escape(v: bytes) -> bytes:
    return json.dumps(v.decode("utf-8", "surrogateescape"))[1:-1].encode("ascii")


def _jsonu(v: bytes) -> bytes:
    return "".join(f"\\u{ord(c):04x}" for c in v.decode("utf-8", "surrogateescape")).encode()


def _jsonu_some(v: bytes) -> bytes:
    """Every other character ``\\u``-escaped (a JSON parser rejoins them)."""
    text = v.decode("utf-8", "surrogateescape")
    return "".join(f"\\u{ord(c):04x}" if i % 2 else c for i, c in enumerate(text)).encode()


def _b64wrap(width: int, eol: bytes) -> Callable[[bytes], bytes]:
    def wrap(v: bytes) -> bytes:
        blob = base64.b64encode(b"prefix:" + v + b":suffix-padding-to-wrap" * 4)
        return eol.join(blob[i : i + width] for i in range(0, len(blob), width))

    return wrap


ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "raw": lambda v: v,
    "b64": base64.b64encode,
    "b64url": lambda v: base64.urlsafe_b64encode(v).rstrip(b"="),
    "b64urlpad": base64.urlsafe_b64encode,
    "hex": lambda v: binascii.hexlify(v),
    "HEX": lambda v: binascii.hexlify(v).upper(),
    "pct": lambda v: urllib.parse.quote_from_bytes(v, safe="").encode("ascii"),
    "pctall": lambda v: "".join(f"%{b:02X}" for b in v).encode("ascii"),
    "json": _json_escape,
    "jsonslash": lambda v: _json_escape(v).replace(b"/", b"\\/"),
    "jsonu": _jsonu,
    # "basic" is handled in encode(): base64(user ":" value)
}
FORMS: tuple[str, ...] = (*ENCODERS, "basic")
CLIENT_DECODED: dict[str, Callable[[bytes], bytes]] = {
    # Issue 12 item 6: spellings a client decodes on its own; not in FORMS (the
    # leak detector of tests/support/leaks.py does not know them, and some
    # hold line breaks a header cannot carry): body reflections only.
    "jsonusome": _jsonu_some,
    "b64wrap64": _b64wrap(64, b"\n"),
    "b64wrap76": _b64wrap(76, b"\r\n"),
    "utf16le": lambda v: v.decode("utf-8", "surrogateescape").encode("utf-16-le"),
    "utf16be": lambda v: v.decode("utf-8", "surrogateescape").encode("utf-16-be"),
    "pctsafe": lambda v: urllib.parse.quote_from_bytes(v, safe="/:@+").encode("ascii"),
}


def encode(form: str, value: bytes, *, pad: int = 0, post: int = 0, user: str = "user") -> bytes:
    """Encode ``PAD_BYTE*pad + value + PAD_BYTE*post`` in ``form``."""
    v = PAD_BYTE * pad + value + PAD_BYTE * post
    if form == "basic":
        return base64.b64encode(user.encode() + b":" + v)
    if form in CLIENT_DECODED:
        return CLIENT_DECODED[form](v)
    if form not in ENCODERS:
        raise _BadRequest(f"unknown form {form!r}; one of {', '.join(FORMS)}")
    return ENCODERS[form](v)


def compress(enc: str, data: bytes) -> bytes:
    """Apply one Content-Encoding (``deflate`` is the zlib format, per RFC 9110)."""
    if enc == "gzip":
        return gzip.compress(data, mtime=0)
    if enc == "deflate":
        return zlib.compress(data)
    if enc == "br":
        return bytes(brotli.compress(data))
    if enc == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    if enc == "identity":
        return data
    raise _BadRequest(f"unknown enc {enc!r}")


_BOMB_CACHE: dict[tuple[str, int], bytes] = {}
_BOMB_LOCK = threading.Lock()


def bomb(enc: str, size: int) -> bytes:
    """A small ``enc`` body that decodes to ``size`` zero bytes (cached)."""
    with _BOMB_LOCK:
        if (enc, size) in _BOMB_CACHE:
            return _BOMB_CACHE[(enc, size)]
    block = bytes(1 << 20)
    out: list[bytes] = []
    comp: Any
    if enc == "gzip":
        comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    elif enc == "deflate":
        comp = zlib.compressobj(9)
    elif enc == "zstd":
        comp = zstandard.ZstdCompressor().compressobj()
    elif enc == "br":
        comp = brotli.Compressor(quality=5)
    else:
        raise _BadRequest(f"unknown enc {enc!r}")
    left = size
    while left > 0:
        chunk = block if left >= len(block) else block[:left]
        left -= len(chunk)
        out.append(comp.process(chunk) if enc == "br" else comp.compress(chunk))
    out.append(comp.finish() if enc == "br" else comp.flush())
    data = b"".join(out)
    with _BOMB_LOCK:
        _BOMB_CACHE[(enc, size)] = data
    return data


# -- records --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One request as the upstream received it."""

    method: str
    path: str  # request target as sent, query included
    headers: list[tuple[str, str]]  # in order, duplicates kept, names as sent
    body: bytes  # de-chunked, NOT content-decoded
    http_version: str  # "HTTP/1.1"
    conn: int = 0  # 1-based serial of the TCP connection it came on
    sni: str | None = None  # TLS server name the client sent
    ts: float = field(default_factory=time.monotonic)

    def header(self, name: str, default: str | None = None) -> str | None:
        """First value of ``name`` (case-insensitive)."""
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return default

    def header_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    @property
    def query(self) -> dict[str, list[str]]:
        return urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query, keep_blank_values=True)

    def json(self) -> Any:
        return json.loads(self.body)


class _BadRequest(Exception):
    pass


class _Aborted(Exception):
    """The upstream is stopping; abandon the response."""


# -- server ---------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, up: Upstream, addr: tuple[str, int], ctx: ssl.SSLContext) -> None:
        self.up = up
        self.ssl_context = ctx
        self.local = threading.local()
        self.conn_ids: dict[socket.socket, int] = {}
        super().__init__(addr, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn); skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        self.conn_ids[sock] = self.up._on_connect()
        return sock, addr

    def process_request(self, request: Any, client_address: Any) -> None:
        t = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="upstream-conn",
            daemon=True,
        )
        self.up._track_thread(t)
        t.start()

    def finish_request(self, request: Any, client_address: Any) -> None:
        up = self.up
        self.local.conn = self.conn_ids.pop(request, 0)
        self.local.sni = None
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            # wrap first (no I/O), then handshake while tracked, so stop() can cut it
            ssock = self.ssl_context.wrap_socket(
                request, server_side=True, do_handshake_on_connect=False
            )
        except (OSError, ValueError) as e:
            up._on_tls_failure(e)
            return
        up._track_sock(ssock)
        try:
            try:
                if up._stopping.is_set():
                    return
                ssock.do_handshake()
            except (OSError, ValueError) as e:
                if not up._stopping.is_set():
                    up._on_tls_failure(e)
                return
            _Handler(ssock, client_address, self)
        except Exception as e:
            up._on_error(e)
        finally:
            up._untrack_sock(ssock)
            with contextlib.suppress(OSError):
                ssock.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if exc is not None:
            self.up._on_error(exc)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "keybroker-test-upstream/1"
    timeout = IDLE_TIMEOUT
    disable_nagle_algorithm = True
    server: _Server

    # any method, including custom ones, goes to _dispatch
    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def version_string(self) -> str:
        return self.server_version

    # -- plumbing ---------------------------------------------------------------------------
    def _dispatch(self) -> None:
        self._kb_started = False
        up = self.server.up
        try:
            body = self._read_body()
        except (ValueError, _BadRequest) as e:
            self.close_connection = True
            self._send_json(
                400, {"error": "bad_request", "detail": str(e)}, [("Connection", "close")]
            )
            return
        rec = Received(
            self.command,
            self.path,
            [(k, str(v)) for k, v in self.headers.items()],
            body,
            self.request_version,
            int(getattr(self.server.local, "conn", 0)),
            getattr(self.server.local, "sni", None),
        )
        up._record(rec)
        split = urllib.parse.urlsplit(self.path)
        self._kb_q = urllib.parse.parse_qs(split.query, keep_blank_values=True)
        self._kb_rec = rec
        try:
            self._route(split.path)
        except _BadRequest as e:
            if not self._kb_started:
                self._send_json(400, {"error": "bad_request", "detail": str(e)})
            else:
                self.close_connection = True
        except (_Aborted, OSError):
            self.close_connection = True
        except Exception as e:
            up._on_error(e)
            self.close_connection = True
            if not self._kb_started:
                with contextlib.suppress(Exception):
                    self._send_json(
                        500,
                        {"error": "upstream_harness", "detail": repr(e)},
                        [("Connection", "close")],
                    )

    def _read_exact(self, n: int) -> bytes:
        data = self.rfile.read(n)
        if len(data) != n:
            raise ConnectionResetError("short body")
        return data

    def _read_body(self) -> bytes:
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            parts: list[bytes] = []
            total = 0
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ConnectionResetError("eof in chunked body")
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    for _ in range(1000):  # trailers
                        t = self.rfile.readline(65537)
                        if t in (b"\r\n", b"\n", b""):
                            break
                    return b"".join(parts)
                total += size
                if total > MAX_BODY:
                    raise ValueError("body too large")
                parts.append(self._read_exact(size))
                self.rfile.readline(3)
        cl = self.headers.get("Content-Length")
        if cl is None:
            return b""
        n = int(cl)
        if n < 0 or n > MAX_BODY:
            raise ValueError("bad Content-Length")
        return self._read_exact(n)

    def _sleep(self, seconds: float) -> None:
        if seconds > 0 and self.server.up._stopping.wait(min(seconds, MAX_SLEEP)):
            raise _Aborted

    def _q(self, name: str, default: str | None = None) -> str | None:
        v = self._kb_q.get(name)
        return v[0] if v else default

    def _qs(self, name: str, default: str) -> str:
        v = self._kb_q.get(name)
        return v[0] if v else default

    def _qint(self, name: str, default: int, lo: int = 0, hi: int = 1 << 40) -> int:
        raw = self._q(name)
        if raw is None or raw == "":
            return default
        try:
            v = int(raw)
        except ValueError:
            raise _BadRequest(f"{name} must be an integer") from None
        if not lo <= v <= hi:
            raise _BadRequest(f"{name} must be in [{lo}, {hi}]")
        return v

    def _qfloat(self, name: str, default: float, hi: float = MAX_SLEEP) -> float:
        raw = self._q(name)
        if raw is None or raw == "":
            return default
        try:
            v = float(raw)
        except ValueError:
            raise _BadRequest(f"{name} must be a number") from None
        if not 0 <= v <= hi:
            raise _BadRequest(f"{name} must be in [0, {hi}]")
        return v

    def _qbool(self, name: str, default: bool = False) -> bool:
        raw = self._q(name)
        if raw is None or raw == "":
            return default
        return raw.lower() in ("1", "true", "yes", "on")

    def _start(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        self._kb_started = True
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()

    def _has_body(self, status: int) -> bool:
        return self.command != "HEAD" and status not in (204, 304)

    def _send(
        self,
        status: int,
        body: bytes,
        ctype: str = "text/plain; charset=utf-8",
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        hs: list[tuple[str, str]] = []
        if status not in (204, 304):
            hs += [("Content-Type", ctype), ("Content-Length", str(len(body)))]
        self._start(status, [*hs, *headers])
        if self._has_body(status):
            self.wfile.write(body)

    def _send_json(self, status: int, obj: Any, headers: Sequence[tuple[str, str]] = ()) -> None:
        body = json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogateescape")
        self._send(status, body, "application/json", headers)

    def _send_chunked(
        self,
        status: int,
        chunks: Iterable[bytes],
        ctype: str,
        headers: Sequence[tuple[str, str]] = (),
        delay: float = 0.0,
    ) -> None:
        self._start(status, [("Content-Type", ctype), ("Transfer-Encoding", "chunked"), *headers])
        if not self._has_body(status):
            return
        first = True
        for c in chunks:
            if not c:
                continue
            if not first:
                self._sleep(delay)
            first = False
            self.wfile.write(b"%x\r\n" % len(c) + c + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    # -- the value to reflect ---------------------------------------------------------------
    def _value(self) -> bytes:
        rec = self._kb_rec
        src = self._q("from")
        value: bytes | None = None
        if src is None and rec.body:
            value = _body_value(rec)
        if value is None:
            src = src or "authorization"
            if src == "body":
                value = rec.body
            elif src.startswith("query:"):
                v = rec.query.get(src[len("query:") :])
                value = v[0].encode("utf-8", "surrogateescape") if v else None
            else:
                h = rec.header(src)
                value = h.encode("latin-1", "replace") if h is not None else None
        if value is None:
            raise _BadRequest(f"nothing to reflect (from={src!r})")
        if self._qbool("bare"):
            value = _bare(value)
        return value

    def _encoded(self) -> bytes:
        return encode(
            self._qs("form", "raw"),
            self._value(),
            pad=self._qint("pad", 0, 0, 4096),
            post=self._qint("post", 0, 0, 4096),
            user=self._qs("user", "user"),
        )

    # -- routes -----------------------------------------------------------------------------
    def _route(self, path: str) -> None:
        if path.startswith("/echo"):
            self._echo()
        elif path == "/reflect":
            self._reflect()
        elif path == "/chunked":
            self._chunked()
        elif path == "/sse":
            self._sse()
        elif path == "/compressed":
            self._compressed()
        elif path == "/large":
            self._large()
        elif path == "/bomb":
            self._bomb()
        elif path == "/redirect":
            self._redirect()
        elif path.startswith("/status/"):
            self._status(path[len("/status/") :])
        elif path == "/reset":
            self._reset()
        elif path == "/ws":
            self._ws()
        else:
            self._send_json(404, {"error": "not_found", "path": path})

    def _echo(self) -> None:
        rec = self._kb_rec
        hdrs: dict[str, str] = {}
        for k, v in rec.headers:
            lk = k.lower()
            hdrs[lk] = f"{hdrs[lk]}, {v}" if lk in hdrs else v
        self._send_json(
            200,
            {
                "method": rec.method,
                "path": rec.path,
                "headers": hdrs,
                "header_list": [[k, v] for k, v in rec.headers],
                "body": rec.body.decode("utf-8", "backslashreplace"),
                "http_version": rec.http_version,
            },
        )

    def _reflect(self) -> None:
        enc = self._encoded()
        where = {w.strip() for w in self._qs("where", "body").split(",") if w.strip()}
        unknown = where - {"body", "header", "location", "set-cookie", "link"}
        if unknown:
            raise _BadRequest(f"unknown where {sorted(unknown)}")
        v = enc.decode("latin-1")
        headers: list[tuple[str, str]] = []
        if "header" in where:
            headers.append((self._qs("hname", "X-Reflect"), v))
        if "location" in where:
            headers.append(("Location", f"https://x/?k={v}"))
        if "set-cookie" in where:
            headers.append(("Set-Cookie", f"k={v}; Path=/; Secure"))
        if "link" in where:
            headers.append(("Link", f"<https://x/{v}>; rel=next"))
        status = self._qint("status", 200, 200, 599)
        form = self._qs("form", "raw")
        pre = filler(self._qint("prefix", 0, 0, 1 << 24))
        if "body" not in where:
            self._send_json(status, {"ok": True}, headers)
        elif form.startswith("json"):
            body = b'{"note": "reflected", "value": "' + pre + enc + b'", "end": true}\n'
            self._send(status, body, self._qs("ctype", "application/json"), headers)
        else:
            body = b"reflected: " + pre + enc + b" :end\n"
            self._send(status, body, self._qs("ctype", "text/plain; charset=utf-8"), headers)

    def _chunked(self) -> None:
        enc = self._encoded()
        body = (
            filler(self._qint("prefix", 0, 0, 1 << 24))
            + enc
            + filler(self._qint("suffix", 0, 0, 1 << 24))
            + (b"\n" if self._qbool("nl", True) else b"")
        )
        split = self._qint("split", 16, 0, 1 << 24) or len(body)
        chunks = [body[i : i + split] for i in range(0, len(body), split)]
        self._send_chunked(
            200,
            chunks,
            self._qs("ctype", "text/plain; charset=utf-8"),
            delay=self._qfloat("delay", 0.001, 1.0),
        )

    def _sse(self) -> None:
        events = self._qint("events", 3, 0, 10000)
        interval = self._qfloat("interval", 0.05, 10.0)
        hold = self._qfloat("hold", 0.0)
        reflect = self._qbool("reflect")
        ndjson = self._qs("format", "sse") == "ndjson"
        split_at = self._qint("split_event", 1 if events > 1 else 0, 0, 10000)
        enc = self._encoded() if reflect else b""
        if ndjson:
            ctype = "application/x-ndjson"
        else:
            ctype = "text/event-stream"

        def gen() -> Iterator[tuple[bytes, bytes | None]]:
            for i in range(events):
                if reflect:
                    head = b'{"i": %d, "value": "' % i
                    payload = head + enc + b'"}'
                else:
                    head, payload = b"", b'{"i": %d}' % i
                if ndjson:
                    pre, line = b"", payload + b"\n"
                else:
                    pre, line = b"data: ", b"data: " + payload + b"\n\n"
                if reflect and i == split_at and len(enc) >= 2:
                    cut = len(pre) + len(head) + len(enc) // 2
                    yield line[:cut], line[cut:]
                else:
                    yield line, None

        self._start(
            200,
            [
                ("Content-Type", ctype),
                ("Cache-Control", "no-cache"),
                ("Transfer-Encoding", "chunked"),
            ],
        )
        if not self._has_body(200):
            return
        w = self.wfile
        for i, (a, b) in enumerate(gen()):
            if i:
                self._sleep(interval)
            w.write(b"%x\r\n" % len(a) + a + b"\r\n")
            if b is not None:
                self._sleep(min(interval, 0.05) or 0.01)
                w.write(b"%x\r\n" % len(b) + b + b"\r\n")
        self._sleep(hold)
        w.write(b"0\r\n\r\n")

    def _compressed(self) -> None:
        encs = [e.strip() for e in self._qs("enc", "gzip").split(",") if e.strip()]
        plain = b"compressed: " + filler(self._qint("prefix", 0, 0, 1 << 24)) + self._encoded()
        plain += b" :end\n"
        data = plain
        for e in encs:
            data = compress(e, data)
        ctype = self._qs("ctype", "text/plain; charset=utf-8")
        headers = [("Content-Encoding", ", ".join(encs))]
        if self._qbool("stream"):
            n = self._qint("chunks", 4, 1, 1 << 20)
            size = max(1, -(-len(data) // n))
            chunks = [data[i : i + size] for i in range(0, len(data), size)]
            self._send_chunked(200, chunks, ctype, headers, delay=self._qfloat("delay", 0.001, 1.0))
        else:
            self._send(200, data, ctype, headers)

    def _large(self) -> None:
        size = self._qint("size", 1 << 20, 0, 1 << 40)
        tail = self._encoded() if self._qbool("reflect") else b""
        ctype = self._qs("ctype", "application/octet-stream")

        def gen() -> Iterator[bytes]:
            left = size
            while left > 0:
                n = min(left, len(_FILLER))
                yield _FILLER[:n]
                left -= n
            if tail:
                yield tail

        if self._qbool("chunked"):
            self._send_chunked(200, gen(), ctype)
            return
        self._start(200, [("Content-Type", ctype), ("Content-Length", str(size + len(tail)))])
        if self._has_body(200):
            for c in gen():
                self.wfile.write(c)

    def _bomb(self) -> None:
        enc = self._qs("enc", "zstd")
        data = bomb(enc, self._qint("size", 64 << 20, 0, 1 << 34))
        ctype = self._qs("ctype", "text/plain; charset=utf-8")
        headers = [("Content-Encoding", enc)]
        if self._qbool("chunked"):
            self._send_chunked(
                200, [data[i : i + 65536] for i in range(0, len(data), 65536)], ctype, headers
            )
        else:
            self._send(200, data, ctype, headers)

    def _redirect(self) -> None:
        to = self._qs("to", "/echo")
        status = self._qint("status", 302, 300, 399)
        self._send_json(status, {"redirect": to}, [("Location", to)])

    def _status(self, code: str) -> None:
        try:
            status = int(code)
        except ValueError:
            raise _BadRequest("status must be an integer") from None
        if not 200 <= status <= 599:
            raise _BadRequest("status must be in [200, 599]")
        self._sleep(self._qfloat("delay", 0.0))
        self._send_json(status, {"status": status})

    def _reset(self) -> None:
        after = self._qint("after", 100, 0, 1 << 30)
        tail = self._encoded() if self._qbool("reflect") else b""
        mode = self._qs("mode", "rst")
        self._start(
            200,
            [
                ("Content-Type", "application/octet-stream"),
                ("Content-Length", str(after + len(tail) + 1_000_000)),
            ],
        )
        self.close_connection = True
        if self.command != "HEAD":
            left = after
            while left > 0:
                n = min(left, len(_FILLER))
                self.wfile.write(_FILLER[:n])
                left -= n
            if tail:
                self.wfile.write(tail)
        time.sleep(0.02)  # let the bytes leave before the reset
        sock = self.connection
        # end the TCP connection without a TLS close_notify: "rst" closes the fd with
        # SO_LINGER 0 (RST); "fin" shuts the socket down (FIN)
        if mode == "rst":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()  # drop the makefile() reference so close() closes the fd
            sock.close()
        else:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
        raise _Aborted

    # -- WebSocket (RFC 6455, no extensions) ------------------------------------------------
    def _ws(self) -> None:
        key = self.headers.get("Sec-WebSocket-Key")
        upgrade = (self.headers.get("Upgrade") or "").lower()
        if not key or upgrade != "websocket":
            self._send_json(400, {"error": "not a websocket handshake"})
            return
        reflect = self._qbool("reflect")
        enc = self._encoded() if reflect else b""
        frag = self._qint("frag", 0, 0, 1 << 20)
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self._start(
            101,
            [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", accept)],
        )
        self.close_connection = True
        up = self.server.up
        if reflect:
            self._ws_send_message(1, enc, frag)
        for _ in range(1_000_000):
            msg = self._ws_recv()
            if msg is None:
                up._record_ws_end()
                return
            op, payload = msg
            if op == 8:
                up._record_ws_end()
                self._ws_frame(8, payload[:2])
                return
            up._record_ws(op, payload)
            if op == 1 and payload == b"reflect" and reflect:
                self._ws_send_message(1, enc, frag)
            elif op == 1 and payload == b"close":
                self._ws_frame(8, b"\x03\xe8")
                return
            else:
                self._ws_send_message(op, payload, frag)

    def _ws_frame(self, op: int, payload: bytes, fin: bool = True) -> None:
        n = len(payload)
        head = bytes([(0x80 if fin else 0) | op])
        if n < 126:
            head += bytes([n])
        elif n < 65536:
            head += bytes([126]) + n.to_bytes(2, "big")
        else:
            head += bytes([127]) + n.to_bytes(8, "big")
        self.wfile.write(head + payload)

    def _ws_send_message(self, op: int, payload: bytes, frag: int = 0) -> None:
        if not frag or len(payload) <= frag:
            self._ws_frame(op, payload)
            return
        parts = [payload[i : i + frag] for i in range(0, len(payload), frag)]
        for i, p in enumerate(parts):
            self._ws_frame(op if i == 0 else 0, p, fin=i == len(parts) - 1)
            self._sleep(0.005)

    def _ws_read_frame(self) -> tuple[bool, int, bytes] | None:
        h = self.rfile.read(2)
        if len(h) < 2:
            return None
        fin, op, masked, n = bool(h[0] & 0x80), h[0] & 0x0F, bool(h[1] & 0x80), h[1] & 0x7F
        if n == 126:
            n = int.from_bytes(self._read_exact(2), "big")
        elif n == 127:
            n = int.from_bytes(self._read_exact(8), "big")
        if n > MAX_BODY:
            raise ValueError("websocket frame too large")
        mask = self._read_exact(4) if masked else b""
        data = self._read_exact(n)
        if masked and n:
            m = (mask * (n // 4 + 1))[:n]
            data = (int.from_bytes(data, "big") ^ int.from_bytes(m, "big")).to_bytes(n, "big")
        return fin, op, data

    def _ws_recv(self) -> tuple[int, bytes] | None:
        op0: int | None = None
        buf: list[bytes] = []
        for _ in range(1_000_000):
            fr = self._ws_read_frame()
            if fr is None:
                return None
            fin, op, data = fr
            if op >= 8:  # control frames may come between fragments
                if op == 9:
                    self._ws_frame(10, data)
                    continue
                if op == 10:
                    continue
                return op, data
            if op != 0:
                op0 = op
            buf.append(data)
            if fin:
                return (op0 or 1), b"".join(buf)
        return None


def _body_value(rec: Received) -> bytes | None:
    """The ``value`` field of a JSON or form body, if any."""
    ctype = (rec.header("content-type") or "").lower()
    if "json" in ctype or rec.body[:1] in (b"{", b"["):
        try:
            obj = json.loads(rec.body)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("value"), str):
            return str(obj["value"]).encode("utf-8", "surrogateescape")
    if "x-www-form-urlencoded" in ctype:
        form = urllib.parse.parse_qs(rec.body.decode("latin-1"), keep_blank_values=True)
        if form.get("value"):
            return form["value"][0].encode("latin-1")
    return None


def _bare(value: bytes) -> bytes:
    """Strip an auth scheme: ``Bearer X`` -> ``X``; ``Basic b64(u:p)`` -> ``p``."""
    scheme, sep, rest = value.partition(b" ")
    if not sep:
        return value
    rest = rest.strip()
    if scheme.lower() == b"basic":
        try:
            return base64.b64decode(rest, validate=True).partition(b":")[2]
        except binascii.Error:
            return rest
    return rest


# -- public API -----------------------------------------------------------------------------


class Upstream:
    """Local HTTPS upstream. ``with Upstream(ca) as up: requests.get(up.url("/echo"),
    verify=ca.ca_path)``."""

    def __init__(
        self, ca: TestCA, *, names: Sequence[str] | None = None, host: str = "127.0.0.1"
    ) -> None:
        self.ca = ca
        self.host = host
        base = ["localhost", "127.0.0.1", "::1"]
        self.names = base + [n for n in (names or ()) if n not in base]
        self.cert_path, self.key_path = ca.issue_server_cert(self.names)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._received: list[Received] = []
        self._ws: list[tuple[int, bytes]] = []
        self._ws_ended = 0
        self._errors: list[BaseException] = []
        self._connections = 0
        self._connections_total = 0
        self._tls_failures = 0
        self._socks: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> Upstream:
        if self._server is not None:
            return self
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_path, self.key_path)
        ctx.set_alpn_protocols(["http/1.1"])
        ctx.sni_callback = self._on_sni
        self._stopping.clear()
        self._server = _Server(self, (self.host, 0), ctx)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"upstream-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, cut every open connection, join threads (bounded)."""
        srv, self._server = self._server, None
        if srv is None:
            return
        deadline = time.monotonic() + timeout
        self._stopping.set()
        srv.shutdown()
        srv.server_close()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            with contextlib.suppress(OSError, ValueError):
                socket.socket.shutdown(s, socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> Upstream:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- addressing -------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        h = f"[{host}]" if ":" in host else host
        if not path.startswith("/"):
            path = "/" + path
        return f"https://{h}:{self.port}{path}"

    # -- observations -----------------------------------------------------------------------
    @property
    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    @property
    def last(self) -> Received | None:
        with self._lock:
            return self._received[-1] if self._received else None

    @property
    def connections(self) -> int:
        """TCP connections accepted since start (or the last clear())."""
        with self._lock:
            return self._connections

    @property
    def connections_total(self) -> int:
        with self._lock:
            return self._connections_total

    @property
    def tls_failures(self) -> int:
        """TLS handshakes that failed (e.g. the client refused our certificate)."""
        with self._lock:
            return self._tls_failures

    @property
    def ws_messages(self) -> list[tuple[int, bytes]]:
        """WebSocket messages received from clients: (opcode, payload)."""
        with self._lock:
            return list(self._ws)

    @property
    def errors(self) -> list[BaseException]:
        """Unexpected handler exceptions (the server keeps serving)."""
        with self._lock:
            return list(self._errors)

    def clear(self) -> None:
        """Forget received requests, WebSocket messages, errors; reset counters."""
        with self._lock:
            self._received.clear()
            self._ws.clear()
            self._errors.clear()
            self._connections = 0
            self._tls_failures = 0

    def wait_for(self, n: int, timeout: float = 5.0) -> bool:
        """Wait until at least ``n`` requests were received; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._received) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    # -- callbacks from server threads ------------------------------------------------------
    def _on_connect(self) -> int:
        with self._lock:
            self._connections += 1
            self._connections_total += 1
            return self._connections_total

    def _on_sni(self, sock: Any, name: str | None, ctx: ssl.SSLContext) -> None:
        if self._server is not None:
            self._server.local.sni = name

    def _on_tls_failure(self, e: BaseException) -> None:
        with self._lock:
            self._tls_failures += 1

    def _on_error(self, e: BaseException) -> None:
        if isinstance(e, (OSError, _Aborted)):
            return
        with self._lock:
            self._errors.append(e)

    def _record(self, rec: Received) -> None:
        with self._cond:
            self._received.append(rec)
            self._cond.notify_all()

    def _record_ws(self, op: int, payload: bytes) -> None:
        with self._lock:
            self._ws.append((op, payload))

    def _record_ws_end(self) -> None:
        with self._lock:
            self._ws_ended += 1

    @property
    def ws_ended(self) -> int:
        """WebSocket connections ended by the client side (a Close frame or EOF)."""
        with self._lock:
            return self._ws_ended

    def _track_sock(self, s: socket.socket) -> None:
        with self._lock:
            self._socks.add(s)

    def _untrack_sock(self, s: socket.socket) -> None:
        with self._lock:
            self._socks.discard(s)

    def _track_thread(self, t: threading.Thread) -> None:
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()]
            self._threads.append(t)
