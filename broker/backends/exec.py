"""The ``exec`` backend: any CLI that prints a secret (``op read``,
``doppler secrets get --plain``, ``infisical secrets get --plain``,
``gh auth token``, ``bao kv get -field``).

``command`` is an argv template: ``{path}`` and ``{field}`` are replaced by
the rule's, inside each argument, never through a shell. The program is
looked up on the broker's own ``PATH``; it runs with only the variables named
in ``env_pass`` (read when the policy is loaded), no stdin, in a session of
its own that is killed whole after ``timeout`` seconds. Its stdout, stripped of surrounding
whitespace, is the value; at most MAX_OUTPUT bytes of it are kept, and
stderr is read only to be counted.

Failures (DESIGN.md §14): a non-zero exit or empty output is
``secret_not_found`` (a CLI's exit status rarely tells a missing secret from
an unreachable store); a program that cannot start, is killed by a signal or
outlives its timeout is ``backend_unavailable``. Messages give the exit
status and the size of stderr, never its text: a CLI may echo anything there.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping

from broker.backends.base import BackendError, SecretNotFound
from broker.policy.backend_config import ExecBackend
from broker.secret import SecretValue

MAX_OUTPUT = 64 * 1024
"""Bytes of stdout accepted; a longer answer is not a secret value."""
_TEMPLATE_RE = re.compile(r"\{(path|field)\}")


class ExecCommand:
    """A :class:`broker.backends.base.Backend` that runs one CLI per read."""

    blocking = True

    def __init__(self, name: str, config: ExecBackend, env: Mapping[str, str]) -> None:
        self.name = name
        self._cfg = config
        self._env = {k: env[k] for k in config.env_pass if k in env}
        self._closed = False

    def __repr__(self) -> str:
        return f"ExecCommand(name={self.name!r}, program={self._cfg.command[0]!r})"

    def argv(self, path: str, field: str) -> list[str]:
        """The command for one rule (template expanded once, left to right)."""
        values = {"path": path, "field": field}
        return [_TEMPLATE_RE.sub(lambda m: values[m.group(1)], a) for a in self._cfg.command]

    def read(self, path: str, field: str) -> SecretValue:
        program = self._cfg.command[0]
        where = f"exec backend {self.name!r} ({program} for {path}/{field})"
        if self._closed:
            raise BackendError(f"{where}: backend is closed")
        found = shutil.which(program)
        if found is None:
            raise BackendError(f"{where}: program not found on the broker's PATH")
        argv = [found, *self.argv(path, field)[1:]]
        out, err_bytes, status = self._run(argv, where)
        if status < 0:
            raise BackendError(f"{where}: killed by signal {-status}")
        if status != 0:
            raise SecretNotFound(
                f"{where}: exited with status {status} (stderr: {err_bytes} bytes, not shown)"
            )
        if len(out) > MAX_OUTPUT:
            raise SecretNotFound(f"{where}: output longer than {MAX_OUTPUT} bytes")
        value = out.decode("utf-8", errors="replace").strip()
        if "\ufffd" in value:
            raise SecretNotFound(f"{where}: output is not UTF-8 text")
        if not value:
            raise SecretNotFound(f"{where}: printed nothing")
        return SecretValue(value)

    def _run(self, argv: list[str], where: str) -> tuple[bytes, int, int]:
        """stdout (at most MAX_OUTPUT + 1 bytes), the number of stderr bytes
        (read and dropped) and the exit status (negative: a signal)."""
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._env,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            fail = BackendError(f"{where}: cannot start ({type(exc).__name__})")
        else:
            try:
                return self._collect(proc)
            except subprocess.TimeoutExpired:
                fail = BackendError(f"{where}: no answer within {self._cfg.timeout:g}s")
            finally:
                _kill(proc)  # the whole session, whatever happened; reaps it
        raise fail  # outside the handlers: nothing chained

    def _collect(self, proc: subprocess.Popen[bytes]) -> tuple[bytes, int, int]:
        """Read both pipes until they close, keeping at most MAX_OUTPUT + 1
        bytes of stdout; raises TimeoutExpired at the deadline."""
        assert proc.stdout is not None and proc.stderr is not None
        deadline = time.monotonic() + self._cfg.timeout
        out, err_bytes = bytearray(), 0
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            sel.register(proc.stderr, selectors.EVENT_READ)
            while sel.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise subprocess.TimeoutExpired(proc.args, self._cfg.timeout)
                for key, _ in sel.select(left):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                    elif key.fileobj is proc.stderr:
                        err_bytes += len(chunk)
                    elif len(out) <= MAX_OUTPUT:
                        out += chunk[: MAX_OUTPUT + 1 - len(out)]
        status = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        return bytes(out), err_bytes, status

    def close(self) -> None:
        self._closed = True


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill the command's whole session (a no-op once it has ended and been
    reaped), close its pipes and reap it, bounded."""
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        pass  # unkillable (D state): left to the OS, the read has failed anyway
