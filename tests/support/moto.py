"""moto in server mode (a real AWS API emulator) for integration tests.

The server enforces IAM authentication after its first three requests, which
create a user, its access key and an allow-all policy: requests signed with
any other key are refused (403), so "a wrong credential" is testable. Its
output goes to a log file, never to the test output.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import boto3

from tests.support.net import free_port, port_open, wait_for
from tests.support.tlsca import TestCA

REGION = "us-east-1"
_ALLOW_ALL = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}'


class MotoServer:
    """``MotoServer(ca)`` serves https with a certificate from the test CA."""

    def __init__(self, ca: TestCA | None = None) -> None:
        self.ca = ca
        self.port = free_port()
        self.url = f"{'https' if ca else 'http'}://127.0.0.1:{self.port}"
        self._dir = Path(tempfile.mkdtemp(prefix="keybroker-moto-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self.access_key_id = self.secret_access_key = ""

    def __enter__(self) -> MotoServer:
        exe = Path(sys.executable).with_name("moto_server")
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
        tls: list[str] = []
        if self.ca is not None:
            cert, key = self.ca.issue_server_cert()
            tls = ["-s", "-c", cert, "-k", key]
        with (self._dir / "moto.log").open("wb") as log:
            self._proc = subprocess.Popen(
                [str(exe), "-H", "127.0.0.1", "-p", str(self.port), *tls],
                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        if not wait_for(lambda: port_open(self.port) or self._proc.poll() is not None, 30):
            self.__exit__()
            raise RuntimeError("moto_server did not start")
        iam = self._client("iam", "bootstrap", "bootstrap")
        iam.create_user(UserName="keybroker")
        key = iam.create_access_key(UserName="keybroker")["AccessKey"]
        iam.put_user_policy(UserName="keybroker", PolicyName="all", PolicyDocument=_ALLOW_ALL)
        self.access_key_id, self.secret_access_key = key["AccessKeyId"], key["SecretAccessKey"]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)

    def _client(self, service: str, key_id: str, secret: str) -> Any:
        return boto3.client(
            service, region_name=REGION, endpoint_url=self.url,
            aws_access_key_id=key_id, aws_secret_access_key=secret,
            verify=self.ca.ca_path if self.ca else None,
        )  # fmt: skip

    def secretsmanager(self) -> Any:
        """A client signed with the server's one valid key."""
        return self._client("secretsmanager", self.access_key_id, self.secret_access_key)

    def put(self, secret_id: str, value: str) -> None:
        """Create the secret, or add a new current version."""
        sm = self.secretsmanager()
        try:
            sm.put_secret_value(SecretId=secret_id, SecretString=value)
        except sm.exceptions.ResourceNotFoundException:
            sm.create_secret(Name=secret_id, SecretString=value)
