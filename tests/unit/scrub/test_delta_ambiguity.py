"""Events an SDK could read otherwise than the delta joiner
(broker/scrub/deltas.py, delta_formats.py, delta_events.py): the stream is
cut (DeltaError) rather than guessed at; text the SDKs join that the joiner
did not read before (Responses initial text, every string leaf of a chat
delta, transcription deltas, a type given by the SSE event name) is joined.
The hostile streams are those of the 2026-12-02 attack review."""

from __future__ import annotations

import json
from typing import Any

import pytest

from broker.scrub.deltas import DeltaError, DeltaStream
from broker.scrub.scrubber import Scrubber

VALUE = "KbAmbig_5e0d1c2b3a4f6978Wq"
PLACEHOLDER = "<<secret:amb>>"
A, B = VALUE[:13], VALUE[13:]


def scrubber() -> Scrubber:
    s = Scrubber(background=False)
    s.add(VALUE.encode(), PLACEHOLDER.encode(), ("acme", "amb"))
    return s


def relay(data: bytes, events: bool = False, chunk: int = 7, lines: bool = False) -> bytes:
    s = scrubber()
    d, b = DeltaStream([s], "acme", events=events, lines=lines), s.stream("acme")
    out = [b.feed(d.feed(data[i : i + chunk])) for i in range(0, len(data), chunk)]
    return b"".join([*out, b.feed(d.flush()), b.flush()])


def ev(obj: Any, name: str | None = None) -> str:
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {json.dumps(obj)}\n\n"


def datas(out: bytes) -> list[Any]:
    return [json.loads(line[6:]) for line in out.decode().split("\n") if line.startswith("data: {")]


def chat(delta: Any, index: Any = 0) -> str:
    return ev({"choices": [{"index": index, "delta": delta, "finish_reason": None}]})


def tool(index: Any, **function: str) -> Any:
    return {"tool_calls": [{"index": index, "function": function}]}


def _text_blocks(*pieces: str) -> str:
    """Anthropic text blocks, one per piece, each started, fed and stopped."""
    return "".join(
        ev(obj, obj["type"])
        for n, piece in enumerate(pieces)
        for obj in (
            {"type": "content_block_start", "index": n, "content_block": {"type": "text"}},
            {
                "type": "content_block_delta",
                "index": n,
                "delta": {"type": "text_delta", "text": piece},
            },
            {"type": "content_block_stop", "index": n},
        )
    )


CUT = {
    "chat-tool-index-negative": chat(tool(0, arguments=A)) + chat(tool(-1, arguments=B)),
    "chat-tool-index-true": chat(tool(0, arguments="{}")) + chat(tool(True, arguments=B)),
    "chat-choice-index-negative": chat({"content": A}) + chat({"content": B}, -1),
    "chat-choice-index-not-position": chat({"content": A}) + chat({"content": B}, 1),
    "chat-tool-name-sent-twice": chat(tool(0, name=A)) + chat(tool(0, name=B)),
    "responses-output-index-float": ev(
        {"type": "response.output_item.added", "output_index": 0, "item": {}}
    )
    + ev({"type": "response.output_text.delta", "output_index": 0.0, "delta": B}),
    "anthropic-start-not-next": ev(
        {"type": "content_block_start", "index": 7, "content_block": {"type": "text", "text": A}},
        "content_block_start",
    ),
    "anthropic-decoy-named-ping": ev(
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
        "content_block_start",
    )
    + ev({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta"}}, "ping"),
    "anthropic-value-across-two-blocks": _text_blocks(A, B),
    "responses-value-across-two-outputs": "".join(
        ev(obj)
        for n, piece in enumerate((A, B))
        for obj in (
            {"type": "response.output_item.added", "output_index": n, "item": {"content": []}},
            {
                "type": "response.content_part.added",
                "output_index": n,
                "content_index": 0,
                "part": {"text": piece},
            },
        )
    ),
    "gemini-thought-1": ev(
        {"candidates": [{"index": 0, "content": {"parts": [{"text": "zz", "thought": 1}]}}]}
    ),
    "gemini-candidate-index-not-position": ev(
        {"candidates": [{"index": 1, "content": {"parts": [{"text": A}]}}]}
    ),
    "deep-json-escaped-keys": 'data: {"\\u0063hoices":[{"index":0,"\\u0064elta":{"content":"'
    + A
    + '"}}],"pad":'
    + "[" * 20000
    + "]" * 20000
    + "}\n\n",
    "unparsable-escaped-marker": 'data: {"\\u0063hoices":[{"index":0,"\\u0064elta":{"content":"x"}\n\n',
}


@pytest.mark.parametrize("stream", CUT.values(), ids=CUT.keys())
def test_an_ambiguous_event_cuts_the_stream(stream: str) -> None:
    with pytest.raises(DeltaError):
        relay(stream.encode())


def test_json_lines_for_a_line_reader_cut_the_stream() -> None:
    """google-genai (alt=sse) reads every line that parses as JSON as a chunk."""
    line = json.dumps({"candidates": [{"index": 0, "content": {"parts": [{"text": A}]}}]})
    with pytest.raises(DeltaError):
        relay(f"{line}\n{line}\n".encode(), events=True, lines=True)
    with pytest.raises(DeltaError):  # a Gemini stream (once recognised): read lines whole
        relay(f"data: {line}\n\n{line}\n".encode(), chunk=len(line) + 8)
    ndjson = f"{line}\n".encode()  # an NDJSON stream asked for (Ollama): not SSE, passes
    assert relay(ndjson, events=True) == ndjson
    assert relay(b": comment\nhello\n\n", events=True, lines=True) == b": comment\nhello\n\n"


def test_real_api_variants_flow() -> None:
    """Streams the real APIs send that the stricter reading must not cut."""
    resumed = ev({"type": "response.output_text.delta", "output_index": 2, "content_index": 0})
    unknown = ev(
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
        "content_block_start",
    ) + ev(
        {"type": "content_block_delta", "index": 0, "delta": {"type": "new_delta"}},
        "content_block_delta",
    )
    role_again = (
        chat({"role": "assistant", "content": "x"})
        + ev({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        + chat({"role": "assistant"})
    )
    azure = (
        ev({"choices": [], "prompt_filter_results": []})
        + chat({"content": "x"})
        + ev({"choices": [{"index": 0, "delta": {}}, {"index": 1, "delta": {"content": "y"}}]})
    )
    blocks = _text_blocks(A, A)  # two text blocks, no value across them
    for stream in (resumed, unknown, role_again, azure, blocks):
        assert relay(stream.encode()) == stream.encode()


def test_unparsable_data_under_a_stream_request_cuts_it() -> None:
    with pytest.raises(DeltaError):
        relay(b"data: not json\n\n", events=True)
    assert relay(b"data: not json\n\n") == b"data: not json\n\n"


def parts_of(out: bytes, get: Any) -> str:
    text = ""
    for obj in datas(out):
        try:
            value = get(obj)
        except (KeyError, IndexError, TypeError):
            continue
        text += value if isinstance(value, str) else ""
    return text


JOINED = {
    "responses-content-part-added": (
        ev({"type": "response.output_item.added", "output_index": 0, "item": {"content": []}})
        + ev(
            {
                "type": "response.content_part.added",
                "output_index": 0,
                "content_index": 0,
                "part": {"type": "output_text", "text": A},
            }
        )
        + ev(
            {
                "type": "response.output_text.delta",
                "output_index": 0,
                "content_index": 0,
                "delta": B,
            }
        ),
        lambda o: o.get("part", {}).get("text") or o.get("delta"),
    ),
    "responses-output-item-added": (
        ev(
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": {"content": [{"type": "output_text", "text": A}]},
            }
        )
        + ev(
            {
                "type": "response.output_text.delta",
                "output_index": 0,
                "content_index": 0,
                "delta": B,
            }
        ),
        lambda o: o["item"]["content"][0]["text"] if "item" in o else o.get("delta"),
    ),
    "anthropic-type-from-event-name": (
        ev(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            "content_block_start",
        )
        + ev({"index": 0, "delta": {"type": "text_delta", "text": A}}, "content_block_delta")
        + ev({"index": 0, "delta": {"type": "text_delta", "text": B}}, "content_block_delta"),
        lambda o: o["delta"]["text"],
    ),
    "chat-audio-transcript": (
        chat({"role": "assistant", "audio": {"id": "au", "transcript": A}})
        + chat({"audio": {"transcript": B}}),
        lambda o: o["choices"][0]["delta"]["audio"]["transcript"],
    ),
    "chat-legacy-function-call": (
        chat({"function_call": {"name": "f", "arguments": A}})
        + chat({"function_call": {"arguments": B}}),
        lambda o: o["choices"][0]["delta"]["function_call"]["arguments"],
    ),
    "transcription": (
        ev({"type": "transcript.text.delta", "delta": A})
        + ev({"type": "transcript.text.delta", "delta": B})
        + ev({"type": "transcript.text.done", "text": "x"}),
        lambda o: o.get("delta"),
    ),
}


@pytest.mark.parametrize(("stream", "get"), JOINED.values(), ids=JOINED.keys())
def test_text_the_sdk_joins_is_scanned(stream: str, get: Any) -> None:
    out = relay(stream.encode())
    joined = parts_of(out, get)
    assert VALUE not in joined and PLACEHOLDER in joined


def test_a_rewritten_event_has_no_line_separator() -> None:
    """A line-based reader (httpx iter_lines) splits on U+2028."""
    text = VALUE + "\\u2028\\u2029\\u0085tail"
    data = f'data: {{"candidates":[{{"index":0,"content":{{"parts":[{{"text":"{text}"}}]}}}}]}}\n\n'
    out = relay(data.encode())
    assert PLACEHOLDER.encode() in out
    assert not any(sep.encode() in out for sep in ("\u2028", "\u2029", "\u0085"))
    assert datas(out)[0]["candidates"][0]["content"]["parts"][0]["text"].endswith(
        "\u2028\u2029\u0085tail"
    )
