"""End-to-end benchmark (DESIGN.md §8): upstream direct, bare mitmdump and
keybroker, in one run on one machine, in alternating rounds; reports medians
and keybroker ÷ bare ratios.

Run: ``.venv/bin/python bench/run.py [--quick] [--update-readme] [--profile]``
(``make bench`` runs the full version). Needs ``hey`` and ``curl`` on PATH;
as root on Debian/Ubuntu it installs them with apt-get when missing.

What runs (all on 127.0.0.1, every wait and loop bounded):
- ``bench/upstream_fast.py``: an asyncio HTTPS upstream with its own test CA.
- bare mitmdump: ``mitmdump -q --set connection_strategy=lazy`` with
  ``ssl_verify_upstream_trusted_ca`` (system roots + the test CA), no addon.
- ``bench/lean_proxy.py``: mitmproxy with keybroker's addon set and no
  keybroker, so keybroker's own cost shows apart from the proxy's.
- keybroker: ``keybroker run`` with 100 tenants × 10 secrets from the ``env``
  backend (values in environment variables set here; ``cache_ttl`` 300 s, like
  a cached vault read). Every request substitutes ``Authorization: Bearer
  <<secret:s0>>``; the upstream echoes the header in a small JSON answer, so
  every response holds the value and is scrubbed. Before measuring, every one
  of the 1,000 secrets is used once, so the scrubber holds all 1,000 values.
- load: ``hey -c 20`` keep-alive clients (HTTP/1.1 over CONNECT tunnels).
- CPU per request: utime+stime of the proxy process(es) from /proc before and
  after a round, divided by the 200 responses of that round.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import datetime
import hashlib
import http.client
import json
import os
import platform
import re
import secrets
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.net import free_port, port_open, wait_for  # noqa: E402
from tests.support.tlsca import TestCA  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
CONCURRENCY = 20
MIB = 1024 * 1024
README = REPO / "bench" / "README.md"
BEGIN, END = "<!-- bench/run.py:begin -->", "<!-- bench/run.py:end -->"
AUTH = "Bearer <<secret:s0>>"
HEADER = f"Authorization: {AUTH}"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- tools -----------------------------------------------------------------------------


def ensure_tools(profile: bool) -> None:
    missing = [t for t in ("hey", "curl") if shutil.which(t) is None]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        log(f"installing {' '.join(missing)} with apt-get")
        subprocess.run(["apt-get", "update", "-qq"], check=False, timeout=300)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", *missing],
            check=False,
            timeout=600,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        missing = [t for t in missing if shutil.which(t) is None]
    if missing:
        raise SystemExit(
            f"bench/run.py needs {', '.join(missing)} on PATH "
            "(Debian/Ubuntu: apt-get install hey curl; elsewhere: "
            "go install github.com/rakyll/hey@latest)"
        )
    if profile and py_spy() is None:
        raise SystemExit(f"--profile needs py-spy: {sys.executable} -m pip install py-spy")


def py_spy() -> str | None:
    return shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")


# -- processes -------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                text = Path(f"/proc/{pid}/task/{task}/children").read_text()
                out += [int(c) for c in text.split()]
    return out


def _cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def _status_kib(pid: int, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _listeners(port: int) -> int:
    """Sockets listening on 127.0.0.1:port (SO_REUSEPORT workers each have one)."""
    want = f"0100007F:{port:04X}"
    n = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[1] == want and cols[3] == "0A":
                n += 1
    return n


@dataclass
class Proc:
    name: str
    cmd: list[str]
    port: int
    env: dict[str, str]
    logfile: Path
    listeners: int = 1
    proc: subprocess.Popen[bytes] | None = None
    startup: float = 0.0
    _t0: float = 0.0

    def start(self, timeout: float = 180.0) -> Proc:
        return self.launch().ready(timeout)

    def launch(self) -> Proc:
        self._t0 = time.monotonic()
        with self.logfile.open("ab") as out:
            self.proc = subprocess.Popen(
                self.cmd,
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    def ready(self, timeout: float = 180.0) -> Proc:
        ok = wait_for(
            lambda: (
                self.proc is None
                or self.proc.poll() is not None
                or (port_open(self.port) and _listeners(self.port) >= self.listeners)
            ),
            timeout,
            0.05,
        )
        if not ok or self.proc is None or self.proc.poll() is not None:
            tail = self.logfile.read_text(errors="replace")[-3000:]
            self.stop()
            raise RuntimeError(f"{self.name} did not start:\n{tail}")
        self.startup = time.monotonic() - self._t0
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def pids(self) -> list[int]:
        todo, seen = [self.pid], list[int]()
        while todo and len(seen) < 64:
            p = todo.pop()
            seen.append(p)
            todo += _children(p)
        return seen

    def cpu(self) -> float:
        return sum(_cpu_seconds(p) for p in self.pids())

    def kib(self, key: str) -> int:
        return max(_status_kib(p, key) for p in self.pids())

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None


# -- policy ----------------------------------------------------------------------------


@dataclass
class Setup:
    """A policy of ``tenants`` × ``secrets`` and what clients need to use it."""

    name: str
    tenants: int
    secrets: int
    config: Path
    env: dict[str, str]
    tokens: list[str]
    values: dict[tuple[int, int], str]
    audit: Path

    def proxy_url(self, port: int, tenant: int = 0) -> str:
        return f"http://t{tenant}:{self.tokens[tenant]}@127.0.0.1:{port}"

    def basic(self, tenant: int) -> str:
        raw = f"t{tenant}:{self.tokens[tenant]}".encode()
        return "Basic " + base64.b64encode(raw).decode()


EGRESS_ALLOW = 0
"""``--egress-allow N``: every tenant gets an enforced egress allowlist of N
entries (half exact names, half wildcards, plus the upstream)."""


def egress_block(n: int, up_port: int) -> dict[str, Any]:
    allow = [f"api{i}.example{i}.com" for i in range(n // 2)]
    allow += [f"*.cdn{i}.example.net" for i in range(n - n // 2 - 1)]
    return {"mode": "enforce", "allow": [*allow, f"localhost:{up_port}"]}


def make_setup(
    work: Path, name: str, tenants: int, per_tenant: int, up_port: int, up_ca: str
) -> Setup:
    seed = secrets.token_hex(8)
    env: dict[str, str] = {}
    values: dict[tuple[int, int], str] = {}
    tokens: list[str] = []
    tdefs: dict[str, Any] = {}
    for t in range(tenants):
        token = "kb_" + secrets.token_urlsafe(18)
        tokens.append(token)
        rules = {}
        for s in range(per_tenant):
            var = f"KB_BENCH_T{t}_S{s}"
            value = "sk_bench_" + hashlib.sha256(f"{seed}/{t}/{s}".encode()).hexdigest()[:32]
            env[var] = values[(t, s)] = value
            rules[f"s{s}"] = {
                "backend": "local",
                "path": var,
                "hosts": ["localhost", "127.0.0.1"],
                "ports": [up_port],
                "methods": ["GET"],
                "paths": ["/json", "/bytes", "/sse"],
                "locations": ["header:authorization"],
            }
        tdefs[f"t{t}"] = {
            "token_sha256": "sha256:" + hashlib.sha256(token.encode()).hexdigest(),
            "secrets": rules,
        }
        if EGRESS_ALLOW:
            tdefs[f"t{t}"]["egress"] = egress_block(EGRESS_ALLOW, up_port)
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    audit = d / "audit.jsonl"
    policy = {
        "version": 1,
        "certs_dir": str(work / "certs"),
        "upstream_ca": up_ca,
        "audit": {"path": str(audit)},
        "backends": {"local": {"type": "env", "cache_ttl": 300}},
        "tenants": tdefs,
    }
    config = d / "policy.yaml"
    config.write_text(json.dumps(policy, indent=1))  # JSON is YAML, and fast to write
    return Setup(name, tenants, per_tenant, config, env, tokens, values, audit)


# -- clients ---------------------------------------------------------------------------


@dataclass
class Load:
    rps: float
    p50: float
    p99: float
    ok: int
    errors: int
    cpu: float = float("nan")
    """Proxy CPU seconds per 200 response."""


def hey(url: str, seconds: float, proxy: str | None, header: str = HEADER) -> Load:
    cmd = ["hey", "-c", str(CONCURRENCY), "-z", f"{seconds:g}s", "-t", "20", "-H", header]
    if proxy:
        cmd += ["-x", proxy]
    out = subprocess.run(
        [*cmd, url], capture_output=True, text=True, timeout=seconds + 60, check=False
    ).stdout

    def num(pattern: str) -> float:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else float("nan")

    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    ok = codes.get(200, 0)
    errors = sum(n for c, n in codes.items() if c != 200)
    if "Error distribution:" in out:
        tail = out.split("Error distribution:", 1)[1]
        errors += sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]\s", tail, re.MULTILINE))
    total = num(r"Total:\s+([\d.]+) secs")
    return Load(
        rps=ok / total if total == total and total > 0 else 0.0,
        p50=num(r"50% in ([\d.]+) secs") * 1e3,
        p99=num(r"99% in ([\d.]+) secs") * 1e3,
        ok=ok,
        errors=errors,
    )


def measure(proc: Proc | None, url: str, seconds: float, proxy: str | None) -> Load:
    before = proc.cpu() if proc else 0.0
    load = hey(url, seconds, proxy)
    if proc is not None and load.ok:
        load.cpu = (proc.cpu() - before) / load.ok
    return load


class Client:
    """A keep-alive HTTPS client, optionally through a proxy tunnel."""

    def __init__(
        self, ctx: ssl.SSLContext, up_port: int, proxy_port: int | None, auth: str | None
    ) -> None:
        if proxy_port is None:
            self.conn = http.client.HTTPSConnection("localhost", up_port, context=ctx, timeout=60)
        else:
            self.conn = http.client.HTTPSConnection(
                "127.0.0.1", proxy_port, context=ctx, timeout=60
            )
            headers = {"Proxy-Authorization": auth} if auth else {}
            self.conn.set_tunnel("localhost", up_port, headers=headers)

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        self.conn.request("GET", path, headers=headers or {})
        r = self.conn.getresponse()
        return r.status, r.read()

    def ttfe(self, path: str) -> float:
        """Seconds from sending the request to the first ``data:`` line."""
        t0 = time.perf_counter()
        self.conn.request("GET", path)
        r = self.conn.getresponse()
        for _ in range(1000):
            line = r.readline()
            if not line or line.startswith(b"data:"):
                break
        first = time.perf_counter() - t0
        r.read()
        return first

    def close(self) -> None:
        self.conn.close()


def warm(
    setup: Setup,
    port: int,
    ctx: ssl.SSLContext,
    up_port: int,
    tenants: int,
    per_tenant: int | None = None,
) -> float:
    """Use every secret (or the first ``per_tenant``) of the first ``tenants``
    tenants once, so the scrubber knows their values, and check that each
    echoed value came back scrubbed."""
    t0 = time.monotonic()

    def one(t: int) -> None:
        c = Client(ctx, up_port, port, setup.basic(t))
        try:
            for s in range(setup.secrets if per_tenant is None else per_tenant):
                status, body = c.get("/json", {"Authorization": f"Bearer <<secret:s{s}>>"})
                value = setup.values[(t, s)]
                if status != 200 or value.encode() in body or b"<<secret:s" not in body:
                    raise RuntimeError(f"{setup.name}: t{t}/s{s}: status {status}, not scrubbed")
        finally:
            c.close()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(tenants)))
    return time.monotonic() - t0


def curl(url: str, proxy: str | None, cafile: str, max_time: float = 600) -> tuple[float, int]:
    cmd = ["curl", "-sS", "-o", "/dev/null", "--cacert", cafile, "--max-time", f"{max_time:g}"]
    cmd += ["-w", "%{time_total} %{size_download} %{http_code}"]
    if proxy:
        cmd += ["--proxy", proxy]
    out = subprocess.run(
        [*cmd, url], capture_output=True, text=True, timeout=max_time + 30, check=False
    )
    parts = out.stdout.split()
    if out.returncode or len(parts) != 3 or parts[2] != "200":
        raise RuntimeError(f"curl {url} failed: {out.stdout} {out.stderr}")
    return float(parts[0]), int(parts[1])


def audit_check(setup: Setup) -> tuple[int, int]:
    """(allow records, allow records with scrubbed >= 1) in the audit file(s)."""
    allow = scrubbed = 0
    files = sorted(setup.audit.parent.glob(setup.audit.stem + "*" + setup.audit.suffix))
    for f in files:
        with f.open() as fh:
            for line in fh:
                if '"decision": "allow"' in line or '"decision":"allow"' in line:
                    rec = json.loads(line)
                    if rec.get("phase") == "sent":
                        continue  # the write-ahead record; its done record counts
                    allow += 1
                    scrubbed += rec.get("scrubbed", 0) >= 1
    return allow, scrubbed


# -- the run ---------------------------------------------------------------------------


def med(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def fmt(x: float, digits: int = 2) -> str:
    return "–" if x != x else f"{x:,.{digits}f}"


def ok_mark(good: bool) -> str:
    return "✅" if good else "❌"


@dataclass
class Bench:
    quick: bool
    work: Path
    rounds: int
    seconds: float
    procs: list[Proc] = field(default_factory=list)
    rows: list[str] = field(default_factory=list)
    growth: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def kb(self, setup: Setup, tag: str, *extra: str) -> Proc:
        """A ``keybroker run`` process for ``setup`` (not started)."""
        port = free_port()
        env = {**os.environ, **setup.env, "PYTHONUNBUFFERED": "1"}
        workers = int(extra[extra.index("--workers") + 1]) if "--workers" in extra else 1
        cmd = [sys.executable, "-m", "broker.cli", "run", "--config", str(setup.config)]
        cmd += ["--listen", f"127.0.0.1:{port}", *extra]
        return Proc(tag, cmd, port, env, self.logfile(tag), workers)

    def script(self, name: str, script: str, port: int, *args: str) -> Proc:
        """A ``bench/<script> --port PORT ARGS`` process (not started)."""
        cmd = [sys.executable, str(REPO / "bench" / script), "--port", str(port), *args]
        return Proc(name, cmd, port, dict(os.environ), self.logfile(name))

    def logfile(self, name: str) -> Path:
        return self.work / (re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-") + ".log")

    def start(self, *procs: Proc) -> None:
        """Launch together, then wait for each (startup times overlap)."""
        for p in procs:
            self.procs.append(p.launch())
        for p in procs:
            p.ready()
            log(f"{p.name} up on :{p.port} (pid {p.pid}, {p.startup:.1f}s)")

    def stop_all(self) -> None:
        for p in self.procs:
            p.stop()


def run(args: argparse.Namespace) -> str:
    work = Path(tempfile.mkdtemp(prefix="kb-bench-"))
    b = Bench(
        quick=args.quick,
        work=work,
        rounds=args.rounds or (1 if args.quick else 3),
        seconds=args.seconds or (2.0 if args.quick else 10.0),
    )
    try:
        return _run(b, args)
    finally:
        b.stop_all()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


@dataclass
class Targets:
    """What one bench run starts: the upstream, keybroker and the references."""

    base: str
    up_port: int
    main: Setup
    kb: Proc
    bare: Proc
    bare_port: int
    lean: Proc
    extra: list[Proc]
    sweep: list[tuple[Setup, Proc]]
    load_s: dict[str, float]
    ctx: ssl.SSLContext
    client_bundle: Path
    rss_start: int

    @property
    def bare_proxy(self) -> str:
        return f"http://bench:bench@127.0.0.1:{self.bare_port}"

    @property
    def lean_proxy(self) -> str:
        return f"http://bench:bench@127.0.0.1:{self.lean.port}"


Results = dict[str, list[Load]]


def _run(b: Bench, args: argparse.Namespace) -> str:
    t = _start(b)
    _warm_all(b, t)
    results = _load_rounds(b, t)
    _download_row(b, t)
    _sse_row(b, t)
    _workers_row(b, t, results)
    if not args.skip_big:
        _big_stream_rows(b, t)
    if args.profile:
        profile(b, t.kb, t.main, f"{t.base}/json")
    _sweep_rows(b, t)
    return report(b)


def _start(b: Bench) -> Targets:
    """Start the upstream and keybroker (which creates the CA), then bare
    mitmdump, the lean proxy, the worker variant and the policy-size sweep."""
    import certifi

    from broker.policy.load import load_policy
    from broker.tls.ca import ca_files

    quick, work = b.quick, b.work
    ca = TestCA(work / "upstream-ca")
    cert, key = ca.issue_server_cert(["localhost", "127.0.0.1"])
    up_bundle = work / "upstream-bundle.pem"
    up_bundle.write_bytes(Path(certifi.where()).read_bytes() + b"\n" + ca.ca_pem)
    up_port = free_port()
    upstream = b.script("upstream", "upstream_fast.py", up_port, "--cert", cert, "--key", key)
    main = make_setup(work, "main", 100, 10, up_port, ca.ca_path)
    kb = b.kb(main, "keybroker")
    b.start(upstream, kb)  # keybroker creates the CA; everything else reuses it

    files = ca_files(work / "certs")
    client_bundle = work / "client-bundle.pem"
    client_bundle.write_bytes(files.cert.read_bytes() + b"\n" + ca.ca_pem)
    bare_port = free_port()
    bare = Proc(
        "bare mitmdump",
        [
            str(Path(sys.executable).parent / "mitmdump"),
            "-q",
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            str(bare_port),
            "--set",
            f"confdir={files.confdir}",
            "--set",
            "connection_strategy=lazy",
            "--set",
            f"ssl_verify_upstream_trusted_ca={up_bundle}",
        ],
        bare_port,
        dict(os.environ),
        work / "bare.log",
    )
    lean_port = free_port()
    lean = b.script(
        "mitmproxy with keybroker's addon set",
        "lean_proxy.py",
        lean_port,
        "--confdir",
        str(files.confdir),
        "--upstream-ca",
        str(up_bundle),
    )
    extra = [] if quick else [b.kb(main, "keybroker --workers 2", "--workers", "2")]
    shapes = (
        [(10, 10), (100, 10), (1, 1000)]
        if quick
        else [(10, 10), (100, 10), (1000, 10), (1, 10), (1, 1000), (1, 10000)]
    )
    sweep = [
        (st, b.kb(st, f"keybroker {n_t}×{n}"))
        for n_t, n in shapes
        for st in [make_setup(work, f"p{n_t}x{n}", n_t, n, up_port, ca.ca_path)]
    ]
    load_s = {}
    for st, _ in sweep:  # the dominant start-up cost, timed alone (processes start together)
        t0 = time.perf_counter()
        load_policy(st.config)
        load_s[st.name] = time.perf_counter() - t0
    rss_start = kb.kib("VmRSS")
    b.start(bare, lean, *extra, *(p for _, p in sweep))
    return Targets(
        base=f"https://localhost:{up_port}",
        up_port=up_port,
        main=main,
        kb=kb,
        bare=bare,
        bare_port=bare_port,
        lean=lean,
        extra=extra,
        sweep=sweep,
        load_s=load_s,
        ctx=ssl.create_default_context(cafile=str(client_bundle)),
        client_bundle=client_bundle,
        rss_start=rss_start,
    )


def _warm_all(b: Bench, t: Targets) -> None:
    warm_tenants = 20 if b.quick else 100
    for p in (t.kb, *t.extra):
        took = warm(t.main, p.port, t.ctx, t.up_port, warm_tenants)
        log(f"warmed {p.name}: {warm_tenants * t.main.secrets} secrets used once in {took:.1f}s")
        if p is t.kb:
            b.notes.append(
                f"Warm-up: using each of the {warm_tenants * t.main.secrets:,} secrets once "
                f"(8 client threads; each new value enters the scrubber's delta layer) took {took:.1f} s."
            )
    for st, p in t.sweep:
        warm(st, p.port, t.ctx, t.up_port, 1, 1)  # the one value the load uses


def _m(results: Results, tag: str, attr: str) -> float:
    return med([getattr(x, attr) for x in results[tag]])


def _ratio(results: Results, a: str, c: str, attr: str) -> str:
    """Median ratio, with the per-round range when there are several rounds."""
    x = _m(results, a, attr) / _m(results, c, attr)
    per = [getattr(p, attr) / getattr(q, attr) for p, q in zip(results[a], results[c], strict=True)]
    return f"**{x:.2f}**" + (f" ({min(per):.2f}–{max(per):.2f})" if len(per) > 1 else "")


def _load_rounds(b: Bench, t: Targets) -> Results:
    """Throughput, latency and CPU per request, in alternating rounds."""
    targets: list[tuple[str, Proc | None, str | None]] = [
        ("direct", None, None),
        ("bare", t.bare, t.bare_proxy),
        ("lean", t.lean, t.lean_proxy),
        ("kb", t.kb, t.main.proxy_url(t.kb.port)),
    ]
    if t.extra:
        targets.append(("kbw", t.extra[0], t.main.proxy_url(t.extra[0].port)))
    results: Results = collections.defaultdict(list)
    for r in range(b.rounds):
        for tag, proc, proxy in targets if r % 2 == 0 else targets[::-1]:
            load = measure(proc, f"{t.base}/json", b.seconds, proxy)
            if load.errors or not load.ok:
                raise RuntimeError(f"{tag}: {load.errors} errors, {load.ok} ok")
            results[tag].append(load)
            per = f", {load.cpu * 1e3:.2f} ms CPU/req" if proc else ""
            log(
                f"round {r + 1} {tag}: {load.rps:.0f} req/s, p50 {load.p50:.1f} ms, "
                f"p99 {load.p99:.1f} ms{per}"
            )
    allow, scrubbed = audit_check(t.main)
    if not allow or scrubbed < allow:
        raise RuntimeError(f"audit: {allow} allow records, only {scrubbed} scrubbed")

    def load_row(label: str, attr: str, scale: float, digits: int, goal: str, good: bool) -> str:
        direct = "–" if attr == "cpu" else fmt(_m(results, "direct", attr) * scale, digits)
        cells = " | ".join(
            fmt(_m(results, k, attr) * scale, digits) for k in ("bare", "lean", "kb")
        )
        return (
            f"| {label} | {direct} | {cells} | {_ratio(results, 'kb', 'bare', attr)} "
            f"| {_ratio(results, 'kb', 'lean', attr)} | {goal} {ok_mark(good) if goal else ''} |"
        )

    def within(attr: str, limit: float, higher_is_better: bool = False) -> bool:
        x = _m(results, "kb", attr) / _m(results, "bare", attr)
        return x >= limit if higher_is_better else x <= limit

    b.rows += [
        "| metric | direct | bare mitmdump | mitmproxy, keybroker's addon set, no keybroker "
        "| keybroker | keybroker ÷ bare | keybroker ÷ its own proxy without it | target |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
        load_row(
            f"throughput, {CONCURRENCY} keep-alive clients (req/s)",
            "rps",
            1,
            0,
            "≥ 0.9",
            within("rps", 0.9, higher_is_better=True),
        ),
        load_row("p50 latency (ms)", "p50", 1, 1, "", True),
        load_row("p99 latency (ms)", "p99", 1, 1, "≤ 1.2", within("p99", 1.2)),
        load_row("proxy CPU per request (ms)", "cpu", 1e3, 2, "≤ 1.1", within("cpu", 1.1)),
    ]
    return results


def _download_row(b: Bench, t: Targets) -> None:
    """8 MiB download, a new connection each time."""
    reps = 2 if b.quick else 5
    dl: dict[str, list[float]] = collections.defaultdict(list)
    url8 = f"{t.base}/bytes?size={8 * MIB}"
    dl_targets = [("direct", None), ("bare", t.bare_proxy), ("kb", t.main.proxy_url(t.kb.port))]
    for r in range(reps + 1):
        for tag, proxy in dl_targets if r % 2 else dl_targets[::-1]:
            took, size = curl(url8, proxy, str(t.client_bundle), 120)
            if size != 8 * MIB:
                raise RuntimeError(f"8 MiB via {tag}: got {size} bytes")
            if r:  # the first pass warms certificates
                dl[tag].append(took * 1e3)
    b.rows.append(
        f"| 8 MiB download (ms; curl, new connection each) | {fmt(med(dl['direct']), 0)} "
        f"| {fmt(med(dl['bare']), 0)} | | {fmt(med(dl['kb']), 0)} "
        f"| **{med(dl['kb']) / med(dl['bare']):.2f}** | "
        f"| ≤ 1.3 {ok_mark(med(dl['kb']) <= 1.3 * med(dl['bare']))} |"
    )


def _sse_row(b: Bench, t: Targets) -> None:
    """SSE time to the first event, on warmed keep-alive connections."""
    reps = 2 if b.quick else 5
    ttfe: dict[str, list[float]] = collections.defaultdict(list)
    clients = {
        "direct": Client(t.ctx, t.up_port, None, None),
        "bare": Client(t.ctx, t.up_port, t.bare_port, None),
        "kb": Client(t.ctx, t.up_port, t.kb.port, t.main.basic(0)),
    }
    try:
        for c in clients.values():
            c.get("/json")  # tunnel, TLS and tenant binding happen here, not in the timing
        for _ in range(reps + 1):
            for tag, c in clients.items():
                ttfe[tag].append(c.ttfe("/sse?events=3&interval=0.5") * 1e3)
    finally:
        for c in clients.values():
            c.close()
    for v in ttfe.values():
        v.pop(0)
    b.rows.append(
        f"| SSE time to first event (ms; 3 events 0.5 s apart) | {fmt(med(ttfe['direct']), 1)} "
        f"| {fmt(med(ttfe['bare']), 0)} (buffers the whole stream) | | {fmt(med(ttfe['kb']), 1)} "
        f"| keybroker − direct: {med(ttfe['kb']) - med(ttfe['direct']):.1f} ms | | |"
    )


def _workers_row(b: Bench, t: Targets, results: Results) -> None:
    if not t.extra:
        return
    b.rows.append(
        f"| `keybroker run --workers 2` (req/s; CPU/req ms) | | | | "
        f"{fmt(_m(results, 'kbw', 'rps'), 0)}; {fmt(_m(results, 'kbw', 'cpu') * 1e3)} "
        f"| ÷ 1 worker: {_ratio(results, 'kbw', 'kb', 'rps')} | | |"
    )
    for p in t.extra:
        p.stop()


def _big_stream_rows(b: Bench, t: Targets) -> None:
    """A large streamed body: peak RSS sampled while it streams."""
    kb = t.kb
    size = (128 if b.quick else 1024) * MIB
    label = "1 GiB" if size == 1024 * MIB else f"{size // MIB} MiB"
    hwm0, rss0 = kb.kib("VmHWM"), kb.kib("VmRSS")
    with ThreadPoolExecutor(1) as pool:  # sample RSS while the body streams
        download = pool.submit(
            curl, f"{t.base}/bytes?size={size}", t.main.proxy_url(kb.port), str(t.client_bundle)
        )
        peak = rss0
        while not download.done():
            peak = max(peak, kb.kib("VmRSS"))
            time.sleep(0.05)
        took, got = download.result()
    hwm = kb.kib("VmHWM")
    if got != size:
        raise RuntimeError(f"{label} through keybroker: got {got} bytes")
    dtook, _ = curl(f"{t.base}/bytes?size={size}", None, str(t.client_bundle))
    b.rows += [
        f"| RSS of keybroker while streaming {label} (MiB; sampled every 50 ms) | | | "
        f"| peak {peak / 1024:.0f} (before the stream {rss0 / 1024:.0f}; after start "
        f"{t.rss_start / 1024:.0f}; VmHWM {hwm0 / 1024:.0f} → {hwm / 1024:.0f}) "
        f"| +{(peak - rss0) / 1024:.0f} MiB | | < 200 {ok_mark(peak < 200 * 1024)} |",
        f"| {label} download (MB/s) | {size / dtook / 1e6:.0f} "
        f"| not run (buffers the whole body) | | {size / took / 1e6:.0f} | | | |",
    ]


def _sweep_rows(b: Bench, t: Targets) -> None:
    """Per-request CPU against policy size (the other proxies stopped first)."""
    for p in (t.kb, t.bare, t.lean):
        p.stop()  # quieter machine for the sweep
    sweep_cpu: dict[str, list[float]] = collections.defaultdict(list)
    for r in range(b.rounds):
        for st, p in t.sweep if r % 2 == 0 else t.sweep[::-1]:
            load = measure(p, f"{t.base}/json", b.seconds, st.proxy_url(p.port))
            if load.errors or not load.ok:
                raise RuntimeError(f"{p.name}: {load.errors} errors, {load.ok} ok")
            sweep_cpu[p.name].append(load.cpu)
            log(f"{p.name}: {load.rps:.0f} req/s, {load.cpu * 1e3:.2f} ms CPU/req")
    b.growth += [
        "| tenants × secrets each | rules | policy load (s) | RSS (MiB) | CPU per request (ms) "
        "| ÷ first of its group |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    first: dict[bool, float] = {}
    for st, p in t.sweep:
        cost = med(sweep_cpu[p.name])
        ref = first.setdefault(st.tenants == 1, cost)
        b.growth.append(
            f"| {st.tenants:,} × {st.secrets:,} | {st.tenants * st.secrets:,} "
            f"| {t.load_s[st.name]:.1f} "
            f"| {p.kib('VmRSS') / 1024:.0f} | {cost * 1e3:.2f} | {cost / ref:.2f} |"
        )


def profile(b: Bench, kb: Proc, setup: Setup, url: str) -> None:
    """py-spy keybroker under the same load: a flame graph and a text summary."""
    out = REPO / "bench" / "out"
    out.mkdir(exist_ok=True)
    spy = py_spy()
    assert spy is not None
    secs = max(5, int(b.seconds))
    for kind, name in (("flamegraph", "profile.svg"), ("raw", "profile.txt")):
        rec = subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(kb.pid),
                "--duration",
                str(secs),
                "--rate",
                "250",
                "--nonblocking",
                "--format",
                kind,
                "-o",
                str(out / name),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        hey(url, secs + 1, setup.proxy_url(kb.port))
        rec.wait(120)
    log(f"profile: {out / 'profile.svg'}")
    b.notes += ["", "Profile (py-spy, keybroker under the same load):", "", "```"]
    b.notes += list(summarize_profile(out / "profile.txt"))
    b.notes.append("```")


_OURS = re.compile(r"\((broker|addons)/")


def summarize_profile(path: Path, top: int = 20) -> Iterator[str]:
    """Inclusive sample share per keybroker function (addons/, broker/) and
    self share per function anywhere, from py-spy's collapsed stacks."""
    total = 0
    incl: collections.Counter[str] = collections.Counter()
    self_: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, num = line.rpartition(" ")
        if not num.isdigit():
            continue
        count = int(num)
        total += count
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        for f in {f for f in frames if _OURS.search(f)}:
            incl[f] += count
        self_[frames[-1]] += count
    if not total:
        yield "no samples"
        return
    yield f"{total} samples; inclusive share of keybroker functions:"
    for f, n in incl.most_common(top):
        if "cli.py" not in f and "runner.py" not in f:
            yield f"  {100 * n / total:5.1f}%  {f}"
    yield "self share, any code:"
    for f, n in self_.most_common(top):
        yield f"  {100 * n / total:5.1f}%  {f}"


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import mitmproxy.version

    return (
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} vCPU "
        f"({cpu}), {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}, mitmproxy {mitmproxy.version.VERSION}"
    )


def report(b: Bench) -> str:
    mode = "--quick" if b.quick else "full run"
    lines = [
        f"Measured {machine()}; `bench/run.py` {mode}: {b.rounds} alternating round(s) of "
        f"{b.seconds:g} s per target.",
        "",
        *b.rows,
        "",
        "Per-request CPU against policy size (fresh keybroker per policy, same load, "
        "alternating rounds):",
        "",
        *b.growth,
    ]
    if b.notes:
        lines += ["", *b.notes]
    return "\n".join(lines) + "\n"


def update_readme(text: str) -> None:
    readme = README.read_text()
    block = f"{BEGIN}\n{text}{END}"
    if BEGIN in readme and END in readme:
        head, _, rest = readme.partition(BEGIN)
        _, _, tail = rest.partition(END)
        readme = head + block + tail
    else:
        readme = readme.rstrip("\n") + "\n\n## End-to-end results\n\n" + block + "\n"
    README.write_text(readme)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (< 60 s)")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 3; quick 1)")
    parser.add_argument("--seconds", type=float, help="seconds per load round (10; quick 2)")
    parser.add_argument("--skip-big", action="store_true", help="skip the large streamed body")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy keybroker: bench/out/profile.{svg,txt}"
    )
    parser.add_argument(
        "--update-readme", action="store_true", help="write the tables into bench/README.md"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--egress-allow", type=int, default=0, help="give every tenant N egress allow entries"
    )
    args = parser.parse_args(argv)
    global EGRESS_ALLOW
    EGRESS_ALLOW = args.egress_allow
    ensure_tools(args.profile)
    t0 = time.monotonic()
    text = run(args)
    print(text)
    if args.update_readme:
        update_readme(text)
        log(f"wrote {README}")
    log(f"done in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
