"""Where each LLM streaming format puts the text its SDK joins
(broker/scrub/delta_formats.py): channel keys, paths and closes."""

from __future__ import annotations

from typing import Any

import pytest

from broker.scrub.delta_formats import Ambiguous, Reader, read

CASES: dict[str, tuple[Any, list[tuple[Any, ...]], list[tuple[Any, ...]]]] = {
    "chat-content": (
        {"choices": [{"index": 0, "delta": {"content": "hi", "role": "assistant"}}]},
        [(("chat", 0, "content"), ("choices", 0, "delta", "content"), "hi")],
        [],
    ),
    "chat-tool-args": (
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {"index": 0, "id": "c", "function": {"name": "f", "arguments": '{"a'}}
                        ]
                    },
                }
            ]
        },
        [
            (
                ("chat", 0, "tool_calls", 0, "function", "arguments"),
                ("choices", 0, "delta", "tool_calls", 0, "function", "arguments"),
                '{"a',
            )
        ],
        [],
    ),
    "chat-finish": (
        {"choices": [{"index": 0, "delta": {"content": "."}, "finish_reason": "stop"}]},
        [(("chat", 0, "content"), ("choices", 0, "delta", "content"), ".")],
        [("chat", 0)],
    ),
    "chat-empty-text": ({"choices": [{"index": 0, "delta": {"content": ""}}]}, [], []),
    "completions-text": (
        {"choices": [{"index": 0, "text": "x"}]},
        [(("chat", 0, "text"), ("choices", 0, "text"), "x")],
        [],
    ),
    "responses-text": (
        {"type": "response.output_text.delta", "output_index": 1, "content_index": 0, "delta": "x"},
        [(("responses", 1, "response.output_text", 0, None), ("delta",), "x")],
        [],
    ),
    "responses-args": (
        {"type": "response.function_call_arguments.delta", "output_index": 2, "delta": "{"},
        [(("responses", 2, "response.function_call_arguments", None, None), ("delta",), "{")],
        [],
    ),
    "responses-done": (
        {"type": "response.output_text.done", "output_index": 1, "content_index": 0, "text": "x"},
        [],
        [("responses", 1, "response.output_text", 0, None)],
    ),
    "responses-item-done": (
        {"type": "response.output_item.done", "output_index": 1},
        [],
        [("responses", 1)],
    ),
    "responses-completed": ({"type": "response.completed", "response": {}}, [], [()]),
    "anthropic-text": (
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}},
        [(("anthropic", 0, "text"), ("delta", "text"), "x")],
        [],
    ),
    "anthropic-json": (
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": "{"},
        },
        [(("anthropic", 1, "partial_json"), ("delta", "partial_json"), "{")],
        [],
    ),
    "anthropic-thinking": (
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "thinking_delta", "thinking": "h"},
        },
        [(("anthropic", 2, "thinking"), ("delta", "thinking"), "h")],
        [],
    ),
    "anthropic-start": (
        {
            "type": "content_block_start",
            "index": 3,
            "content_block": {"type": "text", "text": "pre"},
        },
        [(("anthropic", 3, "text"), ("content_block", "text"), "pre")],
        [],
    ),
    "anthropic-stop": ({"type": "content_block_stop", "index": 2}, [], [("anthropic", 2)]),
    "anthropic-message-stop": ({"type": "message_stop"}, [], [()]),
    "anthropic-ping": ({"type": "ping"}, [], []),
    "gemini": (
        {
            "candidates": [
                {
                    "content": {"parts": [{"text": "a"}, {"text": "t", "thought": True}]},
                    "finishReason": "STOP",
                }
            ]
        },
        [
            (("gemini", 0, "text"), ("candidates", 0, "content", "parts", 0, "text"), "a"),
            (("gemini", 0, "thought"), ("candidates", 0, "content", "parts", 1, "text"), "t"),
        ],
        [("gemini", 0)],
    ),
    "not-llm": ({"i": 0, "value": "x"}, [], []),
    "array": ([{"choices": []}], [], []),
    "wrong-types": (
        {"choices": [{"index": 0, "delta": {"content": 5}}], "candidates": "x"},
        [],
        [],
    ),
}


def primed() -> Reader:
    """A reader that has seen three Responses outputs (one part each) and
    three Anthropic blocks (text, tool_use, thinking) added."""
    r = Reader()
    r.read({"type": "response.created", "response": {"output": []}})
    for n in range(3):
        r.read({"type": "response.output_item.added", "output_index": n, "item": {}})
        added = {"type": "response.content_part.added", "output_index": n, "content_index": 0}
        r.read({**added, "part": {"type": "output_text", "text": ""}})
    r.read({"type": "message_start", "message": {"content": []}}, "message_start")
    for n, kind in enumerate(("text", "tool_use", "thinking")):
        start = {"type": "content_block_start", "index": n, "content_block": {"type": kind}}
        r.read(start, "content_block_start")
    return r


def name_of(obj: Any) -> str | None:
    kind = obj.get("type") if isinstance(obj, dict) else None
    return kind if isinstance(kind, str) and kind.startswith(("content_", "message_")) else None


@pytest.mark.parametrize(("obj", "pieces", "closes"), CASES.values(), ids=CASES.keys())
def test_read(obj: Any, pieces: list[tuple[Any, ...]], closes: list[tuple[Any, ...]]) -> None:
    found = primed().read(obj, name_of(obj))
    assert found.pieces == pieces
    assert found.closes == closes


def chat(*choices: Any) -> Any:
    return {"object": "chat.completion.chunk", "choices": list(choices)}


def tool(index: Any, args: str) -> Any:
    return {"index": index, "function": {"arguments": args}}


def block_delta(index: Any, delta: Any) -> Any:
    return {"type": "content_block_delta", "index": index, "delta": delta}


TEXT_DELTA = {"type": "text_delta", "text": "x"}
A_START = [
    ({"type": "message_start", "message": {"content": []}}, "message_start"),
    (
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
        "content_block_start",
    ),
]
R_START = [
    ({"type": "response.created", "response": {"output": []}}, None),
    ({"type": "response.output_item.added", "output_index": 0, "item": {"content": []}}, None),
    (
        {
            "type": "response.content_part.added",
            "output_index": 0,
            "content_index": 0,
            "part": {"type": "output_text", "text": ""},
        },
        None,
    ),
]


def r_delta(**where: Any) -> Any:
    return {"type": "response.output_text.delta", "delta": "x", **where}


def gem(*cands: Any) -> Any:
    return {"candidates": list(cands)}


AMBIGUOUS: dict[str, list[tuple[Any, str | None]]] = {
    # 1. indexes: no plain non-negative int, or none the SDK opened
    "chat-tool-index-negative": [
        (chat({"index": 0, "delta": {"tool_calls": [tool(0, "a")]}}), None),
        (chat({"index": 0, "delta": {"tool_calls": [tool(-1, "b")]}}), None),
    ],
    "chat-tool-index-bool": [
        (chat({"index": 0, "delta": {"tool_calls": [tool(0, "a")]}}), None),
        (chat({"index": 0, "delta": {"tool_calls": [tool(True, "b")]}}), None),
    ],
    "chat-tool-index-gap": [
        (chat({"index": 0, "delta": {"tool_calls": [tool(0, "a")]}}), None),
        (chat({"index": 0, "delta": {"tool_calls": [tool(5, "b")]}}), None),
    ],
    "chat-tool-first-list-not-by-position": [
        (chat({"index": 0, "delta": {"tool_calls": [tool(0, "a"), tool(0, "b")]}}), None),
    ],
    "chat-choice-index-negative": [
        (chat({"index": 0, "delta": {"content": "a"}}), None),
        (chat({"index": -1, "delta": {"content": "b"}}), None),
    ],
    "chat-choice-index-float": [(chat({"index": 0.0, "delta": {"content": "a"}}), None)],
    "chat-choice-index-string": [(chat({"index": "0", "delta": {"content": "a"}}), None)],
    "responses-content-index-negative": [
        *R_START,
        (r_delta(output_index=0, content_index=-1), None),
    ],
    "responses-output-index-float": [*R_START, (r_delta(output_index=0.0, content_index=0), None)],
    "responses-output-never-added": [*R_START, (r_delta(output_index=1, content_index=0), None)],
    "responses-part-never-added": [*R_START, (r_delta(output_index=0, content_index=1), None)],
    "responses-output-added-out-of-order": [
        R_START[0],
        ({"type": "response.output_item.added", "output_index": 2, "item": {}}, None),
    ],
    "responses-created-twice": [R_START[0], R_START[0]],
    "anthropic-unknown-delta-with-text": [
        *A_START,
        (block_delta(0, {"type": "new_delta", "text": "x"}), "content_block_delta"),
    ],
    "anthropic-start-not-next": [
        A_START[0],
        ({"type": "content_block_start", "index": 7, "content_block": {}}, "content_block_start"),
    ],
    "anthropic-delta-index-negative": [
        *A_START,
        (block_delta(-1, TEXT_DELTA), "content_block_delta"),
    ],
    "anthropic-delta-never-started": [
        *A_START,
        (block_delta(1, TEXT_DELTA), "content_block_delta"),
    ],
    "gemini-index-not-position": [(gem({"index": 1, "content": {"parts": [{"text": "a"}]}}), None)],
    "gemini-second-candidate-without-index": [(gem({"index": 0}, {"content": {}}), None)],
    # 3. the SSE event name and the data type disagree
    "anthropic-named-ping": [*A_START, (block_delta(0, TEXT_DELTA), "ping")],
    "anthropic-unnamed": [*A_START, (block_delta(0, TEXT_DELTA), None)],
    # 4. decoys a client drops
    "anthropic-delta-type-not-field": [
        *A_START,
        (block_delta(0, {"type": "thinking_delta", "text": "zz"}), "content_block_delta"),
    ],
    "anthropic-delta-type-not-block": [
        *A_START,
        (block_delta(0, {"type": "input_json_delta", "partial_json": "{"}), "content_block_delta"),
    ],
    "gemini-thought-not-bool": [
        (gem({"index": 0, "content": {"parts": [{"text": "zz", "thought": 1}]}}), None)
    ],
    "anthropic-second-message-start": [A_START[0], A_START[0]],
}


@pytest.mark.parametrize("events", AMBIGUOUS.values(), ids=AMBIGUOUS.keys())
def test_ambiguous_events_are_refused(events: list[tuple[Any, str | None]]) -> None:
    reader = Reader()
    for obj, name in events[:-1]:
        reader.read(obj, name)
    with pytest.raises(Ambiguous):
        reader.read(*events[-1])


def test_anthropic_type_taken_from_the_event_name() -> None:
    reader = Reader()
    for obj, name in A_START:
        reader.read(obj, name)
    obj = {"index": 0, "delta": TEXT_DELTA}
    assert reader.read(obj, "content_block_delta").pieces == [
        (("anthropic", 0, "text"), ("delta", "text"), "x")
    ]


def test_responses_initial_text_starts_the_channel() -> None:
    reader = Reader()
    part = {"type": "output_text", "text": "a"}
    item = {"type": "message", "content": [part]}
    added = reader.read({"type": "response.output_item.added", "output_index": 0, "item": item})
    key = ("responses", 0, "response.output_text", 0, None)
    assert added.pieces == [(key, ("item", "content", 0, "text"), "a")]
    obj = {"type": "response.content_part.added", "output_index": 0, "content_index": 1}
    found = reader.read({**obj, "part": part})
    assert found.pieces == [((*key[:3], 1, None), ("part", "text"), "a")]
    assert reader.read(r_delta(output_index=0, content_index=1)).pieces[0][0] == (*key[:3], 1, None)


def test_every_string_leaf_of_a_chat_delta_is_joined() -> None:
    reader = Reader()
    delta = {
        "role": "assistant",
        "audio": {"id": "au", "transcript": "t"},
        "function_call": {"name": "f", "arguments": "a"},
        "tool_calls": [{"index": 0, "id": "c", "type": "function", "function": {"name": "g"}}],
    }
    found = reader.read(chat({"index": 0, "delta": delta}))
    assert [k for k, _, _ in found.pieces] == [
        ("chat", 0, "audio", "transcript"),
        ("chat", 0, "function_call", "arguments"),
    ]
    assert [k for k, _, _ in found.once] == [
        ("chat", 0, "role"),
        ("chat", 0, "audio", "id"),
        ("chat", 0, "function_call", "name"),
        ("chat", 0, "tool_calls", 0, "id"),
        ("chat", 0, "tool_calls", 0, "function", "name"),
    ]


def test_transcription_deltas_are_a_channel() -> None:
    found = read({"type": "transcript.text.delta", "delta": "x"})
    assert found.pieces == [(("transcript",), ("delta",), "x")]
    assert read({"type": "transcript.text.done", "text": "x"}).closes == [("transcript",)]
