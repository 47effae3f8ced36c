"""addons/dispatch.py: the fast event dispatch calls exactly what mitmproxy's
own ``trigger_event`` calls, in the same order, with the same handling of
errors, ``AddonHalt`` and ``OptionsError``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from mitmproxy import exceptions, hooks
from mitmproxy.master import Master
from mitmproxy.options import Options
from mitmproxy.proxy.layers.http import HttpRequestHook, HttpResponseHook
from mitmproxy.test import tflow

from addons.dispatch import fast_dispatch
from addons.runner import proxy_master


class Rec:
    """An addon recording its hooks into a shared list; ``fail``/``halt`` name
    hooks that raise."""

    def __init__(
        self, name: str, calls: list[str], children: list[Any] | None = None, **kw: Any
    ) -> None:
        self.name, self.calls = name, calls
        self.fail: set[str] = kw.get("fail", set())
        self.halt: set[str] = kw.get("halt", set())
        self.options_error: set[str] = kw.get("options_error", set())
        if children is not None:
            self.addons = children

    def _hit(self, hook: str) -> None:
        self.calls.append(f"{self.name}.{hook}")
        if hook in self.fail:
            raise ValueError(f"{self.name} fails in {hook}")
        if hook in self.halt:
            raise exceptions.AddonHalt()
        if hook in self.options_error:
            raise exceptions.OptionsError("bad option")

    def request(self, flow: Any) -> None:
        self._hit("request")

    async def response(self, flow: Any) -> None:
        await asyncio.sleep(0)
        self._hit("response")

    def update(self, flows: Any) -> None:
        self._hit("update")


def _chain(calls: list[str], **kw: Any) -> list[Any]:
    """a(children: b(children: c), d), e, f: nested and flat, as mitmproxy allows."""
    c = Rec("c", calls, **kw.get("c", {}))
    b = Rec("b", calls, [c], **kw.get("b", {}))
    d = Rec("d", calls, **kw.get("d", {}))
    a = Rec("a", calls, [b, d], **kw.get("a", {}))
    e = Rec("e", calls, **kw.get("e", {}))
    f = Rec("f", calls, **kw.get("f", {}))
    return [a, e, f]


async def _run(fast: bool, kw: dict[str, Any], event: hooks.Hook) -> tuple[list[str], Any]:
    calls: list[str] = []
    master = Master(Options())
    manager = master.addons
    if fast:
        fast_dispatch(manager)
    for addon in _chain(calls, **kw):
        manager.add(addon)
    try:
        await manager.handle_lifecycle(event)
    except exceptions.OptionsError as exc:
        return calls, type(exc)
    finally:
        master._legacy_log_events.uninstall()  # its handler would outlive this loop
    return calls, None


CASES: dict[str, dict[str, Any]] = {
    "plain": {},
    "error in a child ends its subtree": {"b": {"fail": {"request", "response"}}},
    "error at the top": {"a": {"fail": {"request"}}, "e": {"fail": {"update"}}},
    "halt stops the event": {"d": {"halt": {"request", "response", "update"}}},
    "options error propagates": {"c": {"options_error": {"request", "response"}}},
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("hook", ["request", "response"])
def test_same_calls_order_and_errors_as_mitmproxy(
    case: str, hook: str, caplog: pytest.LogCaptureFixture
) -> None:
    f = tflow.tflow(resp=True)
    event = HttpRequestHook(f) if hook == "request" else HttpResponseHook(f)
    kw = CASES[case]
    with caplog.at_level(logging.ERROR):
        theirs = asyncio.run(_run(False, kw, event))
        their_log = [r.getMessage() for r in caplog.records]
        caplog.clear()
        ours = asyncio.run(_run(True, kw, event))
        our_log = [r.getMessage() for r in caplog.records]
    assert ours == theirs
    assert our_log == their_log
    assert theirs[0]  # the case exercised something


def test_a_hook_patched_on_an_instance_is_called() -> None:
    async def go() -> list[str]:
        calls: list[str] = []
        master = Master(Options())
        fast_dispatch(master.addons)
        a = Rec("a", calls)
        master.addons.add(a)
        f = tflow.tflow()
        await master.addons.trigger_event(HttpRequestHook(f))
        a.request = lambda flow: calls.append("patched")  # type: ignore[method-assign]
        await master.addons.trigger_event(HttpRequestHook(f))
        master._legacy_log_events.uninstall()
        return calls

    assert asyncio.run(go()) == ["a.request", "patched"]


def test_an_addon_added_later_is_called() -> None:
    async def go() -> list[str]:
        calls: list[str] = []
        master = Master(Options())
        fast_dispatch(master.addons)
        master.addons.add(Rec("a", calls))
        f = tflow.tflow()
        await master.addons.trigger_event(HttpRequestHook(f))
        master.addons.add(Rec("b", calls))
        await master.addons.trigger_event(HttpRequestHook(f))
        master.addons.remove(master.addons.chain[0])
        await master.addons.trigger_event(HttpRequestHook(f))
        master._legacy_log_events.uninstall()
        return calls

    assert asyncio.run(go()) == ["a.request", "a.request", "b.request", "b.request"]


def test_keybroker_run_master_uses_it() -> None:
    async def go() -> str:
        master = proxy_master(Options())
        name: str = master.addons.trigger_event.__func__.__name__  # type: ignore[attr-defined]
        master.shutdown()
        return name

    assert asyncio.run(go()) == "_fast_trigger"
