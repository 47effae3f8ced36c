"""Raw values in every agent-controlled field, as written and as decoded, for
the caller's own values only (issue 12 items 2, 4, 5)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from broker.policy.load import parse_policy
from broker.policy.schema import Policy
from broker.request.decision import Destination
from broker.request.locations import RequestParts
from broker.scrub import rawegress
from broker.scrub.scrubber import Scrubber

OWN = "kbCanaryOwn7Rx2Qp9Lm4Vz"  # mixed case on purpose
OTHER = "kbcanaryothertenant5w8t3y6u"
HOST = "api.example.com"


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Policy:
    tmp: Path = tmp_path_factory.mktemp("p")
    rule = {"backend": "local", "path": "K", "hosts": [HOST]}
    data: dict[str, Any] = {
        "version": 1,
        "certs_dir": str(tmp / "certs"),
        "audit": {"path": str(tmp / "a.jsonl")},
        "backends": {"local": {"type": "env"}},
        "tenants": {
            "acme": {"token_sha256": "a" * 64, "secrets": {"api": rule}},
            "globex": {"token_sha256": "b" * 64, "secrets": {"api": rule}},
        },
    }
    return parse_policy(data, "t.yaml", tmp)


@pytest.fixture(scope="module")
def scrubber() -> Scrubber:
    s = Scrubber("python", background=False)
    s.add(OWN.encode(), b"<<secret:api>>", ("acme", "api"))
    s.add(OTHER.encode(), b"<<secret:api>>", ("globex", "api"))
    return s


def dest(host: str = HOST, method: str = "GET", **kw: Any) -> Destination:
    return Destination.of("https", host, 443, method, "/v1", **kw)


def parts(**kw: Any) -> RequestParts:
    base: dict[str, Any] = {
        "headers": (("Accept", "*/*"),),
        "path": "/v1",
        "query": "",
        "body": b"",
    }
    base.update(kw)
    return RequestParts(**base)


def esc_one(value: str) -> str:
    return f"%{ord(value[0]):02x}{value[1:]}"


def json_esc(value: str, every: int) -> str:
    return "".join(f"\\u{ord(c):04x}" if i % every == 0 else c for i, c in enumerate(value))


REFUSED = [
    pytest.param(dest(method=OWN), parts(), id="method"),
    pytest.param(dest(method=OWN.lower()), parts(), id="method-lower"),
    pytest.param(dest(host=f"{OWN}.evil.test"), parts(), id="connect-host-mixed-case"),
    pytest.param(dest(sni=f"{OWN.upper()}.evil.test"), parts(), id="sni"),
    pytest.param(dest(authority=f"{OWN}.example.com"), parts(), id="authority"),
    pytest.param(dest(), parts(headers=((f"X-{OWN}", "1"),)), id="header-name"),
    pytest.param(dest(), parts(headers=((f"x-{OWN.lower()}", "1"),)), id="header-name-lower"),
    pytest.param(dest(), parts(headers=(("X-Key", OWN),)), id="header-value"),
    pytest.param(dest(), parts(trailers=(("X-Key", OWN),)), id="trailer-value"),
    pytest.param(dest(), parts(trailers=((OWN, "x"),)), id="trailer-name"),
    pytest.param(dest(), parts(path="/v1/" + esc_one(OWN)), id="path-one-char-escaped"),
    pytest.param(dest(), parts(query="k=" + esc_one(OWN)), id="query-one-char-escaped"),
    pytest.param(dest(), parts(query="k=%25" + OWN.encode().hex()), id="query-hex"),
    pytest.param(
        dest(), parts(body=("k=" + esc_one(OWN)).encode()), id="form-body-one-char-escaped"
    ),
    pytest.param(dest(), parts(body=f'{{"k": "{json_esc(OWN, 3)}"}}'.encode()), id="json-subset"),
    pytest.param(dest(), parts(body=f'{{"k": "{json_esc(OWN, 1)}"}}'.encode()), id="json-all"),
    pytest.param(
        dest(), parts(body=base64.b64encode(b"user:" + OWN.encode())), id="body-base64-aligned"
    ),
    pytest.param(
        dest(), parts(trailers=(("X-K", "%25" + esc_one(OWN)[1:]),)), id="trailer-double-escaped"
    ),
    # Allowed location (header:authorization), but the SNI or Host names another
    # server: refused exactly as a placeholder would be (no fronting).
    pytest.param(
        dest(sni="other.example.net"),
        parts(headers=(("Authorization", f"Bearer {OWN}"),)),
        id="fronted-sni",
    ),
    pytest.param(
        dest(authority="other.example.net"),
        parts(headers=(("Authorization", f"Bearer {OWN}"),)),
        id="fronted-authority",
    ),
    pytest.param(
        dest(host="evil.test"),
        parts(headers=(("Authorization", f"Bearer {OWN}"),)),
        id="allowed-location-wrong-host",
    ),
]


@pytest.mark.parametrize(("d", "p"), REFUSED)
def test_own_raw_value_is_refused(
    policy: Policy, scrubber: Scrubber, d: Destination, p: RequestParts
) -> None:
    refusal = rawegress.check(scrubber, policy, "acme", d, p)
    assert refusal is not None and refusal.reason == "raw_secret_egress"
    assert refusal.secret is None  # names nothing


@pytest.mark.parametrize(("d", "p"), REFUSED)
def test_another_tenants_value_is_not_an_oracle(
    policy: Policy, scrubber: Scrubber, d: Destination, p: RequestParts
) -> None:
    """globex writing acme's value anywhere gets the same answer as for any
    other string: guesses posted by one tenant reveal nothing of another's."""
    assert rawegress.check(scrubber, policy, "globex", d, p) is None


def test_own_value_where_its_policy_allows_it_passes(policy: Policy, scrubber: Scrubber) -> None:
    p = parts(headers=(("Authorization", f"Bearer {OWN}"),))
    assert rawegress.check(scrubber, policy, "acme", dest(sni=HOST, authority=HOST), p) is None


def test_trailer_named_like_an_allowed_header_is_that_location(
    policy: Policy, scrubber: Scrubber
) -> None:
    p = parts(trailers=(("Authorization", f"Bearer {OWN}"),))
    assert rawegress.check(scrubber, policy, "acme", dest(), p) is None


def test_destination_check_covers_host_sni_and_method(policy: Policy, scrubber: Scrubber) -> None:
    assert rawegress.check_destination(scrubber, policy, "acme", dest()) is None
    for d in (dest(host=f"{OWN.upper()}.x.test"), dest(sni=f"{OWN}.x"), dest(method=OWN)):
        refusal = rawegress.check_destination(scrubber, policy, "acme", d)
        assert refusal is not None and refusal.reason == "raw_secret_egress"
    assert rawegress.check_destination(scrubber, policy, "globex", dest(host=f"{OWN}.x")) is None


@pytest.mark.parametrize(
    "message",
    [OWN.encode(), json_esc(OWN, 2).encode(), esc_one(OWN).encode()],
    ids=["raw", "json-escaped", "percent"],
)
def test_websocket_message_holding_own_value(scrubber: Scrubber, message: bytes) -> None:
    assert rawegress.in_message(scrubber, "acme", b"say " + message)
    assert not rawegress.in_message(scrubber, "globex", b"say " + message)
    assert not rawegress.in_message(scrubber, "acme", b"say nothing")
