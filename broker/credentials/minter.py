"""Credentials that are not a static string (DESIGN.md §11), for the engine:
minted bearer tokens (OAuth2, GitHub App) written where the placeholder is,
and AWS keys for re-signing. Every value read or minted goes through
``remember`` (the scrubber) before it is used; token requests are audited
through ``audit`` (never a value)."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Hashable
from functools import lru_cache
from typing import Protocol
from urllib.parse import urlsplit

from broker.backends.base import BackendError
from broker.credentials import github_app, google_sa, oauth2
from broker.credentials.aws_sigv4 import AwsKeys
from broker.credentials.errors import CredentialError
from broker.credentials.fields import fields_of, secret_fields
from broker.credentials.http import Answer, post
from broker.credentials.ledger import MintLedger
from broker.credentials.tokens import Token, TokenCache
from broker.policy.secret_rule import SecretRule
from broker.scrub.strength import weakness
from broker.secret import SecretValue

Remember = Callable[[str, str, SecretValue], None]
MINTED = ("oauth2_refresh", "oauth2_client_credentials", "github_app", "google_service_account")


class TokenAudit(Protocol):
    def __call__(
        self,
        tenant: str,
        name: str,
        url: str,
        status: int | None,
        ok: bool,
        started: float,
        record_id: str | None = None,
    ) -> None: ...


TokenSent = Callable[[str, str, str], "str | None"]
"""(tenant, name, url) -> the id of the write-ahead ``sent`` record, None when unwritable."""


class Resolve(Protocol):
    async def aresolve(
        self, tenant: str, secret_name: str, rule: SecretRule, *, quiet: bool = False
    ) -> SecretValue: ...


@lru_cache(maxsize=4096)
def field_rule(rule: SecretRule, field: str) -> SecretRule:
    """The same secret read at another KV field (one rule holds several)."""
    return rule.model_copy(update={"field": field})


def _protectable(value: SecretValue, name: str) -> None:
    """A minted token too weak to scrub is never used (fail closed)."""
    if weakness(value.reveal_bytes()) is not None:
        raise CredentialError(
            "token_unavailable", "the issuer's token is too weak to keep out of responses", name
        )


def _key(tenant: str, name: str, rule: SecretRule) -> Hashable:
    return (tenant, name, rule)


class Minter:
    def __init__(
        self,
        *,
        remember: Remember,
        trust: Callable[[], ssl.SSLContext],
        audit: TokenAudit,
        sent: TokenSent | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sent = sent
        self.ledger: MintLedger | None = None
        """Set by the engine: where minted tokens are kept for other processes."""
        self._remember = remember
        self._trust = trust
        self._audit = audit
        self._clock = clock
        self.tokens = TokenCache(clock)
        self._rotated: dict[Hashable, tuple[SecretValue, SecretValue]] = {}
        """(tenant, name, rule) -> (the stored refresh token it replaced, the rotated one)."""

    async def _field(
        self, resolver: Resolve, tenant: str, name: str, rule: SecretRule, field: str
    ) -> SecretValue:
        quiet = field not in secret_fields(rule)
        return await resolver.aresolve(tenant, name, field_rule(rule, field), quiet=quiet)

    # -- AWS -----------------------------------------------------------------------
    async def aws_keys(
        self, resolver: Resolve, tenant: str, name: str, rule: SecretRule
    ) -> AwsKeys:
        key_id = await self._field(resolver, tenant, name, rule, "access_key_id")
        secret = await self._field(resolver, tenant, name, rule, "secret_access_key")
        try:
            token: SecretValue | None = await self._field(
                resolver, tenant, name, rule, "session_token"
            )
        except BackendError as exc:
            if exc.reason != "secret_not_found":
                raise
            token = None
        return AwsKeys(key_id, secret, token)

    # -- minted bearer tokens ----------------------------------------------------------
    async def token(
        self, resolver: Resolve, tenant: str, name: str, rule: SecretRule
    ) -> SecretValue:
        """The current token for an oauth2_* or github_app secret, minted when
        the cache has none. Raises CredentialError or BackendError."""

        async def fetch() -> Token:
            if rule.kind == "github_app":
                return await self._github(resolver, tenant, name, rule)
            if rule.kind == "google_service_account":
                return await self._google(resolver, tenant, name, rule)
            return await self._oauth2(resolver, tenant, name, rule)

        async def fetch_and_keep() -> Token:
            token = await fetch()
            if self.ledger is not None:  # known to every process, now and after a restart
                try:
                    self.ledger.record(tenant, name, token.value, token.lifetime)
                except OSError as exc:
                    raise CredentialError(
                        "token_unavailable",
                        f"the minted token could not be recorded ({type(exc).__name__})",
                        name,
                    ) from None
            return token

        return await self.tokens.get(_key(tenant, name, rule), fetch_and_keep)

    def rejected(self, tenant: str, name: str, rule: SecretRule) -> None:
        """The upstream answered 401 to a request carrying this token."""
        self.tokens.drop(_key(tenant, name, rule))

    async def _oauth2(self, resolver: Resolve, tenant: str, name: str, rule: SecretRule) -> Token:
        fields = fields_of(rule)
        got = {f: await self._field(resolver, tenant, name, rule, f) for f in fields}
        key = _key(tenant, name, rule)
        stored = got.get("refresh_token")
        rotated = self._rotated.get(key)
        # A rotated refresh token wins until the store holds a new one.
        refresh = rotated[1] if rotated and stored is not None and rotated[0] == stored else stored
        body, headers = oauth2.token_request(rule, got["client_id"], got["client_secret"], refresh)
        answer = await self._post(tenant, name, str(rule.token_url), body, headers)
        issued = oauth2.parse_answer(answer)
        _protectable(issued.access_token, name)
        self._remember(tenant, name, issued.access_token)
        if issued.refresh_token is not None and stored is not None:
            self._remember(tenant, name, issued.refresh_token)
            self._rotated[key] = (stored, issued.refresh_token)
        return Token(issued.access_token, issued.lifetime)

    async def _google(self, resolver: Resolve, tenant: str, name: str, rule: SecretRule) -> Token:
        got = {f: await self._field(resolver, tenant, name, rule, f) for f in fields_of(rule)}
        signed = google_sa.assertion(rule, got["client_email"].reveal().strip(), got["private_key"])
        self._remember(tenant, name, signed)
        body, headers = google_sa.token_request(signed)
        answer = await self._post(tenant, name, google_sa.token_url(rule), body, headers)
        issued = oauth2.parse_answer(answer)
        _protectable(issued.access_token, name)
        self._remember(tenant, name, issued.access_token)
        return Token(issued.access_token, issued.lifetime)

    async def _github(self, resolver: Resolve, tenant: str, name: str, rule: SecretRule) -> Token:
        got = {f: await self._field(resolver, tenant, name, rule, f) for f in fields_of(rule)}
        url = github_app.token_url(rule, got["installation_id"].reveal().strip())
        jwt = github_app.app_jwt(got["app_id"].reveal().strip(), got["private_key"])
        self._remember(tenant, name, jwt)
        body, headers = github_app.token_request(jwt)
        answer = await self._post(tenant, name, url, body, headers)
        value, lifetime = github_app.parse_answer(answer)
        _protectable(value, name)
        self._remember(tenant, name, value)
        return Token(value, lifetime)

    async def _post(
        self, tenant: str, name: str, url: str, body: bytes, headers: dict[str, str]
    ) -> Answer:
        started = self._clock()
        record_id = self._sent(tenant, name, url) if self._sent is not None else None
        if self._sent is not None and record_id is None:  # write-ahead, or nothing leaves
            raise CredentialError(
                "audit_unavailable", "the token request could not be audited", name
            )
        try:
            answer = await post(url, body, headers, self._trust())
        except (OSError, ValueError) as exc:
            self._audit(tenant, name, url, None, False, started, record_id)
            host = urlsplit(url).hostname or "?"
            raise CredentialError(
                "token_unavailable",
                f"the token endpoint at {host} could not be reached ({type(exc).__name__})",
                name,
            ) from None
        ok = answer.status in (200, 201)
        self._audit(tenant, name, url, answer.status, ok, started, record_id)
        return answer
