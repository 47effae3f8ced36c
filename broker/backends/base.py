"""The backend contract (DESIGN.md §10, §14): one Protocol and the core's own
error types. Nothing else lives here; the implementations import this module,
and :mod:`broker.backends.registry` builds them from policy configs.

Every backend maps whatever its client raises to :class:`BackendError` or
:class:`SecretNotFound`, in one function per backend. Their messages are
short, name the backend and the path, and never hold a secret value, a
backend credential or a response body; they are raised outside ``except``
blocks, so no exception chain carries one either.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

from broker.secret import SecretValue


class BackendError(Exception):
    """The backend could not answer: unreachable, refused, slow or confused."""

    reason: ClassVar[str] = "backend_unavailable"


class SecretNotFound(BackendError):
    """The backend answered, but holds no usable value at that path/field."""

    reason: ClassVar[str] = "secret_not_found"


class Backend(Protocol):
    """A read-only source of secret values."""

    name: str

    @property
    def blocking(self) -> bool:
        """True when ``read`` does I/O: the resolver then calls it in a worker
        thread, never on the event loop."""
        ...

    def read(self, path: str, field: str) -> SecretValue:
        """Return the value at ``path``/``field``.

        Raises :class:`SecretNotFound` or :class:`BackendError`, nothing else.
        """
        ...

    def close(self) -> None:
        """Release connections. Reads after ``close`` raise BackendError."""
        ...
