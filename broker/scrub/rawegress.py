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

from collections.abc import Sequence
from dataclasses import dataclass

from broker.policy.schema import Policy
from broker.request.decision import Decision, Destination, Reason, check_rule, failure
from broker.request.locations import RequestParts
from broker.scrub.decoded import views
from broker.scrub.scrubber import Scrubber

__all__ = ["RawScan", "check", "check_destination", "in_message", "own_names", "pieces", "scan"]

Piece = tuple[str, bytes]
Owner = tuple[str, str]
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


def _owners(
    scrubber: Scrubber, data: bytes, *, caseless: bool = False, spellings: bool = True
) -> set[Owner]:
    """Owners (any tenant) of the values ``data`` holds, in any spelling, as
    written or once decoded (and the raw value in any case, if ``caseless``;
    ``spellings=False`` looks for that alone)."""
    found: set[Owner] = set()
    for view in views(data):
        if spellings:
            found |= scrubber.owners_in(view)
        if caseless:
            found |= scrubber.owners_in_caseless(view)
    return found


def own_names(
    scrubber: Scrubber, tenant: str, data: bytes, *, caseless: bool = False, spellings: bool = True
) -> set[str]:
    """Names of ``tenant``'s secrets whose value ``data`` holds (see :func:`_owners`)."""
    return {
        n for t, n in _owners(scrubber, data, caseless=caseless, spellings=spellings) if t == tenant
    }


def _refuse(tenant: str) -> Decision:
    return failure(Reason.RAW_SECRET_EGRESS, tenant, None)


@dataclass(frozen=True)
class RawScan:
    refusal: Decision | None
    """``raw_secret_egress``, or None when the request may go."""
    clean_at: int | None = None
    """The scrubber generation at which no value of *any* tenant was found
    in any field (nor in the ``also`` texts), in any spelling, view or case;
    None when one was. Until a value is added, cleaning those texts for the
    audit would change nothing (:meth:`broker.audit.recorder.Recorder.sent`).
    Only ever used to skip that work: the refusal looks at the caller's own
    values alone."""


def _check_pieces(
    scrubber: Scrubber,
    policy: Policy,
    tenant: str,
    dest: Destination,
    found: list[Piece],
    also: Sequence[bytes] = (),
) -> RawScan:
    generation = scrubber.generation  # before the scan: a value added during it is not "clean"
    if not len(scrubber):
        return RawScan(None, generation)
    joined = b"\n".join([*(data for _, data in found), *also])
    short = b"\n".join(data for location, data in found if location in _CASELESS)
    # One scan of everything for every spelling, and the short case-insensitive
    # fields once more for the raw value in another case (a tiny automaton).
    everyone = _owners(scrubber, joined) | _owners(scrubber, short, caseless=True, spellings=False)
    if not any(t == tenant for t, _ in everyone):  # the common case: one scan per view
        return RawScan(None, None if everyone else generation)
    rules = policy.tenants[tenant].secrets
    for location, data in found:
        if not data:
            continue
        names = own_names(scrubber, tenant, data, caseless=location in _CASELESS)
        if not names:
            continue
        if location in _CASELESS or dest.fronted:
            return RawScan(_refuse(tenant))
        # Several secrets may share a value: it may go here when one of this
        # tenant's secrets holding it allows this place.
        if not any(n in rules and check_rule(rules[n], dest, location) is None for n in names):
            return RawScan(_refuse(tenant))
    return RawScan(None)


def scan(
    scrubber: Scrubber,
    policy: Policy,
    tenant: str,
    dest: Destination,
    parts: RequestParts,
    also: Sequence[str] = (),
) -> RawScan:
    """Is one of ``tenant``'s raw values where it may not go? ``also``: texts
    the audit will hold (the path, secret names), scanned in the same pass
    so that :attr:`RawScan.clean_at` covers them."""
    extra = [_b(text) for text in also]
    return _check_pieces(scrubber, policy, tenant, dest, pieces(dest, parts), extra)


def check(
    scrubber: Scrubber, policy: Policy, tenant: str, dest: Destination, parts: RequestParts
) -> Decision | None:
    """A refusal when the request carries one of ``tenant``'s raw values
    where it may not go, else None."""
    return scan(scrubber, policy, tenant, dest, parts).refusal


def check_destination(
    scrubber: Scrubber, policy: Policy, tenant: str, dest: Destination
) -> Decision | None:
    """The CONNECT target (before any request in the tunnel): a value in the
    host, SNI or method is refused before a name lookup or a connection."""
    return _check_pieces(scrubber, policy, tenant, dest, _destination_pieces(dest)).refusal


def in_message(scrubber: Scrubber, tenant: str | None, data: bytes) -> bool:
    """A WebSocket message from the client holds one of ``tenant``'s values
    (no location allows that)."""
    if tenant is None or not len(scrubber) or not data:
        return False
    return bool(own_names(scrubber, tenant, data))
