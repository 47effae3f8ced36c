"""Values too weak to protect (issue 12 item 4).

No scrubber can hide a 4-digit PIN: a tenant's upstream serves a page
listing every PIN and reads which one comes back replaced. Scrubbing is
content-dependent by nature, so the only defence is to refuse to handle a
value whose candidates can be enumerated through the broker. A value is
*unprotectable* when it is shorter than :data:`MIN_LENGTH` characters or its
estimated strength is below :data:`MIN_BITS`:

    bits = length x log2(min(alphabet of its character classes, distinct characters))

(classes: digits 10, lower case 26, upper case 26, anything else 33). The
estimate is deliberately crude and errs towards refusing: ``12345678`` is 24
bits, ``aaaaaaaaaaaaaaaa`` 0, a 16-character hex key about 60, a typical
API key (20+ random characters) well over 100. At 40 bits an enumeration
through the scrubber needs about 10^12 candidates, some 10 TB of responses,
every one counted in the audit's ``scrubbed`` field.

A multi-line value (a PEM key) is judged line by line: lines below the
floor are its framing (``-----BEGIN ...-----``) and are not scrubbed on their
own, nor is PEM armour (``-----BEGIN PRIVATE KEY-----``, the same in
every key); the value is unprotectable when no line reaches the floor.
"""

from __future__ import annotations

import math
import re

__all__ = ["MIN_BITS", "MIN_LENGTH", "estimate_bits", "lines_to_scrub", "weakness"]

MIN_LENGTH = 8
MIN_BITS = 40.0

_LINE_BREAK = re.compile(rb"[\r\n]+")
_ARMOUR = re.compile(rb"-----(?:BEGIN|END) [A-Z0-9 ]+-----\s*")


def estimate_bits(value: bytes) -> float:
    """A rough upper bound on the value's strength, in bits."""
    if not value:
        return 0.0
    alphabet = 0
    if any(48 <= b <= 57 for b in value):
        alphabet += 10
    if any(97 <= b <= 122 for b in value):
        alphabet += 26
    if any(65 <= b <= 90 for b in value):
        alphabet += 26
    if any(not (48 <= b <= 57 or 65 <= b <= 90 or 97 <= b <= 122) for b in value):
        alphabet += 33
    symbols = min(alphabet, len(set(value)))
    return len(value) * math.log2(symbols) if symbols > 1 else 0.0


def _strong(piece: bytes) -> bool:
    return len(piece) >= MIN_LENGTH and estimate_bits(piece) >= MIN_BITS


def lines_to_scrub(value: bytes) -> list[bytes]:
    """The lines of a multi-line value strong enough to be scrubbed on their
    own (empty for a single-line value)."""
    if not _LINE_BREAK.search(value):
        return []
    return [
        line for line in _LINE_BREAK.split(value) if _strong(line) and not _ARMOUR.fullmatch(line)
    ]


def weakness(value: bytes) -> str | None:
    """Why ``value`` cannot be protected (a sentence without the value), or None."""
    if _LINE_BREAK.search(value):
        if lines_to_scrub(value):
            return None
        return (
            f"no line of this multi-line value reaches {MIN_LENGTH} characters and "
            f"{MIN_BITS:.0f} bits of estimated strength"
        )
    if len(value) < MIN_LENGTH:
        return f"the value is shorter than {MIN_LENGTH} characters"
    if estimate_bits(value) < MIN_BITS:
        return (
            f"the value's estimated strength is below {MIN_BITS:.0f} bits "
            "(too few distinct characters); an upstream could enumerate it"
        )
    return None
