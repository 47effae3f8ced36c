"""The JSON side of :mod:`broker.scrub.deltas`: telling an event that cannot
be read from one that is no LLM delta, and writing a changed event again."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from broker.scrub.delta_formats import Path
from broker.scrub.sse import Event, rebuild

__all__ = ["MARKERS", "json_line", "marked", "rewrite"]

MARKERS = (b'"delta"', b'"choices"', b'"candidates"', b'"content_block')
"""An unparsable event holding one of these is taken for a delta event."""


def marked(data: bytes) -> bool:
    """An unparsable event that names a delta format's key, spelled plain or
    with JSON escapes (``"\\u0063hoices"``)."""
    if any(m in data for m in MARKERS):
        return True
    if b"\\u" not in data.lower():
        return False
    text = data.decode("unicode_escape", "replace").encode("utf-8", "replace")
    return any(m in text for m in MARKERS)


def json_line(line: bytes) -> bool:
    """A line (no SSE field) that parses as a JSON object or list: a client
    that reads lines, not events (google-genai), would read it."""
    text = line.strip()
    if not text.startswith((b"{", b"[")):
        return False
    try:
        json.loads(text.decode("utf-8", "replace"))
    except RecursionError:
        return True
    except ValueError:
        return False
    return True


def rewrite(event: Event, obj: Any, changes: Iterable[tuple[Path, bytes]]) -> bytes:
    """``event`` written again with the string at each path of ``obj`` changed."""
    for path, raw in changes:
        target = obj
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = _text(raw)
    # ASCII only: no U+2028 / U+2029 / U+0085 a line-based reader would split on,
    # and a lone surrogate escaped, as the upstream must have sent it.
    return rebuild(event, json.dumps(obj, separators=(",", ":")).encode())


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:  # a value cut inside a character: what is left of it
        return raw.decode("utf-8", "replace")
