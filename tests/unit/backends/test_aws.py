"""The AWS backend's answer handling and error mapping, on botocore's own
exception types (the wire is tested against moto in
tests/integration/test_backend_stores.py)."""

from __future__ import annotations

import re
from typing import Any

import botocore.exceptions as bce
import pytest

from broker.backends.aws import _extract, _map_error
from broker.backends.base import BackendError, SecretNotFound
from broker.secret import SecretValue

VALUE = "sk_live_aws_0123456789abcdef"  # fake; never in a message
WHERE = "aws_secrets_manager backend 'aws' (p)"


def client_error(code: str, status: int = 400) -> bce.ClientError:
    body = {"Error": {"Code": code, "Message": f"echoing {VALUE}"},
            "ResponseMetadata": {"HTTPStatusCode": status}}  # fmt: skip
    return bce.ClientError(body, "GetSecretValue")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("answer", "field", "value", "version"),
    [
        ({"SecretString": VALUE, "VersionId": "v1"}, "value", VALUE, "v1"),
        ({"SecretString": f'{{"api_key": "{VALUE}"}}'}, "api_key", VALUE, None),
        ({"SecretBinary": VALUE.encode()}, "value", VALUE, None),
        ({"SecretString": "12345"}, "value", "12345", None),  # JSON, but not an object
    ],
    ids=["plain", "json-key", "binary", "json-number"],
)
def test_extract(answer: dict[str, Any], field: str, value: str, version: str | None) -> None:
    got = _extract(answer, field, WHERE)
    assert got == SecretValue(value) and got.version == version


@pytest.mark.parametrize(
    ("answer", "field", "message"),
    [
        ({"SecretString": f'{{"other": "{VALUE}"}}'}, "api_key", "no JSON key 'api_key'"),
        ({"SecretString": '{"n": 5}'}, "n", "JSON key 'n' is empty or not a string"),
        ({"SecretString": VALUE}, "api_key", "not a JSON object, so it has no key 'api_key'"),
        ({"SecretString": ""}, "value", "the secret is empty"),
        ({"SecretBinary": b"\xff\xfe" + VALUE.encode()}, "value", "not UTF-8"),
        ({}, "value", "no SecretString"),
    ],
    ids=["missing-key", "number", "plain-with-field", "empty", "binary-not-utf8", "nothing"],
)
def test_extract_not_found(answer: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(SecretNotFound, match=message) as info:
        _extract(answer, field, WHERE)
    assert VALUE not in str(info.value) and info.value.__context__ is None


@pytest.mark.parametrize(
    ("exc", "kind", "message"),
    [
        (client_error("ResourceNotFoundException"), SecretNotFound, "no such secret"),
        (client_error("InvalidRequestException"), SecretNotFound, "cannot be read"),
        (client_error("AccessDeniedException"), BackendError, "refused the broker's credentials"),
        (client_error("403", 403), BackendError, r"refused the broker's credentials \(403\)"),
        (client_error("UnrecognizedClientException"), BackendError, "refused"),
        (client_error("DecryptionFailure"), BackendError, "cannot decrypt"),
        (client_error("Throttling<script>", 429), BackendError, "AWS answered an error"),
        (bce.NoCredentialsError(), BackendError, "no AWS credentials"),
        (bce.EndpointConnectionError(endpoint_url="https://x"), BackendError, "cannot connect"),
        (bce.ConnectTimeoutError(endpoint_url="https://x"), BackendError, "no answer within 5s"),
        (RuntimeError(VALUE), BackendError, r"unexpected failure \(RuntimeError\)"),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_map_error(exc: Exception, kind: type[Exception], message: str) -> None:
    err = _map_error(exc, WHERE, 5.0)
    assert type(err) is kind
    assert re.search(message, str(err)) and VALUE not in str(err)
