"""A packet's addresses rewritten inside its frame, checksums kept right (pure).

The checksums are updated incrementally (RFC 1624): the difference between the old and the new
addresses is added to each checksum that covers them -- the IPv4 header's, and the TCP, UDP,
UDP-Lite and ICMPv6 checksums over the pseudo-header. So a checksum right before is right
after, truncated captures (snaplen) included, where a full recomputation could not see the
payload; and a checksum that was wrong on purpose stays wrong by the same amount (a capture of
bad checksums keeps its meaning). ICMPv4 and SCTP checksums do not cover the addresses. The
link layer (MAC addresses, VLAN tags) is left as it was.
"""

from __future__ import annotations

from ips.core.packet import (
    FRAG_LATER,
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    LINKTYPE_RAW_BSD,
    LINKTYPE_RAW_OPENBSD,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    PROTO_UDPLITE,
    Packet,
)

__all__ = ["l3_offset", "rewrite_addresses"]

_FIXED_OFFSETS = {
    LINKTYPE_RAW: 0,
    LINKTYPE_RAW_BSD: 0,
    LINKTYPE_RAW_OPENBSD: 0,
    LINKTYPE_IPV4: 0,
    LINKTYPE_IPV6: 0,
    LINKTYPE_NULL: 4,
    LINKTYPE_LOOP: 4,
    LINKTYPE_LINUX_SLL: 16,
    LINKTYPE_LINUX_SLL2: 20,
}
# Where each transport's checksum sits in its header.
_L4_CHECKSUM_AT = {PROTO_TCP: 16, PROTO_UDP: 6, PROTO_UDPLITE: 6, PROTO_ICMPV6: 2}


def l3_offset(frame: bytes, linktype: int, packet: Packet) -> int:
    """Where the decoded datagram starts in its frame, or -1 when it is not there as such
    (a datagram the decoder found inside something else)."""
    linktype &= 0x0FFFFFFF
    if linktype == LINKTYPE_ETHERNET:
        offset = 14 + 4 * len(packet.vlans)
    else:
        offset = _FIXED_OFFSETS.get(linktype, -1)
    if offset < 0 or frame[offset : offset + packet.length] != packet.data:
        return -1
    return offset


def _adjust(checksum: int, old: bytes, new: bytes) -> int:
    """RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), over all 16-bit words of old and new.

    A one's-complement sum of 16-bit words is the number they spell modulo 0xFFFF, so whole
    addresses are summed as integers (an even number of bytes each).
    """
    total = (
        (~checksum & 0xFFFF) + int.from_bytes(new, "big") - int.from_bytes(old, "big")
    ) % 0xFFFF
    # The sum over a real header is never zero; 0 modulo 0xFFFF is the one's-complement 0xFFFF.
    return ~(total or 0xFFFF) & 0xFFFF


def rewrite_addresses(
    frame: bytes, offset: int, packet: Packet, new_src: bytes, new_dst: bytes
) -> bytes:
    """The frame with the datagram at `offset` (decoded as `packet`) sent from `new_src` to
    `new_dst`, checksums updated. The addresses must be of the packet's family."""
    if len(new_src) != len(packet.src) or len(new_dst) != len(packet.dst):
        raise ValueError("new addresses of another family than the packet's")
    out = bytearray(frame)
    old = packet.src + packet.dst
    new = new_src + new_dst
    if old == new:
        return frame
    if packet.family == 4:
        out[offset + 12 : offset + 20] = new
        at = offset + 10
        out[at : at + 2] = _adjust(int.from_bytes(out[at : at + 2], "big"), old, new).to_bytes(
            2, "big"
        )
    else:
        out[offset + 8 : offset + 40] = new
    at_in_l4 = _L4_CHECKSUM_AT.get(packet.proto)
    if at_in_l4 is not None and packet.l4_offset >= 0 and packet.frag != FRAG_LATER:
        at = offset + packet.l4_offset + at_in_l4
        if at + 2 <= offset + packet.length:
            value = int.from_bytes(out[at : at + 2], "big")
            if packet.proto == PROTO_UDP and value == 0:
                # No UDP checksum (IPv4 allows it): nothing to keep right.
                return bytes(out)
            value = _adjust(value, old, new)
            if packet.proto == PROTO_UDP and value == 0:
                value = 0xFFFF  # 0 would mean "no checksum"; its one's-complement twin
            out[at : at + 2] = value.to_bytes(2, "big")
    return bytes(out)
