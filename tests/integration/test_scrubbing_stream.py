"""Invariant 3 on streamed responses through the real proxy (DESIGN.md §7.3,
§7.6): the value split across chunks at every offset, across SSE and NDJSON
events that must still arrive live, in compressed streams, at the end of
large bodies, over HTTP/2, and in WebSocket messages. Helpers and the
negative control are in ``test_scrubbing.py``."""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
import requests
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Message, Request, TextMessage

from tests.integration.test_scrubbing import (
    PLACEHOLDER,
    agent_session,
    assert_clean,
    audit_ids,
    fetch,
    header_bytes,
    new_record,
    read_all,
)
from tests.support.proxy import Proxy
from tests.support.scenario import Scenario
from tests.support.upstream import Upstream, encode, filler

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def agent(broker: Proxy, sc: Scenario) -> Iterator[requests.Session]:
    with agent_session(broker, sc) as s:
        yield s


# -- chunk boundaries at every offset --------------------------------------------------
@pytest.mark.parametrize(
    ("form", "pad"),
    [("raw", 0), ("b64", 1), ("b64url", 2), ("hex", 0), ("jsonu", 0), ("pctall", 0), ("basic", 0)],
)
@pytest.mark.parametrize("nl", [1, 0], ids=["newline", "no-newline"])
def test_value_split_across_chunks_at_every_offset(
    agent: requests.Session, broker: Proxy, sc: Scenario, form: str, pad: int, nl: int
) -> None:
    """``split=len(E)`` with ``prefix=k`` puts a chunk boundary at offset
    ``len(E) - k`` inside the reflected E; small splits cut it everywhere at
    once. Every output must equal the unsplit one (shifted by the filler)."""
    value = sc.values["acme/stripe"]
    size = len(encode(form, value.encode(), pad=pad))
    q = f"/chunked?bare=1&form={form}&pad={pad}&nl={nl}&delay=0.002"
    whole = fetch(agent, broker, sc, f"{q}&split=0&prefix=0").content
    assert_clean(whole, value, f"{form} unsplit")
    assert PLACEHOLDER in whole
    stride = 1 if form == "raw" else max(1, size // 12)
    cases = [(size, k) for k in range(1, size, stride)] + [(n, 0) for n in (1, 2, 3, 7)]
    for split, prefix in cases:
        body = fetch(agent, broker, sc, f"{q}&split={split}&prefix={prefix}").content
        what = f"{form} split={split} prefix={prefix}"
        assert_clean(body, value, what)
        assert body == filler(prefix) + whole, f"{what}: streamed output differs from unsplit"


# -- events: streaming stays streaming ------------------------------------------------------
@pytest.mark.parametrize(
    ("fmt", "form", "pad"),
    [("sse", "raw", 0), ("sse", "b64", 1), ("ndjson", "raw", 0), ("ndjson", "hex", 0)],
)
def test_events_arrive_live_and_scrubbed(
    agent: requests.Session, broker: Proxy, sc: Scenario, fmt: str, form: str, pad: int
) -> None:
    """The first event reaches the agent while the upstream still holds the
    stream open; the event cut in the middle of E (split_event=1) is scrubbed."""
    value = sc.values["acme/stripe"]
    before = audit_ids(broker)
    t0 = time.monotonic()
    r = fetch(
        agent,
        broker,
        sc,
        f"/sse?events=3&interval=0.5&hold=2&reflect=1&bare=1&format={fmt}&form={form}&pad={pad}",
        stream=True,
    )
    events: list[tuple[float, bytes]] = []
    for line in r.iter_lines():
        if line:
            events.append((time.monotonic() - t0, line))
    total = time.monotonic() - t0
    assert r.status_code == 200 and len(events) == 3, events
    first = events[0][0]
    # Relative, not absolute (a loaded CI box stretches both): the upstream holds
    # the stream open >= 2 s after its first event, so a buffered stream would
    # deliver the first event within the last second.
    assert first < total - 1.0, f"first event at {first:.2f}s of {total:.2f}s: buffered"
    for i, (_, line) in enumerate(events):
        assert_clean(line, value, f"event {i}")
        assert PLACEHOLDER in line
    assert_clean(header_bytes(r), value, "headers")
    assert new_record(broker, before, "/sse")["scrubbed"] == 3


def test_sse_live_with_httpx(broker: Proxy, sc: Scenario) -> None:
    value = sc.values["acme/stripe"]
    ctx = ssl.create_default_context(cafile=str(broker.ca_path))
    got: list[tuple[float, str]] = []
    with httpx.Client(
        proxy=broker.url("acme", sc.acme.token), verify=ctx, timeout=30, trust_env=False
    ) as c:
        t0 = time.monotonic()
        with c.stream(
            "GET",
            f"https://127.0.0.1:{sc.upstream_port}/sse?events=3&interval=0.5"
            "&hold=2&reflect=1&bare=1&form=jsonu",
            headers={"Authorization": "Bearer <<secret:stripe>>"},
        ) as r:
            got += [(time.monotonic() - t0, line) for line in r.iter_lines() if line]
        total = time.monotonic() - t0
    assert len(got) == 3 and got[0][0] < total - 1.0
    for _, line in got:
        assert_clean(line.encode(), value, "httpx event")


# -- compressed and large streams ------------------------------------------------------------
@pytest.mark.parametrize("enc", ["gzip", "br", "zstd", "deflate", "gzip,br"])
@pytest.mark.parametrize(("form", "pad"), [("raw", 0), ("b64", 2)])
def test_compressed_streamed(
    agent: requests.Session, broker: Proxy, sc: Scenario, enc: str, form: str, pad: int
) -> None:
    """Streamed compressed chunks are decoded incrementally, never scanned compressed."""
    value = sc.values["acme/stripe"]
    r = fetch(
        agent,
        broker,
        sc,
        f"/compressed?enc={enc}&stream=1&chunks=16&prefix=200000&bare=1&form={form}&pad={pad}",
    )
    assert r.status_code == 200
    assert "content-encoding" not in r.headers and r.headers["transfer-encoding"] == "chunked"
    assert r.content.startswith(b"compressed: " + filler(200000))
    assert_clean(r.content[-4096:], value, f"{enc} stream")
    assert PLACEHOLDER in r.content[-200:]


@pytest.mark.parametrize("chunked", [0, 1], ids=["content-length", "chunked"])
def test_value_at_the_end_of_a_large_streamed_body(
    agent: requests.Session, broker: Proxy, sc: Scenario, chunked: int
) -> None:
    """Over the 1 MiB stream threshold: streamed, the value in the last bytes."""
    size = 5_500_000
    r = fetch(
        agent, broker, sc, f"/large?size={size}&reflect=1&bare=1&chunked={chunked}", stream=True
    )
    body, err = read_all(r)
    assert err is None and r.status_code == 200
    assert "content-length" not in r.headers
    assert_clean(body[-65536:], sc.values["acme/stripe"], "the tail of a large stream")
    assert body == filler(size) + PLACEHOLDER


# -- upstream failure ------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["rst", "fin"])
@pytest.mark.parametrize("after", [100, 2_000_000], ids=["buffered", "streamed"])
def test_upstream_reset_mid_body(
    agent: requests.Session, broker: Proxy, sc: Scenario, mode: str, after: int
) -> None:
    """The upstream sends part of the body, then the value, then dies. The agent
    gets an error (buffered: 502) or a cut transfer, never the value."""
    r = fetch(agent, broker, sc, f"/reset?reflect=1&bare=1&after={after}&mode={mode}", stream=True)
    got, err = read_all(r)
    tail = header_bytes(r) + got[-65536:]  # the detector is slow on megabytes of text
    assert_clean(tail, sc.values["acme/stripe"], f"reset ({mode}, {after})")
    if after == 100:
        assert r.status_code == 502
    else:
        assert r.status_code == 200 and err is not None, "a cut stream must look cut"
        assert got == filler(len(got)) and len(got) <= after, "only the filler may pass"


# -- other clients: HTTP/2 and curl ------------------------------------------------------------
@pytest.mark.parametrize(
    "path",
    [
        "/chunked?bare=1&split=5&form=b64&pad=1",
        "/sse?events=3&interval=0.05&reflect=1&bare=1",
        "/compressed?enc=br&stream=1&bare=1&form=hex",
    ],
)
@pytest.mark.parametrize("http", ["--http2", "--http1.1"])
def test_curl_streams(broker: Proxy, sc: Scenario, path: str, http: str) -> None:
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-N",
            http,
            "--max-time",
            "30",
            "--proxy",
            broker.url("acme", sc.acme.token),
            "--cacert",
            str(broker.ca_path),
            "-H",
            "Authorization: Bearer <<secret:stripe>>",
            "--compressed",
            "-D",
            "-",
            f"https://127.0.0.1:{sc.upstream_port}{path}",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    status = [line for line in out.stdout.split(b"\r\n") if line.startswith(b"HTTP/")][-1]
    assert status.startswith(b"HTTP/2 200" if http == "--http2" else b"HTTP/1.1 200"), status
    assert_clean(out.stdout, sc.values["acme/stripe"], f"curl {http} {path}")
    assert PLACEHOLDER in out.stdout


# -- WebSocket ----------------------------------------------------------------------------------
class WsClient:
    """A WebSocket client through the proxy: CONNECT, TLS, wsproto framing."""

    def __init__(self, proxy: Proxy, sc: Scenario, target: str) -> None:
        raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        auth = base64.b64encode(f"acme:{sc.acme.token}".encode()).decode()
        dest = f"127.0.0.1:{sc.upstream_port}"
        raw.sendall(
            f"CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\n"
            f"Proxy-Authorization: Basic {auth}\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += raw.recv(1) or b"\r\n\r\n"
        assert head.startswith(b"HTTP/1.1 200"), head
        ctx = ssl.create_default_context(cafile=str(proxy.ca_path))
        self.sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.received = b""  # every byte, for the leak check
        self.accept: AcceptConnection | None = None
        self.messages: list[bytes] = []
        self._parts: list[bytes] = []
        self.sock.sendall(
            self.ws.send(
                Request(
                    host=dest,
                    target=target,
                    extra_headers=[(b"authorization", b"Bearer <<secret:stripe>>")],
                )
            )
        )
        self._pump(lambda: self.accept is not None)

    def _pump(self, done: object) -> None:
        deadline = time.monotonic() + 10
        while not done() and time.monotonic() < deadline:  # type: ignore[operator]
            data = self.sock.recv(65536)
            assert data, "the proxy closed the WebSocket"
            self.received += data
            self.ws.receive_data(data)
            for ev in self.ws.events():
                if isinstance(ev, AcceptConnection):
                    self.accept = ev
                elif isinstance(ev, Message):
                    part = ev.data.encode() if isinstance(ev.data, str) else ev.data
                    self._parts.append(part)
                    if ev.message_finished:
                        self.messages.append(b"".join(self._parts))
                        self._parts = []
                elif isinstance(ev, CloseConnection):
                    raise AssertionError(f"closed by the server: {ev.code}")
        assert done(), "timed out"  # type: ignore[operator]

    def recv(self) -> bytes:
        n = len(self.messages)
        self._pump(lambda: len(self.messages) > n)
        return self.messages[n]

    def send(self, text: str) -> None:
        self.sock.sendall(self.ws.send(TextMessage(text)))

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize(("form", "pad"), [("raw", 0), ("b64", 1), ("hex", 0), ("jsonu", 0)])
@pytest.mark.parametrize("frag", [0, 7], ids=["whole", "fragmented"])
def test_websocket_server_messages_scrubbed(
    broker: Proxy, sc: Scenario, upstream: Upstream, form: str, pad: int, frag: int
) -> None:
    value = sc.values["acme/stripe"]
    upstream.clear()
    ws = WsClient(broker, sc, f"/ws?reflect=1&bare=1&form={form}&pad={pad}&frag={frag}")
    try:
        assert ws.accept is not None
        names = {k.lower() for k, _ in ws.accept.extra_headers}
        assert b"transfer-encoding" not in names, "a 101 carries no body framing"
        first = ws.recv()
        ws.send("reflect")
        second = ws.recv()
        ws.send("hello")
        assert ws.recv() == b"hello", "the connection must keep working both ways"
    finally:
        ws.close()
    for i, msg in enumerate((first, second)):
        assert PLACEHOLDER in msg, f"message {i} was not scrubbed in place"
    assert_clean(ws.received, value, f"WebSocket bytes ({form}, frag={frag})")
    assert [m for _, m in upstream.ws_messages][:2] == [b"reflect", b"hello"]
