"""Per-flow helpers shared by the hooks (addons/flows.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import tutils

from addons.flows import frame_body, guarded, strip_proxy_headers


class Recorder:
    def __init__(self) -> None:
        self.failed: list[tuple[str, str]] = []
        self.flows = self

    def fail_closed(self, flow: Any, hook: str, exc: BaseException) -> None:
        self.failed.append((hook, type(exc).__name__))

    @guarded
    def sync_hook(self, flow: Any) -> str:
        if flow == "boom":
            raise KeyError("kb-canary")
        return "ok"

    @guarded
    async def async_hook(self, flow: Any) -> str:
        if flow == "boom":
            raise ValueError("kb-canary")
        return "ok"


def test_guarded_hooks_fail_closed_sync_and_async() -> None:
    r = Recorder()
    assert r.sync_hook("fine") == "ok"
    assert r.sync_hook("boom") is None
    assert asyncio.run(r.async_hook("fine")) == "ok"
    assert asyncio.run(r.async_hook("boom")) is None
    assert r.failed == [("sync_hook", "KeyError"), ("async_hook", "ValueError")]


@pytest.mark.parametrize(
    ("headers", "content", "expected"),
    [
        pytest.param({}, b"abc", "3", id="unframed-body-gets-a-length"),
        pytest.param({"transfer-encoding": "chunked"}, b"abc", None, id="chunked-left-alone"),
        pytest.param({"content-length": "3"}, b"abc", "3", id="length-kept"),
        pytest.param({}, b"", None, id="no-body-no-length"),
    ],
)
def test_frame_body(headers: dict[str, str], content: bytes, expected: str | None) -> None:
    req = tutils.treq(content=b"")
    req.headers.clear()
    req.headers.update(headers)
    req.raw_content = content
    frame_body(req)
    assert req.headers.get("content-length") == expected


def test_strip_proxy_headers_removes_every_spelling_and_keeps_the_rest() -> None:
    headers = http.Headers(
        [
            (b"Proxy-Authorization", b"Basic a2I6Y2FuYXJ5"),
            (b"accept", b"*/*"),
            (b"PROXY-CONNECTION", b"keep-alive"),
            (b"proxy-authorization", b"Basic c2Vjb25k"),
            (b"x-proxy-authorization-like", b"kept"),
        ]
    )
    strip_proxy_headers(headers)
    assert headers.fields == ((b"accept", b"*/*"), (b"x-proxy-authorization-like", b"kept"))
