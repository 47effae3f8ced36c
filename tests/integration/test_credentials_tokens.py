"""Minted credentials end to end (DESIGN.md §11): ``oauth2_refresh`` and
``oauth2_client_credentials`` against an Authlib authorization server, and
``github_app`` against an endpoint that verifies the app JWT with the app's
public key; the agent writes only placeholders, with requests and git."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.agent_env import keybroker_env, run, sandbox
from tests.support.git_server import GitServer
from tests.support.leaks import assert_no_leak
from tests.support.openbao import OpenBao
from tests.support.proxy import Proxy
from tests.support.scenario import Tenant
from tests.support.tlsca import TestCA
from tests.support.token_server import Client, Token, TokenServer

pytestmark = pytest.mark.integration
GLOBEX = Tenant("globex")

CLIENTS = {
    name: Client(f"{name}-client", f"{name}-secret-{i}7f3a", grants)
    for i, (name, grants) in enumerate(
        [
            ("google", ("refresh_token",)),
            ("rotating", ("refresh_token",)),
            ("svc", ("client_credentials",)),
            ("down", ("client_credentials",)),
            ("agentapp", ("client_credentials",)),
            ("sa", ("urn:ietf:params:oauth:grant-type:jwt-bearer",)),
            ("login", ("refresh_token",)),
        ]
    )
}


@dataclass
class World:
    proxy: Proxy
    ts: TokenServer
    git: GitServer
    acme: Tenant
    seeds: dict[str, str]

    def session(self) -> requests.Session:
        s = requests.Session()
        s.proxies = self.proxy.proxies("acme", self.acme.token)
        s.verify = str(self.proxy.ca_path)
        s.trust_env = False
        return s

    def api(self, secret: str, path: str = "/api/me") -> requests.Response:
        return self.session().get(
            self.ts.url(path), headers={"Authorization": f"Bearer <<secret:{secret}>>"}, timeout=30
        )


def _seed_refresh(ts: TokenServer, client: Client) -> str:
    value = "rt_seed_" + client.client_id
    t = Token(client.client_id, "at_unused_" + client.client_id, value, "read", 3600)
    ts.state.refresh[value] = t
    return value


@pytest.fixture(scope="module")
def world(
    openbao: OpenBao, test_ca: TestCA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    work = tmp_path_factory.mktemp("kb-tokens")
    other_ca = TestCA(work / "other-ca")
    (work / "repos").mkdir()
    with (
        TokenServer(test_ca, list(CLIENTS.values())) as ts,
        TokenServer(other_ca, []) as untrusted,
        GitServer(test_ca, work / "repos", password="not-yet") as git,
    ):
        seeds = {n: _seed_refresh(ts, CLIENTS[n]) for n in ("google", "rotating", "login")}
        for name, c in CLIENTS.items():
            data = {"client_id": c.client_id, "client_secret": c.client_secret}
            if name in seeds:
                data["refresh_token"] = seeds[name]
            openbao.put_v2(f"tok/{name}", data)
        openbao.put_v2(
            "tok/sa", {"client_email": CLIENTS["sa"].client_id, "private_key": ts.sa_private_pem}
        )
        openbao.put_v2(
            "tok/gh",
            {"app_id": ts.app_id, "private_key": ts.app_private_pem, "installation_id": "99"},
        )

        def rule(kind: str, path: str, **kw: Any) -> dict[str, Any]:
            return {
                "kind": kind,
                "backend": "vault",
                "path": path,
                "hosts": ["localhost", "127.0.0.1"],
                "ports": [ts.port, git.port],
                **kw,
            }

        token_url = ts.url("/token")
        acme = Tenant("acme")
        secrets_ = {
            "google": rule("oauth2_refresh", "tok/google", token_url=token_url, scopes=["read"]),
            "rotating": rule("oauth2_refresh", "tok/rotating", token_url=token_url),
            "svc": rule(
                "oauth2_client_credentials",
                "tok/svc",
                token_url=token_url,
                token_auth="client_secret_post",
            ),
            "down": rule("oauth2_client_credentials", "tok/down", token_url=token_url),
            "untrusted": rule(
                "oauth2_client_credentials", "tok/svc", token_url=untrusted.url("/token")
            ),
            "gh": rule("github_app", "tok/gh", api_url=ts.url("")),
            "sa": rule(
                "google_service_account",
                "tok/sa",
                token_url=token_url,
                scopes=["https://www.googleapis.com/auth/devstorage.read_only"],
                subject="user@example.com",
            ),
        }
        policy = {
            "version": 1,
            "certs_dir": str(work / "certs"),
            "upstream_ca": str(test_ca.ca_path),
            "audit": {"path": str(work / "audit.jsonl")},
            "backends": {
                "vault": {"type": "vault", "url": openbao.url, "token_env": "KB_TEST_VAULT_TOKEN"}
            },
            "tenants": {
                "acme": {
                    "token_sha256": acme.digest,
                    "secrets": secrets_,
                    "capture": [
                        {
                            "hosts": ["localhost"],
                            "paths": ["/token"],
                            "json_fields": ["access_token", "refresh_token"],
                        },
                        {
                            "hosts": ["localhost"],
                            "paths": ["/login"],
                            "cookies": ["session"],
                            "ttl": 2,
                        },
                    ],
                },
                # may reach the token server (loopback), holds no secret
                "globex": {
                    "token_sha256": GLOBEX.digest,
                    "egress": {"allow": [f"localhost:{ts.port}"]},
                },
            },
        }
        with Proxy(policy, work, env={"KB_TEST_VAULT_TOKEN": openbao.root_token}) as proxy:
            yield World(proxy, ts, git, acme, seeds)


def test_refresh_token_grant_mints_caches_and_scrubs(world: World) -> None:
    st = world.ts.state
    before = st.token_requests
    r = world.api("google")
    assert r.status_code == 200, r.text
    body = r.json()
    # The API echoed the token it got: the agent sees the placeholder instead.
    assert body["token"] == "<<secret:google>>"
    assert body["authorization"] == "Bearer <<secret:google>>"
    minted = [t for t in st.tokens if st.tokens[t].client_id == "google-client"]
    assert len(minted) == 1 and minted[0] not in r.text
    assert world.api("google").status_code == 200
    assert st.token_requests == before + 1, "the second request reuses the cached token"
    assert st.seen_auth[-1] == "basic"


def test_expiry_and_rotated_refresh_token(world: World) -> None:
    """Each refresh rotates the refresh token and revokes the old one: a
    broker that reused the stored one would fail from the second refresh on."""
    st = world.ts.state
    st.expires_in = 2  # cached for 1 s (lifetime minus a margin of half of it)
    try:
        before = st.token_requests
        for _ in range(3):
            r = world.api("rotating")
            assert r.status_code == 200, r.text
            time.sleep(1.2)
        assert st.token_requests == before + 3
        assert world.seeds["rotating"] not in st.refresh, "the stored refresh token was used up"
    finally:
        st.expires_in = 3600


def test_single_flight_client_credentials(world: World) -> None:
    st = world.ts.state
    st.delay = 0.5
    try:
        before = st.token_requests
        results: list[int] = []
        lock = threading.Lock()

        def call() -> None:
            r = world.api("svc")
            with lock:
                results.append(r.status_code)

        threads = [threading.Thread(target=call) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert results == [200] * 8
        assert st.token_requests == before + 1, "eight cold requests, one token request"
        assert st.seen_auth[-1] == "post"
    finally:
        st.delay = 0.0


def test_upstream_401_drops_the_cached_token(world: World) -> None:
    st = world.ts.state
    assert world.api("svc").status_code == 200
    before = st.token_requests
    st.revoke_all()
    assert world.api("svc").status_code == 401  # the upstream's own answer
    r = world.api("svc")
    assert r.status_code == 200, r.text
    assert st.token_requests == before + 1


@pytest.mark.parametrize("secret", ["down", "untrusted"], ids=["endpoint-fails", "untrusted-tls"])
def test_token_failure_is_502_token_unavailable(world: World, secret: str) -> None:
    st = world.ts.state
    st.fail = secret == "down"
    try:
        r = world.api(secret)
    finally:
        st.fail = False
    assert r.status_code == 502
    assert r.json()["reason"] == "token_unavailable"
    assert r.headers["x-keybroker-decision"] == "error; reason=token_unavailable"


def test_github_app_token_in_bearer_form(world: World) -> None:
    st = world.ts.state
    before = st.github_requests
    r = world.api("gh", "/api/repos/o/r")
    assert r.status_code == 200, r.text
    assert r.json()["token"] == "<<secret:gh>>"
    assert world.api("gh").status_code == 200
    assert st.github_requests == before + 1
    assert st.github_tokens and st.github_tokens[-1] not in r.text


def test_github_app_token_in_gits_basic_form(world: World, tmp_path: Path) -> None:
    if why := GitServer.missing():
        pytest.skip(why)
    assert world.api("gh").status_code == 200  # the installation token is minted (cached)
    world.git.password = world.ts.state.github_tokens[-1]
    world.git.make_repo("app", {"README": "from the app\n"})
    env = {
        **sandbox(keybroker_env(world.proxy, "acme", world.acme.token), tmp_path / "home"),
        "GIT_TERMINAL_PROMPT": "0",
    }
    url = world.git.url("/app.git").replace("https://", "https://x-access-token:<<secret:gh>>@")
    out = run(["git", "clone", "-q", url, "c"], env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "c" / "README").read_text() == "from the app\n"
    assert_no_leak((out.stdout + out.stderr).encode(), world.git.password.encode(), "git")


def test_token_requests_are_audited_without_values(world: World) -> None:
    text = world.proxy.audit_path.read_text()
    recs = [json.loads(x) for x in text.splitlines() if x.strip()]
    token_recs = [r for r in recs if r["path"] == "/token"]
    assert token_recs and all(r["method"] == "POST" for r in token_recs)
    assert any(r["reason"] == "token_unavailable" for r in token_recs)
    assert any(r["path"].endswith("/access_tokens") for r in recs)
    # Write-ahead: each token request's `sent` record precedes its `done` (same id).
    minted = [r for r in recs if r["path"] == "/token" or r["path"].endswith("/access_tokens")]
    sent = {r["id"]: i for i, r in enumerate(recs) if r["phase"] == "sent" and r in minted}
    done = [(i, r) for i, r in enumerate(recs) if r["phase"] == "done" and r in minted]
    assert done and all(r["id"] in sent and sent[r["id"]] < i for i, r in done)
    st = world.ts.state
    values = [c.client_secret for c in CLIENTS.values()] + list(world.seeds.values())
    values += list(st.tokens) + list(st.refresh) + list(st.github_tokens)
    for v in values:
        assert_no_leak(text.encode(), v.encode(), "the audit")


# -- captured tokens --------------------------------------------------------------------------
def test_captured_oauth_token_reaches_the_agent_as_a_placeholder(world: World) -> None:
    app = CLIENTS["agentapp"]
    s = world.session()
    form = {
        "grant_type": "client_credentials",
        "client_id": app.client_id,
        "client_secret": app.client_secret,
    }
    r = s.post(world.ts.url("/token"), data=form, timeout=30)
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    assert re.fullmatch(r"<<secret:cap\.[0-9a-f]{16}>>", token), token
    real = [t for t, v in world.ts.state.tokens.items() if v.client_id == app.client_id]
    assert len(real) == 1 and real[0] not in r.text
    # Substituted back toward the host that issued it ...
    r = s.get(world.ts.url("/api/me"), headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["token"] == token
    # ... never elsewhere (127.0.0.1 is not in the capture's hosts) ...
    other = f"https://127.0.0.1:{world.ts.port}/api/me"
    r = s.get(other, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 403 and r.json()["reason"] == "host_not_allowed"
    # ... and never for another tenant.
    g = requests.Session()
    g.proxies = world.proxy.proxies("globex", GLOBEX.token)
    g.verify, g.trust_env = str(world.proxy.ca_path), False
    r = g.get(world.ts.url("/api/me"), headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 403 and r.json()["reason"] == "unknown_secret"


def test_captured_session_cookie_and_its_ttl(world: World) -> None:
    s = world.session()
    r = s.post(world.ts.url("/login"), timeout=30)
    assert r.status_code == 200
    set_cookie = r.headers["set-cookie"]
    m = re.search(r"session=(<<secret:cap\.[0-9a-f]{16}>>)", set_cookie)
    assert m, set_cookie
    assert world.ts.state.sessions[-1] not in set_cookie
    cookie = {"Cookie": f"session={m.group(1)}"}
    r = s.get(world.ts.url("/api/me"), headers=cookie, timeout=30)
    assert r.status_code == 200, r.text
    time.sleep(2.2)  # past the capture's ttl of 2 s
    r = s.get(world.ts.url("/api/me"), headers=cookie, timeout=30)
    # An expired cookie pair is dropped (as every refused cookie is): the server
    # sees no session and answers 401 itself.
    assert r.status_code == 401 and r.json() == {"error": "invalid_token"}
    # An expired token in another location is simply unknown.
    r = s.get(
        world.ts.url("/api/me"), headers={"Authorization": f"Bearer {m.group(1)}"}, timeout=30
    )
    assert r.status_code == 403 and r.json()["reason"] == "unknown_secret"


def test_google_service_account_assertion(world: World) -> None:
    """RFC 7523 as Google uses it: Authlib's JWT-bearer grant verifies the
    assertion with the account's public key and the token URL as audience."""
    st = world.ts.state
    before = st.token_requests
    r = world.api("sa")
    assert r.status_code == 200, r.text
    assert r.json()["token"] == "<<secret:sa>>"
    assert world.api("sa").status_code == 200
    assert st.token_requests == before + 1
    claims = st.assertions[-1]
    assert claims["iss"] == CLIENTS["sa"].client_id
    assert claims["aud"] == world.ts.url("/token")
    assert claims["scope"] == "https://www.googleapis.com/auth/devstorage.read_only"
    assert claims["sub"] == "user@example.com"
    assert claims["exp"] - claims["iat"] == 3600


def test_a_login_completed_without_holding_the_tokens(world: World) -> None:
    """The agent refreshes with a captured refresh token (form body): the
    issuer rotates it, and every new token reaches the agent as a placeholder."""
    app, s = CLIENTS["login"], world.session()
    auth = (app.client_id, app.client_secret)
    first = s.post(
        world.ts.url("/token"),
        data={"grant_type": "refresh_token", "refresh_token": world.seeds["login"]},
        auth=auth,
        timeout=30,
    ).json()
    assert first["refresh_token"].startswith("<<secret:cap.")
    second = s.post(
        world.ts.url("/token"),
        data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
        auth=auth,
        timeout=30,
    )
    assert second.status_code == 200, second.text  # the real refresh token went out, in the body
    token = second.json()["access_token"]
    assert token.startswith("<<secret:cap.") and token != first["access_token"]
    r = s.get(world.ts.url("/api/me"), headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200, r.text
