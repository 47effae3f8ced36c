"""Log records scrubbed before any handler writes them (DESIGN.md §7.4).

mitmproxy's own log lines quote what peers sent (``Unexpected data from
server: b'...'``, HTTP/2 protocol errors, WebSocket ping payloads,
tracebacks). A filter on every handler renders each record it is about to
emit — message, arguments, traceback — into one string and scrubs it with
keybroker's scrubber. A filter on a *handler* sees every record that handler
emits, whichever logger it came from; records below a handler's level are
never rendered, so quiet handlers cost nothing."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable

__all__ = ["ScrubFilter", "install"]

_UNPRINTABLE = "keybroker: a log record could not be rendered; dropped its text"


class ScrubFilter(logging.Filter):
    def __init__(self, scrub: Callable[[bytes], tuple[bytes, int]]) -> None:
        super().__init__("keybroker.scrub")
        self._scrub = scrub

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_kb_scrubbed", False):
            return True  # another handler's filter already did it
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
            if record.stack_info:
                text += "\n" + record.stack_info
            out, _ = self._scrub(text.encode("utf-8", "surrogateescape"))
            text = out.decode("utf-8", "surrogateescape")
        except Exception:  # never let a record through unread
            text = _UNPRINTABLE
        record.msg, record.args = text, ()
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        record._kb_scrubbed = True
        return True


def install(flt: ScrubFilter) -> None:
    """Put ``flt`` on every handler of every logger (idempotent)."""
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        for handler in lg.handlers:
            if flt not in handler.filters:
                handler.addFilter(flt)
    if logging.lastResort is not None and flt not in logging.lastResort.filters:
        logging.lastResort.addFilter(flt)
