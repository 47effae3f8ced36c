"""``keybroker approvals`` and ``keybroker session`` (DESIGN.md §13).

``approvals`` talks to a running broker's admin API (``admin.listen``) with
the operator token from ``--admin-token-env``. ``session new`` signs a
token locally with the key from ``sessions.key_env``; ``session revoke``
writes to the shared state store when the policy has ``state.url`` (no
broker needs to be up), and otherwise asks the broker's admin API."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from broker.cli.console import sanitize
from broker.cli.sessions import CLIError, new_session
from broker.governance import sessions
from broker.governance.limits import usage_rows
from broker.governance.state import StateStore, StateUnavailable, build_store
from broker.policy.load import load_policy
from broker.policy.schema import Policy, parse_listen

ADMIN_TOKEN_ENV = "KEYBROKER_ADMIN_TOKEN"


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Never through HTTP_PROXY & co.: the operator token goes only to admin.listen."""


def admin_call(
    policy: Policy, args: argparse.Namespace, method: str, path: str, body: Any = None
) -> Any:
    listen = args.admin or (policy.admin.listen if policy.admin else None)
    if listen is None:
        raise CLIError("the policy has no admin: section (admin.listen, admin.token_sha256)")
    host, port = parse_listen(listen)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104
    host = f"[{host}]" if ":" in host else host
    token = os.environ.get(args.admin_token_env, "")
    if not token:
        raise CLIError(f"--admin-token-env: ${args.admin_token_env} is unset or empty")
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"http://{host}:{port}{path}",
        data=data,
        method=method,
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )
    problem = ""
    try:
        with _OPENER.open(req, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            problem = str(json.loads(exc.read()).get("error", exc.code))
        except ValueError:
            problem = f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        problem = f"cannot reach the admin API at {listen} ({reason}); is `keybroker run` up?"
    raise CLIError(problem)


def cmd_approvals(args: argparse.Namespace) -> int:
    policy = load_policy(args.config)
    if args.approvals_cmd == "list":
        recs = admin_call(policy, args, "GET", "/v1/approvals")
        if args.json:
            print(json.dumps(recs, indent=2))
            return 0
        if not recs:
            print("no requests waiting for approval")
        for r in recs:
            what = [sanitize(r.get(k) or "-", 120) for k in ("id", "since", "tenant", "secret")]
            what += [sanitize(r.get("method") or "-", 16), sanitize(r.get("host") or "-", 255)]
            what.append(sanitize(r.get("path") or "-", 512))
            if r.get("query_keys"):  # names only: the values are never stored
                what.append("query-keys=" + sanitize(r["query_keys"], 512))
            what.append(f"body={sanitize(str(r.get('body_bytes') or 0), 12)}B")
            print(" ".join(what))
        return 0
    action = "approve" if args.approvals_cmd == "approve" else "deny"
    got = admin_call(policy, args, "POST", f"/v1/approvals/{args.id}/{action}")
    print(f"{sanitize(got.get('id'))}: {sanitize(got.get('verdict'))} by {sanitize(got.get('by'))}")
    return 0


def cmd_session(args: argparse.Namespace) -> int:
    policy = load_policy(args.config)
    if args.session_cmd == "new":
        token, expires = new_session(policy, args.tenant, args.ttl)
        print(token)
        when = datetime.fromtimestamp(expires, UTC).isoformat(timespec="seconds")
        print(f"session for tenant {args.tenant!r} until {when}", file=sys.stderr)
        return 0
    raw = sys.stdin.readline().strip() if args.token == "-" else args.token
    s = sessions.parse(raw)
    if s is None:
        raise CLIError("not a keybroker session token (they start with kbs1.)")
    if policy.state is not None:
        asyncio.run(_in_store(policy, lambda store: store.revoke(s.id, s.expires)))
    else:
        admin_call(policy, args, "POST", "/v1/sessions/revoke", {"id": s.id, "expires": s.expires})
    print(f"revoked session {s.id} of tenant {sanitize(s.tenant)}")
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    """``keybroker usage [--tenant T] [--json]`` / ``usage reset --tenant T --secret S``."""
    policy = load_policy(args.config)
    if args.usage_cmd == "reset":
        t = policy.tenants.get(args.tenant)
        if t is None or args.secret not in t.secrets:
            raise CLIError(f"tenant {args.tenant!r} has no secret {args.secret!r} in the policy")
        if policy.state is not None:
            asyncio.run(_in_store(policy, lambda s: s.reset(args.tenant, args.secret)))
        else:
            admin_call(policy, args, "POST", "/v1/usage/reset",
                       {"tenant": args.tenant, "secret": args.secret})  # fmt: skip
        print(f"reset the counts of {args.tenant}/{args.secret}")
        return 0
    if policy.state is not None:
        rows = asyncio.run(_in_store(policy, lambda s: usage_rows(s, policy.tenants, args.tenant)))
    else:
        rows = [
            r
            for r in admin_call(policy, args, "GET", "/v1/usage")
            if args.tenant is None or r.get("tenant") == args.tenant
        ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no secret with rate or max_uses")
    for r in rows:
        rate = f"{r['window_uses']} in the window of {r['rate']}" if r.get("rate") else "no rate"
        uses = f"{r['uses']}/{r['max_uses']} uses" if r.get("max_uses") else f"{r['uses']} uses"
        print(f"{sanitize(r['tenant'])}/{sanitize(r['secret'])}: {rate}; {uses}")
    return 0


async def _in_store[T](policy: Policy, fn: Callable[[StateStore], Awaitable[T]]) -> T:
    store = build_store(policy.state, os.environ)
    failed = ""
    try:
        return await fn(store)
    except StateUnavailable as exc:
        failed = str(exc)
    finally:
        await store.aclose()
    raise CLIError(failed)


def cmd_state(args: argparse.Namespace) -> int:
    """``keybroker state init``: (re-)initialise the shared store's epoch marker."""
    policy = load_policy(args.config)
    if policy.state is None:
        raise CLIError("the policy has no state: section (state.url); nothing to initialise")
    from broker.governance.redis_state import RedisStore

    async def init(store: StateStore) -> str:
        assert isinstance(store, RedisStore)
        return await store.init_epoch()

    mark = asyncio.run(_in_store(policy, init))
    print(
        f"state store initialised (epoch {mark}); every broker sharing it resumes. Rate "
        "windows, use counts and approvals in the store start from what it holds now.",
    )
    return 0


def _admin_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True)
    p.add_argument(
        "--admin-token-env",
        default=ADMIN_TOKEN_ENV,
        metavar="VAR",
        help=f"variable holding the operator token (default {ADMIN_TOKEN_ENV})",
    )
    p.add_argument("--admin", metavar="HOST:PORT", help="admin API address (default admin.listen)")


def add_parsers(sub: Any) -> None:
    ap = sub.add_parser("approvals", help="requests held for an operator's approval")
    ap_sub = ap.add_subparsers(dest="approvals_cmd", required=True)
    ls = ap_sub.add_parser("list", help="list held requests")
    _admin_options(ls)
    ls.add_argument("--json", action="store_true", help="a JSON list")
    for name in ("approve", "deny"):
        c = ap_sub.add_parser(name, help=f"{name} a held request")
        c.add_argument("id")
        _admin_options(c)
    ap.set_defaults(func=_guarded(cmd_approvals))

    us = sub.add_parser("usage", help="rate windows and use counts of limited secrets")
    us_sub = us.add_subparsers(dest="usage_cmd", required=True)
    show = us_sub.add_parser("show", help="show the counts")
    _admin_options(show)
    show.add_argument("--tenant")
    show.add_argument("--json", action="store_true")
    reset = us_sub.add_parser("reset", help="forget a secret's counts (re-arm a one-shot)")
    _admin_options(reset)
    reset.add_argument("--tenant", required=True)
    reset.add_argument("--secret", required=True)
    us.set_defaults(func=_guarded(cmd_usage))

    se = sub.add_parser("session", help="short-lived session tokens for sandboxes")
    se_sub = se.add_subparsers(dest="session_cmd", required=True)
    new = se_sub.add_parser("new", help="print a new session token")
    new.add_argument("--config", required=True)
    new.add_argument("--tenant", required=True)
    new.add_argument("--ttl", default="8h", help="lifetime: 30m, 2h, 1d (default 8h)")
    rv = se_sub.add_parser("revoke", help="make every broker refuse a session token")
    rv.add_argument("token", help="the session token, or - to read it from stdin")
    _admin_options(rv)
    se.set_defaults(func=_guarded(cmd_session))

    st = sub.add_parser("state", help="the shared state store (state.url)")
    st_sub = st.add_subparsers(dest="state_cmd", required=True)
    init = st_sub.add_parser(
        "init", help="write a new epoch marker: brokers refusing a store that lost data resume"
    )
    init.add_argument("--config", required=True)
    st.set_defaults(func=_guarded(cmd_state))


def _guarded(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(fn(args))
        except CLIError as exc:
            print(f"keybroker {args.cmd}: {exc}", file=sys.stderr)
            return 1

    return run
