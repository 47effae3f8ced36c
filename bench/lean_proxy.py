"""mitmproxy with keybroker's addon set (``addons.runner.proxy_master``) and
no keybroker addon: the reference that isolates the cost of keybroker's own
hooks from the cost of the proxy it runs in.

  python bench/lean_proxy.py --port P --confdir DIR [--upstream-ca BUNDLE]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mitmproxy.options import Options

from addons.runner import SAFE_OPTIONS, proxy_master


async def serve(args: argparse.Namespace) -> None:
    opts = Options(listen_host="127.0.0.1", listen_port=args.port, confdir=args.confdir)
    master = proxy_master(opts)
    update = dict(SAFE_OPTIONS)
    if args.upstream_ca:
        update["ssl_verify_upstream_trusted_ca"] = args.upstream_ca
    master.options.update(**update)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    await master.run()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--confdir", required=True)
    ap.add_argument("--upstream-ca")
    asyncio.run(serve(ap.parse_args()))


if __name__ == "__main__":
    main()
