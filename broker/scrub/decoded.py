"""What an upstream may decode a request field to (issue 12 item 5).

The raw-value egress check must look at what the upstream will *read*, not
only at the bytes as written: a value with one character escaped (``%6b…``
in a query, path or form body, ``\\u006b…`` in JSON) is the same value to
the server. :func:`views` returns the bytes as written and every distinct
result of percent-decoding (with and without ``+`` as a space), JSON string
unescaping (``\\uXXXX`` of any subset of characters, surrogate pairs,
``\\/``, ``\\n``...) and their combinations, up to :data:`DEPTH` rounds
(servers and frameworks that decode twice). Each decoder only runs when its
escape character is present, so a plain field costs one ``in`` test per
decoder.

Base64, hex and the other spellings the scrubber knows need no view: the
scrubber's pattern set already holds them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import unquote_to_bytes

__all__ = ["DEPTH", "MAX_VIEWS", "json_unescape", "views"]

DEPTH = 3
"""Rounds of decoding applied to each view."""

MAX_VIEWS = 64
"""Bound on the views of one field (three decoders, three rounds: at most 40
are possible, so it is never reached)."""

_JSON_ESCAPE = re.compile(
    rb"\\u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|\\u([0-9a-fA-F]{4})"
    rb"|\\([\"\\/bfnrt])"
)
_SIMPLE = {
    b'"': b'"',
    b"\\": b"\\",
    b"/": b"/",
    b"b": b"\b",
    b"f": b"\f",
    b"n": b"\n",
    b"r": b"\r",
    b"t": b"\t",
}


def _json_sub(m: re.Match[bytes]) -> bytes:
    if m.group(1) is not None:
        high, low = int(m.group(1), 16), int(m.group(2), 16)
        code = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
        return chr(code).encode("utf-8")
    if m.group(3) is not None:
        return chr(int(m.group(3), 16)).encode("utf-8", "surrogatepass")
    return _SIMPLE[m.group(4)]


def json_unescape(data: bytes) -> bytes:
    """``data`` with every JSON string escape decoded (UTF-8 out); bytes that
    are not escapes are kept as they are."""
    return _JSON_ESCAPE.sub(_json_sub, data)


def _percent(data: bytes) -> bytes | None:
    return unquote_to_bytes(data) if b"%" in data else None


def _form(data: bytes) -> bytes | None:
    return unquote_to_bytes(data.replace(b"+", b" ")) if b"+" in data else None


def _json(data: bytes) -> bytes | None:
    return json_unescape(data) if b"\\" in data else None


_DECODERS: tuple[Callable[[bytes], bytes | None], ...] = (_percent, _form, _json)


def views(data: bytes) -> list[bytes]:
    """``data`` first, then each distinct decoding of it (at most
    :data:`MAX_VIEWS` in all)."""
    out = [data]
    seen = {data}
    frontier = [data]
    for _ in range(DEPTH):
        next_frontier: list[bytes] = []
        for view in frontier:
            for decode in _DECODERS:
                decoded = decode(view)
                if decoded is None or decoded in seen:
                    continue
                if len(out) >= MAX_VIEWS:
                    return out
                seen.add(decoded)
                out.append(decoded)
                next_frontier.append(decoded)
        if not next_frontier:
            break
        frontier = next_frontier
    return out


def scrub_decoded(data: bytes, scrub: Callable[[bytes], tuple[bytes, int]]) -> bytes | None:
    """For the audit: ``data`` as the upstream may decode it, scrubbed, when a
    decoding holds a known value that ``scrub`` does not find in ``data``
    itself (``%6b…`` in a path); None when no decoding does. The deepest
    such decoding is written; should a value still show in a decoding of
    that, the whole text becomes a name-free marker."""
    held = [view for view in views(data)[1:] if scrub(view)[1]]
    if not held:
        return None
    out = scrub(held[-1])[0]
    return out if not any(scrub(view)[1] for view in views(out)) else b"<<redacted>>"
