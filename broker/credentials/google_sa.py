"""``kind: google_service_account`` (extension of DESIGN.md §11): a Google
service account's key signs an RS256 assertion (RFC 7523, as Google's
OAuth 2.0 server-to-server flow wants it: ``iss`` the account's e-mail,
``scope`` in the claims, ``aud`` the token URL, an hour at most, ``sub`` for
domain-wide delegation), exchanged at the token URL for an access token.
Caching and single flight: :mod:`broker.credentials.minter`."""

from __future__ import annotations

import time
from urllib.parse import urlencode

from broker.credentials import jwt_rs256
from broker.policy.secret_rule import SecretRule
from broker.secret import SecretValue

DEFAULT_TOKEN_URL = "https://oauth2.googleapis.com/token"
GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def token_url(rule: SecretRule) -> str:
    return rule.token_url or DEFAULT_TOKEN_URL


def assertion(
    rule: SecretRule, client_email: str, private_key: SecretValue, now: float | None = None
) -> SecretValue:
    t = int(now if now is not None else time.time())
    claims: dict[str, object] = {
        "iss": client_email,
        "aud": token_url(rule),
        "iat": t,
        "exp": t + 3600,
    }
    if rule.scopes:
        claims["scope"] = " ".join(rule.scopes)
    if rule.subject:
        claims["sub"] = rule.subject
    return jwt_rs256.sign(claims, private_key)


def token_request(signed: SecretValue) -> tuple[bytes, dict[str, str]]:
    body = urlencode({"grant_type": GRANT, "assertion": signed.reveal()}).encode("ascii")
    return body, {"content-type": "application/x-www-form-urlencoded", "accept": "application/json"}
