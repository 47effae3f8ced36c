"""``keybroker tail`` and ``keybroker audit verify``: reading the chains a
broker writes (with ``--config``: the audit file and every worker's)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from broker.policy.load import load_policy


def cmd_tail(args: argparse.Namespace) -> int:
    from rich.console import Console

    from broker.cli import follow

    if args.file:
        paths = [Path(args.file)]
    elif args.config:
        paths = follow.audit_files(load_policy(args.config).audit.path)
    else:
        print("keybroker tail: give an AUDIT_FILE or --config FILE", file=sys.stderr)
        return 2
    return follow.tail_all(
        paths, follow=args.follow, tenant=args.tenant, decision=args.decision, console=Console()
    )


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """One file, or with ``--config`` every chain the policy's broker writes
    (the audit file and each worker's), keyed by ``audit.hmac_key_env``."""
    from broker.audit import chain
    from broker.cli.follow import audit_files

    key_env = args.key_env
    if args.config:
        policy = load_policy(args.config)
        files = [Path(args.file)] if args.file else audit_files(policy.audit.path)
        key_env = key_env or policy.audit.hmac_key_env
    elif args.file:
        files = [Path(args.file)]
    else:
        print("keybroker audit verify: give an AUDIT_FILE or --config FILE", file=sys.stderr)
        return 2
    key = os.environ.get(key_env) if key_env else None
    if key_env and not key:
        print(f"keybroker audit verify: ${key_env} is unset or empty", file=sys.stderr)
        return 2
    ok = True
    for path in files:
        result = chain.verify_file(path, hmac_key=key.encode() if key else None)
        print(result.message, file=sys.stdout if result.ok else sys.stderr)
        ok &= result.ok
    return 0 if ok else 1


def cmd_audit_suggest(args: argparse.Namespace) -> int:
    from broker.egress import suggest

    policy = load_policy(args.config)
    tenant = policy.tenants.get(args.tenant)
    if tenant is None:
        print(f"keybroker audit suggest: no tenant {args.tenant!r} in the policy", file=sys.stderr)
        return 1
    try:
        since = suggest.parse_since(args.since) if args.since else None
    except ValueError as exc:
        print(f"keybroker audit suggest: {exc}", file=sys.stderr)
        return 2
    files = suggest.audit_files(Path(args.file) if args.file else policy.audit.path)
    listed = tenant.egress.allow if tenant.egress else ()
    found = suggest.suggest(
        suggest.read_records(files), args.tenant, tenant.egress_rules, listed, since
    )
    print(suggest.render(found, args.tenant, tenant.egress_rules.mode), end="")
    return 0
