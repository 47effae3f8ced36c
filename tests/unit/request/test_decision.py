"""Decisions (broker/decision.py): one reason code per branch, deny by
default, on_mismatch forward, path tricks, destination normalisation,
status mapping (DESIGN.md §5)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from broker.policy.load import parse_policy
from broker.policy.schema import Policy
from broker.request.decision import (
    STATUS,
    Decision,
    Destination,
    Reason,
    check_rule,
    decide,
    failure,
    status_of,
    verdict_of,
)
from broker.request.locations import RequestParts, ScanResult, scan


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


POLICY_DATA: dict[str, Any] = {
    "version": 1,
    "audit": {"path": "audit.jsonl"},
    "backends": {"local": {"type": "env"}},
    "tenants": {
        "acme": {
            "token_sha256": digest("acme"),
            "secrets": {
                "stripe": {
                    "backend": "local",
                    "path": "STRIPE",
                    "hosts": ["api.stripe.com"],
                    "methods": ["GET", "POST"],
                    "paths": ["/v1/*"],
                    "locations": ["header:authorization", "query"],
                },
                "acct": {
                    "backend": "local",
                    "path": "ACCT",
                    "hosts": ["api.stripe.com"],
                    "locations": ["header:Stripe-Account"],
                },
                "bot": {
                    "backend": "local",
                    "path": "BOT",
                    "hosts": ["*.telegram.org"],
                    "ports": [443, 8443],
                    "schemes": ["https", "http"],
                    "locations": ["path"],
                },
            },
        },
        "globex": {
            "token_sha256": digest("globex"),
            "on_mismatch": "forward",
            "secrets": {
                "llm": {
                    "backend": "local",
                    "path": "LLM",
                    "hosts": ["api.llm.example"],
                    "locations": ["header:x-api-key"],
                },
            },
        },
    },
}
POLICY: Policy = parse_policy(POLICY_DATA, "policy.yaml", Path("/"))


def dest(
    host: str = "api.stripe.com",
    *,
    scheme: str = "https",
    port: int = 443,
    method: str = "POST",
    path: str = "/v1/charges",
) -> Destination:
    return Destination.of(scheme, host, port, method, path)


def req(
    *,
    auth: str | None = None,
    headers: tuple[tuple[str, str], ...] = (),
    path: str = "/v1/charges",
    query: str = "",
    body: bytes = b"",
) -> ScanResult:
    hs = ((("Authorization", auth),) if auth is not None else ()) + headers
    return scan(RequestParts(hs, path, query, body, "application/json"))


BEARER = "Bearer <<secret:stripe>>"


# --- one branch per reason code ----------------------------------------------------------------------

DENIALS = [
    pytest.param(None, dest(), req(auth=BEARER), Reason.UNAUTHENTICATED, None, id="no-tenant"),
    pytest.param("nobody", dest(), req(auth=BEARER), Reason.UNAUTHENTICATED, None, id="unknown"),
    pytest.param(None, dest(), req(), Reason.UNAUTHENTICATED, None, id="no-tenant-no-placeholder"),
    pytest.param(
        "acme",
        dest(),
        req(auth="Bearer <<secret:stripe"),
        Reason.MALFORMED_PLACEHOLDER,
        None,
        id="malformed",
    ),
    pytest.param(
        "acme",
        dest(),
        req(auth=BEARER, query="x=<<SECRET:stripe>>"),
        Reason.MALFORMED_PLACEHOLDER,
        None,
        id="malformed-next-to-valid",
    ),
    pytest.param(
        "acme",
        dest(),
        req(auth="Bearer <<secret:nope>>"),
        Reason.UNKNOWN_SECRET,
        "nope",
        id="unknown-secret",
    ),
    pytest.param(
        "acme",
        dest("api.llm.example"),
        req(headers=(("X-Api-Key", "<<secret:llm>>"),)),
        Reason.UNKNOWN_SECRET,
        "llm",
        id="another-tenants-secret",
    ),
    pytest.param(
        "acme",
        dest("evil.example"),
        req(auth=BEARER),
        Reason.HOST_NOT_ALLOWED,
        "stripe",
        id="host",
    ),
    pytest.param(
        "acme",
        dest("api.stripe.com.evil.example"),
        req(auth=BEARER),
        Reason.HOST_NOT_ALLOWED,
        "stripe",
        id="host-suffix-trick",
    ),
    pytest.param(
        "acme",
        dest("telegram.org", path="/bot<<secret:bot>>/x"),
        req(path="/bot<<secret:bot>>/x"),
        Reason.HOST_NOT_ALLOWED,
        "bot",
        id="wildcard-not-apex",
    ),
    pytest.param(
        "acme",
        dest(port=8443),
        req(auth=BEARER),
        Reason.PORT_NOT_ALLOWED,
        "stripe",
        id="port",
    ),
    pytest.param(
        "acme",
        dest(scheme="http", port=443),
        req(auth=BEARER),
        Reason.SCHEME_NOT_ALLOWED,
        "stripe",
        id="scheme",
    ),
    pytest.param(
        "acme",
        dest(method="DELETE"),
        req(auth=BEARER),
        Reason.METHOD_NOT_ALLOWED,
        "stripe",
        id="method",
    ),
    pytest.param(
        "acme",
        dest(path="/v2/charges"),
        req(auth=BEARER, path="/v2/charges"),
        Reason.PATH_NOT_ALLOWED,
        "stripe",
        id="path",
    ),
    pytest.param(
        "acme",
        dest(),
        req(headers=(("X-Api-Key", "<<secret:stripe>>"),)),
        Reason.LOCATION_NOT_ALLOWED,
        "stripe",
        id="location-other-header",
    ),
    pytest.param(
        "acme",
        dest(),
        req(body=b'{"k": "<<secret:stripe>>"}'),
        Reason.LOCATION_NOT_ALLOWED,
        "stripe",
        id="location-body",
    ),
    pytest.param(
        "acme",
        dest(),
        req(auth=BEARER, body=b'{"k": "<<secret:stripe>>"}'),
        Reason.LOCATION_NOT_ALLOWED,
        "stripe",
        id="one-allowed-one-not",
    ),
]


@pytest.mark.parametrize(("tenant", "destination", "found", "reason", "secret"), DENIALS)
def test_denials(
    tenant: str | None,
    destination: Destination,
    found: ScanResult,
    reason: Reason,
    secret: str | None,
) -> None:
    decision = decide(POLICY, tenant, destination, found)
    assert decision.verdict == "deny"
    assert decision.reason is reason
    assert decision.secret == secret
    assert decision.substitute == frozenset()
    assert decision.status == status_of(reason)
    assert decision.tenant == (tenant if reason is not Reason.UNAUTHENTICATED else None)


def test_pass_without_placeholder() -> None:
    decision = decide(POLICY, "acme", dest("anything.example"), req(auth="Bearer plain"))
    assert decision == Decision(verdict="pass", tenant="acme")
    assert decision.status is None


@pytest.mark.parametrize(
    ("destination", "found", "substitute"),
    [
        pytest.param(
            dest(),
            req(auth=BEARER),
            {("stripe", "header:authorization")},
            id="header",
        ),
        pytest.param(
            dest(method="GET", path="/v1/balance"),
            req(auth=BEARER, path="/v1/balance", query="k=%3C%3Csecret%3Astripe%3E%3E"),
            {("stripe", "header:authorization"), ("stripe", "query")},
            id="header-and-query",
        ),
        pytest.param(
            dest("API.Stripe.com.", method="post", scheme="HTTPS"),
            req(auth=BEARER),
            {("stripe", "header:authorization")},
            id="destination-normalised",
        ),
        pytest.param(
            dest("api.telegram.org", port=8443, scheme="http", path="/bot<<secret:bot>>/send"),
            req(path="/bot<<secret:bot>>/send"),
            {("bot", "path")},
            id="wildcard-port-http-path",
        ),
        pytest.param(
            dest("a.b.telegram.org", method="PATCH", path="/bot<<secret:bot>>/x"),
            req(path="/bot<<secret:bot>>/x"),
            {("bot", "path")},
            id="wildcard-deep-subdomain-any-method",
        ),
        pytest.param(
            dest(),
            req(auth=BEARER, headers=(("Stripe-Account", "<<secret:acct>>"),)),
            {("stripe", "header:authorization"), ("acct", "header:stripe-account")},
            id="two-secrets",
        ),
    ],
)
def test_allow(
    destination: Destination, found: ScanResult, substitute: set[tuple[str, str]]
) -> None:
    decision = decide(POLICY, "acme", destination, found)
    assert decision.verdict == "allow"
    assert decision.reason is None
    assert decision.status is None
    assert decision.substitute == frozenset(substitute)
    assert decision.secrets == tuple(sorted({n for n, _ in substitute}))


def test_one_secret_out_of_policy_denies_the_whole_request() -> None:
    # bot is fine on api.telegram.org; stripe in the same request is not.
    path = "/bot<<secret:bot>>/x"
    found = req(auth=BEARER, path=path)
    decision = decide(POLICY, "acme", dest("api.telegram.org", method="GET", path=path), found)
    assert (decision.verdict, decision.reason, decision.secret) == (
        "deny",
        Reason.HOST_NOT_ALLOWED,
        "stripe",
    )
    assert decision.secrets == ("stripe", "bot")


def test_host_header_is_not_the_destination() -> None:
    # The Host header says api.stripe.com, the connection goes elsewhere.
    found = req(auth=BEARER, headers=(("Host", "api.stripe.com"),))
    decision = decide(POLICY, "acme", dest("evil.example"), found)
    assert decision.reason is Reason.HOST_NOT_ALLOWED


def test_unnormalisable_destination_is_denied() -> None:
    destination = Destination.of("https", "api.stripe.com/evil", 443, "POST", "/v1/x")
    assert decide(POLICY, "acme", destination, req(auth=BEARER)).reason is Reason.HOST_NOT_ALLOWED


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/v1/../admin", id="dot-dot"),
        pytest.param("/v1/./charges", id="dot"),
        pytest.param("/v1/%2e%2e/admin", id="pct-lower"),
        pytest.param("/v1/%2E%2E/admin", id="pct-upper"),
        pytest.param("/v1/.%2e/admin", id="pct-mixed"),
        pytest.param("/v1/..%2fadmin", id="pct-slash"),
        pytest.param("/v1\\..\\admin", id="backslash"),
        pytest.param("/v1/%5c..%5cadmin", id="pct-backslash"),
        pytest.param("/v1/..;/admin", id="dot-dot-param"),
        pytest.param("/v1/%252e%252e/admin", id="double-encoded"),
        pytest.param("/v1/..", id="trailing-dot-dot"),
    ],
)
def test_dot_segments_are_refused_when_paths_are_restricted(path: str) -> None:
    decision = decide(POLICY, "acme", dest(path=path), req(auth=BEARER, path=path))
    assert decision.reason is Reason.PATH_NOT_ALLOWED


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/v1/..foo", id="dots-in-name"),
        pytest.param("/v1/a.b/c", id="dot-in-name"),
        pytest.param("/v1/...", id="three-dots"),
        pytest.param("/v1/%2e%2efoo", id="pct-dots-in-name"),
    ],
)
def test_dots_inside_names_are_fine(path: str) -> None:
    decision = decide(POLICY, "acme", dest(path=path), req(auth=BEARER, path=path))
    assert decision.verdict == "allow"


def test_dot_segments_allowed_when_paths_are_unrestricted() -> None:
    # "bot" has no path rule: any path is allowed, dot segments included.
    path = "/x/../bot<<secret:bot>>/send"
    decision = decide(POLICY, "acme", dest("api.telegram.org", path=path), req(path=path))
    assert decision.verdict == "allow"


# --- on_mismatch: forward ---------------------------------------------------------------------------


LLM = "api.llm.example"


@pytest.mark.parametrize(
    ("destination", "found", "reason", "secret"),
    [
        pytest.param(
            dest(LLM),
            req(body=b'{"msg": "use <<secret:stripe>> here"}'),
            Reason.UNKNOWN_SECRET,
            "stripe",
            id="another-tenants-secret",
        ),
        pytest.param(
            dest(LLM),
            req(body=b"<<secret:llm>>"),
            Reason.LOCATION_NOT_ALLOWED,
            "llm",
            id="wrong-location",
        ),
        pytest.param(
            dest("evil.example"),
            req(headers=(("X-Api-Key", "<<secret:llm>>"),)),
            Reason.HOST_NOT_ALLOWED,
            "llm",
            id="wrong-host",
        ),
        pytest.param(
            dest(LLM), req(body=b"<<secret:llm"), Reason.MALFORMED_PLACEHOLDER, None, id="malformed"
        ),
    ],
)
def test_forward_passes_mismatches_with_reason(
    destination: Destination, found: ScanResult, reason: Reason, secret: str | None
) -> None:
    decision = decide(POLICY, "globex", destination, found)
    assert decision.verdict == "pass"
    assert decision.reason is reason
    assert decision.secret == secret
    assert decision.substitute == frozenset()
    assert decision.status is None


def test_forward_still_substitutes_the_allowed_ones() -> None:
    found = req(
        headers=(("X-Api-Key", "<<secret:llm>>"),),
        body=b'{"history": "<<secret:llm>> <<secret:stripe>> <<secret:bad"}',
    )
    decision = decide(POLICY, "globex", dest(LLM), found)
    assert decision.verdict == "allow"
    assert decision.substitute == frozenset({("llm", "header:x-api-key")})
    assert decision.secrets == ("llm",)


def test_forward_does_not_skip_authentication() -> None:
    found = req(headers=(("X-Api-Key", "<<secret:llm>>"),))
    assert decide(POLICY, None, dest(LLM), found).reason is Reason.UNAUTHENTICATED


# --- check_rule, statuses, failures --------------------------------------------------------------------


def test_check_rule_order_reports_the_first_mismatch() -> None:
    rule = POLICY.tenants["acme"].secrets["stripe"]
    everything_wrong = dest("evil.example", scheme="http", port=80, method="PUT", path="/x")
    assert check_rule(rule, everything_wrong, "body") is Reason.SCHEME_NOT_ALLOWED
    assert check_rule(rule, dest(), "header:authorization") is None


SECTION_5 = [
    (Reason.UNAUTHENTICATED, 407, "deny"),
    (Reason.MALFORMED_PLACEHOLDER, 400, "deny"),
    (Reason.UNKNOWN_SECRET, 403, "deny"),
    (Reason.HOST_NOT_ALLOWED, 403, "deny"),
    (Reason.PORT_NOT_ALLOWED, 403, "deny"),
    (Reason.SCHEME_NOT_ALLOWED, 403, "deny"),
    (Reason.METHOD_NOT_ALLOWED, 403, "deny"),
    (Reason.PATH_NOT_ALLOWED, 403, "deny"),
    (Reason.LOCATION_NOT_ALLOWED, 403, "deny"),
    (Reason.RAW_SECRET_EGRESS, 403, "deny"),
    (Reason.BACKEND_UNAVAILABLE, 502, "error"),
    (Reason.SECRET_NOT_FOUND, 502, "error"),
    (Reason.INTERNAL_ERROR, 502, "error"),
    (Reason.AUDIT_UNAVAILABLE, 503, "error"),
]


@pytest.mark.parametrize(
    ("reason", "status", "verdict"), [pytest.param(*row, id=row[0].value) for row in SECTION_5]
)
def test_status_mapping_per_design_table(reason: Reason, status: int, verdict: str) -> None:
    assert status_of(reason) == status
    assert verdict_of(reason) == verdict
    decision = failure(reason, "acme", "stripe", ("stripe",))
    assert (decision.verdict, decision.reason, decision.status) == (verdict, reason, status)
    assert (decision.tenant, decision.secret, decision.secrets) == ("acme", "stripe", ("stripe",))
    assert decision.substitute == frozenset()


def test_every_design_reason_code_exists_with_its_spelling() -> None:
    assert {r.value for r, _, _ in SECTION_5} <= {r.value for r in Reason}
    for reason in Reason:
        assert reason.value == reason.name.lower()
        assert 400 <= status_of(reason) < 600
    assert set(STATUS) <= set(Reason)


def test_destination_of_normalises() -> None:
    d = Destination.of("HTTPS", "[::1]", 8443, "get", "/A/B")
    assert d == Destination("https", "::1", 8443, "GET", "/A/B")


def test_decision_is_frozen() -> None:
    decision = failure(Reason.HOST_NOT_ALLOWED, "acme", "stripe")
    with pytest.raises(AttributeError):
        decision.verdict = "allow"  # type: ignore[misc]


def test_destination_of_normalises_long_and_repeated_names_alike() -> None:
    long_host = "A" * 300 + ".example.com."
    for _ in range(2):  # the second pass is served from the cache (or, when long, not)
        d = Destination.of("https", "API.Example.COM.", 443, "GET", "/", sni="api.example.com")
        assert (d.host, d.names) == ("api.example.com", ("api.example.com",))
        assert Destination.of("https", long_host, 443, "GET", "/").host == long_host.lower()
