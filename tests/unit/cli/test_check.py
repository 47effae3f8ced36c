"""``keybroker check`` and ``keybroker token new`` (broker/cli.py), and the
shipped example policy."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from broker.cli.main import main
from broker.policy.load import load_policy

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "config" / "policy.example.yaml"
DIGEST = hashlib.sha256(b"cli-test-token").hexdigest()

VALID = f"""\
version: 1
audit:
  path: audit/decisions.jsonl
backends:
  local: {{type: env}}
tenants:
  acme:
    token_sha256: sha256:{DIGEST}
    secrets:
      stripe: {{backend: local, path: STRIPE, hosts: [api.stripe.com]}}
      maps: {{backend: local, path: MAPS, hosts: [maps.example.com], locations: [query]}}
"""


def write(tmp_path: Path, text: str, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_check_valid_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRIPE", "x")
    monkeypatch.setenv("MAPS", "y")
    path = write(tmp_path, VALID)
    assert main(["check", "--config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == f"{path}: valid (1 tenant, 2 secrets, 1 backend)"
    assert err == ""


def test_check_warns_about_unset_variables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Still valid (exit 0): the broker's own environment may differ from this shell."""
    monkeypatch.delenv("STRIPE", raising=False)
    monkeypatch.setenv("MAPS", "y")
    path = write(tmp_path, VALID)
    assert main(["check", "--config", str(path)]) == 0
    err = capsys.readouterr().err
    assert "warning: tenants.acme.secrets.stripe: $STRIPE (env backend 'local') is not set" in err
    assert "502 secret_not_found" in err and "MAPS" not in err


def test_check_lists_every_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (
        VALID.replace("version: 1", "version: 1\ncolour: blue\nlisten: nowhere")
        .replace("[api.stripe.com]", '["*"]')
        .replace("backend: local, path: MAPS", "backend: vault, path: MAPS")
        .replace("locations: [query]", "locations: [cookie]")
    )
    path = write(tmp_path, text)
    assert main(["check", "--config", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    expected = {
        "colour": "unknown key",
        "listen": "HOST:PORT",
        "tenants.acme.secrets.stripe.hosts": "'*' alone",
        "tenants.acme.secrets.maps.backend": "unknown backend 'vault'",
        "tenants.acme.secrets.maps.locations": "'cookie'",
    }
    for field, fragment in expected.items():
        assert any(line.startswith(f"{path}: {field}: ") and fragment in line for line in lines), (
            field,
            lines,
        )
    assert lines[-1] == f"{path}: {len(expected)} error(s)"
    assert len(lines) == len(expected) + 1


def test_check_yaml_error_names_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, VALID.replace("  acme:\n", "  acme:\n   bad: [\n"))
    assert main(["check", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: line " in err
    assert "not valid YAML" in err


def test_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "absent.yaml"
    assert main(["check", "--config", str(path)]) == 1
    assert f"{path}: no such file" in capsys.readouterr().err


def test_missing_policy_next_to_the_example_says_cp(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "policy.example.yaml").write_text("version: 1\n")
    assert main(["check", "--config", str(tmp_path / "policy.yaml")]) == 1
    err = capsys.readouterr().err
    assert f"cp {tmp_path / 'policy.example.yaml'} {tmp_path / 'policy.yaml'}" in err


def test_check_requires_config(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["check"])
    assert info.value.code == 2
    assert "--config" in capsys.readouterr().err


# --- the example policy -------------------------------------------------------------------------------


def test_example_policy_passes_check(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("VAULT_TOKEN", "ACME_MAPS_KEY", "GLOBEX_MAILER_KEY"):
        monkeypatch.setenv(name, "x")
    assert main(["check", "--config", str(EXAMPLE)]) == 0
    out, err = capsys.readouterr()
    assert "valid" in out
    assert err == ""


def test_example_policy_passes_check_as_a_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "broker.cli", "check", "--config", "config/policy.example.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "valid" in done.stdout


def test_example_policy_covers_the_schema() -> None:
    policy = load_policy(EXAMPLE)
    assert set(policy.tenants) == {"acme", "globex"}
    assert {b.type for b in policy.backends.values()} == {"vault", "env"}
    assert {t.on_mismatch for t in policy.tenants.values()} == {"deny", "forward"}
    rules = [r for t in policy.tenants.values() for r in t.secrets.values()]
    locations = {loc for r in rules for loc in r.locations}
    assert {"header:authorization", "header:x-api-key", "query", "path", "body"} <= locations
    assert any(r.methods for r in rules)
    assert any(r.paths for r in rules)
    assert any(r.ports != (443,) for r in rules)
    assert any(h.startswith("*.") for r in rules for h in r.hosts)
    assert policy.certs_dir == (ROOT / "certs").resolve()
    assert policy.audit.path == (ROOT / "audit" / "decisions.jsonl").resolve()
    # Every backend a secret names exists.
    assert {r.backend for r in rules} <= set(policy.backends)


def test_example_policy_digests_match_the_tokens_in_its_comments() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    tokens = re.findall(r"\bkb_example_\w+", text)
    assert len(set(tokens)) == 2
    digests = {hashlib.sha256(t.encode()).hexdigest() for t in tokens}
    policy = load_policy(EXAMPLE)
    assert digests == {t.token_sha256 for t in policy.tenants.values()}
    # the tokens appear only in comments, never as values
    for token in tokens:
        assert token not in yaml.safe_dump(yaml.safe_load(text))


# --- token new ---------------------------------------------------------------------------------------


def test_token_new(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "new"]) == 0
    first = capsys.readouterr().out.splitlines()
    assert main(["token", "new"]) == 0
    second = capsys.readouterr().out.splitlines()
    assert len(first) == len(second) == 2
    token, digest_line = first
    assert len(token) >= 32
    assert not any(c.isspace() or c == ":" for c in token)  # usable in user:token URLs
    assert digest_line == "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    assert second[0] != token
    assert second[1] != digest_line


def test_token_new_digest_line_is_accepted_by_a_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["token", "new"]) == 0
    _, digest_line = capsys.readouterr().out.splitlines()
    path = write(tmp_path, VALID.replace(f"sha256:{DIGEST}", digest_line))
    assert load_policy(path).tenants["acme"].token_sha256 == digest_line.removeprefix("sha256:")


def test_env_reads_the_token_from_a_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(write(tmp_path, VALID))
    assert main(["env", "--config", config, "--tenant", "acme", "--token", "cli-test-token"]) == 0
    from_argv = capsys.readouterr().out
    monkeypatch.setenv("KB_TOKEN", "cli-test-token")
    assert main(["env", "--config", config, "--tenant", "acme", "--token-env", "KB_TOKEN"]) == 0
    assert capsys.readouterr().out == from_argv
    assert "acme:cli-test-token@" in from_argv


@pytest.mark.parametrize("value", [None, ""])
def test_token_env_unset_or_empty_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("KB_TOKEN", raising=False)
    else:
        monkeypatch.setenv("KB_TOKEN", value)
    config = str(write(tmp_path, VALID))
    with pytest.raises(SystemExit, match=r"--token-env: \$KB_TOKEN is unset or empty"):
        main(["doctor", "--config", config, "--tenant", "acme", "--token-env", "KB_TOKEN"])


def test_token_and_token_env_exclude_each_other(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(write(tmp_path, VALID))
    argv = ["env", "--config", config, "--tenant", "acme", "--token", "t", "--token-env", "T"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
