"""``keybroker doctor``: walk the chain an agent depends on, from the
sandbox's side, one line per step with ✓/✗ and, on failure, what to do.

Plain ``socket`` and ``ssl``: the broker answers ``keybroker.invalid`` itself
(``/whoami``), so nothing here needs an upstream or mitmproxy."""

from __future__ import annotations

import base64
import datetime
import http.client
import json
import os
import socket
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path

from cryptography import x509
from rich.console import Console
from rich.text import Text

from broker.cli import exposure
from broker.cli.backend_check import backend_advice
from broker.cli.probe import exchange, why
from broker.cli.sandbox_env import check_tenant_token
from broker.policy.load import PolicyError, load_policy
from broker.policy.schema import Egress, Policy, parse_listen
from broker.request.auth import WHOAMI_HOST
from broker.tls import ca, trust

_WILDCARD = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104
_STEPS = ("policy", "tenant and token", "CA and bundle", "proxy reachable", "CONNECT",
          "TLS inside the tunnel", "whoami")  # fmt: skip


class _Fail(Exception):
    """A failed step: what went wrong and what to do."""

    def __init__(self, what: str, fix: str = "") -> None:
        super().__init__(what)
        self.what, self.fix = what, fix


class _Report:
    def __init__(self, out: Console) -> None:
        self.out, self.failed = out, False

    def ok(self, n: int, what: str) -> None:
        self.out.print(Text.assemble(("✓", "green"), f" {n} {what}"))

    def fail(self, n: int, err: _Fail) -> None:
        self.failed = True
        self.out.print(Text.assemble(("✗", "bold red"), f" {n} {err.what}"))
        if err.fix:
            self.out.print(Text(f"    → {err.fix}"))

    def advise(self, items: list[exposure.Advice]) -> None:
        marks = {"ok": ("✓", "green"), "warn": ("⚠", "bold yellow"), "fail": ("✗", "bold red")}
        for a in items:
            self.failed |= a.level == "fail"
            self.out.print(Text.assemble(marks[a.level], f"   {a.what}"))
            if a.fix and a.level != "ok":
                self.out.print(Text(f"    → {a.fix}"))

    def skip_from(self, first: int, needs: int) -> None:
        self.failed = True
        for n in range(first, len(_STEPS) + 1):
            msg = f" {n} {_STEPS[n - 1]} (skipped: needs step {needs})"
            self.out.print(Text.assemble(("-", "dim"), msg))


def run_doctor(
    policy_path: Path | str,
    tenant: str,
    token: str,
    *,
    listen: str | None = None,
    out: Console,
    bundle: Path | None = None,
    timeout: float = 5.0,
    upstream: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """0 when every step passes, else 1. ``bundle`` overrides the CA bundle
    (default: the one under the policy's ``certs_dir``). After the steps:
    whether this shell is set up to use the broker, whether a direct
    connection around it is possible, whether Node's ``fetch()`` honours the
    proxy, and (``upstream``) whether the broker trusts that upstream."""
    r = _Report(out)
    cfg = f"--config {policy_path}"
    try:
        policy = load_policy(policy_path)
    except PolicyError as exc:
        r.fail(1, _Fail("policy does not load:\n    " + "\n    ".join(exc.errors),
                        f"fix these, then check with `keybroker check {cfg}`"))  # fmt: skip
        return 1
    r.ok(1, f"policy {policy_path} loads ({len(policy.tenants)} tenant(s))")

    env = os.environ if environ is None else environ
    _identity(r, policy, tenant, token, env)

    files = ca.ca_files(policy.certs_dir)
    ca_bundle = bundle or files.bundle
    ca_ok = _step(r, 3, lambda: _check_ca(files, ca_bundle, cfg))

    try:
        host, port = parse_listen(listen or policy.listen)
    except ValueError as exc:
        r.fail(4, _Fail(str(exc), "pass --listen HOST:PORT"))
        return 1
    host = _WILDCARD.get(host, host)
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        r.fail(4, _Fail(f"cannot connect to the proxy at {where}: {exc.strerror or exc}",
                        f"is `keybroker run {cfg}` running? If it listens elsewhere, "
                        "pass --listen HOST:PORT"))  # fmt: skip
        r.skip_from(5, needs=4)
        return 1
    r.ok(4, f"proxy reachable at {where}")
    with raw:
        if not _tunnel(r, raw, tenant, token, ca_bundle if ca_ok else None, cfg):
            return 1
    r.advise(exposure.proxy_variables(env, where))
    r.advise(exposure.direct_egress(exposure.direct_targets(policy, tenant, upstream)))
    r.advise(exposure.node_advice(exposure.node_version()))
    if tenant in policy.tenants:
        r.out.print(Text(f"  egress: {_egress_mode(policy.tenants[tenant].egress)}"))
    if upstream and ca_ok:
        r.advise([exposure.upstream_trust(upstream, proxy=(host, port), tenant=tenant,
                                          token=token, bundle=ca_bundle)])  # fmt: skip
    return 1 if r.failed else 0


def _identity(r: _Report, policy: Policy, tenant: str, token: str, env: Mapping[str, str]) -> None:
    """Step 2: the tenant and its token (or session token); the backends' advice."""
    from broker.cli.sessions import check_session

    session = check_session(policy, tenant, token, env)
    problem = check_tenant_token(policy, tenant, token) if session is None else session[1]
    if session is not None and session[0]:
        r.ok(2, session[1])
    elif problem:
        r.fail(2, _Fail(problem))
    else:
        r.ok(2, f"tenant {tenant!r} exists and the token matches its token_sha256")
    r.advise(backend_advice(policy, tenant, env))


def _tunnel(
    r: _Report, raw: socket.socket, tenant: str, token: str, ca_bundle: Path | None, cfg: str
) -> bool:
    """Steps 5-7 on the open connection to the proxy: CONNECT as the tenant,
    TLS with our CA (``ca_bundle`` None: step 3 failed), /whoami."""
    if not _step(r, 5, lambda: _check_connect(raw, tenant, token)):
        r.skip_from(6, needs=5)
        return False
    if ca_bundle is None:
        r.skip_from(6, needs=3)
        return False
    try:
        tls = _tls(raw, ca_bundle, cfg)
    except _Fail as err:
        r.fail(6, err)
        r.skip_from(7, needs=6)
        return False
    r.ok(6, f"TLS to {WHOAMI_HOST} inside the tunnel verifies with {ca_bundle}")
    with tls:
        _step(r, 7, lambda: _check_whoami(tls, tenant))
    return True


def _egress_mode(egress: Egress | None) -> str:
    """The tenant's egress mode in one line (DESIGN.md §12)."""
    if egress is None:
        return "no allowlist (any public destination); private addresses refused"
    private = f", private ranges allowed: {', '.join(egress.private)}" if egress.private else ""
    what = "refused" if egress.mode == "enforce" else "forwarded and audited (report)"
    return (
        f"mode {egress.mode}: {len(egress.allow)} allow entries plus the secrets' hosts; "
        f"other destinations {what}{private}"
    )


def _step(r: _Report, n: int, check: Callable[[], str]) -> bool:
    try:
        what = check()
    except _Fail as err:
        r.fail(n, err)
        return False
    r.ok(n, what)
    return True


def _check_ca(files: ca.CAFiles, bundle: Path, cfg: str) -> str:
    init = f"run `keybroker ca init {cfg}`"
    if not files.cert.is_file():
        raise _Fail(f"no CA certificate at {files.cert}", init)
    try:
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    except ValueError as exc:
        raise _Fail(f"{files.cert} is not a PEM certificate: {exc}", init + " --force") from None
    if cert.not_valid_after_utc <= datetime.datetime.now(datetime.UTC):
        raise _Fail(f"the CA expired on {cert.not_valid_after_utc:%Y-%m-%d}", init + " --force")
    if not bundle.is_file():
        raise _Fail(f"no CA bundle at {bundle}", init + " (it writes the bundle)")
    if not trust.in_bundle(files.cert, bundle):
        raise _Fail(
            f"{bundle} does not contain the CA in {files.cert} (made before a rotation?)",
            init + " to rewrite it, then give sandboxes the new bundle",
        )
    return f"CA {files.cert} ({ca.fingerprint(cert)[:23]}…) and bundle {bundle} exist"


def _check_connect(sock: socket.socket, tenant: str, token: str) -> str:
    cred = base64.b64encode(f"{tenant}:{token}".encode()).decode("ascii")
    target = f"{WHOAMI_HOST}:443"
    req = (
        f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {cred}\r\n\r\n"
    )
    try:
        resp = exchange(sock, req, "CONNECT")
    except (OSError, http.client.HTTPException) as exc:
        raise _Fail(
            f"CONNECT {target} failed: {why(exc)}", "is that port keybroker's proxy?"
        ) from None
    if resp.status == 407:
        raise _Fail(
            f"CONNECT {target}: 407, the proxy rejected the credentials of tenant {tenant!r} "
            f"({resp.explain()})",
            "wrong tenant or token: compare with step 2 and the policy the proxy runs "
            "(after editing it, send SIGHUP to `keybroker run`)",
        )
    if resp.status != 200:
        raise _Fail(f"CONNECT {target}: {resp.explain()}", "is that port keybroker's proxy?")
    return f"CONNECT {target} as tenant {tenant!r}: 200"


def _tls(sock: socket.socket, bundle: Path, cfg: str) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(bundle))
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT  # what Python 3.13 clients demand
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        return ctx.wrap_socket(sock, server_hostname=WHOAMI_HOST)
    except ssl.SSLCertVerificationError as exc:
        raise _Fail(
            f"the client does not trust the keybroker CA: {exc.verify_message}",
            f"set SSL_CERT_FILE (and the other variables from `keybroker env {cfg} …`) to "
            f"{bundle}, or run `keybroker ca install {cfg}`; if the CA was rotated, restart "
            "`keybroker run`",
        ) from None
    except (OSError, ssl.SSLError) as exc:
        raise _Fail(
            f"TLS handshake inside the tunnel failed: {exc}", "see `keybroker run`'s log"
        ) from None


def _check_whoami(tls: ssl.SSLSocket, tenant: str) -> str:
    req = (
        f"GET /whoami HTTP/1.1\r\nHost: {WHOAMI_HOST}\r\n"
        "Accept: application/json\r\nConnection: close\r\n\r\n"
    )
    try:
        resp = exchange(tls, req, "GET")
    except (OSError, http.client.HTTPException) as exc:
        raise _Fail(
            f"GET https://{WHOAMI_HOST}/whoami failed: {why(exc)}", "see `keybroker run`'s log"
        ) from None
    if resp.status != 200:
        raise _Fail(
            f"GET https://{WHOAMI_HOST}/whoami: {resp.explain()}",
            "the proxy did not answer for itself: is it keybroker (not a bare mitmproxy), "
            "and recent enough to know /whoami?",
        )
    try:
        data = json.loads(resp.body)
        who, secrets = data["tenant"], data["secrets"]
        names = [str(s) for s in secrets]
    except (ValueError, KeyError, TypeError):
        raise _Fail('/whoami answered 200 but not {"tenant", "secrets"} JSON') from None
    if who != tenant:
        raise _Fail(
            f"the broker identified this connection as tenant {who!r}, not {tenant!r}",
            "two tenants share a token? `keybroker check` the policy the proxy runs",
        )
    return f"/whoami: tenant {who!r}, secrets: {', '.join(names) or '(none)'}"
