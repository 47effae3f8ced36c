"""A small, fast HTTPS upstream for the benchmark (asyncio, HTTP/1.1 keep-alive).

``tests/support/upstream.py`` is thorough but thread-per-connection; this one
costs the upstream as little CPU as plain asyncio allows, so the 2-core
benchmark machine spends its time in the proxy under test. Endpoints (GET;
anything else is 404):

  /json             ~200-byte JSON echoing the Authorization header, so through
                    keybroker every response holds the injected value and is
                    scrubbed (it comes back as the placeholder).
  /bytes?size=N     N bytes of filler text with Content-Length, written in
                    256 KiB pieces (flow-controlled: 1 GiB never sits in memory).
  /sse?events=N&interval=S
                    text/event-stream, chunked; the first event goes out with
                    the headers, then one every S seconds.

Run: ``python bench/upstream_fast.py --cert C --key K [--port P]``; prints
``ready <port>`` once listening and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import ssl
import sys
from urllib.parse import parse_qs

PIECE = 256 * 1024
_UNIT = b"The quick brown fox jumps over the lazy dog. "
FILLER = (_UNIT * (PIECE // len(_UNIT) + 1))[:PIECE]
MAX_HEAD = 64 * 1024
MAX_SIZE = 64 * 1024**3
MAX_EVENTS = 10_000


def _head(status: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers), "", ""]
    return "\r\n".join(lines).encode("latin-1")


async def _json(writer: asyncio.StreamWriter, auth: str) -> None:
    body = json.dumps(
        {"ok": True, "auth": auth, "note": "a small JSON answer the broker must scan"},
        separators=(",", ":"),
    ).encode()
    writer.write(
        _head(
            "200 OK",
            [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
        )
        + body
    )


async def _bytes(writer: asyncio.StreamWriter, size: int) -> None:
    writer.write(
        _head(
            "200 OK",
            [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))],
        )
    )
    left = size
    while left > 0:
        n = min(left, PIECE)
        writer.write(FILLER if n == PIECE else FILLER[:n])
        left -= n
        await writer.drain()


async def _sse(writer: asyncio.StreamWriter, events: int, interval: float) -> None:
    writer.write(
        _head(
            "200 OK",
            [
                ("Content-Type", "text/event-stream"),
                ("Cache-Control", "no-cache"),
                ("Transfer-Encoding", "chunked"),
            ],
        )
    )
    for i in range(events):
        if i:
            await asyncio.sleep(interval)
        event = f'data: {{"i": {i}, "text": "event {i}"}}\n\n'.encode()
        writer.write(b"%x\r\n%s\r\n" % (len(event), event))
        await writer.drain()
    writer.write(b"0\r\n\r\n")


def _not_found(writer: asyncio.StreamWriter) -> None:
    body = b'{"error":"not found"}'
    writer.write(
        _head(
            "404 Not Found",
            [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
        )
        + body
    )


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        for _ in range(10_000_000):  # keep-alive, bounded
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3:
                return
            target = parts[1]
            headers = {}
            for line in lines[1:]:
                k, sep, v = line.partition(":")
                if sep:
                    headers[k.strip().lower()] = v.strip()
            length = headers.get("content-length", "0")
            if length.isdigit() and int(length):
                await reader.readexactly(int(length))
            path, _, query = target.partition("?")
            q = {k: v[-1] for k, v in parse_qs(query).items()}
            if path == "/json":
                await _json(writer, headers.get("authorization", ""))
            elif path == "/bytes":
                await _bytes(writer, min(int(q.get("size", "1024")), MAX_SIZE))
            elif path == "/sse":
                await _sse(
                    writer,
                    min(int(q.get("events", "3")), MAX_EVENTS),
                    min(float(q.get("interval", "0.05")), 60.0),
                )
            else:
                _not_found(writer)
            await writer.drain()
            if headers.get("connection", "").lower() == "close":
                return
    except (ConnectionError, ssl.SSLError, ValueError):
        return
    finally:
        writer.close()


async def serve(cert: str, key: str, port: int) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    server = await asyncio.start_server(
        handle, "127.0.0.1", port, ssl=ctx, limit=MAX_HEAD, backlog=1024
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.cert, args.key, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
