"""``keybroker run``: mitmproxy embedded with the keybroker addon, the CA from
``certs_dir``, lazy upstream connections and verified upstream TLS."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mitmproxy.addons import (
    block,
    core,
    disable_h2c,
    errorcheck,
    next_layer,
    proxyserver,
    tlsconfig,
)
from mitmproxy.master import Master
from mitmproxy.options import Options

from addons.dispatch import fast_dispatch
from addons.keybroker import KeyBroker
from addons.mitmshim import enable_reuse_port
from addons.upstream_trust import upstream_options
from broker.audit.chain import worker_file
from broker.audit.lock import AuditInUse
from broker.audit.record import RecordSink
from broker.engine import Engine
from broker.policy.schema import parse_listen
from broker.tls.ca import init_ca

if TYPE_CHECKING:  # the feed lives in the CLI package, imported when serving
    from broker.cli.console import Summary

# mitmproxy options keybroker depends on; see ../shared/MITMPROXY_NOTES.md.
SAFE_OPTIONS: dict[str, Any] = {
    "connection_strategy": "lazy",
    "ssl_insecure": False,
    "http2": True,
    "rawtcp": False,  # a tunnel that does not look like HTTP is parsed as HTTP, never relayed
    "validate_inbound_headers": True,
    "store_streamed_bodies": False,
    "proxy_debug": False,
    "stream_large_bodies": None,
    "termlog_verbosity": "warn",
}


def proxy_master(opts: Options) -> Master:
    """A mitmproxy master with only the addons a broker needs.

    mitmdump loads ~35 addons (playback, map-local/remote, body and header
    rewriting, sticky cookies, flow saving, scripts, the mitm.it onboarding
    app, ...) and calls every one of them on every event of every flow; that
    dispatch is about a third of bare mitmdump's CPU per request. keybroker
    needs none of them, and several (flow saving, scripts, rewriting after
    our hooks) would be ways around it, so it runs without them:

    - ``Core``: options and commands; ``ErrorCheck``: exit if start-up failed
      (for example the port is taken);
    - ``Proxyserver``, ``NextLayer``, ``TlsConfig``: the proxy itself;
    - ``Block``: refuse clients from public addresses unless configured
      (mitmproxy's ``block_global`` default);
    - ``DisableH2C``: refuse h2c upgrades and cleartext HTTP/2 prefaces,
      which mitmproxy cannot inspect.
    """
    master = Master(opts, with_termlog=True)
    fast_dispatch(master.addons)  # the same hooks, without mitmproxy's per-event walk
    master.addons.add(
        core.Core(),
        errorcheck.ErrorCheck(),
        block.Block(),
        disable_h2c.DisableH2C(),
        proxyserver.Proxyserver(),
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
    )
    return master


class _Sink:
    """Fans each audit record out to the live feed and the exit summary."""

    def __init__(self, feed: RecordSink | None, summary: Summary) -> None:
        self.feed, self.summary = feed, summary

    def push(self, rec: Mapping[str, Any]) -> None:
        if rec.get("decision") != "held":  # a held request is counted when it ends
            self.summary.add(rec)
        if self.feed is not None:
            self.feed.push(rec)

    def close(self) -> None:
        if self.feed is not None:
            self.feed.close()


async def serve(
    config: Path,
    *,
    listen: str | None = None,
    quiet: bool = False,
    worker: int | None = None,
    workers: int = 1,
) -> int:
    from rich.console import Console

    from broker.cli import console as feedmod

    err = Console(stderr=True)
    summary = feedmod.Summary()
    sink = _Sink(None if quiet else feedmod.Feed(err), summary)
    if worker is not None:
        enable_reuse_port()
    engine = Engine.from_file(config, feed=sink, worker=worker)
    policy = engine.policy
    files, _created = init_ca(policy.certs_dir)
    host, port = parse_listen(listen or policy.listen)
    opts = Options(listen_host=host, listen_port=port, confdir=str(files.confdir))
    master = proxy_master(opts)
    addon = KeyBroker(engine)
    master.addons.add(addon)
    update: dict[str, Any] = dict(SAFE_OPTIONS)
    update.update(upstream_options(policy))  # system trust store + upstream_ca
    master.options.update(**update)
    if not quiet and not worker:
        err.print(
            feedmod.render_header(
                listen=f"{host}:{port}",
                tenants=sorted(policy.tenants),
                backends={n: b.type for n, b in policy.backends.items()},
                ca_path=str(files.cert),
                audit_path=audit_names(policy.audit.path, workers if worker is not None else 1),
            )
        )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    # Before the port opens: a SIGHUP must never find the default handler.
    loop.add_signal_handler(signal.SIGHUP, addon.reload)
    loop.add_signal_handler(signal.SIGUSR1, addon.rotate_audit)
    # What exists now (imports, mitmproxy, the policy) lives as long as the
    # process: keep it out of the cyclic GC's full collections, whose pauses
    # grow with the number of tracked objects and show up as tail latency.
    gc.collect()
    gc.freeze()
    try:
        await master.run()
    finally:
        engine.close()
        if not quiet:
            err.print(summary.render())
    return 0


def audit_names(base: Path, workers: int) -> str:
    """The banner's audit line: the file, or every worker's chain."""
    if workers <= 1:
        return str(base)
    names = ", ".join(worker_file(base, i).name for i in range(workers))
    return (
        f"{base.parent}/{{{names}}} (one chain per worker; `keybroker tail --config` follows all)"
    )


def supervise(config: Path, *, listen: str | None, quiet: bool, workers: int) -> int:
    """``--workers N``: N proxy processes share one listen address through
    SO_REUSEPORT (the kernel spreads connections); each writes its own audit
    chain (``<audit>.w<i>.jsonl``). Signals are forwarded; a worker that dies
    is restarted (at most 10 times)."""
    import subprocess
    import time

    from broker.policy.load import load_policy

    policy = load_policy(config)
    from broker.governance.config import WORKERS_NEED_STATE, needs_state

    if policy.state is None and needs_state(policy):
        # Counters, held requests and revocations in each worker's memory
        # would be N separate sets: N times the rate, approvals nobody sees.
        # (Each worker's Governor refuses the same on a reload.)
        print(f"keybroker: {WORKERS_NEED_STATE}", file=sys.stderr)
        return 1
    init_ca(policy.certs_dir)  # once, before the workers race for it
    cmd = [sys.executable, "-m", "broker.cli", "run", "--config", str(config)]
    cmd += ["--workers", str(workers)]  # for the banner: worker 0 names every chain
    if listen:
        cmd += ["--listen", listen]
    if quiet:
        cmd.append("--quiet")

    def spawn(i: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen([*cmd, "--worker-index", str(i)])

    procs = [spawn(i) for i in range(workers)]
    stopping = False
    restarts = 0

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for p in procs:
            if p.poll() is None:
                p.send_signal(sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, forward)
    while not stopping:
        time.sleep(0.2)
        for i, p in enumerate(procs):
            if p.poll() is not None and not stopping:
                if restarts >= 10:
                    print(f"keybroker: worker {i} keeps dying; stopping", file=sys.stderr)
                    forward(signal.SIGTERM, None)
                    break
                restarts += 1
                print(f"keybroker: worker {i} exited ({p.returncode}); restarting", file=sys.stderr)
                procs[i] = spawn(i)
    deadline = time.monotonic() + 15
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
    return 0


def main(
    config: Path,
    *,
    listen: str | None,
    quiet: bool,
    workers: int = 1,
    worker: int | None = None,
) -> int:
    # A serving process logs through mitmproxy's termlog (installed on the root
    # logger by the master); a second handler here printed every line twice.
    # The supervisor of --workers has no master: it gets a plain handler.
    if workers > 1 and worker is None:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    if worker is None:  # the process that binds first: refuse an address already served
        from broker.cli.address import in_use_message
        from broker.policy.load import load_policy

        problem = in_use_message(*parse_listen(listen or load_policy(config).listen))
        if problem:
            print(f"keybroker: {problem}", file=sys.stderr)
            return 1
    if workers > 1 and worker is None:
        return supervise(config, listen=listen, quiet=quiet, workers=workers)
    try:
        return asyncio.run(
            serve(config, listen=listen, quiet=quiet, worker=worker, workers=workers)
        )
    except AuditInUse as exc:
        print(f"keybroker: {exc}", file=sys.stderr)
        return 1
