"""``keybroker doctor``'s backend check (DESIGN.md §14): does each configured
backend answer, with this environment's credentials?

A backend is probed by reading one secret rule that uses it (the tenant's
own first, else any tenant's), through the same code the broker runs, so a
wrong path, a refused credential, an untrusted certificate or a store that
is down all show here with the broker's own message. The value read is
dropped at once and never printed. Probes run in parallel, each bounded by
its backend's timeout.

Doctor may run in a sandbox that rightly lacks the stores' credentials: a
backend whose credential variables (for ``env``: the variable itself) are
unset here, whose CLI is not on this ``PATH`` or (AWS) whose credential chain
is empty here is reported as not checked (a warning), not as failing.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from broker.backends.base import BackendError
from broker.backends.registry import build_backend, unset_credentials
from broker.cli.exposure import Advice
from broker.policy.backend_config import (
    AwsSecretsManagerBackend,
    BackendConfigs,
    EnvBackend,
    ExecBackend,
)
from broker.policy.schema import Policy
from broker.policy.secret_rule import SecretRule

WHERE_BROKER_RUNS = "run `keybroker doctor` in the broker's environment to check it"


def backend_advice(policy: Policy, tenant: str, env: Mapping[str, str]) -> list[Advice]:
    """One line per configured backend, in policy order."""
    names = list(policy.backends)
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(names)))) as pool:
        futures = [pool.submit(_probe, n, policy, tenant, env) for n in names]
        return [f.result() for f in futures]


def _probe(name: str, policy: Policy, tenant: str, env: Mapping[str, str]) -> Advice:
    cfg = policy.backends[name]
    label = f"backend {name!r} ({cfg.type})"
    found = _a_rule(policy, name, tenant)
    if found is None:
        return Advice("warn", f"{label}: no secret uses it, not checked")
    owner, secret, rule = found
    missing = _not_here(cfg, rule, env)
    if missing:
        return Advice("warn", f"{label}: not checked here ({missing})", WHERE_BROKER_RUNS)
    backend = build_backend(name, cfg, env)
    try:
        backend.read(rule.path, rule.field)  # the value is dropped unseen
    except BackendError as exc:
        return Advice(
            "fail",
            f"{label}: secret {secret!r} of tenant {owner!r} gives {exc.reason}: {exc}",
            _fix(exc.reason),
        )
    except Exception as exc:  # a backend breaking its contract: still a failure
        return Advice("fail", f"{label}: unexpected {type(exc).__name__}")
    finally:
        backend.close()
    return Advice("ok", f"{label} answers: secret {secret!r} of tenant {owner!r} resolves")


def _a_rule(policy: Policy, backend: str, tenant: str) -> tuple[str, str, SecretRule] | None:
    owners = [tenant, *(t for t in policy.tenants if t != tenant)]
    for owner in owners:
        t = policy.tenants.get(owner)
        for secret, rule in t.secrets.items() if t else ():
            if rule.backend == backend:
                return owner, secret, rule
    return None


def _not_here(cfg: BackendConfigs, rule: SecretRule, env: Mapping[str, str]) -> str | None:
    """Why this environment cannot speak for the broker's, or None."""
    unset = unset_credentials(cfg, env)
    if isinstance(cfg, EnvBackend) and not env.get(rule.path):
        unset = [rule.path]  # the value itself lives in the broker's environment
    if unset:
        return f"{', '.join(unset)} not set"
    if isinstance(cfg, ExecBackend) and shutil.which(cfg.command[0]) is None:
        return f"{cfg.command[0]} is not on this PATH"
    if isinstance(cfg, AwsSecretsManagerBackend) and not _aws_credentials(cfg):
        return "no AWS credentials in this environment's chain"
    return None


def _aws_credentials(cfg: AwsSecretsManagerBackend) -> bool:
    import boto3  # only when an AWS backend is configured

    try:
        return boto3.session.Session(profile_name=cfg.profile).get_credentials() is not None
    except Exception:
        return False


def _fix(reason: str) -> str:
    if reason == "secret_not_found":
        return "the store answered but has no value there: check the rule's path and field"
    return "check the backend's url, credentials and ca_cert, and that the store is up"
