"""The placeholder grammar (DESIGN.md §4): ``<<secret:NAME>>``.

Clients percent-encode ``<``, ``>`` and ``:`` in URLs and forms, and some JSON
encoders write ``<`` as ``\\u003c``; all of those spellings are recognised in
every location. Anything that opens like a placeholder (any case, encoded or
not) but does not form a valid one is *malformed*.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import overload

NAME = r"[A-Za-z0-9_.-]{1,64}"
_LT = r"(?:<|%3[cC]|\\u003[cC])"
_GT = r"(?:>|%3[eE]|\\u003[eE])"
_COLON = r"(?::|%3[aA])"
_VALID = _LT + _LT + "secret" + _COLON + "(" + NAME + ")" + _GT + _GT
# ASCII-only case folding and whitespace: under Unicode rules "\u017fecret" (long s)
# would be an opener in str but not in bytes; look-alikes are just text.
_OPENER = r"(?ai:" + _LT + r"\s*" + _LT + r"\s*secret\s*" + _COLON + ")"

VALID_STR = re.compile(_VALID)
VALID_BYTES = re.compile(_VALID.encode())
OPENER_STR = re.compile(_OPENER)
OPENER_BYTES = re.compile(_OPENER.encode())

_HINT_STR = re.compile(r"(?i)secret")
_HINT_BYTES = re.compile(rb"(?i)secret")


def placeholder(name: str) -> str:
    return f"<<secret:{name}>>"


def might_contain(text: str | bytes) -> bool:
    """Fast check: False means there is certainly no placeholder or opener."""
    if isinstance(text, bytes):
        return b"ecret" in text or _HINT_BYTES.search(text) is not None
    return "ecret" in text or _HINT_STR.search(text) is not None


@overload
def find_names(text: str) -> tuple[list[str], bool]: ...
@overload
def find_names(text: bytes) -> tuple[list[str], bool]: ...
def find_names(text: str | bytes) -> tuple[list[str], bool]:
    """Names of the valid placeholders in ``text``, and whether an opener
    that does not form a valid placeholder is present (malformed)."""
    if not might_contain(text):
        return [], False
    if isinstance(text, bytes):
        names = [m.group(1).decode("ascii") for m in VALID_BYTES.finditer(text)]
        openers = len(OPENER_BYTES.findall(text))
    else:
        names = [m.group(1) for m in VALID_STR.finditer(text)]
        openers = len(OPENER_STR.findall(text))
    return names, openers > len(names)


def replace_str(text: str, repl: Callable[[str], str | None]) -> str:
    """Replace each valid placeholder whose ``repl(name)`` is not None."""

    def sub(m: re.Match[str]) -> str:
        r = repl(m.group(1))
        return m.group(0) if r is None else r

    return VALID_STR.sub(sub, text)


def replace_bytes(data: bytes, repl: Callable[[str], bytes | None]) -> bytes:
    def sub(m: re.Match[bytes]) -> bytes:
        r = repl(m.group(1).decode("ascii"))
        return m.group(0) if r is None else r

    return VALID_BYTES.sub(sub, data)
