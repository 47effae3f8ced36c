"""One running store per backend type of DESIGN.md §14, with the policy
entries that reach it four ways (right credential, short cache, wrong
credential, store down) for the end-to-end tests in
tests/integration/test_backend_stores.py.

Every factory returns a :class:`Store`; servers it starts are registered on
the ``ExitStack`` it is given.
"""

from __future__ import annotations

import json
import secrets
import socket
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.moto import REGION, MotoServer
from tests.support.net import free_port
from tests.support.openbao import OpenBao, find_bao
from tests.support.tlsca import TestCA
from tests.support.vendor_apis import DopplerApp, InfisicalApp, OnePasswordConnectApp, VendorServer


def canary(label: str) -> str:
    return f"kbcanary_{label}_{secrets.token_hex(10)}"


@dataclass
class Store:
    kind: str
    backends: dict[str, dict[str, Any]]
    """``main``, ``fast`` (cache_ttl 1), ``wrong`` (a refused credential),
    ``down``; HTTPS stores add ``untrusted`` (no ``ca_cert`` for the test CA)."""
    env: dict[str, str]
    put: Callable[[str, str, str], None]
    """(path, field, value): write or rotate a value in the store."""
    rules: dict[str, tuple[str, str]]
    """``ok``, ``rot``, ``missing`` -> (path, field)."""
    credentials: list[str]
    """Backend credentials: never in any output."""
    wrong_reason: str = "backend_unavailable"
    why: dict[str, str] = field(default_factory=dict)
    """Secret -> what the broker's log line says of its failure (the cause,
    not merely a 502: a wrong profile must fail as refused, not as absent)."""
    noise: list[str] = field(default_factory=list)
    """What the store says on failure that must not be logged verbatim."""


def _rest(
    kind: str, srv: VendorServer, ca: TestCA, creds: dict[str, str], **wrong: str
) -> dict[str, dict[str, Any]]:
    main = {"type": kind, "url": srv.url, "ca_cert": ca.ca_path, "timeout": 3, **creds}
    return {
        "main": main,
        "fast": {**main, "cache_ttl": 1},
        "wrong": {**main, **wrong},
        "down": {**main, "url": f"https://127.0.0.1:{free_port()}"},
        "untrusted": {k: v for k, v in main.items() if k != "ca_cert"},
    }


def onepassword(stack: ExitStack, ca: TestCA, **_: Any) -> Store:
    app = OnePasswordConnectApp()
    good, wrong = "op-" + secrets.token_urlsafe(20), "op-" + secrets.token_urlsafe(20)
    app.tokens[good] = None
    srv = stack.enter_context(VendorServer(app, ca))
    return Store(
        kind="onepassword_connect",
        backends=_rest(
            "onepassword_connect", srv, ca, {"token_env": "KB_OP_TOKEN"}, token_env="KB_OP_WRONG"
        ),
        env={"KB_OP_TOKEN": good, "KB_OP_WRONG": wrong},
        put=app.put,
        rules={
            "ok": ("Private/Stripe live", "credential"),
            "rot": ("Private/Rotating", "credential"),
            "missing": ("Private/No such item", "credential"),
        },
        credentials=[good, wrong],
        why={
            "missing": "no ",
            "down": "cannot connect",
            "untrusted": "TLS handshake or certificate verification failed",
            "wrong": "refused the credential in KB_OP_WRONG (HTTP 401)",
        },
    )


def doppler(stack: ExitStack, ca: TestCA, **_: Any) -> Store:
    app = DopplerApp()
    good, wrong = "dp.st.prd." + secrets.token_hex(20), "dp.st.prd." + secrets.token_hex(20)
    app.tokens[good] = ("web", "prd")
    srv = stack.enter_context(VendorServer(app, ca))
    return Store(
        kind="doppler",
        backends=_rest(
            "doppler", srv, ca, {"token_env": "KB_DOPPLER_TOKEN"}, token_env="KB_DOPPLER_WRONG"
        ),
        env={"KB_DOPPLER_TOKEN": good, "KB_DOPPLER_WRONG": wrong},
        put=app.put,
        rules={
            "ok": ("web/prd", "STRIPE_KEY"),
            "rot": ("web/prd", "ROTATING"),
            "missing": ("web/prd", "NO_SUCH_SECRET"),
        },
        credentials=[good, wrong],
        why={
            "missing": "no ",
            "down": "cannot connect",
            "untrusted": "TLS handshake or certificate verification failed",
            "wrong": "refused the credential in KB_DOPPLER_WRONG (HTTP 401)",
        },
    )


def infisical(stack: ExitStack, ca: TestCA, **_: Any) -> Store:
    app = InfisicalApp()
    cid, csecret = secrets.token_hex(8), secrets.token_hex(24)
    app.identities[cid] = csecret
    srv = stack.enter_context(VendorServer(app, ca))
    creds = {"client_id_env": "KB_INF_ID", "client_secret_env": "KB_INF_SECRET"}
    wrong_secret = secrets.token_hex(24)
    return Store(
        kind="infisical",
        backends=_rest("infisical", srv, ca, creds, client_secret_env="KB_INF_WRONG"),
        env={"KB_INF_ID": cid, "KB_INF_SECRET": csecret, "KB_INF_WRONG": wrong_secret},
        put=app.put,
        rules={
            "ok": ("6f1e2c/prod/payments", "STRIPE_KEY"),
            "rot": ("6f1e2c/prod", "ROTATING"),
            "missing": ("6f1e2c/prod", "NO_SUCH_SECRET"),
        },
        credentials=[csecret, wrong_secret],
        why={
            "missing": "no ",
            "down": "cannot connect",
            "untrusted": "TLS handshake or certificate verification failed",
            "wrong": "login refused (HTTP 401; check KB_INF_ID/KB_INF_WRONG)",
        },
    )


def aws(stack: ExitStack, tmp: Path, ca: TestCA, **_: Any) -> Store:
    moto = stack.enter_context(MotoServer(ca))
    wrong_key, wrong_secret = "AKIA" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)
    (tmp / "credentials").write_text(
        f"[wrong]\naws_access_key_id = {wrong_key}\naws_secret_access_key = {wrong_secret}\n"
    )
    (tmp / "config").write_text(f"[profile wrong]\nregion = {REGION}\n")
    main = {
        "type": "aws_secrets_manager",
        "region": REGION,
        "endpoint_url": moto.url,
        "ca_cert": ca.ca_path,
        "timeout": 3,
    }

    def put(path: str, field: str, value: str) -> None:
        # a JSON object for a named field, a plain string for the default one
        moto.put(path, json.dumps({field: value}) if field != "value" else value)

    return Store(
        kind="aws_secrets_manager",
        backends={
            "main": main,
            "fast": {**main, "cache_ttl": 1},
            "wrong": {**main, "profile": "wrong"},
            "down": {**main, "endpoint_url": f"https://127.0.0.1:{free_port()}"},
            "untrusted": {k: v for k, v in main.items() if k != "ca_cert"},
        },
        env={
            "AWS_ACCESS_KEY_ID": moto.access_key_id,
            "AWS_SECRET_ACCESS_KEY": moto.secret_access_key,
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "credentials"),
            "AWS_CONFIG_FILE": str(tmp / "config"),
            "AWS_EC2_METADATA_DISABLED": "true",
        },
        put=put,
        rules={
            "ok": ("acme/stripe", "api_key"),
            "rot": ("acme/rotating", "value"),
            "missing": ("acme/no-such-secret", "api_key"),
        },
        credentials=[moto.secret_access_key, wrong_secret],
        why={
            "missing": "no such secret",
            "down": "cannot connect",
            "untrusted": "TLS handshake or certificate verification failed",
            "wrong": "AWS refused the broker's credentials",
        },
    )


def exec_bao(stack: ExitStack, openbao: OpenBao, **_: Any) -> Store:
    """The real ``bao`` CLI against the OpenBao dev server. A black hole (a
    listener that never accepts) stands for a store that hangs."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(1)
    stack.callback(hole.close)
    bao = find_bao()
    get = [bao, "kv", "get", "-mount=secret", "-field={field}", "{path}"]
    main = {"type": "exec", "command": get, "env_pass": ["BAO_ADDR", "BAO_TOKEN"], "timeout": 5}
    wrong = "hvs." + secrets.token_urlsafe(20)

    def put(path: str, field: str, value: str) -> None:
        openbao.put_v2(path, {field: value})

    return Store(
        kind="exec",
        backends={
            "main": main,
            "fast": {**main, "cache_ttl": 1},
            "wrong": {**main, "env_pass": ["BAO_ADDR", "VAULT_TOKEN"]},
            "down": {
                **main,
                "timeout": 1.5,
                "command": [
                    bao,
                    "kv",
                    "get",
                    f"-address=http://127.0.0.1:{hole.getsockname()[1]}",
                    "-mount=secret",
                    "-field={field}",
                    "{path}",
                ],
            },
        },
        env={"BAO_ADDR": openbao.url, "BAO_TOKEN": openbao.root_token, "VAULT_TOKEN": wrong},
        put=put,
        rules={
            "ok": ("kb-exec/stripe", "api_key"),
            "rot": ("kb-exec/rotating", "api_key"),
            "missing": ("kb-exec/no-such-secret", "api_key"),
        },
        credentials=[openbao.root_token, wrong],
        wrong_reason="secret_not_found",  # a CLI's exit status cannot say which
        why={
            "missing": "exited with status 2",
            "down": "no answer within 1.5s",
            "wrong": "exited with status 2",
        },
        noise=["permission denied", "Error making API request"],
    )


FACTORIES: dict[str, Callable[..., Store]] = {
    "aws_secrets_manager": aws,
    "onepassword_connect": onepassword,
    "doppler": doppler,
    "infisical": infisical,
    "exec": exec_bao,
}
