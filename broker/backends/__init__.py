"""Secret backends behind one Protocol (DESIGN.md §3, §10)."""

from broker.backends.base import (
    Backend,
    BackendError,
    SecretNotFound,
    build_backends,
    cache_ttls,
)

__all__ = ["Backend", "BackendError", "SecretNotFound", "build_backends", "cache_ttls"]
