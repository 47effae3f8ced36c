"""Issue 5 end to end, Node: the ``https`` module through a hand-made CONNECT
tunnel, and undici's ``EnvHttpProxyAgent``/``ProxyAgent`` (installed from npm
into a temporary directory), in a sandbox holding nothing but
``keybroker env``'s output."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent_env import check_allowed, check_denied, keybroker_env, run, sandbox
from tests.support.leaks import assert_no_leak
from tests.support.proxy import Proxy
from tests.support.scenario import Scenario

pytestmark = pytest.mark.integration

NPM_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def env_vars(broker: Proxy, sc: Scenario) -> dict[str, str]:
    return keybroker_env(broker, "acme", sc.acme.token)


@pytest.fixture
def agent(env_vars: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return sandbox(env_vars, tmp_path / "home")


def check_echo(upstream: Any, sc: Scenario, results: dict[str, Any], stdout: str) -> None:
    """``results``: label -> [status, decision header, body] for paths /echo/<label>;
    labels ending in -deny went to localhost and must be refused."""
    for label, (status, decision, body) in results.items():
        if label.endswith("-deny"):
            check_denied(upstream, f"/echo/{label}", status, decision, body)
        else:
            assert status == 200, (label, body)
            check_allowed(upstream, sc.values["acme/stripe"], f"/echo/{label}", body)
    assert_no_leak(stdout.encode(), sc.values["acme/stripe"].encode(), "the Node client")


# -- Node: the https module through a hand-made CONNECT tunnel ------------------------------
NODE_TUNNEL = r"""
const http = require("http"), https = require("https"), net = require("net"), tls = require("tls");
const proxy = new URL(process.env.HTTPS_PROXY);
const cred = decodeURIComponent(proxy.username) + ":" + decodeURIComponent(proxy.password);
function get(target) {
  const u = new URL(target), where = `${u.hostname}:${u.port || 443}`;
  return new Promise((resolve, reject) => {
    // agent: false: a Node that proxies http itself (NODE_USE_ENV_PROXY) must not proxy this
    const c = http.request({ host: proxy.hostname, port: proxy.port, method: "CONNECT",
      agent: false, path: where, headers: { Host: where,
        "Proxy-Authorization": "Basic " + Buffer.from(cred).toString("base64") } });
    c.on("error", reject);
    c.on("connect", (res, socket) => {
      if (res.statusCode !== 200) return resolve([res.statusCode, "", "CONNECT failed"]);
      const sni = net.isIP(u.hostname) ? undefined : u.hostname;
      const r = https.request({ host: u.hostname, port: u.port, path: u.pathname,
        headers: { Authorization: "Bearer <<secret:stripe>>" },
        createConnection: () => tls.connect({ socket, host: u.hostname, servername: sni }) },
        (resp) => { let body = ""; resp.setEncoding("utf8");
          resp.on("data", (d) => body += d);
          resp.on("end", () => resolve([resp.statusCode,
            resp.headers["x-keybroker-decision"] || "", body])); });
      r.on("error", reject);
      r.end();
    });
    c.end();
  });
}
(async () => {
  const [ok, deny] = process.argv.slice(2);
  const out = {};
  out["node-https"] = await get(ok);
  out["node-https-deny"] = await get(deny);
  console.log(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(1); });
"""


@pytest.fixture(scope="module")
def node() -> str:
    path = shutil.which("node")
    if path is None:
        pytest.skip("node is not installed")
    return path


def test_node_https_through_connect(
    node: str, agent: dict[str, str], sc: Scenario, upstream: Any, tmp_path: Path
) -> None:
    upstream.clear()
    script = tmp_path / "tunnel.js"
    script.write_text(NODE_TUNNEL)
    base = f"https://127.0.0.1:{sc.upstream_port}/echo"
    out = run(
        [
            node,
            str(script),
            f"{base}/node-https",
            f"https://localhost:{sc.upstream_port}/echo/node-https-deny",
        ],
        agent,
    )
    assert out.returncode == 0, out.stderr
    check_echo(upstream, sc, json.loads(out.stdout), out.stdout)


# -- Node: undici from npm ----------------------------------------------------------------
UNDICI_SCRIPT = r"""
const undici = require("undici");
const H = { Authorization: "Bearer <<secret:stripe>>" };
async function viaFetch(f, url, opts = {}) {
  const r = await f(url, { headers: H, ...opts });
  return [r.status, r.headers.get("x-keybroker-decision") || "", await r.text()];
}
(async () => {
  const [ok, deny] = process.argv.slice(2);
  const out = {};
  // docs/agents.md: an EnvHttpProxyAgent as the global dispatcher, then the global fetch()
  undici.setGlobalDispatcher(new undici.EnvHttpProxyAgent());
  out["undici-global-fetch"] = await viaFetch(fetch, `${ok}/undici-global-fetch`);
  out["undici-global-fetch-deny"] = await viaFetch(fetch, `${deny}/undici-global-fetch-deny`);
  out["undici-fetch"] = await viaFetch(undici.fetch, `${ok}/undici-fetch`);
  const pa = new undici.ProxyAgent(process.env.HTTPS_PROXY);
  out["undici-proxyagent"] = await viaFetch(undici.fetch, `${ok}/undici-proxyagent`,
                                            { dispatcher: pa });
  out["undici-proxyagent-deny"] = await viaFetch(undici.fetch,
    `${deny}/undici-proxyagent-deny`, { dispatcher: pa });
  await pa.close();
  console.log(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(1); });
"""


@pytest.fixture(scope="module")
def undici_dir(node: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """undici installed from npm into a fresh directory (bounded by NPM_TIMEOUT)."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: cannot install undici")
    version = subprocess.run(
        [node, "-p", "process.versions.node"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    have = tuple(int(x) for x in version.split(".")[:3])
    spec = "undici@7" if have >= (20, 18, 1) else "undici@6"  # undici 7's engines.node
    d = tmp_path_factory.mktemp("undici")
    try:
        out = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--no-save", "--loglevel=error", spec],
            cwd=d,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"`npm install {spec}` took over {NPM_TIMEOUT:.0f} s (registry unreachable?)")
    if out.returncode != 0 or not (d / "node_modules" / "undici").is_dir():
        pytest.skip(f"`npm install {spec}` failed: {out.stderr.strip()[-300:]}")
    return d


def test_node_undici_proxy_agents(
    node: str, undici_dir: Path, agent: dict[str, str], sc: Scenario, upstream: Any
) -> None:
    upstream.clear()
    script = undici_dir / "agent.js"
    script.write_text(UNDICI_SCRIPT)
    out = run(
        [
            node,
            str(script),
            f"https://127.0.0.1:{sc.upstream_port}/echo",
            f"https://localhost:{sc.upstream_port}/echo",
        ],
        agent,
        cwd=undici_dir,
    )
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)
    assert len(results) == 5
    check_echo(upstream, sc, results, out.stdout)
