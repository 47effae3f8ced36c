"""The ``doppler`` backend: Doppler's REST API with a service token
(``GET /v3/configs/config/secret?project=&config=&name=``, bearer auth).

A rule's ``path`` is ``PROJECT/CONFIG`` and its ``field`` the secret's name.
The value is the secret's ``computed`` form (references expanded), which is
what ``doppler secrets get --plain`` prints.
"""

from __future__ import annotations

from broker.backends.base import BackendError, SecretNotFound
from broker.backends.rest import Answer, BearerBackend, status_error, text
from broker.secret import SecretValue


class Doppler(BearerBackend):
    """A :class:`broker.backends.base.Backend` over Doppler's API."""

    def read(self, path: str, field: str) -> SecretValue:
        where = f"doppler backend {self.name!r} ({path}/{field})"
        project, _, config = path.partition("/")
        if not project or not config or "/" in config:
            raise SecretNotFound(f"{where}: path must be PROJECT/CONFIG")
        answer = self._send(
            where, "GET", "/v3/configs/config/secret",
            headers=self._bearer(),
            params={"project": project, "config": config, "name": field},
        )  # fmt: skip
        if answer.status != 200:
            raise self._map_error(answer, where)
        body = answer.body
        value = body.get("value") if isinstance(body, dict) else None
        if not isinstance(value, dict):
            raise BackendError(f"{where}: malformed answer (no value object)")
        computed = text(value.get("computed"))
        if computed is None:
            raise SecretNotFound(f"{where}: the secret is empty")
        return SecretValue(computed)

    def _map_error(self, answer: Answer, where: str) -> BackendError:
        """Doppler's errors: 401 bad token, 403 no access, 404 no such
        project, config or secret, 429 rate limit."""
        if answer.status == 404:
            return SecretNotFound(f"{where}: no such project, config or secret")
        return status_error(answer.status, where, self._token_env)
