"""The policy file (broker/policy.py, models in broker/schema.py): schema,
defaults, errors naming file, field path and rule, path resolution, YAML
problems, frozen models."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from broker.policy.load import PolicyError, load_policy, parse_policy
from broker.policy.schema import Policy
from broker.request.auth import token_digest

SRC = "policy.yaml"
ACME_DIGEST = hashlib.sha256(b"acme-example-token").hexdigest()
GLOBEX_DIGEST = hashlib.sha256(b"globex-example-token").hexdigest()
DELETE = object()


def base() -> dict[str, Any]:
    return copy.deepcopy(
        {
            "version": 1,
            "audit": {"path": "audit.jsonl"},
            "backends": {
                "vault": {
                    "type": "vault",
                    "url": "http://127.0.0.1:8200",
                    "token_env": "VAULT_TOKEN",
                },
                "local": {"type": "env"},
            },
            "tenants": {
                "acme": {
                    "token_sha256": ACME_DIGEST,
                    "secrets": {
                        "stripe": {
                            "backend": "vault",
                            "path": "acme/stripe",
                            "hosts": ["api.stripe.com"],
                        }
                    },
                },
                "globex": {"token_sha256": GLOBEX_DIGEST, "secrets": {}},
            },
        }
    )


def edited(*edits: tuple[str, Any]) -> dict[str, Any]:
    """``base()`` with ``("a.b.c", value)`` edits applied (DELETE removes)."""
    data = base()
    for dotted, value in edits:
        *parents, last = dotted.split(".")
        node = data
        for key in parents:
            node = node[key]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return data


def errors_of(data: object) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(data, SRC, Path("/policy-dir"))
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


def parse(data: object) -> Policy:
    return parse_policy(data, SRC, Path("/policy-dir"))


RULE = "tenants.acme.secrets.stripe"


def test_base_is_valid_with_documented_defaults() -> None:
    policy = parse(base())
    rule = policy.tenants["acme"].secrets["stripe"]
    assert rule.field == "value"
    assert rule.ports == (443,)
    assert rule.schemes == ("https",)
    assert rule.methods is None
    assert rule.paths is None
    assert rule.locations == ("header:authorization",)
    assert policy.tenants["acme"].on_mismatch == "deny"
    assert policy.tenants["acme"].stream_deltas == "scan"
    assert policy.listen == "127.0.0.1:8080"
    assert policy.certs_dir == Path("/certs")  # "../certs" from /policy-dir
    vault = policy.backends["vault"]
    assert vault.type == "vault"
    assert (vault.mount, vault.kv_version, vault.cache_ttl) == ("secret", 2, 60)
    assert policy.backends["local"].type == "env"


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        pytest.param(ACME_DIGEST, ACME_DIGEST, id="bare-hex"),
        pytest.param("sha256:" + ACME_DIGEST, ACME_DIGEST, id="sha256-prefix"),
        pytest.param("SHA256:" + ACME_DIGEST.upper(), ACME_DIGEST, id="upper-prefix-and-hex"),
        pytest.param(f"  sha256:{ACME_DIGEST} ", ACME_DIGEST, id="surrounding-space"),
    ],
)
def test_token_digest_forms(written: str, stored: str) -> None:
    policy = parse(edited(("tenants.acme.token_sha256", written)))
    assert policy.tenants["acme"].token_sha256 == stored


@pytest.mark.parametrize(
    ("field", "written", "stored"),
    [
        pytest.param("methods", ["get", "Post"], ("GET", "POST"), id="methods-upper-cased"),
        pytest.param(
            "locations",
            ["HEADER:X-Api-Key", "header:Authorization", "query", "path", "body"],
            ("header:x-api-key", "header:authorization", "query", "path", "body"),
            id="header-locations-lower-cased",
        ),
        pytest.param(
            "hosts",
            ["API.Stripe.com.", "*.Bücher.example"],
            ("api.stripe.com", "*.xn--bcher-kva.example"),
            id="hosts-normalised",
        ),
        pytest.param("ports", [443, 8443], (443, 8443), id="ports"),
        pytest.param("schemes", ["http", "https"], ("http", "https"), id="schemes"),
        pytest.param("paths", ["/v1/*", "/bot?/x"], ("/v1/*", "/bot?/x"), id="paths"),
    ],
)
def test_rule_fields_are_normalised(field: str, written: list[Any], stored: tuple[Any]) -> None:
    policy = parse(edited((f"{RULE}.{field}", written)))
    assert getattr(policy.tenants["acme"].secrets["stripe"], field) == stored


def test_vault_approle_is_accepted() -> None:
    policy = parse(
        edited(
            ("backends.vault.token_env", DELETE),
            ("backends.vault.approle", {"role_id_env": "ROLE", "secret_id_env": "SID"}),
        )
    )
    vault = policy.backends["vault"]
    assert vault.type == "vault"
    assert vault.approle is not None
    assert vault.approle.role_id_env == "ROLE"


ERROR_CASES = [
    # unknown keys, at every level
    pytest.param([("colour", 1)], "colour", "unknown key", id="unknown-key-top"),
    pytest.param([("audit.colour", 1)], "audit.colour", "unknown key", id="unknown-key-audit"),
    pytest.param(
        [("backends.vault.colour", 1)], "backends.vault.colour", "unknown key", id="unknown-vault"
    ),
    pytest.param(
        [("backends.local.colour", 1)], "backends.local.colour", "unknown key", id="unknown-env"
    ),
    pytest.param(
        [
            ("backends.vault.token_env", DELETE),
            ("backends.vault.approle", {"role_id_env": "R", "secret_id_env": "S", "colour": 1}),
        ],
        "backends.vault.approle.colour",
        "unknown key",
        id="unknown-key-approle",
    ),
    pytest.param(
        [("tenants.acme.colour", 1)], "tenants.acme.colour", "unknown key", id="unknown-tenant"
    ),
    pytest.param([(f"{RULE}.colour", 1)], f"{RULE}.colour", "unknown key", id="unknown-key-rule"),
    pytest.param([("limits", {"colour": 1})], "limits.colour", "unknown key", id="unknown-limits"),
    # required fields
    pytest.param([("version", DELETE)], "version", "required field is missing", id="no-version"),
    pytest.param([("audit", DELETE)], "audit", "required field is missing", id="no-audit"),
    pytest.param(
        [("tenants.globex.token_sha256", DELETE)],
        "tenants.globex.token_sha256",
        "required field is missing",
        id="tenant-without-token-sha256",
    ),
    pytest.param(
        [(f"{RULE}.backend", DELETE)], f"{RULE}.backend", "required field", id="rule-no-backend"
    ),
    pytest.param([(f"{RULE}.hosts", DELETE)], f"{RULE}.hosts", "required", id="rule-no-hosts"),
    pytest.param([("version", 2)], "version", "1", id="version-2"),
    # hosts
    pytest.param([(f"{RULE}.hosts", ["*"])], f"{RULE}.hosts", "'*' alone", id="host-star-alone"),
    pytest.param([(f"{RULE}.hosts", [""])], f"{RULE}.hosts", "'*' alone", id="host-empty"),
    pytest.param(
        [(f"{RULE}.hosts", ["api.*.com"])], f"{RULE}.hosts", "leading", id="wildcard-not-leading"
    ),
    pytest.param(
        [(f"{RULE}.hosts", ["api*.stripe.com"])], f"{RULE}.hosts", "leading", id="wildcard-in-label"
    ),
    pytest.param([(f"{RULE}.hosts", [])], f"{RULE}.hosts", "at least 1", id="hosts-empty-list"),
    pytest.param(
        [(f"{RULE}.hosts", ["api.stripe.com/v1"])], f"{RULE}.hosts", "'api.stripe.com/v1'", id="h/"
    ),
    pytest.param(
        [(f"{RULE}.hosts", "api.stripe.com")], f"{RULE}.hosts", "tuple", id="hosts-not-a-list"
    ),
    pytest.param(
        [(f"{RULE}.hosts", ["straße.de"])], f"{RULE}.hosts", "xn--", id="host-idna-deviation"
    ),
    # names
    pytest.param(
        [("tenants.acme.secrets", {"bad name": base()["tenants"]["acme"]["secrets"]["stripe"]})],
        "tenants.acme.secrets.bad name",
        "pattern",
        id="secret-name-space",
    ),
    pytest.param(
        [("tenants.acme.secrets", {"a" * 65: base()["tenants"]["acme"]["secrets"]["stripe"]})],
        "tenants.acme.secrets." + "a" * 65,
        "pattern",
        id="secret-name-65-chars",
    ),
    pytest.param(
        [("tenants.acme.secrets", {"a/b": base()["tenants"]["acme"]["secrets"]["stripe"]})],
        "tenants.acme.secrets.a/b",
        "pattern",
        id="secret-name-slash",
    ),
    pytest.param(
        [("tenants.acme.secrets", {"clé": base()["tenants"]["acme"]["secrets"]["stripe"]})],
        "tenants.acme.secrets.clé",
        "pattern",
        id="secret-name-non-ascii",
    ),
    pytest.param(
        [("tenants", {"bad tenant": {"token_sha256": ACME_DIGEST}})],
        "tenants.bad tenant",
        "pattern",
        id="tenant-name-space",
    ),
    # backends
    pytest.param(
        [(f"{RULE}.backend", "nowhere")],
        f"{RULE}.backend",
        "unknown backend 'nowhere' (known: local, vault)",
        id="unknown-backend",
    ),
    pytest.param(
        [("backends.vault.approle", {"role_id_env": "R", "secret_id_env": "S"})],
        "backends.vault",
        "exactly one of token_env or approle",
        id="vault-both-auth",
    ),
    pytest.param(
        [("backends.vault.token_env", DELETE)],
        "backends.vault",
        "exactly one of token_env or approle",
        id="vault-neither-auth",
    ),
    pytest.param(
        [("backends.vault.url", "ftp://vault")], "backends.vault", "http://", id="vault-bad-url"
    ),
    pytest.param([("backends.vault.kv_version", 3)], "backends.vault.kv_version", "1", id="kv-3"),
    pytest.param(
        [("backends.vault.cache_ttl", -1)], "backends.vault.cache_ttl", "greater", id="ttl-neg"
    ),
    pytest.param(
        [("backends.local.type", "consul")], "backends.local", "'consul'", id="backend-type"
    ),
    # digests
    pytest.param(
        [("tenants.acme.token_sha256", ACME_DIGEST[:-1])],
        "tenants.acme.token_sha256",
        "64 hex digits",
        id="digest-63-hex",
    ),
    pytest.param(
        [("tenants.acme.token_sha256", "g" * 64)],
        "tenants.acme.token_sha256",
        "64 hex digits",
        id="digest-not-hex",
    ),
    pytest.param(
        [("tenants.acme.token_sha256", "md5:" + ACME_DIGEST)],
        "tenants.acme.token_sha256",
        "64 hex digits",
        id="digest-other-prefix",
    ),
    pytest.param(
        [("tenants.acme.token_sha256", "acme-example-token")],
        "tenants.acme.token_sha256",
        "64 hex digits",
        id="digest-is-a-plain-token",
    ),
    pytest.param(
        [("tenants.globex.token_sha256", "sha256:" + ACME_DIGEST)],
        "tenants.globex.token_sha256",
        "same as tenant 'acme'",
        id="digest-shared-by-two-tenants",
    ),
    pytest.param(
        [("tenants.acme.on_mismatch", "maybe")],
        "tenants.acme.on_mismatch",
        "'forward'",
        id="on-mismatch",
    ),
    pytest.param(
        [("tenants.acme.stream_deltas", "later")],
        "tenants.acme.stream_deltas",
        "'off'",
        id="stream-deltas",
    ),
    # ports, schemes, methods
    pytest.param([(f"{RULE}.ports", [0])], f"{RULE}.ports", "port 0", id="port-0"),
    pytest.param([(f"{RULE}.ports", [65536])], f"{RULE}.ports", "port 65536", id="port-65536"),
    pytest.param([(f"{RULE}.ports", [-443])], f"{RULE}.ports", "port -443", id="port-negative"),
    pytest.param([(f"{RULE}.ports", ["https"])], f"{RULE}.ports[0]", "integer", id="port-text"),
    pytest.param([(f"{RULE}.schemes", ["ftp"])], f"{RULE}.schemes[0]", "'https'", id="scheme"),
    pytest.param([(f"{RULE}.methods", ["GE T"])], f"{RULE}.methods", "'GE T'", id="method-space"),
    pytest.param([(f"{RULE}.methods", ["GET1"])], f"{RULE}.methods", "'GET1'", id="method-digit"),
    pytest.param([(f"{RULE}.methods", [""])], f"{RULE}.methods", "''", id="method-empty"),
    pytest.param([(f"{RULE}.methods", ["G" * 17])], f"{RULE}.methods", "HTTP", id="method-17"),
    # globs
    pytest.param([(f"{RULE}.paths", ["v1/*"])], f"{RULE}.paths", "start with '/'", id="glob-rel"),
    pytest.param([(f"{RULE}.paths", ["/v1/**"])], f"{RULE}.paths", "single '*'", id="glob-**"),
    pytest.param([(f"{RULE}.paths", ["/v[12]/*"])], f"{RULE}.paths", "[]", id="glob-class"),
    pytest.param([(f"{RULE}.paths", ["/v1/ x"])], f"{RULE}.paths", "whitespace", id="glob-space"),
    pytest.param([(f"{RULE}.paths", [""])], f"{RULE}.paths", "start with '/'", id="glob-empty"),
    # locations
    pytest.param(
        [(f"{RULE}.locations", ["cookie"])], f"{RULE}.locations", "'cookie'", id="location-cookie"
    ),
    pytest.param(
        [(f"{RULE}.locations", ["header:"])], f"{RULE}.locations", "'header:'", id="loc-no-name"
    ),
    pytest.param(
        [(f"{RULE}.locations", ["header:x api"])], f"{RULE}.locations", "x api", id="loc-bad-hdr"
    ),
    pytest.param(
        [(f"{RULE}.locations", ["Query"])], f"{RULE}.locations", "'Query'", id="location-case"
    ),
    pytest.param(
        [(f"{RULE}.locations", ["headers:x"])], f"{RULE}.locations", "headers:x", id="loc-typo"
    ),
    # listen
    pytest.param([("listen", "localhost")], "listen", "HOST:PORT", id="listen-no-port"),
    pytest.param([("listen", ":8080")], "listen", "HOST:PORT", id="listen-no-host"),
    pytest.param([("listen", "127.0.0.1:0")], "listen", "1-65535", id="listen-port-0"),
    pytest.param([("listen", "127.0.0.1:70000")], "listen", "1-65535", id="listen-port-big"),
    pytest.param([("listen", "127.0.0.1:http")], "listen", "HOST:PORT", id="listen-port-name"),
    pytest.param([("listen", "127.0.0.1:²")], "listen", "HOST:PORT", id="listen-superscript"),
    pytest.param([("listen", "127.0.0.1:٨٠")], "listen", "HOST:PORT", id="listen-arabic-digits"),
    # limits (extension)
    pytest.param(
        [("limits", {"max_request_body": 0})], "limits.max_request_body", "greater", id="limit-0"
    ),
]


@pytest.mark.parametrize(("edits", "field", "fragment"), ERROR_CASES)
def test_error_names_file_field_and_rule(
    edits: list[tuple[str, Any]], field: str, fragment: str
) -> None:
    errors = errors_of(edited(*edits))
    hits = [e for e in errors if e.startswith(f"{SRC}: {field}") and fragment in e]
    assert len(hits) == 1, errors
    assert len(errors) == 1, errors  # nothing else in base() is wrong


def test_several_errors_are_all_listed() -> None:
    data = edited(
        ("colour", 1),
        ("listen", "nope"),
        ("backends.vault.token_env", DELETE),
        ("tenants.globex.token_sha256", DELETE),
        (f"{RULE}.hosts", ["*"]),
        (f"{RULE}.backend", "nowhere"),
        (f"{RULE}.locations", ["cookie"]),
    )
    errors = errors_of(data)
    expected = [
        "colour",
        "listen",
        "backends.vault",
        "tenants.globex.token_sha256",
        f"{RULE}.hosts",
        f"{RULE}.backend",
        f"{RULE}.locations",
    ]
    for field in expected:
        assert any(e.startswith(f"{SRC}: {field}: ") for e in errors), (field, errors)
    assert len(errors) == len(expected), errors


@pytest.mark.parametrize(
    ("field", "values", "fragments"),
    [
        pytest.param("ports", [0, 443, 70000], ["port 0", "port 70000"], id="ports"),
        pytest.param("hosts", ["*", "a.*.com"], ["'*'", "'a.*.com'"], id="hosts"),
        pytest.param("methods", ["G T", "P1"], ["'G T'", "'P1'"], id="methods"),
        pytest.param("paths", ["v1", "/a/**"], ["'v1'", "'/a/**'"], id="paths"),
        pytest.param("locations", ["cookie", "Body"], ["'cookie'", "'Body'"], id="locations"),
    ],
)
def test_every_bad_item_of_a_list_is_named(
    field: str, values: list[Any], fragments: list[str]
) -> None:
    errors = errors_of(edited((f"{RULE}.{field}", values)))
    assert len(errors) == 1, errors
    for fragment in fragments:
        assert fragment in errors[0]


def test_vault_bad_url_and_auth_both_reported() -> None:
    errors = errors_of(edited(("backends.vault.token_env", DELETE), ("backends.vault.url", "x")))
    assert len(errors) == 1
    assert "exactly one of token_env or approle" in errors[0]
    assert "http://" in errors[0]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(None, id="empty-document"),
        pytest.param([1, 2], id="list"),
        pytest.param("version: 1", id="string"),
    ],
)
def test_top_level_must_be_a_mapping(data: object) -> None:
    assert errors_of(data) == [f"{SRC}: (top level): must be a mapping"]


# --- files ---------------------------------------------------------------------------------------


def write(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_relative_paths_resolve_against_the_policy_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = edited(
        ("certs_dir", "../certs"),
        ("upstream_ca", "cas/upstream.pem"),
        ("audit.path", "audit/decisions.jsonl"),
        ("backends.vault.ca_cert", "vault-ca.pem"),
    )
    write(tmp_path / "conf" / "policy.yaml", data)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    policy = load_policy("../conf/policy.yaml")
    conf = (tmp_path / "conf").resolve()
    assert policy.certs_dir == tmp_path.resolve() / "certs"
    assert policy.upstream_ca == conf / "cas" / "upstream.pem"
    assert policy.audit.path == conf / "audit" / "decisions.jsonl"
    vault = policy.backends["vault"]
    assert vault.type == "vault"
    assert vault.ca_cert == conf / "vault-ca.pem"


def test_default_certs_dir_is_relative_to_the_policy_file(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path / "conf" / "policy.yaml", base()))
    assert policy.certs_dir == tmp_path.resolve() / "certs"
    assert policy.upstream_ca is None


def test_absolute_and_home_paths_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    data = edited(("certs_dir", str(tmp_path / "abs-certs")), ("audit.path", "~/audit.jsonl"))
    policy = load_policy(write(tmp_path / "conf" / "policy.yaml", data))
    assert policy.certs_dir == tmp_path / "abs-certs"
    assert policy.audit.path == tmp_path / "home" / "audit.jsonl"


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "version: 1\naudit:\n  path: a.jsonl\ntenants:\n  acme: {token_sha256: [x\n",
        encoding="utf-8",
    )
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    [error] = info.value.errors
    assert error.startswith(f"{path}: line 6")
    assert "not valid YAML" in error


def test_yaml_tab_indent_error_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\naudit:\n\tpath: a.jsonl\n", encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    [error] = info.value.errors
    assert error.startswith(f"{path}: line 3")


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        pytest.param(
            f"""version: 1
audit: {{path: a.jsonl}}
tenants:
  acme: {{token_sha256: {ACME_DIGEST}}}
  globex: {{token_sha256: {GLOBEX_DIGEST}}}
  acme: {{token_sha256: {GLOBEX_DIGEST[::-1]}}}
""",
            6,
            "acme",
            id="tenant-block-twice",
        ),
        pytest.param(
            "version: 1\naudit:\n  path: a.jsonl\n  path: b.jsonl\n",
            4,
            "path",
            id="field-twice",
        ),
    ],
)
def test_duplicate_yaml_key_is_an_error(tmp_path: Path, text: str, line: int, key: str) -> None:
    # PyYAML keeps the last of two equal keys: a second "acme:" block would
    # silently replace the first tenant, token included.
    path = tmp_path / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    [error] = info.value.errors
    assert error.startswith(f"{path}: line {line},")
    assert f"duplicate key {key!r}" in error


def test_yaml_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    text = f"""
version: 1
audit: {{path: a.jsonl}}
backends: {{local: {{type: env}}}}
x-rule: &rule {{backend: local, path: X, hosts: [api.example.com], ports: [443]}}
tenants:
  acme:
    token_sha256: {ACME_DIGEST}
    secrets:
      one: {{<<: *rule, ports: [8443]}}
"""
    path = tmp_path / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PolicyError) as info:  # "x-rule" is not a policy key ...
        load_policy(path)
    assert info.value.errors == [f"{path}: x-rule: unknown key (not in the policy schema)"]
    data = yaml.safe_load(text)
    del data["x-rule"]
    assert parse(data).tenants["acme"].secrets["one"].ports == (8443,)  # ... merges work


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    [error] = info.value.errors
    assert error.startswith(f"{path}: no such file")
    path.mkdir()
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.errors[0].startswith(f"{path}: cannot read")


def test_errors_from_a_file_name_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", edited(("listen", "nope")))
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.errors[0].startswith(f"{path}: listen: ")


# --- frozen models --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "attr", "value"),
    [
        pytest.param(lambda p: p, "version", 2, id="policy"),
        pytest.param(lambda p: p, "listen", "0.0.0.0:1", id="policy-listen"),
        pytest.param(lambda p: p.audit, "path", Path("/tmp/x"), id="audit"),
        pytest.param(lambda p: p.tenants["acme"], "token_sha256", "0" * 64, id="tenant"),
        pytest.param(lambda p: p.tenants["acme"], "on_mismatch", "forward", id="tenant-mismatch"),
        pytest.param(lambda p: p.tenants["acme"].secrets["stripe"], "hosts", ("*",), id="rule"),
        pytest.param(lambda p: p.backends["vault"], "url", "http://evil", id="backend"),
    ],
)
def test_models_are_frozen(target: Any, attr: str, value: object) -> None:
    obj = target(parse(base()))
    before = getattr(obj, attr)
    with pytest.raises(ValidationError):
        setattr(obj, attr, value)
    assert getattr(obj, attr) == before


# --- helpers --------------------------------------------------------------------------------------


def test_token_digest_is_hex_sha256() -> None:
    # The example digest in DESIGN.md §3 is the SHA-256 of "test".
    assert token_digest("test") == (
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    )


def test_token_digests_are_stored_bare() -> None:
    """Both spellings (``sha256:`` prefixed or not) load as bare hex."""
    tenants = parse(base()).tenants
    assert (tenants["acme"].token_sha256, tenants["globex"].token_sha256) == (
        ACME_DIGEST,
        GLOBEX_DIGEST,
    )
