"""Content-Encoding decoding with a cap on decoded size (decompression-bomb guard).

Scrubbing needs the decoded bytes (never scan compressed ones), and the
decoder must not let a small body expand without bound. Every stage of a
(possibly stacked) encoding counts its own output and raises :class:`TooLarge`
as soon as it exceeds ``limit``; the limit applies to ``identity`` too. Corrupt,
truncated or unknown encodings raise :class:`DecodeError`: fail closed.

How tightly each codec is bounded (peak output of one call before the check):

- gzip / deflate: ``zlib`` ``max_length``: at most ``limit + 1`` bytes.
- br: ``output_buffer_limit``: ``limit + 1`` plus the decoder's buffer growth
  step (about 32 KiB).
- zstd: python-zstandard's ``decompressobj`` has no output cap, so input is fed
  in slices sized so that even at zstd's densest (a 128 KiB block from 4 input
  bytes) a slice cannot produce more than the remaining allowance or
  :data:`_ZSTD_MIN_SLICE` x 32 KiB (2 MiB), plus one block. The window is
  capped at 8 MiB (RFC 9659's limit for HTTP), which bounds decoder memory.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import ClassVar

import brotli
import zstandard

from broker.request.decision import Reason

__all__ = ["DecodeError", "IncrementalDecoder", "TooLarge", "decode_body", "parse_encoding"]

_ZSTD_WINDOW = 8 << 20
_ZSTD_EXPANSION = 32 << 10  # max output bytes per input byte (128 KiB block / 4 bytes)
_ZSTD_MIN_SLICE = 64
_SLICE = 16 << 10  # input per decompressor call; bounds the copy of unused_data per member
_MAX_ROUNDS = 1 << 22  # loop bound; every round but the last consumes input


class DecodeError(Exception):
    """The body cannot be decoded (corrupt, truncated, unknown encoding)."""

    reason: ClassVar[Reason] = Reason.UNDECODABLE_BODY


class TooLarge(DecodeError):
    """The decoded body exceeds the limit."""

    reason: ClassVar[Reason] = Reason.BODY_TOO_LARGE


def parse_encoding(header: str) -> list[str]:
    """Codings in the order they were applied (``identity`` and blanks dropped)."""
    codings = [c.strip().lower() for c in header.split(",")]
    # S3's aws-chunked is a framing of the payload, not a compression: its
    # bytes are read as they are (broker.credentials.aws_chunked).
    return [c for c in codings if c and c not in ("identity", "aws-chunked")]


def decode_body(data: bytes, encoding: str, limit: int) -> bytes:
    """Decode a whole body encoded with ``encoding`` (a Content-Encoding value)."""
    decoder = IncrementalDecoder(encoding, limit)
    return decoder.feed(data) + decoder.finish()


class _Stage:
    """One coding: counts its output against the limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0

    def room(self) -> int:
        """Output still allowed, plus one byte to prove an overflow."""
        return self.limit - self.total + 1

    def count(self, piece: bytes) -> bytes:
        self.total += len(piece)
        if self.total > self.limit:
            raise TooLarge(f"decoded body exceeds {self.limit} bytes")
        return piece

    def feed(self, chunk: bytes) -> bytes:
        return self.count(chunk)

    def finish(self) -> bytes:
        return b""


class _Zlib(_Stage):
    """gzip (members may be concatenated, zero padding after them ignored),
    and deflate: zlib-wrapped per RFC 9110, or raw as some servers send it."""

    def __init__(self, limit: int, gzip: bool) -> None:
        super().__init__(limit)
        self._gzip = gzip
        self._name = "gzip" if gzip else "deflate"
        self._pending = b""  # a deflate body's first byte, waiting for the second
        self._obj: zlib._Decompress | None = None
        self._members = 0

    def _start(self, data: memoryview, pos: int) -> int:
        """Skip padding and open a decompressor if possible; the new position."""
        if self._gzip:
            if self._members:  # zero padding after a member, as gzip(1) accepts
                window = bytes(data[pos : pos + _SLICE])
                pos += len(window) - len(window.lstrip(b"\0"))
            if pos < len(data) and (data[pos] or not self._members):
                self._obj = zlib.decompressobj(wbits=31)
        elif self._members:
            raise DecodeError("data after the end of the deflate stream")
        elif len(data) - pos >= 2:
            wrapped = data[pos] & 0x0F == 8 and int.from_bytes(data[pos : pos + 2]) % 31 == 0
            self._obj = zlib.decompressobj(wbits=15 if wrapped else -15)
        return pos

    def feed(self, chunk: bytes) -> bytes:
        data = memoryview(self._pending + chunk)
        self._pending = b""
        out: list[bytes] = []
        pos = 0
        for _ in range(_MAX_ROUNDS):
            if pos == len(data):
                return b"".join(out)
            obj = self._obj
            if obj is None:
                pos = self._start(data, pos)
                if self._obj is None and not self._gzip:
                    self._pending = bytes(data[pos:])
                    return b"".join(out)
                continue
            piece = data[pos : pos + _SLICE]
            try:
                out.append(self.count(obj.decompress(piece, self.room())))
            except zlib.error as exc:
                raise DecodeError(f"corrupt {self._name} body: {exc}") from None
            # max_length is one past the allowance, so reaching it raised TooLarge:
            # all of `piece` was consumed, unless the stream ended inside it.
            pos += len(piece) - len(obj.unused_data)
            if obj.eof:
                self._obj = None
                self._members += 1
        raise DecodeError(f"{self._name} body has too many members")

    def finish(self) -> bytes:
        if self._obj is not None or self._pending:
            raise DecodeError(f"truncated {self._name} body")
        return b""


class _Brotli(_Stage):
    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self._obj = brotli.Decompressor()
        self._fed = False

    def feed(self, chunk: bytes) -> bytes:
        self._fed = self._fed or bool(chunk)
        out: list[bytes] = []
        try:
            out.append(self.count(self._obj.process(chunk, output_buffer_limit=self.room())))
            for _ in range(_MAX_ROUNDS):
                if self._obj.can_accept_more_data():
                    return b"".join(out)
                out.append(self.count(self._obj.process(b"", output_buffer_limit=self.room())))
        except brotli.error as exc:
            raise DecodeError(f"corrupt br body: {exc}") from None
        raise DecodeError("br body did not make progress")

    def finish(self) -> bytes:
        if self._fed and not self._obj.is_finished():
            raise DecodeError("truncated br body")
        return b""


class _Zstd(_Stage):
    """Frames may be concatenated; each needs a fresh decompressobj."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self._dctx = zstandard.ZstdDecompressor(max_window_size=_ZSTD_WINDOW)
        self._obj: zstandard.ZstdDecompressionObj | None = None

    def feed(self, chunk: bytes) -> bytes:
        data = memoryview(chunk)
        out: list[bytes] = []
        pos = 0
        for _ in range(_MAX_ROUNDS):
            if pos == len(data):
                return b"".join(out)
            size = min(max(self.room() // _ZSTD_EXPANSION, _ZSTD_MIN_SLICE), _SLICE)
            piece = data[pos : pos + size]
            if self._obj is None:
                self._obj = self._dctx.decompressobj()
            try:
                out.append(self.count(self._obj.decompress(piece)))
            except zstandard.ZstdError as exc:
                raise DecodeError(f"corrupt zstd body: {exc}") from None
            pos += len(piece) - len(self._obj.unused_data)
            if self._obj.eof:
                self._obj = None
        raise DecodeError("zstd body has too many frames")

    def finish(self) -> bytes:
        if self._obj is not None:
            raise DecodeError("truncated zstd body")
        return b""


_CODECS: dict[str, Callable[[int], _Stage]] = {
    "gzip": lambda limit: _Zlib(limit, gzip=True),
    "x-gzip": lambda limit: _Zlib(limit, gzip=True),
    "deflate": lambda limit: _Zlib(limit, gzip=False),
    "br": _Brotli,
    "zstd": _Zstd,
}


class IncrementalDecoder:
    """Decodes a body chunk by chunk; stacked codings are undone last first."""

    def __init__(self, encoding: str, limit: int) -> None:
        if limit < 0:
            raise ValueError("limit must be >= 0")
        codings = parse_encoding(encoding)
        unknown = [c for c in codings if c not in _CODECS]
        if unknown:
            raise DecodeError(f"unsupported content-encoding {unknown[0]!r}")
        self._stages = [_CODECS[c](limit) for c in reversed(codings)] or [_Stage(limit)]

    def feed(self, chunk: bytes) -> bytes:
        for stage in self._stages:
            chunk = stage.feed(chunk)
        return chunk

    def finish(self) -> bytes:
        """End of body: the rest of the output; raises if the body was truncated."""
        out = b""
        for stage in self._stages:
            out = stage.feed(out) + stage.finish()
        return out
