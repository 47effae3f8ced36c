"""Every spelling of a secret value that must be scrubbed (DESIGN.md §7.3).

A secret can come back raw, or encoded by the upstream (or by an echo of what
the broker itself injected):

- base64 and base64url, *at every alignment*: when the value sits inside a
  longer encoded string (``Basic base64(user:secret)``, a JWT, a JSON blob that
  was base64-ed whole) its characters depend on how many bytes precede it.
  For alignment ``k`` (0, 1, 2 bytes before it, modulo 3) only the characters
  whose six bits all come from the value are kept: the leading ones mixing in
  the unknown prefix and the trailing one mixing in whatever follows are
  dropped. The complete encoding of the value alone (padded and unpadded) is
  added so a stand-alone value is replaced whole. The ``\\/`` spelling of
  standard base64 covers JSON encoders that escape slashes (PHP).
- hex, lower and upper case;
- percent-encoding (``quote``, upper and lower hex digits, and ``quote_plus``);
- JSON string escaping (ASCII-only and UTF-8, upper and lower hex ``\\uXXXX``,
  ``\\/`` for slashes, ``\\u003c`` for ``<>&`` as Go writes them). Values that
  are not UTF-8 have no JSON spelling.
- everything escaped: every byte percent-encoded (``%6B%62...``) and every
  character ``\\uXXXX``-escaped, upper and lower hex. Encoders that escape
  all they can, or a hostile upstream, leave no literal run of the value at all.

- percent-encoding with any *safe set*: each subset of the reserved
  characters the value holds (``/``, ``:``, ``@``, ``+`` first) kept literal,
  as ``quote(value, safe=...)`` writes it for each choice;

**Bounded and line-free.** No pattern is longer than 6 x :data:`TILE` bytes
and none holds a line break, so the stream hold-back stays small and the
newline rule (DESIGN.md §7.6) applies whatever values other tenants store:

- a value longer than :data:`TILE` bytes is covered by overlapping tiles of
  :data:`TILE` bytes (each spelled in every encoding, base64 alignments
  included); every byte of the value lies in a tile, and every base64
  character of its encoding in a tile's fragment, so an echo of the whole
  value is replaced tile by tile;
- a multi-line value (a PEM key) is scrubbed line by line: its strong lines
  raw (:func:`broker.scrub.strength.lines_to_scrub`; the ``-----BEGIN``
  framing is not secret) and its encodings, which hold no raw line break.

Case-folded spellings (a host name, a method) are not patterns: they would
make every literal caseless and slow the matcher; the scrubber checks the
few short fields that are case-insensitive with a separate caseless matcher
(:meth:`broker.scrub.scrubber.Scrubber.owners_in_caseless`). JSON ``\\u``
escapes of an arbitrary subset of characters, base64 wrapped at 64 or 76
columns and UTF-16 cannot be listed as patterns either: the scrubber finds
them in decoded views (:mod:`broker.scrub.views`).

Variants shorter than :data:`MIN_VARIANT` are dropped, except the raw value: a
short fragment (two or three base64 characters of a short secret) occurs in
ordinary text all the time, and replacing it would corrupt responses while
hiding almost nothing. The raw value is always kept, whatever its length:
echoing it whole is the leak that matters most.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from urllib.parse import quote, quote_plus

from broker.scrub.strength import lines_to_scrub

__all__ = ["MIN_VARIANT", "TILE", "variants"]

MIN_VARIANT = 6
TILE = 256
"""Longest raw piece spelled as one pattern."""
_OVERLAP = 8
"""Bytes shared by neighbouring tiles: a base64 character mixing the last
bits of one tile with the first of the next lies inside the overlap."""
_RESERVED = "/:@+=,;&!$'()*?#[] "
_SAFE_SUBSET_CHARS = 4
_LINE_BREAK = re.compile(rb"[\r\n]")

_Encoder = Callable[[bytes], bytes]
_B64: tuple[_Encoder, ...] = (base64.b64encode, base64.urlsafe_b64encode)
_PERCENT_HEX = re.compile(rb"%[0-9A-F]{2}")
_UNICODE_HEX = re.compile(rb"\\u[0-9a-f]{4}")
_GO_HTML = {b"<": b"\\u003c", b">": b"\\u003e", b"&": b"\\u0026"}


def _aligned_fragment(encode: _Encoder, value: bytes, k: int) -> bytes:
    """Characters of ``encode(prefix + value)`` that depend on ``value`` alone,
    where ``prefix`` is ``k`` unknown bytes.

    Character ``i`` carries input bits ``[6i, 6i + 6)``; the value occupies
    bits ``[8k, 8(k + n))``. A character is determined by the value iff its
    bits lie inside that range: ``ceil(8k / 6) <= i < floor(8(k + n) / 6)``.
    """
    encoded = encode(b"\0" * k + value)
    first = -(-8 * k // 6)
    last = 8 * (k + len(value)) // 6
    return encoded[first:last]


def _base64_forms(value: bytes) -> list[bytes]:
    forms: list[bytes] = []
    for encode in _B64:
        full = encode(value)
        forms += [full, full.rstrip(b"=")]
        forms += [_aligned_fragment(encode, value, k) for k in range(3)]
    slashed = [f.replace(b"/", b"\\/") for f in forms if b"/" in f]
    return forms + slashed


def _hex_forms(value: bytes) -> list[bytes]:
    lower = binascii.hexlify(value)
    return [lower, lower.upper()]


def _safe_sets(value: bytes) -> list[str]:
    """Subsets of the reserved characters in ``value`` (at most
    :data:`_SAFE_SUBSET_CHARS` of them, the usual ``/:@+`` first; the rest
    are either all kept or all escaped)."""
    present = [c for c in _RESERVED if c.encode() in value]
    head, rest = present[:_SAFE_SUBSET_CHARS], "".join(present[_SAFE_SUBSET_CHARS:])
    sets = []
    for mask in range(1 << len(head)):
        chosen = "".join(c for i, c in enumerate(head) if mask >> i & 1)
        sets += [chosen, chosen + rest] if rest else [chosen]
    return sets


def _percent_forms(value: bytes) -> list[bytes]:
    forms = [quote(value, safe=safe).encode("ascii") for safe in _safe_sets(value)]
    forms += [quote_plus(value, safe=safe).encode("ascii") for safe in _safe_sets(value)]
    lowered = [_PERCENT_HEX.sub(lambda m: m.group(0).lower(), f) for f in forms]
    return forms + lowered


def _json_forms(value: bytes) -> list[bytes]:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return []
    ascii_form = json.dumps(text, ensure_ascii=True)[1:-1].encode("ascii")
    utf8_form = json.dumps(text, ensure_ascii=False)[1:-1].encode("utf-8")
    upper_hex = _UNICODE_HEX.sub(lambda m: b"\\u" + m.group(0)[2:].upper(), ascii_form)
    forms = [ascii_form, utf8_form, upper_hex]
    go_forms = []
    for form in forms:
        for char, escaped in _GO_HTML.items():
            form = form.replace(char, escaped)
        go_forms.append(form)
    forms += go_forms
    return forms + [f.replace(b"/", b"\\/") for f in forms]


def _escape_all_forms(value: bytes) -> list[bytes]:
    percent = "".join(f"%{byte:02X}" for byte in value).encode("ascii")
    forms = [percent, percent.lower()]
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return forms
    units = text.encode("utf-16-be")
    escaped = "".join(
        f"\\u{int.from_bytes(units[i : i + 2]):04x}" for i in range(0, len(units), 2)
    ).encode("ascii")
    return [*forms, escaped, _UNICODE_HEX.sub(lambda m: b"\\u" + m.group(0)[2:].upper(), escaped)]


def _tiles(value: bytes) -> list[bytes]:
    if len(value) <= TILE:
        return [value]
    stride = TILE - _OVERLAP
    starts = [*range(0, len(value) - TILE, stride), len(value) - TILE]
    return [value[i : i + TILE] for i in starts]


def variants(value: bytes) -> list[bytes]:
    """Every byte string to scrub for ``value``: the raw value first (unless
    it is too long or holds a line break), then its encodings, deduplicated,
    in a deterministic order. No string is longer than 6 x :data:`TILE` or
    holds a line break."""
    if not value:
        raise ValueError("an empty value has no variants")
    out: list[bytes] = []
    seen: set[bytes] = set()
    pieces = [piece for line in lines_to_scrub(value) for piece in _tiles(line)]
    for piece in [*pieces, *_tiles(value)]:
        for form in _piece_variants(piece):
            if form not in seen and not _LINE_BREAK.search(form):
                seen.add(form)
                out.append(form)
    return out


def _piece_variants(value: bytes) -> list[bytes]:
    candidates = [
        *_base64_forms(value),
        *_hex_forms(value),
        *_percent_forms(value),
        *_json_forms(value),
        *_escape_all_forms(value),
    ]
    seen = {value}
    out = [value]
    for form in candidates:
        if len(form) >= MIN_VARIANT and form not in seen:
            seen.add(form)
            out.append(form)
    return out
