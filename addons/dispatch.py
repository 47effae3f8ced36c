"""A cheaper event dispatch for the master ``keybroker run`` builds.

mitmproxy delivers every proxy event (``requestheaders``, ``request``,
``response``, ``client_connected``, ...) with ``AddonManager.trigger_event``:
for each addon of the chain, a generator walks it and its children, asks
each for a method of the event's name, and wraps the call in a
``contextlib`` context manager (``safecall``) that logs an addon's
exception. After each flow event it triggers ``update`` the same way, which
no addon of keybroker's set implements. That walk costs ~10 µs per event on
a 2-vCPU VM with eight addons, four to five events per request: a large
share of what keybroker itself adds per request (bench/README.md).

:func:`fast_dispatch` replaces ``trigger_event`` on one manager with a
dispatch of the same semantics:

- the same hooks in the same order (each top-level addon, then its children
  depth first, as ``traverse`` yields them); the method is still looked up
  on the object at every call, so a hook patched on an instance is called;
- an exception in a hook is logged as ``safecall`` logs it and ends that
  top-level addon's subtree for this event, and the next addon goes on;
  ``AddonHalt`` ends the event; ``OptionsError`` propagates;
- sync and async hooks alike.

What it caches is which objects *have* a method of the event's name, per
chain of top-level addons (a new or removed addon rebuilds it); an addon
that grows a hook attribute or a child after it was added is not seen until
the chain changes. keybroker's addons are classes with fixed hooks and
children. ``tests/unit/addons/test_dispatch.py`` checks the semantics
against mitmproxy's own ``trigger_event``.
"""

from __future__ import annotations

import inspect
import logging
import types
from collections.abc import Sequence
from typing import Any

from mitmproxy import exceptions, hooks
from mitmproxy.addonmanager import AddonManager, cut_traceback, traverse

__all__ = ["fast_dispatch"]

logger = logging.getLogger("mitmproxy.addonmanager")

_Plan = tuple[tuple[Any, ...], ...]
"""Per top-level addon, the objects of its subtree that have the hook."""


def _plan(chain: Sequence[Any], name: str) -> _Plan:
    groups = []
    for top in chain:
        having = tuple(a for a in traverse([top]) if getattr(a, name, None) is not None)
        if having:
            groups.append(having)
    return tuple(groups)


def _log(exc: Exception) -> None:
    """As mitmproxy's ``safecall`` logs an addon error."""
    tb = cut_traceback(exc.__traceback__, "invoke_addon_sync")
    tb = cut_traceback(tb, "invoke_addon")
    tb = cut_traceback(tb, "_fast_trigger")
    logger.error(f"Addon error: {exc}", exc_info=(type(exc), exc, tb))


async def _fast_trigger(self: AddonManager, event: hooks.Hook) -> None:
    chain = self.chain
    key = tuple(map(id, chain))
    cache: dict[str, _Plan] = self.__dict__.setdefault("_kb_plans", {})
    if self.__dict__.get("_kb_chain") != key:
        cache.clear()
        self.__dict__["_kb_chain"] = key
    name = event.name
    plan = cache.get(name)
    if plan is None:
        plan = cache[name] = _plan(chain, name)
    if not plan:
        return
    args = event.args()
    for group in plan:
        try:
            for addon in group:
                func = getattr(addon, name, None)
                if func is None:
                    continue
                if not callable(func):
                    if isinstance(func, types.ModuleType):
                        continue  # a module import named like a hook (as mitmproxy skips it)
                    raise exceptions.AddonManagerError(
                        f"Addon handler {name} ({addon}) not callable"
                    )
                res = func(*args)
                if res is not None and inspect.isawaitable(res):
                    await res
        except exceptions.AddonHalt:
            return
        except exceptions.OptionsError:
            raise
        except Exception as exc:
            _log(exc)


def fast_dispatch(manager: AddonManager) -> None:
    """Use :func:`_fast_trigger` for ``manager``'s async events (every proxy
    hook, and the ``update`` after each flow event)."""
    manager.trigger_event = types.MethodType(_fast_trigger, manager)  # type: ignore[method-assign]
