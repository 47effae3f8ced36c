"""The token cache (single flight, expiry minus a margin, errors not cached,
401 drop) and the token answers of OAuth2 and GitHub."""

from __future__ import annotations

import asyncio
import json

import pytest

from broker.credentials import github_app, oauth2
from broker.credentials.errors import CredentialError
from broker.credentials.http import Answer
from broker.credentials.tokens import Token, TokenCache, margin
from broker.secret import SecretValue


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_single_flight_expiry_and_drop() -> None:
    clock, calls = Clock(), []

    async def fetch() -> Token:
        calls.append(1)
        await asyncio.sleep(0.01)
        return Token(SecretValue(f"t{len(calls)}"), 100.0)

    async def main() -> None:
        cache = TokenCache(clock)
        got = await asyncio.gather(*(cache.get("k", fetch) for _ in range(20)))
        assert {v.reveal() for v in got} == {"t1"} and len(calls) == 1
        clock.now += 100 - margin(100) - 1
        assert (await cache.get("k", fetch)).reveal() == "t1"
        clock.now += 2
        assert (await cache.get("k", fetch)).reveal() == "t2"
        cache.drop("k")
        assert (await cache.get("k", fetch)).reveal() == "t3"

    asyncio.run(main())


def test_errors_are_shared_but_not_cached() -> None:
    calls = []

    async def fetch() -> Token:
        calls.append(1)
        await asyncio.sleep(0.01)
        raise CredentialError("token_unavailable", "down")

    async def main() -> None:
        cache = TokenCache()
        results = await asyncio.gather(
            *(cache.get("k", fetch) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, CredentialError) for r in results) and len(calls) == 1
        with pytest.raises(CredentialError):
            await cache.get("k", fetch)
        assert len(calls) == 2

    asyncio.run(main())


@pytest.mark.parametrize(
    ("answer", "ok"),
    [
        pytest.param(Answer(200, b'{"access_token":"a","expires_in":30}'), True, id="ok"),
        pytest.param(Answer(400, b'{"error":"invalid_grant"}'), False, id="400"),
        pytest.param(Answer(200, b"<html>"), False, id="not-json"),
        pytest.param(Answer(200, b'{"access_token":"a\\nb"}'), False, id="newline"),
        pytest.param(Answer(200, b'{"token_type":"bearer"}'), False, id="no-token"),
    ],
)
def test_oauth2_answers(answer: Answer, ok: bool) -> None:
    if ok:
        issued = oauth2.parse_answer(answer)
        assert issued.access_token.reveal() == "a" and issued.lifetime == 30
    else:
        with pytest.raises(CredentialError) as err:
            oauth2.parse_answer(answer)
        assert err.value.reason == "token_unavailable"
        assert "invalid_grant" not in str(err.value)  # the endpoint's text is not repeated


def test_rotated_refresh_token_is_returned() -> None:
    body = json.dumps({"access_token": "a", "refresh_token": "r2", "expires_in": 10}).encode()
    issued = oauth2.parse_answer(Answer(200, body))
    assert issued.refresh_token is not None and issued.refresh_token.reveal() == "r2"


def test_github_app_jwt_and_answer() -> None:
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    token = github_app.app_jwt("123", SecretValue(pem), now=2_000_000_000)
    claims = jwt.decode(
        token.reveal(),
        key.public_key(),
        algorithms=["RS256"],
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims == {"iat": 2_000_000_000 - 60, "exp": 2_000_000_000 + 540, "iss": "123"}
    value, lifetime = github_app.parse_answer(
        Answer(201, b'{"token":"ghs_x","expires_at":"2033-05-18T04:33:20Z"}'), now=2_000_000_000
    )
    assert value.reveal() == "ghs_x" and lifetime == 3600
    with pytest.raises(CredentialError):
        github_app.app_jwt("123", SecretValue("not a key"))


def test_a_token_endpoint_redirect_is_not_followed() -> None:
    """A redirect would send the client secret to a new destination."""
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from broker.credentials.http import _post

    hits: list[str] = []

    class H(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            hits.append(self.path)
            self.send_response(307)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/token"
        answer = _post(url, b"grant_type=x", {}, ssl.create_default_context())
    finally:
        srv.shutdown()
        srv.server_close()
    assert answer.status == 307 and hits == ["/token"]
    with pytest.raises(CredentialError):
        oauth2.parse_answer(answer)


def test_google_service_account_assertion_claims() -> None:
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from broker.credentials import google_sa
    from broker.policy.secret_rule import SecretRule

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    rule = SecretRule(
        kind="google_service_account",
        backend="v",
        path="p",
        hosts=["storage.googleapis.com"],
        scopes=["a", "b"],
    )
    signed = google_sa.assertion(rule, "sa@p.iam.gserviceaccount.com", SecretValue(pem), now=1_000)
    claims = jwt.decode(
        signed.reveal(),
        key.public_key(),
        algorithms=["RS256"],
        audience=google_sa.DEFAULT_TOKEN_URL,
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims == {
        "iss": "sa@p.iam.gserviceaccount.com",
        "aud": "https://oauth2.googleapis.com/token",
        "iat": 1_000,
        "exp": 4_600,
        "scope": "a b",
    }
    body, _ = google_sa.token_request(signed)
    assert body.startswith(
        b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion="
    )


def test_weak_values_are_not_captured() -> None:
    import pytest

    from broker.credentials.capture import CaptureRefused, CaptureStore
    from broker.policy.schema import CaptureRule
    from broker.request.decision import Destination

    store = CaptureStore()
    rule = CaptureRule(hosts=["login.example.com"], json_fields=["access_token", "refresh_token"])
    dest = Destination.of("https", "login.example.com", 443, "POST", "/token")
    body = json.dumps({"access_token": "aaaaaaaaaaaa", "refresh_token": "rt_9fQx2LmZ8kPw3VnB"})
    # Fail closed: the response is refused rather than delivered with a raw
    # token, and nothing weak becomes a scrubbed "secret".
    with pytest.raises(CaptureRefused):
        store.capture("acme", [rule], dest, body=body.encode())
    assert store.scrubbers.count("acme") == 0 and not store.active
