"""A tenant's egress rules (DESIGN.md §12), indexed once per policy load.

Destinations come from ``egress.allow`` (``host`` or ``host:port``; no port
means 443) and from every secret's ``hosts`` × ``ports``. Host patterns
follow :mod:`broker.policy.hosts` (exact, ``*.example.com`` for subdomains
only, never ``*``; case, trailing dot, IDNA). Exact names sit in a dict and
wildcards in a dict by suffix, so a check costs a few dict lookups whatever
the number of entries.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

from broker.egress.addresses import IPAddress, canonical, embedded_ipv4, parse_ip
from broker.policy.hosts import HostError, normalize_host, normalize_pattern

Mode = Literal["enforce", "report"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class EntryError(ValueError):
    """An ``egress`` entry that cannot be read."""


def parse_entry(entry: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` -> (pattern, port).
    The pattern is normalised; an IP address in any spelling becomes its
    canonical form. Cached: a policy load validates, then indexes, each entry."""
    return _parse_entry(entry) if len(entry) <= 300 else _parse_entry.__wrapped__(entry)


@lru_cache(maxsize=1 << 16)
def _parse_entry(entry: str) -> tuple[str, int]:
    e = entry.strip()
    port_text = ""
    if e.startswith("["):
        host, close, rest = e[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise EntryError("write an IPv6 address as [addr] or [addr]:port")
        port_text = rest[1:]
        if rest and not port_text:
            raise EntryError("empty port")
    elif e.count(":") == 1:
        host, _, port_text = e.partition(":")
        if not port_text:
            raise EntryError("empty port")
    else:
        host = e  # a name, or a bare IPv6 address (no port)
    port = 443
    if port_text:
        if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
            raise EntryError(f"port {port_text!r} is not a number in 1-65535")
        port = int(port_text)
    ip = parse_ip(host)
    if ip is not None:
        return canonical(ip), port
    try:
        return normalize_pattern(host), port
    except HostError as exc:
        raise EntryError(str(exc)) from None


def parse_network(text: str) -> Network:
    """A CIDR for ``egress.private``; a bare address is one host."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise EntryError(f"not a CIDR ({exc})") from None
    if net.prefixlen == 0:
        raise EntryError("a /0 would allow every private address; list the ranges")
    return net


def host_key(host: str) -> str:
    """How a destination host is compared: the canonical address for an IP
    in any spelling, else the normalised name."""
    return _host_key(host) if len(host) <= 255 else host.lower()


@lru_cache(maxsize=2048)
def _host_key(host: str) -> str:
    ip = parse_ip(host)
    if ip is not None:
        return canonical(ip)
    try:
        return normalize_host(host)
    except HostError:
        return host.lower()


@dataclass(frozen=True)
class EgressRules:
    """One tenant's destinations and private-address exemptions."""

    mode: Mode | None = None
    """None: the tenant has no ``egress`` allowlist (private checks still apply)."""
    exact: dict[str, frozenset[int]] = field(default_factory=dict)
    suffixes: dict[str, frozenset[int]] = field(default_factory=dict)
    """``.example.com`` -> ports, for ``*.example.com``."""
    networks: tuple[Network, ...] = ()

    @classmethod
    def build(
        cls,
        mode: Mode | None,
        destinations: Iterable[tuple[str, int]],
        networks: Iterable[Network] = (),
    ) -> EgressRules:
        """``destinations``: (pattern, port) pairs as :func:`parse_entry`
        gives them (exact names keyed as :func:`host_key` keys them)."""
        exact: dict[str, set[int]] = {}
        suffixes: dict[str, set[int]] = {}
        for pattern, port in destinations:
            if pattern.startswith("*."):
                suffixes.setdefault(pattern[1:], set()).add(port)
            else:
                exact.setdefault(pattern, set()).add(port)
        return cls(
            mode,
            {h: frozenset(p) for h, p in exact.items()},
            {s: frozenset(p) for s, p in suffixes.items()},
            tuple(networks),
        )

    def allows(self, host: str, port: int) -> bool:
        """Is (host, port) a listed destination? ``host`` as :func:`host_key` gives it."""
        ports = self.exact.get(host)
        if ports is not None and port in ports:
            return True
        if not self.suffixes or parse_ip(host) is not None:
            return False
        # Each proper suffix starting at a dot: a.b.example.com -> .b.example.com, .example.com, .com
        i = host.find(".")
        while i > 0:
            ports = self.suffixes.get(host[i:])
            if ports is not None and port in ports:
                return True
            i = host.find(".", i + 1)
        return False

    def names(self, host: str, port: int) -> bool:
        """The tenant names this host or address literally (not by a wildcard),
        at this port: a secret for ``localhost:8080`` opens no other port of
        localhost (the broker's own admin API, say)."""
        return port in self.exact.get(host, ())

    def private_ok(self, ip: IPAddress, port: int) -> bool:
        """May the tenant reach this private address at ``port``? Named
        literally with the port, or inside an ``egress.private`` range (any port)."""
        if port in self.exact.get(canonical(ip), ()):
            return True
        inner = embedded_ipv4(ip)
        return any(
            (a.version == n.version and a in n)
            for n in self.networks
            for a in ((ip,) if inner is None else (ip, inner))
        )
