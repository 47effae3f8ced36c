"""Plain-socket HTTP exchanges for ``keybroker doctor``: one request, one
response read with ``http.client`` (bounded), and a readable reason when
it fails. No mitmproxy, no upstream: the broker answers for itself."""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass

MAX_BODY = 1024 * 1024


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def explain(self) -> str:
        """Status, the broker's decision header and its ``detail`` sentence."""
        parts = [f"status {self.status}"]
        if decision := self.headers.get("x-keybroker-decision"):
            parts.append(f"X-Keybroker-Decision: {decision}")
        try:
            data = json.loads(self.body)
        except ValueError:
            data = None
        if isinstance(data, dict) and data.get("detail"):
            parts.append(str(data["detail"]))
        return "; ".join(parts)


def exchange(sock: socket.socket, request: str, method: str) -> Response:
    """Send one request and parse the response with ``http.client`` (status
    line, headers, Content-Length or chunked body; at most MAX_BODY bytes)."""
    sock.sendall(request.encode("ascii"))
    resp = http.client.HTTPResponse(sock, method=method)
    try:
        resp.begin()
        sized = resp.getheader("content-length") or resp.chunked
        body = resp.read(MAX_BODY) if sized or method != "CONNECT" else b""
        headers = {k.lower(): v for k, v in resp.getheaders()}
        return Response(resp.status, headers, body)
    finally:
        resp.close()


def why(exc: Exception) -> str:
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the proxy closed the connection without a response"
    if isinstance(exc, http.client.BadStatusLine):
        return f"not an HTTP response: {str(exc).strip()[:80]!r}"
    return str(exc) or type(exc).__name__
