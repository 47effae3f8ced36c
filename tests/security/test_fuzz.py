"""Property-based fuzzing (hypothesis) of the three pieces an agent's bytes
and an upstream's bytes go through:

- the placeholder parser: never raises, names only what the grammar allows,
  agrees between ``str`` (headers, path, query) and ``bytes`` (bodies), and
  replaces exactly the names it was told to;
- the location handlers (scan + substitute): raise nothing but the
  documented ``SubstitutionError``, and never write a value into a location
  that was not approved for that name, in any encoding;
- the scrubber, whole and streamed: no output holds a value in any spelling
  the independent detector (``tests/support/leaks.py``) knows, whatever
  surrounds it and however the stream is cut.
"""

from __future__ import annotations

import base64
import re
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.request.locations import RequestParts, SubstitutionError, scan, substitute
from broker.request.placeholders import find_names, replace_bytes, replace_str
from broker.scrub.scrubber import Scrubber
from tests.support.leaks import find_leak, leak_forms

NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- text that is mostly placeholder syntax -------------------------------------------------------
NAMES = ["a", "b", "stripe", "x.y-z_1"]
FRAGMENTS = [
    "<",
    ">",
    "<<",
    ">>",
    "%3C",
    "%3c",
    "%3E",
    "%3e",
    "%3A",
    "%3a",
    "\\u003c",
    "\\u003e",
    "\\u003C",
    "secret",
    "SECRET",
    ":",
    " ",
    "\t",
    "\r\n",
    "\x00",
    "%",
    "\\",
    "\u0455",
    "\uff1c",
    "\u017f",
    "\udcff",
    "/",
    "?",
    "&",
    "=",
    '"',
    "+",
    *NAMES,
    "<<secret:",
    "<<secret:a>>",
    "%3C%3Csecret%3Ab%3E%3E",
    "\\u003c\\u003csecret:stripe\\u003e\\u003e",
]
syntax = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=24).map(
    "".join
)


@FUZZ
@given(text=syntax)
def test_parser_never_raises_and_agrees_between_str_and_bytes(text: str) -> None:
    """Fuzz: any text (lone surrogates included, as undecodable header bytes
    arrive). Property: no exception; every name matches the grammar; the
    bytes parser (bodies) finds exactly what the str parser (headers) finds."""
    names, bad = find_names(text)
    assert all(NAME_RE.fullmatch(n) for n in names)
    raw = text.encode("utf-8", "surrogateescape")
    assert find_names(raw) == (names, bad)


@FUZZ
@given(text=syntax, approved=st.sets(st.sampled_from(NAMES)))
def test_replace_only_the_approved_names(text: str, approved: set[str]) -> None:
    """Fuzz: any text; approve a subset of names. Property: the value token
    appears exactly once per approved occurrence, and the text outside the
    replacements is unchanged (nothing else is written)."""
    names, _ = find_names(text)
    token = "\x01VALUE\x01"
    out = replace_str(text, lambda n: token + n if n in approved else None)
    assert out.count(token) == sum(1 for n in names if n in approved)
    if not approved & set(names):
        assert out == text
    raw = replace_bytes(
        text.encode("utf-8", "surrogateescape"),
        lambda n: (token + n).encode() if n in approved else None,
    )
    assert raw == out.encode("utf-8", "surrogateescape")


# -- requests -----------------------------------------------------------------------------------
VALUES = {"a": "kbfuzzAAA111aaa", "b": 'kbfuzz "B/+&=?% \u00e9b', "stripe": "kbfuzzSTRIPE9x9"}
HEADER_NAMES = ["Authorization", "X-Api-Key", "Cookie", "X-Other"]
LOCATIONS = [
    "header:authorization",
    "header:x-api-key",
    "header:cookie",
    "header:x-other",
    "path",
    "query",
    "body",
]
CTYPES = [
    "application/json",
    "application/x-www-form-urlencoded",
    "text/plain",
    "",
    "application/vnd.api+json; charset=utf-8",
]
slot = st.lists(
    st.one_of(
        st.sampled_from(FRAGMENTS),
        st.sampled_from(
            [f"<<secret:{n}>>" for n in VALUES] + [f"%3C%3Csecret:{n}%3E%3E" for n in VALUES]
        ),
    ),
    max_size=8,
).map("".join)


@st.composite
def header(draw: st.DrawFn) -> tuple[str, str]:
    name = draw(st.sampled_from(HEADER_NAMES))
    value = draw(slot)
    if draw(st.booleans()):  # Basic credentials around the text
        value = (
            "Basic "
            + base64.b64encode(("user:" + value).encode("utf-8", "surrogateescape")).decode()
        )
    return name, value


parts_st = st.builds(
    RequestParts,
    headers=st.lists(header(), max_size=4).map(tuple),
    path=slot.map(lambda s: "/" + s.replace("?", "")),
    query=slot,
    body=slot.map(lambda s: s.encode("utf-8", "surrogateescape")),
    content_type=st.sampled_from(CTYPES),
)


def _pieces(parts: RequestParts) -> dict[str, bytes]:
    """Each location's bytes, with Basic payloads and percent-encoding decoded too."""
    out: dict[str, bytes] = {loc: b"" for loc in LOCATIONS}
    for name, value in parts.headers:
        v = value.encode("utf-8", "surrogateescape")
        extra = b""
        scheme, _, cred = value.partition(" ")
        if scheme.lower() == "basic":
            try:
                extra = base64.b64decode(cred, validate=True)
            except ValueError:
                pass
        out[f"header:{name.lower()}"] += v + b"\n" + extra + b"\n"
    for loc, text in (("path", parts.path), ("query", parts.query)):
        raw = text.encode("utf-8", "surrogateescape")
        out[loc] = raw + b"\n" + unquote_to_bytes(raw)
    out["body"] = parts.body
    return out


@FUZZ
@given(
    parts=parts_st,
    approved=st.sets(st.tuples(st.sampled_from(list(VALUES)), st.sampled_from(LOCATIONS))),
)
def test_substitution_writes_values_only_where_approved(
    parts: RequestParts, approved: set[tuple[str, str]]
) -> None:
    """Fuzz: a request with placeholders (every spelling, Basic-wrapped or
    not) in headers, path, query and body of any content type; approve a
    random set of (name, location). Property: no exception but
    SubstitutionError; a name's value (raw, percent, JSON, base64, hex)
    appears in a location only if (name, location) was approved there, and
    every approved occurrence the scan found is substituted."""
    found = scan(parts)

    def approve(name: str, location: str) -> str | None:
        return VALUES.get(name) if (name, location) in approved else None

    try:
        new = substitute(parts, approve)
    except SubstitutionError:
        return
    after = _pieces(new)  # (the generated input never holds a value)
    for loc in LOCATIONS:
        for name, value in VALUES.items():
            if (name, loc) not in approved:
                leak = find_leak(after[loc], value.encode())
                assert leak is None, f"{name} written into {loc} ({leak}) without approval"
    for occ in found.occurrences:
        if (occ.name, occ.location) in approved:
            assert find_leak(after[occ.location], VALUES[occ.name].encode()), occ


@pytest.mark.parametrize("value", ["a\r\nb", "a\nb", "a\x00b"], ids=["crlf", "lf", "nul"])
def test_header_value_with_line_break_is_refused(value: str) -> None:
    """Fuzz corner: a value holding CR/LF/NUL would split the header it is
    written into. Property: SubstitutionError (the documented failure),
    whose message holds no value."""
    parts = RequestParts(headers=(("X-Api-Key", "<<secret:a>>"),), path="/", query="", body=b"")
    with pytest.raises(SubstitutionError) as exc:
        substitute(parts, lambda n, loc: value)
    assert value not in str(exc.value)


# -- scrubber -----------------------------------------------------------------------------------
SCRUB_VALUES = [
    b"kbfuzzScrubAlpha0123",
    'kbfuzz p\u00e4ss"w/rd+&='.encode(),
    bytes(range(250, 256)) + b"\x00\x01binary\xff\xfe?>",
    b"kbfuzz<<secret:a>>x",
]
SCRUBBER = Scrubber()
for i, v in enumerate(SCRUB_VALUES):
    SCRUBBER.add(v, f"<<secret:v{i}>>".encode(), ("t", f"v{i}"))
FORMS = [form for v in SCRUB_VALUES for form in leak_forms(v).values()]
NOISE = st.binary(max_size=6) | st.text('ABCDEFabcdef0123456789+/=_-%\\"u', max_size=6).map(
    str.encode
)
stream_data = st.lists(st.sampled_from(FORMS) | NOISE, max_size=12).map(b"".join)


def _assert_clean(out: bytes) -> None:
    for v in SCRUB_VALUES:
        leak = find_leak(out, v)
        assert leak is None, f"value {SCRUB_VALUES.index(v)} survives as {leak}"


@FUZZ
@given(data=stream_data, cuts=st.lists(st.integers(0, 400), max_size=8))
def test_scrubber_output_never_holds_a_value(data: bytes, cuts: list[int]) -> None:
    """Fuzz: every spelling the independent detector knows of four values
    (ASCII, punctuation and UTF-8, binary, one holding placeholder syntax),
    packed between hostile base64/hex/percent/JSON neighbours, scrubbed
    whole and streamed in random cuts. Property: neither output holds any
    value in any spelling; streamed == whole."""
    whole, _ = SCRUBBER.scrub(data)
    _assert_clean(whole)
    s = SCRUBBER.stream()
    pieces, last = [], 0
    for c in sorted(set(cuts)):
        if c < len(data):
            pieces.append(s.feed(data[last:c]))
            last = c
    pieces += [s.feed(data[last:]), s.flush()]
    assert b"".join(pieces) == whole


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    value=st.binary(min_size=8, max_size=40),
    pad=st.binary(max_size=5),
    form=st.sampled_from(
        [
            "raw",
            "b64-padded",
            "b64url-unpadded",
            "hex-upper",
            "percent",
            "percent-plus-lower",
            "json-ascii",
            "json-utf8",
        ]
    ),
)
def test_scrubber_any_value(value: bytes, pad: bytes, form: str) -> None:
    """Fuzz: a random value (any bytes, 8-40 long) in one spelling, inside
    base64 of random bytes or between them. Property: scrubbed output holds
    no spelling of it."""
    if form == "raw" and (b"\n" in value or b"\r" in value):
        return  # a multi-line value is scrubbed line by line (its strong lines only)
    sc = Scrubber()
    sc.add(value, b"<<secret:v>>", ("t", "v"))
    spelled = leak_forms(value).get(form)
    if spelled is None:
        return
    data = pad + spelled + pad + base64.b64encode(pad + value + pad)
    out, _ = sc.scrub(data)
    assert find_leak(out, value) is None
