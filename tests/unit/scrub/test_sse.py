"""Server-sent events split as a client reads them (broker/scrub/sse.py):
line ends, comments, data joining, events cut anywhere across chunks."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.scrub.sse import EventSplitter, rebuild
from tests.support.llm_stream import client_data

CASES = {
    "lf": (b"data: a\n\n", [b"a"]),
    "crlf": (b"data: a\r\n\r\n", [b"a"]),
    "cr": (b"data: a\r\r", [b"a"]),
    "mixed": (b"data: a\r\ndata:b\r\rdata:  c\n\n", [b"a\nb", b" c"]),
    "comment-and-fields": (b": hi\nevent: x\nid: 1\ndata: a\nretry: 5\n\n", [b"a"]),
    "no-data": (b"event: ping\n\n", [None]),
    "empty-data": (b"data\n\n", [b""]),
    "bom": (b"\xef\xbb\xbfdata: a\n\n", [b"a"]),
    "ndjson": (b'{"a": 1}\n{"b": 2}\n', []),
    "unknown-field-inside": (b"data: a\nfoo: b\ndata: c\n\n", [b"a\nc"]),
    "unended": (b"data: a\n\ndata: b", [b"a", b"b"]),
}


@pytest.mark.parametrize(("stream", "want"), CASES.values(), ids=CASES.keys())
def test_events(stream: bytes, want: list[bytes | None]) -> None:
    events = EventSplitter().feed(stream, final=True)
    assert [e.data for e in events if e.lines] == want
    assert sorted(b"".join(e.raw for e in events)) == sorted(stream)  # nothing lost or added


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(
        st.sampled_from([b"data: x", b'data:{"a": 1}', b": c", b"event: e", b"", b"data", b"id:7"]),
        max_size=20,
    ),
    eol=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    cuts=st.lists(st.integers(0, 400), max_size=12),
)
def test_any_chunking_gives_the_events_a_client_sees(
    lines: list[bytes], eol: bytes, cuts: list[int]
) -> None:
    stream = b"".join(line + eol for line in lines)
    splitter = EventSplitter()
    bounds = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    events = [e for x, y in itertools.pairwise(bounds) for e in splitter.feed(stream[x:y])]
    events += splitter.feed(b"", final=True)
    assert sorted(b"".join(e.raw for e in events)) == sorted(stream)  # nothing lost or added
    dispatched = [e.data.decode() for e in events if e.end and e.data is not None]
    assert dispatched == client_data(stream)


def test_cr_at_a_chunk_end_waits_for_its_lf() -> None:
    s = EventSplitter()
    assert s.feed(b"data: a\r") == []
    assert s.feed(b"\n") == []  # CRLF: one line end, not an empty line
    assert [e.data for e in s.feed(b"\r\n")] == [b"a"]


def test_rebuild_keeps_other_fields_and_line_ends() -> None:
    (event,) = EventSplitter().feed(b"event: x\r\ndata: {\r\ndata: }\r\nid: 3\r\n\r\n")
    assert rebuild(event, b"{}") == b"event: x\r\ndata: {}\r\nid: 3\r\n\r\n"


@pytest.mark.parametrize(
    "line",
    [b'{"choices": []}', b": keep-alive", b"x" * 100_000, b"dat", b"foo: data"],
    ids=["ndjson", "comment", "long-unknown", "prefix-then-other", "unknown-field"],
)
def test_lines_that_are_no_event_field_are_never_held(line: bytes) -> None:
    """A stream that is not SSE passes as it comes, whatever its lines' length."""
    s = EventSplitter()
    got = b"".join(e.raw for e in s.feed(line[:4]) + s.feed(line[4:] + b"x"))
    got += b"".join(e.raw for e in s.feed(b"\n"))
    assert got == line + b"x\n" and s.held == 0


def test_a_field_line_is_held_until_its_event_ends() -> None:
    s = EventSplitter()
    assert s.feed(b"da") == [] and s.feed(b"ta: x\nid: 1\n") == []
    (event,) = s.feed(b"\n")
    assert event.raw == b"data: x\nid: 1\n\n"
