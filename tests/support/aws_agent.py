"""An agent using boto3, configured by nothing but its environment (the
output of ``keybroker env`` plus ``AWS_ENDPOINT_URL``). Run as
``python -m tests.support.aws_agent BUCKET``; prints one JSON object: what
each call returned and which payload mode botocore chose for each request."""

from __future__ import annotations

import hashlib
import io
import json
import sys
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config


def main(bucket: str) -> None:
    modes: list[str] = []

    def seen(request: Any, **_: Any) -> None:
        mode = request.headers.get("X-Amz-Content-SHA256", b"")
        modes.append(mode.decode() if isinstance(mode, bytes) else str(mode))

    def client(service: str, **config: Any) -> Any:
        c = boto3.client(service, config=Config(**config) if config else None)
        c.meta.events.register("before-send", seen)
        return c

    out: dict[str, Any] = {}
    s3 = client("s3")
    s3.create_bucket(Bucket=bucket)
    one_mib = bytes(range(256)) * 4096
    s3.put_object(Bucket=bucket, Key="default", Body=one_mib)  # aws-chunked + CRC32 trailer
    signed = client(
        "s3", s3={"payload_signing_enabled": True}, request_checksum_calculation="when_required"
    )
    signed.put_object(Bucket=bucket, Key="signed", Body=one_mib)  # hex SHA-256 of the body
    unsigned = client(
        "s3", s3={"payload_signing_enabled": False}, request_checksum_calculation="when_required"
    )
    unsigned.put_object(Bucket=bucket, Key="unsigned", Body=b"small body")  # UNSIGNED-PAYLOAD
    big = one_mib + one_mib[: 512 * 1024]
    cfg = TransferConfig(multipart_threshold=256 * 1024, multipart_chunksize=512 * 1024)
    s3.upload_fileobj(io.BytesIO(big), bucket, "multipart", Config=cfg)
    out["get"] = {
        k: hashlib.sha256(s3.get_object(Bucket=bucket, Key=k)["Body"].read()).hexdigest()
        for k in ("default", "signed", "unsigned", "multipart")
    }
    out["want"] = {
        "default": hashlib.sha256(one_mib).hexdigest(),
        "signed": hashlib.sha256(one_mib).hexdigest(),
        "unsigned": hashlib.sha256(b"small body").hexdigest(),
        "multipart": hashlib.sha256(big).hexdigest(),
    }
    out["list"] = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    out["arn"] = client("sts").get_caller_identity()["Arn"]
    v4 = client("s3", signature_version="s3v4")
    out["presigned"] = v4.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "unsigned"}, ExpiresIn=600
    )
    out["modes"] = sorted(set(modes))
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
