"""``keybroker audit suggest`` (broker/egress/suggest.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from broker.cli.main import main
from broker.egress.rules import EgressRules, parse_entry
from broker.egress.suggest import parse_since, suggest

RULES = EgressRules.build("report", [parse_entry("api.openai.com"), ("api.stripe.com", 443)])


def rec(host: str, port: int = 443, **kw: Any) -> dict[str, Any]:
    base = {"ts": "2026-12-01T10:00:00.000Z", "tenant": "acme", "decision": "pass"}
    return {**base, "reason": None, "host": host, "port": port, **kw}


def test_suggests_each_unlisted_destination_once_and_keeps_listed() -> None:
    records = [
        rec("api.openai.com"),  # listed
        rec("api.stripe.com"),  # a secret's destination: already allowed
        rec("files.example.com", reason="egress_denied", report=True),
        rec("files.example.com", reason="egress_denied", report=True),
        rec("Raw.GitHubUserContent.com", 8443),
        rec("blocked.example", decision="deny", reason="egress_denied", method="CONNECT"),
        rec("other.example", tenant="globex"),  # another tenant
        rec("nope.example", decision="deny", reason="host_not_allowed"),  # never sent
        rec("10.0.0.5", 5432, decision="deny", reason="private_address"),
        rec("fd00::1", 8080),
    ]
    s = suggest(records, "acme", RULES, ["api.openai.com"])
    assert s.new == [
        "files.example.com",  # sorted by domain, right to left
        "raw.githubusercontent.com:8443",
        "blocked.example",
        "[fd00::1]:8080",  # addresses last
    ]
    assert s.allow == ["api.openai.com", *s.new]
    assert s.private == ["10.0.0.5:5432"]


def test_since_filters_old_records() -> None:
    records = [rec("old.example", ts="2026-11-01T00:00:00Z"), rec("new.example")]
    s = suggest(records, "acme", RULES, [], parse_since("2026-11-15"))
    assert s.new == ["new.example"]


def test_parse_since() -> None:
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    assert parse_since("24h", now) == datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert parse_since("7d", now) == datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    assert parse_since("2026-12-01T08:00:00Z", now).hour == 8
    with pytest.raises(ValueError, match="24h"):
        parse_since("yesterday", now)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    audit = tmp_path / "audit.jsonl"
    audit.write_text(
        "\n".join(json.dumps(r) for r in [rec("a.example", 8443), rec("b.example")]) + "\n{torn"
    )
    (tmp_path / "p.yaml").write_text(
        "version: 1\naudit: {path: audit.jsonl}\ntenants:\n  acme:\n"
        f"    token_sha256: {'a' * 64}\n    egress: {{mode: report, allow: [b.example]}}\n"
    )
    assert main(["audit", "suggest", "--config", str(tmp_path / "p.yaml"), "--tenant", "acme"]) == 0
    out = capsys.readouterr().out
    assert 'allow:\n    - "b.example"\n    - "a.example:8443"\n' in out
    assert "mode: enforce" in out and "current mode: report" in out
    rc = main(["audit", "suggest", "--config", str(tmp_path / "p.yaml"), "--tenant", "nobody"])
    assert rc == 1
