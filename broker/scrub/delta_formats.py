"""Where the streaming formats of the major LLM APIs put the text a client
concatenates (DESIGN.md §7.3, "split across SSE events"): each event's JSON
is read for its *pieces* (a channel key, the path of a string in the JSON,
the string) and the channels it *closes*. A channel is what one SDK joins
into one string: the text of one choice, one tool call's arguments, one
content block, one candidate.

- OpenAI Chat Completions: ``choices[i].delta.{content, refusal,
  reasoning_content, reasoning}``, ``choices[i].delta.tool_calls[j].function
  .arguments`` (keyed by the choice's ``index`` and the call's ``index``, as
  the SDK merges them), legacy ``choices[i].text``; a non-null
  ``finish_reason`` closes the choice, ``[DONE]`` everything.
- OpenAI Responses: every ``response.*.delta`` event's ``delta``, keyed by
  its type and ``output_index`` / ``content_index`` / ``summary_index``; the
  matching ``.done``, ``response.output_item.done`` (the output) and
  ``response.completed`` / ``incomplete`` / ``failed`` close.
- Anthropic Messages: ``content_block_delta`` ``delta.{text, partial_json,
  thinking}`` and the initial ``content_block.{text, thinking}`` of
  ``content_block_start``, keyed by ``index``; ``content_block_stop`` closes
  the block, ``message_stop`` everything.
- Google Gemini: ``candidates[i].content.parts[j].text`` (thought parts apart,
  as ``.text`` leaves them out), keyed by the candidate; ``finishReason``
  closes it.

Identifiers sent once (role, ids, tool names, signatures) are not channels:
held until more text followed, they would stall every later event."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Found", "read"]

Key = tuple[object, ...]
Path = tuple[str | int, ...]

_CHAT_FIELDS = ("content", "refusal", "reasoning_content", "reasoning")
_ANTHROPIC_DELTA = ("text", "partial_json", "thinking")
_ANTHROPIC_START = ("text", "thinking")
_RESPONSES_END = {"response.completed", "response.incomplete", "response.failed"}


@dataclass
class Found:
    pieces: list[tuple[Key, Path, str]] = field(default_factory=list)
    closes: list[Key] = field(default_factory=list)
    """Key prefixes closed after this event's pieces (``()``: every channel)."""

    @property
    def recognised(self) -> bool:
        return bool(self.pieces or self.closes)

    def text(self, key: Key, obj: Any, path: Path) -> None:
        value = obj.get(path[-1]) if isinstance(obj, dict) else None
        if isinstance(value, str) and value:  # an empty string adds nothing to a channel
            self.pieces.append((key, path, value))


def _index(obj: dict[str, Any], name: str, default: int | None) -> int | None:
    value = obj.get(name, default)
    return value if type(value) is int else default


def _chat(choices: list[Any], found: Found) -> None:
    for i, choice in enumerate(choices):
        if not isinstance(choice, dict):
            continue
        n = _index(choice, "index", i)
        delta = choice.get("delta")
        base: Path = ("choices", i)
        for name in _CHAT_FIELDS:
            found.text(("chat", n, name), delta, (*base, "delta", name))
        calls = delta.get("tool_calls") if isinstance(delta, dict) else None
        for j, call in enumerate(calls if isinstance(calls, list) else ()):
            if isinstance(call, dict):
                path: Path = (*base, "delta", "tool_calls", j, "function", "arguments")
                key = ("chat", n, "tool", _index(call, "index", j))
                found.text(key, call.get("function"), path)
        found.text(("chat", n, "text"), choice, (*base, "text"))
        if choice.get("finish_reason") is not None:
            found.closes.append(("chat", n))


def _responses(obj: dict[str, Any], kind: str, found: Found) -> None:
    where = tuple(_index(obj, k, None) for k in ("content_index", "summary_index"))
    output = _index(obj, "output_index", None)
    if kind.endswith(".delta"):
        found.text(("responses", output, kind[: -len(".delta")], *where), obj, ("delta",))
    elif kind in _RESPONSES_END:
        found.closes.append(())
    elif kind == "response.output_item.done":
        found.closes.append(("responses", output))
    elif kind.endswith(".done"):
        found.closes.append(("responses", output, kind[: -len(".done")], *where))


def _anthropic(obj: dict[str, Any], kind: str, found: Found) -> None:
    n = _index(obj, "index", None)
    if kind == "content_block_delta":
        for name in _ANTHROPIC_DELTA:
            found.text(("anthropic", n, name), obj.get("delta"), ("delta", name))
    elif kind == "content_block_start":
        for name in _ANTHROPIC_START:
            found.text(("anthropic", n, name), obj.get("content_block"), ("content_block", name))
    elif kind == "content_block_stop":
        found.closes.append(("anthropic", n))
    elif kind == "message_stop":
        found.closes.append(())


def _gemini(candidates: list[Any], found: Found) -> None:
    for i, cand in enumerate(candidates):
        if not isinstance(cand, dict):
            continue
        n = _index(cand, "index", i)
        content = cand.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        for j, part in enumerate(parts if isinstance(parts, list) else ()):
            if isinstance(part, dict):
                kind = "thought" if part.get("thought") is True else "text"
                found.text(
                    ("gemini", n, kind), part, ("candidates", i, "content", "parts", j, "text")
                )
        if cand.get("finishReason") is not None:
            found.closes.append(("gemini", n))


def read(obj: Any) -> Found:
    """The pieces and closes of one event's parsed JSON (nothing for any other shape)."""
    found = Found()
    if not isinstance(obj, dict):
        return found
    kind = obj.get("type")
    if isinstance(kind, str) and kind.startswith("response."):
        _responses(obj, kind, found)
    elif isinstance(kind, str) and kind.startswith(("content_block_", "message_stop")):
        _anthropic(obj, kind, found)
    choices, candidates = obj.get("choices"), obj.get("candidates")
    if isinstance(choices, list):
        _chat(choices, found)
    if isinstance(candidates, list):
        _gemini(candidates, found)
    return found
