"""A packet's addresses rewritten inside its frame, checksums kept right (pure).

The checksums are updated incrementally (RFC 1624): the difference between the old and the new
addresses is added to each checksum that covers them -- the IPv4 header's, and the TCP, UDP,
UDP-Lite and ICMPv6 checksums over the pseudo-header. So a checksum right before is right
after, truncated captures (snaplen) included, where a full recomputation could not see the
payload; and a checksum that was wrong on purpose stays wrong by the same amount (a capture of
bad checksums keeps its meaning). ICMPv4 and SCTP checksums do not cover the addresses. The
link layer (MAC addresses, VLAN tags) is left as it was.

An ICMP or ICMPv6 error quotes the datagram it answers; the quoted header's addresses are
rewritten too when they are the flow's own two (the usual case: a port unreachable quotes the
peer's datagram), with the quoted IPv4 header's checksum and a quoted UDP or TCP checksum
updated when they were captured, and the ICMP checksum with them. A quoted address of a third
host (a router's "time exceeded" about a datagram to elsewhere) stays as it was.
"""

from __future__ import annotations

from ips.core.craft import csum_adjust
from ips.core.decode import decode_frame
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
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    PROTO_UDPLITE,
    Malformed,
    Packet,
)

__all__ = ["l3_offset", "open_frame", "rewrite_addresses"]

# A frame cut by a snaplen is padded to its length on the wire before decoding (the decoder
# refuses a datagram shorter than its IP header says); a longer one than this is not a packet.
_MAX_PADDED = 65535 + 64

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
# ICMP types that quote the datagram they answer (unreachable, source quench, redirect, time
# exceeded, parameter problem; ICMPv6: unreachable, too big, time exceeded, parameter problem).
_ICMP_ERRORS = {PROTO_ICMP: frozenset((3, 4, 5, 11, 12)), PROTO_ICMPV6: frozenset((1, 2, 3, 4))}


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


def open_frame(
    frame: bytes, linktype: int, orig_len: int
) -> tuple[bytes, Packet, int] | Malformed | None:
    """A captured frame decoded for a rewrite: (frame, packet, IP offset), or the decoder's
    Malformed, or None for a frame without IP. A frame cut short by the capture's snaplen is
    returned padded with zeros to its length on the wire, so that it decodes; the caller cuts
    the rewritten frame back to `len(frame)` (the checksum updates never read the payload).
    An IP datagram the rewrite cannot reach inside its frame (in a tunnel) is
    `Malformed("mix.unsupported-encapsulation")`."""
    padded = frame
    if len(frame) < orig_len <= _MAX_PADDED:
        padded = frame + bytes(orig_len - len(frame))
    packet = decode_frame(padded, linktype)
    if packet is None or isinstance(packet, Malformed):
        return packet
    offset = l3_offset(padded, linktype, packet)
    if offset < 0:
        return UNSUPPORTED
    return padded, packet, offset


UNSUPPORTED = Malformed("mix.unsupported-encapsulation")


def _adjust(checksum: int, old: bytes, new: bytes) -> int:
    """RFC 1624 eqn. 3 (the core's `csum_adjust`) for `old` bytes replaced by `new` (of one
    even length, at an even offset): a one's-complement sum of 16-bit words is the number they
    spell modulo 0xFFFF."""
    return csum_adjust(
        checksum, int.from_bytes(old, "big") % 0xFFFF, int.from_bytes(new, "big") % 0xFFFF
    )


def _put_checksum(out: bytearray, at: int, old: bytes, new: bytes) -> None:
    value = _adjust(int.from_bytes(out[at : at + 2], "big"), old, new)
    out[at : at + 2] = value.to_bytes(2, "big")


def _rewrite_quoted(
    out: bytearray, icmp_at: int, end: int, family: int, mapping: dict[bytes, bytes]
) -> None:
    """The datagram an ICMP error quotes, its addresses mapped (see the module's note)."""
    inner = icmp_at + 8
    if family == 4:
        if inner + 20 > end or out[inner] >> 4 != 4:
            return
        ihl = (out[inner] & 0x0F) * 4
        addr_at, width, proto = inner + 12, 4, out[inner + 9]
    else:
        if inner + 40 > end or out[inner] >> 4 != 6:
            return
        ihl = 40
        addr_at, width, proto = inner + 8, 16, out[inner + 6]
    old = bytes(out[addr_at : addr_at + 2 * width])
    new = mapping.get(old[:width], old[:width]) + mapping.get(old[width:], old[width:])
    if new == old:
        return
    # The region the ICMP checksum sees change: from the quoted header to the quoted
    # transport checksum, an even number of bytes from an even offset.
    before = bytes(out[inner:end])
    out[addr_at : addr_at + 2 * width] = new
    if family == 4:
        _put_checksum(out, inner + 10, old, new)
    l4_check = _L4_CHECKSUM_AT.get(proto)
    if l4_check is not None and proto != PROTO_ICMPV6:
        at = inner + ihl + l4_check
        if at + 2 <= end and not (proto == PROTO_UDP and out[at : at + 2] == b"\0\0"):
            _put_checksum(out, at, old, new)
    after = bytes(out[inner:end])
    if len(before) % 2:
        before, after = before + b"\0", after + b"\0"
    _put_checksum(out, icmp_at + 2, before, after)


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
    if (
        packet.icmp_type in _ICMP_ERRORS.get(packet.proto, ())
        and packet.l4_offset >= 0
        and packet.frag != FRAG_LATER
    ):
        _rewrite_quoted(
            out,
            offset + packet.l4_offset,
            offset + packet.length,
            packet.family,
            {packet.src: new_src, packet.dst: new_dst},
        )
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
