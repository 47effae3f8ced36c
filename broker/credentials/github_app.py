"""``kind: github_app`` (DESIGN.md §11): an RS256 JWT for the app, exchanged
at ``{api_url}/app/installations/{installation_id}/access_tokens`` for an
installation token. Caching and single flight: :mod:`broker.credentials.minter`."""

from __future__ import annotations

import json
import time
from datetime import datetime

from broker.credentials import jwt_rs256
from broker.credentials.errors import CredentialError
from broker.credentials.http import MAX_ANSWER, Answer
from broker.policy.secret_rule import SecretRule
from broker.secret import SecretValue

DEFAULT_API = "https://api.github.com"


def app_jwt(app_id: str, private_key_pem: SecretValue, now: float | None = None) -> SecretValue:
    """GitHub's app JWT: issued a minute in the past (clock drift), valid 9 minutes."""
    t = int(now if now is not None else time.time())
    return jwt_rs256.sign({"iat": t - 60, "exp": t + 540, "iss": app_id}, private_key_pem)


def token_url(rule: SecretRule, installation_id: str) -> str:
    if not installation_id.isascii() or not installation_id.isdigit():
        raise CredentialError("token_unavailable", "the app's installation_id is not a number")
    base = (rule.api_url or DEFAULT_API).rstrip("/")
    return f"{base}/app/installations/{installation_id}/access_tokens"


def token_request(jwt: SecretValue) -> tuple[bytes, dict[str, str]]:
    return b"", {
        "authorization": f"Bearer {jwt.reveal()}",
        "accept": "application/vnd.github+json",
        "x-github-api-version": "2022-11-28",
        "user-agent": "keybroker",
    }


def parse_answer(answer: Answer, now: float | None = None) -> tuple[SecretValue, float]:
    """The installation token and its remaining lifetime in seconds."""
    if answer.status not in (200, 201):
        raise CredentialError(
            "token_unavailable", f"GitHub answered HTTP {answer.status} for an installation token"
        )
    try:
        data = json.loads(answer.body) if len(answer.body) <= MAX_ANSWER else None
    except ValueError:
        data = None
    token = data.get("token") if isinstance(data, dict) else None
    expires_at = data.get("expires_at") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token or any(c in token for c in "\r\n\0"):
        raise CredentialError("token_unavailable", "GitHub's answer holds no installation token")
    try:
        deadline = datetime.fromisoformat(str(expires_at).replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise CredentialError(
            "token_unavailable", "GitHub's answer has no valid expires_at"
        ) from None
    lifetime = deadline - (now if now is not None else time.time())
    if lifetime <= 0:
        raise CredentialError("token_unavailable", "GitHub issued a token that has already expired")
    return SecretValue(token), lifetime
