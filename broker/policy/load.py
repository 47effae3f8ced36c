"""The policy file (DESIGN.md §3): loading YAML into the frozen models of
:mod:`broker.policy.schema`, with every error naming the file, the field path and
the rule broken."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from broker.policy.backend_config import BACKEND_TYPES, rule_problem
from broker.policy.schema import Policy


class PolicyError(Exception):
    """Every problem found in a policy file, each naming file, field and rule."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in BACKEND_TYPES and out.startswith("backends."):
            continue  # the discriminator tag pydantic adds
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _check_references(data: dict[str, Any]) -> list[tuple[str, str]]:
    """Cross-field rules, checked on the raw data so they are reported
    together with every other error."""
    errs: list[tuple[str, str]] = []
    backends = data.get("backends")
    names = set(backends) if isinstance(backends, dict) else set()
    tenants = data.get("tenants")
    if not isinstance(tenants, dict):
        return errs
    seen: dict[str, str] = {}
    for tname, tenant in tenants.items():
        if not isinstance(tenant, dict):
            continue
        digest = str(tenant.get("token_sha256", "")).strip().lower().removeprefix("sha256:")
        if digest and digest in seen:
            errs.append(
                (f"tenants.{tname}.token_sha256", f"is the same as tenant {seen[digest]!r}'s")
            )
        seen.setdefault(digest, str(tname))
        secrets = tenant.get("secrets")
        if not isinstance(secrets, dict):
            continue
        for sname, rule in secrets.items():
            if isinstance(rule, dict) and "backend" in rule and rule["backend"] not in names:
                known = ", ".join(sorted(map(str, names))) or "none defined"
                errs.append(
                    (
                        f"tenants.{tname}.secrets.{sname}.backend",
                        f"names unknown backend {rule['backend']!r} (known: {known})",
                    )
                )
            elif isinstance(rule, dict) and isinstance(backends, dict):
                cfg = backends.get(rule.get("backend"))
                kind = cfg.get("type") if isinstance(cfg, dict) else None
                if problem := rule_problem(kind, rule.get("path")):
                    errs.append((f"tenants.{tname}.secrets.{sname}.path", problem))
                if kind == "env" and rule.get("kind", "static") != "static":
                    # An env backend ignores `field`: every field would read one value.
                    errs.append(
                        (
                            f"tenants.{tname}.secrets.{sname}.backend",
                            f"kind {rule.get('kind')} reads several fields; an env backend holds one value",
                        )
                    )
    return errs


def _resolve_paths(policy: Policy, base: Path) -> Policy:
    def rel(p: Path | None) -> Path | None:
        if p is None:
            return None
        p = p.expanduser()
        return p if p.is_absolute() else (base / p).resolve()

    backends = {
        k: (b.model_copy(update={"ca_cert": rel(b.ca_cert)}) if hasattr(b, "ca_cert") else b)
        for k, b in policy.backends.items()
    }
    return policy.model_copy(
        update={
            "certs_dir": rel(policy.certs_dir),
            "upstream_ca": rel(policy.upstream_ca),
            "audit": policy.audit.model_copy(update={"path": rel(policy.audit.path)}),
            "backends": backends,
        }
    )


def parse_policy(data: object, source: str, base: Path) -> Policy:
    """Validate already-loaded data. Raises PolicyError listing every problem."""
    if not isinstance(data, dict):
        raise PolicyError([f"{source}: (top level): must be a mapping"])
    errors = [f"{source}: {loc}: {msg}" for loc, msg in _check_references(data)]
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        for e in exc.errors():
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                msg = "unknown key (not in the policy schema)"
            elif e["type"] == "missing":
                msg = "required field is missing"
            errors.append(f"{source}: {_loc(tuple(e['loc']))}: {msg}")
    if errors:
        raise PolicyError(errors)
    return _resolve_paths(policy, base)


# libyaml's parser when PyYAML was built with it: ~20x faster than the pure
# Python one (a policy of 10,000 rules took 20 s to load without it).
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_SafeLoader):  # type: ignore[valid-type,misc]
    """A SafeLoader that refuses duplicate mapping keys: PyYAML silently keeps
    the last one, so a second ``acme:`` block would replace the first."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # "<<: *anchor" entries may be overridden by explicit keys
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # an unhashable key; construct_mapping reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
    mapping: dict[Any, Any] = loader.construct_mapping(node, deep=True)
    return mapping


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_policy(path: str | Path) -> Policy:
    """Load and validate a policy file; relative paths resolve against its folder."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError([f"{p}: no such file{_example_hint(p)}"]) from None
    except OSError as exc:
        raise PolicyError([f"{p}: cannot read: {exc.strerror or exc}"]) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise PolicyError(
            [f"{p}: {where}: not valid YAML: {getattr(exc, 'problem', exc)}"]
        ) from None
    return parse_policy(data, str(p), p.resolve().parent)


def _example_hint(p: Path) -> str:
    """A missing policy next to the example: say how to start from it."""
    example = p.parent / "policy.example.yaml"
    if example.is_file() and example != p:
        return f"; start from the example: cp {example} {p}"
    return "; see config/policy.example.yaml for a complete, commented example"
