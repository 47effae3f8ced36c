"""The backend contract (DESIGN.md §3, §10): one Protocol, the core's own
error types, and the factory that turns policy configs into backends.

Every backend maps whatever its client library raises to
:class:`BackendError` or :class:`SecretNotFound`. Their messages are short,
name the backend and the path, and never hold a secret value (nor a vault
token, nor a response body).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Protocol, assert_never

from broker.policy.schema import EnvBackend, VaultBackend
from broker.secret import SecretValue


class BackendError(Exception):
    """The backend could not answer: unreachable, refused, slow or confused."""

    reason = "backend_unavailable"


class SecretNotFound(BackendError):
    """The backend answered, but holds no usable value at that path/field."""

    reason = "secret_not_found"


class Backend(Protocol):
    """A source of secret values. ``read`` blocks; call it off the event loop."""

    name: str

    def read(self, path: str, field: str) -> SecretValue:
        """Return the value at ``path``/``field``.

        Raises :class:`SecretNotFound` or :class:`BackendError`, nothing else.
        """
        ...

    def close(self) -> None:
        """Release connections. Reads after ``close`` raise BackendError."""
        ...


def build_backends(
    configs: Mapping[str, VaultBackend | EnvBackend],
    env: Mapping[str, str] = os.environ,
) -> dict[str, Backend]:
    """One backend per config entry. Credentials named in the configs
    (``token_env``, AppRole ids) are read from ``env`` now; a missing one
    only fails the reads of that backend, with a message naming it."""
    # Imported here: the implementations import this module's error types.
    from broker.backends.env import EnvVarBackend
    from broker.backends.vault import VaultKVBackend

    out: dict[str, Backend] = {}
    for name, cfg in configs.items():
        if isinstance(cfg, VaultBackend):
            out[name] = VaultKVBackend(name, cfg, env)
        elif isinstance(cfg, EnvBackend):
            out[name] = EnvVarBackend(name, env)
        else:
            assert_never(cfg)
    return out


def cache_ttls(configs: Mapping[str, VaultBackend | EnvBackend]) -> dict[str, float]:
    """The ``cache_ttl`` of each backend, as :class:`broker.backends.resolver.Resolver` wants them."""
    return {name: cfg.cache_ttl for name, cfg in configs.items()}
