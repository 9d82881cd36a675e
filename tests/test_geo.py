"""P2: the rough location of a login request, from the address alone."""

from __future__ import annotations

import pytest

from gateway.core.geo import rough_location


@pytest.mark.parametrize(
    ("ip", "country"),
    [
        ("8.8.8.8", "US"),
        ("133.11.0.1", "JP"),
        ("81.2.69.160", "GB"),
        ("2001:4860:4860::8888", "US"),
        ("::ffff:133.11.0.1", "JP"),
    ],
)
def test_p2_a_public_address_gives_the_country_it_is_allocated_to(ip: str, country: str) -> None:
    assert rough_location(ip) == country


@pytest.mark.parametrize(
    "ip",
    [
        None,
        "",
        "127.0.0.1",
        "10.0.0.1",
        "192.168.1.20",
        "100.64.0.1",  # carrier-grade NAT
        "::1",
        "fe80::1%eth0",
        "::ffff:10.0.0.1",
        "203.0.113.5",  # documentation range
        "not an address",
        "1" * 10_000,
    ],
)
def test_p2_what_has_no_country_has_no_location(ip: str | None) -> None:
    assert rough_location(ip) is None
