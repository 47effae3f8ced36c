"""Which addresses are private (DESIGN.md §12), and every way a client can
spell an IP address.

A host the agent writes may be an IP address in a form ``ipaddress`` does not
accept but the C resolver does (``inet_aton``): ``2130706433``, ``0x7f.1``,
``0177.0.0.1``, ``127.1``. Whatever the spelling, the address it names is the
one checked. An IPv6 address that carries an IPv4 address (mapped,
compatible, NAT64, 6to4, Teredo) is checked as that IPv4 address too.
"""

from __future__ import annotations

import ipaddress
import socket
from functools import lru_cache

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_RANGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("unspecified", ("0.0.0.0/8", "::/128")),
    ("loopback", ("127.0.0.0/8", "::1/128")),
    ("private (RFC 1918)", ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")),
    ("shared (CGNAT)", ("100.64.0.0/10",)),
    ("link-local", ("169.254.0.0/16", "fe80::/10")),
    ("unique local (ULA)", ("fc00::/7",)),
    ("multicast", ("224.0.0.0/4", "ff00::/8")),
    ("reserved", ("240.0.0.0/4", "192.0.0.0/24", "198.18.0.0/15", "fec0::/10")),
)
_NETWORKS = tuple((label, ipaddress.ip_network(cidr)) for label, cidrs in _RANGES for cidr in cidrs)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_COMPAT = ipaddress.ip_network("::/96")


def parse_ip(host: str) -> IPAddress | None:
    """The address ``host`` names when it is an IP address in any spelling
    the system resolver accepts; None for a name."""
    return _parse_ip(host) if len(host) <= 64 else None


@lru_cache(maxsize=1024)
def _parse_ip(host: str) -> IPAddress | None:
    h = host.strip()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    h = h.rstrip(".") if h.count(".") else h
    if "%" in h:  # an IPv6 zone (fe80::1%eth0): the address is what is checked
        h = h.split("%", 1)[0]
        if ":" not in h:
            return None
    try:
        return ipaddress.ip_address(h)
    except ValueError:
        pass
    # inet_aton reads decimal, octal (leading 0) and hex (0x) parts, 1 to 4 of
    # them; getaddrinfo accepts the same spellings without a DNS query.
    if not h or not all(c.isascii() and (c.isalnum() or c == ".") for c in h):
        return None
    if not h[0].isdigit():
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(h))
    except OSError:
        return None


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries, if any."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64 or (ip in _COMPAT and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


@lru_cache(maxsize=1024)
def private_kind(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public destination (a short label), or None.

    Beyond the listed ranges, anything Python does not call globally
    routable (documentation and benchmarking ranges, ...) is refused too."""
    inner = embedded_ipv4(ip)
    if inner is not None:
        kind = private_kind(inner)
        if kind is not None:
            return kind
    for label, net in _NETWORKS:
        if ip.version == net.version and ip in net:
            return label
    if not ip.is_global:
        return "not globally routable"
    return None


@lru_cache(maxsize=1024)
def canonical(ip: IPAddress) -> str:
    """One spelling per address (IPv4-mapped IPv6 shown as the IPv4)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return ip.compressed
