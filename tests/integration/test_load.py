"""Issue 7: a bounded load test. 50 concurrent agents of three tenants, each
with its own keep-alive client, send 20,000 mixed requests (allowed, denied,
reflected, streamed) through a real ``keybroker run`` to the real upstream,
with secrets in a real OpenBao. Expected: no canary in any form in anything
any agent received, no cross-tenant resolution, no unexpected status, and the
broker's RSS and open file descriptors flat between warm-up and the end.

Bounded: agents stop issuing at a global deadline (then at least MIN_DONE
requests must have completed) and every wait has a timeout."""

from __future__ import annotations

import json
import random
import secrets
import ssl
import threading
import time
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.load import LeakScanner, Tally, drain, percentile, proc_sample
from tests.support.openbao import OpenBao
from tests.support.proxy import Proxy
from tests.support.scenario import Scenario, Tenant
from tests.support.upstream import Received, Upstream, encode

pytestmark = pytest.mark.integration

TOTAL = 20_000
AGENTS = 50
DEADLINE_S = 240.0  # stop issuing after this; assert on what was done
MIN_DONE = 5_000
WARMUP = 2_000
REQUEST_TIMEOUT = 30.0
RSS_GROWTH_MAX_KIB = 50 * 1024
FD_GROWTH_MAX = 20
CATS = ("allowed", "denied_host", "denied_unknown", "reflected", "sse", "chunked")
WEIGHTS = (40, 7, 8, 20, 12, 13)
DENIED = {"denied_host": "host_not_allowed", "denied_unknown": "unknown_secret"}
FORMS = ("raw", "b64", "b64url", "hex", "HEX", "pct", "pctall", "json", "jsonu", "basic")
WHERE = "body,header,location,set-cookie,link"


def _request(cat: str, n: int, rng: random.Random, port: int) -> tuple[str, str]:
    """(url, Authorization) for request ``n`` of category ``cat``."""
    base = f"https://127.0.0.1:{port}"
    form, pad = rng.choice(FORMS), rng.randrange(3)
    bearer = "Bearer <<secret:stripe>>"
    if cat == "allowed":
        return f"{base}/echo/load/{n}", bearer
    if cat == "denied_host":
        return f"https://localhost:{port}/echo/load/{n}", bearer
    if cat == "denied_unknown":
        return f"{base}/echo/load/{n}", "Bearer <<secret:nope>>"
    if cat == "reflected":
        bare = rng.randrange(2)
        return f"{base}/reflect?form={form}&pad={pad}&bare={bare}&where={WHERE}&n={n}", bearer
    if cat == "sse":
        return f"{base}/sse?events=2&interval=0&reflect=1&form={form}&bare=1&n={n}", bearer
    return f"{base}/chunked?split=7&form={form}&pad={pad}&bare=1&n={n}", bearer


def _judge(cat: str, n: int, tenant: str, status: int, body: bytes) -> str:
    """ "ok" or what was unexpected about the response."""
    if cat in DENIED:
        if status != 403:
            return f"status {status} {body[:200]!r}"
        doc = json.loads(body)
        if (doc.get("reason"), doc.get("tenant")) != (DENIED[cat], tenant):
            return f"reason {doc.get('reason')} tenant {doc.get('tenant')}"
        return "ok"
    if status != 200:
        return f"status {status} {body[:200]!r}"
    if cat == "allowed" and json.loads(body).get("path") != f"/echo/load/{n}":
        return "answer to another request"
    if cat == "sse" and body.count(b"data: ") != 2:
        return "sse events missing"
    return "ok"


def _agent(
    idx: int,
    tenant: Tenant,
    proxy: Proxy,
    ctx: ssl.SSLContext,
    port: int,
    tally: Tally,
    scanner: LeakScanner,
) -> None:
    rng = random.Random(idx)
    tag = f"{tenant.name}-{idx}"
    try:
        # No cookie jar: a reflected Set-Cookie comes back as k=<<secret:stripe>>,
        # which a jar would replay in Cookie, a location the policy denies.
        jar = CookieJar(DefaultCookiePolicy(allowed_domains=[]))
        with httpx.Client(
            proxy=proxy.url(tenant.name, tenant.token),
            verify=ctx,
            cookies=jar,
            trust_env=False,
            timeout=REQUEST_TIMEOUT,
        ) as client:
            for _ in range(tally.total):  # bounded; claim() ends it sooner
                n = tally.claim(time.monotonic())
                if n is None:
                    break
                cat = rng.choices(CATS, WEIGHTS)[0]
                url, auth = _request(cat, n, rng, port)
                headers = {"Authorization": auth, "X-Agent": tag, "X-Req": str(n), "X-Cat": cat}
                leak: str | None = None
                t0 = time.perf_counter()
                try:
                    with client.stream("GET", url, headers=headers) as r:
                        body = b"".join(r.iter_raw())
                    latency = time.perf_counter() - t0
                    seen = b"\n".join(k + b": " + v for k, v in r.headers.raw) + b"\n\n" + body
                    if scanner.leaks(seen):
                        leak = f"{cat} #{n} leaks {scanner.describe(seen)}"
                    outcome = _judge(cat, n, tenant.name, r.status_code, body)
                except Exception as e:  # counted as unexpected, never raised in a thread
                    latency = time.perf_counter() - t0
                    outcome = f"error {type(e).__name__}"
                tally.record(cat, n, outcome, latency, leak, cat not in DENIED, time.monotonic())
            tally.agent_finished()
            tally.release.wait(60)  # keep the connections open for the final sample
    except Exception as e:  # client setup/teardown; the count check catches it too
        with tally.lock:
            tally.notes.append(f"agent {tag}: {type(e).__name__}")
        tally.agent_finished()


class UpstreamCheck:
    """What the upstream received: each request carries its own tenant's value
    in Authorization and no other tenant's value anywhere; denied requests
    never arrive."""

    def __init__(self, owners: dict[str, str], values: dict[str, str]) -> None:
        self.owners = {v.encode(): t for v, t in owners.items()}
        self.expected_auth = {t: f"Bearer {v}" for t, v in values.items()}
        self.ids: set[int] = set()
        self.per_cat: dict[str, int] = dict.fromkeys(CATS, 0)
        self.cross = self.missing = self.denied_arrived = self.duplicates = 0
        self.placeholders = self.untagged = 0

    def feed(self, recs: list[Received]) -> None:
        for rec in recs:
            agent, cat, req = rec.header("x-agent"), rec.header("x-cat"), rec.header("x-req")
            if agent is None or cat not in self.per_cat or req is None:
                self.untagged += 1
                continue
            tenant = agent.rsplit("-", 1)[0]
            blob = rec.path.encode() + repr(rec.headers).encode() + rec.body
            if {t for v, t in self.owners.items() if v in blob} - {tenant}:
                self.cross += 1
            if b"<<secret:" in blob:
                self.placeholders += 1
            self.per_cat[cat] += 1
            if cat in DENIED:
                self.denied_arrived += 1
            elif rec.header("authorization") != self.expected_auth.get(tenant):
                self.missing += 1
            n = int(req)
            self.duplicates += n in self.ids
            self.ids.add(n)


def _table(tally: Tally, up: UpstreamCheck, elapsed: float) -> str:
    rows = [
        f"{'category':<15}{'done':>7}{'ok':>7}{'unexp':>7}{'upstream':>9}{'p50 ms':>9}{'p99 ms':>9}"
    ]
    for cat in CATS:
        lat = sorted(tally.latency[cat])
        done = sum(tally.outcomes[cat].values())
        ok = tally.outcomes[cat]["ok"]
        rows.append(
            f"{cat:<15}{done:>7}{ok:>7}{done - ok:>7}{up.per_cat[cat]:>9}"
            f"{percentile(lat, 50) * 1e3:>9.1f}{percentile(lat, 99) * 1e3:>9.1f}"
        )
    alls = sorted(x for cat in CATS for x in tally.latency[cat])
    rows.append(
        f"{'all':<15}{tally.done:>7}{'':>7}{'':>7}{sum(up.per_cat.values()):>9}"
        f"{percentile(alls, 50) * 1e3:>9.1f}{percentile(alls, 99) * 1e3:>9.1f}"
    )
    rows.append(
        f"{tally.done} requests by {AGENTS} agents in {elapsed:.1f} s: "
        f"{tally.done / max(elapsed, 1e-9):.1f} req/s"
    )
    return "\n".join(rows)


@pytest.mark.timeout(DEADLINE_S + 180)
def test_bounded_load(sc: Scenario, openbao: OpenBao, upstream: Upstream, tmp_path: Path) -> None:
    initech = Tenant("initech")
    initech_value = f"kbcanary_initechstripe_{secrets.token_hex(12)}"
    openbao.put_v2("initech/stripe", {"api_key": initech_value}, mount=sc.mount)
    policy: dict[str, Any] = sc.policy(audit={"path": str(tmp_path / "audit.jsonl")})
    policy["tenants"]["initech"] = {
        "token_sha256": initech.digest,
        "secrets": {"stripe": sc.secret("initech/stripe")},
    }
    tenants = [sc.acme, sc.globex, initech]
    values = {
        "acme": sc.values["acme/stripe"],
        "globex": sc.values["globex/stripe"],
        "initech": initech_value,
    }
    owners = {v: k.split("/")[0] for k, v in sc.values.items()} | {initech_value: "initech"}

    scanner = LeakScanner(owners)
    for v in owners:  # negative control: the scanner finds what the upstream can send
        for form in FORMS:
            for pad in range(3):
                assert scanner.leaks(b"x: " + encode(form, v.encode(), pad=pad) + b" :end")
    assert not scanner.leaks(b"Bearer [REDACTED] " + b"kbcanary_" * 40)

    upstream.clear()
    check = UpstreamCheck(owners, values)
    proxy = Proxy(policy, tmp_path, env=sc.env(openbao.root_token), quiet=True)
    with proxy:
        assert proxy.proc is not None
        pid = proxy.proc.pid
        ctx = ssl.create_default_context(cafile=str(proxy.ca_path))
        start = time.monotonic()
        tally = Tally(TOTAL, start + DEADLINE_S)
        threads = [
            threading.Thread(
                target=_agent,
                name=f"agent-{i}",
                daemon=True,
                args=(i, tenants[i % 3], proxy, ctx, upstream.port, tally, scanner),
            )
            for i in range(AGENTS)
        ]
        for t in threads:
            t.start()
        warm: tuple[int, int] | None = None
        warm_done = 0
        hard_stop = start + DEADLINE_S + REQUEST_TIMEOUT + 30
        next_check = start
        while time.monotonic() < hard_stop and tally.finished_agents < AGENTS:
            time.sleep(0.25)
            if warm is None and tally.done >= WARMUP:
                warm, warm_done = proc_sample(pid), tally.done
            if time.monotonic() >= next_check:  # check the upstream as we go
                check.feed(drain(upstream))
                next_check = time.monotonic() + 2.0
        elapsed = max(tally.last_done_at - start, 1e-9)
        end = proc_sample(pid)
        broker_alive = proxy.proc.poll() is None
        tally.release.set()
        for t in threads:
            t.join(max(0.1, hard_stop + 30 - time.monotonic()))
        check.feed(drain(upstream))
        stuck = [t.name for t in threads if t.is_alive()]

    print("\n" + _table(tally, check, elapsed))
    if warm is not None:
        print(
            f"broker pid {pid}: after warm-up ({warm_done} requests) RSS {warm[0] / 1024:.1f} "
            f"MiB, {warm[1]} fds; at the end RSS {end[0] / 1024:.1f} MiB, {end[1]} fds "
            f"(growth {(end[0] - warm[0]) / 1024:+.1f} MiB, {end[1] - warm[1]:+d} fds)"
        )
    print(
        f"leaks: {tally.leaks}; cross-tenant: {check.cross}; wrong/missing value upstream: "
        f"{check.missing}; denied that arrived upstream: {check.denied_arrived}; "
        f"placeholders upstream: {check.placeholders}; duplicates: {check.duplicates}"
    )
    for note in tally.notes:
        print("  note:", note)

    assert broker_alive, "the broker died under load"
    assert not stuck, f"agents still running: {stuck}"
    assert tally.done >= MIN_DONE, f"only {tally.done} requests completed by the deadline"
    assert tally.done == tally.issued, "some claimed requests were not recorded"
    assert tally.leaks == 0, tally.notes
    unexpected = {c: sum(n for o, n in tally.outcomes[c].items() if o != "ok") for c in CATS}
    assert sum(unexpected.values()) == 0, (unexpected, tally.notes)
    assert check.cross == 0, "a request carried another tenant's value"
    assert check.missing == check.placeholders == check.untagged == 0
    assert check.denied_arrived == 0, "a denied request reached the upstream"
    assert check.duplicates == 0
    assert check.ids == tally.forwarded_ids, (
        f"{len(check.ids - tally.forwarded_ids)} upstream requests no agent saw answered, "
        f"{len(tally.forwarded_ids - check.ids)} answered requests the upstream never got"
    )
    assert not upstream.errors, upstream.errors[:3]
    assert warm is not None
    assert end[0] - warm[0] < RSS_GROWTH_MAX_KIB, "broker RSS grew under load"
    assert end[1] - warm[1] < FD_GROWTH_MAX, "broker leaked file descriptors"
