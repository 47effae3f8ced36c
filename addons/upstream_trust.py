"""mitmproxy's upstream TLS options from the policy, at start and on reload.

The broker verifies upstreams against the system trust store plus
``upstream_ca`` (:mod:`broker.tls.upstream`); a reload that changes either
takes effect for new upstream connections at once. Fields that cannot change
in a running proxy are named in the log with what to do
(:func:`broker.policy.changes.needs_restart`)."""

from __future__ import annotations

import logging
from typing import Any

from mitmproxy import ctx

from broker.policy.changes import needs_restart
from broker.policy.schema import Policy
from broker.tls.ca import CAError
from broker.tls.upstream import upstream_bundle

log = logging.getLogger("keybroker")


def upstream_options(policy: Policy) -> dict[str, Any]:
    """Options that make mitmproxy verify upstreams against our bundle."""
    assert policy.certs_dir is not None
    bundle = upstream_bundle(policy.certs_dir, policy.upstream_ca)
    return {"ssl_verify_upstream_trusted_ca": str(bundle)}


def after_reload(old: Policy, new: Policy) -> None:
    """Apply what a reload can apply live; say what needs a restart. An
    upstream bundle that cannot be made keeps the previous one (and says so)."""
    for line in needs_restart(old, new):
        log.warning("keybroker: %s", line)
    try:
        update = upstream_options(new)
    except (CAError, OSError) as exc:
        log.warning("keybroker: %s; upstream TLS keeps the previous trust", exc)
        return
    current = getattr(ctx.options, "ssl_verify_upstream_trusted_ca", None)
    if update["ssl_verify_upstream_trusted_ca"] != current:
        ctx.options.update(**update)
        log.warning("keybroker: upstream trust reloaded (system store + upstream_ca)")
