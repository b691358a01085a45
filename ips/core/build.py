"""Build packets from a few fields (for `ipsctl explain`, the demo and tests). Not used on
the packet path."""

from __future__ import annotations

import struct

from ips.core.addr import parse_addr
from ips.core.craft import checksum, l4_checksum
from ips.core.packet import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
)


class PacketSpecError(ValueError):
    """A packet description that cannot be built."""


def build_packet(
    proto: int,
    src: str | bytes,
    dst: str | bytes,
    sport: int = 0,
    dport: int = 0,
    *,
    flags: int = 0,
    seq: int = 1000,
    ack: int = 0,
    icmp_type: int | None = None,
    icmp_code: int = 0,
    icmp_id: int = 1,
    payload: bytes = b"",
    ttl: int = 64,
    tos: int = 0,
) -> bytes:
    """Raw L3 bytes (IPv4 or IPv6, by the addresses) with valid checksums."""
    s = parse_addr(src) if isinstance(src, str) else src
    d = parse_addr(dst) if isinstance(dst, str) else dst
    if len(s) != len(d):
        raise PacketSpecError("source and destination are of different families")
    if proto == PROTO_TCP:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
    elif proto == PROTO_UDP:
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    elif proto in (PROTO_ICMP, PROTO_ICMPV6):
        if icmp_type is None:
            icmp_type = 8 if proto == PROTO_ICMP else 128
        l4 = struct.pack("!BBHHH", icmp_type, icmp_code, 0, icmp_id, 1)
    else:
        l4 = b""
    body = bytearray(l4 + payload)
    if proto in (PROTO_TCP, PROTO_UDP, PROTO_ICMPV6):
        csum = l4_checksum(s, d, proto, body)
        if proto == PROTO_UDP and csum == 0:
            csum = 0xFFFF
        at = {PROTO_TCP: 16, PROTO_UDP: 6, PROTO_ICMPV6: 2}[proto]
        body[at : at + 2] = csum.to_bytes(2, "big")
    elif proto == PROTO_ICMP:
        body[2:4] = checksum(body).to_bytes(2, "big")
    if len(s) == 4:
        header = bytearray(
            struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(body), 1, 0, ttl, proto, 0, s, d)
        )
        header[10:12] = checksum(header).to_bytes(2, "big")
    else:
        header = bytearray(
            struct.pack("!IHBB16s16s", (6 << 28) | (tos << 20), len(body), proto, ttl, s, d)
        )
    return bytes(header + body)
