"""Multi-pattern literal matching (broker/matcher.py): every engine agrees
with a brute-force reference."""

from __future__ import annotations

import os
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.scrub import matcher
from broker.scrub.matcher import available_engines, build

ENGINES = [pytest.param(e, id=e) for e in available_engines()]
Match = tuple[int, int, int]


def reference_all(patterns: list[bytes], data: bytes) -> list[Match]:
    """Every occurrence, lowest index for duplicate patterns, by brute force."""
    found = {}
    for index, pattern in enumerate(patterns):
        for start in range(len(data) - len(pattern) + 1):
            if data[start : start + len(pattern)] == pattern:
                found.setdefault((start, start + len(pattern)), index)
    return sorted(((s, e, i) for (s, e), i in found.items()), key=lambda m: (m[0], -m[1], m[2]))


def reference_find(patterns: list[bytes], data: bytes) -> list[Match]:
    """Leftmost-longest, non-overlapping, by brute force."""
    chosen: list[Match] = []
    position = 0
    while position < len(data):
        at = [m for m in reference_all(patterns, data) if m[0] == position]
        if at:
            chosen.append(at[0])
            position = at[0][1]
        else:
            position += 1
    return chosen


CASES = [
    pytest.param([b"abc"], b"xxabcxx", [(2, 5, 0)], id="single"),
    pytest.param([b"abc", b"abcdef"], b"abcdefg", [(0, 6, 1)], id="longest-at-same-start"),
    pytest.param([b"bcdef", b"abc"], b"abcdef", [(0, 3, 1)], id="leftmost-beats-longer"),
    pytest.param([b"ab", b"ab"], b"ab", [(0, 2, 0)], id="duplicate-lowest-index"),
    pytest.param([b"aa"], b"aaaaa", [(0, 2, 0), (2, 4, 0)], id="self-overlap-non-overlapping"),
    pytest.param([b"a.c", b"(x)"], b"abc a.c (x)", [(4, 7, 0), (8, 11, 1)], id="regex-metachars"),
    pytest.param([b"a\x00b", b"\x00"], b"-a\x00b-\x00", [(1, 4, 0), (5, 6, 1)], id="nul-bytes"),
    pytest.param([b"\xff\xfe"], b"\xff\xfe\xff", [(0, 2, 0)], id="high-bytes"),
    pytest.param([b"abc"], b"", [], id="empty-data"),
    pytest.param(
        [b"0123456789abcdefXYZ", b"0123456789abcdefQ"],
        b"0123456789abcdefQ",
        [(0, 17, 1)],
        id="patterns-sharing-a-long-prefix",
    ),
]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("patterns", "data", "expected"), CASES)
def test_find(engine: str, patterns: list[bytes], data: bytes, expected: list[Match]) -> None:
    assert build(patterns, engine).find(data) == expected


@pytest.mark.parametrize("engine", ENGINES)
def test_find_all_reports_overlapping_occurrences(engine: str) -> None:
    patterns = [b"abcd", b"cdef", b"ab"]
    assert build(patterns, engine).find_all(b"abcdef") == [(0, 4, 0), (0, 2, 2), (2, 6, 1)]


@pytest.mark.parametrize("engine", [*ENGINES, pytest.param("auto", id="auto")])
def test_no_patterns_match_nothing(engine: str) -> None:
    m = build([], engine)
    assert m.find(b"anything") == []
    assert m.find_all(b"anything") == []


@pytest.mark.parametrize(
    ("patterns", "engine", "error"),
    [
        pytest.param([b""], "auto", ValueError, id="empty-pattern"),
        pytest.param([b"a"], "grep", ValueError, id="unknown-engine"),
    ],
)
def test_bad_arguments(patterns: list[bytes], engine: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        build(patterns, engine)


def test_auto_prefers_the_first_available_engine() -> None:
    assert build([b"abc"]).engine == available_engines()[0]
    assert available_engines()[-1] == "python"


SMALL = st.binary(min_size=1, max_size=5).map(lambda b: bytes(x % 3 + 97 for x in b))


@settings(max_examples=300, deadline=None)
@given(patterns=st.lists(SMALL, min_size=1, max_size=8), data=st.binary(max_size=60))
def test_engines_agree_with_reference(patterns: list[bytes], data: bytes) -> None:
    data = bytes(x % 3 + 97 for x in data)  # a 3-letter alphabet forces overlaps
    expected_find = reference_find(patterns, data)
    expected_all = reference_all(patterns, data)
    for engine in available_engines():
        m = build(patterns, engine)
        assert (engine, m.find(data)) == (engine, expected_find)
        assert (engine, m.find_all(data)) == (engine, expected_all)


# Long patterns over the bytes in which spellings of one value differ: keys are
# windows avoiding them, and Hyperscan merges keys equal but for case.
SPELLED = st.text(alphabet=st.sampled_from("aAbB09" * 6 + "+-/_=%\\"), min_size=1, max_size=40).map(
    str.encode
)
URLSAFE = bytes.maketrans(b"+/", b"-_")


@settings(max_examples=200, deadline=None)
@given(
    base=st.lists(SPELLED, min_size=1, max_size=5),
    picks=st.lists(st.integers(0, 100), max_size=8),
    noise=st.lists(SPELLED, max_size=8),
    segments=st.booleans(),
)
def test_spellings_case_and_segments_agree_with_reference(
    base: list[bytes], picks: list[int], noise: list[bytes], segments: bool
) -> None:
    patterns = base + [p.swapcase() for p in base] + [p.translate(URLSAFE) for p in base]
    pieces = [patterns[i % len(patterns)] for i in picks]
    data = b"".join(piece + (noise[i] if i < len(noise) else b"") for i, piece in enumerate(pieces))
    expected = reference_all(patterns, data), reference_find(patterns, data)
    with pytest.MonkeyPatch.context() as mp:
        if segments:  # Hyperscan splits even these short inputs into 3 segments
            mp.setattr(matcher, "_WORKERS", 3)
            mp.setattr(matcher, "_SEGMENT_MIN", 4)
        for engine in available_engines():
            m = build(patterns, engine)
            assert (engine, m.find_all(data), m.find(data)) == (engine, *expected)


@pytest.mark.skipif("hyperscan" not in available_engines(), reason="hyperscan not installed")
def test_hyperscan_segments_find_patterns_across_every_boundary(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(matcher, "_WORKERS", 3)
    monkeypatch.setattr(matcher, "_SEGMENT_MIN", 1000)
    patterns = [b"kb-canary-0123456789-long", b"short", b"Kb-Canary-0123456789-LONG"]
    m = build(patterns, "hyperscan")
    size = 3000  # three segments: [0, 1000), [1000, 2000), [2000, 3000)
    for boundary in (1000, 2000):
        for index, pattern in enumerate(patterns):
            for start in range(boundary - len(pattern) - 1, boundary + 2):
                data = bytearray(b"." * size)
                data[start : start + len(pattern)] = pattern
                found = m.find_all(bytes(data))
                assert found == [(start, start + len(pattern), index)], (boundary, start)


@pytest.mark.skipif("hyperscan" not in available_engines(), reason="hyperscan not installed")
def test_hyperscan_spellings_share_literals() -> None:
    value = b"+/=kbCanaryABCDEFGHIJKLMN+/kbCanaryOPQRSTUVWXYZ"  # key window at offset 3
    spellings = [value, value.translate(URLSAFE), value.replace(b"/", b"\\/"), value.swapcase()]
    m = build(spellings, "hyperscan")
    assert len(m._literal_keys) == 1  # type: ignore[attr-defined]
    data = b"|".join(spellings)
    assert [i for _s, _e, i in m.find(data)] == [0, 1, 2, 3]


@pytest.mark.parametrize("engine", [e for e in ENGINES if e.values[0] != "python"])
def test_ten_thousand_patterns(engine: str) -> None:
    patterns = [os.urandom(16).hex().encode() for _ in range(10_000)]
    planted = [0, 4_321, 9_999]
    filler = b"-" * 1000
    data = filler + filler.join(patterns[i] for i in planted) + filler
    found = build(patterns, engine).find(data)
    assert [i for _s, _e, i in found] == planted
    assert all(data[s:e] == patterns[i] for s, e, i in found)


@pytest.mark.parametrize("engine", ENGINES)
def test_concurrent_scans_are_correct(engine: str) -> None:
    patterns = [f"kb-canary-{i:04d}".encode() for i in range(200)]
    m = build(patterns, engine)
    errors: list[int] = []

    def work(n: int) -> None:
        data = (b"." * 50).join(patterns[n : n + 20])
        for _ in range(50):
            if [i for _s, _e, i in m.find(data)] != list(range(n, n + 20)):
                errors.append(n)

    threads = [threading.Thread(target=work, args=(n * 20,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.skipif("hyperscan" not in available_engines(), reason="hyperscan not installed")
def test_hyperscan_no_match_never_calls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    m = build([b"kb-canary-absent"], "hyperscan")

    def fail(*_args: object) -> list[Match]:
        raise AssertionError("confirmation ran without a key hit")

    monkeypatch.setattr(matcher._Hyperscan, "_confirm", fail)
    assert m.find(b"x" * 100_000) == []
