"""``kind: aws_sigv4`` end to end (DESIGN.md §11): boto3 and the AWS CLI,
configured by ``keybroker env`` alone (plus the endpoint of the local AWS),
sign with a placeholder access key and a dummy secret key; keybroker signs
again with the real keys and moto, which verifies every signature, accepts
the requests. Presigned URLs are checked with botocore's query signer
(moto cannot verify them while IAM auth is on)."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.support.agent_env import keybroker_env, run, sandbox
from tests.support.aws import MotoServer, presigned_valid
from tests.support.leaks import assert_no_leak
from tests.support.openbao import OpenBao
from tests.support.proxy import REPO, Proxy
from tests.support.scenario import Tenant
from tests.support.tlsca import TestCA
from tests.support.upstream import Upstream

pytestmark = pytest.mark.integration
AGENT_KEY = "<<secret:aws>>"
DUMMY = "keybroker-signs-this-request"
SESSION_KEYS = {
    "access_key_id": "ASIAKBTESTSESSION0001",
    "secret_access_key": "kb-session-secret-" + "9" * 22,
    "session_token": "IQoJb3JpZ2luX2VjEKB" + "x" * 60,
}


@pytest.fixture(scope="module")
def moto(test_ca: TestCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with MotoServer(test_ca, tmp_path_factory.mktemp("moto")) as m:
        yield m


@pytest.fixture(scope="module")
def acme() -> Tenant:
    return Tenant("acme")


@pytest.fixture(scope="module")
def kb(
    moto: MotoServer,
    openbao: OpenBao,
    test_ca: TestCA,
    upstream: Upstream,
    acme: Tenant,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Proxy]:
    openbao.put_v2("creds/aws", dict(moto.keys))
    openbao.put_v2("creds/aws-session", SESSION_KEYS)
    work = tmp_path_factory.mktemp("kb-aws")
    policy = {
        "version": 1,
        "certs_dir": str(work / "certs"),
        "upstream_ca": str(test_ca.ca_path),
        "audit": {"path": str(work / "audit.jsonl")},
        "backends": {
            "vault": {"type": "vault", "url": openbao.url, "token_env": "KB_TEST_VAULT_TOKEN"}
        },
        "tenants": {
            "acme": {
                "token_sha256": acme.digest,
                "secrets": {
                    "aws": {
                        "kind": "aws_sigv4",
                        "backend": "vault",
                        "path": "creds/aws",
                        "hosts": ["localhost"],
                        "ports": [moto.port, upstream.port],
                        "services": ["s3", "sts"],
                        "regions": ["us-east-1"],
                    },
                    "session": {
                        "kind": "aws_sigv4",
                        "backend": "vault",
                        "path": "creds/aws-session",
                        "hosts": ["localhost"],
                        "ports": [upstream.port],
                    },
                },
            }
        },
    }
    with Proxy(policy, work, env={"KB_TEST_VAULT_TOKEN": openbao.root_token}) as proxy:
        yield proxy


def agent_env(kb: Proxy, acme: Tenant, moto: MotoServer, home: Path) -> dict[str, str]:
    env = keybroker_env(kb, "acme", acme.token)
    assert env["AWS_ACCESS_KEY_ID"] == AGENT_KEY
    assert env["AWS_SECRET_ACCESS_KEY"] == DUMMY
    assert env["AWS_REGION"] == "us-east-1"
    return sandbox({**env, "AWS_ENDPOINT_URL": moto.url}, home)


def no_key_in(text: str, moto: MotoServer) -> None:
    for v in moto.keys.values():
        assert_no_leak(text.encode(), v.encode(), "the agent's output")


def test_boto3_s3_and_sts_through_the_broker(
    kb: Proxy, acme: Tenant, moto: MotoServer, tmp_path: Path
) -> None:
    env = agent_env(kb, acme, moto, tmp_path / "home")
    out = run([sys.executable, "-m", "tests.support.aws_agent", "boto-bucket"], env, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout)
    assert got["get"] == got["want"]
    assert got["list"] == ["default", "multipart", "signed", "unsigned"]
    assert got["arn"].endswith(":user/agent")
    modes = set(got["modes"])
    assert {"STREAMING-UNSIGNED-PAYLOAD-TRAILER", "UNSIGNED-PAYLOAD"} <= modes
    assert hashlib.sha256(bytes(range(256)) * 4096).hexdigest() in modes  # signed payload
    no_key_in(out.stdout + out.stderr, moto)
    # The objects really are in the verified store, under the real user.
    real = moto.client("s3")
    assert real.head_object(Bucket="boto-bucket", Key="multipart")["ContentLength"] == 1536 * 1024


@pytest.mark.skipif(
    not (Path(sys.executable).parent / "aws").is_file(),
    reason="the AWS CLI (PyPI awscli) is a test extra",
)
def test_aws_cli_through_the_broker(
    kb: Proxy, acme: Tenant, moto: MotoServer, tmp_path: Path
) -> None:
    env = agent_env(kb, acme, moto, tmp_path / "home")
    aws = [str(Path(sys.executable).parent / "aws")]
    data = tmp_path / "blob.bin"
    data.write_bytes(b"cli-" * (300 * 1024))  # 1.2 MiB
    steps = [
        ["s3", "mb", "s3://cli-bucket"],
        ["s3", "cp", str(data), "s3://cli-bucket/blob.bin"],
        ["s3", "ls", "s3://cli-bucket"],
        ["s3", "cp", "s3://cli-bucket/blob.bin", str(tmp_path / "back.bin")],
        ["sts", "get-caller-identity"],
    ]
    outputs = []
    for step in steps:
        out = run(aws + step, env, timeout=120)
        assert out.returncode == 0, (step, out.stderr[-2000:])
        outputs.append(out.stdout + out.stderr)
    assert "blob.bin" in outputs[2]
    assert (tmp_path / "back.bin").read_bytes() == data.read_bytes()
    assert ":user/agent" in outputs[4]
    no_key_in("".join(outputs), moto)


def _session(kb: Proxy, acme: Tenant, test_ca: TestCA) -> requests.Session:
    s = requests.Session()
    s.proxies = kb.proxies("acme", acme.token)
    s.verify = str(kb.ca_path)
    s.trust_env = False
    return s


def test_presigned_get_is_signed_again(
    kb: Proxy, acme: Tenant, moto: MotoServer, upstream: Upstream, test_ca: TestCA
) -> None:
    import boto3
    from botocore.config import Config

    agent = boto3.client(
        "s3",
        endpoint_url=f"https://localhost:{upstream.port}",
        region_name="us-east-1",
        aws_access_key_id=AGENT_KEY,
        aws_secret_access_key=DUMMY,
        config=Config(signature_version="s3v4"),
    )
    url = agent.generate_presigned_url(
        "get_object", Params={"Bucket": "presign-bucket", "Key": "k.txt"}, ExpiresIn=300
    )
    assert "secret%3Aaws" in url
    r = _session(kb, acme, test_ca).get(url)
    assert r.status_code == 404  # the local upstream has no such object; it got the request
    got = [x for x in upstream.received if x.path.startswith("/presign-bucket/k.txt?")]
    assert len(got) == 1
    sent = f"https://localhost:{upstream.port}{got[0].path}"
    assert presigned_valid(sent, moto.keys["access_key_id"], moto.keys["secret_access_key"])
    assert not presigned_valid(sent, moto.keys["access_key_id"], "a-wrong-secret")
    assert "X-Amz-Expires=300" in sent


def _signed(
    method: str, url: str, *, service: str, region: str, body: bytes = b"", headers: Any = None
) -> tuple[dict[str, str], bytes]:
    """What an SDK sends: signed with the placeholder key and the dummy secret."""
    headers = dict(headers or {})
    mode = headers.get("X-Amz-Content-SHA256")

    class Streaming(S3SigV4Auth):  # type: ignore[misc]
        def payload(self, request: Any) -> str:
            return str(mode) if mode else str(super().payload(request))

    req = AWSRequest(method, url, headers=headers, data=body)
    cls = Streaming if service == "s3" else SigV4Auth
    cls(Credentials(AGENT_KEY, DUMMY), service, region).add_auth(req)
    assert mode is None or req.headers["X-Amz-Content-SHA256"] == mode
    return dict(req.headers.items()), body


@pytest.mark.parametrize(
    ("service", "region", "reason"),
    [
        pytest.param("s3", "eu-west-1", "region_not_allowed", id="region"),
        pytest.param("iam", "us-east-1", "service_not_allowed", id="service"),
    ],
)
def test_scope_outside_policy_is_refused(
    kb: Proxy,
    acme: Tenant,
    moto: MotoServer,
    test_ca: TestCA,
    service: str,
    region: str,
    reason: str,
) -> None:
    url = f"{moto.url}/?Action=ListUsers&Version=2010-05-08"
    headers, _ = _signed("GET", url, service=service, region=region)
    r = _session(kb, acme, test_ca).get(url, headers=headers)
    assert r.status_code == 403, r.text
    assert r.json()["reason"] == reason
    assert r.headers["x-keybroker-decision"] == f"deny; reason={reason}"


def test_placeholder_outside_a_sigv4_credential_is_refused(
    kb: Proxy, acme: Tenant, moto: MotoServer, test_ca: TestCA
) -> None:
    r = _session(kb, acme, test_ca).get(
        f"{moto.url}/", headers={"Authorization": f"Bearer {AGENT_KEY}"}
    )
    assert r.status_code == 403
    assert r.json()["reason"] == "location_not_allowed"


def _aws_chunks(data: bytes, size: int, trailer: str | None) -> bytes:
    fake = "0" * 64  # chunk signatures made with the dummy key: never valid upstream
    out = b""
    for i in range(0, len(data), size):
        piece = data[i : i + size]
        out += f"{len(piece):x};chunk-signature={fake}\r\n".encode() + piece + b"\r\n"
    out += f"0;chunk-signature={fake}\r\n".encode()
    if trailer:
        out += trailer.encode() + b"\r\n" + f"x-amz-trailer-signature:{fake}\r\n".encode()
    return out + b"\r\n"


@pytest.mark.parametrize("trailer", [False, True], ids=["signed-chunks", "signed-chunks-trailer"])
def test_signed_chunk_upload_is_re_encoded(
    kb: Proxy, acme: Tenant, moto: MotoServer, test_ca: TestCA, trailer: bool
) -> None:
    import base64
    import zlib

    moto.client("s3").create_bucket(Bucket="chunk-bucket") if trailer is False else None
    data = b"chunked-upload-" * 70000  # ~1 MiB
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    mode = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" + ("-TRAILER" if trailer else "")
    body = _aws_chunks(data, 64 * 1024, f"x-amz-checksum-crc32:{crc}" if trailer else None)
    extra = {
        "Content-Encoding": "aws-chunked",
        "X-Amz-Decoded-Content-Length": str(len(data)),
        "X-Amz-Content-SHA256": mode,
        "Content-Length": str(len(body)),
    }
    if trailer:
        extra["X-Amz-Trailer"] = "x-amz-checksum-crc32"
    key = f"chunked-{trailer}"
    url = f"{moto.url}/chunk-bucket/{key}"
    headers, _ = _signed("PUT", url, service="s3", region="us-east-1", headers=extra)
    r = _session(kb, acme, test_ca).put(url, data=body, headers=headers)
    assert r.status_code == 200, r.text
    got = moto.client("s3").get_object(Bucket="chunk-bucket", Key=key)["Body"].read()
    assert got == data


def test_malformed_chunks_are_refused(
    kb: Proxy, acme: Tenant, moto: MotoServer, test_ca: TestCA
) -> None:
    body = b"ffff;chunk-signature=" + b"0" * 64 + b"\r\nshort\r\n"
    extra = {
        "Content-Encoding": "aws-chunked",
        "X-Amz-Decoded-Content-Length": "5",
        "X-Amz-Content-SHA256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
    }
    url = f"{moto.url}/chunk-bucket/bad"
    headers, _ = _signed("PUT", url, service="s3", region="us-east-1", headers=extra)
    r = _session(kb, acme, test_ca).put(url, data=body, headers=headers)
    assert r.status_code == 400
    assert r.json()["reason"] == "malformed_request"


def test_a_host_header_naming_another_server_is_refused(
    kb: Proxy, acme: Tenant, moto: MotoServer, test_ca: TestCA
) -> None:
    """Domain fronting: the tunnel goes to the allowed host, the signed Host
    names another; the broker never signs for a server it does not connect to."""
    url = f"{moto.url}/?Action=GetCallerIdentity&Version=2011-06-15"
    headers, _ = _signed(
        "GET", url, service="sts", region="us-east-1", headers={"Host": "sts.amazonaws.com"}
    )
    assert headers["Host"] == "sts.amazonaws.com"
    r = _session(kb, acme, test_ca).get(url, headers=headers)
    assert r.status_code == 403
    assert r.json()["reason"] == "host_not_allowed"


def test_echoed_signed_headers_come_back_as_the_placeholder(
    kb: Proxy, acme: Tenant, upstream: Upstream, test_ca: TestCA
) -> None:
    """An upstream that echoes the signed request (real key id, session
    token) shows the agent placeholders only; the upstream got the token."""
    url = f"https://localhost:{upstream.port}/echo/aws"
    req = AWSRequest("GET", url, headers={})
    SigV4Auth(Credentials("<<secret:session>>", DUMMY), "sts", "us-east-1").add_auth(req)
    r = _session(kb, acme, test_ca).get(url, headers=dict(req.headers.items()))
    assert r.status_code == 200, r.text
    got = [x for x in upstream.received if x.path == "/echo/aws"][-1]
    assert got.header("x-amz-security-token") == SESSION_KEYS["session_token"]
    assert (got.header("authorization") or "").startswith(
        f"AWS4-HMAC-SHA256 Credential={SESSION_KEYS['access_key_id']}/"
    )
    echoed = r.json()["headers"]
    assert echoed["x-amz-security-token"] == "<<secret:session>>"
    assert echoed["authorization"].startswith("AWS4-HMAC-SHA256 Credential=<<secret:session>>/")
    for v in SESSION_KEYS.values():
        assert_no_leak(r.content, v.encode(), "the echo")


def test_a_sigv2_presigned_url_is_refused_with_a_hint(
    kb: Proxy, acme: Tenant, upstream: Upstream, test_ca: TestCA
) -> None:
    import boto3
    from botocore.config import Config

    agent = boto3.client(
        "s3",
        endpoint_url=f"https://localhost:{upstream.port}",
        region_name="us-east-1",
        aws_access_key_id=AGENT_KEY,
        aws_secret_access_key=DUMMY,
        config=Config(signature_version="s3"),
    )
    url = agent.generate_presigned_url("get_object", Params={"Bucket": "b-v2", "Key": "k"})
    assert "AWSAccessKeyId=" in url
    r = _session(kb, acme, test_ca).get(url)
    assert r.status_code == 400
    assert r.json()["reason"] == "malformed_request"
    assert not [x for x in upstream.received if x.path.startswith("/b-v2/")]


@pytest.mark.parametrize(
    ("where", "action"),
    [("body", "GetSessionToken"), ("query", "AssumeRole"), ("body", "GetFederationToken")],
)
def test_credential_vending_is_refused(
    kb: Proxy, acme: Tenant, moto: MotoServer, test_ca: TestCA, where: str, action: str
) -> None:
    """Review finding 3: STS would answer with raw keys the scrubber never saw."""
    form = f"Action={action}&Version=2011-06-15&RoleArn=arn:aws:iam::123456789012:role/r"
    url = moto.url + "/" + (f"?{form}" if where == "query" else "")
    body = form.encode() if where == "body" else b""
    ctype = {"Content-Type": "application/x-www-form-urlencoded"}
    headers, body = _signed(
        "POST", url, service="sts", region="us-east-1", body=body, headers=ctype
    )
    r = _session(kb, acme, test_ca).post(url, headers=headers, data=body)
    assert r.status_code == 403, r.text
    assert r.json()["reason"] == "credential_vending"
    assert "SecretAccessKey" not in r.text


def test_non_vending_sts_and_a_long_presigned_url(
    kb: Proxy, acme: Tenant, moto: MotoServer, upstream: Upstream, test_ca: TestCA
) -> None:
    form = b"Action=GetCallerIdentity&Version=2011-06-15"
    ctype = {"Content-Type": "application/x-www-form-urlencoded"}
    headers, body = _signed(
        "POST", moto.url + "/", service="sts", region="us-east-1", body=form, headers=ctype
    )
    r = _session(kb, acme, test_ca).post(moto.url + "/", headers=headers, data=body)
    assert r.status_code == 200 and "GetCallerIdentityResult" in r.text, r.text
    import boto3
    from botocore.config import Config

    agent = boto3.client(
        "s3",
        endpoint_url=f"https://localhost:{upstream.port}",
        region_name="us-east-1",
        aws_access_key_id=AGENT_KEY,
        aws_secret_access_key=DUMMY,
        config=Config(signature_version="s3v4"),
    )
    url = agent.generate_presigned_url(
        "get_object", Params={"Bucket": "presign-long", "Key": "k"}, ExpiresIn=7 * 86400
    )
    r = _session(kb, acme, test_ca).get(url)
    assert r.status_code == 400 and r.json()["reason"] == "malformed_request", r.text
    assert not [x for x in upstream.received if x.path.startswith("/presign-long/")]
