"""Egress control through the real ``keybroker run`` (DESIGN.md §12):
allowlists in enforce and report mode, private destinations in every
spelling, a CONNECT refused at once, DNS resolved once (rebinding), and
``keybroker audit suggest``.

The broker runs with scripted DNS (tests/support/fakedns): names map to
127.0.0.1, which plays the public internet (tenants list it in
``egress.private``), or to private addresses. A second listener on
127.0.0.2, the same port, plays an internal service nothing may reach.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.net import free_port, port_open, wait_for
from tests.support.proxy import REPO, Proxy
from tests.support.scenario import Tenant
from tests.support.tlsca import TestCA
from tests.support.upstream import Upstream

pytestmark = pytest.mark.integration

FAKEDNS = REPO / "tests" / "support" / "fakedns"
KEY = "kbcanary_egress_0123456789abcdef"
T = {n: Tenant(n) for n in ("enf", "rep", "open", "lan", "rebind")}


class Listener:
    """The internal service: counts every TCP connection it accepts."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_server((host, port))
        self.accepted = 0
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    ca = TestCA(tmp_path_factory.mktemp("egress-ca"))
    names = ["api.public.test", "svc.public.test", "other.public.test", "*.wild.test", "wild.test"]
    names += ["rebind.test", "rebind2.test", "inside.test", "mixed.test"]
    with Upstream(ca, names=names) as u:
        yield u


@pytest.fixture(scope="module")
def internal(up: Upstream) -> Iterator[Listener]:
    listener = Listener("127.0.0.2", up.port)
    yield listener
    listener.close()


@pytest.fixture(scope="module")
def kb(
    up: Upstream, internal: Listener, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    work = tmp_path_factory.mktemp("egress-broker")
    p = up.port
    dns = {
        "api.public.test": [["127.0.0.1"]],
        "svc.public.test": [["127.0.0.1"]],
        "other.public.test": [["127.0.0.1"]],
        "a.wild.test": [["127.0.0.1"]],
        "h2.wild.test": [["127.0.0.1"], ["127.0.0.2"]],
        "wild.test": [["127.0.0.1"]],
        "rebind.test": [["127.0.0.1"], ["127.0.0.2"]],
        "rebind2.test": [["127.0.0.1"], ["127.0.0.2"]],
        "metadata.test": [["169.254.169.254"]],
        "intranet.test": [["10.1.2.3"]],
        "mixed.test": [["10.1.2.3", "127.0.0.1"]],
        "inside.test": [["127.0.0.2"]],
    }
    (work / "dns.json").write_text(json.dumps(dns))
    public = ["127.0.0.1/32"]
    secret = {"backend": "local", "path": "KB_EGRESS_KEY", "hosts": ["svc.public.test"]}
    policy: dict[str, Any] = {
        "version": 1,
        "certs_dir": str(work / "certs"),
        "upstream_ca": up.ca.ca_path,
        "audit": {"path": str(work / "audit.jsonl")},
        "backends": {"local": {"type": "env"}},
        "tenants": {
            "enf": {
                "token_sha256": T["enf"].digest,
                "egress": {
                    "mode": "enforce",
                    "allow": [f"api.public.test:{p}", f"*.wild.test:{p}"],
                    "private": public,
                },
                "secrets": {"key": {**secret, "ports": [p]}},
            },
            "rep": {
                "token_sha256": T["rep"].digest,
                "egress": {"mode": "report", "allow": [f"api.public.test:{p}"], "private": public},
            },
            "open": {"token_sha256": T["open"].digest},
            "lan": {
                "token_sha256": T["lan"].digest,
                "egress": {"mode": "report", "private": ["127.0.0.0/8"]},
            },
            "rebind": {
                "token_sha256": T["rebind"].digest,
                "egress": {"mode": "report", "private": public},
            },
        },
    }
    env = {
        "PYTHONPATH": str(FAKEDNS),
        "KB_FAKE_DNS": str(work / "dns.json"),
        "KB_EGRESS_KEY": KEY,
    }
    with Proxy(policy, work, env=env, quiet=True) as proxy:
        yield proxy


def lookups(kb: Proxy, name: str) -> int:
    log = kb.workdir / "dns.json.log"
    return log.read_text().split().count(name) if log.exists() else 0


def audit(kb: Proxy) -> list[dict[str, Any]]:
    return [json.loads(line) for line in kb.audit_path.read_text().splitlines()]


def get(kb: Proxy, tenant: str, url: str, **kw: Any) -> requests.Response:
    return requests.get(
        url,
        proxies=kb.proxies(tenant, T[tenant].token),
        verify=str(kb.ca_path),
        timeout=20,
        **kw,
    )


def connect(kb: Proxy, tenant: str, target: str) -> tuple[int, dict[str, str], bytes]:
    """A raw CONNECT; returns (status, lower-cased headers, body)."""
    with socket.create_connection(("127.0.0.1", kb.port), timeout=20) as s:
        auth = Proxy.auth_header(tenant, T[tenant].token)
        s.sendall(
            f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
            f"Proxy-Authorization: {auth}\r\n\r\n".encode()
        )
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(
            (k.strip().lower(), v.strip()) for k, _, v in (ln.partition(":") for ln in lines[1:])
        )
        want = int(headers.get("content-length", "0"))
        while len(body) < want:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(lines[0].split()[1]), headers, body


def _read_response(s: Any) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def absolute(kb: Proxy, tenant: str, host: str, port: int) -> tuple[int, dict[str, str], bytes]:
    """A plain-http absolute-form request through the proxy (no CONNECT)."""
    auth = Proxy.auth_header(tenant, T[tenant].token)
    with socket.create_connection(("127.0.0.1", kb.port), timeout=20) as s:
        s.sendall(
            f"GET http://{host}:{port}/x HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Proxy-Authorization: {auth}\r\nConnection: close\r\n\r\n".encode()
        )
        return _read_response(s)


def inside(kb: Proxy, tenant: str, host: str, port: int) -> tuple[int, dict[str, str], bytes]:
    """CONNECT, TLS with the broker, then one request inside the tunnel."""
    auth = Proxy.auth_header(tenant, T[tenant].token)
    raw = socket.create_connection(("127.0.0.1", kb.port), timeout=20)
    raw.sendall(
        f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Proxy-Authorization: {auth}\r\n\r\n".encode()
    )
    status, _, _ = _read_response(raw)
    assert status == 200, status
    ctx = ssl.create_default_context(cafile=str(kb.ca_path))
    ctx.check_hostname = False  # the broker's own answer is what is checked here
    with ctx.wrap_socket(raw, server_hostname=host.strip("[]")) as s:
        s.sendall(f"GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        return _read_response(s)


def curl(kb: Proxy, tenant: str, url: str) -> subprocess.CompletedProcess[str]:
    proxy = f"http://{tenant}:{T[tenant].token}@127.0.0.1:{kb.port}"
    return subprocess.run(
        [
            "curl",
            "-sS",
            "-v",
            "--max-time",
            "20",
            "--proxy",
            proxy,
            "--cacert",
            str(kb.ca_path),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


# -- allowlists ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("host", "status"),
    [
        pytest.param("api.public.test", 200, id="exact"),
        pytest.param("API.Public.Test.", 200, id="exact-case-trailing-dot"),
        pytest.param("a.wild.test", 200, id="wildcard-subdomain"),
        pytest.param("svc.public.test", 200, id="a-secret-host"),
        pytest.param("wild.test", 403, id="wildcard-not-apex"),
        pytest.param("other.public.test", 403, id="unlisted"),
    ],
)
def test_enforce_hosts(kb: Proxy, up: Upstream, host: str, status: int) -> None:
    if status == 200:
        r = get(kb, "enf", f"https://{host}:{up.port}/echo/e")
        assert r.status_code == 200, r.text
        return
    before = up.connections_total
    got, _headers, body = connect(kb, "enf", f"{host}:{up.port}")
    assert got == 403 and json.loads(body)["reason"] == "egress_denied"
    assert up.connections_total == before


def test_enforce_fronted_host_refused(kb: Proxy, up: Upstream) -> None:
    """A listed connection target with an unlisted Host: no fronting past the list."""
    before = len(up.received)
    r = get(kb, "enf", f"https://api.public.test:{up.port}/echo/f", headers={"Host": "evil.test"})
    assert r.status_code == 403 and r.json()["reason"] == "egress_denied"
    assert len(up.received) == before


def test_enforce_wrong_port_refused(kb: Proxy, up: Upstream) -> None:
    status, headers, body = connect(kb, "enf", "api.public.test:443")
    assert status == 403
    assert headers["x-keybroker-decision"] == "deny; reason=egress_denied"
    assert json.loads(body)["reason"] == "egress_denied"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_connect_refused_at_once_curl(kb: Proxy, up: Upstream) -> None:
    """An unlisted CONNECT: 403 before any TLS, no upstream connection, and
    no DNS query for the name (it cannot carry data out through DNS)."""
    before = up.connections_total
    out = curl(kb, "enf", f"https://other.public.test:{up.port}/echo/x")
    assert out.returncode != 0
    assert "CONNECT tunnel failed, response 403" in out.stderr
    assert "x-keybroker-decision: deny; reason=egress_denied" in out.stderr.lower()
    assert up.connections_total == before
    assert lookups(kb, "other.public.test") == 0
    rec = audit(kb)[-1]
    assert (rec["tenant"], rec["method"], rec["reason"]) == ("enf", "CONNECT", "egress_denied")
    assert (rec["host"], rec["port"], rec["status"]) == ("other.public.test", up.port, 403)


def test_report_mode_forwards_and_audits(kb: Proxy, up: Upstream) -> None:
    r = get(kb, "rep", f"https://other.public.test:{up.port}/echo/report?q=1")
    assert r.status_code == 200, r.text
    rec = audit(kb)[-1]
    assert rec["decision"] == "pass" and rec["reason"] == "egress_denied"
    assert rec["report"] is True and rec["host"] == "other.public.test"
    ok = get(kb, "rep", f"https://api.public.test:{up.port}/echo/listed")
    assert ok.status_code == 200
    rec = audit(kb)[-1]
    assert rec["reason"] is None and "report" not in rec


def test_audit_suggest(kb: Proxy, up: Upstream) -> None:
    for host in ("other.public.test", "a.wild.test", "api.public.test"):
        assert get(kb, "rep", f"https://{host}:{up.port}/echo/s").status_code == 200
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "broker.cli",
            "audit",
            "suggest",
            "--config",
            str(kb.config),
            "--tenant",
            "rep",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert f'"a.wild.test:{up.port}"' in out.stdout
    assert f'"other.public.test:{up.port}"' in out.stdout
    assert f'"api.public.test:{up.port}"' in out.stdout  # already listed: kept


# -- private destinations ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "host",
    [
        pytest.param("127.0.0.2", id="loopback"),
        pytest.param("2130706433", id="decimal-127.0.0.1"),
        pytest.param("0x7f.1", id="hex-short-127.0.0.1"),
        pytest.param("0177.0.0.1", id="octal-127.0.0.1"),
        pytest.param("127.1", id="short-127.0.0.1"),
        pytest.param("[::1]", id="v6-loopback"),
        pytest.param("[::ffff:127.0.0.1]", id="v4-mapped-v6"),
        pytest.param("[::ffff:a9fe:a9fe]", id="v4-mapped-metadata-hex"),
        pytest.param("169.254.169.254", id="metadata"),
        pytest.param("10.0.0.1", id="rfc1918-10"),
        pytest.param("172.16.0.1", id="rfc1918-172"),
        pytest.param("192.168.1.1", id="rfc1918-192"),
        pytest.param("100.64.0.1", id="cgnat"),
        pytest.param("[fd00::1]", id="ula"),
        pytest.param("[fe80::1]", id="v6-link-local"),
        pytest.param("0.0.0.0", id="unspecified"),
        pytest.param("[::]", id="v6-unspecified"),
        pytest.param("224.0.0.1", id="multicast"),
        pytest.param("metadata.test", id="name-to-metadata"),
        pytest.param("intranet.test", id="name-to-rfc1918"),
        pytest.param("inside.test", id="name-to-loopback"),
    ],
)
def test_private_refused(kb: Proxy, internal: Listener, up: Upstream, host: str) -> None:
    """Any tenant, with or without an allowlist: 403 private_address, on
    the request path (after the placeholder decisions), nothing connected."""
    before = internal.accepted
    status, headers, body = absolute(kb, "open", host, up.port)
    assert status == 403, body
    assert headers["x-keybroker-decision"] == "deny; reason=private_address"
    assert json.loads(body)["reason"] == "private_address"
    assert internal.accepted == before


@pytest.mark.parametrize("host", ["127.0.0.2", "[::1]", "metadata.test", "inside.test"])
def test_private_refused_inside_a_tunnel(
    kb: Proxy, internal: Listener, up: Upstream, host: str
) -> None:
    before = internal.accepted
    status, headers, body = inside(kb, "open", host, up.port)
    assert status == 403, body
    assert headers["x-keybroker-decision"] == "deny; reason=private_address"
    assert internal.accepted == before


def test_private_refused_plain_http(kb: Proxy, internal: Listener, up: Upstream) -> None:
    """An absolute-form request (no CONNECT) is checked on the request path."""
    r = requests.get(
        f"http://127.0.0.2:{up.port}/x",
        proxies=kb.proxies("open", T["open"].token),
        timeout=20,
    )
    assert r.status_code == 403 and r.json()["reason"] == "private_address"
    assert internal.accepted == 0


def test_placeholder_reason_comes_first(kb: Proxy, up: Upstream) -> None:
    r = requests.get(
        f"http://127.0.0.2:{up.port}/x",
        headers={"Authorization": "Bearer <<secret:nope>>"},
        proxies=kb.proxies("open", T["open"].token),
        timeout=20,
    )
    assert r.status_code == 403 and r.json()["reason"] == "unknown_secret"


def test_listed_range_reaches_private(kb: Proxy, up: Upstream) -> None:
    """egress.private lets a tenant reach its internal range; a mixed answer
    connects to the allowed address, never the other one."""
    r = get(kb, "lan", f"https://api.public.test:{up.port}/echo/lan")
    assert r.status_code == 200, r.text
    r = get(kb, "rep", f"https://mixed.test:{up.port}/echo/mixed")
    assert r.status_code == 200, r.text  # connected to 127.0.0.1, never tried 10.1.2.3


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_http2_streams_share_one_lookup(kb: Proxy, up: Upstream, internal: Listener) -> None:
    """An HTTP/2 agent (curl): every stream in the tunnel uses the address
    resolved once for it; the second DNS answer (private) is never used."""
    proxy = f"http://enf:{T['enf'].token}@127.0.0.1:{kb.port}"
    cmd = ["curl", "-sS", "--http2", "--max-time", "20", "--proxy", proxy]
    cmd += ["--cacert", str(kb.ca_path), "-w", "%{http_version} %{http_code}\\n"]
    for i in range(4):
        cmd += ["-o", "/dev/null", f"https://h2.wild.test:{up.port}/echo/h2/{i}"]
    before = internal.accepted
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert out.stdout.split("\n")[:4] == ["2 200"] * 4, out
    assert lookups(kb, "h2.wild.test") == 1
    assert internal.accepted == before


# -- rebinding -------------------------------------------------------------------------------
def test_rebinding_connects_to_the_checked_address(
    kb: Proxy, up: Upstream, internal: Listener
) -> None:
    """First lookup public (127.0.0.1, allowed), every later one private
    (127.0.0.2, refused). The broker looks up once and connects to exactly
    the address it checked: the upstream answers, the internal service never
    sees a connection, and the name is looked up once per client connection."""
    before = internal.accepted
    with requests.Session() as s:
        for i in range(3):
            r = s.get(
                f"https://rebind.test:{up.port}/echo/rebind{i}",
                proxies=kb.proxies("rebind", T["rebind"].token),
                verify=str(kb.ca_path),
                timeout=20,
            )
            assert r.status_code == 200, r.text
            assert r.json()["path"] == f"/echo/rebind{i}"
    assert internal.accepted == before
    assert lookups(kb, "rebind.test") == 1
    # A new client connection looks up again: now private, refused.
    status, _, body = inside(kb, "rebind", "rebind.test", up.port)
    assert status == 403 and json.loads(body)["reason"] == "private_address"
    assert lookups(kb, "rebind.test") == 2
    assert internal.accepted == before


@pytest.mark.skipif(shutil.which("node") is None, reason="node not installed")
def test_node_client_refused(kb: Proxy, up: Upstream, tmp_path: Path) -> None:
    """Node's own CONNECT (http.request with method CONNECT) sees the 403."""
    script = tmp_path / "c.js"
    script.write_text(
        "const http=require('http');"
        "const r=http.request({host:'127.0.0.1',port:+process.argv[2],method:'CONNECT',"
        "path:'other.public.test:'+process.argv[3],headers:{'Proxy-Authorization':process.argv[4]}});"
        "r.on('connect',(res)=>{console.log(res.statusCode,res.headers['x-keybroker-decision']);"
        "process.exit(0)});r.end();"
    )
    out = subprocess.run(
        ["node", str(script), str(kb.port), str(up.port), Proxy.auth_header("enf", T["enf"].token)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ},
    )
    assert out.stdout.split(None, 1) == ["403", "deny; reason=egress_denied\n"], out


def test_doctor_reports_egress_mode_and_passes(kb: Proxy) -> None:
    """doctor's own CONNECT (to keybroker.invalid) is answered by the broker,
    never refused by the allowlist, and it prints the tenant's egress mode."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "broker.cli",
            "doctor",
            "--config",
            str(kb.config),
            "--tenant",
            "enf",
            "--token",
            T["enf"].token,
            "--listen",
            f"127.0.0.1:{kb.port}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    text = out.stdout + out.stderr
    assert "✓ 7" in text, text
    assert "egress: mode enforce: 2 allow entries" in text, text


def test_mitmdump_script_pins_and_refuses_too(kb: Proxy, up: Upstream, internal: Listener) -> None:
    """``mitmdump -s addons/keybroker.py`` loads the egress sub-addon: an
    unlisted CONNECT is refused at once and a rebinding name is connected
    to at its checked address."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(FAKEDNS),
        "KB_FAKE_DNS": str(kb.workdir / "dns.json"),
        "KB_EGRESS_KEY": KEY,
        "HOME": str(kb.workdir),
    }
    cfg = kb.workdir / "mitmdump.yaml"  # its own audit chain (one writer per chain)
    cfg.write_text(json.dumps({**kb.policy, "audit": {"path": str(kb.workdir / "md.jsonl")}}))
    mitmdump = Path(sys.executable).parent / "mitmdump"
    script = REPO / "addons" / "keybroker.py"
    with (kb.workdir / "mitmdump.out").open("wb") as out:
        proc = subprocess.Popen(
            [
                str(mitmdump),
                "-q",
                "--listen-host",
                "127.0.0.1",
                "--listen-port",
                str(port),
                "-s",
                str(script),
                "--set",
                f"keybroker_config={cfg}",
            ],
            cwd=kb.workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        assert wait_for(lambda: port_open(port) or proc.poll() is not None, 30)
        assert proc.poll() is None, (kb.workdir / "mitmdump.out").read_text()
        other = Proxy(kb.policy, kb.workdir)
        other.port = port
        status, _, body = connect(other, "enf", f"other.public.test:{up.port}")
        assert status == 403 and json.loads(body)["reason"] == "egress_denied"
        before = internal.accepted
        r = get(other, "rebind", f"https://rebind2.test:{up.port}/echo/mitmdump")
        assert r.status_code == 200, r.text
        assert internal.accepted == before
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
