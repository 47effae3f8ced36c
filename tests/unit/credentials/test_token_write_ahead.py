"""Token requests are write-ahead (review finding 9): the ``sent`` record is
written before the client secret leaves, ``done`` after; when ``sent``
cannot be written nothing is sent."""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any

import pytest

from broker.credentials import minter as minter_mod
from broker.credentials.errors import CredentialError
from broker.credentials.http import Answer
from broker.credentials.minter import Minter
from broker.policy.secret_rule import SecretRule
from broker.secret import SecretValue

RULE = SecretRule(
    kind="oauth2_client_credentials",
    backend="v",
    path="p",
    hosts=["api.example.com"],
    token_url="https://login.example.com/oauth/token",
)
TOKEN = "at-9fQx2LmZ8kPw3VnB7tYc"


class Resolver:
    async def aresolve(
        self, tenant: str, secret_name: str, rule: SecretRule, *, quiet: bool = False
    ) -> SecretValue:
        return SecretValue(
            {"client_id": "cid-1", "client_secret": "cs-Zq8mW2xR5tLp9K"}[rule.field or ""]
        )


def _minter(events: list[Any], sent_id: str | None) -> Minter:
    def sent(tenant: str, name: str, url: str) -> str | None:
        events.append(("sent", tenant, name, url))
        return sent_id

    def audit(*args: Any, **kw: Any) -> None:
        events.append(("done", args[3], args[-1] if len(args) > 6 else kw.get("record_id")))

    return Minter(
        remember=lambda t, n, v: None,
        trust=ssl.create_default_context,
        audit=audit,
        sent=sent,
    )


def _fake_post(events: list[Any]) -> Any:
    async def post(url: str, body: bytes, headers: dict[str, str], ctx: Any) -> Answer:
        events.append(("post", url))
        return Answer(200, json.dumps({"access_token": TOKEN, "expires_in": 3600}).encode())

    return post


def test_sent_before_the_request_done_after(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[Any] = []
    monkeypatch.setattr(minter_mod, "post", _fake_post(events))
    m = _minter(events, "rec-1")
    value = asyncio.run(m.token(Resolver(), "acme", "api", RULE))
    assert value.reveal() == TOKEN
    assert [e[0] for e in events] == ["sent", "post", "done"]
    assert events[0][3] == "https://login.example.com/oauth/token"
    assert events[2] == ("done", 200, "rec-1")


def test_nothing_leaves_when_sent_cannot_be_written(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[Any] = []
    monkeypatch.setattr(minter_mod, "post", _fake_post(events))
    m = _minter(events, None)
    with pytest.raises(CredentialError) as exc:
        asyncio.run(m.token(Resolver(), "acme", "api", RULE))
    assert exc.value.reason == "audit_unavailable"
    assert [e[0] for e in events] == ["sent"]
