"""What a capture rule takes out of a response (DESIGN.md §11), by rule and
not by Content-Type: the body is read as JSON (a dotted field name walks
nested objects: ``Credentials.SecretAccessKey``) and, when it is not JSON, as
a form-encoded token answer (GitHub's ``access_token=...&scope=...``).

Fail closed: a field the rule names that is *present* but cannot be captured
safely (not a string, too weak for the scrubber, multi-line, control or
non-ASCII bytes, several JSON documents...) raises :class:`CaptureRefused`,
and the response is refused rather than delivered with the raw token in it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qsl

from broker.scrub.strength import weakness

__all__ = ["MAX_BODY", "CaptureRefused", "body_values", "checked", "cookie_values"]

MAX_BODY = 1 << 20
"""A response a body-capturing rule matches is buffered up to this many
(decoded) bytes; a larger one is refused, never passed on."""


class CaptureRefused(ValueError):
    """A matching rule's field is present but its value cannot be captured.
    The message names the field, never the value."""


def checked(field: str, value: Any) -> str:
    """``value`` when it can be held and scrubbed; otherwise :class:`CaptureRefused`."""
    if not isinstance(value, str):
        raise CaptureRefused(f"field {field!r} is not a string")
    if any(not 0x21 <= ord(c) <= 0x7E for c in value):
        raise CaptureRefused(f"field {field!r} holds spaces, control or non-ASCII characters")
    why = weakness(value.encode())
    if why is not None:
        raise CaptureRefused(f"field {field!r}: {why}")
    return value


def _walk(data: Any, field: str) -> tuple[bool, Any]:
    """(present, value) of a dotted ``field`` in parsed JSON."""
    node = data
    for part in field.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _json(body: bytes) -> tuple[bool, Any]:
    try:
        return True, json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return False, None


def body_values(body: bytes, fields: Sequence[str]) -> list[str]:
    """The values of ``fields`` in ``body`` (JSON, else form-encoded)."""
    if not fields or not body.strip():
        return []
    if len(body) > MAX_BODY:
        raise CaptureRefused("the response is larger than a capture can read")
    ok, data = _json(body)
    if ok:
        out = []
        for f in fields:
            present, value = _walk(data, f)
            if present and value is not None:
                out.append(checked(f, value))
        return out
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    pairs = parse_qsl(text.strip(), keep_blank_values=True) if "=" in text else []
    wanted = set(fields)
    out = [checked(k, v) for k, v in pairs if k in wanted]
    if not out and any(f.encode() in body for f in fields):
        # A field name in a body neither JSON nor a form (XML, several JSON
        # documents, a form with odd bytes): its value cannot be located.
        raise CaptureRefused("a captured field's name is in a body that is neither JSON nor a form")
    return out


def cookie_values(set_cookies: Sequence[str], names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for header in set_cookies if names else ():
        try:
            jar = SimpleCookie(header)
        except CookieError:
            if any(n.encode() in header.encode("utf-8", "surrogateescape") for n in names):
                raise CaptureRefused(
                    "a Set-Cookie naming a captured cookie is unreadable"
                ) from None
            continue
        if not jar and any(n in header for n in names):
            raise CaptureRefused("a Set-Cookie naming a captured cookie is unreadable")
        out += [checked(n, m.value) for n, m in jar.items() if n in names and m.value]
    return out
