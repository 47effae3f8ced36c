"""Issue 5 end to end, tools: the OpenAI Python SDK against a local
OpenAI-compatible stub (plain and streamed), and git over smart HTTP, through a
broker whose policy adds rules for both, in a sandbox holding nothing but
``keybroker env``'s output."""

from __future__ import annotations

import importlib.util
import json
import secrets
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent_env import keybroker_env, run, sandbox
from tests.support.git_server import GitServer
from tests.support.leaks import assert_no_leak
from tests.support.openai_stub import OpenAIStub
from tests.support.openbao import OpenBao
from tests.support.proxy import Proxy
from tests.support.scenario import Scenario
from tests.support.tlsca import TestCA

pytestmark = pytest.mark.integration


# -- a second broker, whose policy adds an OpenAI stub and a git server -------------------------
@dataclass
class Extra:
    proxy: Proxy
    stub: OpenAIStub
    git: GitServer
    openai_value: str
    github_value: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def extra(
    sc: Scenario, openbao: OpenBao, test_ca: TestCA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Extra]:
    work = tmp_path_factory.mktemp("agent-broker")
    values = {name: f"kbcanary_{name}_{secrets.token_hex(12)}" for name in ("openai", "github")}
    for name, value in values.items():
        openbao.put_v2(f"acme/{name}", {"api_key": value}, mount=sc.mount)
    (work / "repos").mkdir()
    with (
        OpenAIStub(test_ca, api_key=values["openai"]) as stub,
        GitServer(test_ca, work / "repos", password=values["github"]) as git,
    ):
        policy = sc.policy(audit={"path": str(work / "audit.jsonl")})
        rules = policy["tenants"]["acme"]["secrets"]
        rules["openai"] = sc.secret("acme/openai", ports=[stub.port], paths=["/v1/*"])
        rules["github"] = sc.secret("acme/github", ports=[git.port])
        with Proxy(policy, work, env=sc.env(openbao.root_token)) as proxy:
            yield Extra(
                proxy,
                stub,
                git,
                values["openai"],
                values["github"],
                keybroker_env(proxy, "acme", sc.acme.token),
            )


def audit(proxy: Proxy) -> list[dict[str, Any]]:
    recs = [json.loads(x) for x in proxy.audit_path.read_text().splitlines() if x.strip()]
    return [r for r in recs if r.get("phase") != "sent"]  # one done record per request


# -- the OpenAI Python SDK ----------------------------------------------------------------
OPENAI_SCRIPT = r"""
import json, os, sys
import openai
from openai import OpenAI
base, deny_base = sys.argv[1:3]
msgs = [{"role": "user", "content": "hi"}]
out = {}
c = OpenAI(api_key="<<secret:openai>>", base_url=base, max_retries=0, timeout=20)
r = c.chat.completions.create(model="gpt-4o-mini", messages=msgs)
out["plain"] = r.choices[0].message.content
# the key from the environment, as an agent would have it (OPENAI_API_KEY as a placeholder)
os.environ["OPENAI_API_KEY"] = "<<secret:openai>>"
s = OpenAI(base_url=base, max_retries=0, timeout=20)
stream = s.chat.completions.create(model="gpt-4o-mini", messages=msgs, stream=True)
out["stream"] = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
for label, key, url in [("unknown", "<<secret:nope>>", base),
                        ("host", "<<secret:openai>>", deny_base)]:
    try:
        OpenAI(api_key=key, base_url=url, max_retries=0, timeout=20).chat.completions.create(
            model="gpt-4o-mini", messages=msgs)
        out[label] = None
    except openai.APIStatusError as e:
        # str(e) may say only "Error code: 403" (the SDK looks for error.message)
        out[label] = [e.status_code, e.response.headers.get("x-keybroker-decision"),
                      e.response.json()["reason"]]
print(json.dumps(out))
"""


def test_openai_sdk(extra: Extra, tmp_path: Path) -> None:
    if importlib.util.find_spec("openai") is None:
        pytest.skip("the openai package (test extra) is not installed")
    extra.stub.clear()
    agent = sandbox(extra.env, tmp_path / "home")
    out = run(
        [
            sys.executable,
            "-c",
            OPENAI_SCRIPT,
            extra.stub.url("/v1"),
            extra.stub.url("/v1", host="localhost"),
        ],
        agent,
    )
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    got = [r.headers.get("authorization") for r in extra.stub.received]
    assert got == [f"Bearer {extra.openai_value}"] * 2, "plain and streaming reached the stub"
    assert res["plain"] == res["stream"] == "you sent: Bearer <<secret:openai>>"
    assert_no_leak((out.stdout + out.stderr).encode(), extra.openai_value.encode(), "the SDK")
    assert res["unknown"] == [403, "deny; reason=unknown_secret", "unknown_secret"]
    assert res["host"] == [403, "deny; reason=host_not_allowed", "host_not_allowed"]
    assert len(extra.stub.received) == 2, "denials never reach the stub"
    mine = [r for r in audit(extra.proxy) if r["path"] == "/v1/chat/completions"]
    assert [(r["decision"], r["scrubbed"]) for r in mine if r["decision"] == "allow"] == [
        ("allow", 1),
        ("allow", 1),
    ], "one echo scrubbed from the plain and one from the streamed answer"


# -- git over smart HTTP -------------------------------------------------------------------
def git_agent(extra: Extra, tmp_path: Path) -> dict[str, str]:
    if why := GitServer.missing():
        pytest.skip(why)
    return {**sandbox(extra.env, tmp_path / "home"), "GIT_TERMINAL_PROMPT": "0"}


def test_git_clone_with_extra_header_after_a_407(extra: Extra, tmp_path: Path) -> None:
    agent = git_agent(extra, tmp_path)
    commit = extra.git.make_repo("header", {"README": "hello\n"})
    extra.git.clear()
    before = len(audit(extra.proxy))
    header = "http.extraHeader=Authorization: Bearer <<secret:github>>"
    out = run(
        ["git", "-c", header, "clone", "-q", extra.git.url("/header.git"), "a"], agent, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "a" / "README").read_text() == "hello\n"
    assert run(["git", "rev-parse", "HEAD"], agent, cwd=tmp_path / "a").stdout.strip() == commit
    auths = [r.headers.get("authorization") for r in extra.git.received]
    assert auths == [f"Bearer {extra.github_value}"] * len(auths) and len(auths) >= 2
    # docs/agents.md: git's first CONNECT carries no proxy credentials (libcurl's
    # CURLAUTH_ANY); keybroker answers 407 with Proxy-Authenticate: Basic and git retries.
    mine = [r for r in audit(extra.proxy)[before:] if r["port"] == extra.git.port]
    assert any(r["reason"] == "unauthenticated" and r["status"] == 407 for r in mine), mine
    assert any(r["decision"] == "allow" and r["tenant"] == "acme" for r in mine), mine


def test_git_url_credentials_clone_and_push(extra: Extra, tmp_path: Path) -> None:
    """A placeholder in the remote URL goes out as Basic after the server's 401;
    keybroker decodes, substitutes and re-encodes it."""
    agent = git_agent(extra, tmp_path)
    extra.git.make_repo("url", {"README": "hello\n"})
    extra.git.clear()
    url = extra.git.url("/url.git").replace("https://", "https://x-access-token:<<secret:github>>@")
    out = run(["git", "clone", "-q", url, "b"], agent, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    work = tmp_path / "b"
    (work / "new.txt").write_text("from the agent\n")
    ident = ["-c", "user.name=agent", "-c", "user.email=agent@x"]
    assert run(["git", "add", "new.txt"], agent, cwd=work).returncode == 0
    assert run(["git", *ident, "commit", "-q", "-m", "agent"], agent, cwd=work).returncode == 0
    out = run(["git", "push", "-q", "origin", "main"], agent, cwd=work)
    assert out.returncode == 0, out.stderr
    pushed = run(["git", "rev-parse", "HEAD"], agent, cwd=work).stdout.strip()
    bare = extra.git.root / "url.git"
    assert run(["git", "--git-dir", str(bare), "rev-parse", "main"], agent).stdout.strip() == pushed
    basic = [a for r in extra.git.received if (a := r.headers.get("authorization"))]
    assert basic and all(a.startswith("Basic ") for a in basic)
    assert any(r.path.endswith("/git-receive-pack") for r in extra.git.received)
    assert_no_leak((out.stdout + out.stderr).encode(), extra.github_value.encode(), "git")


def test_git_denied(extra: Extra, tmp_path: Path) -> None:
    agent = git_agent(extra, tmp_path)
    extra.git.make_repo("denied", {"README": "hello\n"})
    extra.git.clear()
    bad = "http.extraHeader=Authorization: Bearer <<secret:nope>>"
    out = run(["git", "-c", bad, "ls-remote", extra.git.url("/denied.git")], agent)
    assert out.returncode != 0
    assert "403" in out.stderr, out.stderr
    assert extra.git.received == []
