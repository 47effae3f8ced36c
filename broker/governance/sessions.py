"""Short-lived session tokens (DESIGN.md §13): what a sandbox holds instead
of the long-lived tenant token.

``kbs1.<payload>.<mac>``: the payload (base64url JSON) names the tenant,
the expiry and a random id; the MAC is HMAC-SHA256 with the key from
``sessions.key_env`` over the payload *and the tenant's current
token_sha256*, so a broker verifies a token without a lookup, and rotating
a tenant's token ends all of its sessions. A session is accepted as that
tenant's proxy password until it expires or is revoked; revocations live in
the state store, which every broker re-reads several times a second."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

PREFIX = "kbs1."
_DOMAIN = b"keybroker-session-v1\x00"
STALE = 2.0
"""Seconds without a fresh revocation list before session tokens are refused (503)."""


@dataclass(frozen=True)
class Session:
    id: str
    tenant: str
    expires: int

    def __repr__(self) -> str:  # the id is what revocation needs; never the token
        return f"Session(id={self.id!r}, tenant={self.tenant!r}, expires={self.expires})"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, tenant_digest: str, payload: str) -> bytes:
    msg = _DOMAIN + tenant_digest.encode("ascii") + b"\x00" + payload.encode("ascii")
    return hmac.new(key, msg, hashlib.sha256).digest()


def mint(key: bytes, tenant: str, tenant_digest: str, ttl: int, now: float | None = None) -> str:
    """A new session token for ``tenant``, valid ``ttl`` seconds."""
    if not key:
        raise ValueError("the session key is empty")
    expires = int(now if now is not None else time.time()) + int(ttl)
    body = {"t": tenant, "e": expires, "i": secrets.token_hex(12)}
    payload = _b64(json.dumps(body, separators=(",", ":")).encode("utf-8"))
    return f"{PREFIX}{payload}.{_b64(_mac(key, tenant_digest, payload))}"


def parse(token: str) -> Session | None:
    """The claims of a well-formed token, unverified (revocation needs only the id)."""
    if not token.startswith(PREFIX) or len(token) > 512:
        return None
    payload, sep, _ = token[len(PREFIX) :].partition(".")
    if not sep:
        return None
    try:
        body = json.loads(_unb64(payload))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict):
        return None
    t, e, i = body.get("t"), body.get("e"), body.get("i")
    if not (isinstance(t, str) and isinstance(e, int) and isinstance(i, str)):
        return None
    return Session(i, t, e)


def verify(
    key: bytes, token: str, tenant: str, tenant_digest: str, now: float | None = None
) -> Session | None:
    """The session when the token is genuine, for ``tenant``, bound to its
    current token, and unexpired; None otherwise (revocation is checked apart)."""
    session = parse(token)
    if session is None or not key:
        return None
    payload, _, mac = token[len(PREFIX) :].partition(".")
    try:
        given = _unb64(mac)
    except (binascii.Error, ValueError):
        return None
    if not hmac.compare_digest(given, _mac(key, tenant_digest, payload)):
        return None
    if session.tenant != tenant:
        return None
    if session.expires <= (now if now is not None else time.time()):
        return None
    return session


def identity(session: Session, tenant_digest: str) -> str:
    """What a connection is bound to (in place of the token's digest)."""
    return f"session:{session.id}:{session.expires}:{tenant_digest}"


def from_identity(digest: str) -> tuple[str, int, str] | None:
    """(id, expires, tenant digest) of a session identity; None for a tenant token."""
    if not digest.startswith("session:"):
        return None
    _, sid, exp, tenant_digest = digest.split(":", 3)
    return sid, int(exp), tenant_digest
