"""``keybroker session``, ``keybroker approvals`` and ``keybroker env``
handing out session tokens (the CLI as an operator runs it)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from broker.cli.main import main
from broker.governance import sessions

TENANT_TOKEN = "kb_tenant_token_for_cli_tests"
KEY = "cli-session-key-0123456789abcdef"


def write_policy(tmp_path: Path, **over: Any) -> Path:
    data: dict[str, Any] = {
        "version": 1,
        "listen": "127.0.0.1:18080",
        "certs_dir": str(tmp_path / "certs"),
        "audit": {"path": str(tmp_path / "audit.jsonl")},
        "sessions": {"key_env": "KB_TEST_SESSION_KEY", "max_ttl": 86400},
        "admin": {"listen": "127.0.0.1:1", "token_sha256": "c" * 64},
        "tenants": {"acme": {"token_sha256": hashlib.sha256(TENANT_TOKEN.encode()).hexdigest()}},
        **over,
    }
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_TEST_SESSION_KEY", KEY)


def test_session_new(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_policy(tmp_path)
    assert main(["session", "new", "--config", str(path), "--tenant", "acme", "--ttl", "2h"]) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    digest = hashlib.sha256(TENANT_TOKEN.encode()).hexdigest()
    s = sessions.verify(KEY.encode(), token, "acme", digest)
    assert s is not None and "until" in err and token not in err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--tenant", "nobody"], "not in the policy"),
        (["--tenant", "acme", "--ttl", "2d"], "max_ttl"),
        (["--tenant", "acme", "--ttl", "soon"], "--ttl"),
    ],
    ids=["tenant", "too long", "bad ttl"],
)
def test_session_new_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    path = write_policy(tmp_path)
    assert main(["session", "new", "--config", str(path), *argv]) == 1
    assert needle in capsys.readouterr().err


def test_session_new_needs_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KB_TEST_SESSION_KEY")
    path = write_policy(tmp_path)
    assert main(["session", "new", "--config", str(path), "--tenant", "acme"]) == 1
    assert "KB_TEST_SESSION_KEY" in capsys.readouterr().err


def test_env_hands_a_session_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_policy(tmp_path)
    base = ["env", "--config", str(path), "--tenant", "acme", "--token", TENANT_TOKEN]
    assert main([*base, "--format", "dotenv"]) == 0
    lines = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    password = unquote(urlsplit(lines["HTTPS_PROXY"]).password or "")
    assert password.startswith("kbs1.") and TENANT_TOKEN not in "".join(lines.values())
    assert main([*base, "--format", "dotenv", "--long-lived"]) == 0
    assert TENANT_TOKEN in capsys.readouterr().out


def test_env_without_sessions_keeps_the_tenant_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_policy(tmp_path, sessions=None)
    argv = ["env", "--config", str(path), "--tenant", "acme", "--token", TENANT_TOKEN]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert TENANT_TOKEN in out and "long-lived tenant token" in err and TENANT_TOKEN not in err


def test_approvals_without_a_broker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_policy(tmp_path)
    assert main(["approvals", "list", "--config", str(path)]) == 1
    assert "KEYBROKER_ADMIN_TOKEN" in capsys.readouterr().err
    monkeypatch.setenv("KEYBROKER_ADMIN_TOKEN", "x")
    assert main(["approvals", "approve", "apr_0011223344556677", "--config", str(path)]) == 1
    assert "cannot reach the admin API" in capsys.readouterr().err


def test_revoke_refuses_junk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_policy(tmp_path)
    assert main(["session", "revoke", "--config", str(path), "not-a-token"]) == 1
    assert "kbs1." in capsys.readouterr().err


def test_doctor_step_2_with_a_session_token(tmp_path: Path) -> None:
    from broker.cli.sessions import check_session
    from broker.policy.load import load_policy

    policy = load_policy(write_policy(tmp_path))
    digest = hashlib.sha256(TENANT_TOKEN.encode()).hexdigest()
    good = sessions.mint(KEY.encode(), "acme", digest, 60)
    assert check_session(policy, "acme", TENANT_TOKEN, {}) is None
    ok, text = check_session(policy, "acme", good, {}) or (False, "")
    assert ok and "the broker checks its signature" in text
    ok, text = check_session(policy, "acme", good, {"KB_TEST_SESSION_KEY": KEY}) or (False, "")
    assert ok and "signature checked" in text and good not in text
    other = sessions.mint(b"another-key-0123456789", "acme", digest, 60)
    assert check_session(policy, "acme", other, {"KB_TEST_SESSION_KEY": KEY}) == (
        False,
        "the session token's signature does not match (another key, or the tenant token was "
        "rotated); run `keybroker env` again",
    )
    old = sessions.mint(KEY.encode(), "acme", digest, 60, now=1000)
    assert "expired" in (check_session(policy, "acme", old, {}) or (True, ""))[1]
    assert "not 'globex'" in (check_session(policy, "globex", good, {}) or (True, ""))[1]


def test_admin_calls_ignore_proxy_variables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding 10: the operator token never travels to an HTTP_PROXY."""
    import http.server
    import threading

    seen: dict[str, list[str]] = {"admin": [], "trap": []}

    def handler(name: str) -> type[http.server.BaseHTTPRequestHandler]:
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen[name].append(self.headers.get("authorization", ""))
                body = b"[]"
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: object) -> None:
                return None

        return H

    servers = [http.server.HTTPServer(("127.0.0.1", 0), handler(n)) for n in ("admin", "trap")]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        admin, trap = (f"127.0.0.1:{s.server_address[1]}" for s in servers)
        for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(var, f"http://{trap}")
        for var in ("NO_PROXY", "no_proxy"):
            monkeypatch.setenv(var, "")
        monkeypatch.setenv("KEYBROKER_ADMIN_TOKEN", "operator-secret-token")
        path = write_policy(tmp_path, admin={"listen": admin, "token_sha256": "c" * 64})
        assert main(["approvals", "list", "--json", "--config", str(path)]) == 0
        assert capsys.readouterr().out.strip() == "[]"
        assert seen == {"admin": ["Bearer operator-secret-token"], "trap": []}
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()


def test_state_init_needs_a_shared_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_policy(tmp_path)
    assert main(["state", "init", "--config", str(path)]) == 1
    assert "state.url" in capsys.readouterr().err
    path = write_policy(tmp_path, state={"url": "redis://127.0.0.1:1/0", "timeout": 0.2})
    assert main(["state", "init", "--config", str(path)]) == 1  # nothing listens there
    assert "state store: init failed" in capsys.readouterr().err
