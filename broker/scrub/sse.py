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


def field(line: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
    """(name, value) of one line; a comment has the name ``b""``."""
    text = line[0]
    if text.startswith(b":"):
        return b"", text
    name, sep, value = text.partition(b":")
    return name, value[1:] if sep and value.startswith(b" ") else value


class EventSplitter:
    """Bytes in, whole events out. Holds only the event not yet ended, and a
    final CR that may be the first half of a CRLF; never anything else."""

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0  # start of the first line not yet split
        self._lines: list[tuple[bytes, bytes]] = []
        self._started = False

    @property
    def held(self) -> int:
        return len(self._buf)

    def feed(self, chunk: bytes, final: bool = False) -> list[Event]:
        buf = self._buf + chunk
        if not self._started:  # a byte-order mark is the stream's, not the first line's
            if len(buf) < len(_BOM) and _BOM.startswith(buf) and not final:
                self._buf = buf
                return []
            self._started = True
            if buf.startswith(_BOM):
                buf = buf[len(_BOM) :]
                self._buf, self._pos = b"", 0
                return [Event(_BOM, [], b""), *self.feed(buf, final)]
        events: list[Event] = []
        pos, start = self._pos, 0
        while pos < len(buf):  # each pass consumes one line: bounded by len(buf)
            m = _EOL.search(buf, pos)
            if m is None or (m.group() == b"\r" and m.end() == len(buf) and not final):
                break  # an unended line, or a CR whose LF may be in the next chunk
            line, pos = buf[pos : m.start()], m.end()
            if line:
                self._lines.append((line, m.group()))
                continue
            events.append(Event(buf[start:pos], self._lines, m.group()))
            self._lines, start = [], pos
        self._buf, self._pos = buf[start:], pos - start
        if final and self._buf:  # the stream ended inside an event
            if self._pos < len(self._buf):
                self._lines.append((self._buf[self._pos :], b""))
            events.append(Event(self._buf, self._lines, b""))
            self._buf, self._pos, self._lines = b"", 0, []
        return events


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
