"""Raw secret values in what the agent sends (DESIGN.md §7.1; issue 12 items 2,
4 and 5).

An agent never needs a value: it writes placeholders. A raw value in a
request is refused (``raw_secret_egress``) unless one of the calling tenant's
secrets holding that value allows this destination and this location. Every
field the agent controls is a location:

- ``method``, ``host`` (the CONNECT/connect target, TLS SNI, ``:authority``
  and ``Host``) and ``header-name`` (header and trailer names) — never allowed,
  and compared case-insensitively, as the fields are (a host reaches DNS and
  the audit lower-cased, a method may be upper-cased);
- ``header:<name>`` for header *and trailer* values, ``path``, ``query``,
  ``body``;
- WebSocket messages from the client (:func:`in_message`): never allowed.

Each field is checked as written and as the upstream may decode it
(:func:`broker.scrub.decoded.views`: percent, form and JSON unescaping), in
every spelling the scrubber knows (base64, hex...). A request whose SNI or
``Host`` names another server than the one connected to (fronting) carries
no value at all, exactly as for placeholders.

**Tenants.** Only the caller's own values are looked for. Another tenant's
value is scrubbed from every response (never delivered), but refusing it on
the way out would turn the broker into an oracle: post guesses, read
``raw_secret_egress`` as "hit". A tenant that already holds another tenant's
value gains nothing from the broker by sending it.
"""

from __future__ import annotations

from broker.policy.schema import Policy
from broker.request.decision import Decision, Destination, Reason, check_rule, failure
from broker.request.locations import RequestParts
from broker.scrub.decoded import views
from broker.scrub.scrubber import Scrubber

__all__ = ["check", "check_destination", "in_message", "own_names", "pieces"]

Piece = tuple[str, bytes]
_CASELESS = ("method", "host", "header-name")


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _destination_pieces(dest: Destination) -> list[Piece]:
    return [
        ("method", _b(dest.method)),
        ("host", _b(dest.host)),
        *(("host", _b(n)) for n in dest.names),
    ]


def pieces(dest: Destination, parts: RequestParts) -> list[Piece]:
    """Every agent-controlled field of a request, with its location."""
    out = _destination_pieces(dest)
    for name, value in (*parts.headers, *parts.trailers):
        out.append(("header-name", _b(name)))
        out.append((f"header:{name.lower()}", _b(value)))
    out += [("path", _b(parts.path)), ("query", _b(parts.query)), ("body", parts.body)]
    return out


def own_names(
    scrubber: Scrubber, tenant: str, data: bytes, *, caseless: bool = False, spellings: bool = True
) -> set[str]:
    """Names of ``tenant``'s secrets whose value ``data`` holds, in any
    spelling, as written or once decoded (and the raw value in any case, if
    ``caseless``; ``spellings=False`` looks for that alone)."""
    names: set[str] = set()
    for view in views(data):
        found = scrubber.owners_in(view) if spellings else set()
        if caseless:
            found |= scrubber.owners_in_caseless(view)
        names.update(n for t, n in found if t == tenant)
    return names


def _refuse(tenant: str) -> Decision:
    return failure(Reason.RAW_SECRET_EGRESS, tenant, None)


def _check_pieces(
    scrubber: Scrubber, policy: Policy, tenant: str, dest: Destination, found: list[Piece]
) -> Decision | None:
    if not len(scrubber):
        return None
    joined = b"\n".join(data for _, data in found)
    short = b"\n".join(data for location, data in found if location in _CASELESS)
    # One scan of everything for every spelling, and the short case-insensitive
    # fields once more for the raw value in another case (a tiny automaton).
    if not own_names(scrubber, tenant, joined) and not own_names(
        scrubber, tenant, short, caseless=True, spellings=False
    ):
        return None  # the common case: one scan per view, no value anywhere
    rules = policy.tenants[tenant].secrets
    for location, data in found:
        if not data:
            continue
        names = own_names(scrubber, tenant, data, caseless=location in _CASELESS)
        if not names:
            continue
        if location in _CASELESS or dest.fronted:
            return _refuse(tenant)
        # Several secrets may share a value: it may go here when one of this
        # tenant's secrets holding it allows this place.
        if not any(n in rules and check_rule(rules[n], dest, location) is None for n in names):
            return _refuse(tenant)
    return None


def check(
    scrubber: Scrubber, policy: Policy, tenant: str, dest: Destination, parts: RequestParts
) -> Decision | None:
    """A refusal when the request carries one of ``tenant``'s raw values
    where it may not go, else None."""
    return _check_pieces(scrubber, policy, tenant, dest, pieces(dest, parts))


def check_destination(
    scrubber: Scrubber, policy: Policy, tenant: str, dest: Destination
) -> Decision | None:
    """The CONNECT target (before any request in the tunnel): a value in the
    host, SNI or method is refused before a name lookup or a connection."""
    return _check_pieces(scrubber, policy, tenant, dest, _destination_pieces(dest))


def in_message(scrubber: Scrubber, tenant: str | None, data: bytes) -> bool:
    """A WebSocket message from the client holds one of ``tenant``'s values
    (no location allows that)."""
    if tenant is None or not len(scrubber) or not data:
        return False
    return bool(own_names(scrubber, tenant, data))
