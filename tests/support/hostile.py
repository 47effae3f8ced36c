"""A hostile upstream on raw sockets: TLS (a test CA's leaf), HTTP/1.1 or
HTTP/2 by ALPN, and a request path that names where to reflect the value it
was sent (``Authorization: Bearer VALUE``). It writes bytes no well-behaved
server library would: bad status lines, headers without a colon, a death
inside the head, ``101`` to nobody, WebSocket control frames, transfer
codings, 1xx, trailers, HTTP/2 protocol errors.

Each path is a function ``(value) -> bytes`` (HTTP/1.1) or a function that
drives an ``h2`` connection (HTTP/2). The server records what it did."""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import socket
import ssl
import threading
from collections.abc import Callable, Iterator

import h2.config
import h2.connection
import h2.events

from tests.support.tlsca import TestCA

__all__ = ["H1_PATHS", "H2_PATHS", "Hostile"]

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B65"


def _frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked server-to-client WebSocket frame (payload < 126 bytes)."""
    assert len(payload) < 126
    return bytes([0x80 | opcode, len(payload)]) + payload


def _ws_accept(head: bytes) -> bytes:
    key = b""
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            key = value.strip()
    digest = hashlib.sha1(key + _WS_GUID).digest()
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + base64.b64encode(digest) + b"\r\n\r\n"
    )


def _chunked(*parts: bytes, trailers: bytes = b"") -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p)
    return out + b"0\r\n" + trailers + b"\r\n"


# Each H1 path: (value, request head) -> the bytes to write; the server then closes.
H1_PATHS: dict[str, Callable[[bytes, bytes], bytes]] = {
    "reason": lambda v, _: b"HTTP/1.1 401 Invalid key " + v + b"\r\nContent-Length: 2\r\n\r\nno",
    "status-line": lambda v, _: b"HTTP/1.1 2x0 " + v + b"\r\nContent-Length: 0\r\n\r\n",
    "no-colon": lambda v, _: b"HTTP/1.1 200 OK\r\nX-Bad " + v + b"\r\nContent-Length: 0\r\n\r\n",
    "die-in-head": lambda v, _: b"HTTP/1.1 200 OK\r\nX-Key: " + v,
    "switch-unasked": lambda v, _: (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\n" + v
    ),
    "switch-v8": lambda v, _: (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: x\r\n\r\n" + v
    ),
    "ws-ping": lambda v, head: _ws_accept(head) + _frame(0x9, v) + _frame(0x1, b"hello"),
    "ws-pong": lambda v, head: _ws_accept(head) + _frame(0xA, v) + _frame(0x1, b"hello"),
    "ws-close": lambda v, head: _ws_accept(head) + _frame(0x8, b"\x03\xe8" + v),
    "te-gzip-chunked": lambda v, _: (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        + _chunked(gzip.compress(b"key=" + v))
    ),
    "te-gzip": lambda v, _: (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n" + gzip.compress(b"key=" + v)
    ),
    "1xx": lambda v, _: (
        b"HTTP/1.1 103 Early Hints\r\nLink: <" + v + b">\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    ),
    "trailers": lambda v, _: (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Key\r\n"
        b"Content-Type: text/plain\r\n\r\n" + _chunked(b"ok", trailers=b"X-Key: " + v + b"\r\n")
    ),
}


def _h2_bad_header(conn: h2.connection.H2Connection, sid: int, v: bytes) -> None:
    conn.send_headers(sid, [(b":status", b"200"), (b"x-key", b" " + v + b" ")])


def _h2_trailers(conn: h2.connection.H2Connection, sid: int, v: bytes) -> None:
    conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"text/plain")])
    conn.send_data(sid, b"ok")
    conn.send_headers(sid, [(b"x-key", v)], end_stream=True)


def _h2_goaway(conn: h2.connection.H2Connection, sid: int, v: bytes) -> None:
    conn.close_connection(error_code=1, additional_data=v)


def _h2_reset_after_head(conn: h2.connection.H2Connection, sid: int, v: bytes) -> None:
    conn.send_headers(sid, [(b":status", b"200"), (b"x-key", v)])
    conn.reset_stream(sid, error_code=2)


H2_PATHS: dict[str, Callable[[h2.connection.H2Connection, int, bytes], None]] = {
    "h2-bad-header": _h2_bad_header,
    "h2-trailers": _h2_trailers,
    "h2-goaway": _h2_goaway,
    "h2-reset-after-head": _h2_reset_after_head,
}


class Hostile:
    """Listens on 127.0.0.1; ``h2=True`` selects HTTP/2 when offered."""

    def __init__(self, ca: TestCA, *, h2: bool) -> None:
        cert, key = ca.issue_server_cert(["127.0.0.1", "localhost"])
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.set_alpn_protocols(["h2", "http/1.1"] if h2 else ["http/1.1"])
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(32)
        self.port: int = self.sock.getsockname()[1]
        self.seen: list[tuple[str, bytes]] = []
        """(path, value) for each request answered."""
        self.accepts = 0
        """TCP connections accepted."""
        self.ws_frames: list[bytes] = []
        """Unmasked payloads of the frames clients sent on ``ws-hold``."""
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> Hostile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve(self) -> None:
        while not self._stop:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            self.accepts += 1
            threading.Thread(target=self._handle, args=(raw,), daemon=True).start()

    def _handle(self, raw: socket.socket) -> None:
        raw.settimeout(10)
        with contextlib.suppress(OSError, ssl.SSLError, ValueError, h2.exceptions.H2Error):
            conn = self.ctx.wrap_socket(raw, server_side=True)
            with conn:
                if conn.selected_alpn_protocol() == "h2":
                    self._h2(conn)
                else:
                    self._h1(conn)

    def _h1(self, conn: ssl.SSLSocket) -> None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = conn.recv(65536)
            if not data:
                return
            buf += data
        head = buf.split(b"\r\n\r\n", 1)[0]
        path = head.split(b" ", 2)[1].decode().lstrip("/")
        value = _bearer(head.split(b"\r\n")[1:])
        self.seen.append((path, value))
        if path == "ws-hold":
            conn.sendall(_ws_accept(head))
            self._ws_read(conn, buf.split(b"\r\n\r\n", 1)[1])
            return
        conn.sendall(H1_PATHS[path](value, head))
        if path.startswith("ws-"):  # hold the connection open for the relay
            with contextlib.suppress(OSError):
                conn.settimeout(0.5)
                conn.recv(65536)

    def _ws_read(self, conn: ssl.SSLSocket, buf: bytes) -> None:
        """Record client frames (masked, payload < 126) until close or 2 s of silence."""
        conn.settimeout(2)
        while True:
            while len(buf) >= 6 and len(buf) >= 6 + (buf[1] & 0x7F):
                n = buf[1] & 0x7F
                mask, payload = buf[2:6], buf[6 : 6 + n]
                self.ws_frames.append(bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
                buf = buf[6 + n :]
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data

    def _h2(self, conn: ssl.SSLSocket) -> None:
        cfg = h2.config.H2Configuration(
            client_side=False, validate_outbound_headers=False, normalize_outbound_headers=False
        )
        h = h2.connection.H2Connection(cfg)
        h.initiate_connection()
        conn.sendall(h.data_to_send())
        while True:
            data = conn.recv(65536)
            if not data:
                return
            for ev in h.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    headers = dict(ev.headers)
                    path = headers[b":path"].decode().lstrip("/")
                    value = _bearer([b"authorization: " + headers.get(b"authorization", b"")])
                    self.seen.append((path, value))
                    H2_PATHS[path](h, ev.stream_id, value)
            conn.sendall(h.data_to_send())


def _bearer(lines: Iterator[bytes] | list[bytes]) -> bytes:
    for line in lines:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"authorization":
            return value.strip().removeprefix(b"Bearer ").strip()
    return b""
