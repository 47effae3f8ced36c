"""Captured tokens: parsed by rule, refused when unsafe, scoped to their
tenant, bounded, and forgotten by the scrubber at expiry (review findings 1, 6)."""

from __future__ import annotations

import json

import pytest

from broker.credentials import capture as capture_mod
from broker.credentials.capture import CaptureStore
from broker.credentials.capture_parse import CaptureRefused, body_values, cookie_values
from broker.policy.schema import CaptureRule
from broker.request.decision import Destination

TOKEN = "gho_16C7e42F292c6912E7710c838347Ae178B4a"
DEST = Destination.of("https", "github.com", 443, "POST", "/login/oauth/access_token")
RULE = CaptureRule(hosts=("github.com",), json_fields=("access_token", "Credentials.Token"))


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_json_form_and_nested_fields() -> None:
    fields = ("access_token", "Credentials.Token")
    assert body_values(json.dumps({"access_token": TOKEN}).encode(), fields) == [TOKEN]
    assert body_values(json.dumps({"Credentials": {"Token": TOKEN}}).encode(), fields) == [TOKEN]
    form = f"access_token={TOKEN}&scope=repo&token_type=bearer".encode()
    assert body_values(form, fields) == [TOKEN]
    assert body_values(b'{"error": "bad_verification_code"}', fields) == []
    assert body_values(b"error=bad_verification_code", fields) == []


@pytest.mark.parametrize(
    "body",
    [
        b'{"access_token": "12345678"}',  # too weak
        b'{"access_token": "short"}',
        b'{"access_token": "abc\\ndefghijklmnopqrstu"}',  # multi-line
        b'{"access_token": {"value": "x"}}',  # not a string
        b'{"access_token": 1234567890123456789}',
        b"access_token=aaaaaaaaaaaaaaaa&x=1",  # no entropy
        b"<r><access_token>gho_16C7e42F292c6912E7710c</access_token></r>",  # XML
        b'{"access_token": "' + TOKEN.encode() + b'"}{"again": 1}',  # two documents
    ],
)
def test_a_present_but_uncapturable_field_is_refused(body: bytes) -> None:
    with pytest.raises(CaptureRefused) as exc:
        body_values(body, ("access_token",))
    assert "12345678" not in str(exc.value) and TOKEN not in str(exc.value)


def test_weak_cookie_is_refused_and_a_deleted_one_ignored() -> None:
    with pytest.raises(CaptureRefused):
        cookie_values(["session=00000000; Path=/"], ("session",))
    assert cookie_values(["session=; Max-Age=0"], ("session",)) == []
    assert cookie_values([f"session={TOKEN}; HttpOnly"], ("session",)) == [TOKEN]


def test_captured_values_are_scrubbed_for_their_tenant_only() -> None:
    store = CaptureStore()
    store.capture("acme", [RULE], DEST, body=json.dumps({"access_token": TOKEN}).encode())
    out, n = store.scrub(f"x {TOKEN} y".encode(), "acme")
    assert n == 1 and TOKEN.encode() not in out and b"<<secret:cap." in out
    assert store.scrub(f"x {TOKEN} y".encode(), "globex") == (f"x {TOKEN} y".encode(), 0)


def test_a_refused_answer_holds_nothing() -> None:
    store = CaptureStore()
    body = json.dumps({"access_token": TOKEN, "Credentials": {"Token": "12345678"}}).encode()
    with pytest.raises(CaptureRefused):
        store.capture("acme", [RULE], DEST, body=body)
    assert store.scrubbers.count("acme") == 0


def test_expiry_removes_the_value_from_the_scrubber() -> None:
    clock = Clock()
    store = CaptureStore(clock)
    rule = CaptureRule(hosts=("github.com",), json_fields=("access_token",), ttl=60)
    store.capture("acme", [rule], DEST, body=json.dumps({"access_token": TOKEN}).encode())
    assert store.scrub(TOKEN.encode(), "acme")[1] == 1
    clock.now += 61
    assert store.scrub(TOKEN.encode(), "acme") == (TOKEN.encode(), 0)
    assert store.scrubbers.count("acme") == 0


def test_a_tenant_holds_a_bounded_number(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capture_mod, "MAX_PER_TENANT", 3)
    store = CaptureStore()
    tokens = [f"{TOKEN}{i:02d}" for i in range(5)]
    for t in tokens:
        store.capture("acme", [RULE], DEST, body=json.dumps({"access_token": t}).encode())
    store.capture("globex", [RULE], DEST, body=json.dumps({"access_token": TOKEN}).encode())
    assert store.scrubbers.count("acme") == 3 and store.scrubbers.count("globex") == 1
    assert store.scrub(tokens[0].encode(), "acme")[1] == 0  # the oldest went, scrubber too
    assert store.scrub(tokens[4].encode(), "acme")[1] == 1
