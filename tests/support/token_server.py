"""Token issuers for the credential tests, over HTTPS with the test CA:

- an OAuth 2.0 authorization server built on Authlib (RFC 6749 refresh_token
  and client_credentials grants, client_secret_basic and client_secret_post,
  refresh tokens rotated and the old one revoked on use) at ``/token``;
- a GitHub-App-style installation token endpoint that verifies the app's
  RS256 JWT with the app's public key (PyJWT) at
  ``/app/installations/<id>/access_tokens``;
- an API at ``/api/*`` that accepts only live tokens (Bearer, or git's Basic
  ``x-access-token:<token>``), 401 otherwise, and echoes what it got.

``state`` controls it: ``expires_in``, ``delay`` (seconds the token endpoint
waits), ``fail`` (the token endpoint answers 500), ``revoke_all()``;
counters ``token_requests`` and ``github_requests``."""

from __future__ import annotations

import base64
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin, grants
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7523 import JWTBearerGrant
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask, jsonify, request
from joserfc.jwk import RSAKey
from werkzeug.serving import make_server

from tests.support.tlsca import TestCA


@dataclass
class Client(ClientMixin):  # type: ignore[misc]
    client_id: str
    client_secret: str
    grant_types: tuple[str, ...]
    scope: str = "read write"

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return "https://localhost/cb"

    def get_allowed_scope(self, scope: str) -> str:
        allowed = set(self.scope.split())
        return " ".join(s for s in (scope or "").split() if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(client_secret, self.client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


@dataclass
class Token(TokenMixin):  # type: ignore[misc]
    client_id: str
    access_token: str
    refresh_token: str | None
    scope: str
    expires_in: int
    issued_at: float = field(default_factory=time.time)
    revoked: bool = False

    def check_client(self, client: Client) -> bool:
        return client.client_id == self.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def is_expired(self) -> bool:
        return time.time() >= self.issued_at + self.expires_in

    def is_revoked(self) -> bool:
        return self.revoked


class State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.expires_in = 3600
        self.delay = 0.0
        self.fail = False
        self.token_requests = 0
        self.github_requests = 0
        self.tokens: dict[str, Token] = {}
        self.refresh: dict[str, Token] = {}
        self.github_tokens: list[str] = []
        self.sessions: list[str] = []
        self.assertions: list[dict[str, Any]] = []
        self.seen_auth: list[str] = []
        """How each token request authenticated its client: basic or post."""

    def revoke_all(self) -> None:
        with self.lock:
            for t in self.tokens.values():
                t.revoked = True
            self.github_tokens.clear()


class TokenServer:
    def __init__(self, ca: TestCA, clients: list[Client], app_id: str = "4242") -> None:
        self.state = State()
        self.clients = {c.client_id: c for c in clients}
        self.app_id = app_id
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.app_private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        self._public = key.public_key()
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.sa_private_pem = sa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        self._sa_public = sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.app = self._make_app()
        cert, keyfile = ca.issue_server_cert()
        self._server = make_server(
            "127.0.0.1", 0, self.app, threaded=True, ssl_context=(cert, keyfile)
        )
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"https://localhost:{self.port}{path}"

    def __enter__(self) -> TokenServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._thread.join(5)

    # -- the Authlib authorization server -----------------------------------------------
    def _make_app(self) -> Flask:
        app = Flask("token-server")
        st, clients = self.state, self.clients

        def save_token(token: dict[str, Any], req: Any) -> None:
            t = Token(
                req.client.client_id,
                token["access_token"],
                token.get("refresh_token"),
                token.get("scope", ""),
                int(token["expires_in"]),
            )
            with st.lock:
                st.tokens[t.access_token] = t
                if t.refresh_token:
                    st.refresh[t.refresh_token] = t

        server = AuthorizationServer(app, query_client=clients.get, save_token=save_token)
        server.register_token_generator(
            "default",
            BearerTokenGenerator(
                lambda **kw: "at_" + secrets.token_urlsafe(24),
                lambda **kw: "rt_" + secrets.token_urlsafe(24),
                lambda client, grant_type: st.expires_in,
            ),
        )

        class Refresh(grants.RefreshTokenGrant):  # type: ignore[misc]
            TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]
            INCLUDE_NEW_REFRESH_TOKEN = True  # rotation

            def authenticate_refresh_token(self, refresh_token: str) -> Token | None:
                with st.lock:
                    t = st.refresh.get(refresh_token)
                return t if t is not None and not t.revoked else None

            def authenticate_user(self, credential: Token) -> object:
                return object()

            def revoke_old_credential(self, credential: Token) -> None:
                with st.lock:
                    st.refresh.pop(str(credential.refresh_token), None)

        class ClientCreds(grants.ClientCredentialsGrant):  # type: ignore[misc]
            TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

        sa_public, owner = self._sa_public, self

        class ServiceAccount(JWTBearerGrant):  # type: ignore[misc]
            """Google's server-to-server flow: the assertion's iss is the
            account, verified with its public key; scope is a claim."""

            def resolve_issuer_client(self, issuer: str) -> Client | None:
                c = clients.get(issuer)
                return c if c is not None and self.GRANT_TYPE in c.grant_types else None

            def resolve_client_public_key(self, client: Client) -> Any:
                return RSAKey.import_key(sa_public)

            def get_audiences(self) -> list[str]:
                return [owner.url("/token")]  # the port is known once serving

            def authenticate_user(self, subject: str) -> object:
                return object()

            def has_granted_permission(self, client: Client, user: object) -> bool:
                return True

            def process_assertion_claims(self, assertion: str) -> Any:
                claims = super().process_assertion_claims(assertion)
                with st.lock:
                    st.assertions.append(dict(claims))
                return claims

        server.register_grant(Refresh)
        server.register_grant(ClientCreds)
        server.register_grant(ServiceAccount)

        @app.post("/token")
        def token() -> Any:
            with st.lock:
                st.token_requests += 1
                st.seen_auth.append(
                    "basic"
                    if request.headers.get("Authorization", "").startswith("Basic ")
                    else "post"
                )
            if st.delay:
                time.sleep(st.delay)
            if st.fail:
                return jsonify({"error": "temporarily_unavailable"}), 500
            return server.create_token_response()

        @app.post("/app/installations/<iid>/access_tokens")
        def installation_token(iid: str) -> Any:
            with st.lock:
                st.github_requests += 1
            auth = request.headers.get("Authorization", "")
            try:
                claims = jwt.decode(
                    auth.removeprefix("Bearer "),
                    self._public,
                    algorithms=["RS256"],
                    options={"require": ["iat", "exp", "iss"]},
                )
            except jwt.PyJWTError as exc:
                return jsonify(
                    {"message": f"A JSON web token could not be decoded: {type(exc).__name__}"}
                ), 401
            if (
                str(claims["iss"]) != self.app_id
                or claims["exp"] - claims["iat"] > 600
                or iid != "99"
            ):
                return jsonify({"message": "wrong app or installation"}), 401
            value = "ghs_" + secrets.token_urlsafe(27)
            with st.lock:
                st.github_tokens.append(value)
            expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + st.expires_in))
            return jsonify({"token": value, "expires_at": expires}), 201

        @app.post("/login")
        def login() -> Any:
            value = "sess_" + secrets.token_urlsafe(24)
            with st.lock:
                st.sessions.append(value)
            resp = jsonify({"ok": True})
            resp.set_cookie("session", value, secure=True, httponly=True)
            return resp

        @app.route("/api/<path:rest>", methods=["GET", "POST"])
        def api(rest: str) -> Any:
            auth = request.headers.get("Authorization", "")
            scheme, _, cred = auth.partition(" ")
            if scheme.lower() == "basic":
                cred = base64.b64decode(cred).decode().partition(":")[2]
            if not auth:
                cred = request.cookies.get("session", "")
            with st.lock:
                t = st.tokens.get(cred)
                ok = (t is not None and not t.revoked and not t.is_expired()) or cred in (
                    st.github_tokens + st.sessions
                )
            if not ok:
                return jsonify({"error": "invalid_token"}), 401
            return jsonify({"path": rest, "authorization": auth, "token": cred})

        return app
