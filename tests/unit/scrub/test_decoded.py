"""What an upstream may decode a field to (issue 12 item 5)."""

from __future__ import annotations

import pytest

from broker.scrub.decoded import MAX_VIEWS, json_unescape, views

CANARY = b"kbcanary+dec/oded:7q@x"


@pytest.mark.parametrize(
    ("written", "decoded"),
    [
        pytest.param(b"plain", [b"plain"], id="plain-is-one-view"),
        pytest.param(b"%6bbcanary", [b"%6bbcanary", b"kbcanary"], id="percent-one-char"),
        pytest.param(b"a+b%2Bc", [b"a+b%2Bc", b"a+b+c", b"a b+c", b"a b c"], id="form-plus"),
        pytest.param(b"\\u006bbc", [b"\\u006bbc", b"kbc"], id="json-u-escape"),
        pytest.param(b"%255Bx", [b"%255Bx", b"%5Bx", b"[x"], id="double-percent"),
        pytest.param(b"\\u00256b", [b"\\u00256b", b"%6b", b"k"], id="json-then-percent"),
    ],
)
def test_views(written: bytes, decoded: list[bytes]) -> None:
    assert views(written) == decoded


def test_json_unescape_handles_pairs_simple_escapes_and_leaves_the_rest() -> None:
    assert json_unescape(b"\\ud83d\\ude00") == "\U0001f600".encode()
    assert json_unescape(b'\\"\\\\\\/\\n\\t') == b'"\\/\n\t'
    assert json_unescape(b"\\x \\u12") == b"\\x \\u12"


@pytest.mark.parametrize("mask", range(0, 1 << 6, 5))
def test_any_subset_of_escaped_characters_decodes_to_the_value(mask: int) -> None:
    text = CANARY.decode()
    json_form = "".join(
        f"\\u{ord(c):04x}" if mask >> (i % 6) & 1 else c for i, c in enumerate(text)
    ).encode()
    percent = "".join(
        f"%{ord(c):02X}" if mask >> (i % 6) & 1 else c for i, c in enumerate(text)
    ).encode()
    assert CANARY in views(json_form)
    assert CANARY in views(percent)


def test_views_are_bounded() -> None:
    nasty = b"%25%2B+\\u0025\\\\" * 50
    assert 1 < len(views(nasty)) <= MAX_VIEWS
