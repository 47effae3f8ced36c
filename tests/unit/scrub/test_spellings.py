"""Spellings of a secret (broker/encodings.py)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.scrub.spellings import MIN_VARIANT, variants
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
