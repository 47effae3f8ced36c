"""What one scan of response bytes runs on: a *layer* (one compiled matcher
and, per pattern, the placeholder it becomes and whose values make it), an
immutable *snapshot* of the layers in use, and :func:`cover`, which writes
each occurrence's replacement for the reading tenant (its own placeholder,
or :data:`MARKER` for another tenant's value)."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

from broker.scrub import matcher, views

Owner = tuple[str, str]
Entry = tuple[bytes, dict[Owner, bytes], list[bytes]]  # value, owners, variants

MARKER = b"<<redacted>>"
"""What replaces a value the reader's tenant does not own: it names no secret
and no tenant (issue 12 item 4), and it is not a placeholder, so an agent
that sends it back does not trip ``malformed_placeholder``."""


@dataclass(frozen=True)
class Layer:
    matcher: matcher.Matcher
    replacements: tuple[bytes, ...]  # per pattern: the placeholder to write
    owners: tuple[frozenset[Owner], ...]  # per pattern: whose values produce it


Occurrence = tuple[int, int, bytes, frozenset[Owner], str | None]
"""start, end, placeholder, owners, and the codec the placeholder is written
in (None: as is; ``utf-16-le``/``-be`` for a match in a UTF-16 view)."""


@dataclass(frozen=True)
class Snapshot:
    layers: tuple[Layer, ...]
    max_len: int
    has_newline: bool
    generation: int
    ranks: dict[Owner, int]

    def occurrences(self, data: bytes) -> list[Occurrence]:
        """Every occurrence in every layer, by start, longest first: in the
        data as it is, and in the decoded views its triggers call for."""
        found: list[Occurrence] = []
        mask = 0
        for layer in self.layers:
            matches, triggered = layer.matcher.scan(data)
            mask |= triggered
            found += [(a, b, layer.replacements[i], layer.owners[i], None) for a, b, i in matches]
        if mask:
            layers = self.layers

            def find(view: bytes) -> list[tuple[int, int, int]]:
                return [
                    (a, b, n << 32 | i)
                    for n, layer in enumerate(layers)
                    for a, b, i in layer.matcher.find_all(view)
                ]

            for a, b, key, codec in views.view_matches(data, mask, find):
                layer, i = layers[key >> 32], key & 0xFFFFFFFF
                found.append((a, b, layer.replacements[i], layer.owners[i], codec))
        if len(self.layers) > 1 or mask:
            found.sort(key=lambda m: (m[0], -m[1]))
        return found


def build_layer(entries: Iterable[Entry], engine: str) -> Layer | None:
    entries = list(entries)
    patterns: dict[bytes, tuple[bytes, set[Owner]]] = {}
    for _value, owners, forms in sorted(entries, key=lambda e: e[0]):
        placeholder = owners[min(owners)]  # deterministic across owners
        for form in forms:
            patterns.setdefault(form, (placeholder, set()))[1].update(owners)
    if not patterns:
        return None
    keys = list(patterns)
    wide = any(not value.isascii() for value, _owners, _forms in entries)
    shared: dict[frozenset[Owner], frozenset[Owner]] = {}  # one set per owner group, not per form
    return Layer(
        matcher=matcher.build(keys, engine, views.triggers(wide)),
        replacements=tuple(patterns[k][0] for k in keys),
        owners=tuple(shared.setdefault(o, o) for o in (frozenset(patterns[k][1]) for k in keys)),
    )


def replacement_for(
    snap: Snapshot, placeholder: bytes, owners: frozenset[Owner], tenant: str | None
) -> bytes:
    if tenant is None:
        return placeholder
    own = [o for o in owners if o[0] == tenant]
    if not own:
        return MARKER
    name = min(own, key=lambda o: (snap.ranks.get(o, 0), o[1]))[1]
    return b"<<secret:" + name.encode() + b">>"


def cover(
    snap: Snapshot,
    data: bytes,
    begin: int,
    cut: int,
    tenant: str | None = None,
    found: list[Occurrence] | None = None,
) -> tuple[bytes, int, int]:
    """Scrub ``data[begin:]`` up to ``cut``; return the scrubbed bytes, the
    count of placeholders written, and where the unreleased rest begins.

    Every byte inside any occurrence is replaced, not only those of a
    leftmost-longest choice: when a spelling of one secret overlaps the start
    of another (``hex(a)`` ending where ``b`` begins), a non-overlapping choice
    would replace the first and release the tail of the second. An occurrence
    that starts inside an already replaced one has its remainder replaced by
    its own placeholder. Bytes before ``begin`` are context only: they were
    released already, but occurrences starting there still cover what follows.
    ``found``: ``snap.occurrences(data)``, when the caller has them already.
    """
    pieces: list[bytes] = []
    cursor = begin
    count = 0
    for start, end, replacement, owners, codec in (
        snap.occurrences(data) if found is None else found
    ):
        if end <= cursor:
            continue
        first = max(start, cursor)
        if first >= cut:
            break
        written = replacement_for(snap, replacement, owners, tenant)
        if codec is not None:  # a match in a UTF-16 view: the placeholder in UTF-16 too
            written = written.decode("ascii").encode(codec)
        pieces += [data[cursor:first], written]
        cursor = end
        count += 1
    rest = max(cut, cursor)
    if not count:
        return data[begin:cut], 0, cut
    pieces.append(data[cursor:rest])
    return b"".join(pieces), count, rest


SEPARATOR = b"\n\n"
"""Between the pieces :func:`cover_many` scans at once: no pattern holds a
newline, so no occurrence, in the data or in a decoded view, crosses it."""


def cover_many(
    snap: Snapshot, pieces: list[bytes], tenant: str | None
) -> list[tuple[bytes, int]] | None:
    """Each piece scrubbed on its own, as :func:`cover` would, in one scan of
    them joined by :data:`SEPARATOR`: each occurrence is written into the
    piece it lies in. None when an occurrence spans a separator (the caller
    then scans each piece alone)."""
    found = snap.occurrences(SEPARATOR.join(pieces))
    if not found:  # the common case: one scan of everything
        return [(piece, 0) for piece in pieces]
    ends, at = [], 0
    for piece in pieces:
        at += len(piece)
        ends.append(at)
        at += len(SEPARATOR)
    per: list[list[Occurrence]] = [[] for _ in pieces]
    for occ in found:
        i = bisect.bisect_left(ends, occ[0])  # the piece the occurrence starts in
        if i == len(pieces) or occ[1] > ends[i] or occ[0] < ends[i] - len(pieces[i]):
            return None
        per[i].append(occ)
    out: list[tuple[bytes, int]] = []
    for piece, occs, end in zip(pieces, per, ends, strict=True):
        if not occs:
            out.append((piece, 0))
            continue
        shift = end - len(piece)
        local = [(a - shift, b - shift, r, o, c) for a, b, r, o, c in occs]
        data, count, _rest = cover(snap, piece, 0, len(piece), tenant, local)
        out.append((data, count))
    return out
