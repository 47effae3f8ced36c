"""Local HTTPS servers that speak the published APIs of the stores keybroker
reads (DESIGN.md §14), for integration tests. Each app names the document it
follows; paths, auth headers, response shapes and error codes are those.

``with VendorServer(app, ca) as srv:`` serves ``app`` on 127.0.0.1:<free
port> over TLS with a certificate from the test CA; ``srv.requests`` records
``(method, path)`` of every request. Apps hold their data in memory and are
changed with ``put``; everything is thread-safe under one lock.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import socket
import ssl
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from tests.support.tlsca import TestCA

Reply = tuple[int, Any]  # status, JSON-able body (bytes: sent as text/plain)


class App(Protocol):
    def handle(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: Any
    ) -> Reply: ...


def _bearer(headers: dict[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    return auth[7:] if auth.startswith("Bearer ") else None


def _new_id() -> str:
    """A 1Password-style id: 26 lower-case letters and digits."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(26))


class OnePasswordConnectApp:
    """Follows the 1Password Connect Server API reference
    (developer.1password.com/docs/connect/api-reference, API spec 1.8.1):
    ``Authorization: Bearer <token>``; ``GET /v1/vaults?filter=name eq "X"``,
    ``GET /v1/vaults/{vaultUUID}/items?filter=title eq "X"``,
    ``GET /v1/vaults/{vaultUUID}/items/{itemUUID}`` (a FullItem with
    ``fields[{id, type, purpose, label, value}]``); errors are
    ``{"status": N, "message": "..."}`` with 401 (invalid or missing token),
    403 (no access to the vault) and 404 (vault or item not found);
    ``GET /heartbeat`` answers ``.`` without a token."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.vaults: dict[str, dict[str, Any]] = {}  # id -> {name, items: {id: item}}
        self.tokens: dict[str, set[str] | None] = {}  # token -> vault names it may read (None: all)

    def put(self, path: str, label: str, value: str, section: str | None = None) -> None:
        vault_name, _, title = path.partition("/")
        with self.lock:
            vault = next((v for v in self.vaults.values() if v["name"] == vault_name), None)
            if vault is None:
                vid = _new_id()
                vault = self.vaults[vid] = {"id": vid, "name": vault_name, "items": {}}
            item = next((i for i in vault["items"].values() if i["title"] == title), None)
            if item is None:
                iid = _new_id()
                item = vault["items"][iid] = {
                    "id": iid, "title": title, "vault": {"id": vault["id"]},
                    "category": "API_CREDENTIAL", "version": 0, "fields": [],
                }  # fmt: skip
            sec_id = None
            if section is not None:
                sections = item.setdefault("sections", [])
                sec = next((x for x in sections if x["label"] == section), None)
                if sec is None:
                    sec = {"id": _new_id(), "label": section}
                    sections.append(sec)
                sec_id = sec["id"]
            field = next(
                (f for f in item["fields"] if f["label"] == label
                 and (f.get("section") or {}).get("id") == sec_id),
                None,
            )  # fmt: skip
            if field is None:
                field = {"id": _new_id(), "type": "CONCEALED", "label": label}
                if sec_id is not None:
                    field["section"] = {"id": sec_id}
                item["fields"].append(field)
            field["value"] = value
            item["version"] += 1

    def handle(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: Any
    ) -> Reply:
        if path == "/heartbeat":
            return 200, b"."
        token = _bearer(headers)
        if token is None or token not in self.tokens:
            return 401, {"status": 401, "message": "Invalid token signature"}
        allowed = self.tokens[token]
        parts = path.strip("/").split("/")
        if method != "GET" or parts[:2] != ["v1", "vaults"]:
            return 404, {"status": 404, "message": "Not found"}
        with self.lock:
            if len(parts) == 2:
                rows = [{"id": v["id"], "name": v["name"]} for v in self.vaults.values()]
                return 200, _scim(rows, "name", query.get("filter"))
            vault = self.vaults.get(parts[2])
            if vault is None:
                return 404, {"status": 404, "message": "Invalid Vault UUID or vault not found"}
            if allowed is not None and vault["name"] not in allowed:
                return 403, {
                    "status": 403,
                    "message": "Authorization: token has no access to vault",
                }
            if len(parts) == 4 and parts[3] == "items":
                rows = [
                    {k: v for k, v in i.items() if k != "fields"} for i in vault["items"].values()
                ]
                return 200, _scim(rows, "title", query.get("filter"))
            if len(parts) == 5 and parts[3] == "items":
                item = vault["items"].get(parts[4])
                if item is None:
                    return 404, {"status": 404, "message": "Invalid Item UUID or item not found"}
                return 200, json.loads(json.dumps(item))
        return 404, {"status": 404, "message": "Not found"}


def _scim(rows: list[dict[str, Any]], attr: str, filt: str | None) -> list[dict[str, Any]]:
    if not filt:
        return rows
    m = re.fullmatch(rf'{attr} eq "((?:[^"\\]|\\.)*)"', filt)
    if m is None:
        return []
    want = re.sub(r"\\(.)", r"\1", m.group(1))
    return [r for r in rows if r.get(attr) == want]


class DopplerApp:
    """Follows Doppler's API reference, "Retrieve" a secret
    (docs.doppler.com/reference/secrets-get): ``GET
    /v3/configs/config/secret?project=&config=&name=`` with ``Authorization:
    Bearer <token>`` (or HTTP Basic with the token as user name); a service
    token reads only its own project/config. Success: ``{"name", "value":
    {"raw", "computed", "note"}, "success": true}``; errors: ``{"messages":
    [...], "success": false}`` with 400, 401 (invalid token), 403 (no access)
    and 404 (no such secret)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}
        self.tokens: dict[str, tuple[str, str]] = {}  # service token -> (project, config)

    def put(self, path: str, name: str, value: str) -> None:
        project, _, config = path.partition("/")
        with self.lock:
            self.secrets.setdefault((project, config), {})[name] = value

    def handle(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: Any
    ) -> Reply:
        token = _bearer(headers)
        auth = headers.get("authorization", "")
        if token is None and auth.startswith("Basic "):
            token = base64.b64decode(auth[6:]).decode().partition(":")[0]
        if token not in self.tokens:
            return 401, {"messages": ["Invalid Auth token"], "success": False}
        if method != "GET" or path != "/v3/configs/config/secret":
            return 404, {"messages": ["Not found"], "success": False}
        project, config, name = query.get("project"), query.get("config"), query.get("name")
        if not project or not config or not name:
            return 400, {"messages": ["Missing project, config or name"], "success": False}
        if self.tokens[token] != (project, config):
            return 403, {"messages": ["You do not have access to this config"], "success": False}
        with self.lock:
            value = self.secrets.get((project, config), {}).get(name)
        if value is None:
            return 404, {"messages": ["Could not find requested secret"], "success": False}
        shown = {"raw": value, "computed": value, "note": ""}
        return 200, {"name": name, "value": shown, "success": True}


class InfisicalApp:
    """Follows Infisical's API reference: universal auth login
    (infisical.com/docs/api-reference/endpoints/universal-auth/login: ``POST
    /api/v1/auth/universal-auth/login`` ``{clientId, clientSecret}`` ->
    ``{accessToken, expiresIn, accessTokenMaxTTL, tokenType: "Bearer"}``) and
    "Retrieve" a secret (.../endpoints/secrets/read: ``GET
    /api/v4/secrets/{secretName}?projectId=&environment=&secretPath=``, bearer
    token, ``{"secret": {id, workspace, environment, version, type,
    secretKey, secretValue, secretPath, ...}}``). Errors are ``{"reqId",
    "statusCode", "message", "error"}`` with 401 (bad credentials, expired or
    revoked token) and 404 (no such secret)."""

    def __init__(self, expires_in: int = 7200) -> None:
        self.lock = threading.Lock()
        self.expires_in = expires_in
        self.identities: dict[str, str] = {}  # clientId -> clientSecret
        self.tokens: dict[str, float] = {}  # access token -> expiry (monotonic)
        self.logins = 0
        self.secrets: dict[tuple[str, str, str], dict[str, tuple[str, int]]] = {}

    def put(self, path: str, name: str, value: str) -> None:
        project, _, rest = path.partition("/")
        env, _, folder = rest.partition("/")
        with self.lock:
            where = self.secrets.setdefault((project, env, "/" + folder), {})
            where[name] = (value, where.get(name, ("", 0))[1] + 1)

    def revoke_all(self) -> None:
        with self.lock:
            self.tokens.clear()

    @staticmethod
    def _error(status: int, message: str, error: str) -> Reply:
        return status, {"reqId": secrets.token_hex(8), "statusCode": status,
                        "message": message, "error": error}  # fmt: skip

    def handle(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: Any
    ) -> Reply:
        if method == "POST" and path == "/api/v1/auth/universal-auth/login":
            cid = body.get("clientId") if isinstance(body, dict) else None
            sec = body.get("clientSecret") if isinstance(body, dict) else None
            if not isinstance(cid, str) or self.identities.get(cid) != sec:
                return self._error(401, "Invalid credentials", "UnauthorizedError")
            token = "st." + secrets.token_urlsafe(24)
            with self.lock:
                self.tokens[token] = time.monotonic() + self.expires_in
                self.logins += 1
            return 200, {"accessToken": token, "expiresIn": self.expires_in,
                         "accessTokenMaxTTL": 43200, "tokenType": "Bearer"}  # fmt: skip
        token = _bearer(headers)
        with self.lock:
            expiry = self.tokens.get(token or "")
        if expiry is None or time.monotonic() >= expiry:
            return self._error(401, "Token is invalid or has expired", "UnauthorizedError")
        if method != "GET" or not path.startswith("/api/v4/secrets/"):
            return self._error(404, "Route not found", "NotFound")
        name = urllib.parse.unquote(path.removeprefix("/api/v4/secrets/"))
        key = (query.get("projectId", ""), query.get("environment", ""),
               query.get("secretPath", "/"))  # fmt: skip
        with self.lock:
            found = self.secrets.get(key, {}).get(name)
        if found is None:
            return self._error(404, f"Secret with name '{name}' not found", "NotFound")
        value, version = found
        return 200, {"secret": {
            "id": secrets.token_hex(8), "_id": secrets.token_hex(8), "workspace": key[0],
            "environment": key[1], "version": version, "type": "shared", "secretKey": name,
            "secretValue": value, "secretComment": "", "secretPath": key[2],
        }}  # fmt: skip


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        self.request.settimeout(10)
        self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.requests.append((self.command, url.path))
        status, reply = self.server.app.handle(self.command, url.path, query, headers, body)
        data = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
        ctype = "text/plain" if isinstance(reply, bytes) else "application/json"
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, app: App, ctx: ssl.SSLContext) -> None:
        self.app = app
        self.ctx = ctx
        self.requests: list[tuple[str, str]] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        return self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # refused handshakes (a client that does not trust the test CA)


class VendorServer:
    def __init__(self, app: App, ca: TestCA) -> None:
        cert, key = ca.issue_server_cert()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.app = app
        self._server = _Server(app, ctx)
        self.port = int(self._server.server_address[1])
        self.url = f"https://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def requests(self) -> list[tuple[str, str]]:
        return self._server.requests

    def __enter__(self) -> VendorServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
