"""What an LLM SDK reassembles from an SSE stream, written apart from the
broker's parser (for the delta tests): the events a WHATWG client dispatches,
and per format the text it joins per choice / block / tool call / candidate.
Also the four formats' streams, built from a list of text pieces."""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["FORMATS", "client_data", "reassemble", "stream_of"]

FORMATS = (
    "chat",
    "chat_tool",
    "chat_audio",
    "responses",
    "anthropic",
    "anthropic_json",
    "gemini",
    "transcript",
)


def client_data(stream: bytes) -> list[str]:
    """The data of every event a client dispatches (the unended last one is dropped)."""
    text = stream.decode("utf-8", "replace").removeprefix("\ufeff")
    events, data = [], []
    for line in re.split(r"\r\n|\r|\n", text)[:-1]:
        if not line:
            if data:
                events.append("\n".join(data))
            data = []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            if name == "data":
                data.append(value[1:] if value.startswith(" ") else value)
    return events


def reassemble(stream: bytes) -> dict[tuple[Any, ...], str]:
    """Channel -> joined text, as the SDKs join it."""
    out: dict[tuple[Any, ...], str] = {}

    def add(key: tuple[Any, ...], text: Any) -> None:
        if isinstance(text, str):
            out[key] = out.get(key, "") + text

    for data in client_data(stream):
        if data == "[DONE]":
            continue
        obj = json.loads(data)
        kind = obj.get("type", "")
        for choice in obj.get("choices", ()):
            delta = choice.get("delta", {})
            add(("chat", choice["index"]), delta.get("content"))
            add(("audio", choice["index"]), delta.get("audio", {}).get("transcript"))
            for call in delta.get("tool_calls", ()):
                add(("tool", choice["index"], call["index"]), call["function"].get("arguments"))
        if kind.startswith("response.") and kind.endswith(".delta"):
            add(("responses", kind, obj["output_index"], obj.get("content_index")), obj["delta"])
        if kind == "transcript.text.delta":
            add(("transcript",), obj["delta"])
        if kind == "content_block_start":
            add(("anthropic", obj["index"]), obj["content_block"].get("text"))
        if kind == "content_block_delta":
            for name in ("text", "partial_json", "thinking"):
                add(("anthropic", obj["index"], name), obj["delta"].get(name))
        for cand in obj.get("candidates", ()):
            for part in cand.get("content", {}).get("parts", ()):
                add(("gemini", cand.get("index", 0)), part.get("text"))
    return out


def _ev(obj: Any, eol: str, name: str | None = None) -> str:
    head = f"event: {name}{eol}" if name else ""
    return f"{head}data: {json.dumps(obj)}{eol}{eol}"


def stream_of(fmt: str, pieces: list[str], eol: str = "\n") -> bytes:
    """A realistic stream of ``fmt`` whose deltas are ``pieces``, with its framing events."""
    ev: list[str] = []
    if fmt in ("chat", "chat_tool", "chat_audio"):
        first = {"role": "assistant", "content": ""}
        ev.append(
            _ev({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": first}]}, eol)
        )
        for p in pieces:
            if fmt == "chat":
                delta: dict[str, Any] = {"content": p}
            elif fmt == "chat_audio":  # gpt-4o-audio: the transcript streams too
                delta = {"audio": {"id": "au", "transcript": p}}
            else:
                delta = {"tool_calls": [{"index": 0, "function": {"arguments": p}}]}
            ev.append(_ev({"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}, eol))
            ev.append(f": keep-alive{eol}{eol}")
        ev.append(_ev({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}, eol))
        ev.append(f"data: [DONE]{eol}{eol}")
    elif fmt == "responses":
        ev.append(
            _ev({"type": "response.created", "response": {"id": "r"}}, eol, "response.created")
        )
        item = {"id": "m", "type": "message", "role": "assistant", "content": []}
        added = {"type": "response.output_item.added", "output_index": 0, "item": item}
        ev.append(_ev(added, eol, added["type"]))
        part = {"type": "output_text", "text": "", "annotations": []}
        added = {"type": "response.content_part.added", "output_index": 0, "content_index": 0}
        ev.append(_ev({**added, "part": part}, eol, added["type"]))
        for p in pieces:
            obj = {
                "type": "response.output_text.delta",
                "output_index": 0,
                "content_index": 0,
                "delta": p,
            }
            ev.append(_ev(obj, eol, "response.output_text.delta"))
        done = {"type": "response.output_text.done", "output_index": 0, "content_index": 0}
        ev.append(_ev({**done, "text": "".join(pieces)}, eol, "response.output_text.done"))
        ev.append(_ev({"type": "response.completed", "response": {"id": "r"}}, eol))
    elif fmt in ("anthropic", "anthropic_json"):
        field, kind = (
            ("text", "text_delta") if fmt == "anthropic" else ("partial_json", "input_json_delta")
        )
        ev.append(_ev({"type": "message_start", "message": {"id": "m"}}, eol, "message_start"))
        block = {"type": "text", "text": ""} if fmt == "anthropic" else {"type": "tool_use"}
        kind0 = "content_block_start"
        ev.append(_ev({"type": kind0, "index": 0, "content_block": block}, eol, kind0))
        for i, p in enumerate(pieces):
            obj = {"type": "content_block_delta", "index": 0, "delta": {"type": kind, field: p}}
            ev.append(_ev(obj, eol, "content_block_delta"))
            if i % 3 == 1:
                ev.append(_ev({"type": "ping"}, eol, "ping"))
        ev.append(_ev({"type": "content_block_stop", "index": 0}, eol, "content_block_stop"))
        stop = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}}
        ev.append(_ev(stop, eol, "message_delta"))
        ev.append(_ev({"type": "message_stop"}, eol, "message_stop"))
    elif fmt == "transcript":
        for p in pieces:
            ev.append(_ev({"type": "transcript.text.delta", "delta": p}, eol))
        ev.append(_ev({"type": "transcript.text.done", "text": "".join(pieces)}, eol))
    elif fmt == "gemini":
        for p in pieces:
            cand = {"content": {"parts": [{"text": p}], "role": "model"}, "index": 0}
            ev.append(_ev({"candidates": [cand]}, eol))
        cand = {"content": {"parts": [{"text": ""}]}, "finishReason": "STOP", "index": 0}
        ev.append(_ev({"candidates": [cand], "usageMetadata": {"totalTokenCount": 3}}, eol))
    return "".join(ev).encode()
