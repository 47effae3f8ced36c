"""The operator API (DESIGN.md §13): a small HTTP/1.1 server on
``admin.listen``, never the proxy port.

Every call carries ``Authorization: Bearer <operator token>``, checked in
constant time against ``admin.token_sha256`` (and the named
``admin.operators``); the policy refuses an operator token that is a
tenant's, so tenant credentials can never approve. Calls:

- ``GET /v1/approvals``: held requests (id, tenant, secret, method, host, path, since)
- ``POST /v1/approvals/ID/approve`` and ``.../deny``
- ``POST /v1/sessions/revoke`` with ``{"id": ..., "expires": ...}``
- ``GET /v1/usage``; ``POST /v1/usage/reset`` with ``{"tenant": ..., "secret": ...}``
- ``GET /v1/health``

Each verdict and revocation is logged with the operator's name; the held
request's audit record carries ``approval: {id, verdict, by}``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Callable
from typing import Any

from broker.governance.limits import usage_rows
from broker.governance.state import APPROVAL_FIELDS, StateStore, StateUnavailable, Verdict
from broker.policy.schema import Policy, parse_listen

log = logging.getLogger("keybroker")
_MAX_HEAD = 16 * 1024
_MAX_BODY = 64 * 1024
_ROUTE = re.compile(r"^/v1/approvals/(apr_[0-9a-f]{16})/(approve|deny)$")
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found"}
_REASONS |= {405: "Method Not Allowed", 413: "Payload Too Large", 503: "Service Unavailable"}


class AdminServer:
    def __init__(self, policy: Callable[[], Policy], store: Callable[[], StateStore]) -> None:
        self._policy, self._store = policy, store
        self._server: asyncio.Server | None = None

    async def start(self, listen: str) -> None:
        host, port = parse_listen(listen)
        self._server = await asyncio.start_server(self._serve, host, port)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    def operator(self, header: str | None) -> str | None:
        """The operator's name for a valid bearer token, else None."""
        admin = self._policy().admin
        if admin is None or not header or not header.lower().startswith("bearer "):
            return None
        digest = hashlib.sha256(header[7:].strip().encode("utf-8")).hexdigest()
        who = None
        for known, name in admin.digests().items():
            if hmac.compare_digest(digest, known):
                who = name
        return who

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        status, body = 400, {"error": "bad request"}
        try:
            status, body = await asyncio.wait_for(self._handle(reader, writer), 10)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            status, body = 400, {"error": "bad request"}
        except Exception as exc:  # fail closed, and keep the server up
            log.error("keybroker: admin API failed (%s)", type(exc).__name__)
            status, body = 503, {"error": "internal error"}
        data = json.dumps(body).encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\ncontent-type: application/json"
            f"\r\ncontent-length: {len(data)}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n"
        )
        with contextlib.suppress(Exception):
            writer.write(head.encode() + data)
            await writer.drain()
            writer.close()

    async def _handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[int, Any]:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > _MAX_HEAD:
            return 413, {"error": "headers too large"}
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        length = headers.get("content-length", "0")
        if not length.isascii() or not length.isdigit() or int(length) > _MAX_BODY:
            return 413, {"error": "body too large"}
        raw = await reader.readexactly(int(length)) if int(length) else b""
        who = self.operator(headers.get("authorization"))
        if who is None:
            return 401, {"error": "an operator token is required (Authorization: Bearer ...)"}
        peer = writer.get_extra_info("peername")
        try:
            return await self._route(method, path.split("?", 1)[0], raw, who, str(peer))
        except StateUnavailable:
            return 503, {"error": "the state store is unavailable; retry"}

    async def _route(
        self, method: str, path: str, raw: bytes, who: str, peer: str
    ) -> tuple[int, Any]:
        store = self._store()
        if path == "/v1/health":
            return 200, {"ok": True, "shared_state": store.shared}
        if path == "/v1/approvals":
            if method != "GET":
                return 405, {"error": "use GET"}
            return 200, [{k: r.get(k) for k in APPROVAL_FIELDS} for r in await store.pending()]
        m = _ROUTE.match(path)
        if m is not None:
            if method != "POST":
                return 405, {"error": "use POST"}
            return await self._verdict(store, m.group(1), m.group(2), who, peer)
        if path == "/v1/usage" and method == "GET":
            return 200, await usage_rows(store, self._policy().tenants, None)
        if path == "/v1/usage/reset":
            if method != "POST":
                return 405, {"error": "use POST"}
            body = json.loads(raw or b"{}")
            tenant, secret = body.get("tenant"), body.get("secret")
            t = self._policy().tenants.get(tenant) if isinstance(tenant, str) else None
            if t is None or not isinstance(secret, str) or secret not in t.secrets:
                return 404, {"error": "no such tenant and secret in the policy"}
            await store.reset(tenant, secret)
            log.warning("keybroker: operator %s reset the counts of %s/%s (from %s)", who,
                        tenant, secret, peer)  # fmt: skip
            return 200, {"reset": {"tenant": tenant, "secret": secret}}
        if path == "/v1/sessions/revoke":
            if method != "POST":
                return 405, {"error": "use POST"}
            body = json.loads(raw or b"{}")
            sid, exp = body.get("id"), body.get("expires")
            if not (isinstance(sid, str) and re.fullmatch(r"[0-9a-f]{24}", sid)):
                return 400, {"error": "id must be a session id"}
            if not isinstance(exp, int):
                return 400, {"error": "expires must be an integer"}
            await store.revoke(sid, exp)
            log.warning("keybroker: operator %s revoked session %s (from %s)", who, sid, peer)
            return 200, {"revoked": sid}
        return 404, {"error": "no such endpoint"}

    async def _verdict(
        self, store: StateStore, aid: str, action: str, who: str, peer: str
    ) -> tuple[int, Any]:
        rec = await store.approval(aid)
        if rec is None or rec.get("state") != "pending":
            return 404, {"error": f"no pending request {aid}"}
        verdict: Verdict = "approved" if action == "approve" else "denied"
        remember = [k for k in rec.get("remember", "").split(",") if k]
        seconds = self._policy().approvals.remember
        done = await store.decide(aid, verdict, who, remember, seconds)
        if done is None:
            return 404, {"error": f"no pending request {aid}"}
        what = " ".join(_safe(rec.get(k)) for k in ("tenant", "secrets", "method", "host", "path"))
        log.warning("keybroker: operator %s %s %s (%s) from %s", who, verdict, aid, what, peer)
        return 200, {"id": aid, "verdict": verdict, "by": who}


def _safe(text: str | None) -> str:
    """Agent-chosen text for a log line: escaped, one line, capped."""
    return repr(text or "-")[1:-1][:200]
