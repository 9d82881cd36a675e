"""P2's rough location: the country an address was allocated to, looked up offline.

The Regional Internet Registries' allocation data ships inside the `iptocc` wheel, so a lookup
takes under a microsecond on the login path and needs no file, licence key or network call: it
works the same on a fresh machine and in production, and upgrading the package refreshes the
data. A country is as rough as the rule asks, and registry data is as far as one can go without
a commercial database (it agrees with them for about 95% of IPv4). The answer is the ISO 3166-1
alpha-2 code, so the app names the country in the user's own language."""

from __future__ import annotations

from iptocc import country_code

from gateway.core.addresses import client_address


def rough_location(ip: str | None) -> str | None:
    """None for what has no country: private, loopback, link-local, shared (carrier NAT) and
    unallocated addresses, and anything that is not an address."""
    address = client_address(ip) if ip else None
    if address is None or not address.is_global:
        return None
    return country_code(str(address))
