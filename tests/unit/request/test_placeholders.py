"""The placeholder grammar (broker/placeholders.py): spellings, malformed
openers, look-alikes, replacement."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.request.placeholders import (
    find_names,
    might_contain,
    placeholder,
    replace_bytes,
    replace_str,
)

N64 = "n" * 64
N65 = "n" * 65


def both(text: str) -> list[str | bytes]:
    return [text, text.encode("utf-8")]


FOUND = [
    pytest.param("<<secret:stripe>>", ["stripe"], id="raw"),
    pytest.param("Bearer <<secret:stripe>>", ["stripe"], id="raw-in-text"),
    pytest.param("<<secret:a.b-c_9>>", ["a.b-c_9"], id="name-punctuation"),
    pytest.param("<<secret:CamelCase>>", ["CamelCase"], id="name-case-kept"),
    pytest.param(f"<<secret:{N64}>>", [N64], id="name-64-chars"),
    pytest.param("%3C%3Csecret%3Astripe%3E%3E", ["stripe"], id="percent-upper"),
    pytest.param("%3c%3csecret%3astripe%3e%3e", ["stripe"], id="percent-lower"),
    pytest.param("%3C%3Csecret:stripe%3E%3E", ["stripe"], id="percent-raw-colon"),
    pytest.param("%3c<secret%3Astripe>%3E", ["stripe"], id="percent-mixed"),
    pytest.param("\\u003c\\u003csecret:stripe\\u003e\\u003e", ["stripe"], id="json-escape"),
    pytest.param("\\u003C\\u003Csecret:stripe\\u003E\\u003E", ["stripe"], id="json-escape-upper"),
    pytest.param("<<<secret:a>>>", ["a"], id="extra-angles-around"),
    pytest.param("<<secret:a>><<secret:b>>", ["a", "b"], id="adjacent"),
    pytest.param("x=<<secret:a>>&y=%3C%3Csecret%3Ab%3E%3E", ["a", "b"], id="two-spellings"),
    pytest.param("<<secret:a>> and <<secret:a>>", ["a", "a"], id="repeated"),
]


@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
@pytest.mark.parametrize(("text", "names"), FOUND)
def test_valid_placeholders_are_found(text: str, names: list[str], as_bytes: bool) -> None:
    subject: str | bytes = text.encode("utf-8") if as_bytes else text
    assert find_names(subject) == (names, False)


MALFORMED = [
    pytest.param("<<secret:bad name>>", [], id="space-in-name"),
    pytest.param("<<secret:a/b>>", [], id="slash-in-name"),
    pytest.param("<<secret:clé>>", [], id="non-ascii-name"),
    pytest.param(f"<<secret:{N65}>>", [], id="name-65-chars"),
    pytest.param("<<secret:>>", [], id="empty-name"),
    pytest.param("<<SECRET:x>>", [], id="upper-case-keyword"),
    pytest.param("<<Secret:x>>", [], id="title-case-keyword"),
    pytest.param("%3C%3CSECRET%3Ax%3E%3E", [], id="percent-upper-keyword"),
    pytest.param("<< secret:x>>", [], id="space-after-angles"),
    pytest.param("< <secret:x>>", [], id="space-between-angles"),
    pytest.param("<<secret :x>>", [], id="space-before-colon"),
    pytest.param("<<secret: x>>", [], id="space-after-colon"),
    pytest.param("<<secret:x >>", [], id="space-before-close"),
    pytest.param("<<\tsecret:x>>", [], id="tab"),
    pytest.param("<<secret:abc", [], id="unterminated"),
    pytest.param("<<secret:abc>", [], id="one-closing-angle"),
    pytest.param("<<secret:abc> >", [], id="split-closing"),
    pytest.param("<<secret:a\r\nb>>", [], id="crlf-inside"),
    pytest.param("<<secret:a\0b>>", [], id="nul-inside"),
    pytest.param("<<secret:\r\n>>", [], id="only-crlf"),
    pytest.param("<<secret:<<secret:a>>>>", ["a"], id="nested"),
    pytest.param("<<secret:ok>> <<secret:bad!>>", ["ok"], id="one-good-one-bad"),
    pytest.param("%3C%3Csecret%3Abad%20name%3E%3E", [], id="percent-bad-name"),
    pytest.param("\\u003c\\u003csecret:a b\\u003e\\u003e", [], id="json-bad-name"),
]


@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
@pytest.mark.parametrize(("text", "names"), MALFORMED)
def test_malformed_openers(text: str, names: list[str], as_bytes: bool) -> None:
    subject: str | bytes = text.encode("utf-8") if as_bytes else text
    assert find_names(subject) == (names, True)


JUST_TEXT = [
    pytest.param("", id="empty"),
    pytest.param("no placeholder here", id="plain"),
    pytest.param("my secret: is safe", id="word-secret"),
    pytest.param("<secret:x>", id="single-angles"),
    pytest.param("secret:x", id="no-angles"),
    pytest.param("<<secrets:x>>", id="other-keyword"),
    pytest.param("<<secretx>>", id="no-colon"),
    pytest.param("<<>>", id="empty-angles"),
    pytest.param("&lt;&lt;secret:x&gt;&gt;", id="html-entities"),
    pytest.param("\uff1c\uff1csecret:x\uff1e\uff1e", id="fullwidth-angles"),
    pytest.param("\u2039\u2039secret:x\u203a\u203a", id="single-guillemets"),
    pytest.param("«secret:x»", id="double-guillemets"),
    pytest.param("\ufe64\ufe64secret:x\ufe65\ufe65", id="small-form-angles"),
    pytest.param("<<secret\uff1ax>>", id="fullwidth-colon"),
    pytest.param("<<\u017fecret:x>>", id="long-s-look-alike"),
    pytest.param("<<\uff53ecret:x>>", id="fullwidth-s"),
    pytest.param("<\u00a0<secret:x>>", id="nbsp-between-angles"),
    pytest.param("%3C%3Csecret%253Ax%3E%3E", id="double-encoded-colon"),
]


@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
@pytest.mark.parametrize("text", JUST_TEXT)
def test_look_alikes_are_just_text(text: str, as_bytes: bool) -> None:
    subject: str | bytes = text.encode("utf-8") if as_bytes else text
    assert find_names(subject) == ([], False)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", False, id="empty"),
        pytest.param("hello world", False, id="plain"),
        pytest.param("<<secret:x>>", True, id="placeholder"),
        pytest.param("SECRET", True, id="upper-keyword"),
        pytest.param("sECRET", True, id="mixed-keyword"),
    ],
)
def test_might_contain(text: str, expected: bool) -> None:
    assert might_contain(text) is expected
    assert might_contain(text.encode()) is expected


def test_placeholder_builds_the_raw_form() -> None:
    assert placeholder("stripe") == "<<secret:stripe>>"
    assert find_names(placeholder("a.b-c_9")) == (["a.b-c_9"], False)


def test_replace_str_selects_by_name_and_keeps_the_rest() -> None:
    text = "a=<<secret:one>>&b=%3C%3Csecret%3Atwo%3E%3E&c=<<secret:three>>"
    out = replace_str(text, {"one": "V1", "two": "V2"}.get)
    assert out == "a=V1&b=V2&c=<<secret:three>>"


def test_replace_str_does_not_rescan_values() -> None:
    out = replace_str("<<secret:a>>", lambda n: "<<secret:b>>" if n == "a" else "B")
    assert out == "<<secret:b>>"


def test_replace_str_leaves_malformed_alone() -> None:
    text = "<<secret:bad name>> <<SECRET:x>>"
    assert replace_str(text, lambda n: "X") == text


def test_replace_bytes() -> None:
    data = b'{"k": "\\u003c\\u003csecret:k\\u003e\\u003e", "o": "<<secret:other>>"}'
    out = replace_bytes(data, lambda n: b"VALUE" if n == "k" else None)
    assert out == b'{"k": "VALUE", "o": "<<secret:other>>"}'


def test_replace_reports_each_name_in_order() -> None:
    seen: list[str] = []

    def repl(name: str) -> None:
        seen.append(name)

    replace_str("<<secret:a>> <<secret:b>> %3C%3Csecret%3Aa%3E%3E", repl)
    assert seen == ["a", "b", "a"]


# --- properties -------------------------------------------------------------------------------------

# Any text that cannot start an opener in any spelling: no "<", "%" or "\".
_SAFE_ALPHABET = st.characters(exclude_characters="<%\\", codec="utf-8")
_safe_text = st.text(alphabet=_SAFE_ALPHABET, max_size=200)
_names = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True)

_LT = ["<", "%3C", "%3c", "\\u003c", "\\u003C"]
_GT = [">", "%3E", "%3e", "\\u003e", "\\u003E"]
_COLON = [":", "%3A", "%3a"]


@given(text=_safe_text)
def test_text_without_an_opener_has_no_names_and_no_malformed(text: str) -> None:
    assert find_names(text) == ([], False)
    assert find_names(text.encode("utf-8")) == ([], False)


@given(data=st.binary(max_size=200).filter(lambda b: not any(c in b for c in b"<%\\")))
def test_bytes_without_an_opener_have_no_names_and_no_malformed(data: bytes) -> None:
    assert find_names(data) == ([], False)


@given(
    name=_names,
    lt=st.tuples(st.sampled_from(_LT), st.sampled_from(_LT)),
    gt=st.tuples(st.sampled_from(_GT), st.sampled_from(_GT)),
    colon=st.sampled_from(_COLON),
    before=_safe_text,
    after=_safe_text,
)
def test_every_spelling_is_found(
    name: str,
    lt: tuple[str, str],
    gt: tuple[str, str],
    colon: str,
    before: str,
    after: str,
) -> None:
    spelled = f"{lt[0]}{lt[1]}secret{colon}{name}{gt[0]}{gt[1]}"
    text = before + spelled + after
    assert find_names(text) == ([name], False)
    assert find_names(text.encode("utf-8")) == ([name], False)
    assert replace_str(text, lambda n: "VALUE") == before + "VALUE" + after


@given(
    names=st.lists(_names, min_size=1, max_size=5),
    gaps=st.lists(_safe_text, min_size=6, max_size=6),
    value=_safe_text,
)
def test_round_trip_substitute_then_scan(names: list[str], gaps: list[str], value: str) -> None:
    text = gaps[0] + "".join(placeholder(n) + g for n, g in zip(names, gaps[1:], strict=False))
    assert find_names(text) == (names, False)
    out = replace_str(text, lambda n: value)
    assert find_names(out) == ([], False)
    assert out == gaps[0] + "".join(value + g for g in gaps[1 : len(names) + 1])
    raw = replace_bytes(text.encode("utf-8"), lambda n: value.encode("utf-8"))
    assert raw == out.encode("utf-8")
