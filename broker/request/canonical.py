"""One canonical request: the rules that keep what keybroker decides on, what it
forwards and what the upstream parses the same request (issue 19).

mitmproxy re-serialises every request it forwards (one request line with
single spaces, ``name: value`` fields ending in CRLF, the body re-framed), so
most of what two HTTP/1 parsers read differently is canonicalised on the way
through. What survives re-serialisation is what sits *inside* a parsed
field: an obs-fold (mitmproxy keeps it as ``"\\r\\n "`` inside the value), a
bare CR, an LF or a NUL in a value, a method the policy compared
upper-cased, framing fields a lenient upstream reads otherwise. Those are
refused here with ``malformed_request`` (400); nothing is quoted back.

Pure: plain bytes and strings in, a :class:`Malformed` (rule id and one
sentence) or ``None`` out. The rule table, with the RFC sections it follows,
is in SECURITY.md ("Canonical requests") and docs/design.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["TRAILER_FORBIDDEN", "Malformed", "check_request", "check_trailers"]

Field = tuple[bytes, bytes]

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Z]+\Z")
"""A method is a token (RFC 9110 §9.1) and case-sensitive: the policy compares
upper case, so keybroker accepts upper-case methods only."""
_CTL_OR_SPACE = re.compile(rb"[\x00-\x20\x7f]")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
"""Control bytes other than HTAB (RFC 9110 §5.5: field-vchar, SP, HTAB, obs-text)."""
_DIGITS = re.compile(rb"[0-9]{1,18}\Z")
_AUTHORITY = re.compile(rb"[A-Za-z0-9\-._~%!$&'()*+,;=:\[\]]+\Z")
"""RFC 3986 §3.2 authority without userinfo: reg-name / IP-literal, ``:port``."""

_VERSIONS_H1 = (b"HTTP/1.1", b"HTTP/1.0")
_FOLD = re.compile(rb"[^a-z0-9-]")
_PLAIN_NAME = re.compile(rb"[A-Za-z0-9-]+\Z")
"""What a sloppy parser drops from a name (CGI maps ``_`` to ``-`` first)."""

_FRAMING = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"host",
        b"expect",
        b"connection",
        b"upgrade",
        b"te",
        b"trailer",
        b"keep-alive",
        b"proxy-connection",
    }
)
"""Fields a parser frames or routes on: their values must be plain ASCII, so no
parser trims a byte (``\\x85``, ``\\xa0``) another keeps."""

_H2_CONNECTION = (
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"transfer-encoding",
    b"upgrade",
)

_SEMANTIC = _FRAMING | frozenset(_H2_CONNECTION)

TRAILER_FORBIDDEN = frozenset(
    {
        *_FRAMING,
        b"authorization",
        b"proxy-authorization",
        b"cookie",
        b"content-encoding",
        b"content-type",
        b"content-range",
        b"range",
        b"if-match",
        b"if-none-match",
        b"if-modified-since",
        b"if-unmodified-since",
        b"if-range",
        b"max-forwards",
        b"cache-control",
    }
)
"""RFC 9110 §6.5.1: framing, routing, request modifiers, authentication and
content-processing fields are not allowed in trailers."""


@dataclass(frozen=True)
class Malformed:
    rule: str
    """A short id (``obs-fold``, ``bare-cr``, ``method-case`` ...) for logs and tests."""
    detail: str
    """One sentence naming the construct, never quoting the request."""


def check_request(
    method: bytes,
    target: bytes,
    version: bytes,
    fields: Sequence[Field],
    *,
    authority: bytes = b"",
    http2: bool = False,
) -> Malformed | None:
    """The first rule ``method target version`` + ``fields`` breaks, or None.

    ``target`` is the request-target as forwarded (origin-form path and query,
    or ``*``); ``authority`` is HTTP/2's ``:authority``."""
    if not _METHOD.match(method):
        if _TOKEN.match(method):
            return Malformed("method-case", "The method must be an upper-case token.")
        return Malformed("method", "The method is not an HTTP token.")
    if not target or _CTL_OR_SPACE.search(target):
        return Malformed("target", "The request-target holds a space or a control byte.")
    if http2:
        if version != b"HTTP/2.0":
            return Malformed("version", "Unsupported HTTP version.")
        if authority and not _AUTHORITY.match(authority):
            return Malformed("authority", ":authority is not a host[:port].")
    elif version not in _VERSIONS_H1:
        return Malformed("version", "Only HTTP/1.0 and HTTP/1.1 requests are accepted.")
    bad = _check_fields(fields)
    if bad is not None:
        return bad
    return _check_semantics(fields, version=version, authority=authority, http2=http2)


def check_trailers(fields: Iterable[Field]) -> Malformed | None:
    """Trailer fields are forwarded when each is a clean field that may be a
    trailer at all (RFC 9110 §6.5.1); otherwise the request is refused."""
    fields = list(fields)
    bad = _check_fields(fields)
    if bad is not None:
        return bad
    for name, _ in fields:
        if name.lower() in TRAILER_FORBIDDEN or name.lower().startswith(b"proxy-"):
            return Malformed(
                "trailer-field",
                "A trailer carries a framing, routing, authentication or content field.",
            )
    return None


def _check_fields(fields: Iterable[Field]) -> Malformed | None:
    for name, value in fields:
        if not _PLAIN_NAME.match(name):  # the common case: no lookalike possible
            if not _TOKEN.match(name):
                return Malformed("field-name", "A field name is not a token (space before ':'?).")
            lower = name.lower()
            if _FOLD.sub(b"", lower.replace(b"_", b"-")) in _FRAMING:
                return Malformed(
                    "framing-lookalike",
                    "A field name that reads as a framing field once '_' or punctuation "
                    "is dropped.",
                )
        if _BAD_VALUE.search(value):
            return _bad_value(value)
        if not value.isascii() and name.lower() in _FRAMING:
            return Malformed("framing-octet", "A framing or routing field holds non-ASCII bytes.")
    return None


def _bad_value(value: bytes) -> Malformed:
    if b"\n" in value:
        if re.search(rb"\r?\n[ \t]", value):
            return Malformed("obs-fold", "A field value is folded across lines (obs-fold).")
        return Malformed("bare-lf", "A field value holds a line feed.")
    if b"\r" in value:
        return Malformed("bare-cr", "A field value holds a bare carriage return.")
    if b"\x00" in value:
        return Malformed("nul", "A field value holds a NUL byte.")
    return Malformed("ctl", "A field value holds a control byte.")


def _index(fields: Sequence[Field]) -> dict[bytes, list[bytes]]:
    """Values by lower-cased name, for the names the semantic rules read."""
    out: dict[bytes, list[bytes]] = {}
    for k, v in fields:
        lower = k.lower()
        if lower in _SEMANTIC:
            out.setdefault(lower, []).append(v)
    return out


def _check_semantics(
    fields: Sequence[Field], *, version: bytes, authority: bytes, http2: bool
) -> Malformed | None:
    idx = _index(fields)
    cl = idx.get(b"content-length", [])
    te = idx.get(b"transfer-encoding", [])
    if len(cl) > 1:
        return Malformed("cl-twice", "More than one Content-Length field.")
    if cl and not _DIGITS.match(cl[0].strip()):
        return Malformed("cl-value", "Content-Length is not a decimal length.")
    if http2:
        for name in _H2_CONNECTION:
            if name in idx:
                return Malformed("h2-connection-field", "A connection-specific field in HTTP/2.")
        te_hdr = idx.get(b"te", [])
        if te_hdr and any(v.strip().lower() != b"trailers" for v in te_hdr):
            return Malformed("h2-te", "HTTP/2 allows TE: trailers only.")
    elif te:
        if cl:
            return Malformed("cl-te", "Both Content-Length and Transfer-Encoding.")
        if len(te) > 1 or te[0].strip().lower() != b"chunked":
            return Malformed("te-value", "Transfer-Encoding other than a single 'chunked'.")
        if version != b"HTTP/1.1":
            return Malformed("te-version", "Transfer-Encoding in an HTTP/1.0 request.")
    hosts = idx.get(b"host", [])
    if len(hosts) > 1:
        return Malformed("host-twice", "More than one Host field.")
    if hosts and (not hosts[0] or not _AUTHORITY.match(hosts[0])):
        return Malformed("host-value", "Host is not a host[:port].")
    if not http2 and version == b"HTTP/1.1" and not hosts:
        return Malformed("host-missing", "An HTTP/1.1 request without a Host field.")
    if http2 and hosts and authority and hosts[0].lower() != authority.lower():
        return Malformed("host-authority", "Host and :authority name different servers.")
    expect = idx.get(b"expect", [])
    if len(expect) > 1 or (expect and expect[0].strip().lower() != b"100-continue"):
        return Malformed("expect", "Expect other than a single '100-continue'.")
    return None
