"""Packet builders shared by the tests: raw L3 bytes with valid checksums, IPv4 or IPv6 by
the addresses (ips.core.build.build_packet underneath). One home, so a story reads
`tcp(A, B, 1000, 80, flags="S")` in every test file."""

from __future__ import annotations

import ipaddress

from ips.core.build import build_packet
from ips.core.packet import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, TCP_SYN

# tcpdump's letters for the TCP flags, in header bit order.
FLAG_LETTERS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20, "E": 0x40,
                "C": 0x80}  # fmt: skip


def ip(text: str) -> bytes:
    """An address as its packed bytes (4 or 16)."""
    return ipaddress.ip_address(text).packed


def tcp_flags(flags: int | str) -> int:
    """Flags as a number: an int as it is, or letters such as "SA" (SYN+ACK)."""
    if isinstance(flags, int):
        return flags
    return sum(FLAG_LETTERS[letter] for letter in flags.upper())


def tcp(
    src: str,
    dst: str,
    sport: int = 40000,
    dport: int = 80,
    flags: int | str = TCP_SYN,
    **kw: object,
) -> bytes:
    return build_packet(PROTO_TCP, src, dst, sport, dport, flags=tcp_flags(flags), **kw)  # type: ignore[arg-type]


def udp(
    src: str, dst: str, sport: int = 40000, dport: int = 53, payload: bytes = b"x", **kw: object
) -> bytes:
    return build_packet(PROTO_UDP, src, dst, sport, dport, payload=payload, **kw)  # type: ignore[arg-type]


def ping(src: str, dst: str, ident: int = 1, reply: bool = False) -> bytes:
    """An ICMP (or ICMPv6) echo request, or its reply."""
    proto = PROTO_ICMP if ":" not in src else PROTO_ICMPV6
    itype = (0 if reply else 8) if proto == PROTO_ICMP else (129 if reply else 128)
    return build_packet(proto, src, dst, icmp_type=itype, icmp_id=ident)
