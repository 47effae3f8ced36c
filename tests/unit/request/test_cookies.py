from __future__ import annotations

import pytest

from broker.request.cookies import drop_refused
from broker.request.locations import RequestParts


def parts(*headers: tuple[str, str]) -> RequestParts:
    return RequestParts(headers=headers, path="/", query="", body=b"")


def allowed(name: str) -> bool:
    return name == "ok"


@pytest.mark.parametrize(
    ("cookie", "kept", "dropped"),
    [
        pytest.param("a=1; b=2", "a=1; b=2", [], id="no-placeholder"),
        pytest.param("k=<<secret:stripe>>", None, ["stripe"], id="only-pair"),
        pytest.param("a=1; k=<<secret:stripe>>; b=2", "a=1; b=2", ["stripe"], id="middle"),
        pytest.param("k=<<secret:ok>>", "k=<<secret:ok>>", [], id="allowed-kept"),
        pytest.param("k=%3C%3Csecret:stripe%3E%3E", None, ["stripe"], id="percent-encoded"),
        pytest.param("k=<<secret:bad name>>", "k=<<secret:bad name>>", [], id="malformed-left"),
        pytest.param("k=<<secret:ok>>x<<secret:no>>", None, ["no", "ok"], id="mixed-pair"),
    ],
)
def test_drop_refused(cookie: str, kept: str | None, dropped: list[str]) -> None:
    before = parts(("Host", "h"), ("Cookie", cookie))
    after, names = drop_refused(before, allowed)
    assert names == dropped
    if not dropped:
        assert after is before
        return
    cookies = [v for k, v in after.headers if k == "Cookie"]
    assert cookies == ([kept] if kept else [])
    assert ("Host", "h") in after.headers


def test_other_headers_are_never_touched() -> None:
    before = parts(("Authorization", "Bearer <<secret:stripe>>"))
    assert drop_refused(before, allowed) == (before, [])
