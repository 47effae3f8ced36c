"""The REST backends on their own, against the local HTTPS servers that follow
each vendor's published API (tests/support/vendor_apis.py names each
document): what the end-to-end table cannot reach cheaply — Infisical's
token renewal and re-login, 1Password's lookups by name and id and its
refusal to guess, answers that are too large or not JSON, and messages that
never hold a value, a credential or a response body."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from broker.backends.base import BackendError, SecretNotFound
from broker.backends.doppler import Doppler
from broker.backends.infisical import Infisical
from broker.backends.onepassword import OnePasswordConnect
from broker.backends.rest import MAX_BODY
from broker.policy.backend_config import DopplerBackend, InfisicalBackend, OnePasswordConnectBackend
from broker.secret import SecretValue
from tests.support.tlsca import TestCA
from tests.support.vendor_apis import (
    DopplerApp,
    InfisicalApp,
    OnePasswordConnectApp,
    Reply,
    VendorServer,
)

pytestmark = pytest.mark.integration

VALUE = "sk_live_rest_" + secrets.token_hex(8)  # fake; never in a message
TOKEN = "tok_" + secrets.token_hex(12)


def assert_clean(exc: BaseException, *also: str) -> None:
    msg = str(exc)
    for leak in (VALUE, TOKEN, *also):
        assert leak not in msg
    assert exc.__context__ is None and exc.__cause__ is None


_OPEN: list[Any] = []


@pytest.fixture(autouse=True)
def _close_backends() -> Iterator[None]:
    """Close what a test built even when it fails (no unclosed sockets)."""
    yield
    while _OPEN:
        _OPEN.pop().close()


def opened(backend: Any) -> Any:
    _OPEN.append(backend)
    return backend


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def inf(test_ca: TestCA) -> Iterator[tuple[InfisicalApp, VendorServer]]:
    app = InfisicalApp(expires_in=600)
    app.identities["id-1"] = TOKEN
    with VendorServer(app, test_ca) as srv:
        yield app, srv


def infisical(srv: VendorServer, ca: TestCA, clock: Clock, secret: str = TOKEN) -> Infisical:
    cfg = InfisicalBackend(
        type="infisical", url=srv.url, ca_cert=ca.ca_path,  # type: ignore[arg-type]
        client_id_env="I", client_secret_env="S",
    )  # fmt: skip
    return opened(Infisical("inf", cfg, {"I": "id-1", "S": secret}, clock=clock))


def test_infisical_logs_in_once_then_renews_before_expiry(
    inf: tuple[InfisicalApp, VendorServer], test_ca: TestCA
) -> None:
    app, srv = inf
    app.put("p1/prod", "K", VALUE)
    clock = Clock()
    b = infisical(srv, test_ca, clock)
    before = app.logins
    assert b.read("p1/prod", "K") == SecretValue(VALUE)
    assert b.read("p1/prod", "K").version == "1"
    assert app.logins == before + 1  # the token is reused
    clock.now += 600 - 29  # inside the 30 s margin before the 600 s lifetime ends
    b.read("p1/prod", "K")
    assert app.logins == before + 2


def test_infisical_revoked_token_logs_in_again_and_retries_once(
    inf: tuple[InfisicalApp, VendorServer], test_ca: TestCA
) -> None:
    app, srv = inf
    app.put("p1/prod/deep/folder", "K", VALUE)
    b = infisical(srv, test_ca, Clock())
    b.read("p1/prod/deep/folder", "K")
    app.revoke_all()
    before = app.logins
    assert b.read("p1/prod/deep/folder", "K") == SecretValue(VALUE)
    assert app.logins == before + 1


def test_infisical_wrong_client_secret_names_the_variables(
    inf: tuple[InfisicalApp, VendorServer], test_ca: TestCA
) -> None:
    _, srv = inf
    wrong = secrets.token_hex(12)
    b = infisical(srv, test_ca, Clock(), secret=wrong)
    with pytest.raises(BackendError, match=r"login refused \(HTTP 401; check I/S\)") as info:
        b.read("p1/prod", "K")
    assert type(info.value) is BackendError
    assert_clean(info.value, wrong)


@pytest.fixture(scope="module")
def op(test_ca: TestCA) -> Iterator[tuple[OnePasswordConnectApp, OnePasswordConnect]]:
    app = OnePasswordConnectApp()
    app.tokens[TOKEN] = {"Private", "Dup"}
    with VendorServer(app, test_ca) as srv:
        cfg = OnePasswordConnectBackend(
            type="onepassword_connect", url=srv.url, ca_cert=test_ca.ca_path,  # type: ignore[arg-type]
            token_env="T",
        )  # fmt: skip
        backend = OnePasswordConnect("op", cfg, {"T": TOKEN})
        yield app, backend
        backend.close()


def test_onepassword_by_name_by_id_and_label(
    op: tuple[OnePasswordConnectApp, OnePasswordConnect],
) -> None:
    app, b = op
    app.put('Private/Stripe "live"/eu', "credential", VALUE)
    assert b.read('Private/Stripe "live"/eu', "credential") == SecretValue(VALUE)
    vault = next(v for v in app.vaults.values() if v["name"] == "Private")
    item = next(i for i in vault["items"].values() if i["title"] == 'Stripe "live"/eu')
    field_id = item["fields"][0]["id"]
    got = b.read(f"{vault['id']}/{item['id']}", field_id)  # ids work too
    assert got == SecretValue(VALUE) and got.version == "1"


def test_onepassword_section_dot_label_picks_among_same_labels(
    op: tuple[OnePasswordConnectApp, OnePasswordConnect],
) -> None:
    app, b = op
    app.put("Private/Two envs", "key", VALUE, section="prod")
    app.put("Private/Two envs", "key", "sk_test_other", section="staging")
    with pytest.raises(SecretNotFound, match="2 fields labelled 'key'"):
        b.read("Private/Two envs", "key")
    assert b.read("Private/Two envs", "prod.key") == SecretValue(VALUE)
    assert b.read("Private/Two envs", "staging.key") == SecretValue("sk_test_other")


@pytest.mark.parametrize(
    ("path", "field", "setup", "error", "message"),
    [
        ("Nope/Item", "credential", None, SecretNotFound, "no vault 'Nope'"),
        ("Private/Nope", "credential", None, SecretNotFound, "no item 'Nope'"),
        ("Private/Stripe", "nope", "one", SecretNotFound, "no field labelled 'nope'"),
        ("Dup/Twice", "credential", "twice", SecretNotFound, "2 of item 'Twice'; use its id"),
        ("Private/Two", "pw", "twofields", SecretNotFound, "2 fields labelled 'pw'"),
        (
            "Other/Item",
            "credential",
            "other",
            BackendError,
            r"refused the credential in T \(HTTP 403\)",
        ),
    ],
)
def test_onepassword_refuses_to_guess(
    op: tuple[OnePasswordConnectApp, OnePasswordConnect],
    path: str, field: str, setup: str | None, error: type[Exception], message: str,
) -> None:  # fmt: skip
    app, b = op
    if setup == "one":
        app.put("Private/Stripe", "credential", VALUE)
    if setup == "twice":
        app.put("Dup/Twice", "credential", VALUE)
        vault = next(v for v in app.vaults.values() if v["name"] == "Dup")
        first = next(iter(vault["items"].values()))
        vault["items"]["b" * 26] = {**first, "id": "b" * 26}
    if setup == "twofields":
        app.put("Private/Two", "pw", VALUE)
        item = next(
            i for v in app.vaults.values() for i in v["items"].values() if i["title"] == "Two"
        )
        item["fields"].append({**item["fields"][0], "id": "c" * 26})
    if setup == "other":
        app.put("Other/Item", "credential", VALUE)
    with pytest.raises(error, match=message) as info:
        b.read(path, field)
    assert type(info.value) is error
    assert_clean(info.value)


class Weird:
    """Follows no API: answers too large, not JSON, or redirects."""

    def __init__(self) -> None:
        self.mode = "large"

    def handle(self, method: str, path: str, query: Any, headers: Any, body: Any) -> Reply:
        if self.mode == "large":
            return 200, {"value": {"computed": VALUE}, "pad": "x" * (MAX_BODY + 10)}
        if self.mode == "text":
            return 200, f"<html>{VALUE}</html>".encode()
        return 302, {"location": "https://elsewhere.example/"}


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("large", f"answer larger than {MAX_BODY} bytes"),
        ("text", r"malformed answer \(no value object\)"),
        ("redirect", "answered HTTP 302"),
    ],
)
def test_confused_servers_are_backend_errors_without_their_body(
    test_ca: TestCA, mode: str, message: str
) -> None:
    app = Weird()
    app.mode = mode
    with VendorServer(app, test_ca) as srv:
        cfg = DopplerBackend(type="doppler", url=srv.url, ca_cert=test_ca.ca_path, token_env="T")  # type: ignore[arg-type]
        b = opened(Doppler("dp", cfg, {"T": TOKEN}))
        with pytest.raises(BackendError, match=message) as info:
            b.read("web/prd", "K")
        assert type(info.value) is BackendError
        assert_clean(info.value)
        assert srv.requests == [("GET", "/v3/configs/config/secret")]  # no redirect followed


def test_doppler_accepts_its_documented_shape(test_ca: TestCA) -> None:
    app = DopplerApp()
    app.tokens[TOKEN] = ("web", "prd")
    app.put("web/prd", "K", VALUE)
    with VendorServer(app, test_ca) as srv:
        cfg = DopplerBackend(type="doppler", url=srv.url, ca_cert=test_ca.ca_path, token_env="T")  # type: ignore[arg-type]
        b = opened(Doppler("dp", cfg, {"T": TOKEN}))
        assert b.read("web/prd", "K") == SecretValue(VALUE)
        with pytest.raises(BackendError, match=r"HTTP 403") as info:
            b.read("web/dev", "K")  # a service token reads its own config only
        assert_clean(info.value)
