"""A scrubbed ``Set-Cookie`` echoed back in ``Cookie`` (issue 14.7): the
client's cookie jar holds ``k=<<secret:NAME>>`` and sends it with every
later request. That must not brick the client (no ``location_not_allowed``
on every request), and must never put the value into a cookie unless the
policy allows ``header:cookie``. Real clients: requests' cookie jar, curl's."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.conftest import make_broker
from tests.support.leaks import assert_no_leak
from tests.support.openbao import OpenBao
from tests.support.proxy import Proxy
from tests.support.scenario import Scenario

pytestmark = pytest.mark.integration
SET = "/reflect?where=set-cookie&bare=1"


def session(proxy: Proxy, sc: Scenario) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.proxies = proxy.proxies("acme", sc.acme.token)
    s.verify = str(proxy.ca_path)
    return s


def received_cookies(upstream: Any, path: str) -> list[str]:
    [rec] = [r for r in upstream.received if r.path == path]
    return rec.header_all("cookie")


def records(proxy: Proxy, path: str) -> list[dict[str, Any]]:
    lines = proxy.audit_path.read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("path") == path]


def test_an_echoed_placeholder_cookie_is_dropped_not_denied(
    broker: Proxy, sc: Scenario, upstream: Any
) -> None:
    s = session(broker, sc)
    base = f"https://127.0.0.1:{sc.upstream_port}"
    r = s.get(base + SET, headers={"Authorization": "Bearer <<secret:stripe>>"}, timeout=30)
    assert r.status_code == 200, r.text
    [cookie] = list(s.cookies)
    assert cookie.value is not None and cookie.value.startswith("<<secret:"), cookie.value
    for path, auth in (("/echo/cookie-1", None), ("/echo/cookie-2", "Bearer <<secret:stripe>>")):
        upstream.clear()
        headers = {"Authorization": auth} if auth else {}
        r = s.get(base + path, headers=headers, timeout=30)
        assert r.status_code == 200, r.text  # not bricked
        sent = received_cookies(upstream, path)
        assert not any("secret" in c for c in sent), sent  # the pair was removed
        assert_no_leak("\n".join(sent).encode(), sc.values["acme/stripe"].encode(), "cookies")
        [rec] = [x for x in records(broker, path) if x.get("phase", "done") == "done"]
        assert rec["cookies_dropped"] == [cookie.value[len("<<secret:") : -2]]
        assert rec["decision"] == ("allow" if auth else "pass")
    verify = subprocess.run(
        [*_keybroker(), "audit", "verify", str(broker.audit_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr


def _keybroker() -> list[str]:
    import sys

    return [sys.executable, "-m", "broker.cli"]


def test_other_cookies_survive_and_curl_is_not_bricked(
    broker: Proxy, sc: Scenario, upstream: Any, tmp_path: Path
) -> None:
    jar = tmp_path / "jar.txt"
    base = f"https://127.0.0.1:{sc.upstream_port}"
    curl = ["curl", "-sS", "--proxy", broker.url("acme", sc.acme.token),
            "--cacert", str(broker.ca_path), "-c", str(jar), "-b", str(jar)]  # fmt: skip
    first = subprocess.run(
        [*curl, "-H", "Authorization: Bearer <<secret:stripe>>", base + SET],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert "<<secret:" in jar.read_text()
    upstream.clear()
    second = subprocess.run(
        [*curl, "-b", "theme=dark", "-w", "\n%{http_code}", base + "/echo/curl-cookie"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert second.stdout.rstrip().endswith("200"), second.stdout
    sent = received_cookies(upstream, "/echo/curl-cookie")
    assert sent and not any("secret" in c for c in sent), sent


def test_where_policy_allows_header_cookie_the_value_is_substituted(
    sc: Scenario, openbao: OpenBao, upstream: Any, tmp_path: Path
) -> None:
    """Unchanged: a cookie placeholder the rule allows is a normal substitution."""
    tenants = sc.policy()["tenants"]
    tenants["acme"]["secrets"]["anywhere"]["locations"].append("header:cookie")
    proxy = make_broker(sc, openbao, tmp_path, tenants=tenants)
    with proxy:
        s = session(proxy, sc)
        upstream.clear()
        r = s.get(
            f"https://127.0.0.1:{sc.upstream_port}/echo/cookie-allowed",
            headers={"Cookie": "k=<<secret:anywhere>>"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert received_cookies(upstream, "/echo/cookie-allowed") == [
            f"k={sc.values['acme/anywhere']}"
        ]


def test_an_unknown_secret_in_a_cookie_sends_nothing(
    broker: Proxy, sc: Scenario, upstream: Any
) -> None:
    """A placeholder the tenant has no rule for, in a cookie: the pair is
    removed (it could never be substituted), the rest goes on."""
    upstream.clear()
    r = session(broker, sc).get(
        f"https://127.0.0.1:{sc.upstream_port}/echo/cookie-unknown",
        headers={"Cookie": "a=1; k=<<secret:globex_only>>; b=2"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert received_cookies(upstream, "/echo/cookie-unknown") == ["a=1; b=2"]
