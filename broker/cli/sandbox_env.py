"""The agent sandbox's environment (``keybroker env``): proxy variables that
carry the tenant's credentials, and the CA bundle under every name common
clients read.

``NODE_USE_ENV_PROXY=1`` makes Node (22.21+ and 24+) honour ``HTTP(S)_PROXY``
and ``NO_PROXY`` in ``fetch()`` and, on recent releases, in ``http``/``https``;
older Node ignores it (see docs/agents.md for undici's ``EnvHttpProxyAgent``).

Tools that read their own configuration files before the environment (npm's
``cafile``/``https-proxy`` in an npmrc, pip.conf, cargo's config) get their
own variables too: a tool's environment variables beat its files, so a
global npmrc cannot point npm at another CA or proxy.

When the environment cannot be made, :func:`refusal` is what goes to stdout
instead: text that stops whatever loads it (``eval``, ``.``, ``docker
--env-file``), so a broken step never starts a sandbox that goes direct.

The tenant's credential is one value, the proxy password (:func:`proxy_url`):
another kind of credential (a session token) changes only that.
"""

from __future__ import annotations

import argparse
import hmac
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from broker.policy.load import PolicyError, load_policy
from broker.policy.schema import Policy, parse_listen
from broker.request.auth import token_digest
from broker.tls.ca import CAError, init_ca

Format = Literal["shell", "dotenv"]

PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")
NO_PROXY_VARS = ("NO_PROXY", "no_proxy")
BUNDLE_VARS = (
    "SSL_CERT_FILE",  # OpenSSL-based clients: Python ssl, httpx, Ruby, many CLIs
    "REQUESTS_CA_BUNDLE",  # Python requests
    "CURL_CA_BUNDLE",  # curl, and requests as a fallback
    "NODE_EXTRA_CA_CERTS",  # Node, read once at start-up
    "GIT_SSL_CAINFO",  # git over https
    "PIP_CERT",  # pip
    "AWS_CA_BUNDLE",  # AWS CLI and SDKs
)
# Extensions: tools whose config files would otherwise win over the variables above.
TOOL_BUNDLE_VARS = (
    "npm_config_cafile",  # npm: beats `cafile` in a global or user npmrc
    "CARGO_HTTP_CAINFO",  # cargo
    "DENO_CERT",  # deno
    "BUNDLE_SSL_CA_CERT",  # bundler
    "HTTPLIB2_CA_CERTS",  # httplib2 (older Google API clients)
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",  # gRPC
    "YARN_HTTPS_CA_FILE_PATH",  # yarn 2+ (yarn 1 reads npm_config_*)
)
TOOL_PROXY_VARS = (
    "npm_config_proxy",  # npm: beats `proxy` / `https-proxy` in an npmrc
    "npm_config_https_proxy",
    "PIP_PROXY",  # pip: beats `proxy` in pip.conf
    "CARGO_HTTP_PROXY",  # cargo: beats http.proxy in its config
    "YARN_HTTPS_PROXY",  # yarn 2+: beats httpsProxy in .yarnrc.yml
    "YARN_HTTP_PROXY",
)
TOOL_NO_PROXY_VARS = ("npm_config_noproxy",)
_UNSPECIFIED = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104


def proxy_url(proxy_host: str, proxy_port: int, tenant: str, token: str) -> str:
    """``http://tenant:token@host:port``; tenant and token percent-encoded.
    A wildcard listen address becomes loopback; IPv6 gets brackets."""
    if not tenant or not token:
        raise ValueError("tenant and token must not be empty")
    if not 1 <= proxy_port <= 65535:
        raise ValueError(f"proxy port {proxy_port} is outside 1-65535")
    host = _UNSPECIFIED.get(proxy_host.strip("[]"), proxy_host.strip("[]"))
    if ":" in host:
        host = f"[{host}]"
    return f"http://{quote(tenant, safe='')}:{quote(token, safe='')}@{host}:{proxy_port}"


def env_vars(
    *, proxy_host: str, proxy_port: int, tenant: str, token: str, bundle: Path, no_proxy: str = ""
) -> list[tuple[str, str]]:
    url = proxy_url(proxy_host, proxy_port, tenant, token)
    ca = str(Path(bundle).expanduser().absolute())
    out = [(name, url) for name in PROXY_VARS]
    out += [(name, no_proxy) for name in NO_PROXY_VARS]
    out += [(name, ca) for name in BUNDLE_VARS]
    out.append(("NODE_USE_ENV_PROXY", "1"))
    out += [(name, url) for name in TOOL_PROXY_VARS]
    out += [(name, no_proxy) for name in TOOL_NO_PROXY_VARS]
    out += [(name, ca) for name in TOOL_BUNDLE_VARS]
    return out


def render_env(
    *,
    proxy_host: str,
    proxy_port: int,
    tenant: str,
    token: str,
    bundle: Path,
    fmt: Format = "shell",
    no_proxy: str = "",
    extra: list[tuple[str, str]] | None = None,
) -> str:
    """``export NAME='value'`` lines (shell) or ``NAME=value`` lines (dotenv,
    as ``docker run --env-file`` reads them: literally, no quotes), each
    ending in a newline. NO_PROXY is always set (empty by default) so an
    inherited value cannot route requests around the broker."""
    pairs = env_vars(
        proxy_host=proxy_host,
        proxy_port=proxy_port,
        tenant=tenant,
        token=token,
        bundle=bundle,
        no_proxy=no_proxy,
    ) + (extra or [])
    lines = []
    for name, value in pairs:
        if "\n" in value or "\r" in value or "\0" in value:
            raise ValueError(f"{name}: a value cannot contain a line break or NUL")
        if fmt == "shell":
            lines.append(f"export {name}={shell_quote(value)}\n")
        elif fmt == "dotenv":
            lines.append(f"{name}={value}\n")
        else:
            raise ValueError(f"unknown format {fmt!r}: use shell or dotenv")
    return "".join(lines)


def refusal(message: str, fmt: Format = "shell") -> str:
    """What ``keybroker env`` prints on stdout when it fails: in shell
    format, a message on stderr and ``exit 1`` (``eval`` and ``.`` stop the
    script that would start the agent); in dotenv format, a line that is not
    ``NAME=value`` and whose name holds spaces, which ``docker run --env-file``
    rejects. Either way nothing loads a half-made environment."""
    one_line = " ".join(message.split())
    if fmt == "dotenv":
        return f"keybroker env failed: {one_line}\n"
    text = f"keybroker env failed: {one_line}; not starting the sandbox"
    return f"echo {shell_quote(text)} >&2\nexit 1\n"


AWS_DUMMY_SECRET = "keybroker-signs-this-request"
"""Not a secret: the SDK needs some secret key to sign; keybroker signs again."""


def credential_vars(policy: Policy, tenant: str) -> list[tuple[str, str]]:
    """What an SDK needs for the tenant's credential kinds (DESIGN.md §11):
    the AWS variables for its first ``aws_sigv4`` secret (by name)."""
    t = policy.tenants.get(tenant)
    aws = sorted(n for n, r in (t.secrets.items() if t else ()) if r.kind == "aws_sigv4")
    if not aws:
        return []
    rule = t.secrets[aws[0]] if t else None
    out = [
        ("AWS_ACCESS_KEY_ID", f"<<secret:{aws[0]}>>"),
        ("AWS_SECRET_ACCESS_KEY", AWS_DUMMY_SECRET),
    ]
    if rule is not None and rule.regions:
        out += [("AWS_REGION", rule.regions[0]), ("AWS_DEFAULT_REGION", rule.regions[0])]
    return out


def shell_quote(value: str) -> str:
    """Single-quoted for POSIX shells: ``'`` becomes ``'\\''``."""
    return "'" + value.replace("'", "'\\''") + "'"


def check_tenant_token(policy: Policy, tenant: str, token: str) -> str | None:
    """None when ``token`` is the tenant's; otherwise a message saying what to do."""
    t = policy.tenants.get(tenant)
    if t is None:
        names = sorted(policy.tenants)
        known = ", ".join(names[:10]) + (f", … ({len(names)} in all)" if len(names) > 10 else "")
        return (
            f"tenant {tenant!r} is not in the policy (tenants: {known or 'none'}); "
            f"add it under tenants: with a token_sha256 from `keybroker token new`"
        )
    if not token:
        return f"no token given for tenant {tenant!r}: pass --token (the one `keybroker token new` printed)"
    if not hmac.compare_digest(token_digest(token), t.token_sha256):
        return (
            f"token does not match tenant {tenant!r}'s token_sha256 — run `keybroker token new` "
            f"and put its sha256: line in tenants.{tenant}.token_sha256, or pass the token "
            "that line was made from"
        )
    return None


def command(args: argparse.Namespace, token: Callable[[], str]) -> tuple[str, bool]:
    """``keybroker env``: the text for stdout and whether it worked. It fails
    closed: whatever goes wrong, the text is :func:`refusal`, which stops the
    shell (or ``docker --env-file``) that loads it, never an empty
    environment; the reason goes to stderr."""
    try:
        policy = load_policy(args.config)
        secret = token()
        problem = check_tenant_token(policy, args.tenant, secret)
        if problem:
            raise ValueError(problem)
        from broker.cli.sessions import sandbox_token

        secret = sandbox_token(policy, args, secret)  # a session token, with sessions: (§13)
        files, _ = init_ca(policy.certs_dir)
        host, port = parse_listen(args.listen or policy.listen)
        return render_env(
            proxy_host=host,
            proxy_port=port,
            tenant=args.tenant,
            token=secret,
            bundle=files.bundle,
            fmt=args.format,
            no_proxy=args.no_proxy,
            extra=credential_vars(policy, args.tenant),
        ), True
    except PolicyError as exc:
        why = [*exc.errors, f"{args.config}: {len(exc.errors)} error(s)"]
    except SystemExit as exc:  # from the token: already says "keybroker env: ..."
        why = [str(exc.code)]
    except (CAError, OSError, ValueError) as exc:
        why = [f"keybroker env: {exc}"]
    except Exception as exc:  # anything else still fails closed; its text may hold the token
        why = [f"keybroker env: internal error ({type(exc).__name__})"]
    print(*why, sep="\n", file=sys.stderr)
    return refusal(why[0].removeprefix("keybroker env: "), args.format), False
