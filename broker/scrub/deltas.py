"""A value streamed a few characters per SSE delta (DESIGN.md §7.3) is found
in the text the client reassembles, and never reaches it (issue 12).

An LLM API streams its answer as JSON events, each with a few characters of
text; the SDK joins them per *channel* (:mod:`broker.scrub.delta_formats`).
Each event scrubbed on its own holds no value, the joined text can. So each
channel's joined text is scanned with every spelling the scrubber knows, and
a value found in it is cut out of the events that carry its pieces before
they are released: the piece where it starts gets the placeholder (or the
marker, for another tenant's value), later pieces lose the rest of it, and
those events are written again as JSON.

**Hold-back, never on secret content** (DESIGN.md §7.6). An event that
carries channel text is released once each of its channels has received at
least W = (longest pattern - 1) bytes after its piece, or has been closed by
the format (``finish_reason``, ``content_block_stop``, ``[DONE]``, ...), or
the stream ends. An occurrence touching a released byte then starts at or
before it and, at most the longest pattern long, lies wholly in text already
received: what is released never changes later, whatever comes. The rule
counts bytes of channel text, never looks at what they are. Other events
(pings, metadata, any stream that is not LLM deltas) are not held at all,
except behind a held event, whose order they keep.

**Fail closed.** :class:`DeltaError` (the caller cuts the stream): text for
a closed channel; an event a client could read otherwise
(:class:`~broker.scrub.delta_formats.Ambiguous`, a value joined across
channels: :mod:`~broker.scrub.delta_cross`); an event of a delta stream (or
one asked for) not JSON or too deep; a JSON line outside an event for a line
reader; an identifier (never held) sent again joining into a value; past
:data:`MAX_HELD` bytes held or :data:`MAX_CHANNELS` channels."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from broker.scrub.delta_cross import CrossCheck, Edit, cover_edits
from broker.scrub.delta_formats import Ambiguous, Found, Key, Path, Reader
from broker.scrub.delta_json import json_line, marked, rewrite
from broker.scrub.layers import Snapshot
from broker.scrub.sse import Event, EventSplitter

if TYPE_CHECKING:
    from broker.scrub.scrubber import Scrubber

__all__ = [
    "MAX_CHANNELS",
    "MAX_HELD",
    "DeltaError",
    "DeltaStream",
    "is_event_stream",
    "join_whole",
]

MAX_HELD = 8 << 20
"""Bytes a stream may hold (an unfinished event plus the events held)."""
MAX_CHANNELS = 4096
"""Channels (and closes) one stream may name; each keeps up to W bytes."""


def is_event_stream(content_type: str | None) -> bool:
    """The test :func:`broker.request.framing.should_stream` streams SSE by."""
    return "text/event-stream" in (content_type or "").lower()


def join_whole(sources: Sequence[Scrubber], tenant: str | None, body: bytes) -> tuple[bytes, int]:
    """One whole body (a buffered answer) through a :class:`DeltaStream`: the
    body with its deltas' values cut, and how many were. Raises
    :class:`DeltaError` when the stream would be cut (an ambiguous event)."""
    stream = DeltaStream(sources, tenant)
    out = stream.feed(body) + stream.flush()
    return out, stream.count


class DeltaError(Exception):
    """The stream cannot go on without releasing unscanned text: cut it."""


class _Channel:
    def __init__(self, key: Key, once: bool = False) -> None:
        self.key = key
        self.once = once  # never held: checked on arrival
        self.text = b""  # up to W released bytes, then the pending pieces, as received
        self.begin = 0  # where the pending pieces start in `text`
        self.pending: list[_Piece] = []
        self.total = 0  # bytes received


@dataclass(eq=False)
class _Piece:
    channel: _Channel
    path: Path
    start: int  # offset in the channel's text
    raw: bytes
    out: bytes | None = None  # rewritten, when released with a change


@dataclass(eq=False)
class _Held:
    event: Event
    obj: Any
    pieces: list[_Piece]


class DeltaStream:
    """One per ``text/event-stream`` response; bytes in, bytes out, like
    :class:`~broker.scrub.stream.StreamScrubber` (whose input it feeds).
    ``sources``: the scrubbers whose values the tenant's responses lose."""

    def __init__(
        self,
        sources: Sequence[Scrubber],
        tenant: str | None,
        events: bool = False,
        lines: bool = False,
    ) -> None:
        self._sources = sources
        self._tenant = tenant
        self._split = EventSplitter()
        self._queue: deque[_Held] = deque()
        self._queued = 0  # bytes of the events in the queue
        self._channels: dict[Key, _Channel] = {}
        self._closed: set[Key] = set()
        self._recognised = False
        self._events = events  # the request asked for events
        self._lines = lines  # and its client may read lines (google-genai: alt=sse)
        self._split.whole_lines = lines
        self._reader = Reader()
        self._cross = CrossCheck()
        self.count = 0

    @property
    def held(self) -> int:
        return self._split.held + self._queued

    def feed(self, chunk: bytes) -> bytes:
        return self._step(chunk, final=False)

    def flush(self) -> bytes:
        """End of stream: every channel ends, everything is released."""
        return self._step(b"", final=True)

    def _step(self, chunk: bytes, final: bool) -> bytes:
        snaps = [source._current() for source in self._sources]
        window = max(max((s.max_len for s in snaps), default=0) - 1, 0)
        for event in self._split.feed(chunk, final):
            try:
                self._add(event, snaps, window)
            except Ambiguous as exc:  # a client could read it otherwise: cut
                raise DeltaError(str(exc)) from None
        if self.held > MAX_HELD:
            raise DeltaError("an SSE stream held more than MAX_HELD bytes")
        return self._release(snaps, window, final)

    # -- events in ------------------------------------------------------------------
    def _add(self, event: Event, snaps: list[Snapshot], window: int) -> None:
        data, obj, found = event.data, None, Found()
        if data is None and self._lines and json_line(event.raw):
            raise DeltaError("a JSON line outside an event (google-genai reads lines)")
        if data is not None and data.strip() == b"[DONE]":
            found.closes.append(())
        elif data is not None:
            try:
                obj = json.loads(data.decode("utf-8", "replace"))
            except RecursionError:  # other parsers go deeper: never release it unread
                raise DeltaError("an SSE event too deep to read") from None
            except ValueError:
                if self._strict or marked(data):
                    raise DeltaError("an event of an LLM delta stream is not JSON") from None
            else:
                found = self._reader.read(obj, event.name)
        self._recognised = self._recognised or found.recognised
        if found.gemini:  # google-genai reads lines: every line is read whole
            self._lines = self._split.whole_lines = True
        pieces = []
        for key, path, text in found.pieces:
            pieces.append(piece := self._piece(key, path, text))
            self._cross.add(key, piece.channel, piece.raw, snaps, window)
        for key, path, text in found.once:
            pieces.append(self._piece(key, path, text, snaps))
        self._closed.update(found.closes)
        if len(self._closed) > MAX_CHANNELS:
            raise DeltaError("an SSE stream closed more than MAX_CHANNELS channels")
        self._queue.append(_Held(event, obj, pieces))
        self._queued += len(event.raw)

    @property
    def _strict(self) -> bool:
        """Every event must be read: the stream is LLM deltas, or was asked for."""
        return self._recognised or self._events

    def _piece(self, key: Key, path: Path, text: str, once: list[Snapshot] | None = None) -> _Piece:
        """A piece of a channel; ``once``: of a channel never held (an identifier
        sent once), whose join must hold no value that reaches back into it."""
        if once is None and self._is_closed(key):  # (once pieces are never held)
            raise DeltaError("text for a channel the stream closed")
        channel = self._channels.get(key)
        if channel is None:
            if len(self._channels) >= MAX_CHANNELS:
                raise DeltaError("an SSE stream named more than MAX_CHANNELS channels")
            channel = self._channels[key] = _Channel(key, once is not None)
        raw = text.encode("utf-8", "surrogatepass")
        piece = _Piece(channel, path, channel.total, raw)
        at = len(channel.text)
        channel.total += len(raw)
        channel.text += raw
        channel.pending.append(piece)
        for snap in once or ():
            for start, end, *_ in snap.occurrences(channel.text):
                if start < at < end:
                    raise DeltaError("an identifier sent again completes a value")
        return piece

    def _is_closed(self, key: Key) -> bool:
        return any(key[:i] in self._closed for i in range(len(key) + 1))

    def _ready(self, piece: _Piece, window: int) -> bool:
        channel = piece.channel
        if channel.once:
            return True
        return channel.total >= piece.start + len(piece.raw) + window or self._is_closed(
            channel.key
        )

    # -- events out -----------------------------------------------------------------
    def _release(self, snaps: list[Snapshot], window: int, final: bool) -> bytes:
        n = 0
        for held in self._queue:  # stops at the first event that must wait
            if not final and not all(self._ready(p, window) for p in held.pieces):
                break
            n += 1
        batch = [self._queue.popleft() for _ in range(n)]
        released: dict[_Channel, int] = {}
        for held in batch:
            self._queued -= len(held.event.raw)
            for piece in held.pieces:
                released[piece.channel] = released.get(piece.channel, 0) + 1
        for channel, k in released.items():
            self._settle(channel, k, snaps, window)
        return b"".join(map(_render, batch))

    def _settle(self, channel: _Channel, k: int, snaps: list[Snapshot], window: int) -> None:
        """Scan the channel's text and fix the output of its first ``k`` pending pieces."""
        pieces, channel.pending = channel.pending[:k], channel.pending[k:]
        data, begin = channel.text, channel.begin
        edits = cover_edits(snaps, self._tenant, data, begin)
        offset = begin
        for piece in pieces:
            end = offset + len(piece.raw)
            if edits:
                piece.out = self._apply(data, offset, end, edits)
            offset = end
        keep = max(offset - window, 0)
        channel.text, channel.begin = data[keep:], offset - keep

    def _apply(self, data: bytes, a: int, b: int, edits: list[Edit]) -> bytes | None:
        """``data[a:b]`` (one piece) with the edits that touch it, or None if none does."""
        out: list[bytes] = []
        cursor = a
        for first, end, written in edits:  # sorted, disjoint
            if end <= a:
                continue
            if first >= b:
                break
            out.append(data[cursor : max(first, a)])
            if written is not None and first >= a:
                out.append(written)
                self.count += 1
            cursor = min(end, b)
        if cursor == a and not out:
            return None
        out.append(data[cursor:b])
        return b"".join(out)


def _render(held: _Held) -> bytes:
    changed = [(p.path, p.out) for p in held.pieces if p.out is not None]
    return rewrite(held.event, held.obj, changed) if changed else held.event.raw
