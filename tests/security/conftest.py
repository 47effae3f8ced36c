"""Fixtures and raw-wire helpers for the named attack suite (issue 7).

The real servers (OpenBao, the HTTPS upstream with its own CA, the standard
two-tenant scenario) come from ``tests/integration/conftest.py`` (when the
whole tree runs, this directory gets its own session instances of them). On
top of them this adds a plain-HTTP recording upstream, TCP forwarders to the
HTTPS upstream (``[::1]`` and a second, unlisted port), a second HTTPS
upstream that also serves ``fronted.example`` (a CDN), a third tenant, and
one shared *security broker* whose policy adds the rules the attacks need.
Tests that change policy or break things start their own with
:func:`own_broker`.

Clients normalise what attackers do not, so the helpers speak raw bytes:
:func:`tunnel` opens ``CONNECT`` + TLS (any SNI, any ALPN), :class:`Wire`
writes a request verbatim and parses responses off the socket, and
:class:`H2` drives raw HTTP/2 frames (validation optional) through a tunnel.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import select
import socket
import socketserver
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest

from tests.integration import conftest as integration
from tests.support.leaks import find_leak
from tests.support.openbao import OpenBao
from tests.support.proxy import Proxy
from tests.support.scenario import Scenario, Tenant
from tests.support.tlsca import TestCA
from tests.support.upstream import Upstream

# The real servers, shared with the integration tests (session fixtures).
openbao = integration.openbao
test_ca = integration.test_ca
upstream = integration.upstream
sc = integration.sc

TIMEOUT = 15.0
LIMIT = 1 << 20
"""``limits.max_request_body`` of the security broker (1 MiB)."""


# -- a plain-HTTP upstream that records everything, trailers included -----------------------
@dataclass
class PlainRequest:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    trailers: list[tuple[str, str]]

    def wire(self) -> bytes:
        return (
            json.dumps([self.method, self.path, self.headers, self.trailers]).encode() + self.body
        )


class _PlainHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _PlainServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):
            return self._any
        raise AttributeError(name)

    def _any(self) -> None:
        body, trailers = b"", []
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            parts = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            while (line := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
                k, _, v = line.decode("latin-1").partition(":")
                trailers.append((k.strip(), v.strip()))
            body = b"".join(parts)
        elif n := int(self.headers.get("content-length") or 0):
            body = self.rfile.read(n)
        rec = PlainRequest(self.command, self.path, list(self.headers.items()), body, trailers)
        self.server.received.append(rec)
        out = json.dumps(
            {
                "path": rec.path,
                "headers": rec.headers,
                "trailers": trailers,
                "body": body.decode("utf-8", "replace"),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


class _PlainServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        self.received: list[PlainRequest] = []
        super().__init__(("127.0.0.1", 0), _PlainHandler)

    def server_bind(self) -> None:  # no reverse DNS lookup
        socketserver.TCPServer.server_bind(self)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@pytest.fixture(scope="session")
def plain_upstream() -> Iterator[_PlainServer]:
    srv = _PlainServer()
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


# -- TCP forwarders to the HTTPS upstream (its certificate names ::1 too) ----------------------
def _relay(a: socket.socket, b: socket.socket) -> None:
    """Copy both ways until both sides have closed, then close both."""
    open_ = {a: b, b: a}
    try:
        while open_:
            ready, _, _ = select.select(list(open_), [], [], 30)
            if not ready:
                return
            for src in ready:
                data = src.recv(65536)
                if data:
                    open_[src].sendall(data)
                else:
                    with contextlib.suppress(OSError):
                        open_[src].shutdown(socket.SHUT_WR)
                    del open_[src]
    except OSError:
        pass
    finally:
        a.close()
        b.close()


class Forwarder:
    """Listens on ``host`` and pipes each connection to the upstream; counts them."""

    def __init__(self, host: str, target_port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.lsock = socket.socket(family, socket.SOCK_STREAM)
        self.lsock.bind((host, 0))
        self.lsock.listen(32)
        self.port = int(self.lsock.getsockname()[1])
        self.target_port = target_port
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            try:
                s = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                c.close()
                continue
            self.connections += 1
            threading.Thread(target=_relay, args=(c, s), daemon=True).start()

    def close(self) -> None:
        self.lsock.close()


@pytest.fixture(scope="session")
def v6_fwd(upstream: Upstream) -> Iterator[Forwarder]:
    """``[::1]:<port>`` -> the HTTPS upstream."""
    fwd = Forwarder("::1", upstream.port)
    yield fwd
    fwd.close()


@pytest.fixture(scope="session")
def alt_fwd(upstream: Upstream) -> Iterator[Forwarder]:
    """A second port on 127.0.0.1 -> the HTTPS upstream (a port no rule lists)."""
    fwd = Forwarder("127.0.0.1", upstream.port)
    yield fwd
    fwd.close()


@pytest.fixture(scope="session")
def cdn(test_ca: TestCA) -> Iterator[Upstream]:
    """A second HTTPS upstream that also serves ``fronted.example`` (a CDN)."""
    with Upstream(test_ca, names=["fronted.example"]) as up:
        yield up


# -- the security scenario ------------------------------------------------------------------
@dataclass
class Sec:
    """The standard scenario plus a third tenant and the attack rules."""

    sc: Scenario
    plain_port: int
    v6_port: int
    cdn_port: int
    initech: Tenant = field(default_factory=lambda: Tenant("initech"))
    extra: dict[str, str] = field(
        default_factory=lambda: {
            "initech/stripe": f"kbcanary_initechstripe_{secrets.token_hex(12)}",
        }
    )

    @property
    def port(self) -> int:
        return self.sc.upstream_port

    def tenants(self) -> dict[str, Tenant]:
        return {"acme": self.sc.acme, "globex": self.sc.globex, "initech": self.initech}

    def stripe_of(self, tenant: str) -> str:
        return {**self.sc.values, **self.extra}[f"{tenant}/stripe"]

    def canaries(self) -> list[str]:
        return [*self.sc.canaries(), *self.extra.values()]

    def policy(self, workdir: Path, **over: Any) -> dict[str, Any]:
        sc = self.sc
        p = sc.policy(
            audit={"path": str(workdir / "audit.jsonl")}, limits={"max_request_body": LIMIT}
        )
        acme = p["tenants"]["acme"]["secrets"]
        acme.update(
            {
                # the same value as acme/stripe, under rules the destination attacks need
                "lhonly": sc.secret("acme/stripe", hosts=["localhost"]),
                "lhnorm": sc.secret("acme/stripe", hosts=["LocalHost."]),
                "v6": sc.secret("acme/stripe", hosts=["[0:0::1]"], ports=[self.v6_port]),
                "idna": sc.secret("acme/stripe", hosts=["bücher.invalid"]),
                "cdn": sc.secret("acme/stripe", hosts=["localhost"], ports=[self.cdn_port]),
                "plainok": sc.secret(
                    "acme/anywhere",
                    schemes=["http"],
                    ports=[self.plain_port],
                    locations=["header:authorization", "query", "body"],
                ),
            }
        )
        p["tenants"]["initech"] = {
            "token_sha256": self.initech.digest,
            "secrets": {"stripe": sc.secret("initech/stripe")},
        }
        p.update(over)
        return p


@pytest.fixture(scope="session")
def sec(
    sc: Scenario, openbao: OpenBao, plain_upstream: _PlainServer, v6_fwd: Forwarder, cdn: Upstream
) -> Sec:
    s = Sec(sc, plain_upstream.port, v6_fwd.port, cdn.port)
    for path, value in s.extra.items():
        openbao.put_v2(path, {"api_key": value}, mount=sc.mount)
    return s


def own_broker(sec: Sec, openbao: OpenBao, workdir: Path, **over: Any) -> Proxy:
    """A broker of the test's own (not started) with the security policy."""
    workdir.mkdir(parents=True, exist_ok=True)
    return Proxy(sec.policy(workdir, **over), workdir, env=sec.sc.env(openbao.root_token))


@pytest.fixture(scope="session")
def sbroker(
    sec: Sec, openbao: OpenBao, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    """The shared security broker (read-only tests)."""
    with own_broker(sec, openbao, tmp_path_factory.mktemp("sbroker")) as proxy:
        yield proxy


# -- raw wire ----------------------------------------------------------------------------------
@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    head: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    @property
    def raw(self) -> bytes:
        return self.head + self.body

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def reason(self) -> str | None:
        try:
            return str(self.json().get("reason"))
        except (ValueError, AttributeError):
            return None


class Wire:
    """One client connection: write bytes verbatim, read responses in order."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.target: str | None = None
        """The tunnel's CONNECT target: ``Host: x`` in a request stands for it
        (real clients name the server they connect to; keybroker refuses a
        value in a request whose Host names another server)."""

    def send(self, data: bytes) -> None:
        if self.target is not None:
            data = data.replace(b"\r\nHost: x\r\n", f"\r\nHost: {self.target}\r\n".encode(), 1)
        self.sock.sendall(data)

    def _fill(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except (ssl.SSLError, ConnectionResetError):
            data = b""
        self.buf += data
        return bool(data)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise EOFError("connection closed")
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError("connection closed mid-body")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def response(self, *, head_only: bool = False) -> RawResponse:
        """The next response; raises EOFError if the connection closes first."""
        lines = [self._line()]
        while lines[-1]:
            lines.append(self._line())
        head = b"\r\n".join(lines) + b"\r\n"
        status = int(lines[0].split()[1])
        headers = [
            (k.strip(), v.strip())
            for k, _, v in (ln.decode("latin-1").partition(":") for ln in lines[1:-1])
        ]
        resp = RawResponse(status, headers, b"", head)
        if head_only or status in (204, 304) or 100 <= status < 200:
            return resp
        if "chunked" in (resp.header("transfer-encoding") or "").lower():
            parts = []
            while size := int(self._line().split(b";")[0], 16):
                parts.append(self._take(size))
                self._take(2)
            while self._line():
                pass
            resp.body = b"".join(parts)
        elif (n := resp.header("content-length")) is not None:
            resp.body = self._take(int(n))
        else:
            while self._fill():
                pass
            resp.body, self.buf = self.buf, b""
        return resp

    def rest(self, timeout: float = 2.0) -> bytes:
        """Whatever arrives until the peer closes or ``timeout`` of silence."""
        self.sock.settimeout(timeout)
        with contextlib.suppress(TimeoutError, OSError):
            while self._fill():
                pass
        out, self.buf = self.buf, b""
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(proxy: Proxy) -> Wire:
    return Wire(socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT))


def tunnel(
    proxy: Proxy,
    target: str,
    *,
    creds: tuple[str, str] | None,
    sni: str | None = None,
    alpn: tuple[str, ...] = ("http/1.1",),
    tls: bool = True,
) -> Wire:
    """``CONNECT target`` (authenticated with ``creds``), then TLS to the broker
    with ``sni`` (default: none, as clients do for IP literals)."""
    w = connect(proxy)
    req = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
    if creds is not None:
        req += f"Proxy-Authorization: {Proxy.auth_header(*creds)}\r\n"
    w.send((req + "\r\n").encode("utf-8"))
    resp = w.response(head_only=True)
    if resp.status != 200:
        w.close()
        raise ConnectionRefusedError(f"CONNECT answered {resp.status}: {resp.head!r}")
    w.target = target
    if tls:
        ctx = ssl.create_default_context(cafile=str(proxy.ca_path))
        ctx.check_hostname = False  # the broker's leaf names the SNI; IP tunnels send none
        ctx.set_alpn_protocols(list(alpn))
        w.sock = ctx.wrap_socket(w.sock, server_hostname=sni)
    return w


def request(
    method: str,
    target: str,
    host: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    length: bool = True,
) -> bytes:
    """A request head (+ body) exactly as written; str parts are UTF-8 with surrogates."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers or []]
    if (
        length
        and body
        and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers or [])
    ):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


# -- HTTP/2 ------------------------------------------------------------------------------------
class H2:
    """A minimal HTTP/2 client over a broker tunnel (raw h2 frames)."""

    def __init__(self, w: Wire, *, validate: bool = True) -> None:
        self.w = w
        cfg = h2.config.H2Configuration(
            client_side=True,
            header_encoding="utf-8",
            validate_outbound_headers=validate,
            normalize_outbound_headers=validate,
        )
        self.conn = h2.connection.H2Connection(cfg)
        self.conn.initiate_connection()
        self.flush()
        self.responses: dict[int, dict[str, Any]] = {}

    def flush(self) -> None:
        self.w.send(self.conn.data_to_send())

    def send(self, headers: list[tuple[str, str]], body: bytes = b"") -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, headers, end_stream=not body)
        if body:
            self.conn.send_data(sid, body, end_stream=True)
        self.responses[sid] = {"status": None, "headers": [], "body": b"", "reset": False}
        return sid

    def pump_once(self) -> set[int]:
        """Read once and handle the events; the streams that ended (-1: connection)."""
        data = self.w.sock.recv(65536)
        if not data:
            return {-1}
        done: set[int] = set()
        for ev in self.conn.receive_data(data):
            r = self.responses.get(getattr(ev, "stream_id", 0))
            if isinstance(ev, h2.events.ResponseReceived) and r is not None:
                r["headers"] = ev.headers
                r["status"] = int(dict(ev.headers)[":status"])
            elif isinstance(ev, h2.events.DataReceived) and r is not None:
                r["body"] += ev.data
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                done.add(ev.stream_id)
                if isinstance(ev, h2.events.StreamReset) and r is not None:
                    r["reset"] = True
            elif isinstance(ev, h2.events.ConnectionTerminated):
                done.add(-1)
        self.flush()
        return done

    def pump(self, sids: list[int]) -> None:
        """Read until every stream in ``sids`` ended or was reset."""
        done: set[int] = set()
        while not set(sids) <= done and -1 not in done:
            done |= self.pump_once()


def h2_tunnel(proxy: Proxy, sec: Sec, tenant: str, *, validate: bool = True) -> H2:
    t = sec.tenants()[tenant]
    w = tunnel(proxy, f"127.0.0.1:{sec.port}", creds=(t.name, t.token), alpn=("h2",))
    assert w.sock.selected_alpn_protocol() == "h2"  # type: ignore[attr-defined]
    return H2(w, validate=validate)


def h2_get(sec: Sec, path: str, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", f"127.0.0.1:{sec.port}"),
        (":path", path),
        *extra,
        ("authorization", "Bearer <<secret:stripe>>"),
    ]


# -- leak checks -----------------------------------------------------------------------------------
def leaked(data: bytes, values: list[str]) -> list[str]:
    """Which canary spellings ``data`` holds (form names, never values)."""
    out = []
    for v in values:
        found = find_leak(data, v.encode())
        if found:
            out.append(f"{v.split('_')[1]}:{found[0]}@{found[1]}")
    return out


def assert_no_leak(data: bytes, sec: Sec, what: str = "client") -> None:
    bad = leaked(data, sec.canaries())
    assert not bad, f"{what} received a secret value: {bad}"


def audit_records(proxy: Proxy) -> list[dict[str, Any]]:
    path = proxy.audit_path
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out
