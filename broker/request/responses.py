"""One function maps decisions to the response an agent gets (DESIGN.md §5)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from broker.request.decision import Decision, Destination, Reason

_DETAIL: dict[Reason, str] = {
    Reason.UNAUTHENTICATED: (
        "Send Proxy-Authorization: Basic base64(tenant:token); `keybroker env` prints "
        "proxy variables that carry it."
    ),
    Reason.MALFORMED_PLACEHOLDER: (
        "Write placeholders exactly as <<secret:NAME>> with NAME made of letters, digits, "
        "'.', '_' or '-' (at most 64)."
    ),
    Reason.MALFORMED_REQUEST: (
        "The request is one HTTP parsers could read differently (obs-fold, a bare CR/LF/NUL "
        "or control byte in a field, conflicting framing, a lower-case method, ...); "
        "send a plain RFC 9112 request."
    ),
    Reason.UNKNOWN_SECRET: "Your tenant has no secret named {secret!r}; ask an operator to add it.",
    Reason.HOST_NOT_ALLOWED: "Secret {secret!r} may not be sent to {host}.",
    Reason.PORT_NOT_ALLOWED: "Secret {secret!r} may not be sent to port {port}.",
    Reason.SCHEME_NOT_ALLOWED: "Secret {secret!r} may not be sent over {scheme}; use https.",
    Reason.METHOD_NOT_ALLOWED: "Secret {secret!r} may not be used with {method}.",
    Reason.PATH_NOT_ALLOWED: "Secret {secret!r} may not be used on this path.",
    Reason.LOCATION_NOT_ALLOWED: (
        "Secret {secret!r} is not allowed where it was placed; put it where the policy "
        "allows (by default the Authorization header)."
    ),
    Reason.RAW_SECRET_EGRESS: (
        "The request carries a raw secret value to a destination not allowed for it; "
        "use the <<secret:NAME>> placeholder instead of the value."
    ),
    Reason.EGRESS_DENIED: (
        "Your tenant may not connect to {host}:{port}; ask an operator to add it to egress.allow."
    ),
    Reason.PRIVATE_ADDRESS: (
        "{host} is or resolves to a private address your tenant may not reach; an operator "
        "can name it in egress.allow or list its range in egress.private."
    ),
    Reason.BACKEND_UNAVAILABLE: "The secret store is unreachable; retry later.",
    Reason.SECRET_NOT_FOUND: "Secret {secret!r} is not in the secret store; ask an operator.",
    Reason.INTERNAL_ERROR: "keybroker failed while handling this request; nothing was sent.",
    Reason.AUDIT_UNAVAILABLE: "keybroker cannot write its audit log; nothing was sent. Retry later.",
    Reason.RATE_LIMITED: (
        "Secret {secret!r} is used too often for its rate limit, or too many of your "
        "requests already await an operator's approval; retry after the Retry-After "
        "header's seconds."
    ),
    Reason.USES_EXHAUSTED: "Secret {secret!r} has no uses left; ask an operator.",
    Reason.APPROVAL_DENIED: "An operator denied this use of secret {secret!r}; nothing was sent.",
    Reason.APPROVAL_TIMEOUT: (
        "No operator approved this use of secret {secret!r} in time; nothing was sent. "
        "Retry once an operator is available."
    ),
    Reason.STATE_UNAVAILABLE: (
        "keybroker's shared state store is unreachable; nothing was sent. Retry later."
    ),
    Reason.PROTOCOL_NOT_ALLOWED: (
        "keybroker relays HTTP and version-13 WebSocket only; this connection asked for "
        "(or the upstream switched to) another protocol."
    ),
    Reason.UPSTREAM_UNREACHABLE: "keybroker could not connect to {host}:{port}; retry later.",
    Reason.UPSTREAM_TLS_FAILED: (
        "The TLS connection to {host}:{port} failed (keybroker always verifies the "
        "upstream certificate)."
    ),
    Reason.UPSTREAM_PROTOCOL_ERROR: (
        "{host}:{port} sent a response keybroker refuses to relay (malformed, or a "
        "protocol keybroker does not relay); nothing of it was passed on."
    ),
    Reason.BODY_TOO_LARGE: "The body is larger than keybroker's limit.",
    Reason.UNDECODABLE_BODY: "The body's Content-Encoding could not be decoded.",
    Reason.TOKEN_UNAVAILABLE: (
        "keybroker could not obtain a token for secret {secret!r} from its issuer; "
        "nothing was sent. Retry later or ask an operator."
    ),
    Reason.SERVICE_NOT_ALLOWED: "Secret {secret!r} may not sign requests for this AWS service.",
    Reason.REGION_NOT_ALLOWED: "Secret {secret!r} may not sign requests for this AWS region.",
    Reason.CAPTURE_REFUSED: (
        "The upstream issued a token keybroker's capture rule names, but it could not be "
        "captured safely (too weak, malformed, or the answer too large); the response was "
        "withheld."
    ),
    Reason.CREDENTIAL_VENDING: (
        "Secret {secret!r} may not sign an AWS call that issues credentials (STS, IAM "
        "access keys, SSO, Cognito): the answer would hand out raw keys."
    ),
    Reason.UNPROTECTABLE_SECRET: (
        "Secret {secret!r} is too short or too guessable for keybroker to keep out of "
        "responses; an operator must store a stronger value."
    ),
}


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def reply_for(decision: Decision, dest: Destination | None = None) -> Reply:
    """The JSON body and ``X-Keybroker-Decision`` header for a denial or error;
    ``dest`` (when known) names what was refused in ``detail``."""
    reason = decision.reason or Reason.INTERNAL_ERROR
    detail = _DETAIL[reason].format(
        secret=decision.secret,
        host=dest.host if dest else "",
        port=dest.port if dest else 0,
        scheme=dest.scheme if dest else "",
        method=dest.method if dest else "",
    )
    body = {
        "error": "keybroker",
        "decision": decision.verdict,
        "reason": reason.value,
        "secret": decision.secret,
        "tenant": decision.tenant,
        "detail": detail,
    }
    headers = {
        "content-type": "application/json",
        "x-keybroker-decision": f"{decision.verdict}; reason={reason.value}",
        "cache-control": "no-store",
    }
    if reason is Reason.UNAUTHENTICATED:
        headers["proxy-authenticate"] = 'Basic realm="keybroker"'
    status = decision.status or 502
    return Reply(status, headers, json.dumps(body).encode())
