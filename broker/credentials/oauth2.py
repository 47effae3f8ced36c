"""``kind: oauth2_refresh`` and ``oauth2_client_credentials`` (DESIGN.md §11):
the token request to ``token_url`` (RFC 6749 §6 and §4.4) and its answer.
Caching, single flight and rotation live in :mod:`broker.credentials.minter`."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from broker.credentials.errors import CredentialError
from broker.credentials.http import MAX_ANSWER, Answer
from broker.policy.secret_rule import SecretRule
from broker.secret import SecretValue

DEFAULT_LIFETIME = 60.0
"""Seconds a token without ``expires_in`` is reused."""


@dataclass(frozen=True)
class Issued:
    access_token: SecretValue
    lifetime: float
    refresh_token: SecretValue | None
    """A rotated refresh token, when the endpoint sent one."""


def token_request(
    rule: SecretRule,
    client_id: SecretValue,
    client_secret: SecretValue,
    refresh_token: SecretValue | None,
) -> tuple[bytes, dict[str, str]]:
    """The form body and headers of the token request."""
    form: dict[str, str] = {}
    if rule.kind == "oauth2_refresh":
        assert refresh_token is not None
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token.reveal()}
    else:
        form = {"grant_type": "client_credentials"}
    if rule.scopes:
        form["scope"] = " ".join(rule.scopes)
    headers = {
        "content-type": "application/x-www-form-urlencoded",
        "accept": "application/json",
    }
    if rule.token_auth == "client_secret_post":
        form["client_id"] = client_id.reveal()
        form["client_secret"] = client_secret.reveal()
    else:  # client_secret_basic (the default): RFC 6749 §2.3.1 form-encodes both parts
        pair = f"{quote(client_id.reveal(), safe='')}:{quote(client_secret.reveal(), safe='')}"
        headers["authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    return urlencode(form).encode("ascii"), headers


def parse_answer(answer: Answer) -> Issued:
    """The issued token, or CredentialError ``token_unavailable`` (no value in its text)."""
    if answer.status != 200:
        raise CredentialError(
            "token_unavailable", f"the token endpoint answered HTTP {answer.status}"
        )
    if len(answer.body) > MAX_ANSWER:
        raise CredentialError("token_unavailable", "the token endpoint's answer is too large")
    try:
        data = json.loads(answer.body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise CredentialError("token_unavailable", "the token endpoint's answer is not JSON")
    token = data.get("access_token")
    if not isinstance(token, str) or not token or any(c in token for c in "\r\n\0"):
        raise CredentialError("token_unavailable", "the token endpoint sent no access_token")
    expires = data.get("expires_in", DEFAULT_LIFETIME)
    if isinstance(expires, str) and expires.isdigit():
        expires = int(expires)
    if isinstance(expires, bool) or not isinstance(expires, int | float) or expires <= 0:
        expires = DEFAULT_LIFETIME
    rotated = data.get("refresh_token")
    return Issued(
        SecretValue(token),
        float(min(expires, 86400 * 366)),
        SecretValue(rotated) if isinstance(rotated, str) and rotated else None,
    )
