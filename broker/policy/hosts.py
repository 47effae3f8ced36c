"""Host normalisation and matching, used the same way on the policy side and
on the connection side (case, trailing dot, IDNA, IPv6 literals)."""

from __future__ import annotations

import ipaddress


class HostError(ValueError):
    """A host name that cannot be normalised."""


# UTS #46 "deviation" characters: IDNA 2003 (Python's codec) maps them away
# ("straße" -> "strasse") while IDNA 2008 keeps them ("xn--strae-oqa"), so one
# spelling names two different domains. Refuse them; the xn-- form is exact.
_IDNA_DEVIATIONS = frozenset("\u00df\u03c2\u200c\u200d")


def normalize_host(host: str) -> str:
    """Canonical form of a host: lower case, no trailing dot, IDNA A-label,
    IPv6 without brackets in compressed form."""
    h = host.strip()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if not h:
        raise HostError("empty host")
    try:
        return ipaddress.ip_address(h).compressed
    except ValueError:
        pass
    h = h.rstrip(".").lower()
    if not h:
        raise HostError("empty host")
    if any(c in _IDNA_DEVIATIONS for c in h):
        raise HostError(
            "holds a character IDNA 2003 and 2008 encode differently; use the xn-- form"
        )
    try:
        labels = [
            lbl.encode("idna").decode("ascii") if not lbl.isascii() else lbl for lbl in h.split(".")
        ]
    except UnicodeError as exc:
        raise HostError(f"not a valid IDNA host name: {exc.__class__.__name__}") from None
    for lbl in labels:
        if not lbl or len(lbl) > 63:
            raise HostError("empty or over-long label")
        if any(not (c.isalnum() or c in "-_") for c in lbl):
            raise HostError("host labels may hold letters, digits, '-' and '_' only")
    return ".".join(labels)


def normalize_pattern(pattern: str) -> str:
    """Normalise a policy host pattern: an exact name or ``*.suffix``."""
    p = pattern.strip()
    if p == "*" or not p:
        raise HostError("'*' alone (or an empty host) would allow every host")
    if p.startswith("*."):
        return "*." + normalize_host(p[2:])
    if "*" in p:
        raise HostError("a wildcard may only be a leading '*.' label")
    return normalize_host(p)


def host_matches(host: str, pattern: str) -> bool:
    """``host`` and ``pattern`` must already be normalised.
    ``*.example.com`` matches subdomains only, not ``example.com`` itself."""
    if pattern.startswith("*."):
        suffix = pattern[1:]
        return host.endswith(suffix) and len(host) > len(suffix)
    return host == pattern
