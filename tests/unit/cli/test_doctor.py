from __future__ import annotations

import base64
import io
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from mitmproxy.certs import CertStore
from rich.console import Console

from broker.cli.doctor import run_doctor
from broker.request.auth import token_digest
from broker.tls import ca

TENANT, TOKEN = "acme", "s3cret-token-value"


def _leaf(files: ca.CAFiles, out: Path) -> tuple[Path, Path]:
    """A keybroker.invalid certificate as mitmproxy would issue it from this CA."""
    store = CertStore.from_store(files.confdir, "mitmproxy", 2048)
    entry = store.get_cert("keybroker.invalid", [x509.DNSName("keybroker.invalid")])
    cert, key = out / "leaf.pem", out / "leaf-key.pem"
    cert.write_bytes(entry.cert.to_pem())
    key.write_bytes(
        entry.privatekey.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


def _http(status: str, body: bytes, headers: str = "", chunked: bool = False) -> bytes:
    if chunked:
        framed = b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + 7]), body[i : i + 7])
                          for i in range(0, len(body), 7)) + b"0\r\n\r\n"  # fmt: skip
        return f"HTTP/1.1 {status}\r\n{headers}Transfer-Encoding: chunked\r\n\r\n".encode() + framed
    head = f"HTTP/1.1 {status}\r\n{headers}Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


@dataclass
class FakeProxy:
    """A CONNECT proxy on 127.0.0.1 that plays keybroker's part for doctor."""

    leaf: tuple[Path, Path]
    creds: tuple[str, str] = (TENANT, TOKEN)
    whoami: bytes = field(
        default_factory=lambda: _http(
            "200 OK", json.dumps({"tenant": TENANT, "secrets": ["openai", "stripe"]}).encode()
        )
    )
    connect_reply: bytes | None = None
    """Sent instead of the normal CONNECT answer; b"" sends nothing until closed."""
    requests: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.sock.close()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                try:
                    self._handle(conn)
                except (OSError, ValueError):
                    pass  # the client gave up (e.g. rejected our certificate)

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        head = _read_head(conn)
        if not head:
            return  # doctor's bare TCP reachability probe
        self.requests.append(head)
        if self.connect_reply is not None:
            conn.sendall(self.connect_reply)
            self.stop.wait(10 if not self.connect_reply else 0)
            return
        cred = base64.b64encode(":".join(self.creds).encode()).decode()
        if f"Proxy-Authorization: Basic {cred}".encode() not in head.split(b"\r\n"):
            body = json.dumps({"error": "keybroker", "detail": "Bad tenant token."}).encode()
            hdr = "X-Keybroker-Decision: deny; reason=unauthenticated\r\n"
            hdr += 'Proxy-Authenticate: Basic realm="keybroker"\r\nConnection: close\r\n'
            conn.sendall(_http("407 Proxy Authentication Required", body, hdr))
            return
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*self.leaf)
        with ctx.wrap_socket(conn, server_side=True) as tls:
            self.requests.append(_read_head(tls))
            tls.sendall(self.whoami)


def _read_head(conn: socket.socket) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf and len(buf) < 65536:
        chunk = conn.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf


@pytest.fixture(scope="module")
def ca_files(tmp_path_factory: pytest.TempPathFactory) -> ca.CAFiles:
    files, _ = ca.init_ca(tmp_path_factory.mktemp("ca") / "certs")
    return files


@pytest.fixture
def leaf(ca_files: ca.CAFiles, tmp_path: Path) -> tuple[Path, Path]:
    return _leaf(ca_files, tmp_path)


@pytest.fixture
def proxies() -> Iterator[list[FakeProxy]]:
    started: list[FakeProxy] = []
    yield started
    for p in started:
        p.close()


def _policy(tmp_path: Path, certs_dir: Path, port: int, token: str = TOKEN) -> Path:
    p = tmp_path / "policy.yaml"
    p.write_text(
        f"version: 1\nlisten: 127.0.0.1:{port}\ncerts_dir: {certs_dir}\n"
        f"audit: {{path: audit.jsonl}}\n"
        f"tenants:\n  {TENANT}:\n    token_sha256: {token_digest(token)}\n"
    )
    return p


def _doctor(policy: Path, **kw: object) -> tuple[int, str]:
    buf = io.StringIO()
    kw.setdefault("timeout", 5.0)
    rc = run_doctor(policy, TENANT, TOKEN, out=Console(file=buf, width=400), **kw)  # type: ignore[arg-type]
    text = buf.getvalue()
    assert TOKEN not in text
    assert base64.b64encode(f"{TENANT}:{TOKEN}".encode()).decode() not in text
    return rc, text


def _start(proxies: list[FakeProxy], leaf: tuple[Path, Path], **kw: object) -> FakeProxy:
    p = FakeProxy(leaf, **kw)  # type: ignore[arg-type]
    proxies.append(p)
    return p


def _marks(text: str) -> str:
    return "".join(line[0] for line in text.splitlines() if line and line[0] in "✓✗-")


def test_all_steps_pass(
    tmp_path: Path, ca_files: ca.CAFiles, leaf: tuple[Path, Path], proxies: list[FakeProxy]
) -> None:
    proxy = _start(proxies, leaf)
    rc, text = _doctor(_policy(tmp_path, ca_files.cert.parent, proxy.port))
    assert rc == 0, text
    assert _marks(text) == "✓" * 7
    assert "tenant 'acme', secrets: openai, stripe" in text
    connect, get = proxy.requests
    assert connect.startswith(b"CONNECT keybroker.invalid:443 HTTP/1.1\r\n")
    assert get.startswith(b"GET /whoami HTTP/1.1\r\nHost: keybroker.invalid\r\n")


def test_listen_override_and_chunked_whoami(
    tmp_path: Path, ca_files: ca.CAFiles, leaf: tuple[Path, Path], proxies: list[FakeProxy]
) -> None:
    body = json.dumps({"tenant": TENANT, "secrets": []}).encode()
    proxy = _start(proxies, leaf, whoami=_http("200 OK", body, chunked=True))
    policy = _policy(tmp_path, ca_files.cert.parent, 1)
    rc, text = _doctor(policy, listen=f"0.0.0.0:{proxy.port}")
    assert rc == 0, text
    assert f"reachable at 127.0.0.1:{proxy.port}" in text and "secrets: (none)" in text


def test_policy_that_does_not_load(tmp_path: Path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text("version: 1\nbogus: 1\n")
    rc, text = _doctor(bad)
    assert rc == 1 and _marks(text) == "✗"
    assert "bogus: unknown key" in text and "keybroker check --config" in text


def test_wrong_token(
    tmp_path: Path, ca_files: ca.CAFiles, leaf: tuple[Path, Path], proxies: list[FakeProxy]
) -> None:
    proxy = _start(proxies, leaf, creds=(TENANT, "the-proxy-wants-this"))
    policy = _policy(tmp_path, ca_files.cert.parent, proxy.port, token="another")
    rc, text = _doctor(policy)
    assert rc == 1 and _marks(text) == "✓✗✓✓✗--"
    assert "token does not match tenant 'acme'" in text and "keybroker token new" in text
    assert "407" in text and "X-Keybroker-Decision: deny; reason=unauthenticated" in text
    assert "Bad tenant token." in text


def test_no_ca(tmp_path: Path, leaf: tuple[Path, Path], proxies: list[FakeProxy]) -> None:
    proxy = _start(proxies, leaf)
    rc, text = _doctor(_policy(tmp_path, tmp_path / "empty", proxy.port))
    assert rc == 1 and _marks(text) == "✓✓✗✓✓--"
    assert "no CA certificate" in text and "keybroker ca init --config" in text
    assert "skipped: needs step 3" in text


def test_bundle_without_our_ca(
    tmp_path: Path, ca_files: ca.CAFiles, leaf: tuple[Path, Path], proxies: list[FakeProxy]
) -> None:
    other, _ = ca.init_ca(tmp_path / "other")
    proxy = _start(proxies, leaf)
    rc, text = _doctor(_policy(tmp_path, ca_files.cert.parent, proxy.port), bundle=other.cert)
    assert rc == 1 and _marks(text)[:3] == "✓✓✗" and "does not contain the CA" in text


def test_proxy_not_running(tmp_path: Path, ca_files: ca.CAFiles) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc, text = _doctor(_policy(tmp_path, ca_files.cert.parent, port))
    assert rc == 1 and _marks(text) == "✓✓✓✗---"
    assert "is `keybroker run --config" in text and "running?" in text


def test_untrusted_certificate(
    tmp_path: Path, ca_files: ca.CAFiles, proxies: list[FakeProxy]
) -> None:
    other, _ = ca.init_ca(tmp_path / "other")
    proxy = _start(proxies, _leaf(other, tmp_path))
    rc, text = _doctor(_policy(tmp_path, ca_files.cert.parent, proxy.port))
    assert rc == 1 and _marks(text) == "✓✓✓✓✓✗-"
    assert "does not trust the keybroker CA" in text and "SSL_CERT_FILE" in text
    assert "keybroker ca install" in text


@pytest.mark.parametrize(
    ("whoami", "needle"),
    [
        pytest.param(
            _http("200 OK", b'{"tenant": "other", "secrets": []}'),
            "identified this connection as tenant 'other'",
            id="other-tenant",
        ),
        pytest.param(
            _http(
                "502 Bad Gateway", b"{}", "X-Keybroker-Decision: error; reason=internal_error\r\n"
            ),
            "status 502; X-Keybroker-Decision: error; reason=internal_error",
            id="not-answered-by-the-broker",
        ),
        pytest.param(_http("200 OK", b"<html>"), 'not {"tenant", "secrets"} JSON', id="not-json"),
        pytest.param(
            b"SSH-2.0-OpenSSH\r\n\r\n",
            "whoami failed: not an HTTP response: 'SSH-2.0-OpenSSH'",
            id="not-http",
        ),
        pytest.param(
            b"", "whoami failed: the proxy closed the connection without a response", id="closed"
        ),
    ],
)
def test_whoami_failures(
    tmp_path: Path,
    ca_files: ca.CAFiles,
    leaf: tuple[Path, Path],
    proxies: list[FakeProxy],
    whoami: bytes,
    needle: str,
) -> None:
    proxy = _start(proxies, leaf, whoami=whoami)
    rc, text = _doctor(_policy(tmp_path, ca_files.cert.parent, proxy.port))
    assert rc == 1 and _marks(text) == "✓✓✓✓✓✓✗"
    assert needle in text


@pytest.mark.parametrize(
    ("reply", "needle"),
    [
        pytest.param(
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
            "CONNECT keybroker.invalid:443: status 403",
            id="refused",
        ),
        pytest.param(b"", "CONNECT keybroker.invalid:443 failed: timed out", id="silent"),
    ],
)
def test_connect_failures(
    tmp_path: Path,
    ca_files: ca.CAFiles,
    leaf: tuple[Path, Path],
    proxies: list[FakeProxy],
    reply: bytes,
    needle: str,
) -> None:
    proxy = _start(proxies, leaf, connect_reply=reply)
    started = time.monotonic()
    rc, text = _doctor(_policy(tmp_path, ca_files.cert.parent, proxy.port), timeout=0.5)
    assert time.monotonic() - started < 5
    assert rc == 1 and _marks(text) == "✓✓✓✓✗--"
    assert needle in text and "is that port keybroker's proxy?" in text
