"""``keybroker run``: mitmproxy embedded with the keybroker addon, the CA from
``certs_dir``, lazy upstream connections and verified upstream TLS."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from mitmproxy.options import Options
from mitmproxy.tools.dump import DumpMaster

from addons.keybroker import KeyBroker
from broker.ca import init_ca
from broker.engine import Engine
from broker.policy import Policy, parse_listen

# mitmproxy options keybroker depends on; see ../shared/MITMPROXY_NOTES.md.
SAFE_OPTIONS: dict[str, Any] = {
    "connection_strategy": "lazy",
    "ssl_insecure": False,
    "http2": True,
    "validate_inbound_headers": True,
    "store_streamed_bodies": False,
    "proxy_debug": False,
    "stream_large_bodies": None,
    "termlog_verbosity": "warn",
    "flow_detail": 0,
    "onboarding": False,
}


def upstream_bundle(policy: Policy) -> Path | None:
    """mitmproxy's trusted-CA option *replaces* the default roots: give it the
    usual roots plus ``upstream_ca``."""
    if policy.upstream_ca is None:
        return None
    import certifi

    out = policy.certs_dir / "upstream-bundle.pem"
    out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    roots = Path(certifi.where()).read_bytes()
    out.write_bytes(roots.rstrip(b"\n") + b"\n" + policy.upstream_ca.read_bytes())
    return out


class _Sink:
    """Fans each audit record out to the live feed and the exit summary."""

    def __init__(self, feed: Any, summary: Any) -> None:
        self.feed, self.summary = feed, summary

    def push(self, rec: Any) -> None:
        self.summary.add(rec)
        if self.feed is not None:
            self.feed.push(rec)

    def close(self) -> None:
        if self.feed is not None:
            self.feed.close()


async def serve(
    config: Path, *, listen: str | None = None, quiet: bool = False, reuse_port: bool = False
) -> int:
    from rich.console import Console

    from broker import console as feedmod

    err = Console(stderr=True)
    summary = feedmod.Summary()
    sink = _Sink(None if quiet else feedmod.Feed(err), summary)
    engine = Engine.from_file(config, feed=sink)
    policy = engine.policy
    files, _created = init_ca(policy.certs_dir)
    host, port = parse_listen(listen or policy.listen)
    opts = Options(listen_host=host, listen_port=port, confdir=str(files.confdir))
    master = DumpMaster(opts, with_termlog=True, with_dumper=False)
    master.addons.add(KeyBroker(engine))
    update: dict[str, Any] = dict(SAFE_OPTIONS)
    bundle = upstream_bundle(policy)
    if bundle is not None:
        update["ssl_verify_upstream_trusted_ca"] = str(bundle)
    master.options.update(**update)
    if not quiet:
        err.print(
            feedmod.render_header(
                listen=f"{host}:{port}",
                tenants=sorted(policy.tenants),
                backends={n: b.type for n, b in policy.backends.items()},
                ca_path=str(files.cert),
                audit_path=str(policy.audit.path),
            )
        )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    try:
        await master.run()
    finally:
        engine.close()
        if not quiet:
            err.print(summary.render())
    return 0


def main(config: Path, *, listen: str | None, quiet: bool) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    return asyncio.run(serve(config, listen=listen, quiet=quiet))
