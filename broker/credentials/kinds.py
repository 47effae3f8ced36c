"""The engine's one handle on the credential kinds (DESIGN.md §11): the
minter (OAuth2, GitHub App, AWS keys), the captured-token store, the trust
for token requests and their audit records. :class:`broker.engine.Engine`
calls it at a few hook points and the static path pays a ``kind`` compare."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from broker.credentials.apply import sign_aws
from broker.credentials.capture import CaptureStore, matching
from broker.credentials.http import trust_context
from broker.credentials.ledger import FILE_NAME as LEDGER_FILE
from broker.credentials.ledger import MintLedger
from broker.credentials.minter import MINTED, Minter, Remember, Resolve
from broker.policy.schema import CaptureRule, Policy
from broker.policy.secret_rule import SecretRule
from broker.request.decision import Decision, Destination, Reason, failure
from broker.request.locations import RequestParts
from broker.secret import SecretValue

log = logging.getLogger("keybroker")

Record = Callable[..., None]
"""``Engine.record`` (keyword arguments ``decision, dest, status, scrubbed, started``)."""


RecordSent = Callable[[Decision, Destination, Mapping[str, Any]], "str | None"]
"""``Engine._record_sent``: the write-ahead ``sent`` record; its id, or None when unwritable."""


class CredentialKinds:
    def __init__(
        self,
        *,
        remember: Remember,
        record: Record,
        policy: Callable[[], Policy],
        record_sent: RecordSent | None = None,
    ) -> None:
        self._record = record
        self._record_sent = record_sent
        self._policy = policy
        self._trust_cache: tuple[Path | None, ssl.SSLContext] | None = None
        self.captures = CaptureStore()
        self.minter = Minter(
            remember=remember,
            trust=self._trust,
            audit=self._token_record,
            sent=self._token_sent if record_sent is not None else None,
        )

    def keep_minted(self, certs_dir: Path, remember: Remember, *, compact: bool) -> None:
        """Minted tokens in a ledger beside the CA (:mod:`broker.credentials.ledger`):
        those still live from before a restart or from another worker are
        registered with the scrubber now, later ones as they appear."""
        ledger = MintLedger(certs_dir / LEDGER_FILE, remember)
        n = ledger.load(compact=compact)
        if n:
            log.info("keybroker: %d minted token(s) of earlier processes are scrubbed", n)
        self.minter.ledger = ledger

    def sync_minted(self) -> None:
        if self.minter.ledger is not None:
            self.minter.ledger.sync()

    # -- hooks on the request path -----------------------------------------------------
    async def token(
        self, resolver: Resolve, tenant: str, name: str, rule: SecretRule
    ) -> SecretValue:
        """The value of a minted kind (oauth2_*, github_app)."""
        return await self.minter.token(resolver, tenant, name, rule)

    async def sign(
        self,
        resolver: Resolve,
        tenant: str,
        dest: Destination,
        parts: RequestParts,
        names: list[str],
        rules: dict[str, SecretRule],
    ) -> RequestParts:
        """``parts`` re-signed for its aws_sigv4 secret."""
        return await sign_aws(self.minter, resolver, tenant, dest, parts, names, rules)

    # -- hooks on the response path ------------------------------------------------------
    def rejected(self, decision: Decision) -> None:
        """An upstream 401: drop the minted tokens this request carried."""
        t = self._policy().tenants.get(decision.tenant or "")
        for name in decision.secrets:
            rule = t.secrets.get(name) if t else None
            if rule is not None and rule.kind in MINTED:
                self.minter.rejected(str(decision.tenant), name, rule)

    def capture_rules(self, tenant: str | None, dest: Destination | None) -> list[CaptureRule]:
        """The tenant's capture rules that apply to a response from ``dest``."""
        t = self._policy().tenants.get(tenant) if tenant is not None else None
        if t is None or not t.capture or dest is None:
            return []
        return matching(t.capture, dest)

    def capture(
        self,
        tenant: str | None,
        dest: Destination | None,
        rules: list[CaptureRule],
        *,
        set_cookies: list[str] | None = None,
        body: bytes | None = None,
    ) -> None:
        """Tokens this response issues, per ``rules`` (from :meth:`capture_rules`):
        held for scrubbing under fresh placeholders before the response is
        scrubbed. Raises ``CaptureRefused`` (the response must be refused)."""
        if not rules or dest is None or tenant is None:
            return
        self.captures.capture(tenant, rules, dest, set_cookies=set_cookies or (), body=body)

    # -- the broker's own token requests ----------------------------------------------------
    def _trust(self) -> ssl.SSLContext:
        """Token requests trust what upstream connections trust."""
        ca = self._policy().upstream_ca
        if self._trust_cache is None or self._trust_cache[0] != ca:
            self._trust_cache = (ca, trust_context(ca))
        return self._trust_cache[1]

    def _token_sent(self, tenant: str, name: str, url: str) -> str | None:
        """Write-ahead (DESIGN.md §6) for the broker's own token request: the
        ``sent`` record before the client secret, refresh token or JWT leaves."""
        assert self._record_sent is not None
        decision = Decision(verdict="allow", tenant=tenant, secrets=(name,))
        return self._record_sent(decision, _token_dest(url), {})

    def _token_record(
        self,
        tenant: str,
        name: str,
        url: str,
        status: int | None,
        ok: bool,
        started: float,
        record_id: str | None = None,
    ) -> None:
        """The ``done`` record of a token request (no value)."""
        decision = (
            Decision(verdict="allow", tenant=tenant, secrets=(name,))
            if ok
            else failure(Reason.TOKEN_UNAVAILABLE, tenant, name, (name,))
        )
        self._record(
            decision=decision,
            dest=_token_dest(url),
            status=status,
            scrubbed=0,
            started=started,
            record_id=record_id,
        )


def _token_dest(url: str) -> Destination:
    u = urlsplit(url)
    return Destination.of("https", u.hostname or "", u.port or 443, "POST", u.path)


def without(decision: Decision, captured: Mapping[str, Any]) -> Decision:
    """The decision as governance sees it: captured tokens are not policy secrets."""
    return replace(decision, secrets=tuple(n for n in decision.secrets if n not in captured))
