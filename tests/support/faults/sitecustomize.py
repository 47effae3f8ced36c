"""Test-only fault injection for a broker subprocess (never shipped).

A test starts ``keybroker run`` with this directory on ``PYTHONPATH`` and
``KB_TEST_FAULT=<hook>``; Python imports this module at start-up and it
patches the addon so that the named hook raises from inside (the hook must
then fail closed). Production code has no fault-injection switch."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

_HOOK = os.environ.get("KB_TEST_FAULT")


def _boom(*_: Any, **__: Any) -> Any:
    raise RuntimeError("fault injected by a test")


def _after(original: Any) -> Any:
    def wrapper(*a: Any, **kw: Any) -> Any:
        original(*a, **kw)
        raise RuntimeError("fault injected by a test")

    return wrapper


def _install(hook: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from addons import hooks, scrubbing

    if hook == "requestheaders":
        hooks.strip_proxy_headers = _boom  # type: ignore[assignment]
    elif hook == "request":
        hooks.request_body = _boom  # type: ignore[assignment]
    elif hook == "request_after_substitution":
        hooks.write_parts = _after(hooks.write_parts)  # type: ignore[assignment]
    elif hook == "response":
        scrubbing.ResponsePath._scrub_body = _boom  # type: ignore[method-assign]
    else:
        raise SystemExit(f"KB_TEST_FAULT: unknown hook {hook!r}")


if _HOOK:
    _install(_HOOK)
