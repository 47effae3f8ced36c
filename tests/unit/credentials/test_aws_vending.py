"""Credential-issuing AWS calls are found wherever AWS reads the action."""

from __future__ import annotations

import pytest

from broker.credentials.aws_vending import check_expires, check_vending, vending_action
from broker.credentials.errors import CredentialError
from broker.request.locations import RequestParts


def parts(path: str = "/", query: str = "", body: bytes = b"", **headers: str) -> RequestParts:
    return RequestParts(
        tuple((k.replace("_", "-"), v) for k, v in headers.items()), path, query, body
    )


@pytest.mark.parametrize(
    ("service", "p", "action"),
    [
        ("sts", parts(body=b"Action=GetSessionToken&Version=2011-06-15"), "GetSessionToken"),
        (
            "sts",
            parts(query="Version=2011-06-15&Action=AssumeRoleWithWebIdentity"),
            "AssumeRoleWithWebIdentity",
        ),
        ("sts", parts(body=b"action=assumerole"), "AssumeRole"),
        ("iam", parts(body=b"Action=CreateAccessKey&UserName=u"), "CreateAccessKey"),
        (
            "cognito-identity",
            parts(X_Amz_Target="AWSCognitoIdentityService.GetCredentialsForIdentity"),
            "GetCredentialsForIdentity",
        ),
        (
            "ecr",
            parts(X_Amz_Target="AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken"),
            "GetAuthorizationToken",
        ),
        (
            "awsssoportal",
            parts("/federation/credentials", "role_name=r&account_id=1"),
            "GetRoleCredentials",
        ),
        ("codeartifact", parts("/v1/authorization-token", "domain=d"), "GetAuthorizationToken"),
        (
            "cognito-identity",
            parts("/service/AWSCognitoIdentityService/operation/GetOpenIdToken"),
            "GetOpenIdToken",
        ),
    ],
)
def test_vending_actions_are_found(service: str, p: RequestParts, action: str) -> None:
    assert vending_action(service, p) == action
    with pytest.raises(CredentialError) as exc:
        check_vending(service, p, None, "aws")
    assert exc.value.reason == "credential_vending"
    check_vending(service, p, True, "aws")  # the explicit opt-in


@pytest.mark.parametrize(
    ("service", "p"),
    [
        ("sts", parts(body=b"Action=GetCallerIdentity&Version=2011-06-15")),
        ("s3", parts("/bucket/GetSessionToken", "Action=GetSessionToken")),  # not STS
        ("iam", parts(body=b"Action=ListUsers")),
        ("ecr", parts(X_Amz_Target="AmazonEC2ContainerRegistry_V20150921.ListImages")),
    ],
)
def test_other_calls_pass(service: str, p: RequestParts) -> None:
    assert vending_action(service, p) is None


def test_presign_expiry_is_capped() -> None:
    check_expires(900, None, "aws")
    with pytest.raises(CredentialError):
        check_expires(901, None, "aws")
    check_expires(3600, 3600, "aws")
