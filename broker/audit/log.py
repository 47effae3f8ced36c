"""The tamper-evident decision audit: one redacted JSON record per line,
hash-chained (DESIGN.md §6). Records hold names and destinations only: never
a secret value, a header value, a query value, a body or a token.

Records are built in :mod:`broker.audit.record`; the chain itself (hashing
and checking) lives in :mod:`broker.audit.chain`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from broker.audit.chain import (
    GENESIS,
    chain_files,
    rotated_name,
    sealed,
    tail_state,
)
from broker.audit.lock import AuditInUse, lock_exclusive
from broker.audit.record import AuditRecord

log = logging.getLogger("keybroker")

RETRY_SECONDS = 1.0
"""An unhealthy log tries to reopen its file at most this often."""
MIN_FREE_BYTES = 1 << 20
"""Below this much free space (for an unprivileged writer) on the audit file's
filesystem, :meth:`AuditLog.healthy` is False: a request carrying a secret is
refused before it is forwarded, instead of being forwarded on a full disk and
then not recorded."""
_clock = time.monotonic


class AuditUnavailable(Exception):
    """The audit cannot be written; requests carrying a secret must be refused."""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:  # each pass writes at least one byte, or raises
        n = os.write(fd, view)
        if n <= 0:
            raise OSError("audit write made no progress")
        view = view[n:]


def _rotated_last_hash(path: Path) -> str | None:
    """The last hash of the newest rotated file of ``path``, if there is one."""
    older = [p for p in chain_files(path) if p != path]
    if not older:
        return None
    try:
        fd = os.open(older[-1], os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        return tail_state(fd, os.fstat(fd).st_size)[0]
    except OSError:
        return None
    finally:
        os.close(fd)


class AuditLog:
    """Appends records to one JSONL file (0600, parent 0700 when created),
    continuing the chain of whatever the file already holds."""

    def __init__(
        self, path: Path, *, hmac_key: bytes | None = None, rotate_bytes: int | None = None
    ) -> None:
        self.path = Path(path)
        self._spath = os.fspath(self.path)
        self._key = hmac_key or None
        self._rotate_bytes = rotate_bytes
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._ident: tuple[int, int] | None = None
        self._size = 0
        self._prev = GENESIS
        self._next_try = 0.0
        self._closed = False
        self.in_use: AuditInUse | None = None
        """Set while another process holds the file's lock."""
        with self._lock:
            self._open()
        if self.in_use is not None:
            raise self.in_use

    # -- opening -----------------------------------------------------------------
    def _open(self) -> bool:
        """Open (or create) the file; on failure leave the log unhealthy."""
        self._next_try = _clock() + RETRY_SECONDS
        fd = -1
        try:
            parent = self.path.parent
            if not parent.exists():
                parent.mkdir(parents=True, mode=0o700)
                os.chmod(parent, 0o700)  # whatever the umask
            flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK
            fd = os.open(self.path, flags, 0o600)  # O_NONBLOCK: a FIFO must not hang us
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(f"{self.path} is not a regular file")
            lock_exclusive(fd, self.path)
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
            if stat.S_IMODE(st.st_mode) != 0o600:
                os.fchmod(fd, 0o600)
            prev, ends_clean = tail_state(fd, st.st_size)
            if not ends_clean:  # a crash left a partial line: keep it, start a new one
                _write_all(fd, b"\n")
            if st.st_size and prev is None:
                log.warning(
                    "keybroker: %s ends without an intact record; the chain restarts", self.path
                )
            if st.st_size:
                self._prev = prev or GENESIS
            elif self._prev == GENESIS:  # a fresh file after a rotation: continue that chain
                self._prev = _rotated_last_hash(self.path) or GENESIS
            self._size = os.fstat(fd).st_size
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
            self._fd, self.in_use = None, exc if isinstance(exc, AuditInUse) else None
            return False
        self._fd, self._ident, self.in_use = fd, (st.st_dev, st.st_ino), None
        return True

    def _drop_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass

    def _ready(self) -> bool:
        """Under the lock: is there an open fd on the file now at ``path``?"""
        if self._closed:
            return False
        if self._fd is not None:
            try:
                st = os.stat(self._spath)
                if (st.st_dev, st.st_ino) == self._ident:
                    return True
            except OSError:
                pass
            self._drop_fd()  # removed or replaced under us: reopen, chain continues
            return self._open()
        if _clock() < self._next_try:
            return False
        return self._open()

    # -- public ------------------------------------------------------------------
    def healthy(self) -> bool:
        """Cheap: can a record be written now? Checked before a secret is used."""
        with self._lock:
            return self._ready() and self._room()

    def _room(self) -> bool:
        """Under the lock, with the file open: room for records on its filesystem?"""
        assert self._fd is not None
        try:
            fs = os.fstatvfs(self._fd)
        except OSError:
            return False
        # f_blocks == 0: a filesystem that reports no sizes; the write decides.
        return fs.f_blocks == 0 or fs.f_bavail * fs.f_frsize >= MIN_FREE_BYTES

    def append(self, record: AuditRecord) -> AuditRecord:
        """Chain ``record`` (sets ``prev`` and ``hash``), write it as one line, return it."""
        rec = cast(AuditRecord, {k: v for k, v in record.items() if k not in ("prev", "hash")})
        with self._lock:
            if not self._ready():
                raise AuditUnavailable(f"audit log {self.path} cannot be written")
            rec["prev"] = self._prev
            rec["hash"], line = sealed(rec, self._key)
            line += b"\n"
            limit = self._rotate_bytes
            if limit is not None and self._size and self._size + len(line) > limit:
                self._rotate()
                if self._fd is None:
                    raise AuditUnavailable(f"audit log {self.path} cannot be written")
            assert self._fd is not None
            try:
                _write_all(self._fd, line)
            except OSError:
                self._drop_fd()
                self._next_try = _clock() + RETRY_SECONDS
                raise AuditUnavailable(f"audit log {self.path} cannot be written") from None
            self._size += len(line)
            self._prev = rec["hash"]
            return rec

    def rotate(self) -> Path | None:
        """Move the current file aside as ``<name>.<UTC timestamp>.<n>`` and start a
        new one whose first record continues the chain. None when there is nothing
        to rotate (empty or unwritable file)."""
        with self._lock:
            if not self._ready():
                return None
            return self._rotate()

    def _rotate(self) -> Path | None:
        if self._fd is None or not self._size:
            return None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        target: Path | None = None
        for n in range(1, 10_000):
            candidate = rotated_name(self.path, stamp, n)
            if not candidate.exists():
                target = candidate
                break
        try:
            if target is None:
                raise OSError("no free rotation name")
            os.fsync(self._fd)
            os.rename(self.path, target)
        except OSError:
            log.warning("keybroker: could not rotate %s; still writing to it", self.path)
            return None
        self._drop_fd()
        self._size = 0
        self._open()
        return target

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop_fd()
