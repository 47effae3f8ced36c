"""Where the engine hands a non-static kind the request (DESIGN.md §11):
``sign_aws`` checks an ``aws_sigv4`` placeholder sits alone in a SigV4
credential whose service and region the secret allows, and re-signs."""

from __future__ import annotations

import asyncio
import functools

from broker.credentials import aws_sigv4
from broker.credentials.aws_vending import check_expires, check_vending
from broker.credentials.errors import CredentialError
from broker.credentials.minter import Minter, Resolve
from broker.policy.secret_rule import SecretRule
from broker.request.decision import Destination
from broker.request.locations import RequestParts

_DEFAULT_PORT = {"https": 443, "http": 80}
_INLINE_BODY = 256 * 1024


def authority(dest: Destination) -> str:
    host = f"[{dest.host}]" if ":" in dest.host else dest.host
    return host if _DEFAULT_PORT.get(dest.scheme) == dest.port else f"{host}:{dest.port}"


async def sign_aws(
    minter: Minter,
    resolver: Resolve,
    tenant: str,
    dest: Destination,
    parts: RequestParts,
    names: list[str],
    rules: dict[str, SecretRule],
) -> RequestParts:
    """``parts`` signed with the keys of the one aws_sigv4 secret it names.
    Raises CredentialError (a reason code) or BackendError."""
    cred = aws_sigv4.parse(parts)
    if cred is None and aws_sigv4.is_sigv2(parts):
        raise CredentialError(
            "malformed_request",
            "SigV2 is not re-signed: use SigV4 (botocore: signature_version='s3v4')",
            names[0],
        )
    if cred is None or len(names) != 1 or cred.name != names[0]:
        raise CredentialError(
            "location_not_allowed",
            "an aws_sigv4 placeholder is only used as the access key id of a SigV4 "
            "credential: set AWS_ACCESS_KEY_ID to it and let the SDK sign",
            names[0],
        )
    if not aws_sigv4.only_in_credential(parts, cred):
        raise CredentialError(
            "location_not_allowed",
            "the aws_sigv4 placeholder appears elsewhere in the request than its credential",
            cred.name,
        )
    rule = rules[cred.name]
    if rule.services is not None and cred.service not in rule.services:
        raise CredentialError(
            "service_not_allowed",
            f"AWS service {cred.service!r} is not in this secret's services",
            cred.name,
        )
    if rule.regions is not None and cred.region not in rule.regions:
        raise CredentialError(
            "region_not_allowed",
            f"AWS region {cred.region!r} is not in this secret's regions",
            cred.name,
        )
    check_vending(cred.service, parts, rule.allow_credential_vending, cred.name)
    if cred.presigned:
        check_expires(cred.expires, rule.max_presign_expires, cred.name)
    keys = await minter.aws_keys(resolver, tenant, cred.name, rule)
    sign = functools.partial(
        aws_sigv4.resign,
        parts,
        cred,
        keys,
        scheme=dest.scheme,
        authority=authority(dest),
        method=dest.method,
    )
    # Hashing a large body (up to limits.max_request_body) must not stall the loop.
    return sign() if len(parts.body) <= _INLINE_BODY else await asyncio.to_thread(sign)
