"""What a policy is (DESIGN.md §3): frozen pydantic models with the rules
each field must follow. Loading a file and reporting its errors by file,
field path and rule: :mod:`broker.policy.load`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    field_validator,
    model_validator,
)

from broker.egress.rules import EgressRules, EntryError, host_key, parse_entry, parse_network
from broker.governance.config import (
    AdminConfig,
    ApprovalsConfig,
    Approve,
    SessionsConfig,
    StateConfig,
    parse_rate,
    policy_problems,
)
from broker.policy.backend_config import BackendConfig
from broker.policy.hosts import HostError, normalize_pattern

SECRET_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
TENANT_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_METHOD_RE = re.compile(r"^[A-Z]{1,16}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
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
TenantName = Annotated[str, StringConstraints(pattern=TENANT_NAME_RE.pattern)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


def _raise_all(problems: list[str]) -> None:
    if problems:
        raise ValueError("; ".join(problems))


class CaptureRule(_Model):
    """Tokens an upstream issues, handed to the agent as placeholders (DESIGN.md §11)."""

    hosts: tuple[str, ...] = Field(min_length=1)
    paths: tuple[str, ...] | None = None
    json_fields: tuple[str, ...] = ()
    cookies: tuple[str, ...] = ()
    ttl: float = Field(default=3600.0, gt=0, le=7 * 86400)

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return SecretRule._hosts(v)

    @field_validator("paths")
    @classmethod
    def _paths(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return SecretRule._paths(v)

    @model_validator(mode="after")
    def _names_something(self) -> CaptureRule:
        if not self.json_fields and not self.cookies:
            raise ValueError("a capture names json_fields, cookies or both")
        return self


class Egress(_Model):
    """Where a tenant may connect at all (DESIGN.md §12)."""

    mode: Literal["enforce", "report"] = "enforce"
    allow: tuple[str, ...] = ()
    """``host``, ``*.suffix``, ``host:port`` or ``[v6]:port``; no port means 443."""
    private: tuple[str, ...] = ()
    """CIDRs of private addresses the tenant may reach."""

    @field_validator("allow")
    @classmethod
    def _allow(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        problems = []
        for entry in v:
            try:
                parse_entry(entry)
            except EntryError as exc:
                problems.append(f"allow {entry!r}: {exc}")
        _raise_all(problems)
        return v

    @field_validator("private")
    @classmethod
    def _private(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        problems = []
        for cidr in v:
            try:
                parse_network(cidr)
            except EntryError as exc:
                problems.append(f"private {cidr!r}: {exc}")
        _raise_all(problems)
        return v


class Tenant(_Model):
    token_sha256: str
    secrets: dict[SecretName, SecretRule] = Field(default_factory=dict)
    on_mismatch: Literal["deny", "forward"] = "deny"
    capture: tuple[CaptureRule, ...] = ()
    egress: Egress | None = None
    _egress_rules: EgressRules = PrivateAttr()

    def model_post_init(self, _context: object) -> None:
        # Indexed once per load: a check costs the same with 10 or 1,000 entries.
        e = self.egress
        destinations = [
            (h if h.startswith("*.") else host_key(h), p)
            for r in self.secrets.values()
            for h in r.hosts
            for p in r.ports
        ]
        if e is not None:
            destinations += [parse_entry(a) for a in e.allow]
        networks = [parse_network(c) for c in e.private] if e is not None else []
        self._egress_rules = EgressRules.build(e.mode if e else None, destinations, networks)

    @property
    def egress_rules(self) -> EgressRules:
        return self._egress_rules

    @field_validator("token_sha256")
    @classmethod
    def _digest(cls, v: str) -> str:
        d = v.strip().lower().removeprefix("sha256:")
        if not _SHA256_RE.match(d):
            if v.strip().startswith("kb_"):  # never echo the value: it is a live token
                raise ValueError(
                    "this looks like a tenant token, not its hash: put the sha256: line "
                    "`keybroker token new` printed here (or the output of "
                    '`printf %s "$TOKEN" | sha256sum`), and give the token itself only '
                    "to the sandbox"
                )
            raise ValueError("token_sha256 must be 64 hex digits (optionally 'sha256:' first)")
        return d


class AuditConfig(_Model):
    path: Path
    hmac_key_env: str | None = None
    """Environment variable holding a key: the chain becomes an HMAC chain (extension)."""
    rotate_bytes: int | None = Field(default=None, gt=0)
    """Rotate the file when it grows past this size (extension)."""
    fingerprints: bool = True
    """With a key, allow records carry a keyed fingerprint of each value used (extension)."""


class Limits(_Model):
    """Size limits (extension)."""

    max_request_body: int = Field(default=32 * 1024 * 1024, gt=0)
    max_decoded_response: int = Field(default=64 * 1024 * 1024, gt=0)
    stream_threshold: int = Field(default=1024 * 1024, gt=0)
    """Responses larger than this, without a length, or SSE are scrubbed as a stream."""


class Policy(_Model):
    version: Literal[1]
    listen: str = "127.0.0.1:8080"
    certs_dir: Path = Path("../certs")
    upstream_ca: Path | None = None
    audit: AuditConfig
    backends: dict[str, BackendConfig] = Field(default_factory=dict)
    tenants: dict[TenantName, Tenant] = Field(default_factory=dict)
    limits: Limits = Limits()
    state: StateConfig | None = None
    approvals: ApprovalsConfig = ApprovalsConfig()
    admin: AdminConfig | None = None
    sessions: SessionsConfig | None = None
    preload_unknown: Literal["refuse", "serve"] = "refuse"
    """Extension (issue 12): while a secret's value could not be preloaded
    (its backend unreachable or misconfigured), requests to the destinations
    it may be sent to are refused (``backend_unavailable``), since their
    responses could echo a value the scrubber does not know; ``serve``
    forwards them anyway (availability over that risk)."""

    @model_validator(mode="after")
    def _governance(self) -> Policy:
        _raise_all(policy_problems(self))
        return self

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_listen(v)
        return v


def parse_listen(v: str) -> tuple[str, int]:
    host, sep, port = v.rpartition(":")
    # isascii(): str.isdigit() also accepts "²" and other digits int() rejects or misreads.
    ok_port = port.isascii() and port.isdigit()
    if not sep or not host or not ok_port or not 1 <= int(port) <= 65535:
        raise ValueError(f"listen {v!r} must be HOST:PORT with a port in 1-65535")
    return host.strip("[]"), int(port)


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
