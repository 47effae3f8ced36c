"""A deliberately lenient HTTP/1 origin for the desync suite (issue 19).

It parses the way the sloppiest real servers do, so any ambiguity keybroker
forwards turns into a request it can see: lines end at CRLF, a bare LF *or a
bare CR*; a line that starts with whitespace is a header of its own (no
obs-fold unfolding); header names are read lower-cased, ``_`` as ``-``, other
bytes outside ``[a-z0-9-]`` dropped (``\x00Transfer_Encoding`` is
Transfer-Encoding); a Transfer-Encoding whose value contains ``chunked`` makes
the body chunked (over any Content-Length); otherwise the first digits of a
Content-Length give the length; chunk sizes are the leading hex digits, wrapped at 64 bits; empty
lines before a request line are skipped. Every request it parses is recorded
(connection number, method, path, raw bytes) and answered ``200``.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
from dataclasses import dataclass

__all__ = ["LenientUpstream", "Parsed"]

_EOL = re.compile(rb"\r\n|\r|\n")


@dataclass
class Parsed:
    conn: int
    method: str
    path: str
    headers: list[tuple[str, str]]
    trailers: list[tuple[str, str]]
    raw: bytes


def _head_end(buf: bytes) -> int | None:
    """Index just past the first empty line (two line ends in a row)."""
    prev_end = -1
    for m in _EOL.finditer(buf):
        if m.start() == prev_end:
            return m.end()
        prev_end = m.end()
    return None


def _line(buf: bytes, pos: int) -> tuple[bytes, int] | None:
    m = _EOL.search(buf, pos)
    return None if m is None else (buf[pos : m.start()], m.end())


def _chunked(buf: bytes, pos: int) -> tuple[int, list[tuple[str, str]]] | None:
    """End of a chunked body starting at ``pos`` and its trailers, or None (incomplete)."""
    while True:
        got = _line(buf, pos)
        if got is None:
            return None
        size_line, pos = got
        digits = re.match(rb"\s*([0-9a-fA-F]*)", size_line)
        size = int(digits.group(1) or b"0", 16) % (1 << 64) if digits else 0
        if size == 0:
            break
        if len(buf) < pos + size:
            return None
        pos += size
        got = _line(buf, pos)
        if got is None:
            return None
        pos = got[1]
    trailers = []
    while True:
        got = _line(buf, pos)
        if got is None:
            return None
        line, pos = got
        if not line:
            return pos, trailers
        k, _, v = line.decode("latin-1").partition(":")
        trailers.append((k.strip(), v.strip()))


def _name(raw: str) -> str:
    """A header name as a sloppy server sees it: lower case, ``_`` read as
    ``-`` (CGI-style), every other byte outside ``[a-z0-9-]`` dropped."""
    return re.sub(r"[^a-z0-9-]", "", raw.lower().replace("_", "-"))


def parse_one(buf: bytes, conn: int) -> tuple[Parsed, int] | None:
    """One request off the front of ``buf`` (and its length), or None."""
    start = 0
    while (m := _EOL.match(buf, start)) is not None:
        start = m.end()
    end = _head_end(buf[start:])
    if end is None:
        return None
    end += start
    lines = [ln.decode("latin-1") for ln in _EOL.split(buf[start:end])]
    parts = lines[0].split()
    method, path = [*parts, "", ""][:2]
    headers = []
    for ln in lines[1:]:
        if ln:
            k, _, v = ln.partition(":")
            headers.append((k.strip(), v.strip()))
    chunked = any(_name(k) == "transfer-encoding" and "chunked" in v.lower() for k, v in headers)
    trailers: list[tuple[str, str]] = []
    if chunked:
        got = _chunked(buf, end)
        if got is None:
            return None
        stop, trailers = got
    else:
        length = 0
        for k, v in headers:
            if _name(k) == "content-length" and (d := re.search(r"\d+", v)):
                length = int(d.group())
                break
        if len(buf) < end + length:
            return None
        stop = end + length
    return Parsed(conn, method, path, headers, trailers, buf[start:stop]), stop


def _answer(req: Parsed) -> bytes:
    """``200 ok``; a path ending in ``/echo-trailer`` gets a chunked answer
    whose trailer echoes the request's Authorization value."""
    if not req.path.endswith("/echo-trailer"):
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    auth = next((v for k, v in req.headers if k.lower() == "authorization"), "")
    return (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Echo\r\n\r\n"
        b"2\r\nok\r\n0\r\nX-Echo: " + auth.encode("latin-1") + b"\r\n\r\n"
    )


class LenientUpstream:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        """``tls``: a server context; connections are TLS (HTTP/1.1 inside)."""
        self.tls = tls
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(128)
        self.port = int(self.lsock.getsockname()[1])
        self.received: list[Parsed] = []
        self._lock = threading.Lock()
        self._conns = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            with self._lock:
                self._conns += 1
                n = self._conns
            threading.Thread(target=self._handle, args=(c, n), daemon=True).start()

    def _handle(self, c: socket.socket, n: int) -> None:
        buf = b""
        c.settimeout(30)
        try:
            if self.tls is not None:
                c = self.tls.wrap_socket(c, server_side=True)
            while data := c.recv(65536):
                buf += data
                while (got := parse_one(buf, n)) is not None:
                    req, used = got
                    buf = buf[used:]
                    with self._lock:
                        self.received.append(req)
                    c.sendall(_answer(req))
        except OSError:
            pass
        finally:
            c.close()

    def close(self) -> None:
        self.lsock.close()
