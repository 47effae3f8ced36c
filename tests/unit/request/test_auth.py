"""Tenant identity from Proxy-Authorization (broker/auth.py)."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest

from broker.policy.load import parse_policy
from broker.policy.schema import Policy
from broker.request.auth import authenticate, parse_basic, still_valid, token_digest
from tests.unit.conftest import basic

ACME_TOKEN = "kb_acme_test_token"
GLOBEX_TOKEN = "kb_globex:with:colons"


def make_policy(tenants: dict[str, str]) -> Policy:
    data: dict[str, Any] = {
        "version": 1,
        "audit": {"path": "audit.jsonl"},
        "tenants": {name: {"token_sha256": digest} for name, digest in tenants.items()},
    }
    return parse_policy(data, "policy.yaml", Path("/"))


POLICY = make_policy(
    {"acme": token_digest(ACME_TOKEN), "globex": "sha256:" + token_digest(GLOBEX_TOKEN)}
)


def test_token_digest_is_sha256_hex() -> None:
    assert token_digest(ACME_TOKEN) == hashlib.sha256(ACME_TOKEN.encode()).hexdigest()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(basic("acme", "tok"), ("acme", "tok"), id="basic"),
        pytest.param(basic("acme", "tok", "basic"), ("acme", "tok"), id="lower-scheme"),
        pytest.param(basic("acme", "tok", "BASIC"), ("acme", "tok"), id="upper-scheme"),
        pytest.param("  " + basic("acme", "tok") + " ", ("acme", "tok"), id="spaces"),
        pytest.param(basic("acme", "a:b:c"), ("acme", "a:b:c"), id="colon-in-token"),
        pytest.param(basic("acmé", "tök"), ("acmé", "tök"), id="utf8"),
        pytest.param(None, None, id="absent"),
        pytest.param("", None, id="empty"),
        pytest.param("Basic", None, id="no-credentials"),
        pytest.param("Basic ", None, id="blank-credentials"),
        pytest.param("Bearer " + ACME_TOKEN, None, id="not-basic"),
        pytest.param("Digest username=acme", None, id="digest"),
        pytest.param("Basic not*base64", None, id="bad-base64"),
        pytest.param("Basic YWNtZQ", None, id="bad-padding"),
        pytest.param("Basic " + base64.b64encode(b"acme").decode(), None, id="no-colon"),
        pytest.param(basic("", "tok"), None, id="empty-user"),
        pytest.param(basic("acme", ""), None, id="empty-token"),
        pytest.param("Basic " + base64.b64encode(b"\xff:\xfe").decode(), None, id="not-utf8"),
        pytest.param("Basic YWNtZTp0b2s=é", None, id="non-ascii-characters"),
        pytest.param("Basic ÿÿÿÿ", None, id="latin1-characters"),
    ],
)
def test_parse_basic(header: str | None, expected: tuple[str, str] | None) -> None:
    assert parse_basic(header) == expected


@pytest.mark.parametrize(
    ("header", "tenant"),
    [
        pytest.param(basic("acme", ACME_TOKEN), "acme", id="acme"),
        pytest.param(basic("globex", GLOBEX_TOKEN), "globex", id="globex-prefixed-digest"),
        pytest.param(basic("acme", ACME_TOKEN, "basic"), "acme", id="lower-scheme"),
    ],
)
def test_authenticate_good_token(header: str, tenant: str) -> None:
    result = authenticate(POLICY, header)
    assert result is not None
    name, digest = result
    assert name == tenant
    assert digest == POLICY.tenants[tenant].token_sha256
    assert still_valid(POLICY, name, digest)


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(basic("acme", "wrong"), id="bad-token"),
        pytest.param(basic("acme", ACME_TOKEN + " "), id="token-plus-space"),
        pytest.param(basic("acme", ACME_TOKEN.upper()), id="token-case"),
        pytest.param(basic("acme", GLOBEX_TOKEN), id="other-tenants-token"),
        pytest.param(basic("globex", ACME_TOKEN), id="token-under-other-name"),
        pytest.param(basic("Acme", ACME_TOKEN), id="tenant-name-case"),
        pytest.param(basic("nobody", ACME_TOKEN), id="unknown-tenant"),
        pytest.param(basic("nobody", "0" * 64), id="unknown-tenant-dummy-digest-token"),
        pytest.param(basic("acme", token_digest(ACME_TOKEN)), id="digest-as-token"),
        pytest.param("Bearer " + ACME_TOKEN, id="bearer"),
        pytest.param("Basic %%%", id="bad-base64"),
        pytest.param("Basic " + base64.b64encode(ACME_TOKEN.encode()).decode(), id="no-colon"),
        pytest.param("Basic é", id="non-ascii"),
        pytest.param(None, id="absent"),
    ],
)
def test_authenticate_refuses(header: str | None) -> None:
    assert authenticate(POLICY, header) is None


def test_unknown_tenant_cannot_match_the_dummy_digest() -> None:
    # The dummy compared for unknown tenants is "0" * 64; no token hashes to
    # it, but a tenant must exist for any match anyway.
    policy = make_policy({"acme": token_digest(ACME_TOKEN)})
    assert authenticate(policy, basic("ghost", "anything")) is None


@pytest.mark.parametrize(
    ("new_tenants", "valid"),
    [
        pytest.param({"acme": token_digest(ACME_TOKEN)}, True, id="unchanged"),
        pytest.param({"acme": token_digest("rotated")}, False, id="token-changed"),
        pytest.param({"globex": token_digest(ACME_TOKEN)}, False, id="tenant-removed"),
        pytest.param({}, False, id="no-tenants"),
    ],
)
def test_still_valid_after_reload(new_tenants: dict[str, str], valid: bool) -> None:
    result = authenticate(POLICY, basic("acme", ACME_TOKEN))
    assert result is not None
    tenant, digest = result
    assert still_valid(make_policy(new_tenants), tenant, digest) is valid


def test_still_valid_rejects_another_digest() -> None:
    assert not still_valid(POLICY, "acme", token_digest(GLOBEX_TOKEN))
    assert not still_valid(POLICY, "acme", "")


def test_claimed_tenant_names_only_tenants_the_policy_has() -> None:
    """The audit of a 407 says who tried; a token typed into the user field
    (``http://kb_...@proxy``) must never land there."""
    import base64

    from broker.policy.load import parse_policy
    from broker.request.auth import claimed_tenant

    pol = parse_policy(
        {"version": 1, "audit": {"path": "a"}, "backends": {},
         "tenants": {"acme": {"token_sha256": "0" * 64}}},
        "p.yaml", Path("/"),
    )  # fmt: skip

    def basic(text: str) -> str:
        return "Basic " + base64.b64encode(text.encode()).decode()

    assert claimed_tenant(pol, basic("acme:wrong")) == "acme"
    assert claimed_tenant(pol, basic("acme:")) == "acme"
    assert claimed_tenant(pol, basic("kb_secret_token:")) is None
    assert claimed_tenant(pol, basic("nobody:x")) is None
    assert claimed_tenant(pol, None) is None
