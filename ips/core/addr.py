"""Address helpers shared by the core and the policy compiler."""

from __future__ import annotations

import ipaddress


def format_addr(addr: bytes) -> str:
    """bytes (4 or 16 long) -> printable address."""
    n = len(addr)
    if n == 4:  # what ipaddress prints, 4x faster: every EVE record formats two addresses
        return f"{addr[0]}.{addr[1]}.{addr[2]}.{addr[3]}"
    if n == 16:
        return str(ipaddress.ip_address(addr))
    return addr.hex()


def parse_addr(text: str) -> bytes:
    """Printable IPv4/IPv6 address -> bytes. Raises ValueError."""
    return ipaddress.ip_address(text).packed
