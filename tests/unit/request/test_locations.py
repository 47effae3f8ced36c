"""Request locations (broker/locations.py): scanning each location, writing
values with the right encoding, refusing values that would break a header."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from urllib.parse import parse_qs, unquote

import pytest

from broker.request.locations import (
    Occurrence,
    RequestParts,
    ScanResult,
    SubstitutionError,
    body_kind,
    locations_of,
    scan,
    substitute,
)

VALUE = "sk_live_0123456789abcdef"  # fake secret used throughout


def parts(
    headers: tuple[tuple[str, str], ...] = (),
    path: str = "/",
    query: str = "",
    body: bytes = b"",
    content_type: str = "",
) -> RequestParts:
    return RequestParts(headers, path, query, body, content_type)


def b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def approve_all(value: str = VALUE) -> Callable[[str, str], str]:
    return lambda name, location: value


# --- scan -----------------------------------------------------------------------------------------

SCAN_CASES = [
    pytest.param(
        parts(headers=(("Authorization", "Bearer <<secret:k>>"),)),
        {("k", "header:authorization")},
        id="header-authorization-bearer",
    ),
    pytest.param(
        parts(headers=(("X-Api-Key", "<<secret:k>>"),)),
        {("k", "header:x-api-key")},
        id="header-name-lower-cased",
    ),
    pytest.param(
        parts(headers=(("Authorization", "Basic " + b64("user:<<secret:k>>")),)),
        {("k", "header:authorization")},
        id="header-basic-decoded",
    ),
    pytest.param(
        parts(headers=(("Authorization", "basic " + b64("<<secret:u>>:<<secret:p>>")),)),
        {("u", "header:authorization"), ("p", "header:authorization")},
        id="header-basic-lower-scheme-two-names",
    ),
    pytest.param(
        parts(headers=(("X-Other", "Basic " + b64("user:<<secret:k>>")),)),
        set(),
        id="basic-only-decoded-in-authorization",
    ),
    pytest.param(parts(path="/bot<<secret:k>>/send"), {("k", "path")}, id="path-raw"),
    pytest.param(parts(path="/bot%3C%3Csecret%3Ak%3E%3E/send"), {("k", "path")}, id="path-pct"),
    pytest.param(parts(query="key=<<secret:k>>"), {("k", "query")}, id="query-raw"),
    pytest.param(parts(query="key=%3c%3csecret:k%3e%3e"), {("k", "query")}, id="query-pct-lower"),
    pytest.param(
        parts(body=b'{"key": "<<secret:k>>"}', content_type="application/json"),
        {("k", "body")},
        id="body-json",
    ),
    pytest.param(
        parts(
            body=b'{"key": "\\u003c\\u003csecret:k\\u003e\\u003e"}', content_type="application/json"
        ),
        {("k", "body")},
        id="body-json-unicode-escapes",
    ),
    pytest.param(
        parts(
            body=b"a=1&key=%3C%3Csecret%3Ak%3E%3E",
            content_type="application/x-www-form-urlencoded",
        ),
        {("k", "body")},
        id="body-form-pct",
    ),
    pytest.param(parts(body=b"token <<secret:k>>"), {("k", "body")}, id="body-raw"),
    pytest.param(
        parts(
            headers=(("X-Api-Key", "<<secret:a>>"),),
            path="/p/<<secret:b>>",
            query="q=<<secret:c>>",
            body=b"<<secret:d>>",
        ),
        {("a", "header:x-api-key"), ("b", "path"), ("c", "query"), ("d", "body")},
        id="every-location",
    ),
    pytest.param(parts(headers=(("X", "plain"),), path="/v1", query="a=b"), set(), id="none"),
]


@pytest.mark.parametrize(("request_parts", "expected"), SCAN_CASES)
def test_scan_finds_each_location(
    request_parts: RequestParts, expected: set[tuple[str, str]]
) -> None:
    result = scan(request_parts)
    assert {(o.name, o.location) for o in result.occurrences} == expected
    assert result.malformed is None


def test_scan_deduplicates_but_keeps_order() -> None:
    result = scan(
        parts(
            headers=(("X-B", "<<secret:b>>"), ("X-A", "<<secret:a>> <<secret:b>>")),
            query="x=<<secret:b>>&y=<<secret:b>>",
        )
    )
    assert result.occurrences == (
        Occurrence("b", "header:x-b"),
        Occurrence("a", "header:x-a"),
        Occurrence("b", "header:x-a"),
        Occurrence("b", "query"),
    )
    assert result.names == ("b", "a")
    assert locations_of(result, "b") == {"header:x-b", "header:x-a", "query"}
    assert locations_of(result, "zzz") == set()


@pytest.mark.parametrize(
    ("request_parts", "location"),
    [
        pytest.param(parts(headers=(("X-Key", "<<SECRET:k>>"),)), "header:x-key", id="header"),
        pytest.param(
            parts(headers=(("Authorization", "Basic " + b64("u:<<secret:bad name>>")),)),
            "header:authorization",
            id="basic-decoded",
        ),
        pytest.param(parts(path="/<<secret:k"), "path", id="path"),
        pytest.param(parts(query="a=%3C%3Csecret%3Abad%20name%3E%3E"), "query", id="query"),
        pytest.param(parts(body=b"<<secret:a\r\nb>>"), "body", id="body"),
        pytest.param(
            parts(headers=(("X-Ok", "<<secret:ok>>"),), path="/<<secret:>>", body=b"<<secret:x"),
            "path",
            id="first-malformed-location",
        ),
    ],
)
def test_scan_reports_malformed_location(request_parts: RequestParts, location: str) -> None:
    assert scan(request_parts).malformed == location


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("Basic é<<secret:k>>", id="non-ascii-credentials"),
        pytest.param("Basic not-base64!!", id="not-base64"),
        pytest.param("Basic " + base64.b64encode(b"\xff\xfe:x").decode(), id="not-utf8"),
        pytest.param("Basic", id="no-credentials"),
    ],
)
def test_undecodable_basic_is_scanned_as_literal_text(header: str) -> None:
    request = parts(headers=(("Authorization", header),))
    result = scan(request)  # must not raise
    expected = {("k", "header:authorization")} if "<<secret:k>>" in header else set()
    assert {(o.name, o.location) for o in result.occurrences} == expected
    assert substitute(request, approve_all()).headers[0][1] == header.replace("<<secret:k>>", VALUE)


@pytest.mark.parametrize(
    ("content_type", "kind"),
    [
        pytest.param("application/json", "json", id="json"),
        pytest.param("application/json; charset=utf-8", "json", id="json-charset"),
        pytest.param("APPLICATION/JSON", "json", id="json-upper"),
        pytest.param("application/vnd.api+json", "json", id="json-suffix"),
        pytest.param("application/x-www-form-urlencoded", "form", id="form"),
        pytest.param("application/x-www-form-urlencoded;charset=UTF-8", "form", id="form-charset"),
        pytest.param("text/plain", "raw", id="text"),
        pytest.param("multipart/form-data; boundary=x", "raw", id="multipart"),
        pytest.param("", "raw", id="none"),
    ],
)
def test_body_kind(content_type: str, kind: str) -> None:
    assert body_kind(content_type) == kind


# --- substitute -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param("Bearer <<secret:k>>", f"Bearer {VALUE}", id="bearer"),
        pytest.param("<<secret:k>>", VALUE, id="whole-value"),
        pytest.param("token=%3C%3Csecret%3Ak%3E%3E", f"token={VALUE}", id="percent-spelling"),
    ],
)
def test_substitute_header(header: str, expected: str) -> None:
    out = substitute(parts(headers=(("Authorization", header),)), approve_all())
    assert out.headers == (("Authorization", expected),)


@pytest.mark.parametrize(
    ("scheme", "payload", "expected"),
    [
        pytest.param("Basic", "user:<<secret:k>>", f"user:{VALUE}", id="password"),
        pytest.param("basic", "<<secret:k>>:x", f"{VALUE}:x", id="user-lower-scheme"),
        pytest.param("Basic", "<<secret:k>>:<<secret:k>>", f"{VALUE}:{VALUE}", id="both"),
    ],
)
def test_substitute_basic_credentials_are_re_encoded(
    scheme: str, payload: str, expected: str
) -> None:
    seen: list[tuple[str, str]] = []

    def approve(name: str, location: str) -> str:
        seen.append((name, location))
        return VALUE

    out = substitute(parts(headers=(("Authorization", f"{scheme} {b64(payload)}"),)), approve)
    [(name, value)] = out.headers
    got_scheme, _, cred = value.partition(" ")
    assert (name, got_scheme) == ("Authorization", scheme)
    assert base64.b64decode(cred, validate=True).decode() == expected
    assert set(seen) == {("k", "header:authorization")}


def test_basic_with_unapproved_placeholder_is_unchanged() -> None:
    header = "Basic " + b64("user:<<secret:k>>")
    out = substitute(parts(headers=(("Authorization", header),)), lambda n, loc: None)
    assert out.headers == (("Authorization", header),)


SPECIAL = "a b&c=d/e?f#g%h+i:j;k@lé\"'\\<>"


def test_substitute_query_percent_encodes_every_reserved_character() -> None:
    out = substitute(parts(query="key=<<secret:k>>&x=1"), approve_all(SPECIAL))
    encoded = out.query.removeprefix("key=").removesuffix("&x=1")
    assert not set(encoded) & set(" &=/?#+:;@\"'\\<>é")
    assert unquote(encoded) == SPECIAL
    assert parse_qs(out.query) == {"key": [SPECIAL], "x": ["1"]}


def test_substitute_query_percent_spelling() -> None:
    out = substitute(parts(query="key=%3C%3Csecret%3Ak%3E%3E"), approve_all("a b/c"))
    assert out.query == "key=a%20b%2Fc"


def test_substitute_path_encodes_slash_and_keeps_segment_safe_characters() -> None:
    out = substitute(parts(path="/bot<<secret:k>>/send"), approve_all("123:ABC/d e?f#%é"))
    assert out.path == "/bot123:ABC%2Fd%20e%3Ff%23%25%C3%A9/send"
    assert out.path.count("/") == 2
    assert unquote(out.path) == "/bot123:ABC/d e?f#%é/send"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param('quo"te', id="quote"),
        pytest.param("back\\slash", id="backslash"),
        pytest.param("line\nbreak\ttab\r", id="control"),
        pytest.param("unicodé ☃ \U0001f600", id="unicode"),
        pytest.param("</script>\u2028", id="html-and-line-separator"),
        pytest.param("\0nul", id="nul"),
    ],
)
def test_substitute_json_body_escapes_the_value(value: str) -> None:
    body = b'{"key": "<<secret:k>>", "other": "\\u003c\\u003csecret:k\\u003e\\u003e"}'
    out = substitute(parts(body=body, content_type="application/json"), approve_all(value))
    assert json.loads(out.body) == {"key": value, "other": value}
    out.body.decode("ascii")  # escaped to ASCII


def test_substitute_form_body_percent_encodes_the_value() -> None:
    value = "a b&c=d+e%é"
    body = b"user=x&key=%3C%3Csecret%3Ak%3E%3E&raw=<<secret:k>>"
    out = substitute(
        parts(body=body, content_type="application/x-www-form-urlencoded"), approve_all(value)
    )
    assert parse_qs(out.body.decode("ascii")) == {"user": ["x"], "key": [value], "raw": [value]}


def test_substitute_raw_body_writes_utf8() -> None:
    out = substitute(
        parts(body=b"token=<<secret:k>>;", content_type="text/plain"), approve_all('é"')
    )
    assert out.body == 'token=é";'.encode()


@pytest.mark.parametrize("bad", ["\r", "\n", "\r\n", "\0"], ids=["cr", "lf", "crlf", "nul"])
@pytest.mark.parametrize(
    "header",
    [
        pytest.param(("X-Api-Key", "<<secret:k>>"), id="plain-header"),
        pytest.param(("Authorization", "Bearer <<secret:k>>"), id="bearer"),
        pytest.param(("Authorization", "Basic " + b64("u:<<secret:k>>")), id="basic"),
    ],
)
def test_header_value_with_line_break_or_nul_is_refused(bad: str, header: tuple[str, str]) -> None:
    value = f"sk_live_{bad}Injected: yes"
    with pytest.raises(SubstitutionError) as info:
        substitute(parts(headers=(header,)), approve_all(value))
    assert value not in str(info.value)
    assert "sk_live_" not in str(info.value)
    assert "Injected" not in str(info.value)


@pytest.mark.parametrize("bad", ["\r\n", "\0"], ids=["crlf", "nul"])
def test_line_breaks_are_fine_outside_headers(bad: str) -> None:
    value = f"a{bad}b"
    out = substitute(
        parts(path="/<<secret:k>>", query="q=<<secret:k>>", body=b"<<secret:k>>"),
        approve_all(value),
    )
    assert bad not in out.path and bad not in out.query
    assert out.body == value.encode()


def test_unapproved_placeholders_stay_literal() -> None:
    calls: list[tuple[str, str]] = []

    def approve(name: str, location: str) -> str | None:
        calls.append((name, location))
        return VALUE if (name, location) == ("k", "header:authorization") else None

    request = parts(
        headers=(("Authorization", "Bearer <<secret:k>>"), ("X-Api-Key", "<<secret:k>>")),
        path="/v1/<<secret:k>>",
        query="a=%3C%3Csecret%3Ak%3E%3E&b=<<secret:other>>",
        body=b'{"k": "<<secret:k>>"}',
        content_type="application/json",
    )
    out = substitute(request, approve)
    assert out.headers == (("Authorization", f"Bearer {VALUE}"), ("X-Api-Key", "<<secret:k>>"))
    assert out.path == request.path
    assert out.query == request.query
    assert out.body == request.body
    assert set(calls) == {
        ("k", "header:authorization"),
        ("k", "header:x-api-key"),
        ("k", "path"),
        ("k", "query"),
        ("other", "query"),
        ("k", "body"),
    }


def test_substitute_leaves_malformed_and_look_alikes_alone() -> None:
    request = parts(
        headers=(("X-Key", "<<SECRET:k>> \uff1c\uff1csecret:k\uff1e\uff1e"),),
        query="a=<<secret:bad name>>",
        body=b"<<secret:k",
    )
    assert substitute(request, approve_all()) == request


def test_scan_result_names_of_empty() -> None:
    assert ScanResult((), None).names == ()
