"""Content-Encoding decoding with a size cap (broker/decode.py)."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib
from collections.abc import Callable

import brotli
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.request.codings import (
    DecodeError,
    IncrementalDecoder,
    TooLarge,
    decode_body,
    parse_encoding,
)

BODY = b'{"text": "hello, world", "n": 12345}\n' * 300
LIMIT = 1 << 20


def raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-15)
    return c.compress(data) + c.flush()


def zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": zstd,
    "identity": lambda d: d,
}
CODECS = [pytest.param(name, id=name) for name in ENCODERS]


def feed_all(encoding: str, chunks: list[bytes], limit: int = LIMIT) -> bytes:
    decoder = IncrementalDecoder(encoding, limit)
    return b"".join(decoder.feed(c) for c in chunks) + decoder.finish()


@pytest.mark.parametrize("encoding", CODECS)
def test_round_trip(encoding: str) -> None:
    encoded = ENCODERS[encoding](BODY)
    assert decode_body(encoded, encoding, LIMIT) == BODY
    assert feed_all(encoding, [encoded[i : i + 7] for i in range(0, len(encoded), 7)]) == BODY


@settings(max_examples=100, deadline=None)
@given(encoding=st.sampled_from(list(ENCODERS)), cuts=st.lists(st.integers(0, 2000), max_size=8))
def test_any_chunking_decodes_the_same(encoding: str, cuts: list[int]) -> None:
    encoded = ENCODERS[encoding](BODY)
    points = sorted({min(c, len(encoded)) for c in cuts})
    chunks = [encoded[a:b] for a, b in zip([0, *points], [*points, len(encoded)], strict=True)]
    assert feed_all(encoding, chunks) == BODY


@pytest.mark.parametrize(
    ("encoding", "encoded"),
    [
        pytest.param("gzip, br", brotli.compress(gzip.compress(BODY)), id="gzip-then-br"),
        pytest.param("deflate,zstd", zstd(zlib.compress(BODY)), id="deflate-then-zstd"),
        pytest.param("GZIP", gzip.compress(BODY), id="upper-case"),
        pytest.param(" identity , gzip ", gzip.compress(BODY), id="identity-and-spaces"),
        pytest.param("deflate", raw_deflate(BODY), id="raw-deflate"),
        pytest.param(
            "gzip", gzip.compress(BODY[:500]) + gzip.compress(BODY[500:]), id="gzip-members"
        ),
        pytest.param("gzip", gzip.compress(BODY) + b"\0" * 8, id="gzip-zero-padding"),
        pytest.param("zstd", zstd(BODY[:500]) + zstd(BODY[500:]), id="zstd-frames"),
        pytest.param("", BODY, id="no-encoding"),
    ],
)
def test_variants_decode(encoding: str, encoded: bytes) -> None:
    assert decode_body(encoded, encoding, LIMIT) == BODY
    assert feed_all(encoding, [encoded[i : i + 5] for i in range(0, len(encoded), 5)]) == BODY


@pytest.mark.parametrize("encoding", CODECS)
def test_empty_body_is_empty(encoding: str) -> None:
    assert decode_body(b"", encoding, LIMIT) == b""


@pytest.mark.parametrize("encoding", CODECS)
def test_limit_is_inclusive(encoding: str) -> None:
    encoded = ENCODERS[encoding](BODY)
    assert decode_body(encoded, encoding, len(BODY)) == BODY
    with pytest.raises(TooLarge):
        decode_body(encoded, encoding, len(BODY) - 1)


BOMB_SIZE = 64 << 20


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        pytest.param("zstd", zstd, id="zstd"),
        pytest.param("gzip", gzip.compress, id="gzip"),
        pytest.param("br", lambda d: brotli.compress(d, quality=5), id="br"),
        pytest.param("deflate", zlib.compress, id="deflate"),
    ],
)
def test_decompression_bomb_raises_too_large(
    encoding: str, compress: Callable[[bytes], bytes]
) -> None:
    bomb = compress(bytes(BOMB_SIZE))
    assert len(bomb) < 1 << 20  # a small body ...
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge):  # ... that would expand to 64 MiB
            decode_body(bomb, encoding, 1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # the expansion is never held
    decoder = IncrementalDecoder(encoding, 1 << 20)
    with pytest.raises(TooLarge):
        for i in range(0, len(bomb), 4096):
            decoder.feed(bomb[i : i + 4096])


def test_stacked_stages_each_count_against_the_limit() -> None:
    inner = gzip.compress(bytes(4 << 20))  # small once decoded by br, huge by gzip
    with pytest.raises(TooLarge):
        decode_body(brotli.compress(inner), "gzip, br", 1 << 20)


CORRUPT = [
    pytest.param("gzip", b"\x1f\x8b\x08\x00garbage-garbage-garbage", id="gzip-garbage"),
    pytest.param("gzip", b"not gzip at all", id="gzip-bad-magic"),
    pytest.param("gzip", gzip.compress(BODY)[:-5], id="gzip-truncated"),
    pytest.param("gzip", gzip.compress(BODY) + b"trailing", id="gzip-trailing-garbage"),
    pytest.param("deflate", zlib.compress(BODY)[:-3], id="deflate-truncated"),
    pytest.param("deflate", zlib.compress(BODY) + b"xx", id="deflate-trailing-data"),
    pytest.param("deflate", b"x", id="deflate-one-byte"),
    pytest.param("br", brotli.compress(BODY)[:-2], id="br-truncated"),
    pytest.param("br", b"\xff" * 32, id="br-garbage"),
    pytest.param("zstd", zstd(BODY)[:-3], id="zstd-truncated"),
    pytest.param("zstd", b"\x28\xb5\x2f\xfd" + b"\xff" * 16, id="zstd-garbage"),
    pytest.param("compress", b"anything", id="unknown-encoding"),
    pytest.param("gzip, snappy", b"anything", id="unknown-in-stack"),
]


@pytest.mark.parametrize(("encoding", "encoded"), CORRUPT)
def test_corrupt_input_fails_closed(encoding: str, encoded: bytes) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_body(encoded, encoding, LIMIT)
    assert not isinstance(caught.value, TooLarge)


def test_zstd_window_over_8_mib_is_refused() -> None:
    params = zstandard.ZstdCompressionParameters.from_level(
        3, window_log=24, write_content_size=False
    )
    encoded = zstandard.ZstdCompressor(compression_params=params).compress(bytes(9 << 20))
    with pytest.raises(DecodeError):
        decode_body(encoded, "zstd", LIMIT)


@pytest.mark.parametrize(
    ("header", "codings"),
    [
        pytest.param("gzip", ["gzip"], id="single"),
        pytest.param("gzip, br", ["gzip", "br"], id="stacked-in-applied-order"),
        pytest.param("Identity", [], id="identity-dropped"),
        pytest.param(" , ZSTD ,", ["zstd"], id="blanks-and-case"),
    ],
)
def test_parse_encoding(header: str, codings: list[str]) -> None:
    assert parse_encoding(header) == codings


def test_negative_limit_is_rejected() -> None:
    with pytest.raises(ValueError):
        IncrementalDecoder("gzip", -1)
