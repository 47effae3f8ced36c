"""Where the streaming formats of the major LLM APIs put the text a client
concatenates (DESIGN.md §7.3, "split across SSE events"): each event's JSON
is read for its *pieces* (a channel key, the path of a string in the JSON,
the string) and the channels it *closes*. A channel is what one SDK joins
into one string: the text of one choice, one tool call's arguments, one
content block, one candidate.

A broker cannot model every SDK's quirks, so an event a client could read
otherwise than this reader (an index that is no plain non-negative int, or
names no entry the stream opened the way the SDK counts them, a decoy the
SDK drops, a name that disagrees with the type) raises :class:`Ambiguous`:
the stream is cut (:class:`~broker.scrub.deltas.DeltaError`).

- OpenAI Chat Completions (as ``accumulate_delta`` joins them): every string
  leaf of ``choices[i].delta`` (list entries keyed by their ``index``, the
  ``index`` and ``type`` keys apart), legacy ``choices[i].text``; ``role``,
  ``id`` and ``name`` leaves are *once* pieces (not held; a second one whose
  join holds a value cuts); a choice's ``index`` must be its position (code
  reads ``choices[0]``, the SDK's helper the index: n > 1 streams are cut);
  a non-null ``finish_reason`` closes the choice, ``[DONE]`` everything.
- OpenAI Responses, Anthropic Messages: :mod:`broker.scrub.delta_events`.
- OpenAI transcription: ``transcript.text.delta``; ``transcript.text.done``.
- Google Gemini: ``candidates[i].content.parts[j].text`` (thought parts apart,
  as ``.text`` leaves them out), keyed by the candidate, whose ``index`` must
  be its position; ``finishReason`` closes it.

Identifiers sent once (ids, tool names, signatures) are not held channels:
held until more text followed, they would stall every later event."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Ambiguous", "Found", "Reader", "index_of", "read"]

Key = tuple[object, ...]
Path = tuple[str | int, ...]

_ONCE = frozenset({"role", "id", "name"})
_MISSING = object()


class Ambiguous(ValueError):
    """An event a client could read otherwise than this reader: cut the stream."""


@dataclass
class Found:
    pieces: list[tuple[Key, Path, str]] = field(default_factory=list)
    once: list[tuple[Key, Path, str]] = field(default_factory=list)
    """Pieces of channels never held (identifiers): their join is checked on arrival."""
    closes: list[Key] = field(default_factory=list)
    """Key prefixes closed after this event's pieces (``()``: every channel)."""
    recognised: bool = False
    gemini: bool = False

    def text(self, key: Key, obj: Any, path: Path) -> None:
        value = obj.get(path[-1]) if isinstance(obj, dict) else None
        if isinstance(value, str) and value:  # an empty string adds nothing to a channel
            self.pieces.append((key, path, value))


def index_of(obj: dict[str, Any], name: str, default: object = _MISSING) -> int:
    """``obj[name]``, which must be a plain non-negative int (a bool, float,
    negative or string index is read otherwise by some client)."""
    value = obj.get(name, default)
    if type(value) is not int or value < 0:
        raise Ambiguous(f"an LLM delta event with a {name} that is no plain index")
    return value


class Reader:
    """The pieces and closes of each event of one stream, in order."""

    def __init__(self) -> None:
        from broker.scrub.delta_events import Anthropic, Responses

        self._anthropic = Anthropic()
        self._responses = Responses()
        self._lists: dict[Key, int] = {}  # chat list path -> entries opened

    def read(self, obj: Any, name: str | None = None) -> Found:
        """``obj``: one event's parsed JSON; ``name``: its SSE ``event`` field."""
        found = Found()
        if not isinstance(obj, dict):
            return found
        kind = obj.get("type")
        if kind is None and name is not None and self._anthropic.names(name):
            kind = name  # as the Anthropic SDK does
        if isinstance(kind, str) and kind.startswith("response."):
            self._responses.read(obj, kind, found)
        elif isinstance(kind, str) and self._anthropic.names(kind):
            self._anthropic.read(obj, kind, name, found)
        elif kind == "transcript.text.delta":
            found.text(("transcript",), obj, ("delta",))
            found.recognised = True
        elif kind == "transcript.text.done":
            found.closes.append(("transcript",))
        choices, candidates = obj.get("choices"), obj.get("candidates")
        if isinstance(choices, list):
            self._chat(choices, found)
        if isinstance(candidates, list):
            _gemini(candidates, found)
        found.recognised = found.recognised or bool(found.pieces or found.closes or found.once)
        return found

    def _chat(self, choices: list[Any], found: Found) -> None:
        for i, choice in enumerate(choices):
            if not isinstance(choice, dict):
                continue
            found.recognised = True
            # The SDK's helper finds a choice by its index, most code by its
            # position (``chunk.choices[0]``): both agree only when they are one.
            if index_of(choice, "index") != i:
                raise Ambiguous("a chat choice whose index is not its position")
            base: Path = ("choices", i)
            delta = choice.get("delta")
            if isinstance(delta, dict):
                self._leaves(("chat", i), (*base, "delta"), delta, found)
            found.text(("chat", i, "text"), choice, (*base, "text"))
            if choice.get("finish_reason") is not None:
                found.closes.append(("chat", i))

    def _leaves(self, key: Key, path: Path, obj: dict[str, Any], found: Found) -> None:
        """Every string leaf of a chat delta, as ``accumulate_delta`` joins them."""
        for name, value in obj.items():
            if name in ("index", "type"):  # replaced, never joined
                continue
            if isinstance(value, str) and value:
                where = found.once if name in _ONCE else found.pieces
                where.append(((*key, name), (*path, name), value))
            elif isinstance(value, dict):
                self._leaves((*key, name), (*path, name), value, found)
            elif isinstance(value, list) and any(isinstance(v, dict) for v in value):
                self._entries((*key, name), (*path, name), value, found)

    def _entries(self, key: Key, path: Path, entries: list[Any], found: Found) -> None:
        first = key not in self._lists
        opened = self._lists.get(key, 0)
        if len(self._lists) > 4096:
            raise Ambiguous("too many lists in a chat stream")
        for j, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise Ambiguous("a chat delta list that mixes objects and values")
            n = index_of(entry, "index")
            if (first and n != j) or n > opened:  # the SDK inserts at, then merges by, index
                raise Ambiguous("a chat list index that names no entry the SDK has")
            opened = max(opened, n + 1)
            self._leaves((*key, n), (*path, j), entry, found)
        self._lists[key] = opened


def _gemini(candidates: list[Any], found: Found) -> None:
    for i, cand in enumerate(candidates):
        if not isinstance(cand, dict):
            continue
        found.recognised = found.gemini = True
        # google-genai's .text reads candidates[0]; others key by index: both agree
        # only when every index is its position.
        if index_of(cand, "index", 0 if i == 0 else _MISSING) != i:
            raise Ambiguous("a Gemini candidate whose index is not its position")
        content = cand.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        for j, part in enumerate(parts if isinstance(parts, list) else ()):
            if isinstance(part, dict):
                thought = part.get("thought")
                if thought is not None and type(thought) is not bool:
                    raise Ambiguous("a Gemini thought flag that is no JSON bool")
                kind = "thought" if thought else "text"
                found.text(
                    ("gemini", i, kind), part, ("candidates", i, "content", "parts", j, "text")
                )
        if cand.get("finishReason") is not None:
            found.closes.append(("gemini", i))


def read(obj: Any, name: str | None = None) -> Found:
    """One event read on its own (a stream of one event)."""
    return Reader().read(obj, name)
