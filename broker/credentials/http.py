"""The broker's own HTTPS requests to token endpoints: verified with the same
trust as upstreams (system roots plus ``upstream_ca``), never through a
proxy, never following a redirect, with a bounded answer."""

from __future__ import annotations

import asyncio
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from broker.tls.upstream import system_store

MAX_ANSWER = 1 << 20
TIMEOUT = 10.0


def trust_context(upstream_ca: Path | None) -> ssl.SSLContext:
    """The bundle mitmproxy verifies upstreams against (:mod:`broker.tls.upstream`)."""
    roots = system_store()
    ctx = ssl.create_default_context(cafile=str(roots) if roots else None)
    if upstream_ca is not None:
        ctx.load_verify_locations(cafile=str(upstream_ca))
    return ctx


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kw: object) -> None:
        return None  # a token endpoint that redirects is an error, not a new destination


def _post(url: str, body: bytes, headers: dict[str, str], ctx: ssl.SSLContext) -> Answer:
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx), _NoRedirect()
    )
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310 - https only (schema)
    try:
        with opener.open(req, timeout=TIMEOUT) as resp:
            return Answer(resp.status, resp.read(MAX_ANSWER + 1))
    except urllib.error.HTTPError as exc:
        with exc:
            return Answer(exc.code, exc.read(MAX_ANSWER + 1))


async def post(url: str, body: bytes, headers: dict[str, str], ctx: ssl.SSLContext) -> Answer:
    """POST off the event loop. Raises OSError (urllib.error.URLError included)
    when the endpoint cannot be reached or its certificate is not trusted."""
    return await asyncio.to_thread(_post, url, body, headers, ctx)
