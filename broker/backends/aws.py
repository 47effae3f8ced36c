"""The ``aws_secrets_manager`` backend: ``GetSecretValue`` through boto3, with
the standard AWS credential chain of the broker's process (environment,
shared files or ``profile``, container or instance role).

A rule's ``path`` is the SecretId (name or ARN). A secret whose string is a
JSON object yields the key named by ``field``; a plain string (or UTF-8
binary) secret is the value itself, and its rule leaves ``field`` at the
default. The client ignores proxy variables (``HTTPS_PROXY`` may point at the
broker itself) and retries once; ``timeout`` bounds the connect and each read.
TLS is verified against the system trust store plus ``ca_cert``, as for every
HTTPS backend (botocore alone would use its own bundle).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions as bce
from botocore.config import Config

from broker.backends.base import BackendError, SecretNotFound
from broker.policy.backend_config import AwsSecretsManagerBackend
from broker.secret import SecretValue
from broker.tls.ca import CAError
from broker.tls.upstream import bundle_bytes, system_store

DEFAULT_FIELD = "value"
_CODE_RE = re.compile(r"^[A-Za-z0-9.]{1,64}$")
_REFUSED = {
    "AccessDeniedException",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "ExpiredTokenException",
    "ExpiredToken",
}


class AwsSecretsManager:
    """A :class:`broker.backends.base.Backend` over one region's Secrets Manager."""

    blocking = True

    def __init__(self, name: str, config: AwsSecretsManagerBackend) -> None:
        self.name = name
        self._cfg = config
        self._problem: str | None = None
        self._client: Any = None
        self._bundle: Path | None = None
        try:
            verify = self._trust(config.ca_cert)
            session = boto3.session.Session(profile_name=config.profile, region_name=config.region)
            self._client = session.client(
                "secretsmanager",
                endpoint_url=config.endpoint_url,
                verify=verify,
                config=Config(
                    connect_timeout=config.timeout,
                    read_timeout=config.timeout,
                    retries={"max_attempts": 2, "mode": "standard"},
                    proxies={},
                    user_agent_extra="keybroker",
                ),
            )
        except CAError as exc:
            self._problem = str(exc)
        except Exception as exc:  # no region, an unknown profile, a bad endpoint
            self._problem = f"client cannot be built ({type(exc).__name__})"
        self._closed = False

    def __repr__(self) -> str:
        return f"AwsSecretsManager(name={self.name!r}, region={self._cfg.region!r})"

    def read(self, path: str, field: str) -> SecretValue:
        where = f"aws_secrets_manager backend {self.name!r} ({path})"
        if self._closed:
            raise BackendError(f"{where}: backend is closed")
        if self._problem is not None:
            raise BackendError(f"{where}: {self._problem}")
        try:
            answer = self._client.get_secret_value(SecretId=path)
        except Exception as exc:
            err = _map_error(exc, where, self._cfg.timeout)
        else:
            return _extract(answer, field, where)
        raise err  # outside the handler: the botocore exception is not chained

    def close(self) -> None:
        self._closed = True
        if self._client is not None:
            self._client.close()
        if self._bundle is not None:
            self._bundle.unlink(missing_ok=True)

    def _trust(self, ca_cert: Path | None) -> str | None:
        """What botocore verifies against: the system store, plus ``ca_cert``
        in a private bundle file (botocore takes one path) removed at close."""
        roots = system_store()
        if ca_cert is None:
            return str(roots) if roots is not None else None
        data = bundle_bytes(ca_cert, roots)
        fd, name = tempfile.mkstemp(prefix="keybroker-aws-ca-", suffix=".pem")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        self._bundle = Path(name)
        return name


def _map_error(exc: Exception, where: str, timeout: float) -> BackendError:
    """The core error for whatever boto3/botocore raised."""
    if isinstance(exc, bce.ClientError):
        err = exc.response.get("Error", {}) if isinstance(exc.response, dict) else {}
        code = err.get("Code") if isinstance(err, dict) else None
        code = code if isinstance(code, str) and _CODE_RE.match(code) else "an error"
        if code == "ResourceNotFoundException":
            return SecretNotFound(f"{where}: no such secret")
        if code == "InvalidRequestException":
            return SecretNotFound(f"{where}: the secret cannot be read (deleted or disabled?)")
        meta = exc.response.get("ResponseMetadata", {}) if isinstance(exc.response, dict) else {}
        status = meta.get("HTTPStatusCode") if isinstance(meta, dict) else None
        if code in _REFUSED or status in (401, 403):
            return BackendError(f"{where}: AWS refused the broker's credentials ({code})")
        if code == "DecryptionFailure":
            return BackendError(f"{where}: AWS cannot decrypt the secret (KMS key access)")
        return BackendError(f"{where}: AWS answered {code}")
    if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError):
        return BackendError(f"{where}: no AWS credentials in the broker's credential chain")
    if isinstance(exc, bce.ConnectTimeoutError | bce.ReadTimeoutError):
        return BackendError(f"{where}: no answer within {timeout:g}s")
    if isinstance(exc, bce.SSLError):
        return BackendError(f"{where}: TLS handshake or certificate verification failed")
    if isinstance(exc, bce.ConnectionError | bce.HTTPClientError):
        return BackendError(f"{where}: cannot connect")
    if isinstance(exc, bce.BotoCoreError):
        return BackendError(f"{where}: request failed ({type(exc).__name__})")
    return BackendError(f"{where}: unexpected failure ({type(exc).__name__})")


def _extract(answer: Any, field: str, where: str) -> SecretValue:
    if not isinstance(answer, dict):
        raise BackendError(f"{where}: malformed answer")
    raw = answer.get("SecretString")
    binary = answer.get("SecretBinary")
    if raw is None and isinstance(binary, bytes):
        raw = binary.decode("utf-8", errors="replace")
        if "\ufffd" in raw:  # checked outside a handler: nothing chained
            raise SecretNotFound(f"{where}: binary secret is not UTF-8 text")
    if not isinstance(raw, str):
        raise SecretNotFound(f"{where}: no SecretString")
    version = answer.get("VersionId")
    version = version if isinstance(version, str) else None
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if isinstance(data, dict):
        value = data.get(field)
        if field not in data:
            raise SecretNotFound(f"{where}: no JSON key {field!r}")
        if not isinstance(value, str) or not value:
            raise SecretNotFound(f"{where}: JSON key {field!r} is empty or not a string")
        return SecretValue(value, version=version)
    if field != DEFAULT_FIELD:
        raise SecretNotFound(f"{where}: not a JSON object, so it has no key {field!r}")
    if not raw:
        raise SecretNotFound(f"{where}: the secret is empty")
    return SecretValue(raw, version=version)
