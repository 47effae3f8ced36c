"""RS256 JSON Web Tokens (RFC 7519) signed with a PEM private key, for the
kinds that authenticate with one: a GitHub App's JWT and a Google service
account's assertion (RFC 7523)."""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from broker.credentials.errors import CredentialError
from broker.secret import SecretValue


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign(
    claims: dict[str, Any], private_key_pem: SecretValue, kid: str | None = None
) -> SecretValue:
    """The compact JWT; CredentialError ``token_unavailable`` for a key that
    is not an RSA PEM key (the message never holds the key)."""
    try:
        key = serialization.load_pem_private_key(private_key_pem.reveal_bytes(), password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CredentialError("token_unavailable", "the private_key is not an RSA PEM key")
    header: dict[str, str] = {"alg": "RS256", "typ": "JWT"}
    if kid:
        header["kid"] = kid
    head = _b64url(json.dumps(header, separators=(",", ":")).encode())
    body = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    signature = key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return SecretValue(f"{head}.{body}.{_b64url(signature)}")
