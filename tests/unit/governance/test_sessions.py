"""Session tokens: signed, bound to tenant and tenant token, expiring."""

from __future__ import annotations

import pytest

from broker.governance import sessions

KEY = b"k" * 32
DIGEST = "a" * 64


def test_round_trip() -> None:
    token = sessions.mint(KEY, "acme", DIGEST, 3600, now=1000)
    assert token.startswith("kbs1.")
    s = sessions.verify(KEY, token, "acme", DIGEST, now=1001)
    assert s is not None and s.tenant == "acme" and s.expires == 4600
    assert sessions.parse(token) == s
    assert token not in repr(s)


def _flip(token: str, i: int) -> str:
    c = token[i]
    return token[:i] + ("A" if c != "A" else "B") + token[i + 1 :]


@pytest.mark.parametrize(
    ("case", "change"),
    [
        ("other key", lambda t: (b"x" * 32, t, "acme", DIGEST, 1001)),
        ("other tenant", lambda t: (KEY, t, "globex", DIGEST, 1001)),
        ("tenant token rotated", lambda t: (KEY, t, "acme", "b" * 64, 1001)),
        ("expired", lambda t: (KEY, t, "acme", DIGEST, 4600)),
        ("payload edited", lambda t: (KEY, _flip(t, 8), "acme", DIGEST, 1001)),
        ("mac edited", lambda t: (KEY, _flip(t, len(t) - 3), "acme", DIGEST, 1001)),
        ("mac cut", lambda t: (KEY, t.rsplit(".", 1)[0] + ".", "acme", DIGEST, 1001)),
        ("no prefix", lambda t: (KEY, t[5:], "acme", DIGEST, 1001)),
        ("empty key", lambda t: (b"", t, "acme", DIGEST, 1001)),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_refused(case: str, change) -> None:  # type: ignore[no-untyped-def]
    token = sessions.mint(KEY, "acme", DIGEST, 3600, now=1000)
    key, tok, tenant, digest, now = change(token)
    assert sessions.verify(key, tok, tenant, digest, now=now) is None


def test_forged_claims_need_the_key() -> None:
    """Re-encoding the payload with another tenant keeps the old MAC: refused."""
    import base64
    import json

    token = sessions.mint(KEY, "acme", DIGEST, 3600, now=1000)
    payload, mac = token[5:].split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=="))
    body["t"], body["e"] = "globex", 9_999_999_999
    forged = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    assert sessions.verify(KEY, f"kbs1.{forged}.{mac}", "globex", DIGEST, now=1001) is None


@pytest.mark.parametrize(
    "junk", ["", "kbs1.", "kbs1.e30.", "kbs1.!!!.x", "kbs1.bnVsbA.x", "x" * 600]
)
def test_parse_junk(junk: str) -> None:
    assert sessions.parse(junk) is None
    assert sessions.verify(KEY, junk, "acme", DIGEST) is None


def test_identity_round_trip() -> None:
    s = sessions.Session("ab" * 12, "acme", 123)
    assert sessions.from_identity(sessions.identity(s, DIGEST)) == ("ab" * 12, 123, DIGEST)
    assert sessions.from_identity(DIGEST) is None
