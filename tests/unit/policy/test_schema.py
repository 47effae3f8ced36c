"""broker/schema.py: the helpers behind the policy models (path globs, the
listen address). The models themselves are tested through loading, in
test_policy.py."""

from __future__ import annotations

import pytest

from broker.policy.schema import parse_listen
from broker.policy.secret_rule import glob_to_regex


@pytest.mark.parametrize(
    ("glob", "path", "matches"),
    [
        pytest.param("/v1/*", "/v1/charges", True, id="star"),
        pytest.param("/v1/*", "/v1/a/b", True, id="star-crosses-slash"),
        pytest.param("/v1/*", "/v1/", True, id="star-empty"),
        pytest.param("/v1/*", "/v1", False, id="star-needs-slash"),
        pytest.param("/v1/*", "/v2/charges", False, id="other-prefix"),
        pytest.param("/v1/*", "/x/v1/charges", False, id="anchored-start"),
        pytest.param("/v1/charges", "/v1/charges/x", False, id="anchored-end"),
        pytest.param("/bot?/x", "/bot1/x", True, id="question-one-char"),
        pytest.param("/bot?/x", "/bot12/x", False, id="question-only-one"),
        pytest.param("/bot?/x", "/bot//x", False, id="question-not-slash"),
        pytest.param("/a.b", "/aXb", False, id="dot-literal"),
        pytest.param("/a+b", "/aab", False, id="plus-literal"),
        pytest.param("/a(b)", "/a(b)", True, id="parens-literal"),
        pytest.param("/v1/*", "/v1/x\n", True, id="newline-in-star"),
    ],
)
def test_glob_to_regex(glob: str, path: str, matches: bool) -> None:
    assert (glob_to_regex(glob).match(path) is not None) is matches


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        pytest.param("127.0.0.1:8080", ("127.0.0.1", 8080), id="ipv4"),
        pytest.param("localhost:1", ("localhost", 1), id="name-port-1"),
        pytest.param("0.0.0.0:65535", ("0.0.0.0", 65535), id="port-65535"),
        pytest.param("[::1]:8080", ("::1", 8080), id="ipv6-brackets"),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected
