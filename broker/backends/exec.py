"""The ``exec`` backend: any CLI that prints a secret (``op read``,
``doppler secrets get --plain``, ``infisical secrets get --plain``,
``gh auth token``, ``bao kv get -field``).

``command`` is an argv template: ``{path}`` and ``{field}`` are replaced by
the rule's, inside each argument, never through a shell. The program is
looked up on the broker's own ``PATH``; it runs with only the variables named
in ``env_pass`` (read when the policy is loaded), no stdin, in a session of
its own that is killed whole after ``timeout`` seconds. Its stdout, stripped
of surrounding whitespace, is the value.

Failures (DESIGN.md §14): a non-zero exit or empty output is
``secret_not_found`` (a CLI's exit status rarely tells a missing secret from
an unreachable store); a program that cannot start, is killed by a signal or
outlives its timeout is ``backend_unavailable``. Messages give the exit
status and the size of stderr, never its text: a CLI may echo anything there.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
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
        out, err, status = self._run(argv, where)
        if status < 0:
            raise BackendError(f"{where}: killed by signal {-status}")
        if status != 0:
            raise SecretNotFound(
                f"{where}: exited with status {status} (stderr: {len(err)} bytes, not shown)"
            )
        if len(out) > MAX_OUTPUT:
            raise SecretNotFound(f"{where}: output longer than {MAX_OUTPUT} bytes")
        value = out.decode("utf-8", errors="replace").strip()
        if "\ufffd" in value:
            raise SecretNotFound(f"{where}: output is not UTF-8 text")
        if not value:
            raise SecretNotFound(f"{where}: printed nothing")
        return SecretValue(value)

    def _run(self, argv: list[str], where: str) -> tuple[bytes, bytes, int]:
        """stdout, stderr and the exit status (negative: a signal)."""
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
                out, err = proc.communicate(timeout=self._cfg.timeout)
            except subprocess.TimeoutExpired:  # its .output may hold a value: not chained
                _kill(proc)
                fail = BackendError(f"{where}: no answer within {self._cfg.timeout:g}s")
            else:
                return out, err, proc.returncode
        raise fail

    def close(self) -> None:
        self._closed = True


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill the command's whole session and reap it (bounded)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        proc.kill()
    try:
        proc.communicate(timeout=2)
    except subprocess.TimeoutExpired:  # a descendant escaped the session and holds a pipe
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        proc.wait(timeout=2)
