"""build_backends: one backend per config entry, of the right class, each
honouring the Protocol (``blocking`` included); cache TTLs; which credential
variables a config needs."""

from __future__ import annotations

import pytest

from broker.backends.aws import AwsSecretsManager
from broker.backends.base import Backend, BackendError
from broker.backends.doppler import Doppler
from broker.backends.env import EnvVarBackend
from broker.backends.exec import ExecCommand
from broker.backends.infisical import Infisical
from broker.backends.onepassword import OnePasswordConnect
from broker.backends.registry import build_backends, cache_ttls, unset_credentials
from broker.backends.vault import VaultKVBackend
from broker.policy.backend_config import (
    AppRole,
    AwsSecretsManagerBackend,
    BackendConfigs,
    DopplerBackend,
    EnvBackend,
    ExecBackend,
    InfisicalBackend,
    OnePasswordConnectBackend,
    VaultBackend,
)
from broker.secret import SecretValue

VALUE = "sk_live_env_0123456789abcdef"  # a fake secret; must never show up in messages
URL = "https://127.0.0.1:1"
CONFIGS: dict[str, BackendConfigs] = {
    "local": EnvBackend(type="env"),
    "vault": VaultBackend(type="vault", url=URL, token_env="NO_SUCH_TOKEN", cache_ttl=7.5),
    "aws": AwsSecretsManagerBackend(type="aws_secrets_manager", region="us-east-1"),
    "op": OnePasswordConnectBackend(type="onepassword_connect", url=URL, token_env="OP_T"),
    "doppler": DopplerBackend(type="doppler", token_env="DP_T", cache_ttl=3),
    "infisical": InfisicalBackend(
        type="infisical", client_id_env="INF_ID", client_secret_env="INF_S"
    ),
    "cli": ExecBackend(type="exec", command=("true",), cache_ttl=0),
}
CLASSES = {
    "local": EnvVarBackend,
    "vault": VaultKVBackend,
    "aws": AwsSecretsManager,
    "op": OnePasswordConnect,
    "doppler": Doppler,
    "infisical": Infisical,
    "cli": ExecCommand,
}


def test_one_backend_per_config_of_its_class_named_and_protocol_shaped() -> None:
    backends = build_backends(CONFIGS, env={"K": VALUE})
    try:
        for name, backend in backends.items():
            assert type(backend) is CLASSES[name]
            assert backend.name == name
            assert isinstance(backend.blocking, bool)
            assert backend.blocking is (name != "local")  # only env reads without I/O
            b: Backend = backend  # mypy checks the Protocol
            assert name in repr(b)
        assert backends["local"].read("K", "value") == SecretValue(VALUE)
    finally:
        for b in backends.values():
            b.close()
    assert cache_ttls(CONFIGS) == {
        "local": 0.0, "vault": 7.5, "aws": 60.0, "op": 60.0,
        "doppler": 3.0, "infisical": 60.0, "cli": 0.0,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("name", "variables"),
    [
        ("vault", "NO_SUCH_TOKEN"),
        ("op", "OP_T"),
        ("doppler", "DP_T"),
        ("infisical", "INF_ID and INF_S"),
    ],
)
def test_a_missing_credential_fails_the_reads_naming_it_not_the_build(
    name: str, variables: str
) -> None:
    backend = build_backends({name: CONFIGS[name]}, env={})[name]
    try:
        with pytest.raises(BackendError, match=variables) as info:
            backend.read("p/q", "value")
        assert type(info.value) is BackendError
    finally:
        backend.close()


def test_reads_after_close_fail() -> None:
    backends = build_backends(CONFIGS, env={"OP_T": "x", "DP_T": "x", "INF_ID": "x", "INF_S": "y"})
    for name in ("aws", "op", "doppler", "infisical", "cli"):
        backends[name].close()
        with pytest.raises(BackendError, match="closed"):
            backends[name].read("p/q", "value")


def test_unset_credentials_lists_what_this_environment_lacks() -> None:
    env = {"OP_T": "x", "INF_ID": "x"}
    assert unset_credentials(CONFIGS["op"], env) == []
    assert unset_credentials(CONFIGS["doppler"], env) == ["DP_T"]
    assert unset_credentials(CONFIGS["infisical"], env) == ["INF_S"]
    assert unset_credentials(CONFIGS["aws"], env) == []
    assert unset_credentials(CONFIGS["cli"], env) == []
    approle = VaultBackend(
        type="vault", url=URL, approle=AppRole(role_id_env="R", secret_id_env="S")
    )
    assert unset_credentials(approle, {"R": "x"}) == ["S"]
