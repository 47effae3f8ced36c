"""Captured values are scrubbed for the tenant that captured them only.

A captured value comes from an upstream, so an upstream chooses it: were it
added to the broker-wide scrubber, a hostile upstream could make any string
("application/json") a "secret" rewritten in every tenant's responses and
refused as ``raw_secret_egress`` in requests. So each tenant has its own small
:class:`~broker.scrub.scrubber.Scrubber` of its captured values, applied after
the broker-wide one to that tenant's responses only, rebuilt without a value
when it expires or is evicted (a few dozen values: a build costs
milliseconds)."""

from __future__ import annotations

import threading

from broker.scrub.layers import Snapshot
from broker.scrub.scrubber import Scrubber
from broker.scrub.stream import StreamScrubber

__all__ = ["ChainedStream", "TenantScrubbers"]


class TenantScrubbers:
    """Thread-safe map tenant -> scrubber of its live captured values."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[str, bytes]] = {}  # tenant -> name -> value
        self._scrubbers: dict[str, Scrubber] = {}

    def _build(self, tenant: str) -> None:
        values = self._values.get(tenant)
        if not values:
            self._values.pop(tenant, None)
            self._scrubbers.pop(tenant, None)
            return
        s = Scrubber(background=False)
        for name, value in values.items():
            s.add(value, b"<<secret:" + name.encode() + b">>", (tenant, name))
        s.settle()
        self._scrubbers[tenant] = s

    def add(self, tenant: str, name: str, value: bytes) -> None:
        with self._lock:
            current = self._scrubbers.get(tenant)
            self._values.setdefault(tenant, {})[name] = value
            if current is None:
                self._build(tenant)
            else:  # adding is cheap (a delta layer); only removal rebuilds
                current.add(value, b"<<secret:" + name.encode() + b">>", (tenant, name))

    def remove(self, tenant: str, names: list[str]) -> None:
        with self._lock:
            values = self._values.get(tenant, {})
            if any(values.pop(n, None) is not None for n in names):
                self._build(tenant)

    def get(self, tenant: str | None) -> Scrubber | None:
        if not self._scrubbers or tenant is None:
            return None
        return self._scrubbers.get(tenant)

    def stream(self, tenant: str) -> StreamScrubber:
        """A stream scrubber that always uses the tenant's current captured values."""
        return StreamScrubber(self.live(tenant), tenant)

    def live(self, tenant: str) -> Scrubber:
        """Stands for the tenant's current captured values at every scan."""
        return _Live(self, tenant)

    def count(self, tenant: str) -> int:
        with self._lock:
            return len(self._values.get(tenant, {}))


_EMPTY = Scrubber(background=False)


class _Live(Scrubber):
    """Stands for whatever scrubber the tenant has at each feed."""

    def __init__(self, owner: TenantScrubbers, tenant: str) -> None:
        self._owner, self._tenant_name = owner, tenant

    def _current(self) -> Snapshot:
        return (self._owner.get(self._tenant_name) or _EMPTY)._current()


class ChainedStream:
    """Two stream scrubbers in a row (the broker-wide one, then the tenant's
    captured values): the same interface as :class:`StreamScrubber`."""

    def __init__(self, first: StreamScrubber, second: StreamScrubber) -> None:
        self._first, self._second = first, second

    @property
    def count(self) -> int:
        return self._first.count + self._second.count

    @property
    def held(self) -> int:
        return self._first.held + self._second.held

    def feed(self, chunk: bytes) -> bytes:
        return self._second.feed(self._first.feed(chunk))

    def flush(self) -> bytes:
        return self._second.feed(self._first.flush()) + self._second.flush()
