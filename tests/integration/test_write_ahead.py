"""Write-ahead audit (DESIGN.md §6) with a real `keybroker run`: a request
carrying a secret is on record before the value leaves, so a broker killed
mid-request leaves its `sent` record, and a stop closes it as interrupted."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.openbao import OpenBao
from tests.support.proxy import Proxy
from tests.support.scenario import Scenario

pytestmark = pytest.mark.integration


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _slow_call_in_flight(proxy: Proxy, sc: Scenario, upstream: Any) -> threading.Thread:
    """Start a request that the upstream holds for a few seconds, and return
    once the upstream has it (the value has left the broker)."""
    upstream.clear()

    def call() -> None:
        try:
            requests.get(
                f"https://127.0.0.1:{sc.upstream_port}/status/200?delay=5",
                headers={"Authorization": "Bearer <<secret:stripe>>"},
                proxies=proxy.proxies("acme", sc.acme.token),
                verify=str(proxy.ca_path),
                timeout=20,
            )
        except requests.RequestException:
            pass  # the broker goes away under it: expected

    t = threading.Thread(target=call, daemon=True)
    t.start()
    assert upstream.wait_for(1, timeout=15), "the request never reached the upstream"
    return t


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_a_request_in_flight_is_on_record(
    sc: Scenario, openbao: OpenBao, upstream: Any, tmp_path: Path, sig: int
) -> None:
    audit = tmp_path / "audit" / "a.jsonl"
    proxy = Proxy(sc.policy(audit={"path": str(audit)}), tmp_path, env=sc.env(openbao.root_token))
    proxy.start()
    try:
        t = _slow_call_in_flight(proxy, sc, upstream)
        assert proxy.proc is not None
        proxy.proc.send_signal(sig)
        proxy.proc.wait(20)
        t.join(25)
    finally:
        proxy.stop()
    recs = _records(audit)
    sent = [r for r in recs if r.get("phase") == "sent"]
    assert len(sent) == 1, recs
    assert (sent[0]["decision"], sent[0]["secrets"], sent[0]["status"]) == (
        "allow",
        ["stripe"],
        None,
    )
    done = [r for r in recs if r["id"] == sent[0]["id"] and r.get("phase") == "done"]
    if sig == signal.SIGKILL:
        assert done == []  # the process had no chance: the sent record is the record
    else:
        assert len(done) == 1 and done[0]["reason"] == "interrupted", recs
    text = audit.read_text()
    assert sc.values["acme/stripe"] not in text
    verify = subprocess.run(
        [sys.executable, "-m", "broker.cli", "audit", "verify", str(audit)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert verify.returncode == 0, verify.stderr
    if sig == signal.SIGKILL:
        assert "1 exchange(s) sent with no done record" in verify.stdout
