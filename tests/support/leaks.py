"""An independent leak detector for scrubbing tests.

It derives the spellings of a secret differently from ``broker.scrub.spellings``
(base64 fragments as the characters that stay the same whatever bytes
surround the value; percent-encoding by hand) and, for base64 and hex, also
decodes every run of the alphabet at every alignment and looks for the raw
value. Run on unscrubbed data it finds every form (the negative-control tests
prove it), so a test that asserts "no leak" can fail.

Failure messages name the form and the offset, never the value.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable

__all__ = ["assert_no_leak", "contains_leak", "find_leak", "leak_forms"]

# Spellings shorter than this are ordinary text (the broker's documented policy).
_MIN = 6
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_B64_RUN = re.compile(rb"[A-Za-z0-9+/=_-]{4,}")
_HEX_RUN = re.compile(rb"[0-9A-Fa-f]{2,}")


def _stable_chars(encode: Callable[[bytes], bytes], value: bytes, k: int) -> bytes:
    """The characters of the encoding that do not change when the k bytes
    before the value and the bytes after it change from all-zero to all-one
    (enough bytes after it that there is no padding, which would not change)."""
    after = 3 - (k + len(value)) % 3
    low = encode(b"\x00" * k + value + b"\x00" * after)
    high = encode(b"\xff" * k + value + b"\xff" * after)
    same = [i for i, (a, b) in enumerate(zip(low, high, strict=True)) if a == b]
    return low[same[0] : same[-1] + 1] if same else b""


def _percent(value: bytes, plus: bool, lower: bool) -> bytes:
    out = bytearray()
    for byte in value:
        if byte in _UNRESERVED:
            out.append(byte)
        elif plus and byte == 0x20:
            out += b"+"
        else:
            out += (f"%{byte:02x}" if lower else f"%{byte:02X}").encode()
    return bytes(out)


def leak_forms(value: bytes) -> dict[str, bytes]:
    """Readable name -> spelling, for every form the scrubber must remove."""
    forms: dict[str, bytes] = {"raw": value}
    for name, encode in (("b64", base64.b64encode), ("b64url", base64.urlsafe_b64encode)):
        forms[f"{name}-padded"] = encode(value)
        forms[f"{name}-unpadded"] = encode(value).rstrip(b"=")
        for k in range(3):
            forms[f"{name}-align{k}"] = _stable_chars(encode, value, k)
    forms["b64-slash-escaped"] = forms["b64-padded"].replace(b"/", b"\\/")
    forms["hex-lower"] = binascii.hexlify(value)
    forms["hex-upper"] = binascii.hexlify(value).upper()
    for plus in (False, True):
        for lower in (False, True):
            forms[f"percent{'-plus' if plus else ''}{'-lower' if lower else ''}"] = _percent(
                value, plus, lower
            )
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None:
        forms["json-ascii"] = json.dumps(text)[1:-1].encode()
        forms["json-utf8"] = json.dumps(text, ensure_ascii=False)[1:-1].encode()
        forms["json-slash"] = forms["json-ascii"].replace(b"/", b"\\/")
    return {name: form for name, form in forms.items() if name == "raw" or len(form) >= _MIN}


def _decoded_runs(data: bytes) -> list[tuple[str, int, bytes]]:
    runs: list[tuple[str, int, bytes]] = []
    unslashed = data.replace(b"\\/", b"/")
    for match in _B64_RUN.finditer(unslashed):
        run = match.group(0).replace(b"-", b"+").replace(b"_", b"/").replace(b"=", b"")
        for shift in range(4):
            body = run[shift:]
            body = body[: len(body) - len(body) % 4]
            runs.append(("base64-decoded", match.start(), base64.b64decode(body)))
    for match in _HEX_RUN.finditer(data):
        for shift in range(2):
            body = match.group(0)[shift:]
            runs.append(
                ("hex-decoded", match.start(), binascii.unhexlify(body[: len(body) // 2 * 2]))
            )
    return runs


def find_leak(data: bytes, value: bytes) -> tuple[str, int] | None:
    """(form name, offset) of the first spelling of ``value`` in ``data``, or None."""
    for name, form in leak_forms(value).items():
        offset = data.find(form)
        if offset >= 0:
            return name, offset
    for name, offset, decoded in _decoded_runs(data):
        if value in decoded:
            return name, offset
    return None


def contains_leak(data: bytes, value: bytes) -> bool:
    return find_leak(data, value) is not None


def assert_no_leak(data: bytes, value: bytes, what: str = "output") -> None:
    """Raise an AssertionError naming the form and offset (never the value)."""
    found = find_leak(data, value)
    if found is not None:
        raise AssertionError(f"{what} leaks a canary as {found[0]} at offset {found[1]}")
