"""Agent-chosen text made fit for the audit (DESIGN.md §6): the host, path,
method and secret names of a record, with every known value replaced by its
placeholder, or by the name-free marker for another tenant's value. A raw
value in an allowed path, a value hidden by escaping one character, or a
host or method holding a value in another case must not land in the file."""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.scrub.decoded import scrub_decoded

if TYPE_CHECKING:
    from broker.engine import Engine


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def clean_texts(
    engine: Engine,
    tenant: str | None,
    *texts: str,
    caseless: tuple[int, ...] = (),
    decoded: int = -1,
) -> list[str]:
    """``texts`` cleaned. ``caseless``: the indexes of host names and methods,
    which reach here case-folded (the raw value is looked for in any case);
    ``texts[decoded]`` (the path) is also cleaned as the upstream decodes it."""
    reader = tenant or ""
    done = engine.scrub_many([_b(t) for t in texts], reader)
    out = [
        data.decode("utf-8", "replace") if n else t
        for (data, n), t in zip(done, texts, strict=True)
    ]
    if decoded >= 0:
        seen = scrub_decoded(_b(out[decoded]), lambda d: engine.scrub(d, reader))
        if seen is not None:
            out[decoded] = seen.decode("utf-8", "replace")
    if len(engine.scrubber):
        for i in caseless:
            data, n = engine.scrubber.scrub_caseless(_b(out[i]), reader)
            if n:
                out[i] = data.decode("utf-8", "replace")
    return out
