"""AWS calls whose answer *is* a credential (review finding 3).

Re-signing ``sts:GetSessionToken`` for the agent would hand it a fresh
AccessKeyId/SecretAccessKey/SessionToken the scrubber has never seen: raw
AWS keys, usable outside the broker for up to 36 hours (``iam:CreateAccessKey``:
for ever), beyond every limit, approval and audit. So an ``aws_sigv4`` secret
refuses them (``403 credential_vending``) unless its rule sets
``allow_credential_vending: true``. The action is read wherever AWS reads it:
``Action=`` in the query or a form body (Query protocol: STS, IAM, Redshift),
``X-Amz-Target`` (JSON protocol: Cognito, ECR), the RPC-v2 path
``/service/S/operation/OP``, or the REST path (SSO, CodeArtifact, SSO OIDC).

A presigned URL is itself a bearer credential for its lifetime, so its
``X-Amz-Expires`` is capped (``max_presign_expires``, default 900 s)."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from broker.credentials.errors import CredentialError
from broker.request.locations import RequestParts

__all__ = ["DEFAULT_MAX_PRESIGN", "VENDING", "check_expires", "check_vending", "vending_action"]

DEFAULT_MAX_PRESIGN = 900

VENDING: dict[str, frozenset[str]] = {
    "sts": frozenset(
        {
            "AssumeRole",
            "AssumeRoleWithSAML",
            "AssumeRoleWithWebIdentity",
            "AssumeRoot",
            "GetFederationToken",
            "GetSessionToken",
        }
    ),
    "iam": frozenset(
        {
            "CreateAccessKey",
            "CreateLoginProfile",
            "UpdateLoginProfile",
            "CreateServiceSpecificCredential",
            "ResetServiceSpecificCredential",
            "UploadSSHPublicKey",
            "UploadSigningCertificate",
        }
    ),
    "cognito-identity": frozenset(
        {"GetCredentialsForIdentity", "GetOpenIdToken", "GetOpenIdTokenForDeveloperIdentity"}
    ),
    "ecr": frozenset({"GetAuthorizationToken"}),
    "ecr-public": frozenset({"GetAuthorizationToken"}),
    "redshift": frozenset({"GetClusterCredentials", "GetClusterCredentialsWithIAM"}),
    "redshift-serverless": frozenset({"GetCredentials"}),
    "codeartifact": frozenset({"GetAuthorizationToken"}),
    "awsssoportal": frozenset({"GetRoleCredentials"}),
    "sso-oauth": frozenset({"CreateToken", "CreateTokenWithIAM"}),
}
_REST: dict[str, tuple[re.Pattern[str], str]] = {
    "awsssoportal": (re.compile(r"/federation/credentials/?", re.I), "GetRoleCredentials"),
    "codeartifact": (re.compile(r"/v1/authorization-token/?", re.I), "GetAuthorizationToken"),
    "sso-oauth": (re.compile(r"/token/?", re.I), "CreateToken"),
}
_RPC_V2 = re.compile(r"/service/[^/]+/operation/([^/?]+)")
_MAX_FORM = 1 << 20


def _actions(parts: RequestParts) -> list[str]:
    """Every operation name the request could be read as."""
    out = [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() == "action"]
    if parts.body and len(parts.body) <= _MAX_FORM:
        text = parts.body.decode("latin-1")
        if "=" in text:
            pairs = parse_qsl(text, keep_blank_values=True)
            out += [v for k, v in pairs if k.lower() == "action"]
    for name, value in parts.headers:
        if name.lower() == "x-amz-target":
            out.append(value.rsplit(".", 1)[-1])
    if m := _RPC_V2.search(parts.path):
        out.append(m.group(1))
    return [a.strip() for a in out]


def vending_action(service: str, parts: RequestParts) -> str | None:
    """The credential-issuing operation this request calls, if any."""
    vending = VENDING.get(service.lower())
    if vending is None:
        return None
    lowered = {v.lower(): v for v in vending}
    for action in _actions(parts):
        if action.lower() in lowered:
            return lowered[action.lower()]
    rest = _REST.get(service.lower())
    if rest is not None and rest[0].fullmatch(parts.path):
        return rest[1]
    return None


def check_vending(service: str, parts: RequestParts, allowed: bool | None, name: str) -> None:
    if allowed:
        return
    action = vending_action(service, parts)
    if action is not None:
        raise CredentialError(
            "credential_vending",
            f"{service}:{action} issues credentials; the answer would carry raw keys "
            "(set allow_credential_vending: true on the secret to permit it)",
            name,
        )


def check_expires(expires: int, limit: int | None, name: str) -> None:
    cap = limit if limit is not None else DEFAULT_MAX_PRESIGN
    if expires > cap:
        raise CredentialError(
            "malformed_request",
            f"a presigned URL's X-Amz-Expires may be at most {cap} seconds "
            "(max_presign_expires on the secret)",
            name,
        )
