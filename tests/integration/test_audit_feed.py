"""The audit trail and the live feed through the real proxy (issue 4)."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.net import wait_for
from tests.support.openbao import OpenBao
from tests.support.proxy import Proxy
from tests.support.scenario import Scenario

pytestmark = pytest.mark.integration
FIELDS = {
    "ts",
    "id",
    "tenant",
    "decision",
    "reason",
    "secrets",
    "method",
    "scheme",
    "host",
    "port",
    "path",
    "status",
    "scrubbed",
    "duration_ms",
    "prev",
    "hash",
    "phase",
}


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def call(proxy: Proxy, sc: Scenario, path: str, auth: str, host: str = "127.0.0.1") -> int:
    r = requests.get(
        f"https://{host}:{sc.upstream_port}{path}",
        headers={"Authorization": auth},
        proxies=proxy.proxies("acme", sc.acme.token),
        verify=str(proxy.ca_path),
        timeout=20,
    )
    return r.status_code


def records(path: Path) -> list[dict[str, Any]]:
    """The one ``done`` record of each request (write-ahead ``sent`` records left out)."""
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in recs if r.get("phase") != "sent"]


def test_records_chain_and_verify_under_hmac_with_rotation(
    sc: Scenario, openbao: OpenBao, upstream: Any, tmp_path: Path
) -> None:
    audit = tmp_path / "audit" / "decisions.jsonl"
    policy = sc.policy(audit={"path": str(audit), "hmac_key_env": "KB_AUDIT_KEY"})
    env = {**sc.env(openbao.root_token), "KB_AUDIT_KEY": "k" * 32}
    with Proxy(policy, tmp_path, env=env) as proxy:
        assert call(proxy, sc, "/echo/a", "Bearer <<secret:stripe>>") == 200
        assert call(proxy, sc, "/echo/b", "<<secret:nope>>") == 403
        assert call(proxy, sc, "/echo/c?q=secretquery", "plain") == 200
        assert wait_for(lambda: len(records(audit)) >= 3, 10)
        proxy.signal(signal.SIGUSR1)  # rotate; the chain continues in the next file
        assert wait_for(lambda: len(list(audit.parent.glob("decisions.jsonl.*"))) == 1, 10)
        assert call(proxy, sc, "/echo/d", "Bearer <<secret:stripe>>") == 200
        assert wait_for(lambda: audit.exists() and len(records(audit)) >= 1, 10)
    assert oct(audit.stat().st_mode & 0o777) == "0o600"
    assert oct(audit.parent.stat().st_mode & 0o777) == "0o700"
    rotated = next(audit.parent.glob("decisions.jsonl.*"))
    recs = records(rotated) + records(audit)
    assert all(set(r) - {"fingerprints"} == FIELDS for r in recs)
    allow, deny, passed = recs[0], recs[1], recs[2]
    assert (allow["decision"], allow["reason"], allow["secrets"], allow["status"]) == (
        "allow",
        None,
        ["stripe"],
        200,
    )
    assert allow["fingerprints"]["stripe"]["fp"] and "version" in allow["fingerprints"]["stripe"]
    assert (deny["decision"], deny["reason"], deny["status"]) == ("deny", "unknown_secret", 403)
    assert passed["decision"] == "pass" and passed["path"] == "/echo/c"
    assert isinstance(allow["port"], int) and isinstance(allow["duration_ms"], float)
    raw = [json.loads(x) for x in audit.read_text().splitlines()]
    assert raw[0]["prev"] == json.loads(rotated.read_text().splitlines()[-1])["hash"]
    text = rotated.read_text() + audit.read_text()
    assert "secretquery" not in text and sc.values["acme/stripe"] not in text
    ok = cli("audit", "verify", str(audit), "--key-env", "KB_AUDIT_KEY", env={**env, **_path()})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    no_key = cli("audit", "verify", str(audit))
    assert no_key.returncode == 1
    # An edit is caught and the bad line named.
    lines = rotated.read_text().splitlines()
    n = next(i for i, line in enumerate(lines) if '"unknown_secret"' in line)
    lines[n] = lines[n].replace('"unknown_secret"', '"host_not_allowed"')
    rotated.write_text("\n".join(lines) + "\n")
    bad = cli("audit", "verify", str(audit), "--key-env", "KB_AUDIT_KEY", env={**env, **_path()})
    assert bad.returncode == 1 and f"line {n + 1}" in bad.stdout + bad.stderr


def _path() -> dict[str, str]:
    import os

    return {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root")}


def test_feed_escapes_markup_and_terminal_sequences(
    sc: Scenario, openbao: OpenBao, upstream: Any, tmp_path: Path
) -> None:
    """An agent must not forge or hide feed lines through a request path."""
    policy = sc.policy(audit={"path": str(tmp_path / "a.jsonl")})
    with Proxy(policy, tmp_path, env=sc.env(openbao.root_token)) as proxy:
        raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        raw.sendall(
            f"CONNECT 127.0.0.1:{sc.upstream_port} HTTP/1.1\r\nProxy-Authorization: "
            f"{Proxy.auth_header('acme', sc.acme.token)}\r\n\r\n".encode()
        )
        assert b" 200 " in raw.recv(4096)
        ctx = ssl.create_default_context(cafile=str(proxy.ca_path))
        tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        evil = b"/echo/[red]FORGED[/red]\x1b[2K\x1b]0;title\x07deny"
        tls.sendall(b"GET " + evil + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        tls.settimeout(10)
        try:
            while tls.recv(65536):
                pass
        except (ssl.SSLError, OSError):
            pass
        tls.close()
        assert call(proxy, sc, "/echo/after", "plain") == 200
        time.sleep(0.5)
    out = proxy.output()
    assert "\x1b[2K" not in out and "\x1b]0;" not in out and "\r" not in out.replace("\r\n", "")
    feed_lines = [ln for ln in out.splitlines() if "/echo/" in ln]
    assert feed_lines, out
    paths = [r["path"] for r in records(tmp_path / "a.jsonl")]
    assert any("FORGED" in p for p in paths), paths  # the hostile path was recorded...
    assert any("[red]FORGED[/red]" in ln for ln in feed_lines)  # ...and shown literally
    tail = cli("tail", str(tmp_path / "a.jsonl"), env={**_path(), "COLUMNS": "250"})
    assert tail.returncode == 0
    assert "\x1b[2K" not in tail.stdout and "\x07" not in tail.stdout
    assert "[red]FORGED[/red]" in tail.stdout


def test_run_shows_header_and_summary(
    sc: Scenario, openbao: OpenBao, upstream: Any, tmp_path: Path
) -> None:
    policy = sc.policy(audit={"path": str(tmp_path / "a.jsonl")})
    with Proxy(policy, tmp_path, env=sc.env(openbao.root_token)) as proxy:
        call(proxy, sc, "/echo/x", "<<secret:nope>>")
        time.sleep(0.3)
    out = proxy.output()
    for needle in ("acme", "globex", str(proxy.ca_path), "a.jsonl", "unknown_secret"):
        assert needle in out, needle
    quiet = Proxy(policy, tmp_path / "q", env=sc.env(openbao.root_token), quiet=True)
    with quiet:
        call(quiet, sc, "/echo/x", "<<secret:nope>>")
    assert "unknown_secret" not in quiet.output()
