"""One secret's rule (DESIGN.md §3, §4, §11): where its value may go
(hosts, ports, schemes, methods, paths, locations) and, for credential
kinds other than a static string, the kind's own keys."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from broker.governance.config import Approve, parse_rate
from broker.policy.hosts import HostError, normalize_pattern
from broker.policy.model import Model as _Model
from broker.policy.model import raise_all as _raise_all

SECRET_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_METHOD_RE = re.compile(r"^[A-Z]{1,16}$")
KNOWN_METHODS = frozenset(
    "GET HEAD POST PUT PATCH DELETE OPTIONS TRACE CONNECT QUERY PROPFIND PROPPATCH MKCOL "
    "COPY MOVE LOCK UNLOCK REPORT SEARCH MKCALENDAR".split()
)
"""RFC 9110's methods, QUERY and WebDAV's: a typo (``GTE``) never matches a
request, so it is an error rather than a rule that silently allows nothing."""


def _unknown_method(m: str) -> str:
    import difflib

    near = difflib.get_close_matches(m, sorted(KNOWN_METHODS), n=1, cutoff=0.5)
    hint = f"did you mean {near[0]}?" if near else "e.g. GET, POST, PUT, PATCH, DELETE"
    return f"method {m!r} is not a known HTTP method ({hint})"


SecretName = Annotated[str, StringConstraints(pattern=SECRET_NAME_RE.pattern)]


CredentialKind = Literal[
    "static",
    "aws_sigv4",
    "oauth2_refresh",
    "oauth2_client_credentials",
    "github_app",
    "google_service_account",
]
# Keys only one kind may set (DESIGN.md §11); anything else is an error naming the kind.
_KIND_KEYS: dict[str, tuple[str, ...]] = {
    "aws_sigv4": ("services", "regions", "allow_credential_vending", "max_presign_expires"),
    "oauth2_refresh": ("token_url", "scopes", "token_auth"),
    "oauth2_client_credentials": ("token_url", "scopes", "token_auth"),
    "github_app": ("api_url",),
    "google_service_account": ("token_url", "scopes", "subject"),  # extension
}
_AWS_LOCATIONS = ("header:authorization", "query")


class SecretRule(_Model):
    kind: CredentialKind = "static"
    """How the placeholder becomes wire bytes (DESIGN.md §11): :mod:`broker.credentials`."""
    backend: str
    path: str = Field(min_length=1)
    field: str = "value"
    hosts: tuple[str, ...] = Field(min_length=1)
    ports: tuple[int, ...] = (443,)
    schemes: tuple[Literal["http", "https"], ...] = ("https",)
    methods: tuple[str, ...] | None = None
    paths: tuple[str, ...] | None = None
    locations: tuple[str, ...] = ("header:authorization",)
    # Governance of use (DESIGN.md §13; broker/governance/).
    rate: str | None = None
    max_uses: int | None = Field(default=None, ge=1)
    approve: Approve = "never"
    approve_methods: tuple[str, ...] | None = None

    @field_validator("rate")
    @classmethod
    def _rate(cls, v: str | None) -> str | None:
        if v is not None:
            parse_rate(v)
        return v

    @field_validator("approve_methods")
    @classmethod
    def _approve_methods(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return cls._methods(v)

    # Kind-specific keys (DESIGN.md §11); each is refused on any other kind.
    services: tuple[str, ...] | None = None
    regions: tuple[str, ...] | None = None
    allow_credential_vending: bool | None = None
    """aws_sigv4: permit STS AssumeRole/GetSessionToken, IAM CreateAccessKey ... (extension)."""
    max_presign_expires: int | None = Field(default=None, ge=1, le=604800)
    """aws_sigv4: the longest X-Amz-Expires of a presigned URL (default 900 s; extension)."""
    token_url: str | None = None
    scopes: tuple[str, ...] | None = None
    token_auth: Literal["client_secret_basic", "client_secret_post"] | None = None
    api_url: str | None = None
    subject: str | None = None
    """google_service_account: the user to act as (domain-wide delegation)."""

    @model_validator(mode="before")
    @classmethod
    def _kind_defaults(cls, data: object) -> object:
        # A SigV4 credential sits in Authorization or, presigned, in the query.
        if isinstance(data, dict) and data.get("kind") == "aws_sigv4" and "locations" not in data:
            return {**data, "locations": list(_AWS_LOCATIONS)}
        return data

    @model_validator(mode="after")
    def _kind_keys(self) -> SecretRule:
        own = _KIND_KEYS.get(self.kind, ())
        problems = [
            f"{key} is only valid for kind {'/'.join(k for k, ks in _KIND_KEYS.items() if key in ks)}"
            f" (this secret is kind {self.kind})"
            for ks in _KIND_KEYS.values()
            for key in ks
            if key not in own and getattr(self, key) is not None
        ]
        if self.kind.startswith("oauth2_") and not self.token_url:
            problems.append(f"kind {self.kind} needs token_url")
        for key in ("token_url", "api_url"):
            url = getattr(self, key)
            if url is not None and not url.startswith("https://"):
                problems.append(f"{key} must start with https://")
        if self.kind == "aws_sigv4":
            bad = [loc for loc in self.locations if loc not in _AWS_LOCATIONS]
            if bad:
                problems.append(f"kind aws_sigv4 takes locations {list(_AWS_LOCATIONS)} only")
        _raise_all(sorted(set(problems)))
        return self

    # Each list validator reports every bad item, not only the first.
    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        out, problems = [], []
        for h in v:
            try:
                out.append(normalize_pattern(h))
            except HostError as exc:
                problems.append(f"host {h!r}: {exc}")
        _raise_all(problems)
        return tuple(out)

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        _raise_all([f"port {p} is outside 1-65535" for p in v if not 1 <= p <= 65535])
        return v

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is None:
            return None
        out = tuple(m.upper() for m in v)
        _raise_all(
            [f"method {m!r} is not an HTTP method name" for m in out if not _METHOD_RE.match(m)]
            + [_unknown_method(m) for m in out if _METHOD_RE.match(m) and m not in KNOWN_METHODS]
        )
        return out

    @field_validator("paths")
    @classmethod
    def _paths(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is None:
            return None
        problems = []
        for g in v:
            try:
                glob_to_regex(g)
            except ValueError as exc:
                problems.append(str(exc))
        _raise_all(problems)
        return v

    @field_validator("locations")
    @classmethod
    def _locations(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        out, problems = [], []
        for loc in v:
            if loc in ("query", "path", "body"):
                out.append(loc)
            elif loc.lower().startswith("header:") and _HEADER_NAME_RE.match(loc[7:]):
                out.append("header:" + loc[7:].lower())
            else:
                problems.append(f"location {loc!r} must be header:<name>, query, path or body")
        _raise_all(problems)
        return tuple(out)


def glob_to_regex(glob: str) -> re.Pattern[str]:
    """``*`` matches any run of characters (``/`` included), ``?`` one
    character other than ``/``; everything else is literal."""
    if not glob.startswith("/"):
        raise ValueError(f"path glob {glob!r} must start with '/'")
    if any(c.isspace() for c in glob) or "[" in glob or "]" in glob:
        raise ValueError(f"path glob {glob!r}: whitespace and [] classes are not allowed")
    if "**" in glob:
        raise ValueError(f"path glob {glob!r}: use a single '*' (it already crosses '/')")
    parts = []
    for c in glob:
        parts.append(".*" if c == "*" else "[^/]" if c == "?" else re.escape(c))
    return re.compile("^" + "".join(parts) + "$", re.DOTALL)
