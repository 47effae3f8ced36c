"""Private ranges and IP spellings (broker/egress/addresses.py)."""

from __future__ import annotations

import ipaddress

import pytest

from broker.egress.addresses import canonical, embedded_ipv4, parse_ip, private_kind


@pytest.mark.parametrize(
    ("host", "address"),
    [
        pytest.param("127.0.0.1", "127.0.0.1", id="dotted"),
        pytest.param("2130706433", "127.0.0.1", id="decimal"),
        pytest.param("0x7f.1", "127.0.0.1", id="hex-two-parts"),
        pytest.param("0x7f000001", "127.0.0.1", id="hex-one-part"),
        pytest.param("0177.0.0.1", "127.0.0.1", id="octal-first"),
        pytest.param("127.1", "127.0.0.1", id="two-parts"),
        pytest.param("127.0.1", "127.0.0.1", id="three-parts"),
        pytest.param("0XA9.0xfe.0251.254", "169.254.169.254", id="mixed-radix-metadata"),
        pytest.param("127.0.0.1.", "127.0.0.1", id="trailing-dot"),
        pytest.param("[::1]", "::1", id="v6-brackets"),
        pytest.param("0:0:0:0:0:0:0:1", "::1", id="v6-expanded"),
        pytest.param("::ffff:127.0.0.1", "::ffff:7f00:1", id="v4-mapped"),
        pytest.param("fe80::1%eth0", "fe80::1", id="v6-zone"),
    ],
)
def test_parse_ip_reads_every_spelling(host: str, address: str) -> None:
    assert parse_ip(host) == ipaddress.ip_address(address)


@pytest.mark.parametrize(
    "host",
    ["example.com", "1password.com", "0x.example", "127.0.0.1.example", "", "a" * 300, "١٢٧.0.0.1"],
    ids=["name", "digit-first-name", "hex-prefix-name", "ip-like-name", "empty", "long", "arabic"],
)
def test_parse_ip_leaves_names_alone(host: str) -> None:
    assert parse_ip(host) is None


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        pytest.param("127.0.0.1", "loopback", id="loopback"),
        pytest.param("127.255.255.254", "loopback", id="loopback-top"),
        pytest.param("::1", "loopback", id="v6-loopback"),
        pytest.param("10.0.0.1", "private (RFC 1918)", id="rfc1918-10"),
        pytest.param("172.16.0.1", "private (RFC 1918)", id="rfc1918-172.16"),
        pytest.param("172.31.255.255", "private (RFC 1918)", id="rfc1918-172.31"),
        pytest.param("192.168.0.1", "private (RFC 1918)", id="rfc1918-192.168"),
        pytest.param("100.64.0.1", "shared (CGNAT)", id="cgnat-low"),
        pytest.param("100.127.255.254", "shared (CGNAT)", id="cgnat-high"),
        pytest.param("169.254.169.254", "link-local", id="metadata"),
        pytest.param("fe80::1", "link-local", id="v6-link-local"),
        pytest.param("fd00:ec2::254", "unique local (ULA)", id="ula-aws-metadata"),
        pytest.param("fc00::1", "unique local (ULA)", id="ula-fc"),
        pytest.param("0.0.0.0", "unspecified", id="unspecified"),
        pytest.param("0.1.2.3", "unspecified", id="this-network"),
        pytest.param("::", "unspecified", id="v6-unspecified"),
        pytest.param("224.0.0.1", "multicast", id="multicast"),
        pytest.param("239.255.255.250", "multicast", id="multicast-ssdp"),
        pytest.param("ff02::1", "multicast", id="v6-multicast"),
        pytest.param("255.255.255.255", "reserved", id="broadcast"),
        pytest.param("::ffff:127.0.0.1", "loopback", id="v4-mapped-loopback"),
        pytest.param("::ffff:169.254.169.254", "link-local", id="v4-mapped-metadata"),
        pytest.param("::127.0.0.1", "loopback", id="v4-compatible"),
        pytest.param("64:ff9b::a9fe:a9fe", "link-local", id="nat64-metadata"),
        pytest.param("2002:0a00:0001::1", "private (RFC 1918)", id="6to4-rfc1918"),
        pytest.param("192.0.2.1", "not globally routable", id="documentation"),
    ],
)
def test_private_kind(address: str, kind: str) -> None:
    assert private_kind(ipaddress.ip_address(address)) == kind


@pytest.mark.parametrize(
    "address",
    ["1.1.1.1", "8.8.8.8", "100.63.255.255", "100.128.0.0", "172.32.0.1", "2606:4700::1111"],
)
def test_public_addresses_pass(address: str) -> None:
    assert private_kind(ipaddress.ip_address(address)) is None


def test_embedded_and_canonical() -> None:
    mapped = ipaddress.ip_address("::ffff:10.0.0.1")
    assert embedded_ipv4(mapped) == ipaddress.ip_address("10.0.0.1")
    assert embedded_ipv4(ipaddress.ip_address("10.0.0.1")) is None
    assert embedded_ipv4(ipaddress.ip_address("2606:4700::1111")) is None
    assert canonical(mapped) == "10.0.0.1"
    assert canonical(ipaddress.ip_address("0:0::1")) == "::1"
