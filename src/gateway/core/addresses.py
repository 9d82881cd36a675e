"""Whose requests count together in a per-address throttle window.

An IPv4 address is one subscriber at most. An IPv6 subscriber is handed a whole /64 (RFC 6177
and every ISP's practice), so keying a window on the full address lets anyone with one line
rotate through 2^64 fresh windows: a per-IP limit would then limit nothing. IPv6 callers
therefore count per /64."""

from __future__ import annotations

import ipaddress

IPV6_SUBSCRIBER_PREFIX = 64


def client_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a client text names, zone id dropped; an IPv4-mapped IPv6 address (a
    dual-stack listener's view of an IPv4 client) is its IPv4 address. None: not an address."""
    try:
        address = ipaddress.ip_address(ip.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def throttle_key(ip: str) -> str:
    """The key of the window `ip` counts in: an IPv4 address itself, or the IPv6 /64 it
    belongs to. Text that is no address (a proxy's opaque value) counts as itself."""
    address = client_address(ip)
    if address is None:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, IPV6_SUBSCRIBER_PREFIX), strict=False))
    return str(address)
