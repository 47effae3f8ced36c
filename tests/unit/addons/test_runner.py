"""addons/runner.py: the mitmproxy master keybroker runs in."""

from __future__ import annotations

import asyncio

from mitmproxy.options import Options

from addons.runner import SAFE_OPTIONS, proxy_master

EXPECTED = {
    "core",
    "errorcheck",
    "block",
    "disableh2c",
    "proxyserver",
    "nextlayer",
    "tlsconfig",
    "termlog",
}


def _master_addons() -> tuple[set[str], Options]:
    async def build() -> tuple[set[str], Options]:
        master = proxy_master(Options())
        master.options.update(**SAFE_OPTIONS)
        return set(master.addons.lookup), master.options

    return asyncio.run(build())


def test_only_the_addons_a_broker_needs() -> None:
    names, _ = _master_addons()
    assert names == EXPECTED
    # Ways around the broker that mitmdump would load: writing flows to disk,
    # user scripts, rewriting requests or serving replays after our hooks.
    for absent in ("save", "savehar", "scriptloader", "mapremote", "maplocal", "modifyheaders"):
        assert absent not in names


def test_safe_options_apply_and_keep_mitmproxy_safeguards() -> None:
    _, opts = _master_addons()
    assert opts.connection_strategy == "lazy"
    assert opts.ssl_insecure is False
    assert opts.block_global is True  # clients from public addresses are refused
    assert "onboarding" not in opts  # no mitm.it app
