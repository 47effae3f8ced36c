"""The ``backends:`` section of a policy (DESIGN.md §3, §14): one frozen
model per backend type, discriminated by ``type``, and the shape each type
expects of a secret rule's ``path``/``field``."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TEMPLATE_RE = re.compile(r"\{(path|field)\}")
_CacheTtl = Annotated[float, Field(ge=0)]
_Timeout = Annotated[float, Field(gt=0, le=120)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _plain_http_problem(url: str) -> str | None:
    """A backend's token and the secret values it returns never cross a
    network in clear: ``http://`` only to a loopback host."""
    parts = urlsplit(url)
    if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
        return (
            f"url {url!r}: http:// only to a loopback host (localhost, 127.0.0.1, ::1); "
            "use https:// for a remote host"
        )
    return None


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("url must be http(s)://HOST[:PORT][/PATH]")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError("url must not hold credentials, a query or a fragment")
    problem = _plain_http_problem(url)
    if problem is not None:
        raise ValueError(problem)
    return url.rstrip("/")


def _check_env_names(names: tuple[str, ...]) -> None:
    bad = [n for n in names if not _ENV_NAME_RE.match(n)]
    if bad:
        raise ValueError(f"not environment variable names: {', '.join(map(repr, bad))}")


class AppRole(_Model):
    role_id_env: str
    secret_id_env: str
    mount: str = "approle"


class VaultBackend(_Model):
    type: Literal["vault"]
    url: str
    token_env: str | None = None
    approle: AppRole | None = None
    mount: str = "secret"
    kv_version: Literal[1, 2] = 2
    cache_ttl: _CacheTtl = 60.0
    namespace: str | None = None
    timeout: _Timeout = 5.0
    """Seconds for one vault request (extension)."""
    ca_cert: Path | None = None
    """Extra CA bundle for an https vault URL (extension)."""

    @model_validator(mode="after")
    def _one_auth(self) -> VaultBackend:
        problems = []
        if (self.token_env is None) == (self.approle is None):
            problems.append("set exactly one of token_env or approle")
        if not re.match(r"^https?://", self.url):
            problems.append("url must start with http:// or https://")
        elif (plain := _plain_http_problem(self.url)) is not None:
            problems.append(plain)
        if problems:
            raise ValueError("; ".join(problems))
        return self


class EnvBackend(_Model):
    type: Literal["env"]
    cache_ttl: _CacheTtl = 0.0


class _Rest(_Model):
    """What the REST backends share: TLS verified with the system trust store
    plus ``ca_cert``, a timeout per request, values cached ``cache_ttl`` s."""

    url: str
    cache_ttl: _CacheTtl = 60.0
    timeout: _Timeout = 5.0
    ca_cert: Path | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _check_url(v)

    @model_validator(mode="after")
    def _env_names(self) -> _Rest:
        _check_env_names(credential_envs(self))
        return self


class OnePasswordConnectBackend(_Rest):
    """A 1Password Connect server. Rule: ``path: VAULT/ITEM`` (names or ids),
    ``field``: the field's label (or id)."""

    type: Literal["onepassword_connect"]
    token_env: str


class DopplerBackend(_Rest):
    """Doppler with a service token. Rule: ``path: PROJECT/CONFIG``, ``field``:
    the secret's name."""

    type: Literal["doppler"]
    url: str = "https://api.doppler.com"
    token_env: str


class InfisicalBackend(_Rest):
    """Infisical, universal auth (machine identity). Rule:
    ``path: PROJECT_ID/ENVIRONMENT[/folder/...]``, ``field``: the secret's name."""

    type: Literal["infisical"]
    url: str = "https://app.infisical.com"
    client_id_env: str
    client_secret_env: str


class AwsSecretsManagerBackend(_Model):
    """AWS Secrets Manager with the broker process's standard credential chain.
    Rule: ``path``: the SecretId (name or ARN), ``field``: a JSON key; left at
    its default for a secret that is a plain string."""

    type: Literal["aws_secrets_manager"]
    region: str | None = None
    """None: the chain's region (AWS_REGION, AWS_DEFAULT_REGION, the profile)."""
    endpoint_url: str | None = None
    profile: str | None = None
    """A named profile of the shared config files (extension)."""
    cache_ttl: _CacheTtl = 60.0
    timeout: _Timeout = 5.0
    ca_cert: Path | None = None
    """Extra CA bundle for the endpoint, added to the system trust store."""

    @field_validator("endpoint_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else _check_url(v)


class ExecBackend(_Model):
    """Any CLI: ``command`` is an argv template (``{path}`` and ``{field}`` are
    the rule's), run without a shell, with only ``env_pass`` in its
    environment; stdout, stripped, is the value."""

    type: Literal["exec"]
    command: tuple[str, ...] = Field(min_length=1)
    timeout: _Timeout = 5.0
    env_pass: tuple[str, ...] = ()
    cache_ttl: _CacheTtl = 60.0

    @field_validator("command")
    @classmethod
    def _command(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        problems = []
        if not v[0] or _TEMPLATE_RE.search(v[0]):
            problems.append("command[0] must name the program, without {path} or {field}")
        for i, arg in enumerate(v):
            rest = _TEMPLATE_RE.sub("", arg)
            if "{" in rest or "}" in rest:
                problems.append(f"command[{i}] {arg!r}: only {{path}} and {{field}} are expanded")
        if problems:
            raise ValueError("; ".join(problems))
        return v

    @field_validator("env_pass")
    @classmethod
    def _env_pass(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        _check_env_names(v)
        return v


BackendConfigs = (
    VaultBackend
    | EnvBackend
    | AwsSecretsManagerBackend
    | OnePasswordConnectBackend
    | DopplerBackend
    | InfisicalBackend
    | ExecBackend
)
BackendConfig = Annotated[BackendConfigs, Field(discriminator="type")]
BACKEND_TYPES: tuple[str, ...] = (
    "vault",
    "env",
    "aws_secrets_manager",
    "onepassword_connect",
    "doppler",
    "infisical",
    "exec",
)

_PATH_SHAPES: dict[str, tuple[int, bool, str]] = {
    # type: (fewest "/"-separated parts, whether that is also the most, the shape)
    "onepassword_connect": (2, False, "VAULT/ITEM"),  # an item title may hold "/"
    "doppler": (2, True, "PROJECT/CONFIG"),
    "infisical": (2, False, "PROJECT_ID/ENVIRONMENT[/folder/...]"),
}


def credential_envs(config: BaseModel) -> tuple[str, ...]:
    """The environment variables a backend config names for its credentials."""
    fields = type(config).model_fields
    return tuple(
        v for k in fields if k.endswith("_env") and isinstance(v := getattr(config, k), str)
    )


def rule_problem(backend_type: Any, path: Any) -> str | None:
    """Why a rule's ``path`` does not fit its backend's type, or None. Takes
    raw policy data; values of the wrong type are left to the schema."""
    shape = _PATH_SHAPES.get(backend_type) if isinstance(backend_type, str) else None
    if shape is None or not isinstance(path, str) or not path:
        return None
    least, exact, what = shape
    parts = path.split("/", least - 1) if backend_type == "onepassword_connect" else path.split("/")
    if len(parts) < least or (exact and len(parts) > least) or any(not p for p in parts):
        return f"a {backend_type} backend wants path {what}, not {path!r}"
    return None
