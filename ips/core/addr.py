"""Address helpers shared by the core and the policy compiler."""

from __future__ import annotations

import ipaddress


def format_addr(addr: bytes) -> str:
    """bytes (4 or 16 long) -> printable address."""
    if len(addr) in (4, 16):
        return str(ipaddress.ip_address(addr))
    return addr.hex()


def parse_addr(text: str) -> bytes:
    """Printable IPv4/IPv6 address -> bytes. Raises ValueError."""
    return ipaddress.ip_address(text).packed
