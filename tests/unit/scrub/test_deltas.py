"""A value split across the SSE deltas of an LLM stream (broker/scrub/deltas.py,
DESIGN.md §7.3, §7.6): whatever the split into deltas and the chunking of the
bytes, no spelling of it survives in what the SDK reassembles, the text
around it does, events that are not deltas are not held, and what is held
never depends on secret content.

The relay is composed as ``addons/streaming.py`` composes it (deltas, then
the byte scrubber); the reassembly (tests/support/llm_stream.py) is written
apart from the broker's parser."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.scrub import deltas as deltas_mod
from broker.scrub.deltas import DeltaError, DeltaStream
from broker.scrub.layers import MARKER
from broker.scrub.scrubber import Scrubber
from tests.support.leaks import contains_leak
from tests.support.llm_stream import FORMATS, client_data, reassemble, stream_of

VALUE = "KbDelta_7f3a9c1e5b2d4068Zq"
OTHER = "KbOther_0c9d8e7f6a5b4c3dQx"  # another tenant's value
PLACEHOLDER = "<<secret:llm>>"


def scrubber() -> Scrubber:
    s = Scrubber(background=False)
    s.add(VALUE.encode(), PLACEHOLDER.encode(), ("acme", "llm"))
    s.add(OTHER.encode(), b"<<secret:other>>", ("beta", "other"))
    return s


def relay(data: bytes, cuts: list[int], s: Scrubber | None = None) -> tuple[bytes, list[bytes]]:
    """The stream as the agent gets it, fed in chunks cut at ``cuts``; and what left per feed."""
    s = s or scrubber()
    d, b = DeltaStream([s], "acme"), s.stream("acme")
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    outs = [b.feed(d.feed(data[x:y])) for x, y in itertools.pairwise(bounds)]
    outs.append(b.feed(d.flush()) + b.flush())
    return b"".join(outs), outs


def split(text: str, cuts: list[int]) -> list[str]:
    bounds = sorted({c % len(text) for c in cuts} | {0, len(text)})
    return [text[x:y] for x, y in itertools.pairwise(bounds) if y > x]


AROUND = st.text(alphabet='ab XYZ.,\n"\\é€', max_size=24)
CUTS = st.lists(st.integers(0, 10_000), max_size=24)


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=120, deadline=None)
@given(
    before=AROUND,
    after=AROUND,
    pieces=CUTS,
    chunks=CUTS,
    eol=st.sampled_from(["\n", "\r\n", "\r"]),
)
def test_value_split_across_deltas_never_reassembled(
    fmt: str, before: str, after: str, pieces: list[int], chunks: list[int], eol: str
) -> None:
    text = before + VALUE + after
    data = stream_of(fmt, split(text, pieces), eol)
    out, _ = relay(data, chunks)
    joined = reassemble(out)
    for key, got in joined.items():
        assert not contains_leak(got.encode(), VALUE.encode()), f"{fmt} {key} reassembles it"
        assert VALUE.lower() not in got.lower()
    assert not contains_leak(out, VALUE.encode()), f"{fmt}: the bytes hold it"
    want = before + PLACEHOLDER + after
    if fmt == "anthropic_json":  # partial_json is JSON text: its own escapes stay
        assert PLACEHOLDER in "".join(joined.values())
    else:
        assert want in joined.values(), f"{fmt}: the text around the value changed"


@settings(max_examples=60, deadline=None)
@given(pieces=CUTS, chunks=CUTS)
def test_another_tenants_value_becomes_the_marker(pieces: list[int], chunks: list[int]) -> None:
    out, _ = relay(stream_of("chat", split("x" + OTHER + "y", pieces)), chunks)
    assert reassemble(out)[("chat", 0)] == "x" + MARKER.decode() + "y"


@pytest.mark.parametrize("form", ["hex", "b64"])
@settings(max_examples=40, deadline=None)
@given(pieces=CUTS)
def test_encoded_value_split_across_deltas(form: str, pieces: list[int]) -> None:
    """Every spelling the scrubber knows is looked for in the joined text."""
    raw = VALUE.encode()
    enc = raw.hex() if form == "hex" else __import__("base64").b64encode(raw).decode()
    out, _ = relay(stream_of("anthropic", split("<" + enc + ">", pieces)), [])
    got = reassemble(out)[("anthropic", 0, "text")]
    assert not contains_leak(got.encode(), raw)


def test_interleaved_channels_each_joined_on_its_own() -> None:
    """Two choices (each at its index's position) and a tool call, interleaved:
    each is its own channel."""
    half = len(VALUE) // 2
    events = [
        {"choices": [{"index": 0, "delta": {"content": VALUE[:half]}}]},
        {"choices": [{"index": 0, "delta": {}}, {"index": 1, "delta": {"content": VALUE[:half]}}]},
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [{"index": 0, "function": {"arguments": VALUE[:half]}}]
                    },
                }
            ]
        },
        {
            "choices": [
                {"index": 0, "delta": {}},
                {"index": 1, "delta": {"content": "-" + VALUE[half:]}},
            ]
        },
        {"choices": [{"index": 0, "delta": {"content": VALUE[half:]}}]},
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [{"index": 0, "function": {"arguments": VALUE[half:]}}]
                    },
                }
            ]
        },
    ]
    data = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    joined = reassemble(relay(data, [])[0])
    assert joined[("chat", 0)] == PLACEHOLDER
    assert joined[("tool", 0, 0)] == PLACEHOLDER
    assert joined[("chat", 1)] == VALUE[:half] + "-" + VALUE[half:]  # no value: left alone


def test_events_that_are_not_deltas_are_never_held() -> None:
    """The bench's SSE case: each event leaves with the feed that completes it."""
    s = scrubber()
    d = DeltaStream([s], "acme")
    for i in range(3):
        event = b'data: {"i": %d, "value": "x"}\n\n' % i
        assert d.feed(event) == event
    ping = b'event: ping\ndata: {"type": "ping"}\n\n'
    assert d.feed(ping) == ping and d.held == 0


@settings(max_examples=60, deadline=None)
@given(pieces=st.lists(st.integers(1, 9), min_size=1, max_size=40), fmt=st.sampled_from(FORMATS))
def test_hold_back_never_depends_on_secret_content(pieces: list[int], fmt: str) -> None:
    """Invariant 6: the same shape of stream, the value in it or not, releases
    the same events after every feed."""
    text = ("ab" * 20 + VALUE + "cd" * 20)[: sum(pieces)]
    plain = "".join("q" if c.isalnum() else c for c in text)
    counts = []
    for t in (text, plain):
        cut, parts = 0, []
        for n in pieces:
            parts.append(t[cut : cut + n])
            cut += n
        data = stream_of(fmt, [p for p in parts if p])
        events = data.split(b"\n\n")[:-1]
        d = DeltaStream([scrubber()], "acme")
        counts.append([len(client_data(d.feed(e + b"\n\n"))) for e in events])
    assert counts[0] == counts[1]


def test_window_is_the_longest_pattern() -> None:
    """A delta event waits until W = longest pattern - 1 bytes followed on its channel."""
    s = scrubber()
    window = s.max_len - 1
    d = DeltaStream([s], "acme")
    first = stream_of("chat", ["a"])
    events = first.split(b"\n\n")
    assert d.feed(events[0] + b"\n\n")  # the role chunk: no text, not held
    assert d.feed(events[1] + b"\n\n") == b""  # "a": held
    more = chat("b" * (window - 1))
    assert d.feed(more) == b""  # W - 1 bytes after it: still held
    released = client_data(d.feed(chat("b")))  # W bytes: "a" leaves
    assert [json.loads(e)["choices"][0]["delta"]["content"] for e in released] == ["a"]


def test_text_after_a_close_cuts_the_stream() -> None:
    d = DeltaStream([scrubber()], "acme")
    d.feed(b'data: {"choices":[{"index":0,"delta":{"content":"KbDel"}}]}\n\n')
    d.feed(b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')
    with pytest.raises(DeltaError):
        d.feed(b'data: {"choices":[{"index":0,"delta":{"content":"ta_7f"}}]}\n\n')


@pytest.mark.parametrize(
    "event",
    [b'data: {"choices":[{"index":0,"delta":{"content":"ta_7f"}}\n\n', b"data: not json\n\n"],
    ids=["truncated-json", "text"],
)
def test_unparsable_event_in_a_delta_stream_cuts_it(event: bytes) -> None:
    d = DeltaStream([scrubber()], "acme")
    d.feed(b'data: {"choices":[{"index":0,"delta":{"content":"KbDel"}}]}\n\n')
    with pytest.raises(DeltaError):
        d.feed(event)


def test_unparsable_event_before_any_delta_passes() -> None:
    d = DeltaStream([scrubber()], "acme")
    assert d.feed(b"data: hello\n\n") == b"data: hello\n\n"


def test_held_bytes_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deltas_mod, "MAX_HELD", 1000)
    d = DeltaStream([scrubber()], "acme")
    with pytest.raises(DeltaError):
        d.feed(b"data: " + b"x" * 2000)


@pytest.mark.parametrize(
    "event",
    [
        lambda i: {"choices": [{"index": i, "delta": {"content": "x"}}]},
        lambda i: {"type": "content_block_stop", "index": i},
    ],
    ids=["channels", "closes"],
)
def test_channels_are_bounded(monkeypatch: pytest.MonkeyPatch, event: Any) -> None:
    monkeypatch.setattr(deltas_mod, "MAX_CHANNELS", 10)
    d = DeltaStream([scrubber()], "acme")
    with pytest.raises(DeltaError):
        for i in range(11):
            d.feed(b"data: " + json.dumps(event(i)).encode() + b"\n\n")


def test_a_value_added_mid_stream_is_scrubbed_from_what_is_held() -> None:
    s = Scrubber(background=False)
    s.add(b"unrelated-value-0123", b"<<secret:u>>", ("acme", "u"))
    d, b = DeltaStream([s], "acme"), s.stream("acme")
    out = b.feed(d.feed(chat(VALUE[:5]) + chat(VALUE[5:12])))
    assert out == b""  # held: 7 bytes followed, W is far more
    s.add(VALUE.encode(), PLACEHOLDER.encode(), ("acme", "llm"))
    out += b.feed(d.feed(chat(VALUE[12:]))) + b.feed(d.flush()) + b.flush()
    assert reassemble(out)[("chat", 0)] == PLACEHOLDER


def chat(text: str) -> bytes:
    obj = {"choices": [{"index": 0, "delta": {"content": text}}]}
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def test_join_whole_scans_a_buffered_body() -> None:
    from broker.scrub.deltas import join_whole

    s = Scrubber(background=False)
    value = "KbWhole_c41d9e07a3b2Qx"
    s.add(value.encode(), b"<<secret:w>>", ("acme", "w"))
    h = len(value) // 2
    body = b"".join(
        b"data: "
        + json.dumps({"choices": [{"index": 0, "delta": {"content": p}}]}).encode()
        + b"\n\n"
        for p in (value[:h], value[h:])
    )
    out, n = join_whole([s], "acme", body)
    assert n == 1 and value.encode() not in out and b"<<secret:w>>" in out
