"""``kind: aws_sigv4`` (DESIGN.md §11): the agent's SDK signs with
``AWS_ACCESS_KEY_ID=<<secret:NAME>>`` and a dummy secret key; the broker
reads the SigV4 credential (``Authorization`` or a presigned URL's
``X-Amz-Credential``), checks its service and region, and signs the request
again with the real keys, using botocore's signer.

The re-signed request is the agent's own: same timestamp, same signed header
names, same payload mode. ``UNSIGNED-PAYLOAD`` and
``STREAMING-UNSIGNED-PAYLOAD-TRAILER`` (botocore's default for S3 uploads
over https) are kept as they are; a hex payload hash is computed again over
the body that is actually sent; ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]``
(chunk signatures made with the agent's dummy key) is re-encoded as a plain
body with its SHA-256, the trailing checksums moving into headers
(:mod:`broker.credentials.aws_chunked`).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, replace
from urllib.parse import parse_qsl, unquote

from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from broker.credentials.aws_chunked import ChunkError, decode_signed_chunks
from broker.credentials.errors import CredentialError
from broker.request import placeholders
from broker.request.locations import RequestParts
from broker.secret import SecretValue

# botocore logs the canonical request (session token included) at DEBUG.
logging.getLogger("botocore.auth").setLevel(logging.WARNING)

ALGORITHM = "AWS4-HMAC-SHA256"
_KEPT = ("UNSIGNED-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER")
_SIGNED_CHUNKS = (
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_AMZ_DATE = re.compile(r"^\d{8}T\d{6}Z$")
_QUERY_AUTH = {
    "x-amz-algorithm",
    "x-amz-credential",
    "x-amz-date",
    "x-amz-expires",
    "x-amz-signedheaders",
    "x-amz-signature",
    "x-amz-security-token",
}
# Set by the signer; the agent's copies are dropped.
_REPLACED = ("authorization", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256")


@dataclass(frozen=True)
class Credential:
    """What the agent's SigV4 credential says."""

    name: str
    """The secret named by the placeholder in the access key position."""
    date: str
    region: str
    service: str
    timestamp: str
    signed_headers: tuple[str, ...]
    presigned: bool
    expires: int = 0


@dataclass(frozen=True)
class AwsKeys:
    access_key_id: SecretValue
    secret_access_key: SecretValue
    session_token: SecretValue | None = None

    def botocore(self) -> BotoCredentials:
        token = self.session_token.reveal() if self.session_token else None
        return BotoCredentials(self.access_key_id.reveal(), self.secret_access_key.reveal(), token)


def _malformed(detail: str) -> CredentialError:
    return CredentialError("malformed_request", detail)


def _scope(credential: str, timestamp: str) -> tuple[str, str, str, str]:
    access, _, scope = credential.partition("/")
    date, region, service, term = [*scope.split("/"), "", "", ""][:4]
    names, _ = placeholders.find_names(access)
    if len(names) != 1 or placeholders.VALID_STR.fullmatch(access) is None:
        raise _malformed("the SigV4 access key is not exactly one <<secret:NAME>> placeholder")
    if term != "aws4_request" or scope.count("/") != 3 or not region or not service:
        raise _malformed("the SigV4 credential scope is not DATE/REGION/SERVICE/aws4_request")
    if not _AMZ_DATE.match(timestamp) or timestamp[:8] != date:
        raise _malformed("X-Amz-Date is missing or does not match the credential's date")
    return names[0], date, region, service


def _header(parts: RequestParts, name: str) -> str | None:
    got = [v for k, v in parts.headers if k.lower() == name]
    return ",".join(got) if got else None


def parse(parts: RequestParts) -> Credential | None:
    """The SigV4 credential of the request, or None when it has none."""
    auth = _header(parts, "authorization")
    if auth is not None and auth.strip().startswith(ALGORITHM + " "):
        fields = dict(
            f.strip().partition("=")[::2] for f in auth.strip()[len(ALGORITHM) :].split(",")
        )
        timestamp = _header(parts, "x-amz-date") or ""
        name, date, region, service = _scope(fields.get("Credential", ""), timestamp)
        signed = tuple(h for h in fields.get("SignedHeaders", "").split(";") if h)
        return Credential(name, date, region, service, timestamp, signed, presigned=False)
    query = {k.lower(): v for k, v in parse_qsl(parts.query, keep_blank_values=True)}
    if "x-amz-credential" not in query:
        return None
    if query.get("x-amz-algorithm") != ALGORITHM:
        raise _malformed("a presigned URL's X-Amz-Algorithm must be AWS4-HMAC-SHA256")
    expires = query.get("x-amz-expires", "")
    if not (expires.isascii() and expires.isdigit() and 1 <= int(expires) <= 604800):
        raise _malformed("a presigned URL's X-Amz-Expires must be 1-604800 seconds")
    timestamp = query.get("x-amz-date", "")
    name, date, region, service = _scope(query["x-amz-credential"], timestamp)
    signed = tuple(h for h in query.get("x-amz-signedheaders", "host").split(";") if h)
    return Credential(name, date, region, service, timestamp, signed, True, int(expires))


def is_sigv2(parts: RequestParts) -> bool:
    """A SigV2 request: ``Authorization: AWS KEY:SIG`` or a presigned ``AWSAccessKeyId=``."""
    auth = (_header(parts, "authorization") or "").strip()
    query = {k.lower() for k, _ in parse_qsl(parts.query, keep_blank_values=True)}
    return auth.startswith("AWS ") or "awsaccesskeyid" in query


def only_in_credential(parts: RequestParts, cred: Credential) -> bool:
    """The placeholder appears once, in the credential, and nowhere else."""
    texts: list[str | bytes] = [v for _, v in parts.headers]
    texts += [parts.path, parts.query, parts.body]
    return sum(placeholders.find_names(t)[0].count(cred.name) for t in texts) == 1


class _Signer(SigV4Auth):  # type: ignore[misc]
    """botocore's SigV4 with the agent's timestamp and a payload hash we chose."""

    def __init__(self, keys: BotoCredentials, cred: Credential, payload: str) -> None:
        super().__init__(keys, cred.service, cred.region)
        self._timestamp = cred.timestamp
        self._payload = payload

    def payload(self, request: AWSRequest) -> str:
        return self._payload

    def _normalize_url_path(self, path: str) -> str:
        if self._service_name == "s3":  # S3 signs the path as sent (S3SigV4Auth)
            return path
        return str(super()._normalize_url_path(path))

    def add_auth(self, request: AWSRequest) -> None:
        request.context["timestamp"] = self._timestamp
        self._modify_request_before_signing(request)
        canonical = self.canonical_request(request)
        signature = self.signature(self.string_to_sign(request, canonical), request)
        self._inject_signature_to_request(request, signature)


class _QuerySigner(SigV4QueryAuth, _Signer):  # type: ignore[misc]
    def __init__(self, keys: BotoCredentials, cred: Credential, body: bytes) -> None:
        # S3 presigns without a payload hash; other services hash the body.
        payload = "UNSIGNED-PAYLOAD" if cred.service == "s3" else hashlib.sha256(body).hexdigest()
        _Signer.__init__(self, keys, cred, payload)
        self._expires = cred.expires


def _url(scheme: str, authority: str, path: str, query: str) -> str:
    return f"{scheme}://{authority}{path}" + (f"?{query}" if query else "")


# The aws-chunked framing headers, gone once the body is plain.
_FRAMING = ("content-encoding", "x-amz-decoded-content-length", "x-amz-trailer")


def _signed_subset(
    parts: RequestParts, cred: Credential, authority: str, *, reframed: bool = False
) -> dict[str, str]:
    wanted = set(cred.signed_headers) - set(_REPLACED)
    if reframed:
        present = {k.lower() for k, _ in parts.headers}
        wanted -= {h for h in _FRAMING if h not in present}
    out: dict[str, str] = {}
    for k, v in parts.headers:
        lk = k.lower()
        if lk in wanted:
            out[lk] = f"{out[lk]},{v}" if lk in out else v
    if "host" in wanted and "host" not in out:
        out["host"] = authority  # HTTP/2: the agent signed :authority
    missing = wanted - set(out)
    if missing:
        raise _malformed(f"signed header {sorted(missing)[0]!r} is not in the request")
    return out


def resign(
    parts: RequestParts,
    cred: Credential,
    keys: AwsKeys,
    *,
    scheme: str,
    authority: str,
    method: str,
) -> RequestParts:
    """The request signed again with ``keys``. ``authority`` is the host (and
    port unless the scheme's default) the proxy connects to."""
    boto = keys.botocore()
    if cred.presigned:
        kept = "&".join(
            p
            for p in parts.query.split("&")
            if p and unquote(p.partition("=")[0]).lower() not in _QUERY_AUTH
        )
        req = AWSRequest(
            method,
            _url(scheme, authority, parts.path, kept),
            _signed_subset(parts, cred, authority),
        )
        _QuerySigner(boto, cred, parts.body).add_auth(req)
        query = req.url.partition("?")[2]
        return replace(parts, query=query)
    headers, body = list(parts.headers), parts.body
    mode = _header(parts, "x-amz-content-sha256")
    if mode in _SIGNED_CHUNKS:
        headers, body = _plain_body(headers, body, mode == _SIGNED_CHUNKS[1])
        payload = hashlib.sha256(body).hexdigest()
    elif mode in _KEPT:
        payload = mode
    elif mode is None or _HEX64.match(mode):
        payload = hashlib.sha256(body).hexdigest()
    else:
        raise _malformed(
            f"x-amz-content-sha256 {mode[:40]!r} is not a payload mode keybroker signs"
        )
    subset = _signed_subset(
        replace(parts, headers=tuple(headers)), cred, authority, reframed=mode in _SIGNED_CHUNKS
    )
    if mode is not None:
        subset["x-amz-content-sha256"] = payload
    req = AWSRequest(method, _url(scheme, authority, parts.path, parts.query), subset, body)
    _Signer(boto, cred, payload).add_auth(req)
    new = {k.lower(): v for k, v in req.headers.items() if k.lower() in _REPLACED}
    out: list[tuple[str, str]] = []
    for k, v in headers:
        lk = k.lower()
        if lk in _REPLACED:
            if lk in new:
                out.append((k, new.pop(lk)))
            continue
        out.append((k, v))
    out += [(k, v) for k, v in new.items()]
    return replace(parts, headers=tuple(out), body=body)


def _plain_body(
    headers: list[tuple[str, str]], body: bytes, trailer: bool
) -> tuple[list[tuple[str, str]], bytes]:
    """An aws-chunked body with chunk signatures, as a plain body with its
    checksum trailers moved into headers."""
    declared = next((v for k, v in headers if k.lower() == "x-amz-decoded-content-length"), "")
    try:
        data, trailers = decode_signed_chunks(body, trailer=trailer)
    except ChunkError as exc:
        raise _malformed(f"aws-chunked body: {exc}") from None
    if not declared.isdigit() or int(declared) != len(data):
        raise _malformed("x-amz-decoded-content-length does not match the aws-chunked body")
    out: list[tuple[str, str]] = []
    for k, v in headers:
        lk = k.lower()
        if lk in ("x-amz-decoded-content-length", "x-amz-trailer", "transfer-encoding"):
            continue
        if lk == "content-encoding":
            rest = [
                c.strip() for c in v.split(",") if c.strip() and c.strip().lower() != "aws-chunked"
            ]
            if rest:
                out.append((k, ", ".join(rest)))
            continue
        if lk == "content-length":
            v = str(len(data))
        out.append((k, v))
    if not any(k.lower() == "content-length" for k, _ in out):
        out.append(("content-length", str(len(data))))
    out += trailers
    return out, data
