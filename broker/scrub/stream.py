"""Streamed responses scrubbed chunk by chunk (DESIGN.md §7.6), with the
same result as scrubbing the whole stream at once."""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.scrub import views
from broker.scrub.layers import cover

if TYPE_CHECKING:
    from broker.scrub.scrubber import Scrubber


class StreamScrubber:
    """Scrubs a stream chunk by chunk, with the same result as scrubbing the
    whole stream at once. What it holds back never depends on secret content
    (DESIGN.md §7.6): with W = longest pattern - 1, when no pattern contains a
    newline everything up to the last newline is released and at most W bytes
    of the unterminated tail are held; otherwise the last W bytes are held. It
    never waits for more bytes because the tail looks like part of a secret.

    The pattern set is read at every feed, so a value added mid-stream is
    scrubbed from every byte not yet released. One per stream; not shared
    between threads."""

    def __init__(self, scrubber: Scrubber, tenant: str | None = None) -> None:
        self._scrubber = scrubber
        self._tenant = tenant
        self._context = b""  # up to W released bytes before the carry, as received
        self._carry = b""  # received, not yet released
        self.count = 0

    @property
    def held(self) -> int:
        """Bytes received but not yet released."""
        return len(self._carry)

    def feed(self, chunk: bytes) -> bytes:
        """Bytes safe to release now (possibly ``b""``)."""
        return self._step(chunk, final=False)

    def flush(self) -> bytes:
        """End of stream: scrub and release everything held."""
        return self._step(b"", final=True)

    def _step(self, chunk: bytes, final: bool) -> bytes:
        snap = self._scrubber._current()
        begin = len(self._context)
        buf = self._context + self._carry + chunk
        window = max(snap.max_len - 1, 0)
        cut = len(buf) if final else len(buf) - window
        if not snap.has_newline:
            line_end = buf.rfind(b"\n") + 1
            # After a line of wrapped base64 the value may go on past the break:
            # the fixed window decides (a rule on the data's shape, never on
            # secret content).
            if line_end and not views.wrapped_line_end(buf, line_end):
                cut = max(cut, line_end)
        cut = max(cut, begin)
        # The occurrences that decide the output before `cut` are all in buf:
        # - an occurrence covering a byte at or after `begin` starts at or after
        #   begin - W (its length is <= max_len), so the context holds its start;
        # - an occurrence starting before len(buf) - W has >= max_len bytes of
        #   buf from its start, so it lies wholly inside buf, however long;
        # - if `cut` came from the newline rule, an occurrence starting before
        #   it starts at or before the last newline and, containing none, ends
        #   there; later bytes cannot form one that starts earlier.
        # So an occurrence beginning before `cut` is replaced whole even when it
        # runs past `cut`, and nothing later can change what was released.
        out, count, rest = cover(snap, buf, begin, cut, self._tenant)
        self._carry = buf[rest:]
        self._context = buf[max(rest - window, 0) : rest]
        self.count += count
        return out
