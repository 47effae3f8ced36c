from __future__ import annotations

from pathlib import Path

import pytest

from broker.policy.changes import needs_restart
from broker.policy.load import parse_policy
from broker.policy.schema import Policy


def policy(**over: object) -> Policy:
    data = {"version": 1, "audit": {"path": "a.jsonl"}, "tenants": {}, "backends": {}, **over}
    return parse_policy(data, "p.yaml", Path("/etc/kb"))


@pytest.mark.parametrize(
    ("over", "field"),
    [
        pytest.param({"listen": "127.0.0.1:9999"}, "listen changed", id="listen"),
        pytest.param({"certs_dir": "/elsewhere"}, "certs_dir changed", id="certs_dir"),
    ],
)
def test_fields_that_need_a_restart_are_named(over: dict[str, object], field: str) -> None:
    [line] = needs_restart(policy(), policy(**over))
    assert line.startswith(field) and "restart" in line


def test_live_fields_need_no_restart(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    assert needs_restart(policy(), policy(upstream_ca=str(ca))) == []
    assert needs_restart(policy(), policy()) == []
