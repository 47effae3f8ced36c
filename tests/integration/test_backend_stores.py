"""Each store of DESIGN.md §14 end to end: the real ``keybroker run``, a real
client (requests through the proxy) and a real upstream; the store is moto in
server mode (AWS), the real ``bao`` CLI on the OpenBao dev server (exec), or
a local HTTPS server following the vendor's published API (1Password
Connect, Doppler, Infisical; each app in tests/support/vendor_apis.py names
its document).

Per store, one server and one broker for the whole module (params on a
module-scoped fixture): allowed use, scrubbing of the echoed value, a missing
secret, the store down, a wrong credential, a store whose certificate is not
trusted, rotation seen after ``cache_ttl``, and no value or backend
credential in the broker's output or audit.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.net import free_port, wait_for
from tests.support.openbao import OpenBao
from tests.support.proxy import Proxy
from tests.support.scenario import Tenant
from tests.support.stores import FACTORIES, Store, canary
from tests.support.tlsca import TestCA
from tests.support.upstream import Upstream

pytestmark = pytest.mark.integration

# secret name -> (backend entry, rule)
SECRETS = {
    "ok": ("main", "ok"),
    "missing": ("main", "missing"),
    "down": ("down", "ok"),
    "wrong": ("wrong", "ok"),
    "untrusted": ("untrusted", "ok"),
    "rot": ("fast", "rot"),
}
BROKEN = {name: free_port() for name in ("down", "wrong", "untrusted")}
"""Secrets whose store cannot be read, each with a destination of its own
(a port nothing listens on: these requests never reach a server). Until the
broker knows a value it refuses requests to the destinations that value may
go to (a response there could echo it; broker/backends/preload.py), so a
broken store must not share a destination with the working ones."""


def port_of(secret: str, upstream: Upstream) -> int:
    return BROKEN.get(secret, upstream.port)


@dataclass
class Case:
    store: Store
    proxy: Proxy
    tenant: Tenant
    values: dict[str, str]
    """Rule -> the value it holds now."""
    old: list[str] = field(default_factory=list)
    """Values rotated away (still never to be seen)."""


def policy(
    store: Store, tenant: Tenant, workdir: Path, upstream: Upstream, ca: TestCA
) -> dict[str, Any]:
    secrets = {}
    for name, (entry, rule) in SECRETS.items():
        if entry not in store.backends:
            continue
        path, fld = store.rules[rule]
        secrets[name] = {"backend": f"{store.kind}-{entry}", "path": path, "field": fld,
                         "hosts": ["127.0.0.1"], "ports": [port_of(name, upstream)]}  # fmt: skip
    return {
        "version": 1,
        "certs_dir": str(workdir / "certs"),
        "upstream_ca": ca.ca_path,
        "audit": {"path": str(workdir / "audit.jsonl")},
        "backends": {f"{store.kind}-{k}": v for k, v in store.backends.items()},
        "tenants": {"acme": {"token_sha256": tenant.digest, "secrets": secrets}},
        # The default preload_unknown (refuse): each broken store has a
        # destination of its own (BROKEN), so the working ones are served.
    }


@pytest.fixture(scope="module", params=sorted(FACTORIES))
def case(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    test_ca: TestCA,
    upstream: Upstream,
    openbao: OpenBao,
) -> Iterator[Case]:
    workdir = tmp_path_factory.mktemp(f"store-{request.param}")
    with ExitStack() as stack:
        store = FACTORIES[request.param](stack, ca=test_ca, tmp=workdir, openbao=openbao)
        values = {rule: canary(f"{store.kind}_{rule}") for rule in ("ok", "rot")}
        for rule, value in values.items():
            store.put(*store.rules[rule], value)
        tenant = Tenant("acme")
        proxy = Proxy(policy(store, tenant, workdir, upstream, test_ca), workdir, env=store.env)
        stack.enter_context(proxy)
        yield Case(store, proxy, tenant, values)


def call(case: Case, upstream: Upstream, secret: str) -> requests.Response:
    return requests.get(
        f"https://127.0.0.1:{port_of(secret, upstream)}/echo/{secret}",
        headers={"Authorization": f"Bearer <<secret:{secret}>>"},
        proxies=case.proxy.proxies("acme", case.tenant.token),
        verify=str(case.proxy.ca_path),
        timeout=30,
    )


def sent(upstream: Upstream) -> str | None:
    return upstream.received[-1].header("authorization") if upstream.received else None


def test_allowed_use_substitutes_the_value_and_scrubs_its_echo(
    case: Case, upstream: Upstream
) -> None:
    upstream.clear()
    r = call(case, upstream, "ok")
    assert r.status_code == 200, r.text
    assert sent(upstream) == f"Bearer {case.values['ok']}"
    assert case.values["ok"] not in r.text  # /echo reflected it; the broker scrubbed it
    assert r.json()["headers"]["authorization"] != f"Bearer {case.values['ok']}"


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        pytest.param("missing", "secret_not_found", id="missing-secret"),
        pytest.param("down", "backend_unavailable", id="store-down"),
        pytest.param("wrong", None, id="wrong-credential"),
        pytest.param("untrusted", "backend_unavailable", id="untrusted-certificate"),
    ],
)
def test_failures_are_502_with_their_reason_and_nothing_upstream(
    case: Case, upstream: Upstream, secret: str, reason: str | None
) -> None:
    if secret == "untrusted" and "untrusted" not in case.store.backends:
        pytest.skip(f"{case.store.kind} has no ca_cert of its own to leave out")
    upstream.clear()
    r = call(case, upstream, secret)
    assert r.status_code == 502, r.text
    assert r.json()["reason"] == (reason or case.store.wrong_reason)
    assert r.json()["secret"] == secret
    assert upstream.received == []
    why = f"backend '{case.store.kind}-{SECRETS[secret][0]}'"
    # The operator's line: from the read this request made, or (a store that
    # could not be read at start-up) from the preload that keeps failing.
    lines = (f"keybroker: secret {secret!r} of tenant 'acme': ", f"preload of acme/{secret} failed")
    assert wait_for(lambda: any(x in case.proxy.output() for x in lines), 5)
    logged = next(ln for ln in case.proxy.output().splitlines() if any(x in ln for x in lines))
    assert why in logged and case.store.why[secret] in logged, logged


def test_rotation_is_seen_after_cache_ttl_and_not_before(case: Case, upstream: Upstream) -> None:
    first = case.values["rot"]
    upstream.clear()
    assert call(case, upstream, "rot").status_code == 200
    assert sent(upstream) == f"Bearer {first}"
    rotated = canary(f"{case.store.kind}_rotated")
    case.store.put(*case.store.rules["rot"], rotated)
    case.values["rot"], case.old = rotated, [*case.old, first]
    r = call(case, upstream, "rot")  # within cache_ttl (1 s): the cached value
    assert r.status_code == 200 and sent(upstream) == f"Bearer {first}"
    seen = []
    for _ in range(40):  # bounded: 40 x ~0.1 s, well past the TTL
        r = call(case, upstream, "rot")
        assert r.status_code == 200, r.text
        seen.append(sent(upstream))
        if seen[-1] == f"Bearer {rotated}":
            break
        time.sleep(0.1)
    assert seen[-1] == f"Bearer {rotated}", "rotation not picked up"
    # the rotated-away value stays known to the broker: sent raw, it is refused
    r = requests.get(
        f"https://127.0.0.1:{upstream.port}/echo/x",
        headers={"X-Old": first},
        proxies=case.proxy.proxies("acme", case.tenant.token),
        verify=str(case.proxy.ca_path),
        timeout=30,
    )
    assert r.status_code == 403 and r.json()["reason"] == "raw_secret_egress"


def test_no_value_or_credential_in_output_or_audit(case: Case) -> None:
    """Runs after the failures above, so the broker has logged each of them."""
    out = case.proxy.output()
    audit = case.proxy.audit_path.read_text()
    assert f"backend '{case.store.kind}-down'" in out  # the failures were logged ...
    for leak in [*case.values.values(), *case.old, *case.store.credentials, *case.store.noise]:
        assert leak not in out, "broker output holds a value, credential or store message"
        assert leak not in audit, "audit holds a value, credential or store message"
