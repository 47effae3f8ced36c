"""A local OpenAI-compatible HTTPS stub, and the small TLS server it runs on.

``with OpenAIStub(ca, api_key=REAL) as stub:`` serves, on 127.0.0.1:<free port>
with a certificate from the test CA:

  POST /v1/chat/completions   401 (OpenAI's error JSON) unless the request
      carries ``Authorization: Bearer <api_key>``; else a chat completion whose
      message content echoes the Authorization header back (``you sent: …``),
      so a test can prove the broker scrubs it. ``"stream": true`` answers
      ``text/event-stream`` (chunked): a role chunk, the content chunk (written
      in two pieces cut in the middle of the echoed key), a finish chunk and
      ``data: [DONE]``.
  anything else               404 JSON.

Every request is recorded in ``stub.received`` (method, path, headers).
:class:`HTTPSServer` is the reusable part: a threading HTTP/1.1 server whose
TLS handshake runs in the connection's thread.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.tlsca import TestCA


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


class TLSServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, owner: HTTPSServer, handler: type[BaseHTTPRequestHandler], ctx: ssl.SSLContext
    ) -> None:
        self.owner, self.ctx = owner, ctx
        super().__init__(("127.0.0.1", 0), handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(30)
        try:
            tls = self.ctx.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)  # type: ignore[arg-type]
        finally:
            try:
                tls.close()
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client going away mid-response is not a test failure


class HTTPSServer:
    """Serves ``handler`` over TLS (a leaf from ``ca`` for 127.0.0.1 and
    localhost) from a background thread; the handler reaches this object as
    ``self.server.owner``."""

    handler: type[BaseHTTPRequestHandler]

    def __init__(self, ca: TestCA) -> None:
        cert, key = ca.issue_server_cert()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.set_alpn_protocols(["http/1.1"])
        self._server = TLSServer(self, self.handler, ctx)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._lock = threading.Lock()
        self._received: list[Request] = []

    def __enter__(self) -> HTTPSServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"https://{host}:{self.port}{path}"

    def record(self, req: Request) -> None:
        with self._lock:
            self._received.append(req)

    @property
    def received(self) -> list[Request]:
        with self._lock:
            return list(self._received)

    def clear(self) -> None:
        with self._lock:
            self._received.clear()


class _OpenAIHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: TLSServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _json(self, status: int, obj: Any) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_GET(self) -> None:
        self._json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

    def do_POST(self) -> None:
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n)
        headers = {k.lower(): v for k, v in self.headers.items()}
        stub: OpenAIStub = self.server.owner  # type: ignore[assignment]
        stub.record(Request("POST", self.path, headers, body))
        if self.path != "/v1/chat/completions":
            return self.do_GET()
        auth = headers.get("authorization", "")
        if auth != f"Bearer {stub.api_key}":
            return self._json(
                401,
                {
                    "error": {
                        "message": "Incorrect API key provided",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                    }
                },
            )
        req = json.loads(body or b"{}")
        content = f"you sent: {auth}"
        base = {
            "id": "chatcmpl-stub",
            "created": int(time.time()),
            "model": req.get("model", "stub-model"),
            "system_fingerprint": None,
        }
        if not req.get("stream"):
            return self._json(
                200,
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "logprobs": None,
                            "message": {"role": "assistant", "content": content},
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                },
            )
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
            chunk = {
                **base,
                "object": "chat.completion.chunk",
                "choices": [
                    {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
                ],
            }
            return b"data: " + json.dumps(chunk).encode() + b"\n\n"

        self._chunk(event({"role": "assistant", "content": ""}))
        ev = event({"content": content})
        cut = ev.index(stub.api_key.encode()) + len(stub.api_key) // 2
        self._chunk(ev[:cut])  # the key split across two writes
        time.sleep(0.05)
        self._chunk(ev[cut:])
        self._chunk(event({}, "stop"))
        self._chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self.close_connection = True


class OpenAIStub(HTTPSServer):
    handler = _OpenAIHandler

    def __init__(self, ca: TestCA, api_key: str) -> None:
        self.api_key = api_key
        super().__init__(ca)

    def __enter__(self) -> OpenAIStub:
        super().__enter__()
        return self
