"""Resolve once, connect to exactly what was checked (DESIGN.md §12).

A :class:`Pins` table belongs to one client connection. The first request
to a destination resolves its name (once, shared by concurrent requests);
every later request on that connection, and every upstream connection
opened for it, uses the same address. There is no second lookup for a
rebinding DNS server to answer differently.

The lookup function is injectable (tests script the answers); the default
asks the system resolver through the event loop.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Sequence

from broker.egress.addresses import IPAddress, parse_ip

Lookup = Callable[[str, int], Awaitable[Sequence[str]]]
MAX_PINS = 4096
"""Destinations one client connection may pin; past this, new ones are refused
(never re-resolved: an open upstream connection may still use an old pin)."""


class LookupFailed(Exception):
    """The name did not resolve (no address, or the resolver failed)."""


async def system_lookup(host: str, port: int) -> Sequence[str]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise LookupFailed(type(exc).__name__) from None
    return [str(info[4][0]) for info in infos]


def candidates(answers: Sequence[str]) -> list[IPAddress]:
    """The answers as addresses, duplicates dropped, IPv4 first (a host without
    IPv6 routes still connects: there is no fallback after pinning)."""
    out: list[IPAddress] = []
    for a in answers:
        ip = parse_ip(a)
        if ip is not None and ip not in out:
            out.append(ip)
    return sorted(out, key=lambda ip: ip.version)


class Pins:
    """Per client connection: (host key, port) -> the one address checked."""

    def __init__(self) -> None:
        self._pinned: dict[tuple[str, int], IPAddress] = {}
        self._pending: dict[tuple[str, int], asyncio.Future[list[IPAddress]]] = {}

    def __len__(self) -> int:
        return len(self._pinned)

    def get(self, host: str, port: int) -> IPAddress | None:
        return self._pinned.get((host, port))

    def pin(self, host: str, port: int, ip: IPAddress) -> bool:
        """Fix the address for (host, port). The first pin stays; False when
        the table is full."""
        key = (host, port)
        if key in self._pinned:
            return True
        if len(self._pinned) >= MAX_PINS:
            return False
        self._pinned[key] = ip
        return True

    async def resolve(self, host: str, port: int, lookup: Lookup) -> list[IPAddress]:
        """Candidate addresses for a name not pinned yet: one lookup however
        many requests ask at once. Raises :class:`LookupFailed`."""
        key = (host, port)
        pending = self._pending.get(key)
        if pending is not None:
            return list(await asyncio.shield(pending))
        fut: asyncio.Future[list[IPAddress]] = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        try:
            found = candidates(await lookup(host, port))
            if not found:
                raise LookupFailed("no address")
        except Exception as exc:
            # The text of a resolver error never leaves: only its type.
            failed = exc if isinstance(exc, LookupFailed) else LookupFailed(type(exc).__name__)
            fut.set_exception(failed)
            fut.exception()  # retrieved: no warning when nobody else waits
            raise failed from None
        except BaseException:
            fut.cancel()
            raise
        else:
            fut.set_result(found)
            return found
        finally:
            del self._pending[key]
