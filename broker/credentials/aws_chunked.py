"""S3's ``aws-chunked`` framing with chunk signatures
(``STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]``), decoded strictly::

    <hex size>;chunk-signature=<64 hex>\\r\\n<data>\\r\\n ... 0;chunk-signature=...\\r\\n
    [x-amz-checksum-<alg>:<value>\\r\\n x-amz-trailer-signature:<64 hex>\\r\\n] \\r\\n

The agent signed its chunks with a dummy key, so they cannot be forwarded;
the broker sends the data as a plain body instead (see
:mod:`broker.credentials.aws_sigv4`)."""

from __future__ import annotations

import re

_SIZE = re.compile(rb"^([0-9a-fA-F]{1,16});chunk-signature=[0-9a-f]{64}$")
_TRAILER = re.compile(rb"^(x-amz-checksum-[a-z0-9]{1,16}):([A-Za-z0-9+/=]{1,128})$")
_TRAILER_SIG = re.compile(rb"^x-amz-trailer-signature:[0-9a-f]{64}$")
_MAX_CHUNKS = 1 << 20


class ChunkError(ValueError):
    """The body is not well-formed aws-chunked framing."""


def decode_signed_chunks(body: bytes, *, trailer: bool) -> tuple[bytes, list[tuple[str, str]]]:
    """The data, and the checksum trailers as header fields."""
    out: list[bytes] = []
    pos = 0
    for _ in range(_MAX_CHUNKS):
        end = body.find(b"\r\n", pos)
        if end < 0:
            raise ChunkError("a chunk header has no line end")
        m = _SIZE.match(body[pos:end])
        if m is None:
            raise ChunkError("a chunk header is not SIZE;chunk-signature=SIG")
        size = int(m.group(1), 16)
        start = end + 2
        if size == 0:
            pos = start
            break
        if body[start + size : start + size + 2] != b"\r\n":
            raise ChunkError("a chunk is shorter than its size or lacks its line end")
        out.append(body[start : start + size])
        pos = start + size + 2
    else:
        raise ChunkError("too many chunks")
    trailers: list[tuple[str, str]] = []
    for _ in range(16):
        end = body.find(b"\r\n", pos)
        if end < 0:
            raise ChunkError("the trailer section has no line end")
        line, pos = body[pos:end], end + 2
        if not line:
            break
        if not trailer:
            raise ChunkError("a trailer in a body declared without trailers")
        t = _TRAILER.match(line)
        if t is not None:
            trailers.append((t.group(1).decode("ascii"), t.group(2).decode("ascii")))
        elif _TRAILER_SIG.match(line) is None:
            raise ChunkError("a trailer line is neither a checksum nor the trailer signature")
    else:
        raise ChunkError("too many trailer lines")
    if pos != len(body):
        raise ChunkError("bytes after the end of the aws-chunked body")
    return b"".join(out), trailers
