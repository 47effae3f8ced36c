"""The ``infisical`` backend: Infisical's REST API with universal auth (a
machine identity's client id and secret).

Login (``POST /api/v1/auth/universal-auth/login``) gives a short-lived access
token; it is kept until ``expiresIn`` minus a margin, then a read logs in
again, and once more when Infisical refuses it (revoked), after which the
read is retried once. Reads use ``GET /api/v4/secrets/{name}`` with
``projectId``, ``environment`` and ``secretPath``.

A rule's ``path`` is ``PROJECT_ID/ENVIRONMENT[/folder/...]`` and its
``field`` the secret's name.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from urllib.parse import quote

from broker.backends.base import BackendError, SecretNotFound
from broker.backends.rest import Answer, RestBackend, status_error, text
from broker.policy.backend_config import InfisicalBackend
from broker.secret import SecretValue

RENEW_MARGIN = 30.0
"""Seconds before the access token expires at which the next read logs in
again (a tenth of the lifetime for tokens shorter than ten times this)."""


class _Refused(Exception):
    """Infisical refused the access token."""


class Infisical(RestBackend):
    """A :class:`broker.backends.base.Backend` over one Infisical instance."""

    def __init__(
        self,
        name: str,
        config: InfisicalBackend,
        env: Mapping[str, str],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._id_env, self._secret_env = config.client_id_env, config.client_secret_env
        super().__init__(
            name, config.url, config.ca_cert, config.timeout,
            {self._id_env: env.get(self._id_env), self._secret_env: env.get(self._secret_env)},
        )  # fmt: skip
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires = 0.0
        self._generation = 0

    def read(self, path: str, field: str) -> SecretValue:
        where = f"infisical backend {self.name!r} ({path}/{field})"
        project, _, rest = path.partition("/")
        environment, _, folder = rest.partition("/")
        if not project or not environment:
            raise SecretNotFound(f"{where}: path must be PROJECT_ID/ENVIRONMENT[/folder]")
        params = {"projectId": project, "environment": environment, "secretPath": "/" + folder}
        url = f"/api/v4/secrets/{quote(field, safe='')}"
        token, generation = self._current(where, None)
        try:
            return self._fetch(where, url, params, token)
        except _Refused:
            pass
        token, _ = self._current(where, generation)  # logs in again
        try:
            return self._fetch(where, url, params, token)
        except _Refused:
            pass
        raise BackendError(
            f"{where}: access token refused even after a fresh login "
            f"(does the identity of {self._id_env} have access?)"
        )

    def _fetch(self, where: str, url: str, params: dict[str, str], token: str) -> SecretValue:
        answer = self._send(
            where, "GET", url, headers={"authorization": f"Bearer {token}"}, params=params
        )
        if answer.status == 401:
            raise _Refused
        if answer.status != 200:
            raise self._map_error(answer, where)
        secret = answer.body.get("secret") if isinstance(answer.body, dict) else None
        if not isinstance(secret, dict):
            raise BackendError(f"{where}: malformed answer (no secret object)")
        value = text(secret.get("secretValue"))
        if value is None:
            raise SecretNotFound(f"{where}: the secret is empty")
        version = secret.get("version")
        ok = isinstance(version, int) and not isinstance(version, bool)
        return SecretValue(value, version=str(version) if ok else None)

    def _map_error(self, answer: Answer, where: str) -> BackendError:
        """Infisical's errors: 400 bad request, 401 (login: bad client id or
        secret), 403 no access, 404 no such project, environment, folder or
        secret, 429 rate limit."""
        if answer.status == 404:
            return SecretNotFound(f"{where}: no such project, environment, folder or secret")
        return status_error(answer.status, where, f"{self._id_env}/{self._secret_env}")

    # -- auth ----------------------------------------------------------------------

    def _current(self, where: str, refused: int | None) -> tuple[str, int]:
        """The access token (logging in when there is none, it is about to
        expire, or ``refused`` is the generation Infisical just refused)."""
        with self._lock:
            stale = self._token is None or self._clock() >= self._expires
            if stale or refused == self._generation:
                self._login(where)
            assert self._token is not None
            return self._token, self._generation

    def _login(self, where: str) -> None:
        where = f"{where}: universal-auth login"
        answer = self._send(
            where, "POST", "/api/v1/auth/universal-auth/login",
            json_body={
                "clientId": self._creds.get(self._id_env, ""),
                "clientSecret": self._creds.get(self._secret_env, ""),
            },
        )  # fmt: skip
        if answer.status != 200:
            if answer.status in (400, 401, 403, 404):
                raise BackendError(
                    f"{where} refused (HTTP {answer.status}; check {self._id_env}/{self._secret_env})"
                )
            raise self._map_error(answer, where)
        body = answer.body if isinstance(answer.body, dict) else {}
        token, life = text(body.get("accessToken")), body.get("expiresIn")
        if token is None:
            raise BackendError(f"{where}: malformed answer (no accessToken)")
        lifetime = 60.0
        if isinstance(life, int | float) and not isinstance(life, bool) and life > 0:
            lifetime = float(life)
        self._token, self._generation = token, self._generation + 1
        self._expires = self._clock() + lifetime - min(RENEW_MARGIN, lifetime / 10)
