"""Host normalisation and matching (broker/hosts.py)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from broker.policy.hosts import HostError, host_matches, normalize_host, normalize_pattern


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        pytest.param("api.stripe.com", "api.stripe.com", id="already-canonical"),
        pytest.param("API.Stripe.COM", "api.stripe.com", id="upper-case"),
        pytest.param("api.stripe.com.", "api.stripe.com", id="trailing-dot"),
        pytest.param("API.Stripe.com.", "api.stripe.com", id="case-and-trailing-dot"),
        pytest.param("  api.stripe.com ", "api.stripe.com", id="surrounding-space"),
        pytest.param("bücher.example", "xn--bcher-kva.example", id="idna-u-label"),
        pytest.param("BÜCHER.Example.", "xn--bcher-kva.example", id="idna-upper-trailing-dot"),
        pytest.param("xn--bcher-kva.example", "xn--bcher-kva.example", id="idna-a-label-kept"),
        pytest.param("XN--BCHER-KVA.example", "xn--bcher-kva.example", id="idna-a-label-upper"),
        pytest.param("\uff21\uff22\uff23.com", "abc.com", id="fullwidth-letters-mapped"),
        pytest.param("under_score.example", "under_score.example", id="underscore"),
        pytest.param("127.0.0.1", "127.0.0.1", id="ipv4"),
        pytest.param("::1", "::1", id="ipv6-loopback"),
        pytest.param("[::1]", "::1", id="ipv6-brackets"),
        pytest.param("[0:0:0:0:0:0:0:1]", "::1", id="ipv6-expanded"),
        pytest.param("2001:DB8:0:0:0:0:0:1", "2001:db8::1", id="ipv6-upper-compressed"),
        pytest.param("[2001:db8::0:1]", "2001:db8::1", id="ipv6-brackets-zero-group"),
    ],
)
def test_normalize_host(host: str, expected: str) -> None:
    assert normalize_host(host) == expected


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("[]", id="empty-brackets"),
        pytest.param(".", id="only-dot"),
        pytest.param("a..b", id="empty-label"),
        pytest.param(".example.com", id="leading-dot"),
        pytest.param("exa mple.com", id="space-inside"),
        pytest.param("evil.com/x", id="slash"),
        pytest.param("user@evil.com", id="userinfo"),
        pytest.param("a" * 64 + ".com", id="label-64-chars"),
        pytest.param("*.example.com", id="wildcard-is-not-a-host"),
        pytest.param("straße.de", id="idna-deviation-sharp-s"),
        pytest.param("STRAẞE.de", id="idna-deviation-capital-sharp-s"),
        pytest.param("ς.example", id="idna-deviation-final-sigma"),
        pytest.param("a\u200db.example", id="idna-deviation-zwj"),
    ],
)
def test_normalize_host_rejects(host: str) -> None:
    with pytest.raises(HostError):
        normalize_host(host)


def test_idna_deviation_a_label_is_accepted() -> None:
    # "straße.de" under IDNA 2008 is xn--strae-oqa.de, a different domain from
    # strasse.de (what IDNA 2003 makes of it); the exact A-label stays usable.
    assert normalize_host("xn--strae-oqa.de") == "xn--strae-oqa.de"
    assert normalize_host("strasse.de") == "strasse.de"


def test_label_of_63_chars_is_accepted() -> None:
    host = "a" * 63 + ".com"
    assert normalize_host(host) == host


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        pytest.param("api.stripe.com", "api.stripe.com", id="exact"),
        pytest.param("API.STRIPE.COM.", "api.stripe.com", id="exact-case-dot"),
        pytest.param("*.example.com", "*.example.com", id="wildcard"),
        pytest.param("*.Example.COM.", "*.example.com", id="wildcard-case-dot"),
        pytest.param("*.bücher.example", "*.xn--bcher-kva.example", id="wildcard-idna"),
        pytest.param("[::1]", "::1", id="ipv6"),
    ],
)
def test_normalize_pattern(pattern: str, expected: str) -> None:
    assert normalize_pattern(pattern) == expected


@pytest.mark.parametrize(
    "pattern",
    [
        pytest.param("*", id="star-alone"),
        pytest.param(" * ", id="star-alone-spaced"),
        pytest.param("", id="empty"),
        pytest.param("*.", id="star-dot"),
        pytest.param("api.*.com", id="star-in-middle"),
        pytest.param("api.example.*", id="star-at-end"),
        pytest.param("a*.example.com", id="star-inside-label"),
        pytest.param("*example.com", id="star-without-dot"),
        pytest.param("**.example.com", id="double-star"),
        pytest.param("*.*.example.com", id="two-wildcard-labels"),
    ],
)
def test_normalize_pattern_rejects(pattern: str) -> None:
    with pytest.raises(HostError):
        normalize_pattern(pattern)


@pytest.mark.parametrize(
    ("host", "pattern", "matches"),
    [
        pytest.param("api.stripe.com", "api.stripe.com", True, id="exact"),
        pytest.param("api.stripe.com.evil.com", "api.stripe.com", False, id="exact-is-not-prefix"),
        pytest.param("xapi.stripe.com", "api.stripe.com", False, id="exact-is-not-suffix"),
        pytest.param("a.example.com", "*.example.com", True, id="wildcard-subdomain"),
        pytest.param("a.b.example.com", "*.example.com", True, id="wildcard-deep-subdomain"),
        pytest.param("example.com", "*.example.com", False, id="wildcard-not-apex"),
        pytest.param("evilexample.com", "*.example.com", False, id="wildcard-not-suffix-string"),
        pytest.param("example.com.evil.com", "*.example.com", False, id="wildcard-not-prefix"),
        pytest.param(".example.com", "*.example.com", False, id="wildcard-empty-label"),
        pytest.param("::1", "::1", True, id="ipv6"),
    ],
)
def test_host_matches(host: str, pattern: str, matches: bool) -> None:
    assert host_matches(host, pattern) is matches


@pytest.mark.parametrize(
    ("raw_host", "raw_pattern"),
    [
        pytest.param("API.Stripe.com.", "api.stripe.com", id="case-dot"),
        pytest.param("xn--bcher-kva.example", "Bücher.example", id="idna-both-ways"),
        pytest.param("shop.bücher.example", "*.xn--bcher-kva.example", id="idna-wildcard"),
        pytest.param("[0::1]", "::1", id="ipv6-spellings"),
    ],
)
def test_normalised_sides_match(raw_host: str, raw_pattern: str) -> None:
    assert host_matches(normalize_host(raw_host), normalize_pattern(raw_pattern))


_LABEL_CHARS = "abcXYZ019-_äöüéñç"
_labels = st.text(alphabet=_LABEL_CHARS, min_size=1, max_size=12)
_hostnames = st.lists(_labels, min_size=1, max_size=4).map(".".join)
_noise = st.sampled_from(["", ".", " "])


@given(host=_hostnames, tail=_noise)
def test_normalize_host_is_idempotent(host: str, tail: str) -> None:
    try:
        once = normalize_host(host + tail)
    except HostError:
        assume(False)
        raise
    assert normalize_host(once) == once
    assert once == once.lower()
    assert once.isascii()
    assert host_matches(normalize_host(host.upper() + tail), once)


@given(ip=st.ip_addresses())
def test_normalize_ip_is_compressed_and_idempotent(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    expected = ip.compressed
    assert normalize_host(str(ip)) == expected
    assert normalize_host(ip.exploded.upper()) == expected
    if ip.version == 6:
        assert normalize_host(f"[{ip.exploded}]") == expected
    assert normalize_host(expected) == expected


@given(sub=_hostnames, apex=_hostnames)
def test_wildcard_matches_subdomains_only(sub: str, apex: str) -> None:
    try:
        pattern = normalize_pattern("*." + apex)
        host = normalize_host(sub + "." + apex)
        apex_n = normalize_host(apex)
    except HostError:
        assume(False)
        raise
    assert host_matches(host, pattern)
    assert not host_matches(apex_n, pattern)
    assert not host_matches("evil" + apex_n, pattern)
