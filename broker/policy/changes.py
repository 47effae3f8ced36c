"""What a policy reload cannot apply to a running proxy.

Most of a policy is read per request and changes with a reload (tenants,
secrets, backends, audit, limits, ``upstream_ca``). The listening socket and
the CA mitmproxy signs with are set up once at start: a changed ``listen`` or
``certs_dir`` is named, with what to do, instead of being ignored silently."""

from __future__ import annotations

from broker.policy.schema import Policy


def needs_restart(old: Policy, new: Policy) -> list[str]:
    """One line per field whose new value takes effect only after a restart."""
    out = []
    if new.listen != old.listen:
        out.append(
            f"listen changed ({old.listen} -> {new.listen}): the proxy keeps listening on "
            "its current address until `keybroker run` is restarted"
        )
    if new.certs_dir != old.certs_dir:
        out.append(
            f"certs_dir changed ({old.certs_dir} -> {new.certs_dir}): the proxy keeps "
            "signing with the CA it started with until `keybroker run` is restarted"
        )
    return out
