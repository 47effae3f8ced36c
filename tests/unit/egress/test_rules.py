"""Allowlist entries and the per-tenant index (broker/egress/rules.py)."""

from __future__ import annotations

import ipaddress

import pytest

from broker.egress.rules import EgressRules, EntryError, host_key, parse_entry, parse_network


@pytest.mark.parametrize(
    ("entry", "parsed"),
    [
        pytest.param("api.openai.com", ("api.openai.com", 443), id="name-default-443"),
        pytest.param("files.example.com:8443", ("files.example.com", 8443), id="name-port"),
        pytest.param("API.OpenAI.com.", ("api.openai.com", 443), id="case-trailing-dot"),
        pytest.param("*.githubusercontent.com", ("*.githubusercontent.com", 443), id="wildcard"),
        pytest.param("*.Example.COM:80", ("*.example.com", 80), id="wildcard-port"),
        pytest.param("bücher.example", ("xn--bcher-kva.example", 443), id="idna"),
        pytest.param("10.0.0.5", ("10.0.0.5", 443), id="ipv4"),
        pytest.param("10.0.0.5:8080", ("10.0.0.5", 8080), id="ipv4-port"),
        pytest.param("2130706433:80", ("127.0.0.1", 80), id="odd-ipv4-canonical"),
        pytest.param("[fd00::1]:8443", ("fd00::1", 8443), id="ipv6-port"),
        pytest.param("[fd00::1]", ("fd00::1", 443), id="ipv6-brackets"),
        pytest.param("fd00::1", ("fd00::1", 443), id="ipv6-bare"),
    ],
)
def test_parse_entry(entry: str, parsed: tuple[str, int]) -> None:
    assert parse_entry(entry) == parsed


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        pytest.param("*", "'*' alone", id="star"),
        pytest.param("*:443", "'*' alone", id="star-port"),
        pytest.param("", "empty", id="empty"),
        pytest.param("a.*.com", "leading", id="inner-wildcard"),
        pytest.param("api.example.com:", "empty port", id="empty-port"),
        pytest.param("api.example.com:0", "1-65535", id="port-0"),
        pytest.param("api.example.com:70000", "1-65535", id="port-big"),
        pytest.param("api.example.com:https", "1-65535", id="port-name"),
        pytest.param("[fd00::1", "[addr]", id="unclosed-bracket"),
        pytest.param("[fd00::1]x", "[addr]", id="junk-after-bracket"),
        pytest.param("exa mple.com", "letters", id="space"),
        pytest.param("straße.de", "xn--", id="idna-deviation"),
    ],
)
def test_parse_entry_errors(entry: str, fragment: str) -> None:
    with pytest.raises(EntryError, match=None) as info:
        parse_entry(entry)
    assert fragment in str(info.value)


def test_parse_network() -> None:
    assert parse_network("10.0.0.0/8") == ipaddress.ip_network("10.0.0.0/8")
    assert parse_network("10.1.2.3") == ipaddress.ip_network("10.1.2.3/32")
    assert parse_network("fd00::/8") == ipaddress.ip_network("fd00::/8")
    for bad, fragment in [("10.0.0.1/8", "host bits"), ("0.0.0.0/0", "/0"), ("nope", "CIDR")]:
        with pytest.raises(EntryError) as info:
            parse_network(bad)
        assert fragment in str(info.value)


RULES = EgressRules.build(
    "enforce",
    [
        parse_entry(e)
        for e in ["api.openai.com", "*.example.com", "f.example.org:8443", "10.0.0.5", "[fd00::1]"]
    ],
    [parse_network("192.168.0.0/16")],
)


@pytest.mark.parametrize(
    ("host", "port", "ok"),
    [
        pytest.param("api.openai.com", 443, True, id="exact"),
        pytest.param("api.openai.com", 80, False, id="exact-other-port"),
        pytest.param("x.api.openai.com", 443, False, id="exact-is-not-a-suffix"),
        pytest.param("a.example.com", 443, True, id="wildcard"),
        pytest.param("a.b.example.com", 443, True, id="wildcard-deep"),
        pytest.param("example.com", 443, False, id="wildcard-not-apex"),
        pytest.param("badexample.com", 443, False, id="wildcard-label-boundary"),
        pytest.param("a.example.com", 8443, False, id="wildcard-other-port"),
        pytest.param("f.example.org", 8443, True, id="port-entry"),
        pytest.param("f.example.org", 443, False, id="port-entry-not-443"),
        pytest.param("10.0.0.5", 443, True, id="ip"),
        pytest.param("fd00::1", 443, True, id="ipv6"),
        pytest.param("evil.com", 443, False, id="unlisted"),
    ],
)
def test_allows(host: str, port: int, ok: bool) -> None:
    assert RULES.allows(host_key(host), port) is ok


def test_host_key_canonical_ip_and_name() -> None:
    assert host_key("0x7f.1") == "127.0.0.1"
    assert host_key("[::ffff:10.0.0.5]") == "10.0.0.5"
    assert host_key("API.OpenAI.com.") == "api.openai.com"
    assert RULES.allows(host_key("[::ffff:10.0.0.5]"), 443)


def test_names_and_private_ok() -> None:
    assert RULES.names("api.openai.com", 443) and RULES.names("10.0.0.5", 443)
    assert not RULES.names("a.example.com", 443)  # a wildcard names no host literally
    ip = ipaddress.ip_address
    assert RULES.private_ok(ip("10.0.0.5"), 443)  # the address is listed
    assert RULES.private_ok(ip("::ffff:10.0.0.5"), 443)
    assert RULES.private_ok(ip("192.168.4.4"), 8081)  # in egress.private: any port
    assert RULES.private_ok(ip("::ffff:192.168.4.4"), 443)  # mapped, inner address in the range
    assert not RULES.private_ok(ip("10.0.0.6"), 443)
    assert not RULES.private_ok(ip("127.0.0.1"), 443)


def test_naming_a_private_host_opens_only_its_ports() -> None:
    """A host named at one port is not named at another: a secret for a
    local service must not open the broker's own admin API on that host."""
    ip = ipaddress.ip_address
    assert RULES.names("f.example.org", 8443) and not RULES.names("f.example.org", 443)
    assert not RULES.names("10.0.0.5", 8081)
    assert not RULES.private_ok(ip("10.0.0.5"), 8081)


def test_no_egress_key_means_no_allowlist() -> None:
    rules = EgressRules.build(None, [("api.stripe.com", 443)])
    assert rules.mode is None and rules.names("api.stripe.com", 443)
