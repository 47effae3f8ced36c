"""SigV4 re-signing: what is parsed, what is refused, and that the result
verifies with the real keys (botocore recomputing, as AWS does) and not
with the agent's dummy key."""

from __future__ import annotations

import hashlib

import pytest
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from broker.credentials import aws_sigv4
from broker.credentials.aws_chunked import ChunkError, decode_signed_chunks
from broker.credentials.errors import CredentialError
from broker.request.locations import RequestParts
from broker.secret import SecretValue

KEY = "<<secret:aws>>"
REAL = aws_sigv4.AwsKeys(SecretValue("AKIAREALKEY"), SecretValue("real-secret"), None)
HOST = "bucket.s3.amazonaws.com"


def agent_parts(
    method: str = "GET",
    path: str = "/k",
    query: str = "",
    body: bytes = b"",
    service: str = "s3",
    headers: dict[str, str] | None = None,
) -> RequestParts:
    url = f"https://{HOST}{path}" + (f"?{query}" if query else "")
    req = AWSRequest(method, url, headers=dict(headers or {}), data=body)
    cls = S3SigV4Auth if service == "s3" else SigV4Auth
    cls(Credentials(KEY, "dummy"), service, "us-east-1").add_auth(req)
    hdrs = (("Host", HOST), *((k, v) for k, v in req.headers.items()))
    return RequestParts(headers=hdrs, path=path, query=query, body=body)


def verifies(parts: RequestParts, secret: str, method: str = "GET", service: str = "s3") -> bool:
    """Recompute the signature of what would be sent, as the server does."""
    h = dict((k.lower(), v) for k, v in parts.headers)
    auth = h["authorization"]
    signed = auth.split("SignedHeaders=")[1].split(",")[0].split(";")
    url = f"https://{HOST}{parts.path}" + (f"?{parts.query}" if parts.query else "")
    req = AWSRequest(method, url, headers={k: h[k] for k in signed}, data=parts.body)
    req.context["timestamp"] = h["x-amz-date"]
    cls = S3SigV4Auth if service == "s3" else SigV4Auth
    a = cls(Credentials("AKIAREALKEY", secret), service, "us-east-1")
    sig = a.signature(a.string_to_sign(req, a.canonical_request(req)), req)
    return f"Signature={sig}" in auth and "Credential=AKIAREALKEY/" in auth


def resign(
    parts: RequestParts, method: str = "GET", keys: aws_sigv4.AwsKeys = REAL
) -> RequestParts:
    cred = aws_sigv4.parse(parts)
    assert cred is not None
    return aws_sigv4.resign(parts, cred, keys, scheme="https", authority=HOST, method=method)


def test_header_credential_is_parsed() -> None:
    cred = aws_sigv4.parse(agent_parts())
    assert cred is not None
    assert (cred.name, cred.service, cred.region, cred.presigned) == (
        "aws",
        "s3",
        "us-east-1",
        False,
    )
    assert "host" in cred.signed_headers


@pytest.mark.parametrize(
    ("method", "body", "service"),
    [
        pytest.param("GET", b"", "s3", id="s3-get"),
        pytest.param("PUT", b"x" * 5000, "s3", id="s3-put-signed-hash"),
        pytest.param("POST", b"Action=GetCallerIdentity&Version=2011-06-15", "sts", id="sts"),
    ],
)
def test_resigned_request_verifies_with_the_real_key_only(
    method: str, body: bytes, service: str
) -> None:
    parts = agent_parts(method, body=body, service=service)
    out = resign(parts, method)
    assert verifies(out, "real-secret", method, service)
    assert not verifies(out, "dummy", method, service)
    assert KEY not in str(out.headers)


def test_a_session_token_is_added_and_signed() -> None:
    keys = aws_sigv4.AwsKeys(REAL.access_key_id, REAL.secret_access_key, SecretValue("tok123"))
    out = resign(agent_parts(), keys=keys)
    h = dict((k.lower(), v) for k, v in out.headers)
    assert h["x-amz-security-token"] == "tok123"
    assert "x-amz-security-token" in h["authorization"]
    assert verifies(out, "real-secret")


def test_unsigned_payload_mode_is_kept() -> None:
    parts = agent_parts("PUT", body=b"abc", headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    # S3SigV4Auth replaced our header with the body hash; put the mode back as an SDK would.
    parts = RequestParts(
        headers=tuple(
            (k, "UNSIGNED-PAYLOAD" if k.lower() == "x-amz-content-sha256" else v)
            for k, v in parts.headers
        ),
        path=parts.path,
        query="",
        body=b"abc",
    )
    out = resign(parts, "PUT")
    assert dict(out.headers)["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD"
    assert verifies(out, "real-secret", "PUT")


def test_a_wrong_body_hash_is_replaced_by_the_hash_of_what_is_sent() -> None:
    parts = agent_parts("PUT", body=b"abc")
    tampered = RequestParts(headers=parts.headers, path=parts.path, query="", body=b"abd")
    out = resign(tampered, "PUT")
    assert dict(out.headers)["X-Amz-Content-SHA256"] == hashlib.sha256(b"abd").hexdigest()


@pytest.mark.parametrize(
    ("auth", "why"),
    [
        pytest.param(
            f"AWS4-HMAC-SHA256 Credential=AKIA{KEY}/20260101/us-east-1/s3/aws4_request",
            "key",
            id="prefix",
        ),
        pytest.param(
            f"AWS4-HMAC-SHA256 Credential={KEY}/20260101/us-east-1/aws4_request",
            "scope",
            id="short-scope",
        ),
        pytest.param(
            f"AWS4-HMAC-SHA256 Credential={KEY}/20250101/us-east-1/s3/aws4_request",
            "date",
            id="date-mismatch",
        ),
    ],
)
def test_malformed_credentials_are_refused(auth: str, why: str) -> None:
    parts = RequestParts(
        headers=(("authorization", auth), ("x-amz-date", "20260101T000000Z")),
        path="/",
        query="",
        body=b"",
    )
    with pytest.raises(CredentialError) as err:
        aws_sigv4.parse(parts)
    assert err.value.reason == "malformed_request"
    assert "AKIA" not in str(err.value) or why != "key"


def test_placeholder_twice_is_not_only_in_the_credential() -> None:
    parts = agent_parts(headers={"X-Note": KEY})
    cred = aws_sigv4.parse(parts)
    assert cred is not None
    assert not aws_sigv4.only_in_credential(parts, cred)
    assert aws_sigv4.only_in_credential(agent_parts(), cred)


def test_presigned_url_is_signed_again() -> None:
    q = (
        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=%3C%3Csecret%3Aaws%3E%3E%2F20260101%2F"
        "us-east-1%2Fs3%2Faws4_request&X-Amz-Date=20260101T000000Z&X-Amz-Expires=300"
        "&X-Amz-SignedHeaders=host&X-Amz-Signature=" + "0" * 64
    )
    parts = RequestParts(headers=(("Host", HOST),), path="/k", query=q, body=b"")
    cred = aws_sigv4.parse(parts)
    assert cred is not None and cred.presigned and cred.expires == 300
    out = aws_sigv4.resign(parts, cred, REAL, scheme="https", authority=HOST, method="GET")
    assert "X-Amz-Credential=AKIAREALKEY%2F20260101" in out.query
    assert "X-Amz-Expires=300" in out.query and "X-Amz-Date=20260101T000000Z" in out.query
    assert "secret" not in out.query


def test_signed_chunks_decode() -> None:
    sig = "a" * 64
    body = f"3;chunk-signature={sig}\r\nabc\r\n0;chunk-signature={sig}\r\n".encode()
    assert decode_signed_chunks(body + b"\r\n", trailer=False) == (b"abc", [])
    trailers = f"x-amz-checksum-crc32:AAAAAA==\r\nx-amz-trailer-signature:{sig}\r\n\r\n".encode()
    assert decode_signed_chunks(body + trailers, trailer=True) == (
        b"abc",
        [("x-amz-checksum-crc32", "AAAAAA==")],
    )


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"4;chunk-signature=" + b"a" * 64 + b"\r\nabc\r\n", id="short-chunk"),
        pytest.param(b"3\r\nabc\r\n0\r\n\r\n", id="unsigned-framing"),
        pytest.param(b"0;chunk-signature=" + b"a" * 64 + b"\r\n\r\nextra", id="trailing-bytes"),
        pytest.param(
            b"0;chunk-signature=" + b"a" * 64 + b"\r\nx-other:1\r\n\r\n", id="bad-trailer"
        ),
    ],
)
def test_bad_chunks_are_refused(body: bytes) -> None:
    with pytest.raises(ChunkError):
        decode_signed_chunks(body, trailer=True)


def test_the_agents_own_session_token_is_dropped() -> None:
    parts = agent_parts(headers={"X-Amz-Security-Token": "agent-chosen"})
    out = resign(parts)
    assert "agent-chosen" not in str(out.headers)
    assert verifies(out, "real-secret")


@pytest.mark.parametrize(
    "parts",
    [
        pytest.param(
            RequestParts(
                headers=(("Authorization", f"AWS {KEY}:c2ln"),), path="/k", query="", body=b""
            ),
            id="header",
        ),
        pytest.param(
            RequestParts(
                headers=(),
                path="/k",
                query="AWSAccessKeyId=%3C%3Csecret%3Aaws%3E%3E&Signature=x&Expires=1",
                body=b"",
            ),
            id="presigned",
        ),
    ],
)
def test_sigv2_is_recognised(parts: RequestParts) -> None:
    assert aws_sigv4.parse(parts) is None
    assert aws_sigv4.is_sigv2(parts)
    assert not aws_sigv4.is_sigv2(agent_parts())
