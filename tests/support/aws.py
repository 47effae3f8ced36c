"""AWS for the credential tests: moto in server mode over HTTPS, verifying
every SigV4 signature after the first few (provisioning) actions, and a
presigned-URL check (moto cannot verify presigned URLs while IAM auth is on)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.support.net import free_port, port_open, wait_for
from tests.support.tlsca import TestCA

_PROVISION_ACTIONS = 4  # create user, create policy, attach it, create the access key


class MotoServer:
    """``with MotoServer(ca, workdir) as moto:`` then ``moto.keys`` are a real
    IAM user's; from then on a request signed with anything else fails."""

    def __init__(self, ca: TestCA, workdir: Path) -> None:
        self.ca = ca
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.keys: dict[str, str] = {}

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def __enter__(self) -> MotoServer:
        cert, key = self.ca.issue_server_cert()
        env = {
            **os.environ,
            "INITIAL_NO_AUTH_ACTION_COUNT": str(_PROVISION_ACTIONS),
            "S3_UPLOAD_PART_MIN_SIZE": str(256 * 1024),  # small multipart parts
        }
        self.workdir.mkdir(parents=True, exist_ok=True)
        with (self.workdir / "moto.out").open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "moto.server",
                    "-H",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-c",
                    cert,
                    "-k",
                    key,
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if not wait_for(lambda: port_open(self.port), 30):
            self.__exit__()
            raise RuntimeError("moto did not start")
        self.keys = self._provision()
        return self

    def _provision(self) -> dict[str, str]:
        import boto3

        iam = boto3.client(
            "iam",
            endpoint_url=self.url,
            region_name="us-east-1",
            verify=self.ca.ca_path,
            aws_access_key_id="provisioning",
            aws_secret_access_key="provisioning",
        )
        iam.create_user(UserName="agent")
        doc = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
        }
        arn = iam.create_policy(PolicyName="all", PolicyDocument=json.dumps(doc))["Policy"]["Arn"]
        iam.attach_user_policy(UserName="agent", PolicyArn=arn)
        k = iam.create_access_key(UserName="agent")["AccessKey"]
        return {"access_key_id": k["AccessKeyId"], "secret_access_key": k["SecretAccessKey"]}

    def client(self, service: str, **kw: Any) -> Any:
        """A boto3 client with the real keys, straight to moto (test set-up and checks)."""
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name="us-east-1",
            verify=self.ca.ca_path,
            aws_access_key_id=self.keys["access_key_id"],
            aws_secret_access_key=self.keys["secret_access_key"],
            **kw,
        )

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None


def presigned_valid(
    url: str, access_key_id: str, secret_access_key: str, token: str | None = None
) -> bool:
    """Whether a SigV4 presigned S3 GET URL is signed with these keys."""
    parts = urlsplit(url)
    q = dict(parse_qsl(parts.query, keep_blank_values=True))
    if not q.get("X-Amz-Credential", "").startswith(access_key_id + "/"):
        return False
    _, _date, region, service, _ = q["X-Amz-Credential"].split("/")
    rest = "&".join(p for p in parts.query.split("&") if not p.startswith("X-Amz-Signature="))
    req = AWSRequest(
        "GET", f"https://{parts.netloc}{parts.path}?{rest}", headers={"host": parts.netloc}
    )
    req.context["timestamp"] = q["X-Amz-Date"]
    auth = S3SigV4QueryAuth(Credentials(access_key_id, secret_access_key, token), service, region)
    canonical = auth.canonical_request(req)
    return bool(auth.signature(auth.string_to_sign(req, canonical), req) == q["X-Amz-Signature"])
