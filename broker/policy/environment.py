"""What a policy needs from the broker's environment, and what is missing.

``keybroker check`` runs in the operator's shell: a secret on the ``env``
backend whose variable is unset there, or a backend's ``*_env`` credential
variable that is unset, is a warning (the broker answers 502
``secret_not_found`` / ``backend_unavailable`` until its own environment
has it), not an error."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from pydantic import BaseModel

from broker.policy.schema import Policy


def _env_fields(model: BaseModel, where: str) -> Iterator[tuple[str, str]]:
    """``(field path, variable name)`` for every ``*_env`` string field, nested too."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _env_fields(value, f"{where}.{name}")
        elif name.endswith("_env") and isinstance(value, str) and value:
            yield f"{where}.{name}", value


def missing_variables(policy: Policy, environ: Mapping[str, str]) -> list[str]:
    """One warning per variable the policy reads that ``environ`` lacks."""
    out: list[str] = []
    for bname, backend in policy.backends.items():
        for where, var in _env_fields(backend, f"backends.{bname}"):
            if not environ.get(var):
                out.append(
                    f"{where}: ${var} is not set here (the broker needs it to reach {bname!r})"
                )
    for where, var in _env_fields(policy.audit, "audit"):
        if not environ.get(var):
            out.append(f"{where}: ${var} is not set here")
    env_backends = {n for n, b in policy.backends.items() if getattr(b, "type", "") == "env"}
    for tname, tenant in policy.tenants.items():
        for sname, rule in tenant.secrets.items():
            if rule.backend in env_backends and not environ.get(rule.path):
                out.append(
                    f"tenants.{tname}.secrets.{sname}: ${rule.path} (env backend "
                    f"{rule.backend!r}) is not set here: requests using it get 502 "
                    "secret_not_found until the broker's environment has it"
                )
    return out
