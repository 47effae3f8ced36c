"""Builders the unit tests share (plain functions: import them from here)."""

from __future__ import annotations

import base64


def basic(user: str, token: str, scheme: str = "Basic") -> str:
    """A ``Proxy-Authorization``/``Authorization`` value for ``user:token``."""
    return f"{scheme} " + base64.b64encode(f"{user}:{token}".encode()).decode()
