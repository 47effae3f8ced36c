"""The ``env`` backend: a secret is one of the broker's own environment
variables, named by the rule's ``path`` (its ``field`` is ignored)."""

from __future__ import annotations

from collections.abc import Mapping

from broker.backends.base import BackendError, SecretNotFound
from broker.secret import SecretValue


class EnvVarBackend:
    """Reads ``env[path]`` at each call, so a live mapping such as
    ``os.environ`` is honoured as it is now, not as it was at start-up."""

    blocking = False
    """Reading a mapping does no I/O: the resolver calls it on the event loop."""

    def __init__(self, name: str, env: Mapping[str, str]) -> None:
        self.name = name
        self._env = env

    def __repr__(self) -> str:
        return f"EnvVarBackend(name={self.name!r})"

    def read(self, path: str, field: str) -> SecretValue:
        del field  # one variable holds one value
        where = f"env backend {self.name!r}: environment variable {path!r}"
        try:
            value = self._env.get(path)
        except Exception as exc:  # a custom mapping misbehaving
            err = BackendError(f"{where} could not be read ({type(exc).__name__})")
        else:
            if value is None:
                raise SecretNotFound(f"{where} is not set")
            if not isinstance(value, str):
                raise SecretNotFound(f"{where} is not a string")
            if not value:
                raise SecretNotFound(f"{where} is empty")
            return SecretValue(value)
        raise err  # outside the handler: no chained context

    def close(self) -> None:
        """Nothing to release."""
