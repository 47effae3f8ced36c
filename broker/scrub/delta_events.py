"""The typed-event LLM streams (:mod:`broker.scrub.delta_formats`), read
with the state their SDKs keep, so an index means what it means to them.

- OpenAI Responses: every ``response.*.delta`` event's ``delta``, keyed by
  its type and ``output_index`` / ``content_index`` / ``summary_index``; the
  initial text of an output (``output_item.added`` ``item.content[].text``,
  ``item.arguments``) and of a part (``content_part.added`` ``part.text``)
  starts the same channel. The SDK finds outputs and parts by list position
  in the order they were added: an ``output_item.added`` must be the next
  output, a ``content_part.added`` the next part, a delta must name an output
  (and, for ``output_text.delta``, a part) added. The matching ``.done``, ``response.output_item.done``
  and ``response.completed`` / ``incomplete`` / ``failed`` close.
- Anthropic Messages: ``content_block_delta`` ``delta.{text, partial_json,
  thinking}`` and the initial ``content_block.{text, thinking}`` of
  ``content_block_start``, keyed by ``index``, which must be the next block
  for a start (the SDK appends, ignoring it) and a started block for a delta
  or stop. A data ``type`` and an SSE ``event`` name that disagree (the SDK
  drops events it does not name), a ``delta.type`` that is not the field's
  or not its block's: cut. ``content_block_stop`` closes the block,
  ``message_stop`` everything."""

from __future__ import annotations

from typing import Any

from broker.scrub.delta_formats import Ambiguous, Found, index_of

__all__ = ["Anthropic", "Responses"]

_RESPONSES_END = {"response.completed", "response.incomplete", "response.failed"}
_TEXT = "response.output_text"
_ARGS = "response.function_call_arguments"
_MAX_OUTPUTS = 4096

_ANTHROPIC = frozenset(
    {
        "message_start",
        "message_delta",
        "message_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
    }
)
_DELTA_FIELD = {
    "text_delta": ("text", ("text",)),
    "input_json_delta": ("partial_json", ("tool_use", "server_tool_use", "mcp_tool_use")),
    "thinking_delta": ("thinking", ("thinking",)),
    "signature_delta": ("signature", ("thinking",)),
    "citations_delta": (None, ("text",)),
}
_TEXT_FIELDS = ("text", "partial_json", "thinking", "signature")
_START_FIELDS = ("text", "thinking")


class Responses:
    """A stream resumed (``starting_after``) has no ``response.created``: no
    SDK accumulates it, a client reads each index as it is (plain ints only)."""

    def __init__(self) -> None:
        self._outputs = 0  # outputs added
        self._parts: dict[int, int] = {}  # per output added: its parts added
        self._created = False

    def _output(self, obj: dict[str, Any]) -> int | None:
        if "output_index" not in obj:
            return None
        n = index_of(obj, "output_index")
        if self._created and n >= self._outputs:
            raise Ambiguous("a Responses event for an output never added")
        return n

    def _add_output(self, item: Any, n: int, found: Found) -> None:
        if self._created and n != self._outputs:
            raise Ambiguous("a Responses output added out of order")
        if len(self._parts) >= _MAX_OUTPUTS:
            raise Ambiguous("too many outputs in a Responses stream")
        item = item if isinstance(item, dict) else {}
        content = item.get("content")
        parts = content if isinstance(content, list) else []
        self._outputs = max(self._outputs, n + 1)
        self._parts[n] = len(parts)
        base = ("responses", n)
        for j, part in enumerate(parts):
            for name, kind in (("text", _TEXT), ("refusal", "response.refusal")):
                found.text((*base, kind, j, None), part, ("item", "content", j, name))
        found.text((*base, _ARGS, None, None), item, ("item", "arguments"))

    def read(self, obj: dict[str, Any], kind: str, found: Found) -> None:
        found.recognised = True
        if kind == "response.created":
            response = obj.get("response")
            output = response.get("output") if isinstance(response, dict) else None
            if output or self._created:
                raise Ambiguous("a Responses stream created twice, or with outputs")
            self._created = True
            return
        if kind == "response.output_item.added":
            self._add_output(obj.get("item"), index_of(obj, "output_index"), found)
            return
        output = self._output(obj)
        where = tuple(
            index_of(obj, k) if k in obj else None for k in ("content_index", "summary_index")
        )
        parts = self._parts.get(output, 0) if output is not None else 0
        if kind == "response.content_part.added":
            if output is None or where[0] is None:
                raise Ambiguous("a Responses part added to no output")
            if self._created and where[0] != parts:
                raise Ambiguous("a Responses part added out of order")
            if len(self._parts) >= _MAX_OUTPUTS:
                raise Ambiguous("too many outputs in a Responses stream")
            self._parts[output] = max(parts, where[0] + 1)
            for name, part_kind in (("text", _TEXT), ("refusal", "response.refusal")):
                key = ("responses", output, part_kind, where[0], None)
                found.text(key, obj.get("part"), ("part", name))
            return
        if kind == _TEXT + ".delta" and self._created:  # the SDK's output[i].content[j]
            if output is None or where[0] is None or where[0] >= parts:
                raise Ambiguous("a Responses text delta for a part never added")
        if kind.endswith(".delta"):
            found.text(("responses", output, kind[: -len(".delta")], *where), obj, ("delta",))
        elif kind in _RESPONSES_END:
            found.closes.append(())
        elif kind == "response.output_item.done":
            found.closes.append(("responses", output))
        elif kind.endswith(".done"):
            found.closes.append(("responses", output, kind[: -len(".done")], *where))


class Anthropic:
    def __init__(self) -> None:
        self._blocks: list[str] = []  # the type of each block started, in order
        self._started = False

    @staticmethod
    def names(kind: str) -> bool:
        return kind in _ANTHROPIC

    def read(self, obj: dict[str, Any], kind: str, name: str | None, found: Found) -> None:
        found.recognised = True
        if name != kind:  # the SDK reads events by name, others by type
            raise Ambiguous("an Anthropic event whose SSE name is not its type")
        if kind == "message_start":
            message = obj.get("message")
            if self._started or (isinstance(message, dict) and message.get("content")):
                raise Ambiguous("a second message_start, or one with content")
            self._started = True
        elif kind == "content_block_start":
            if index_of(obj, "index") != len(self._blocks):
                raise Ambiguous("an Anthropic block started out of order")
            block = obj.get("content_block")
            block = block if isinstance(block, dict) else {}
            block_type = block.get("type")
            self._blocks.append(block_type if isinstance(block_type, str) else "")
            n = len(self._blocks) - 1
            for field in _START_FIELDS:
                if field == block_type:
                    found.text(("anthropic", n, field), block, ("content_block", field))
                elif isinstance(block.get(field), str) and block[field]:
                    raise Ambiguous("an Anthropic block with text its type has not")
        elif kind in ("content_block_delta", "content_block_stop"):
            n = index_of(obj, "index")
            if n >= len(self._blocks):
                raise Ambiguous("an Anthropic event for a block never started")
            if kind == "content_block_stop":
                found.closes.append(("anthropic", n))
            else:
                self._delta(obj.get("delta"), n, found)
        elif kind == "message_stop":
            found.closes.append(())

    def _delta(self, delta: Any, n: int, found: Found) -> None:
        delta = delta if isinstance(delta, dict) else {}
        kind = delta.get("type")
        if (
            not isinstance(kind, str) or kind not in _DELTA_FIELD
        ):  # a type no SDK knows: it joins nothing, none of ours
            if any(name in delta for name in _TEXT_FIELDS):
                raise Ambiguous("an Anthropic delta of an unknown type with text")
            return
        field, blocks = _DELTA_FIELD[kind]
        if self._blocks[n] not in blocks:
            raise Ambiguous("an Anthropic delta whose type is not its block's")
        for name in _TEXT_FIELDS:
            if name != field and name in delta:
                raise Ambiguous("an Anthropic delta with a field its type has not")
        if field == "signature":  # replaced, not joined
            value = delta.get(field)
            if isinstance(value, str) and value:
                found.once.append((("anthropic", n, field), ("delta", field), value))
        elif field is not None:
            found.text(("anthropic", n, field), delta, ("delta", field))
