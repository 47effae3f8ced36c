"""The vault backend against a real OpenBao dev server, and against fake
servers that hang, hang up or answer nonsense."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from broker.backends.base import BackendError, SecretNotFound
from broker.backends.resolver import Resolver
from broker.backends.vault import VaultKVBackend
from broker.policy.backend_config import VaultBackend
from broker.policy.secret_rule import SecretRule
from broker.secret import SecretValue
from tests.support.openbao import OpenBao

pytestmark = pytest.mark.integration

VALUE = "sk_live_vault_0123456789abcdef"  # fake secret; must never show up in messages
SENTINEL = "SENTINEL-in-the-response-body"
TOKEN_ENV = "KB_TEST_VAULT_TOKEN"
Make = Callable[..., VaultKVBackend]


def unique(prefix: str) -> str:
    return f"kb-tests/{prefix}-{uuid.uuid4().hex[:8]}"


def assert_clean(exc: BaseException) -> None:
    """Names the backend, holds no value/body, chains nothing."""
    msg = str(exc)
    assert "'vault'" in msg
    assert VALUE not in msg and SENTINEL not in msg
    assert exc.__context__ is None and exc.__cause__ is None


@pytest.fixture
def make(openbao: OpenBao) -> Iterator[Make]:
    """Build backends (root token by default) and close them afterwards."""
    made: list[VaultKVBackend] = []

    def build(
        env: dict[str, str] | None = None, clock: Callable[[], float] = time.monotonic, **cfg: Any
    ) -> VaultKVBackend:
        fields: dict[str, Any] = {"type": "vault", "url": openbao.url}
        if "approle" not in cfg:
            fields["token_env"] = TOKEN_ENV
        fields.update(cfg)
        b = VaultKVBackend(
            "vault",
            VaultBackend.model_validate(fields),
            {TOKEN_ENV: openbao.root_token} if env is None else env,
            clock=clock,
        )
        made.append(b)
        return b

    yield build
    for b in made:
        b.close()


def test_kv2_read_returns_value_and_version(openbao: OpenBao, make: Make) -> None:
    path = unique("kv2")
    openbao.put_v2(path, {"api_key": VALUE})
    backend = make()
    got = backend.read(path, "api_key")
    assert got == SecretValue(VALUE) and got.version == "1"
    openbao.put_v2(path, {"api_key": "rotated"})
    got = backend.read(path, "api_key")
    assert got == SecretValue("rotated") and got.version == "2"


def test_kv1_read_has_no_version(openbao: OpenBao, make: Make) -> None:
    openbao.enable_kv_v1("kb-kv1")
    path = unique("kv1")
    openbao.put_v1("kb-kv1", path, {"value": VALUE})
    got = make(mount="kb-kv1", kv_version=1).read(path, "value")
    assert got == SecretValue(VALUE) and got.version is None


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        pytest.param(None, "api_key", "no secret at this path", id="missing-path"),
        pytest.param({"other": VALUE}, "api_key", "no field 'api_key'", id="missing-field"),
        pytest.param({"n": 12345}, "n", "field 'n' is not a string", id="number"),
        pytest.param({"o": {"k": VALUE}}, "o", "field 'o' is not a string", id="object"),
        pytest.param({"e": ""}, "e", "field 'e' is empty", id="empty"),
    ],
)
def test_not_found(openbao: OpenBao, make: Make, data: Any, field: str, message: str) -> None:
    path = unique("nf")
    if data is not None:
        openbao.put_v2(path, data)
    with pytest.raises(SecretNotFound, match=message) as info:
        make().read(path, field)
    assert path in str(info.value)
    assert_clean(info.value)


def test_deleted_latest_version_is_not_found(openbao: OpenBao, make: Make) -> None:
    path = unique("deleted")
    openbao.put_v2(path, {"value": VALUE})
    openbao.client().secrets.kv.v2.delete_latest_version_of_secret(path=path)
    with pytest.raises(SecretNotFound):
        make().read(path, "value")


def test_token_without_access_is_backend_error(openbao: OpenBao, make: Make) -> None:
    path = unique("denied")
    openbao.put_v2(path, {"value": VALUE})
    weak = openbao.client().auth.token.create(policies=["default"], ttl="10m")
    backend = make(env={TOKEN_ENV: weak["auth"]["client_token"]})
    with pytest.raises(BackendError, match=f"permission denied.*{TOKEN_ENV}") as info:
        backend.read(path, "value")
    assert type(info.value) is BackendError
    assert_clean(info.value)


def test_missing_token_env_fails_the_read_naming_the_variable(make: Make) -> None:
    with pytest.raises(BackendError, match=f"{TOKEN_ENV} .*not set") as info:
        make(env={}).read("any", "value")
    assert type(info.value) is BackendError


APPROLE = {"role_id_env": "KB_ROLE_ID", "secret_id_env": "KB_SECRET_ID"}


class RedactedEnv(dict[str, str]):
    """Credentials for a backend; pytest shows fixtures in failures, so keep them out."""

    def __repr__(self) -> str:
        return f"RedactedEnv({sorted(self)})"


@pytest.fixture
def approle_env(openbao: OpenBao) -> dict[str, str]:
    role_id, secret_id = openbao.enable_approle(
        "kb-reader", 'path "secret/data/kb-tests/approle-*" { capabilities = ["read"] }'
    )
    return RedactedEnv(KB_ROLE_ID=role_id, KB_SECRET_ID=secret_id)


def accessors(openbao: OpenBao) -> set[str]:
    return set(openbao.client().auth.token.list_accessors()["data"]["keys"])


def test_approle_logs_in_lazily_and_again_after_revocation(
    openbao: OpenBao, make: Make, approle_env: dict[str, str]
) -> None:
    path = unique("approle")
    openbao.put_v2(path, {"password": VALUE})
    start = accessors(openbao)
    backend = make(env=approle_env, approle=APPROLE)
    assert accessors(openbao) == start  # lazy: no login yet
    assert backend.read(path, "password") == SecretValue(VALUE)
    assert len(accessors(openbao) - start) == 1
    openbao.client().sys.revoke_prefix("auth/approle/login")
    after_revoke = accessors(openbao)
    assert backend.read(path, "password") == SecretValue(VALUE)
    assert len(accessors(openbao) - after_revoke) == 1  # exactly one fresh login


def test_approle_denied_path_logs_in_once_more_then_fails(
    openbao: OpenBao, make: Make, approle_env: dict[str, str]
) -> None:
    path = unique("outside")  # not covered by the role's policy
    openbao.put_v2(path, {"value": VALUE})
    backend = make(env=approle_env, approle=APPROLE)
    before = accessors(openbao)
    with pytest.raises(BackendError, match="even after a fresh AppRole login") as info:
        backend.read(path, "value")
    assert len(accessors(openbao) - before) == 2  # lazy login + one re-login
    assert_clean(info.value)


def test_approle_relogs_in_before_the_lease_ends(
    openbao: OpenBao, make: Make, approle_env: dict[str, str]
) -> None:
    now = [0.0]
    path = unique("approle-lease")
    openbao.put_v2(path, {"value": VALUE})
    backend = make(env=approle_env, approle=APPROLE, clock=lambda: now[0])
    before = accessors(openbao)
    backend.read(path, "value")
    backend.read(path, "value")
    assert len(accessors(openbao) - before) == 1
    now[0] += 32 * 24 * 3600  # the dev default token TTL (768 h) has passed
    backend.read(path, "value")
    assert len(accessors(openbao) - before) == 2


@pytest.mark.parametrize(
    ("env", "match"),
    [
        pytest.param(
            {"KB_ROLE_ID": "nope", "KB_SECRET_ID": "nope"}, "login .* refused", id="wrong-ids"
        ),
        pytest.param({}, "KB_ROLE_ID and KB_SECRET_ID", id="unset"),
    ],
)
def test_approle_bad_credentials(
    make: Make, approle_env: dict[str, str], env: dict[str, str], match: str
) -> None:
    with pytest.raises(BackendError, match=match) as info:
        make(env=env, approle=APPROLE).read(unique("approle-x"), "value")
    assert type(info.value) is BackendError


def test_namespace(openbao: OpenBao, make: Make) -> None:
    openbao.create_namespace("kbns")
    path = unique("ns")
    openbao.put_v2(path, {"value": VALUE}, namespace="kbns")
    assert make(namespace="kbns").read(path, "value") == SecretValue(VALUE)
    with pytest.raises(SecretNotFound):
        make().read(path, "value")


def test_rotation_is_picked_up_after_cache_ttl(openbao: OpenBao, make: Make) -> None:
    path = unique("rotate")
    openbao.put_v2(path, {"value": "first-value"})
    resolver = Resolver({"vault": make()}, {"vault": 0.5})
    rule = SecretRule(backend="vault", path=path, field="value", hosts=("api.example.com",))
    assert resolver.resolve("t", "s", rule) == SecretValue("first-value")
    openbao.put_v2(path, {"value": "second-value"})
    assert resolver.resolve("t", "s", rule) == SecretValue("first-value")  # cached
    deadline = time.monotonic() + 5
    while resolver.resolve("t", "s", rule) != SecretValue("second-value"):
        assert time.monotonic() < deadline, "rotation not picked up"
        time.sleep(0.1)
    assert resolver.resolve("t", "s", rule).version == "2"


def test_concurrent_reads_from_many_threads(openbao: OpenBao, make: Make) -> None:
    path = unique("threads")
    openbao.put_v2(path, {"value": VALUE})
    backend = make()
    results: list[bool] = []
    threads = [
        threading.Thread(
            target=lambda: results.extend(
                backend.read(path, "value") == SecretValue(VALUE) for _ in range(5)
            )
        )
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [True] * 40


def test_closed_backend_refuses_reads(make: Make) -> None:
    backend = make()
    backend.close()
    with pytest.raises(BackendError, match="closed"):
        backend.read("any", "value")


def test_tls_with_and_without_ca_cert(make: Make) -> None:
    with OpenBao(tls=True) as bao:
        path = unique("tls")
        bao.put_v2(path, {"value": VALUE})
        env = {TOKEN_ENV: bao.root_token}
        assert make(env=env, url=bao.url, ca_cert=bao.ca_cert).read(path, "value") == SecretValue(
            VALUE
        )
        with pytest.raises(BackendError, match="TLS") as info:
            make(env=env, url=bao.url).read(path, "value")
        assert_clean(info.value)


def test_stopped_vault_is_backend_error(make: Make) -> None:
    with OpenBao() as bao:
        path = unique("stopped")
        bao.put_v2(path, {"value": VALUE})
        backend = make(env={TOKEN_ENV: bao.root_token}, url=bao.url, timeout=2)
        assert backend.read(path, "value") == SecretValue(VALUE)
        bao.stop()
        with pytest.raises(BackendError, match="cannot connect") as info:
            backend.read(path, "value")
        assert type(info.value) is BackendError
        assert_clean(info.value)


# -- fake servers ------------------------------------------------------------------


class TcpServer:
    """Accepts on 127.0.0.1 and then either holds connections open, silent
    (``hang``), or closes them at once (``hangup``)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            if self.mode == "hang":
                self._held.append(conn)
            else:
                conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for c in self._held:
            c.close()
        self.sock.close()


@pytest.mark.parametrize(
    ("mode", "match"), [("hang", "no answer within 1s"), ("hangup", "cannot connect")]
)
def test_silent_or_hanging_up_server_is_backend_error_within_timeout(
    make: Make, mode: str, match: str
) -> None:
    server = TcpServer(mode)
    try:
        backend = make(url=server.url, timeout=1.0)
        started = time.monotonic()
        with pytest.raises(BackendError, match=match) as info:
            backend.read("slow/path", "value")
        elapsed = time.monotonic() - started
    finally:
        server.close()
    # The message says which limit ended it ("no answer within 1s": the read
    # timeout, not an early failure); only the upper bound is timed.
    assert elapsed < 1.0 + 2.0
    assert type(info.value) is BackendError
    assert_clean(info.value)


def canned_server(status: int, ctype: str, body: str, extra: dict[str, str]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for k, v in extra.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}).start()
    return server


JSON = "application/json"


@pytest.mark.parametrize(
    ("status", "ctype", "body", "extra"),
    [
        pytest.param(200, "text/plain", f"not json {SENTINEL}", {}, id="not-json"),
        pytest.param(200, JSON, f'{{"data": "{SENTINEL}"', {}, id="truncated-json"),
        pytest.param(200, JSON, f'["{SENTINEL}"]', {}, id="json-array"),
        pytest.param(200, JSON, f'{{"data": "{SENTINEL}"}}', {}, id="data-not-object"),
        pytest.param(
            200, JSON, f'{{"data": {{"metadata": {{"v": "{SENTINEL}"}}}}}}', {}, id="no-inner-data"
        ),
        pytest.param(500, JSON, f'{{"errors": ["{SENTINEL}"]}}', {}, id="http-500"),
        pytest.param(503, "text/html", SENTINEL, {}, id="http-503-html"),
        pytest.param(204, JSON, "", {}, id="http-204"),
        pytest.param(307, JSON, "", {"Location": "http://127.0.0.1:9/v1/x"}, id="redirect"),
    ],
)
def test_malformed_answers_are_backend_errors(
    make: Make, status: int, ctype: str, body: str, extra: dict[str, str]
) -> None:
    server = canned_server(status, ctype, body, extra)
    try:
        with pytest.raises(BackendError) as info:
            make(url=f"http://127.0.0.1:{server.server_address[1]}").read("odd/path", "value")
    finally:
        server.shutdown()
        server.server_close()
    assert type(info.value) is BackendError
    assert_clean(info.value)
