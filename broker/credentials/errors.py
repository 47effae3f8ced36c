"""The one error type of :mod:`broker.credentials`: a reason code (DESIGN.md
§5) and a sentence for the agent; never a value in either."""

from __future__ import annotations


class CredentialError(Exception):
    def __init__(self, reason: str, detail: str, secret: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.secret = secret
