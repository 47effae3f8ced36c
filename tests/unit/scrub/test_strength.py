"""Values too weak to protect (issue 12 item 4)."""

from __future__ import annotations

import base64
import os
import secrets

import pytest

from broker.scrub.strength import MIN_BITS, estimate_bits, lines_to_scrub, weakness


@pytest.mark.parametrize(
    "value",
    [b"1234", b"true", b"12345678", b"aaaaaaaaaaaaaaaaaaaaaaaa", b"abababababab", b"0000\n1111"],
    ids=["pin", "true", "digits", "one-char", "two-chars", "weak-lines"],
)
def test_weak_values_are_unprotectable(value: bytes) -> None:
    why = weakness(value)
    assert why is not None and value.decode() not in why


@pytest.mark.parametrize(
    "value",
    [
        secrets.token_urlsafe(24).encode(),
        secrets.token_hex(8).encode(),
        b"sk_live_0123456789abcdef",
        b"-----BEGIN PRIVATE KEY-----\n" + base64.b64encode(os.urandom(48)) + b"\n-----END",
    ],
    ids=["token", "hex16", "stripe-like", "pem"],
)
def test_usual_secrets_are_protectable(value: bytes) -> None:
    assert weakness(value) is None


def test_estimate() -> None:
    assert estimate_bits(b"12345678") < MIN_BITS
    assert estimate_bits(b"") == 0.0
    assert estimate_bits(secrets.token_urlsafe(24).encode()) > 100


def test_lines_to_scrub_skips_armour_and_weak_lines() -> None:
    body = base64.b64encode(os.urandom(48))
    pem = b"-----BEGIN RSA PRIVATE KEY-----\r\n" + body + b"\r\nab\r\n-----END RSA PRIVATE KEY-----"
    assert lines_to_scrub(pem) == [body]
    assert lines_to_scrub(b"single line value") == []
