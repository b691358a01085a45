"""Address helpers shared by the core and the policy compiler."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable


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


# ---- what `ipsctl blocks add` may put in the block sets ----------------------------------------

MAX_BLOCK_TTL = 365 * 86400  # seconds


def block_target(text: str, broadcasts: Iterable[str] = ()) -> str:
    """The address `blocks add TEXT` puts in a block set, written as that set's family
    writes it, or ValueError saying why TEXT cannot be a packet's source. An IPv4-mapped IPv6
    address (::ffff:a.b.c.d) is the IPv4 address: that is how its packets arrive. Refused: a
    zone (%eth0: the sets hold addresses without one), the unspecified, multicast, loopback and
    broadcast addresses, and `broadcasts` (the subnet broadcasts of this host's networks)."""
    text = text.strip()
    if "%" in text:
        bare, zone = text.split("%", 1)
        raise ValueError(
            f"{text}: an address with a zone (%{zone}) cannot be blocked: the "
            f"kernel's sets hold addresses without zones; block {bare} (on "
            "every interface) instead"
        )
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"not an IP address: {text!r}") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    why = _never_a_source(ip, {str(ipaddress.ip_address(b)) for b in broadcasts})
    if why:
        raise ValueError(f"{text}: {why}, never a packet's source; nothing to block")
    return str(ip)


def _never_a_source(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, broadcasts: set[str]
) -> str | None:
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_loopback:
        return "a loopback address (its packets never leave this host)"
    if ip == ipaddress.IPv4Address("255.255.255.255"):
        return "the broadcast address"
    if str(ip) in broadcasts:
        return "the broadcast address of one of this host's networks"
    return None


def block_ttl(seconds: float | None) -> int | None:
    """A block's time in whole seconds (the kernel's unit), rounded up; None stays None (the
    table's timeout). ValueError under 1 s or over MAX_BLOCK_TTL."""
    if seconds is None:
        return None
    if not seconds >= 1:  # NaN too
        raise ValueError(
            f"{seconds:g}s is less than 1 s: the kernel counts a block's time in whole seconds"
        )
    if seconds > MAX_BLOCK_TTL:
        raise ValueError(f"{seconds:g}s is more than 365 days")
    return math.ceil(seconds)


def parse_mac(text: str) -> bytes | None:
    """A MAC address written as six hex pairs separated by ':' or '-' (either case), as
    bytes; None when `text` is not one (then it may be an IP address)."""
    parts = text.strip().replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 and set(p) <= _HEX for p in parts):
        return None
    return bytes(int(p, 16) for p in parts)


_HEX = frozenset("0123456789abcdefABCDEF")
