"""Spellings of a secret (broker/encodings.py)."""

from __future__ import annotations

import base64
import os
from urllib.parse import quote

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from broker.scrub.spellings import MIN_VARIANT, TILE, variants
from tests.support.leaks import leak_forms

CANARY = b'kb-canary/7Q+x=y&z<w> "q" caf\xc3\xa9'

EXPECTED = [
    pytest.param(CANARY, id="raw"),
    pytest.param(base64.b64encode(CANARY), id="base64-padded"),
    pytest.param(base64.urlsafe_b64encode(CANARY).rstrip(b"="), id="base64url-unpadded"),
    pytest.param(CANARY.hex().encode(), id="hex-lower"),
    pytest.param(CANARY.hex().upper().encode(), id="hex-upper"),
    pytest.param(b"kb-canary%2F7Q%2Bx%3Dy%26z%3Cw%3E%20%22q%22%20caf%C3%A9", id="percent-upper"),
    pytest.param(b"kb-canary%2f7Q%2bx%3dy%26z%3cw%3e%20%22q%22%20caf%c3%a9", id="percent-lower"),
    pytest.param(b"kb-canary%2F7Q%2Bx%3Dy%26z%3Cw%3E+%22q%22+caf%C3%A9", id="percent-plus"),
    pytest.param(b'kb-canary/7Q+x=y&z<w> \\"q\\" caf\\u00e9', id="json-ascii"),
    pytest.param(b'kb-canary/7Q+x=y&z<w> \\"q\\" caf\\u00E9', id="json-ascii-upper-hex"),
    pytest.param(b'kb-canary/7Q+x=y&z<w> \\"q\\" caf\xc3\xa9', id="json-utf8"),
    pytest.param(b'kb-canary\\/7Q+x=y&z<w> \\"q\\" caf\\u00e9', id="json-slash-escaped"),
    pytest.param(
        b'kb-canary/7Q+x=y\\u0026z\\u003cw\\u003e \\"q\\" caf\\u00e9', id="json-go-html-escaped"
    ),
]


@pytest.mark.parametrize("form", EXPECTED)
def test_expected_spellings_are_variants(form: bytes) -> None:
    assert form in variants(CANARY)


def test_raw_value_comes_first_and_variants_are_unique() -> None:
    forms = variants(CANARY)
    assert forms[0] == CANARY
    assert len(forms) == len(set(forms))


@pytest.mark.parametrize(
    "value",
    [pytest.param(b"ab", id="2-bytes"), pytest.param(b"x", id="1-byte")],
)
def test_short_value_keeps_raw_and_drops_short_forms(value: bytes) -> None:
    forms = variants(value)
    assert forms[0] == value
    assert all(len(f) >= MIN_VARIANT for f in forms[1:])


def test_non_utf8_value_has_no_json_forms() -> None:
    value = b"kb-canary\xff\xfe\\x"
    forms = variants(value)
    assert b"kb-canary\xff\xfe\\\\x" not in forms  # what a JSON escaper would write
    assert value.hex().encode() in forms


def test_empty_value_is_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        variants(b"")


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=48))
def test_every_independently_derived_form_is_a_variant(value: bytes) -> None:
    assume(b"\n" not in value and b"\r" not in value)  # multi-line: see below
    forms = set(variants(value))
    missing = [name for name, form in leak_forms(value).items() if form not in forms]
    assert missing == []


@settings(max_examples=300, deadline=None)
@given(
    value=st.binary(min_size=1, max_size=40),
    before=st.binary(max_size=7),
    after=st.binary(max_size=7),
    url=st.booleans(),
)
def test_value_inside_longer_base64_contains_a_variant(
    value: bytes, before: bytes, after: bytes, url: bool
) -> None:
    encode = base64.urlsafe_b64encode if url else base64.b64encode
    encoded = encode(before + value + after)
    fragments = [f for f in variants(value) if f in encoded]
    # Only a value too short for any fully determined fragment of MIN_VARIANT
    # characters may be missed (the documented short-fragment policy).
    determined = 8 * len(value) // 6 - 2
    assert fragments or determined < MIN_VARIANT


@pytest.mark.parametrize("k", [0, 1, 2], ids=["align0", "align1", "align2"])
def test_fragment_does_not_depend_on_surrounding_bytes(k: int) -> None:
    value = b"kb-canary-fragment-0123456789"
    fragment_sets = [
        {f for f in variants(value) if f in base64.b64encode(bytes([b]) * k + value + bytes([b]))}
        for b in (0x00, 0x5A, 0xFF)
    ]
    common = set.intersection(*fragment_sets)
    assert any(len(f) >= 8 * len(value) // 6 - 2 for f in common)


# -- bounded, line-free patterns (issue 12 items 4 and 6) ---------------------------------
PEM = (
    b"-----BEGIN PRIVATE KEY-----\n"
    + b"\n".join(base64.b64encode(os.urandom(48)) for _ in range(20))
    + b"\n-----END PRIVATE KEY-----\n"
)


def test_a_multi_line_value_is_scrubbed_by_its_strong_lines_and_no_pattern_breaks_lines() -> None:
    forms = variants(PEM)
    assert not any(b"\n" in f or b"\r" in f for f in forms)
    for line in PEM.splitlines()[1:-1]:
        assert line in forms
    assert b"-----BEGIN PRIVATE KEY-----" not in forms  # framing, not secret
    assert max(map(len, forms)) <= 6 * TILE


def test_a_huge_value_is_tiled_and_every_byte_is_covered() -> None:
    value = os.urandom(3000).hex().encode()  # 6,000 bytes
    forms = variants(value)
    assert max(map(len, forms)) <= 6 * TILE
    tiles = [f for f in forms if f in value and len(f) == TILE]
    covered = bytearray(len(value))
    for t in tiles:
        i = value.find(t)
        covered[i : i + TILE] = b"\1" * TILE
    assert all(covered)
    encoded = base64.b64encode(b"xy" + value)
    fragments = [f for f in forms if f in encoded]
    assert fragments  # and the scrubber test checks the whole encoding is replaced


@pytest.mark.parametrize("safe", ["/", ":", "@", "+", "/:", "/:@+", ":@"])
def test_percent_encoding_with_any_safe_set(safe: str) -> None:
    value = b"kb/canary:with@plus+sign=3f9a"
    assert quote(value, safe=safe).encode() in variants(value)
    assert quote(value, safe=safe).lower().encode() in [f.lower() for f in variants(value)]
