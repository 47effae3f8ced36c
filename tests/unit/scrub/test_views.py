"""Spellings found in decoded views (issue 12 item 6): JSON ``\\u`` escapes of
any subset of characters, base64 wrapped at 64/76 columns, UTF-16."""

from __future__ import annotations

import base64
import json
import os
import re

import pytest

from broker.scrub import views
from broker.scrub.matcher import available_engines
from broker.scrub.scrubber import Scrubber
from tests.support.leaks import find_leak

VALUE = b"kbcanary+views/7Rq2Xw9Lp4Mz"
ENGINES = [e for e in ("hyperscan", "python") if e in available_engines()]


def make(engine: str) -> Scrubber:
    s = Scrubber(engine, background=False)
    s.add(VALUE, b"<<secret:v>>", ("acme", "v"))
    return s


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("every", [1, 2, 3, 5, 7])
def test_json_escapes_of_any_subset(engine: str, every: int) -> None:
    text = VALUE.decode()
    escaped = "".join(
        f"\\u{ord(c):04x}" if i % every == every - 1 else c for i, c in enumerate(text)
    )
    body = f'{{"note": "x", "key": "{escaped}", "n": 1}}'.encode()
    out, n = make(engine).scrub(body, "acme")
    assert n >= 1
    decoded = json.loads(out)["key"]
    assert VALUE.decode() not in decoded and "<<secret:v>>" in decoded


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("width", "eol"), [(64, b"\n"), (76, b"\r\n"), (64, b"\r\n")])
@pytest.mark.parametrize("offset", [0, 1, 2, 37, 63, 100])
def test_line_wrapped_base64(engine: str, width: int, eol: bytes, offset: int) -> None:
    blob = base64.b64encode(os.urandom(offset) + b"user:" + VALUE + os.urandom(90))
    wrapped = eol.join(blob[i : i + width] for i in range(0, len(blob), width)) + eol
    out, n = make(engine).scrub(b"-----BEGIN DATA-----" + eol + wrapped, "acme")
    assert n >= 1
    assert find_leak(out.replace(b"\r", b"").replace(b"\n", b""), VALUE) is None


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be", "utf-16"])
@pytest.mark.parametrize("prefix", ["", "é", "ab", "x"])
def test_utf16_bodies(engine: str, codec: str, prefix: str) -> None:
    body = f'{{"greeting": "{prefix}héllo", "key": "{VALUE.decode()}"}}'.encode(codec)
    out, n = make(engine).scrub(body, "acme")
    assert n == 1
    text = out.decode(codec)  # still valid UTF-16
    assert VALUE.decode() not in text and "<<secret:v>>" in text
    assert VALUE.decode().encode("utf-16-le") not in out
    assert VALUE.decode().encode("utf-16-be") not in out


def test_utf16_at_an_odd_offset_is_found_too() -> None:
    body = b"\x01" + VALUE.decode().encode("utf-16-le") + b"\x00"
    out, n = make(ENGINES[0]).scrub(body, "acme")
    assert n == 1 and VALUE.decode().encode("utf-16-le")[:-1] not in out


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("offset", [30, 40, 45])  # the value's base64 crosses a line break
def test_streamed_wrapped_base64_and_json_escapes_match_the_whole_scrub(
    engine: str, offset: int
) -> None:
    s = make(engine)
    blob = base64.b64encode(os.urandom(offset) + VALUE + os.urandom(200))
    wrapped = b"\n".join(blob[i : i + 64] for i in range(0, len(blob), 64)) + b"\n"
    escaped = "".join(f"\\u{ord(c):04x}" if i % 2 else c for i, c in enumerate(VALUE.decode()))
    data = wrapped + b'data: {"k": "' + escaped.encode() + b'"}\n\n' + wrapped
    whole, _ = s.scrub(data, "acme")
    for size in (1, 7, 64, 65, 200):
        stream = s.stream("acme")
        got = b"".join(stream.feed(data[i : i + size]) for i in range(0, len(data), size))
        got += stream.flush()
        assert got == whole, size


def test_plain_data_builds_no_view(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = views.view_matches
    monkeypatch.setattr(views, "view_matches", lambda *a: calls.append(1) or real(*a))
    s = make(ENGINES[0])
    assert s.scrub(b"plain text, no escapes, no NUL, short lines\n" * 100, "acme")[1] == 0
    assert calls == []
    assert s.scrub(b"x \\u0041 y", "acme")[1] == 0 and calls == [1]


WIDE = "kbcanary-ñandú-€uro-😀-7Rq2Xw".encode()  # 2-, 3- and 4-byte characters


def _escape_some(text: str, every: int) -> str:
    """JSON with every ``every``-th UTF-16 unit escaped (a surrogate pair as two)."""
    out = []
    for i, c in enumerate(text):
        if i % every != every - 1:
            out.append(c)
            continue
        units = c.encode("utf-16-be")
        out += [f"\\u{int.from_bytes(units[k : k + 2]):04x}" for k in range(0, len(units), 2)]
    return "".join(out)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("every", [1, 2, 3, 4, 9])
@pytest.mark.parametrize("case", [str.lower, str.upper])
def test_json_escapes_of_any_subset_of_non_ascii_characters(
    engine: str, every: int, case: object
) -> None:
    s = Scrubber(engine, background=False)
    s.add(WIDE, b"<<secret:w>>", ("acme", "w"))
    escaped = _escape_some(WIDE.decode(), every)
    if case is str.upper:  # upper-case hex digits
        escaped = re.sub(r"\\u([0-9a-f]{4})", lambda m: "\\u" + m.group(1).upper(), escaped)
    body = f'{{"note": "héllo \\u00e9", "key": "{escaped}", "n": 1}}'.encode()
    assert json.loads(body)["key"] == WIDE.decode()  # what a client reads
    out, n = s.scrub(body, "acme")
    assert n >= 1
    decoded = json.loads(out)["key"]
    assert WIDE.decode() not in decoded and "<<secret:w>>" in decoded
    for size in (1, 5, 64):  # streamed alike, whatever the chunking
        stream = s.stream("acme")
        got = b"".join(stream.feed(body[i : i + size]) for i in range(0, len(body), size))
        assert got + stream.flush() == out, size


def test_non_ascii_escapes_build_a_view_only_for_non_ascii_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    real = views.view_matches
    monkeypatch.setattr(views, "view_matches", lambda *a: calls.append(a[1]) or real(*a))
    body = b'{"text": "\\u00e9t\\u00e9 \\u20ac"}'  # Python's json.dumps of non-English text
    assert make(ENGINES[0]).scrub(body, "acme")[1] == 0 and calls == []  # ASCII values only
    s = make(ENGINES[0])
    s.add(WIDE, b"<<secret:w>>", ("acme", "w"))
    assert s.scrub(body, "acme")[1] == 0 and calls == [views.JSON_WIDE]
