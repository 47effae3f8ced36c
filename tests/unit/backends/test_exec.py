"""The exec backend with real child processes (the test interpreter as the
CLI): argv templates without a shell, a minimal environment, the timeout,
and failures that never carry stdout or stderr into a message."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from broker.backends.base import BackendError, SecretNotFound
from broker.backends.exec import ExecCommand
from broker.policy.backend_config import ExecBackend
from broker.secret import SecretValue
from tests.support.net import wait_for

VALUE = "sk_live_exec_0123456789abcdef"  # fake secret; never in a message
CANARY = "CANARY-stderr-9f8e7d"  # what a CLI might echo on stderr


def backend(
    script: str, *args: str, env: dict[str, str] | None = None, **cfg: object
) -> ExecCommand:
    config = ExecBackend.model_validate(
        {"type": "exec", "command": [sys.executable, "-c", script, *args], **cfg}
    )
    return ExecCommand("cli", config, env or {})


def assert_clean(exc: BaseException) -> None:
    msg = str(exc)
    assert "'cli'" in msg and VALUE not in msg and CANARY not in msg
    assert exc.__context__ is None and exc.__cause__ is None


def test_stdout_stripped_is_the_value_and_templates_fill_each_argument() -> None:
    b = backend(
        "import sys; print('  ' + sys.argv[1] + '|' + sys.argv[2] + '  ')", "p={path}", "{field}"
    )
    assert b.read("acme/stripe", "api_key") == SecretValue("p=acme/stripe|api_key")


def test_templates_expand_once_so_a_path_cannot_inject_the_field() -> None:
    b = backend("import sys; print(sys.argv[1])", "{path}")
    assert b.read("x{field}y", "F").reveal() == "x{field}y"
    assert b.read("$(touch /tmp/kb-pwned); `id`", "F").reveal() == "$(touch /tmp/kb-pwned); `id`"


def test_environment_holds_only_env_pass() -> None:
    script = "import os, json; print(json.dumps(sorted(k for k in os.environ if k != 'LC_CTYPE')))"
    b = backend(
        script, env={"KEEP": "1", "DROP": VALUE, "HOME": "/root"}, env_pass=["KEEP", "ABSENT"]
    )
    assert b.read("p", "f").reveal() == '["KEEP"]'


@pytest.mark.parametrize(
    ("script", "error", "message"),
    [
        pytest.param(
            f"import sys; print({VALUE!r}); sys.stderr.write({CANARY!r}); sys.exit(3)",
            SecretNotFound,
            r"exited with status 3 \(stderr: \d+ bytes, not shown\)",
            id="non-zero-exit",
        ),
        pytest.param("print('   ')", SecretNotFound, "printed nothing", id="blank-output"),
        pytest.param(
            "import sys; sys.stdout.buffer.write(b'\\xff\\xfe')",
            SecretNotFound,
            "not UTF-8",
            id="not-utf8",
        ),
        pytest.param("print('x' * 70000)", SecretNotFound, "longer than", id="too-long"),
        pytest.param(
            f"import os, signal, sys; sys.stderr.write({CANARY!r}); os.kill(os.getpid(), signal.SIGKILL)",
            BackendError,
            "killed by signal 9",
            id="killed",
        ),
    ],
)
def test_failures(script: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message) as info:
        backend(script).read("p", "f")
    assert type(info.value) is error
    assert_clean(info.value)


def _gone(pid: int) -> bool:
    """No such process, or a zombie nobody reaped yet (it runs nothing)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" in status


def test_timeout_kills_the_command_and_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    child = tmp_path / "child.py"
    child.write_text(
        "import os, subprocess, sys, time\n"
        f"print({VALUE!r}, flush=True)\n"
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(g.pid))\n"
        "time.sleep(60)\n"
    )
    start = time.monotonic()
    with pytest.raises(BackendError, match=r"no answer within 1s") as info:
        backend(f"exec(open({str(child)!r}).read())", timeout=1).read("p", "f")
    assert time.monotonic() - start < 5
    assert type(info.value) is BackendError
    assert_clean(info.value)
    grandchild = int(pid_file.read_text())  # it did start ...
    assert wait_for(lambda: _gone(grandchild), 5)  # ... and the session kill took it too


def test_missing_program_is_backend_unavailable() -> None:
    config = ExecBackend(type="exec", command=("kb-no-such-program-xyz", "{path}"))
    with pytest.raises(BackendError, match="not found on the broker's PATH") as info:
        ExecCommand("cli", config, {}).read("p", "f")
    assert type(info.value) is BackendError
