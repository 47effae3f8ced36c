"""Where placeholders sit in a request, and how a value is written there
(DESIGN.md §4): ``header:<name>`` (with Basic credentials decoded and
re-encoded), ``query`` and ``path`` (percent-encoded), ``body`` (escaped for
its content type)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from urllib.parse import quote, quote_plus

from broker.request import placeholders
from broker.request.auth import basic_payload

Header = tuple[str, str]
# Characters a path segment may hold unencoded (RFC 3986 pchar minus "/").
_PATH_SAFE = "-._~!$&'()*+,;=:@"


@dataclass(frozen=True)
class RequestParts:
    """The placeholder-bearing pieces of a request, as plain values."""

    headers: tuple[Header, ...]
    path: str
    """The path without the query."""
    query: str
    """The raw query string, without ``?``."""
    body: bytes
    """The decoded body (Content-Encoding removed)."""
    content_type: str = ""
    trailers: tuple[Header, ...] = ()
    """Request trailer fields (HTTP/1 chunked or HTTP/2). A trailer is a
    header field sent after the body: its location is ``header:<name>``."""


@dataclass(frozen=True)
class Occurrence:
    name: str
    location: str


@dataclass(frozen=True)
class ScanResult:
    occurrences: tuple[Occurrence, ...]
    malformed: str | None
    """The first location holding a malformed placeholder, if any."""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(o.name for o in self.occurrences))


class SubstitutionError(ValueError):
    """A value cannot be written in the requested location (no value in the message)."""


def _header_texts(name: str, value: str) -> list[str]:
    texts = [value]
    if name == "authorization":
        decoded = basic_payload(value)
        if decoded is not None:
            texts.append(decoded)
    return texts


def body_kind(content_type: str) -> str:
    ct = content_type.split(";", 1)[0].strip().lower()
    if ct == "application/json" or ct.endswith("+json"):
        return "json"
    if ct == "application/x-www-form-urlencoded":
        return "form"
    return "raw"


def scan(parts: RequestParts) -> ScanResult:
    found: list[Occurrence] = []
    malformed: str | None = None

    def take(location: str, text: str | bytes) -> None:
        nonlocal malformed
        names, bad = placeholders.find_names(text)
        found.extend(Occurrence(n, location) for n in names)
        if bad and malformed is None:
            malformed = location

    for name, value in (*parts.headers, *parts.trailers):
        lname = name.lower()
        for text in _header_texts(lname, value):
            take(f"header:{lname}", text)
    take("path", parts.path)
    take("query", parts.query)
    if parts.body:
        take("body", parts.body)
    return ScanResult(tuple(dict.fromkeys(found)), malformed)


Approve = Callable[[str, str], str | None]
"""``approve(name, location)`` returns the value to write, or None to leave
the placeholder literal."""


def _header_value(lname: str, value: str, approve: Approve) -> str:
    if lname != "authorization" and not placeholders.might_contain(value):
        return value  # the common case: nothing to write
    loc = f"header:{lname}"

    def write(name: str) -> str | None:
        v = approve(name, loc)
        if v is not None and any(c in v for c in "\r\n\0"):
            raise SubstitutionError(f"the value of {name!r} holds a line break or NUL")
        return v

    decoded = basic_payload(value) if lname == "authorization" else None
    if decoded is not None and placeholders.find_names(decoded)[0]:
        scheme = value.strip().partition(" ")[0]
        new = placeholders.replace_str(decoded, write)
        return f"{scheme} {base64.b64encode(new.encode('utf-8')).decode('ascii')}"
    return placeholders.replace_str(value, write)


def _escape_body(value: str, kind: str) -> bytes:
    if kind == "json":
        return json.dumps(value)[1:-1].encode("ascii")
    if kind == "form":
        return quote_plus(value, safe="").encode("ascii")
    return value.encode("utf-8")


def substitute(parts: RequestParts, approve: Approve) -> RequestParts:
    """Write approved values into every location; others stay literal."""
    headers = tuple(
        (name, _header_value(name.lower(), value, approve)) for name, value in parts.headers
    )
    trailers = tuple(
        (name, _header_value(name.lower(), value, approve)) for name, value in parts.trailers
    )

    def encoded(location: str, safe: str) -> Callable[[str], str | None]:
        def write(name: str) -> str | None:
            v = approve(name, location)
            return None if v is None else quote(v, safe=safe)

        return write

    path = placeholders.replace_str(parts.path, encoded("path", _PATH_SAFE))
    query = placeholders.replace_str(parts.query, encoded("query", ""))
    body = parts.body
    if body:
        kind = body_kind(parts.content_type)

        def write_body(name: str) -> bytes | None:
            v = approve(name, "body")
            return None if v is None else _escape_body(v, kind)

        body = placeholders.replace_bytes(body, write_body)
    return replace(parts, headers=headers, trailers=trailers, path=path, query=query, body=body)


def locations_of(scan_result: ScanResult, name: str) -> Collection[str]:
    return {o.location for o in scan_result.occurrences if o.name == name}
