"""The env backend and the error types."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest

from broker.backends.base import BackendError, SecretNotFound
from broker.backends.env import EnvVarBackend
from broker.secret import SecretValue

VALUE = "sk_live_env_0123456789abcdef"  # a fake secret; must never show up in messages


def test_reads_the_named_variable_and_ignores_field() -> None:
    backend = EnvVarBackend("local", {"STRIPE_KEY": VALUE})
    for field in ("value", "anything"):
        got = backend.read("STRIPE_KEY", field)
        assert got == SecretValue(VALUE)
        assert got.version is None


def test_reads_a_live_mapping_at_each_call() -> None:
    env = {"K": "first-value"}
    backend = EnvVarBackend("local", env)
    assert backend.read("K", "value") == SecretValue("first-value")
    env["K"] = "second-value"
    assert backend.read("K", "value") == SecretValue("second-value")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({}, "is not set", id="unset"),
        pytest.param({"K": ""}, "is empty", id="empty"),
        pytest.param({"k": VALUE}, "is not set", id="case-sensitive"),
    ],
)
def test_missing_or_empty_is_secret_not_found(env: dict[str, str], expected: str) -> None:
    with pytest.raises(SecretNotFound) as info:
        EnvVarBackend("local", env).read("K", "value")
    msg = str(info.value)
    assert expected in msg
    assert "'local'" in msg and "'K'" in msg
    assert VALUE not in msg
    assert info.value.reason == "secret_not_found"


class _Broken(Mapping[str, str]):
    """A mapping that fails with the secret in its own error message."""

    def __getitem__(self, key: str) -> str:
        raise RuntimeError(f"boom {VALUE}")

    def get(self, key: str, default: object = None) -> str:
        raise RuntimeError(f"boom {VALUE}")

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def test_a_failing_mapping_is_a_backend_error_without_chained_context() -> None:
    with pytest.raises(BackendError) as info:
        EnvVarBackend("local", _Broken()).read("K", "value")
    assert type(info.value) is BackendError
    assert info.value.reason == "backend_unavailable"
    assert "RuntimeError" in str(info.value)
    assert VALUE not in str(info.value)
    assert info.value.__context__ is None and info.value.__cause__ is None


def test_repr_shows_no_values() -> None:
    backend = EnvVarBackend("local", {"K": VALUE})
    assert VALUE not in repr(backend)
    value = backend.read("K", "value")
    for shown in (repr(value), str(value), f"{value}", f"{value!r}", f"{value:>40}"):
        assert VALUE not in shown


def test_secret_not_found_is_a_backend_error_with_its_own_reason() -> None:
    assert issubclass(SecretNotFound, BackendError)
    assert BackendError.reason == "backend_unavailable"
    assert SecretNotFound.reason == "secret_not_found"
