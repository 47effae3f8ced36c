"""Which KV fields each credential kind reads, and which of them are secret
(scrubbed from responses and refused as raw egress). Identifiers such as a
GitHub App id are not: scrubbing "4242" would rewrite unrelated bytes."""

from __future__ import annotations

from broker.policy.secret_rule import SecretRule

_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # kind: (fields read, of which secret)
    "aws_sigv4": (
        ("access_key_id", "secret_access_key", "session_token"),
        ("access_key_id", "secret_access_key", "session_token"),
    ),
    "oauth2_refresh": (
        ("client_id", "client_secret", "refresh_token"),
        ("client_secret", "refresh_token"),
    ),
    "oauth2_client_credentials": (("client_id", "client_secret"), ("client_secret",)),
    "github_app": (("app_id", "private_key", "installation_id"), ("private_key",)),
    "google_service_account": (("client_email", "private_key"), ("private_key",)),
}


def fields_of(rule: SecretRule) -> tuple[str, ...]:
    """The KV fields a secret of this kind reads (``static``: its ``field``)."""
    return _FIELDS[rule.kind][0] if rule.kind in _FIELDS else (rule.field,)


def secret_fields(rule: SecretRule) -> tuple[str, ...]:
    """The fields whose values are secret values (for scrubbing and preloading)."""
    return _FIELDS[rule.kind][1] if rule.kind in _FIELDS else (rule.field,)
