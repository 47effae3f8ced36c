"""A secret value that never shows itself in repr, str, logs or exceptions."""

from __future__ import annotations

import hmac


class SecretValue:
    """Holds a resolved secret. ``repr``/``str``/``format`` are redacted.

    Use :meth:`reveal` only at the point where the value goes on the wire.
    """

    __slots__ = ("_value", "version")

    def __init__(self, value: str, version: str | None = None) -> None:
        if not isinstance(value, str):
            raise TypeError("SecretValue holds a str")
        self._value = value
        self.version = version

    def reveal(self) -> str:
        return self._value

    def reveal_bytes(self) -> bytes:
        return self._value.encode("utf-8")

    def __repr__(self) -> str:
        return "SecretValue(<redacted>)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretValue):
            return NotImplemented
        return hmac.compare_digest(self.reveal_bytes(), other.reveal_bytes())

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("SecretValue cannot be pickled")

    def __len__(self) -> int:
        return len(self._value)
