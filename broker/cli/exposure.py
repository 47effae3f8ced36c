"""``keybroker doctor``'s checks beyond the broker itself: can this sandbox
go around the broker, will its Node honour the proxy, and does the broker
trust the upstream the user names.

Each check returns :class:`Advice` lines (``ok``, ``warn`` or ``fail``, with
what to do); :mod:`broker.cli.doctor` prints them after its numbered steps."""

from __future__ import annotations

import base64
import http.client
import json
import re
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from broker.policy.schema import Policy

Level = Literal["ok", "warn", "fail"]
SANDBOX_RULES = "docs/agents.md, 'When a client bypasses the proxy'"
# NODE_USE_ENV_PROXY: fetch() honours HTTP(S)_PROXY from 22.21 (22.x) and 24.0.
NODE_ENV_PROXY = ((22, 21), (24, 0))


@dataclass(frozen=True)
class Advice:
    level: Level
    what: str
    fix: str = ""


def proxy_variables(environ: Mapping[str, str], proxy: str) -> list[Advice]:
    """Is this shell set up the way ``keybroker env`` leaves it? Without the
    proxy variables every client here goes direct: placeholders go out as
    text and nothing is audited."""
    fix = "load `keybroker env` in the sandbox (README quickstart) before starting the agent"
    missing = [n for n in ("HTTPS_PROXY", "https_proxy") if not environ.get(n)]
    if len(missing) == 2:
        return [Advice("warn", "HTTPS_PROXY is not set in this shell: its clients go direct", fix)]
    url = environ.get("HTTPS_PROXY") or environ.get("https_proxy") or ""
    if not url.rstrip("/").endswith(proxy):
        return [Advice("warn", f"HTTPS_PROXY points elsewhere than the broker at {proxy}", fix)]
    no_proxy = environ.get("NO_PROXY") or environ.get("no_proxy") or ""
    if no_proxy.strip():
        return [
            Advice(
                "warn",
                f"NO_PROXY={no_proxy!r}: requests to those hosts go direct, unaudited",
                "leave NO_PROXY empty unless those hosts are meant to bypass the broker",
            )
        ]
    return [Advice("ok", f"this shell's HTTPS_PROXY is the broker at {proxy}, NO_PROXY empty")]


def direct_targets(policy: Policy, tenant: str, upstream: str | None) -> list[tuple[str, int]]:
    """Where to try a direct connection: the named upstream, then the
    tenant's exact secret hosts (at most three in all)."""
    out: list[tuple[str, int]] = []
    if upstream:
        out.append(split_hostport(upstream))
    t = policy.tenants.get(tenant)
    for rule in t.secrets.values() if t else ():
        for host in rule.hosts:
            if "*" not in host:
                out.append((host, rule.ports[0] if rule.ports else 443))
    return list(dict.fromkeys(out))[:3]


def direct_egress(targets: Sequence[tuple[str, int]], timeout: float = 3.0) -> list[Advice]:
    """Try a plain TCP connection to each target, without the proxy. One
    that connects means a client ignoring the proxy variables reaches it."""
    if not targets:
        return []
    reached: dict[tuple[str, int], bool] = {}

    def probe(target: tuple[str, int]) -> None:
        try:
            socket.create_connection(target, timeout=timeout).close()
        except OSError:
            reached[target] = False
        else:
            reached[target] = True

    threads = [threading.Thread(target=probe, args=(t,), daemon=True) for t in targets]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout + 1)  # a name lookup that hangs counts as blocked
    names = ", ".join(f"{h}:{p}" for h, p in targets if reached.get((h, p)))
    if names:
        return [
            Advice(
                "warn",
                f"direct egress is possible: {names} answered without the proxy, so a "
                "client that ignores HTTPS_PROXY reaches it unaudited",
                f"allow only the broker from the sandbox's network ({SANDBOX_RULES})",
            )
        ]
    tried = ", ".join(f"{h}:{p}" for h, p in targets)
    return [Advice("ok", f"no direct connection from here to {tried}")]


def node_version(node: str | None = None) -> tuple[int, int] | None:
    node = node or shutil.which("node")
    if not node:
        return None
    try:
        out = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.match(r"v(\d+)\.(\d+)", out.strip())
    return (int(m[1]), int(m[2])) if m else None


def node_advice(version: tuple[int, int] | None) -> list[Advice]:
    """Node's built-in ``fetch()`` ignores HTTPS_PROXY before 22.21 / 24.0."""
    if version is None:
        return []
    major, minor = version
    ok = any(major == m and minor >= n for m, n in NODE_ENV_PROXY) or major > 24
    if ok:
        return [Advice("ok", f"node v{major}.{minor} honours NODE_USE_ENV_PROXY in fetch()")]
    return [
        Advice(
            "warn",
            f"node v{major}.{minor} on PATH ignores NODE_USE_ENV_PROXY: its fetch() goes "
            "direct, around the broker",
            "use Node >= 22.21 or >= 24, or undici's EnvHttpProxyAgent (docs/agents.md, Node)",
        )
    ]


def split_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or "]" in port:
        return text.strip("[]"), 443
    return host.strip("[]"), int(port)


def upstream_trust(
    upstream: str,
    *,
    proxy: tuple[str, int],
    tenant: str,
    token: str,
    bundle: Path,
    timeout: float = 10.0,
) -> Advice:
    """``GET /`` to the upstream through the broker: the broker verifies the
    upstream's certificate against the system trust store plus
    ``upstream_ca``, and answers 502 ``upstream_tls_failed`` when it cannot."""
    host, port = split_hostport(upstream)
    cred = base64.b64encode(f"{tenant}:{token}".encode()).decode("ascii")
    ctx = ssl.create_default_context(cafile=str(bundle))
    conn = http.client.HTTPSConnection(proxy[0], proxy[1], timeout=timeout, context=ctx)
    conn.set_tunnel(host, port, headers={"Proxy-Authorization": f"Basic {cred}"})
    where = f"https://{host}:{port}/"
    try:
        conn.request("GET", "/", headers={"User-Agent": "keybroker-doctor"})
        resp = conn.getresponse()
        status, decision = resp.status, resp.getheader("x-keybroker-decision") or ""
        body = resp.read(65536)
    except (OSError, http.client.HTTPException) as exc:
        return Advice("fail", f"GET {where} through the broker failed: {exc}")
    finally:
        conn.close()
    fix_tls = (
        "the broker verifies upstreams against its host's system trust store plus the "
        "policy's upstream_ca: add the CA that signed this server's certificate (a "
        "TLS-inspecting egress proxy's CA, a private CA) to upstream_ca, then SIGHUP the broker"
    )
    if "upstream_tls_failed" in decision or b"ertificate verify failed" in body:
        return Advice("fail", f"the broker does not trust {host}:{port}'s certificate", fix_tls)
    if status == 502:
        return Advice("fail", f"GET {where} through the broker: 502 {decision or ''}".rstrip(),
                      _detail(body) or "see `keybroker run`'s feed")  # fmt: skip
    if decision.startswith(("deny", "error")):
        return Advice("warn", f"GET {where} through the broker: {status} {decision}")
    return Advice("ok", f"GET {where} through the broker: {status}, upstream TLS verified")


def _detail(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    return str(data.get("detail", "")) if isinstance(data, dict) else ""
