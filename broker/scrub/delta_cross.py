"""Scanning joined delta text (:func:`cover_edits`: the edits for one
channel's text), and text joined *across* channels (:mod:`broker.scrub.deltas`): much code
joins every piece of one kind whatever its index (every Anthropic
``text_delta`` whatever its block, every Responses ``output_text.delta``
whatever its output), which no channel holds. Each *group* (a channel key
without its indexes) keeps its last W bytes and where each channel's run of
pieces starts in them; a value found reaching into a new piece across a run
boundary (pieces of two channels) cuts the stream before that piece leaves.
A group fed by one channel at a time is never scanned: no cost for a stream
of one block."""

from __future__ import annotations

from broker.scrub.delta_formats import Ambiguous, Key
from broker.scrub.layers import Snapshot, replacement_for

__all__ = ["CrossCheck", "Edit", "cover_edits"]

Edit = tuple[int, int, bytes | None]
"""Remove ``[start, end)``, write the bytes at start (None: written before)."""


class _Group:
    def __init__(self) -> None:
        self.text = b""  # the last W bytes, then the new piece
        self.runs: list[tuple[int, object]] = []  # (start in text, channel), by start


class CrossCheck:
    def __init__(self) -> None:
        self._groups: dict[Key, _Group] = {}

    def add(
        self, key: Key, channel: object, raw: bytes, snaps: list[Snapshot], window: int
    ) -> None:
        name = tuple(k for k in key if isinstance(k, str))
        group = self._groups.get(name)
        if group is None:
            group = self._groups[name] = _Group()
        at = len(group.text)
        group.text += raw
        if not group.runs or group.runs[-1][1] is not channel:
            group.runs.append((at, channel))
        if len(group.runs) > 1:
            starts = [s for s, _ in group.runs[1:]]
            for snap in snaps:
                for start, end, *_ in snap.occurrences(group.text):
                    if start < at < end and any(start < s < end for s in starts):
                        raise Ambiguous("a value joined across two channels")
        cut = max(len(group.text) - window, 0)
        group.text = group.text[cut:]
        runs = [(s - cut, c) for s, c in group.runs]
        keep = [i for i, (s, _) in enumerate(runs) if s <= 0]
        first = keep[-1] if keep else 0
        group.runs = [(max(s, 0), c) for s, c in runs[first:]]


def cover_edits(snaps: list[Snapshot], tenant: str | None, data: bytes, begin: int) -> list[Edit]:
    """As :func:`broker.scrub.layers.cover` chooses them: every byte of every
    occurrence removed; each replacement written where its removal starts,
    unless that was released before (``begin``: where this release starts)."""
    found: list[tuple[int, int, bytes]] = []
    for snap in snaps:
        for start, end, placeholder, owners, codec in snap.occurrences(data):
            written = replacement_for(snap, placeholder, owners, tenant)
            if codec is not None:
                written = written.decode("ascii").encode(codec)
            found.append((start, end, written))
    found.sort(key=lambda m: (m[0], -m[1]))
    edits: list[Edit] = []
    cursor = 0
    for start, end, written in found:
        if end <= cursor:
            continue
        first = max(start, cursor)
        edits.append((first, end, written if first >= begin else None))
        cursor = end
    return edits
