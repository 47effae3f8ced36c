"""Range requests towards hosts that can know a value (issue 12 item 6)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker.policy.load import parse_policy
from broker.policy.schema import Policy
from broker.request.decision import Destination
from broker.request.locations import RequestParts
from broker.scrub.ranges import strip_ranges


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Policy:
    tmp: Path = tmp_path_factory.mktemp("p")
    data: dict[str, Any] = {
        "version": 1,
        "certs_dir": str(tmp / "certs"),
        "audit": {"path": str(tmp / "a.jsonl")},
        "backends": {"local": {"type": "env"}},
        "tenants": {
            "acme": {
                "token_sha256": "a" * 64,
                "secrets": {"api": {"backend": "local", "path": "K", "hosts": ["*.example.com"]}},
            },
        },
    }
    return parse_policy(data, "t.yaml", tmp)


def parts(*headers: tuple[str, str]) -> RequestParts:
    return RequestParts(headers=(("Accept", "*/*"), *headers), path="/", query="", body=b"")


def dest(host: str, port: int = 443) -> Destination:
    return Destination.of("https", host, port, "GET", "/")


def test_ranges_removed_where_a_value_could_come_back(policy: Policy) -> None:
    p = parts(("Range", "bytes=0-9"), ("If-Range", '"etag"'), ("X-Other", "1"))
    out = strip_ranges(policy, dest("api.example.com"), p)
    assert out is not None and out.headers == (("Accept", "*/*"), ("X-Other", "1"))


@pytest.mark.parametrize(
    ("d", "p"),
    [
        pytest.param(dest("files.other.net"), parts(("Range", "bytes=0-9")), id="other-host"),
        pytest.param(dest("api.example.com", 8443), parts(("Range", "bytes=0-9")), id="other-port"),
        pytest.param(dest("api.example.com"), parts(), id="no-range"),
    ],
)
def test_ranges_kept_elsewhere(policy: Policy, d: Destination, p: RequestParts) -> None:
    assert strip_ranges(policy, d, p) is None
