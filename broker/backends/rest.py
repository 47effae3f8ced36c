"""What the REST backends (1Password Connect, Doppler, Infisical) share: one
httpx client per backend and the mapping of transport failures.

The client verifies TLS with the system trust store (as upstream
connections do: :func:`broker.tls.upstream.system_store`) plus the backend's
``ca_cert``, ignores the environment (``trust_env=False``: no
``HTTPS_PROXY``, which may point at the broker itself, no ``.netrc``, no
``SSL_CERT_FILE``), never follows a redirect (it would carry the
credential elsewhere) and reads at most :data:`MAX_BODY` bytes of an answer.
httpx's sync client is thread-safe; the resolver calls backends from worker
threads, never on the event loop.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import httpx

from broker.backends.base import BackendError
from broker.tls.upstream import system_store

MAX_BODY = 1024 * 1024
"""Bytes of a backend answer read at most; past it the answer is refused."""


class Answer:
    """A backend's status and JSON body (None when not JSON). Never printed."""

    __slots__ = ("body", "status")

    def __init__(self, status: int, body: Any) -> None:
        self.status, self.body = status, body

    def __repr__(self) -> str:
        return f"Answer(status={self.status})"


def make_client(url: str, ca_cert: Path | None, timeout: float) -> httpx.Client:
    """The client for one backend. Raises OSError/ssl.SSLError for an
    unreadable ``ca_cert`` (callers turn it into a failed read)."""
    ctx = ssl.create_default_context()  # OpenSSL's default paths ...
    roots = system_store()
    if roots is not None:  # ... or the distribution's bundle where those are empty
        ctx.load_verify_locations(cafile=str(roots))
    if ca_cert is not None:
        ctx.load_verify_locations(cafile=str(ca_cert))
    return httpx.Client(
        base_url=url,
        verify=ctx,
        timeout=httpx.Timeout(timeout),
        trust_env=False,
        follow_redirects=False,
        headers={"accept": "application/json", "user-agent": "keybroker"},
    )


def call(
    client: httpx.Client,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    json_body: object = None,
) -> Answer:
    """One request. Raises httpx errors or :class:`TooLarge`; a body that is not
    JSON gives ``Answer(status, None)``."""
    with client.stream(method, path, headers=headers, params=params, json=json_body) as resp:
        raw = bytearray()
        for chunk in resp.iter_bytes():
            raw += chunk
            if len(raw) > MAX_BODY:
                raise TooLarge
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    return Answer(resp.status_code, body)


class TooLarge(Exception):
    """The answer was larger than :data:`MAX_BODY`."""


def transport_error(exc: Exception, where: str, timeout: float) -> BackendError:
    """The core error for a failure below HTTP (or an oversized answer)."""
    if isinstance(exc, TooLarge):
        return BackendError(f"{where}: answer larger than {MAX_BODY} bytes")
    if isinstance(exc, httpx.TimeoutException):
        return BackendError(f"{where}: no answer within {timeout:g}s")
    if isinstance(exc, httpx.ConnectError) and _caused_by_tls(exc):
        return BackendError(f"{where}: TLS handshake or certificate verification failed")
    if isinstance(exc, httpx.ConnectError):
        return BackendError(f"{where}: cannot connect")
    if isinstance(exc, httpx.HTTPError):
        return BackendError(f"{where}: request failed ({type(exc).__name__})")
    if isinstance(exc, ssl.SSLError | OSError):
        return BackendError(f"{where}: TLS or network failure ({type(exc).__name__})")
    return BackendError(f"{where}: unexpected failure ({type(exc).__name__})")


def _caused_by_tls(exc: BaseException) -> bool:
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 10:  # bounded: chains can loop
        if isinstance(cur, ssl.SSLError | ssl.CertificateError):
            return True
        cur, seen = cur.__cause__ or cur.__context__, seen + 1
    return "CERTIFICATE_VERIFY_FAILED" in str(exc) or "SSL" in str(exc)


def status_error(status: int, where: str, credential: str) -> BackendError:
    """The core error for a non-2xx answer that is not 'no such secret'."""
    if status in (401, 403):
        return BackendError(f"{where}: refused the credential in {credential} (HTTP {status})")
    if status == 429:
        return BackendError(f"{where}: rate limited (HTTP 429)")
    return BackendError(f"{where}: answered HTTP {status}")


def text(value: object) -> str | None:
    """``value`` when it is a non-empty string."""
    return value if isinstance(value, str) and value else None


class RestBackend:
    """The plumbing of a REST backend: credentials read from the environment
    once, the client, closing. Subclasses implement ``read``."""

    blocking = True
    kind = "rest"

    def __init__(
        self,
        name: str,
        url: str,
        ca_cert: Path | None,
        timeout: float,
        credentials: dict[str, str | None],
    ) -> None:
        """``credentials``: environment variable name -> its value (None: unset)."""
        self.name = name
        self.url = url
        self._timeout = timeout
        self._creds = {k: v for k, v in credentials.items() if v}
        unset = [k for k, v in credentials.items() if not v]
        self._problem: str | None = (
            f"environment variable{'s' if len(unset) > 1 else ''} {' and '.join(unset)} "
            f"{'are' if len(unset) > 1 else 'is'} not set"
            if unset
            else None
        )
        self._client: httpx.Client | None = None
        try:
            self._client = make_client(url, ca_cert, timeout)
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._problem = (
                self._problem or f"ca_cert {ca_cert} cannot be used ({type(exc).__name__})"
            )
        self._closed = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, url={self.url!r})"

    def close(self) -> None:
        self._closed = True
        if self._client is not None:
            self._client.close()

    def _ready(self, where: str) -> httpx.Client:
        """The client, or the reason reads cannot be made."""
        if self._closed:
            raise BackendError(f"{where}: backend is closed")
        if self._problem is not None or self._client is None:
            raise BackendError(f"{where}: {self._problem}")
        return self._client

    def _send(self, where: str, method: str, path: str, **kw: Any) -> Answer:
        """One request; transport failures become :class:`BackendError`."""
        client = self._ready(where)
        try:
            answer = call(client, method, path, **kw)
        except Exception as exc:
            err = transport_error(exc, where, self._timeout)
        else:
            return answer
        raise err  # outside the handler: nothing chained


class BearerConfig(Protocol):
    """What a bearer-token REST backend's config holds (Doppler, 1Password Connect)."""

    url: str
    ca_cert: Path | None
    timeout: float
    token_env: str


class BearerBackend(RestBackend):
    """A REST backend authenticated by one token read from ``token_env``."""

    def __init__(self, name: str, config: BearerConfig, env: Mapping[str, str]) -> None:
        self._token_env = config.token_env
        super().__init__(
            name, config.url, config.ca_cert, config.timeout,
            {config.token_env: env.get(config.token_env)},
        )  # fmt: skip

    def _bearer(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self._creds.get(self._token_env, '')}"}
