"""Where each LLM streaming format puts the text its SDK joins
(broker/scrub/delta_formats.py): channel keys, paths and closes."""

from __future__ import annotations

from typing import Any

import pytest

from broker.scrub.delta_formats import read

CASES: dict[str, tuple[Any, list[tuple[Any, ...]], list[tuple[Any, ...]]]] = {
    "chat-content": (
        {"choices": [{"index": 1, "delta": {"content": "hi", "role": "assistant"}}]},
        [(("chat", 1, "content"), ("choices", 0, "delta", "content"), "hi")],
        [],
    ),
    "chat-tool-args": (
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {"index": 3, "id": "c", "function": {"name": "f", "arguments": '{"a'}}
                        ]
                    },
                }
            ]
        },
        [
            (
                ("chat", 0, "tool", 3),
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
        {"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta", "text": "x"}},
        [(("anthropic", 2, "text"), ("delta", "text"), "x")],
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
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "h"},
        },
        [(("anthropic", 0, "thinking"), ("delta", "thinking"), "h")],
        [],
    ),
    "anthropic-start": (
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "text", "text": "pre"},
        },
        [(("anthropic", 0, "text"), ("content_block", "text"), "pre")],
        [],
    ),
    "anthropic-stop": ({"type": "content_block_stop", "index": 4}, [], [("anthropic", 4)]),
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
        {"choices": [{"index": "0", "delta": {"content": 5}}], "candidates": "x"},
        [],
        [],
    ),
}


@pytest.mark.parametrize(("obj", "pieces", "closes"), CASES.values(), ids=CASES.keys())
def test_read(obj: Any, pieces: list[tuple[Any, ...]], closes: list[tuple[Any, ...]]) -> None:
    found = read(obj)
    assert found.pieces == pieces
    assert found.closes == closes
