"""Server-sent events split incrementally, as a client's parser reads them
(WHATWG HTML, "Server-sent events", the event stream interpretation): lines
end in CRLF, LF or CR; a blank line ends an event; a line starting with
``:`` is a comment; ``data`` lines are joined with ``\\n``; a single space
after the colon is not part of the value. Each event keeps its bytes as
received, so an event nobody rewrites is relayed byte for byte, and one
that is rewritten (:func:`rebuild`) keeps its other fields and line ends."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Event", "EventSplitter", "rebuild"]

_EOL = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"


@dataclass
class Event:
    raw: bytes
    """The event's bytes as received, its terminating blank line included."""
    lines: list[tuple[bytes, bytes]]
    """(line, line end) for each line before the blank one."""
    end: bytes
    """The blank line's line end (``b""`` for an event the stream ended inside)."""

    @property
    def data(self) -> bytes | None:
        """The data buffer a client dispatches, or None: no ``data`` field, no event."""
        values = [value for name, value in map(field, self.lines) if name == b"data"]
        return b"\n".join(values) if values else None

    @property
    def name(self) -> str | None:
        """The ``event`` field (the last one), or None."""
        names = [value for name, value in map(field, self.lines) if name == b"event"]
        return names[-1].decode("utf-8", "replace") if names else None


def field(line: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
    """(name, value) of one line; a comment has the name ``b""``."""
    text = line[0]
    if text.startswith(b":"):
        return b"", text
    name, sep, value = text.partition(b":")
    return name, value[1:] if sep and value.startswith(b" ") else value


class EventSplitter:
    """Bytes in, events out. Lines no client applies to an event (comments,
    unknown fields: an NDJSON stream's every line) go out at once, each as an
    event of its own with no data, so a stream that is not SSE is never held;
    the lines of an event (``data``, ``event``, ``id``, ``retry``) are held
    until its blank line, and a line's first bytes until its field name is
    known (at most 6), and a final CR that may be the first half of a CRLF."""

    def __init__(self) -> None:
        self._buf = b""  # the line not yet ended
        self._lines: list[tuple[bytes, bytes]] = []  # the current event's lines
        self._raw: list[bytes] = []
        self._raw_len = 0
        self._free = False  # inside a line that goes out as it comes
        self._started = False
        self.whole_lines = False
        """Hold a line that is no event field until it ends (to read it whole)."""

    @property
    def held(self) -> int:
        return len(self._buf) + self._raw_len

    def feed(self, chunk: bytes, final: bool = False) -> list[Event]:
        buf = self._buf + chunk
        if not self._started:  # a byte-order mark is the stream's, not the first line's
            if len(buf) < len(_BOM) and _BOM.startswith(buf) and not final:
                self._buf = buf
                return []
            self._started = True
            if buf.startswith(_BOM):
                self._buf = b""
                return [_passed(_BOM), *self.feed(buf[len(_BOM) :], final)]
        out: list[Event] = []
        pos = 0
        while pos < len(buf):  # each pass consumes a line or ends the loop
            m = _EOL.search(buf, pos)
            if m is None or (m.group() == b"\r" and m.end() == len(buf) and not final):
                end = m.start() if m else len(buf)  # a CR may be half a CRLF: not yet
                if self._free or (not self.whole_lines and _free(buf[pos:end], complete=False)):
                    out += [_passed(buf[pos:end])] if end > pos else []
                    self._free, pos = True, end
                break
            line, eol, pos = buf[pos : m.start()], m.group(), m.end()
            if self._free or (line and _free(line, complete=True)):
                out.append(_passed(line + eol))
                self._free = False
            elif line:
                self._lines.append((line, eol))
                self._raw.append(line + eol)
                self._raw_len += len(line) + len(eol)
            else:
                out.append(Event(b"".join(self._raw) + eol, self._lines, eol))
                self._lines, self._raw, self._raw_len = [], [], 0
        self._buf = buf[pos:]
        if final and (self._buf or self._lines):  # the stream ended inside an event
            if self._buf:
                self._lines.append((self._buf, b""))
                self._raw.append(self._buf)
            out.append(Event(b"".join(self._raw), self._lines, b""))
            self._buf, self._lines, self._raw, self._raw_len = b"", [], [], 0
        return out


_FIELDS = (b"data", b"event", b"id", b"retry")
_PREFIXES = frozenset(f[:i] for f in _FIELDS for i in range(len(f) + 1))


def _free(start: bytes, complete: bool) -> bool:
    """A line that begins with ``start`` (or is it, when ``complete``) is no
    event field: no client applies it to an event, it may go anywhere."""
    name, sep, _ = start.partition(b":")
    if not sep and not complete and name in _PREFIXES:
        return False  # it may still become a field name: wait
    return name not in _FIELDS


def _passed(data: bytes) -> Event:
    return Event(data, [], b"")


def rebuild(event: Event, data: bytes) -> bytes:
    """``event`` with its data replaced by one ``data`` line holding ``data``
    (which holds no line break), where its first data line was."""
    assert b"\n" not in data and b"\r" not in data
    out: list[bytes] = []
    written = False
    for line in event.lines:
        if field(line)[0] != b"data":
            out += line
        elif not written:
            out += (b"data: ", data, line[1])
            written = True
    out.append(event.end)
    return b"".join(out)
