"""The ``keybroker`` command (docs/design.md, contract §2)."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from broker.policy.load import PolicyError, load_policy
from broker.policy.schema import parse_listen
from broker.tls.ca import CAError


def cmd_check(args: argparse.Namespace) -> int:
    policy = load_policy(args.config)  # a PolicyError is printed by main(), counted
    from broker.policy.environment import missing_variables

    n = sum(len(t.secrets) for t in policy.tenants.values())
    counts = ", ".join(
        f"{k} {what}{'' if k == 1 else 's'}"
        for k, what in (
            (len(policy.tenants), "tenant"),
            (n, "secret"),
            (len(policy.backends), "backend"),
        )
    )
    print(f"{args.config}: valid ({counts})")
    for warning in missing_variables(policy, os.environ):
        print(f"{args.config}: warning: {warning}", file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    load_policy(args.config)  # every error before the proxy starts (printed by main())
    if args.listen:
        try:
            parse_listen(args.listen)
        except ValueError as exc:
            print(f"keybroker run: --listen: {exc}", file=sys.stderr)
            return 2
    from addons.runner import main as run_main  # the only place mitmproxy enters

    return run_main(
        Path(args.config),
        listen=args.listen,
        quiet=args.quiet,
        workers=args.workers,
        worker=args.worker_index,
    )


def cmd_token_new(args: argparse.Namespace) -> int:
    from broker.request.auth import token_digest

    token = "kb_" + secrets.token_urlsafe(32)
    print(token)
    print(f"sha256:{token_digest(token)}")
    return 0


def cmd_ca(args: argparse.Namespace) -> int:
    from broker.tls import ca

    policy = load_policy(args.config)
    if args.ca_cmd == "path":
        print(ca.ca_files(policy.certs_dir).cert.resolve())
        return 0
    if args.ca_cmd == "init":
        files, created = ca.init_ca(policy.certs_dir, force=args.force)
        if created and args.force:
            print(ca.rotation_notice(files))
        print(f"{'created' if created else 'exists'}: {files.cert.resolve()}")
        return 0
    from broker.tls import trust

    files = ca.ca_files(policy.certs_dir)
    try:
        if args.ca_cmd == "install":
            result = trust.install_ca(files.cert)
        else:
            result = trust.uninstall_ca(files.cert)
    except trust.TrustError as exc:
        print(f"keybroker ca {args.ca_cmd}: {exc}", file=sys.stderr)
        return 1
    print(result.message)
    if not result.executed:
        print(*result.commands, sep="\n")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    from broker.cli import sandbox_env

    text, ok = sandbox_env.command(args, lambda: tenant_token(args))
    print(text, end="")
    return 0 if ok else 1


def cmd_doctor(args: argparse.Namespace) -> int:
    from rich.console import Console

    from broker.cli import doctor

    return doctor.run_doctor(
        Path(args.config),
        args.tenant,
        tenant_token(args),
        listen=args.listen,
        out=Console(),
        upstream=args.upstream,
    )


def add_token_options(parser: argparse.ArgumentParser) -> None:
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--token", help="the tenant's token (visible to `ps`; see --token-env)")
    given.add_argument("--token-env", metavar="NAME", help="read the token from this variable")


def tenant_token(args: argparse.Namespace) -> str:
    """The token from ``--token`` or from the variable ``--token-env`` names."""
    if args.token_env is None:
        return str(args.token)
    token = os.environ.get(args.token_env, "")
    if not token:
        raise SystemExit(f"keybroker {args.cmd}: --token-env: ${args.token_env} is unset or empty")
    return token


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("keybroker")
    except PackageNotFoundError:  # run from a source tree without installing
        from broker import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="keybroker",
        description="keybroker: a credential broker for AI agents (a forward HTTPS proxy).",
        epilog="Quickstart: README.md; design and contract: docs/design.md; agents: docs/agents.md.",
    )
    p.add_argument("--version", action="version", version=f"keybroker {_version()}")
    sub = p.add_subparsers(dest="cmd", required=True)
    _add_broker_commands(sub)
    _add_sandbox_commands(sub)
    _add_audit_commands(sub)
    from broker.cli import governance

    governance.add_parsers(sub)
    return p


def _add_broker_commands(sub: Any) -> None:
    """run, check, ca, token: the operator's side of the broker itself."""
    run = sub.add_parser("run", help="run the proxy in the foreground with the live feed")
    run.add_argument("--config", required=True)
    run.add_argument("--listen", help="HOST:PORT (overrides the policy's listen)")
    run.add_argument("--quiet", action="store_true", help="no live feed")
    run.add_argument(
        "--workers", type=int, default=1, help="proxy processes sharing the listen address"
    )
    run.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="validate a policy file")
    check.add_argument("--config", required=True)
    check.set_defaults(func=cmd_check)

    ca = sub.add_parser("ca", help="the broker's CA")
    ca_sub = ca.add_subparsers(dest="ca_cmd", required=True)
    for name, text in (
        ("init", "create the CA (idempotent)"),
        ("path", "print the CA path"),
        ("install", "add the CA to the system trust store"),
        ("uninstall", "remove the CA from the system trust store"),
    ):
        c = ca_sub.add_parser(name, help=text)
        c.add_argument("--config", required=True)
        if name == "init":
            c.add_argument("--force", action="store_true", help="rotate: make a new CA")
        c.set_defaults(func=cmd_ca)

    token = sub.add_parser("token", help="tenant tokens")
    token_sub = token.add_subparsers(dest="token_cmd", required=True)
    token_sub.add_parser("new", help="print a new token and its sha256 form").set_defaults(
        func=cmd_token_new
    )


def _add_sandbox_commands(sub: Any) -> None:
    """env and doctor: what a sandbox loads, and the check from its side."""
    env = sub.add_parser("env", help="print proxy and CA variables for an agent sandbox")
    env.add_argument("--config", required=True)
    env.add_argument("--tenant", required=True)
    add_token_options(env)
    env.add_argument("--listen", help="the address agents reach the proxy at")
    env.add_argument("--format", choices=("shell", "dotenv"), default="shell")
    env.add_argument("--no-proxy", default="", help="NO_PROXY value (default: empty)")
    env.add_argument("--ttl", default="8h", help="session token lifetime (with sessions:)")
    env.add_argument(
        "--long-lived", action="store_true", help="hand the tenant token itself, not a session"
    )
    env.set_defaults(func=cmd_env)

    doc = sub.add_parser("doctor", help="check the chain from an agent sandbox's side")
    doc.add_argument("--config", required=True)
    doc.add_argument("--tenant", required=True)
    add_token_options(doc)
    doc.add_argument("--listen")
    doc.add_argument(
        "--upstream",
        metavar="HOST[:PORT]",
        help="also check, through the broker, that it trusts this upstream's TLS certificate",
    )
    doc.set_defaults(func=cmd_doctor)


def _add_audit_commands(sub: Any) -> None:
    """tail, audit verify, audit suggest."""
    from broker.cli.audit_commands import cmd_audit_suggest, cmd_audit_verify, cmd_tail

    tail = sub.add_parser("tail", help="render the audit as a live feed")
    tail.add_argument("file", nargs="?")
    tail.add_argument("--config")
    tail.add_argument("-f", "--follow", action="store_true")
    tail.add_argument("--tenant")
    tail.add_argument("--decision", choices=("allow", "pass", "deny", "error"))
    tail.set_defaults(func=cmd_tail)

    aud = sub.add_parser("audit", help="audit log tools")
    aud_sub = aud.add_subparsers(dest="audit_cmd", required=True)
    ver = aud_sub.add_parser("verify", help="check the hash chain")
    ver.add_argument("file", nargs="?")
    ver.add_argument("--config", help="verify every chain of this policy's audit.path")
    ver.add_argument("--key-env", help="environment variable holding the HMAC key")
    ver.set_defaults(func=cmd_audit_verify)
    sug = aud_sub.add_parser("suggest", help="the egress.allow list a tenant's traffic needs")
    sug.add_argument("--config", required=True)
    sug.add_argument("--tenant", required=True)
    sug.add_argument("--since", help="only records since: 24h, 7d or an ISO date/time")
    sug.add_argument("--file", help="read this audit file instead of the policy's")
    sug.set_defaults(func=cmd_audit_suggest)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code and argv[:1] == ["env"]:
            # A mistyped `eval "$(keybroker env ...)"` must not load an empty environment.
            from broker.cli.sandbox_env import Format, refusal

            fmt: Format = "dotenv" if "dotenv" in argv else "shell"
            print(refusal("bad arguments (see the message above)", fmt), end="")
        raise
    try:
        return int(args.func(args))
    except PolicyError as exc:  # the one place a policy's errors are printed
        for e in exc.errors:
            print(e, file=sys.stderr)
        if args.cmd == "check":
            print(f"{args.config}: {len(exc.errors)} error(s)", file=sys.stderr)
        return 1
    except (CAError, OSError) as exc:
        print(f"keybroker: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
