from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import requests.utils

from broker.cli.sandbox_env import (
    BUNDLE_VARS,
    TOOL_BUNDLE_VARS,
    TOOL_NO_PROXY_VARS,
    TOOL_PROXY_VARS,
    check_tenant_token,
    proxy_url,
    refusal,
    render_env,
    shell_quote,
)
from broker.policy.load import parse_policy
from broker.policy.schema import Policy
from broker.request.auth import token_digest

TENANT = "acme.dev-1"
TOKEN = "t0k:en/with@odd'chars%"
BUNDLE = Path("/certs dir/it's/keybroker-ca-bundle.pem")

ALL_VARS = (
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "https_proxy",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
    *BUNDLE_VARS,
    "NODE_USE_ENV_PROXY",
    *TOOL_PROXY_VARS,
    *TOOL_NO_PROXY_VARS,
    *TOOL_BUNDLE_VARS,
)


def _render(**kw: object) -> str:
    args: dict[str, object] = {
        "proxy_host": "127.0.0.1",
        "proxy_port": 8080,
        "tenant": TENANT,
        "token": TOKEN,
        "bundle": BUNDLE,
    }
    args.update(kw)
    return render_env(**args)  # type: ignore[arg-type]


def _dotenv(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines())


def test_proxy_url_encodes_credentials_and_round_trips() -> None:
    url = proxy_url("127.0.0.1", 8080, TENANT, TOKEN)
    assert url == "http://acme.dev-1:t0k%3Aen%2Fwith%40odd%27chars%25@127.0.0.1:8080"
    parts = urlsplit(url)
    assert (unquote(parts.username or ""), unquote(parts.password or "")) == (TENANT, TOKEN)
    assert (parts.hostname, parts.port) == ("127.0.0.1", 8080)
    # what requests (and urllib3) will put in Proxy-Authorization
    assert requests.utils.get_auth_from_url(url) == (TENANT, TOKEN)


@pytest.mark.parametrize(
    ("host", "netloc_end"),
    [
        pytest.param("127.0.0.1", "@127.0.0.1:9", id="ipv4"),
        pytest.param("0.0.0.0", "@127.0.0.1:9", id="wildcard-v4-to-loopback"),
        pytest.param("::", "@[::1]:9", id="wildcard-v6-to-loopback"),
        pytest.param("::1", "@[::1]:9", id="ipv6-bracketed"),
        pytest.param("[::1]", "@[::1]:9", id="ipv6-already-bracketed"),
        pytest.param("broker.internal", "@broker.internal:9", id="name"),
    ],
)
def test_proxy_host_forms(host: str, netloc_end: str) -> None:
    assert proxy_url(host, 9, "a", "b").endswith(netloc_end)


@pytest.mark.parametrize(
    ("tenant", "token", "port"),
    [
        pytest.param("", "x", 80, id="no-tenant"),
        pytest.param("a", "", 80, id="no-token"),
        pytest.param("a", "x", 0, id="port-0"),
        pytest.param("a", "x", 70000, id="port-too-big"),
    ],
)
def test_proxy_url_rejects(tenant: str, token: str, port: int) -> None:
    with pytest.raises(ValueError):
        proxy_url("127.0.0.1", port, tenant, token)


def test_dotenv_has_every_variable_literally() -> None:
    env = _dotenv(_render(fmt="dotenv"))
    assert tuple(env) == ALL_VARS
    url = proxy_url("127.0.0.1", 8080, TENANT, TOKEN)
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        assert env[name] == url
    assert env["NO_PROXY"] == env["no_proxy"] == ""
    for name in (*BUNDLE_VARS, *TOOL_BUNDLE_VARS):
        assert env[name] == str(BUNDLE)
    for name in TOOL_PROXY_VARS:
        assert env[name] == url
    assert env["npm_config_noproxy"] == ""
    assert env["NODE_USE_ENV_PROXY"] == "1"


def test_tools_that_read_config_files_get_their_own_variables() -> None:
    """npm's cafile in a global npmrc beat NODE_EXTRA_CA_CERTS (issue 14.5)."""
    env = _dotenv(_render(fmt="dotenv"))
    assert env["npm_config_cafile"] == env["npm_config_https_proxy"].replace(
        env["HTTPS_PROXY"], str(BUNDLE)
    )


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
@pytest.mark.parametrize("message", ["plain", "it's $HOME `id`\nnext line"])
def test_refusal_stops_a_shell_and_shows_the_message(message: str) -> None:
    script = refusal(message) + "echo STARTED\n"
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert "STARTED" not in out.stdout
    assert "keybroker env failed: " + " ".join(message.split()) in out.stderr


def test_dotenv_refusal_is_no_variable() -> None:
    line = refusal("token does not match", "dotenv")
    assert line.count("\n") == 1
    assert " " in line.partition("=")[0]


def test_no_proxy_is_passed_through() -> None:
    env = _dotenv(_render(fmt="dotenv", no_proxy="localhost,.internal"))
    assert env["NO_PROXY"] == env["no_proxy"] == "localhost,.internal"


def test_relative_bundle_becomes_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = _dotenv(_render(fmt="dotenv", bundle=Path("b.pem")))
    assert env["SSL_CERT_FILE"] == str(tmp_path / "b.pem")


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_shell_lines_survive_a_real_shell() -> None:
    text = _render(no_proxy="a b,'c'")
    assert all(line.startswith("export ") for line in text.splitlines())
    script = text + "".join(f'printf "%s\\0" "${name}"\n' for name in ALL_VARS)
    out = subprocess.run(["sh", "-c", script], capture_output=True, check=True, timeout=30)
    got = dict(zip(ALL_VARS, out.stdout.decode().split("\0")[:-1], strict=True))
    assert got == _dotenv(_render(fmt="dotenv", no_proxy="a b,'c'"))


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        pytest.param("plain", "'plain'", id="plain"),
        pytest.param("it's", "'it'\\''s'", id="single-quote"),
        pytest.param("$HOME `x` \\", "'$HOME `x` \\'", id="no-expansion"),
        pytest.param("", "''", id="empty"),
    ],
)
def test_shell_quote(value: str, quoted: str) -> None:
    assert shell_quote(value) == quoted


def test_line_breaks_are_refused() -> None:
    with pytest.raises(ValueError, match="line break"):
        _render(bundle=Path("/a\nb"))
    with pytest.raises(ValueError, match="line break"):
        _render(fmt="dotenv", no_proxy="a\nHTTPS_PROXY=evil")


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown format"):
        _render(fmt="json")


def test_environment_is_what_clients_read(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in _dotenv(_render(fmt="dotenv", no_proxy="")).items():
        monkeypatch.setenv(name, value)
    proxies = requests.utils.get_environ_proxies("https://api.example.com/v1")
    assert proxies["https"] == proxy_url("127.0.0.1", 8080, TENANT, TOKEN)
    assert requests.utils.get_environ_proxies("https://localhost/")  # nothing bypasses


@pytest.fixture
def policy(tmp_path: Path) -> Policy:
    data = {
        "version": 1,
        "audit": {"path": "audit.jsonl"},
        "tenants": {
            TENANT: {"token_sha256": "sha256:" + token_digest(TOKEN)},
            "other": {"token_sha256": token_digest("other-token")},
        },
    }
    return parse_policy(data, "policy.yaml", tmp_path)


def test_check_token_accepts_the_right_token(policy: Policy) -> None:
    assert check_tenant_token(policy, TENANT, TOKEN) is None


@pytest.mark.parametrize(
    ("tenant", "token", "needles"),
    [
        pytest.param("nobody", TOKEN, ("'nobody' is not in", "acme.dev-1, other"), id="unknown"),
        pytest.param(
            TENANT, "other-token", ("does not match", "keybroker token new"), id="wrong-token"
        ),
        pytest.param(TENANT, TOKEN + " ", ("does not match",), id="trailing-space"),
        pytest.param(TENANT, "", ("no token given",), id="empty-token"),
    ],
)
def test_check_token_explains(policy: Policy, tenant: str, token: str, needles: tuple[str]) -> None:
    msg = check_tenant_token(policy, tenant, token)
    assert msg is not None
    for needle in needles:
        assert needle in msg
    if token:
        assert token not in msg


def test_an_unexpected_error_still_fails_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Whatever breaks inside `keybroker env`, stdout stops the loading shell;
    the exception text (which may hold the token) is not shown."""
    from broker.cli import main as cli
    from broker.cli import sandbox_env

    path = tmp_path / "p.yaml"
    path.write_text(
        "version: 1\naudit: {path: a.jsonl}\nbackends: {}\n"
        f"tenants: {{acme: {{token_sha256: '{token_digest(TOKEN)}'}}}}\n"
    )

    def boom(*_: object, **__: object) -> None:
        raise RuntimeError(f"broke holding {TOKEN}")

    monkeypatch.setattr(sandbox_env, "init_ca", boom)
    monkeypatch.setenv("KB_T", TOKEN)
    rc = cli.main(["env", "--config", str(path), "--tenant", "acme", "--token-env", "KB_T"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert out.endswith("exit 1\n") and "RuntimeError" in err
    assert TOKEN not in out + err
