"""Minted tokens outlive the process that minted them (review finding 2,
invariant 3: "a secret value is every value the policy can resolve, whether
or not this process has resolved it yet (after a restart, in another
worker)").

An OAuth or GitHub App token stays valid at its issuer for its lifetime
(typically an hour) whatever happens to the broker. An upstream that stored
the ``Authorization`` it received and shows it later would hand the raw
token to the agent once the broker restarted, or through another
``--workers`` process, because only the minting process's scrubber knew it.

So every minted token is appended, before it is used, to a ledger file
``<certs_dir>/minted-tokens.jsonl`` (mode 0600, beside the CA key, which is
as sensitive: whoever reads that directory can already impersonate every
upstream). At start-up every live entry is registered with the scrubber;
other processes sharing ``certs_dir`` (``--workers``) pick up new lines
within :data:`SYNC_EVERY` seconds on their response path. Entries past their
expiry are skipped and dropped when the file is compacted at start-up.

Not covered: brokers on different machines (separate ``certs_dir``) and a
rotated refresh token (only ever sent to ``token_url``)."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from broker.secret import SecretValue

__all__ = ["FILE_NAME", "SYNC_EVERY", "MintLedger"]

log = logging.getLogger("keybroker")
FILE_NAME = "minted-tokens.jsonl"
SYNC_EVERY = 0.2
"""Seconds between two checks for lines other processes appended."""
_COMPACT_OVER = 256 * 1024
_MAX_READ = 16 << 20

Remember = Callable[[str, str, SecretValue], None]


class MintLedger:
    def __init__(
        self,
        path: Path,
        remember: Remember,
        *,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._remember = remember
        self._wall, self._clock = wall, clock
        self._lock = threading.Lock()
        self._offset = 0
        self._next = 0.0

    def record(self, tenant: str, name: str, value: SecretValue, lifetime: float) -> None:
        """Append a minted token (before it is used). Raises OSError: the
        caller must then not use the token (fail closed)."""
        line = json.dumps(
            {"t": tenant, "n": name, "v": value.reveal(), "exp": self._wall() + lifetime},
            separators=(",", ":"),
        )
        data = (line + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)  # one write, O_APPEND: lines of several processes never interleave
            os.fsync(fd)
        finally:
            os.close(fd)

    def load(self, compact: bool = True) -> int:
        """Register every live entry; returns how many. ``compact``: rewrite
        the file without expired entries when it has grown."""
        with self._lock:
            self._offset = 0
            n, live = self._read()
            if compact and self._offset > _COMPACT_OVER:
                self._rewrite(live)
            return n

    def sync(self) -> int:
        """Entries other processes appended since the last look (rate-limited)."""
        now = self._clock()
        if now < self._next:
            return 0
        self._next = now + SYNC_EVERY
        if not self._lock.acquire(blocking=False):
            return 0
        try:
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                return 0
            if size == self._offset:
                return 0
            if size < self._offset:  # compacted by another process: read it again
                self._offset = 0
            return self._read()[0]
        finally:
            self._lock.release()

    def _read(self) -> tuple[int, list[str]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read(_MAX_READ)
        except FileNotFoundError:
            return 0, []
        end = data.rfind(b"\n") + 1  # a line being written is read next time
        self._offset += end
        now, n, live = self._wall(), 0, []
        for raw in data[:end].splitlines():
            try:
                e = json.loads(raw)
                tenant, name, value, exp = str(e["t"]), str(e["n"]), str(e["v"]), float(e["exp"])
            except (ValueError, KeyError, TypeError):
                log.error("keybroker: an unreadable line in %s was skipped", self.path)
                continue
            if exp <= now:
                continue
            try:
                self._remember(tenant, name, SecretValue(value))
            except Exception as exc:  # a tenant or secret gone from the policy, a weak value
                log.warning("keybroker: a minted token was not reloaded (%s)", type(exc).__name__)
                continue
            n += 1
            live.append(raw.decode())
        return n, live

    def _rewrite(self, live: list[str]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, "".join(x + "\n" for x in live).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        self._offset = self.path.stat().st_size
