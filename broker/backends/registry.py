"""From the policy's ``backends:`` section to live backends: one per entry,
each behind the :class:`broker.backends.base.Backend` Protocol."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import assert_never

from broker.backends.aws import AwsSecretsManager
from broker.backends.base import Backend
from broker.backends.doppler import Doppler
from broker.backends.env import EnvVarBackend
from broker.backends.exec import ExecCommand
from broker.backends.infisical import Infisical
from broker.backends.onepassword import OnePasswordConnect
from broker.backends.vault import VaultKVBackend
from broker.policy.backend_config import (
    AwsSecretsManagerBackend,
    BackendConfigs,
    DopplerBackend,
    EnvBackend,
    ExecBackend,
    InfisicalBackend,
    OnePasswordConnectBackend,
    VaultBackend,
    credential_envs,
)


def build_backend(name: str, cfg: BackendConfigs, env: Mapping[str, str]) -> Backend:
    """One backend. Credentials named in ``cfg`` are read from ``env`` now; a
    missing one only fails that backend's reads, with a message naming it."""
    if isinstance(cfg, VaultBackend):
        return VaultKVBackend(name, cfg, env)
    if isinstance(cfg, EnvBackend):
        return EnvVarBackend(name, env)
    if isinstance(cfg, AwsSecretsManagerBackend):
        return AwsSecretsManager(name, cfg)
    if isinstance(cfg, OnePasswordConnectBackend):
        return OnePasswordConnect(name, cfg, env)
    if isinstance(cfg, DopplerBackend):
        return Doppler(name, cfg, env)
    if isinstance(cfg, InfisicalBackend):
        return Infisical(name, cfg, env)
    if isinstance(cfg, ExecBackend):
        return ExecCommand(name, cfg, env)
    assert_never(cfg)


def build_backends(
    configs: Mapping[str, BackendConfigs], env: Mapping[str, str] = os.environ
) -> dict[str, Backend]:
    """One backend per config entry (see :func:`build_backend`)."""
    return {name: build_backend(name, cfg, env) for name, cfg in configs.items()}


def cache_ttls(configs: Mapping[str, BackendConfigs]) -> dict[str, float]:
    """The ``cache_ttl`` of each backend, as :class:`broker.backends.resolver.Resolver` wants them."""
    return {name: cfg.cache_ttl for name, cfg in configs.items()}


def unset_credentials(cfg: BackendConfigs, env: Mapping[str, str]) -> list[str]:
    """The environment variables ``cfg`` reads its credentials from that
    ``env`` lacks (AWS and exec take theirs from elsewhere: none)."""
    names = list(credential_envs(cfg))
    if isinstance(cfg, VaultBackend) and cfg.approle is not None:
        names += [cfg.approle.role_id_env, cfg.approle.secret_id_env]
    return [n for n in names if not env.get(n)]
