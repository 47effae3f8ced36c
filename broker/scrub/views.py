"""Spellings no list of patterns can hold (issue 12 item 6), found in decoded
*views* of the data and mapped back onto its bytes:

- JSON ``\\uXXXX`` escapes of *any subset* of a value's characters (a
  client's JSON parser rejoins them): the view decodes each ``\\u00XX``, and,
  when a value holds a non-ASCII character, every ``\\uXXXX`` and surrogate
  pair (to UTF-8). Its
  trigger leaves out Go's HTML escapes of ``<``, ``>``, ``&`` (Go writes them
  in every string; a JSON API in Go would build the view for every body): a
  value whose only escaped characters are among those three, some but not
  all of them, is the one subset not found;
- base64 wrapped at 64 or 76 columns (MIME, PEM): the view drops every line
  break that follows 64 or more base64 characters;
- UTF-16, little- or big-endian, at either byte alignment: the views are the
  even and the odd bytes; a match there is replaced by the placeholder in
  the same UTF-16 form, so the body stays valid UTF-16.

Each view is built only when its *trigger* occurs, and triggers are found by
the matcher in the same pass as the patterns (:data:`TRIGGERS`), so data
without them (the common case) pays nothing. A match in a view covers at
most as many bytes of the data as the value's all-escaped JSON spelling
(6 bytes a character), which the stream hold-back already covers.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable

__all__ = [
    "JSON",
    "JSON_WIDE",
    "TRIGGERS",
    "UTF16",
    "WRAP",
    "ViewMatch",
    "triggers",
    "view_matches",
    "wrapped_line_end",
]

TRIGGERS = (
    # Any ASCII \u00XX escape except Go's HTML ones (\u003c \u003e \u0026, which
    # Go writes everywhere and the spellings list already covers in values).
    rb"\\u00(?:[0-1][0-9a-fA-F]|2[0-57-9a-fA-F]|3[0-9abdfABDF]|[4-7][0-9a-fA-F])",
    rb"[A-Za-z0-9+/_-]{64}\r?\n[A-Za-z0-9+/_-]",
    rb"[\x20-\x7e]\x00[\x20-\x7e]\x00[\x20-\x7e]\x00[\x20-\x7e]\x00",
)
JSON, WRAP, UTF16, JSON_WIDE = 1, 2, 4, 8

WIDE_TRIGGER = (
    rb"\\u(?:00[89a-fA-F][0-9a-fA-F]|0[1-9a-fA-F][0-9a-fA-F]{2}|[1-9a-fA-F][0-9a-fA-F]{3})"
)
"""A JSON escape of a non-ASCII character (bit :data:`JSON_WIDE`). Only a
layer holding a value with a non-ASCII character asks for it
(:func:`triggers`): JSON written by Python escapes every non-ASCII
character, and a set of ASCII values has nothing to find in that view."""


def triggers(wide: bool) -> tuple[bytes, ...]:
    """The trigger expressions of a layer; ``wide``: some value is not ASCII."""
    return (*TRIGGERS, WIDE_TRIGGER) if wide else TRIGGERS


ViewMatch = tuple[int, int, int, str | None]
"""start and end in the data, the pattern index, and the codec of the
replacement (None: ASCII as is)."""
Find = Callable[[bytes], list[tuple[int, int, int]]]

_JSON_ASCII = re.compile(rb"\\u00([0-7][0-9a-fA-F])")
_JSON_ANY = re.compile(
    rb"\\u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})|\\u([0-9a-fA-F]{4})"
)


def _json_char(m: re.Match[bytes]) -> bytes:
    """One escape (a surrogate pair as one character) as UTF-8."""
    if m.group(1) is not None:
        code = 0x10000 + ((int(m.group(1), 16) - 0xD800) << 10) + (int(m.group(2), 16) - 0xDC00)
    else:
        code = int(m.group(3), 16)
    return chr(code).encode("utf-8", "surrogatepass")


_WRAP_BREAK = re.compile(rb"(?<=[A-Za-z0-9+/_-]{64})\r?\n(?=[A-Za-z0-9+/_-])")
_WRAPPED_LINE = re.compile(rb"[A-Za-z0-9+/_-]{64}\r?\n\Z")


class _Map:
    """Offsets of a view built by replacing spans of the data: literal runs
    map byte for byte, a replaced span maps whole."""

    def __init__(self) -> None:
        self.view_starts: list[int] = []
        self.segments: list[
            tuple[int, int, int, bool]
        ] = []  # view start, data start, data end, literal

    def add(self, view_start: int, data_start: int, data_end: int, literal: bool) -> None:
        self.view_starts.append(view_start)
        self.segments.append((view_start, data_start, data_end, literal))

    def start(self, v: int) -> int:
        vs, ds, _de, literal = self.segments[bisect.bisect_right(self.view_starts, v) - 1]
        return ds + (v - vs) if literal else ds

    def end(self, v: int) -> int:
        vs, ds, de, literal = self.segments[bisect.bisect_right(self.view_starts, v - 1) - 1]
        return ds + (v - vs) if literal else de


def _rewrite(
    data: bytes, pattern: re.Pattern[bytes], repl: Callable[[re.Match[bytes]], bytes]
) -> tuple[bytes, _Map]:
    pieces: list[bytes] = []
    offsets = _Map()
    pos = vpos = 0
    for m in pattern.finditer(data):
        a, b = m.span()
        if a > pos:
            offsets.add(vpos, pos, a, True)
            pieces.append(data[pos:a])
            vpos += a - pos
        out = repl(m)
        if out:
            offsets.add(vpos, a, b, False)
            pieces.append(out)
            vpos += len(out)
        pos = b
    offsets.add(vpos, pos, len(data), True)
    pieces.append(data[pos:])
    return b"".join(pieces), offsets


def _mapped(data: bytes, view: bytes, offsets: _Map, find: Find) -> list[ViewMatch]:
    out: list[ViewMatch] = []
    for start, end, index in find(view):
        out.append((offsets.start(start), offsets.end(end), index, None))
    return out


def _utf16(data: bytes, find: Find) -> list[ViewMatch]:
    out: list[ViewMatch] = []
    n = len(data)
    for k in (0, 1):
        for s, e, index in find(data[k::2]):
            a, b = 2 * s + k, 2 * e + k  # the characters' own bytes: a, a+2, ..., b-2
            if b - 1 < n and data[a + 1] == 0 and data[b - 1] == 0:
                out.append((a, b, index, "utf-16-le"))  # each character, then its NUL
            elif a >= 1 and data[a - 1] == 0:
                out.append((a - 1, b - 1, index, "utf-16-be"))  # NUL, then the character
    return out


def view_matches(data: bytes, mask: int, find: Find) -> list[ViewMatch]:
    """Matches of ``find`` in the views ``mask`` calls for, mapped onto ``data``."""
    out: list[ViewMatch] = []
    if mask & JSON_WIDE:  # every escape, ASCII ones included
        view, offsets = _rewrite(data, _JSON_ANY, _json_char)
        out += _mapped(data, view, offsets, find)
    elif mask & JSON:
        view, offsets = _rewrite(data, _JSON_ASCII, lambda m: bytes([int(m.group(1), 16)]))
        out += _mapped(data, view, offsets, find)
    if mask & WRAP:
        view, offsets = _rewrite(data, _WRAP_BREAK, lambda m: b"")
        out += _mapped(data, view, offsets, find)
    if mask & UTF16:
        out += _utf16(data, find)
    return out


def wrapped_line_end(data: bytes, end: int) -> bool:
    """``data[:end]`` ends with a line of 64+ base64 characters: wrapped base64
    may go on after the break, so a stream must not release up to it."""
    return _WRAPPED_LINE.search(data, max(0, end - 80), end) is not None
