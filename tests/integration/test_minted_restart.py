"""A minted token is scrubbed after a broker restart (review finding 2,
invariant 3): an upstream that stored the Authorization it received and
shows it later gets the placeholder back to the agent, not the token."""

from __future__ import annotations

import hashlib
import json
import secrets
import ssl
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from tests.support.net import free_port
from tests.support.proxy import Proxy
from tests.support.tlsca import TestCA

pytestmark = [
    pytest.mark.integration,
    # A broker stopped mid keep-alive leaves the test upstream's socket to the GC.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]
TOK = "acme-token-123456"


def _send(h: BaseHTTPRequestHandler, body: dict[str, object]) -> None:
    data = json.dumps(body).encode()
    h.send_response(200)
    h.send_header("content-type", "application/json")
    h.send_header("content-length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)


def test_a_token_minted_before_a_restart_is_still_scrubbed(tmp_path: Path) -> None:
    stored: dict[str, str] = {}
    issued: list[str] = []

    def token(h: BaseHTTPRequestHandler) -> None:
        issued.append("at-" + secrets.token_hex(16))
        _send(h, {"access_token": issued[-1], "token_type": "Bearer", "expires_in": 3600})

    def store(h: BaseHTTPRequestHandler) -> None:
        stored["auth"] = h.headers.get("authorization") or ""
        _send(h, {"ok": True})

    routes: dict[str, Callable[[BaseHTTPRequestHandler], None]] = {
        "/token": token,
        "/store": store,
        "/recall": lambda h: _send(h, {"you_sent": stored.get("auth")}),
    }
    ca = TestCA(tmp_path / "upca")
    cert, key = ca.issue_server_cert()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: object) -> None:
            pass

        def do_POST(self) -> None:
            n = int(self.headers.get("content-length") or 0)
            self.rfile.read(n)
            routes[self.path](self)

    port = free_port()
    srv = ThreadingHTTPServer(("127.0.0.1", port), H)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    script = tmp_path / "fields.py"
    fields = {"client_id": "cid-123456789abc", "client_secret": "csecret-0123456789abcdef"}
    script.write_text(f"import sys\nprint({fields!r}[sys.argv[1]])\n")
    policy = {
        "version": 1,
        "certs_dir": str(tmp_path / "certs"),
        "upstream_ca": str(ca.ca_path),
        "audit": {"path": str(tmp_path / "audit.jsonl")},
        "backends": {"cli": {"type": "exec", "command": [sys.executable, str(script), "{field}"]}},
        "tenants": {
            "acme": {
                "token_sha256": hashlib.sha256(TOK.encode()).hexdigest(),
                "secrets": {
                    "g": {
                        "kind": "oauth2_client_credentials",
                        "backend": "cli",
                        "path": "x",
                        "token_url": f"https://localhost:{port}/token",
                        "hosts": ["localhost"],
                        "ports": [port],
                    }
                },
            }
        },
    }
    p = Proxy(policy, tmp_path)

    def call(path: str, **kw: object) -> requests.Response:
        return requests.post(
            f"https://localhost:{port}{path}",
            proxies=p.proxies("acme", TOK),
            verify=str(p.ca_path),
            timeout=20,
            **kw,  # type: ignore[arg-type]
        )

    try:
        with p:
            r = call("/store", headers={"authorization": "Bearer <<secret:g>>"})
            assert r.status_code == 200, r.text
            assert call("/recall").json()["you_sent"] == "Bearer <<secret:g>>"
        assert stored["auth"] == f"Bearer {issued[0]}"
        with p:  # restarted: this process never minted it
            r = call("/recall")
            assert issued[0] not in r.text, r.text
            assert r.status_code == 200 and r.json()["you_sent"] == "Bearer <<secret:g>>"
    finally:
        srv.shutdown()
