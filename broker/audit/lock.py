"""One writer per audit chain: an exclusive ``flock`` on the open file.

Two brokers appending to one file would interleave two chains into one
(each line's ``prev`` naming a record of the other process), which verifies
as broken. The lock is taken on every open (start, reopen, after a
rotation) and released when the file is closed or the process ends, also by
SIGKILL, so a crashed broker never leaves a stale lock behind."""

from __future__ import annotations

import fcntl
from pathlib import Path


class AuditInUse(OSError):
    """Another process holds the audit file's lock."""


def lock_exclusive(fd: int, path: Path) -> None:
    """Take the lock without waiting; :class:`AuditInUse` when another
    process (or another open of the file) holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise AuditInUse(
            f"audit file {path} is being written by another keybroker (it holds the "
            "file's lock); two brokers must never write one chain: stop the other one, "
            "or give this one its own audit.path"
        ) from None
