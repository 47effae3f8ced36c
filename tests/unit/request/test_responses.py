"""Denial and error replies (broker/responses.py, DESIGN.md §5)."""

from __future__ import annotations

import json

import pytest

from broker.request.decision import Decision, Destination, Reason, failure, status_of
from broker.request.responses import reply_for

KEYS = {"error", "decision", "reason", "secret", "tenant", "detail"}
ALL_REASONS = [pytest.param(r, id=r.value) for r in Reason]


def header(headers: dict[str, str], name: str) -> str | None:
    found = [v for k, v in headers.items() if k.lower() == name.lower()]
    assert len(found) <= 1
    return found[0] if found else None


@pytest.mark.parametrize("reason", ALL_REASONS)
def test_reply_shape_for_every_reason(reason: Reason) -> None:
    decision = failure(reason, "acme", "stripe")
    reply = reply_for(decision, Destination("https", "api.example.com", 443, "GET", "/"))
    body = json.loads(reply.body)
    assert set(body) == KEYS
    assert body["error"] == "keybroker"
    assert body["decision"] == decision.verdict
    assert body["reason"] == reason.value
    assert body["secret"] == "stripe"
    assert body["tenant"] == "acme"
    assert isinstance(body["detail"], str)
    assert body["detail"].strip()
    assert "{" not in body["detail"]  # every template field was filled
    assert reply.status == status_of(reason)
    assert header(reply.headers, "X-Keybroker-Decision") == (
        f"{decision.verdict}; reason={reason.value}"
    )
    assert header(reply.headers, "Content-Type") == "application/json"


@pytest.mark.parametrize("reason", ALL_REASONS)
def test_detail_without_secret_or_destination(reason: Reason) -> None:
    body = json.loads(reply_for(failure(reason, None)).body)
    assert body["detail"].strip()
    assert body["secret"] is None
    assert body["tenant"] is None


@pytest.mark.parametrize(
    ("reason", "verdict", "status"),
    [
        pytest.param(Reason.HOST_NOT_ALLOWED, "deny", 403, id="deny-403"),
        pytest.param(Reason.MALFORMED_PLACEHOLDER, "deny", 400, id="deny-400"),
        pytest.param(Reason.BACKEND_UNAVAILABLE, "error", 502, id="error-502"),
        pytest.param(Reason.AUDIT_UNAVAILABLE, "error", 503, id="error-503"),
    ],
)
def test_decision_header_uses_the_verdict(reason: Reason, verdict: str, status: int) -> None:
    reply = reply_for(failure(reason, "acme"))
    assert reply.status == status
    assert header(reply.headers, "x-keybroker-decision") == f"{verdict}; reason={reason.value}"
    assert json.loads(reply.body)["decision"] == verdict


def test_407_carries_proxy_authenticate() -> None:
    reply = reply_for(failure(Reason.UNAUTHENTICATED, None))
    assert reply.status == 407
    value = header(reply.headers, "Proxy-Authenticate")
    assert value is not None
    assert value.startswith("Basic ")


@pytest.mark.parametrize(
    "reason", [pytest.param(r, id=r.value) for r in Reason if r is not Reason.UNAUTHENTICATED]
)
def test_only_407_carries_proxy_authenticate(reason: Reason) -> None:
    assert header(reply_for(failure(reason, "acme")).headers, "proxy-authenticate") is None


@pytest.mark.parametrize(
    ("reason", "fragment"),
    [
        pytest.param(Reason.HOST_NOT_ALLOWED, "api.example.com", id="host"),
        pytest.param(Reason.PORT_NOT_ALLOWED, "8443", id="port"),
        pytest.param(Reason.SCHEME_NOT_ALLOWED, "http", id="scheme"),
        pytest.param(Reason.METHOD_NOT_ALLOWED, "DELETE", id="method"),
        pytest.param(Reason.UNKNOWN_SECRET, "'stripe'", id="secret"),
    ],
)
def test_detail_names_what_was_refused(reason: Reason, fragment: str) -> None:
    reply = reply_for(
        failure(reason, "acme", "stripe"),
        Destination("http", "api.example.com", 8443, "DELETE", "/"),
    )
    assert fragment in json.loads(reply.body)["detail"]


def test_braces_in_request_values_are_not_templates() -> None:
    reply = reply_for(
        failure(Reason.HOST_NOT_ALLOWED, "acme", "s"),
        Destination("https", "{secret}.evil", 443, "GET", "/"),
    )
    assert "{secret}.evil" in json.loads(reply.body)["detail"]


def test_reply_is_not_cached() -> None:
    reply = reply_for(failure(Reason.HOST_NOT_ALLOWED, "acme"))
    assert header(reply.headers, "cache-control") == "no-store"


def test_decision_without_reason_fails_closed_as_internal_error() -> None:
    reply = reply_for(Decision(verdict="error"))
    body = json.loads(reply.body)
    assert reply.status == 502
    assert body["reason"] == Reason.INTERNAL_ERROR.value
