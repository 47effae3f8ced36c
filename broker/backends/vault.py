"""The ``vault`` backend: KV v1/v2 on HashiCorp Vault or OpenBao, through hvac.

Auth is a static token (``token_env``) or AppRole, logged in lazily, again
shortly before the lease ends, and once more when vault refuses the token
(revoked or expired), after which the read is retried once.

Each thread gets its own hvac client and ``requests.Session``; the token is
shared. Sessions ignore the environment (``trust_env=False``: no
``HTTPS_PROXY``, which may point at the broker itself, no ``.netrc``) and do
not follow redirects (they would carry ``X-Vault-Token`` elsewhere).
``timeout`` bounds the connect and each socket read of one request.

Errors never chain the hvac/requests exception (it may hold a response
body): they are raised outside the ``except`` block, so ``__context__`` is
``None``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import hvac
import hvac.exceptions as hvac_exc
import requests

from broker.backends.base import BackendError, SecretNotFound
from broker.policy.backend_config import VaultBackend
from broker.secret import SecretValue

RELOGIN_MARGIN = 5.0
"""Seconds before an AppRole lease ends at which the next read logs in again
(half the lease for leases shorter than twice this)."""


class _AuthRefused(Exception):
    """Vault refused the token (401/403, or a 400 'invalid token')."""


def _map_error(exc: Exception, where: str, timeout: float, *, login: bool = False) -> Exception:
    """The core error (or ``_AuthRefused``) for whatever hvac/requests raised.
    At login, a 400 (e.g. "invalid role or secret ID") is a refusal too."""
    if isinstance(exc, hvac_exc.Forbidden | hvac_exc.Unauthorized):
        return _AuthRefused()
    if login and isinstance(exc, hvac_exc.InvalidRequest | hvac_exc.InvalidPath):
        return _AuthRefused()
    if isinstance(exc, hvac_exc.InvalidRequest) and any(
        "token" in str(e).lower() for e in (exc.errors or ())
    ):
        return _AuthRefused()
    if isinstance(exc, hvac_exc.InvalidPath):
        return SecretNotFound(f"{where}: no secret at this path")
    if isinstance(exc, hvac_exc.VaultError):
        return BackendError(f"{where}: vault answered with an error ({type(exc).__name__})")
    if isinstance(exc, requests.JSONDecodeError):
        return BackendError(f"{where}: malformed response (not JSON)")
    if isinstance(exc, requests.Timeout):
        return BackendError(f"{where}: no answer within {timeout:g}s")
    if isinstance(exc, requests.exceptions.SSLError):
        return BackendError(f"{where}: TLS handshake or certificate verification failed")
    if isinstance(exc, requests.ConnectionError):
        return BackendError(f"{where}: cannot connect")
    if isinstance(exc, requests.RequestException):
        return BackendError(f"{where}: request failed ({type(exc).__name__})")
    if isinstance(exc, ValueError | KeyError | TypeError | AttributeError | IndexError):
        return BackendError(f"{where}: malformed response ({type(exc).__name__})")
    return BackendError(f"{where}: unexpected failure ({type(exc).__name__})")


def _json_body(resp: object, where: str) -> dict[str, Any]:
    """hvac's JSONAdapter gives a dict for a JSON 200, the Response otherwise."""
    if isinstance(resp, dict):
        return resp
    status = getattr(resp, "status_code", None)
    what = f"HTTP {status}" if isinstance(status, int) else type(resp).__name__
    raise BackendError(f"{where}: malformed response ({what}, expected a JSON object)")


class VaultKVBackend:
    """A :class:`broker.backends.base.Backend` over one KV mount."""

    blocking = True

    def __init__(
        self,
        name: str,
        config: VaultBackend,
        env: Mapping[str, str],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._cfg = config
        self._clock = clock
        self._verify: bool | str = str(config.ca_cert) if config.ca_cert else True
        self._problem: str | None = None
        self._token: str | None = None
        self._role_id = self._secret_id = ""
        if config.approle is None:
            var = config.token_env or ""
            self._token = env.get(var) or None
            if self._token is None:
                self._problem = f"environment variable {var} (token_env) is not set"
        else:
            ar = config.approle
            self._role_id = env.get(ar.role_id_env) or ""
            self._secret_id = env.get(ar.secret_id_env) or ""
            unset = [
                v
                for v, got in ((ar.role_id_env, self._role_id), (ar.secret_id_env, self._secret_id))
                if not got
            ]
            if unset:
                many = len(unset) > 1
                self._problem = (
                    f"environment variable{'s' if many else ''} {' and '.join(unset)} "
                    f"(approle) {'are' if many else 'is'} not set"
                )
        self._generation = 0  # bumped at each login
        self._expires: float | None = None
        self._auth_lock = threading.Lock()
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"VaultKVBackend(name={self.name!r}, url={self._cfg.url!r})"

    # -- the Backend protocol ------------------------------------------------

    def read(self, path: str, field: str) -> SecretValue:
        where = f"vault backend {self.name!r} ({self._cfg.mount}/{path})"
        if self._closed:
            raise BackendError(f"{where}: backend is closed")
        if self._problem is not None:
            raise BackendError(f"{where}: {self._problem}")
        client = self._client(where)
        token, generation = self._current_token(client, where)
        try:
            body = self._fetch(client, token, path, where)
        except _AuthRefused:
            body = None
        if body is None:
            if self._cfg.approle is None:
                raise BackendError(
                    f"{where}: permission denied for the token in {self._cfg.token_env}"
                )
            token, generation = self._relogin(client, generation, where)
            try:
                body = self._fetch(client, token, path, where)
            except _AuthRefused:
                body = None
            if body is None:
                raise BackendError(f"{where}: permission denied, even after a fresh AppRole login")
        return self._extract(body, field, where)

    def close(self) -> None:
        with self._sessions_lock:
            self._closed = True
            sessions, self._sessions = self._sessions, []
        for s in sessions:
            s.close()

    # -- requests --------------------------------------------------------------

    def _client(self, where: str) -> Any:
        client = getattr(self._local, "client", None)
        if client is not None:
            return client
        session = requests.Session()
        session.trust_env = False
        session.verify = self._verify
        client = hvac.Client(
            url=self._cfg.url,
            token="",
            verify=self._verify,
            timeout=self._cfg.timeout,
            namespace=self._cfg.namespace,
            session=session,
            allow_redirects=False,
        )
        with self._sessions_lock:
            if self._closed:
                session.close()
                raise BackendError(f"{where}: backend is closed")
            self._sessions.append(session)
        self._local.client = client
        return client

    def _call(self, fn: Callable[[], object], where: str, *, login: bool = False) -> dict[str, Any]:
        try:
            resp = fn()
        except Exception as exc:
            err = _map_error(exc, where, self._cfg.timeout, login=login)
        else:
            return _json_body(resp, where)
        raise err  # outside the handler, so the hvac exception is not chained

    def _fetch(self, client: Any, token: str, path: str, where: str) -> dict[str, Any]:
        client.token = token
        kv = client.secrets.kv
        if self._cfg.kv_version == 2:
            return self._call(
                lambda: kv.v2.read_secret_version(
                    path=path,
                    mount_point=self._cfg.mount,
                    raise_on_deleted_version=True,
                ),
                where,
            )
        return self._call(lambda: kv.v1.read_secret(path=path, mount_point=self._cfg.mount), where)

    # -- auth ------------------------------------------------------------------

    def _current_token(self, client: Any, where: str) -> tuple[str, int]:
        with self._auth_lock:
            if self._cfg.approle is not None and (
                self._token is None
                or (self._expires is not None and self._clock() >= self._expires)
            ):
                self._login_locked(client, where)
            assert self._token is not None
            return self._token, self._generation

    def _relogin(self, client: Any, refused: int, where: str) -> tuple[str, int]:
        with self._auth_lock:
            if self._generation == refused:  # nobody else has logged in since
                self._login_locked(client, where)
            assert self._token is not None
            return self._token, self._generation

    def _login_locked(self, client: Any, where: str) -> None:
        ar = self._cfg.approle
        assert ar is not None
        where = f"{where}: AppRole login at auth/{ar.mount}"
        client.token = ""  # a stale token must not ride along
        try:
            body = self._call(
                lambda: client.auth.approle.login(
                    role_id=self._role_id,
                    secret_id=self._secret_id,
                    mount_point=ar.mount,
                    use_token=False,
                ),
                where,
                login=True,
            )
        except _AuthRefused:
            body = None
        if body is None:
            raise BackendError(
                f"{where} refused (check {ar.role_id_env}/{ar.secret_id_env} and the role)"
            )
        auth = body.get("auth")
        token = auth.get("client_token") if isinstance(auth, dict) else None
        if not isinstance(token, str) or not token:
            raise BackendError(f"{where}: malformed response (no client_token)")
        lease = auth.get("lease_duration") if isinstance(auth, dict) else None
        self._token = token
        self._generation += 1
        self._expires = (
            self._clock() + lease - min(RELOGIN_MARGIN, lease / 2)
            if isinstance(lease, int) and not isinstance(lease, bool) and lease > 0
            else None
        )

    # -- answers -----------------------------------------------------------------

    def _extract(self, body: dict[str, Any], field: str, where: str) -> SecretValue:
        data = body.get("data")
        if not isinstance(data, dict):
            raise BackendError(f"{where}: malformed response (no data object)")
        version: str | None = None
        if self._cfg.kv_version == 2:
            meta = data.get("metadata")
            v = meta.get("version") if isinstance(meta, dict) else None
            version = str(v) if isinstance(v, int) and not isinstance(v, bool) else None
            data = data.get("data")
            if not isinstance(data, dict):
                raise BackendError(f"{where}: malformed response (no data.data object)")
        if field not in data:
            raise SecretNotFound(f"{where}: no field {field!r}")
        value = data[field]
        if not isinstance(value, str):
            raise SecretNotFound(f"{where}: field {field!r} is not a string")
        if not value:
            raise SecretNotFound(f"{where}: field {field!r} is empty")
        return SecretValue(value, version=version)
