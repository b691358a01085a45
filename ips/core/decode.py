"""Pure packet decoder: bytes in, `Packet` or `Malformed` out.

Runs once per packet, so it reads fields with precompiled `struct.Struct.unpack_from`, checks
lengths explicitly instead of catching exceptions, and returns shared `Malformed` instances
(they are immutable by convention) so a flood of garbage does not allocate.

Reason codes are "layer.problem" strings used as counter labels; they are part of the
interface, see `REASONS`.
"""

from __future__ import annotations

import struct

from ips.core.packet import (
    FRAG_FIRST,
    FRAG_LATER,
    FRAG_NONE,
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
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    PROTO_UDPLITE,
    Malformed,
    Packet,
)

__all__ = ["REASONS", "decode_frame", "decode_l3"]

# ver_ihl, tos, total length, id, flags+offset, ttl, proto, checksum(skipped), src, dst
_IPV4 = struct.Struct("!BBHHHBB2x4s4s")
# ver/tc/flow, payload length, next header, hop limit, src, dst
_IPV6 = struct.Struct("!IHBB16s16s")
_U16 = struct.Struct("!H")
_U16x2 = struct.Struct("!HH")
_TCP = struct.Struct("!HH8xBB")  # sport, dport, data offset byte, flags byte
_UDP = struct.Struct("!HHH")  # sport, dport, length
_ICMP_ECHO = struct.Struct("!BB2xH")  # type, code, checksum(skipped), identifier
_U32_LE = struct.Struct("<I")
_U32_BE = struct.Struct("!I")

_MAX_IPV6_EXT = 16  # real traffic uses 0-3; a long chain is an evasion or DoS attempt
_MAX_VLAN_TAGS = 8  # QinQ is 2 deep; anything much deeper is hostile

_ETH_IPV4 = 0x0800
_ETH_IPV6 = 0x86DD
_VLAN_TPIDS = frozenset((0x8100, 0x88A8, 0x9100))

_AF_INET = 2
_AF_INET6 = frozenset((24, 28, 30))  # NetBSD/OpenBSD, FreeBSD, macOS

# IPv6 extension headers using the generic (len + 1) * 8 length encoding.
_EXT_GENERIC = frozenset((0, 43, 60, 135))
_EXT_ALL = _EXT_GENERIC | {44, 51}
_EXT_HBH = 0
_EXT_FRAG = 44
_EXT_AH = 51
_NO_NEXT = 59
_ESP = 50


_reasons: list[str] = []


def _m(reason: str) -> Malformed:
    _reasons.append(reason)
    return Malformed(reason)


M_IP_TRUNCATED = _m("ip.truncated")
M_IP_BAD_VERSION = _m("ip.bad-version")
M_IPV4_TRUNCATED = _m("ipv4.truncated")
M_IPV4_BAD_IHL = _m("ipv4.bad-ihl")
M_IPV4_BAD_TOTAL_LENGTH = _m("ipv4.bad-total-length")
M_IPV4_BAD_OPTION = _m("ipv4.bad-option")
M_IPV4_TINY_FRAGMENT = _m("ipv4.tiny-fragment")
M_IPV4_TCP_FRAG_OFFSET_1 = _m("ipv4.tcp-frag-offset-1")
M_IPV6_TRUNCATED = _m("ipv6.truncated")
M_IPV6_JUMBO = _m("ipv6.jumbo-unsupported")
M_IPV6_EXT_TRUNCATED = _m("ipv6.ext-truncated")
M_IPV6_BAD_HBH = _m("ipv6.bad-hop-by-hop")
M_IPV6_TOO_MANY_EXT = _m("ipv6.too-many-ext-headers")
M_IPV6_TINY_FRAGMENT = _m("ipv6.tiny-fragment")
M_TCP_TRUNCATED = _m("tcp.truncated")
M_TCP_BAD_DOFF = _m("tcp.bad-data-offset")
M_UDP_TRUNCATED = _m("udp.truncated")
M_UDP_BAD_LENGTH = _m("udp.bad-length")
M_UDPLITE_TRUNCATED = _m("udplite.truncated")
M_SCTP_TRUNCATED = _m("sctp.truncated")
M_ICMP_TRUNCATED = _m("icmp.truncated")
M_ICMPV6_TRUNCATED = _m("icmpv6.truncated")
M_L2_TRUNCATED = _m("l2.truncated")
M_L2_TOO_MANY_VLANS = _m("l2.too-many-vlan-tags")
M_L2_UNSUPPORTED = _m("l2.unsupported-linktype")

REASONS: tuple[str, ...] = tuple(_reasons)
"""Every reason code this module can return (for counters and documentation)."""


def decode_l3(data: bytes, vlans: tuple[int, ...] = ()) -> Packet | Malformed:
    """Decode an IP datagram (IPv4 or IPv6, picked by the version nibble)."""
    if not data:
        return M_IP_TRUNCATED
    v = data[0] >> 4
    if v == 4:
        return decode_ipv4(data, vlans)
    if v == 6:
        return _decode_ipv6(data, vlans)
    return M_IP_BAD_VERSION


def decode_ipv4(data: bytes, vlans: tuple[int, ...] = ()) -> Packet | Malformed:
    """Decode an IPv4 datagram (the caller has seen version 4: decode_l3 without the hop)."""
    n = len(data)
    if n < 20:
        return M_IPV4_TRUNCATED
    vi, tos, total, _id, fo, ttl, proto, src, dst = _IPV4.unpack_from(data)
    hl = (vi & 0x0F) << 2
    if hl < 20:
        return M_IPV4_BAD_IHL
    if total < 20:
        return M_IPV4_BAD_TOTAL_LENGTH
    if total > n:
        return M_IPV4_TRUNCATED
    if hl > total:
        return M_IPV4_BAD_IHL
    if total < n:
        # Ethernet pads short frames (and may carry an FCS); the datagram ends at total length.
        data = data[:total]
    if hl > 20 and not _ipv4_options_ok(data, hl):
        return M_IPV4_BAD_OPTION
    frag = FRAG_NONE
    if fo & 0x3FFF:
        if fo & 0x1FFF:
            # RFC 1858: offset 1 can only serve to overwrite the TCP flags of the first
            # fragment; no legitimate sender produces it.
            if proto == PROTO_TCP and fo & 0x1FFF == 1:
                return M_IPV4_TCP_FRAG_OFFSET_1
            return Packet(
                data, 4, src, dst, proto, 0, 0, 0, -1, -1, ttl, tos, -1, total, FRAG_LATER, vlans
            )
        frag = FRAG_FIRST
    if proto == PROTO_TCP:
        # Hot path inlined: saves a call per packet for the commonest case.
        if total - hl < 20:
            return M_IPV4_TINY_FRAGMENT if frag else M_TCP_TRUNCATED
        sport, dport, doff, flags = _TCP.unpack_from(data, hl)
        doff = (doff >> 4) << 2
        if doff < 20:
            return M_TCP_BAD_DOFF
        if hl + doff > total:
            return M_IPV4_TINY_FRAGMENT if frag else M_TCP_BAD_DOFF
        return Packet(
            data,
            4,
            src,
            dst,
            proto,
            sport,
            dport,
            flags,
            -1,
            -1,
            ttl,
            tos,
            hl,
            hl + doff,
            frag,
            vlans,
        )
    if proto == PROTO_UDP and total - hl >= 8:
        # The second commonest case, inlined too (the checks are _decode_l4's).
        sport, dport, ulen = _UDP.unpack_from(data, hl)
        if ulen < 8 or (ulen > total - hl and not frag):
            return M_UDP_BAD_LENGTH
        return Packet(
            data, 4, src, dst, proto, sport, dport, 0, -1, -1, ttl, tos, hl, hl + 8, frag, vlans
        )
    return _decode_l4(data, total, hl, 4, src, dst, proto, ttl, tos, frag, vlans)


def _ipv4_options_ok(data: bytes, hl: int) -> bool:
    # Only reached when IHL > 5, which real traffic almost never has, so a Python loop is fine.
    i = 20
    while i < hl:
        kind = data[i]
        if kind == 0:  # end of option list: the rest is padding
            return True
        if kind == 1:  # no-op
            i += 1
            continue
        if i + 1 >= hl:
            return False
        olen = data[i + 1]
        if olen < 2 or i + olen > hl:
            return False
        i += olen
    return True


def _decode_ipv6(data: bytes, vlans: tuple[int, ...]) -> Packet | Malformed:
    n = len(data)
    if n < 40:
        return M_IPV6_TRUNCATED
    vtf, plen, nh, hlim, src, dst = _IPV6.unpack_from(data)
    if plen == 0 and nh == _EXT_HBH:
        return M_IPV6_JUMBO
    end = 40 + plen
    if end > n:
        return M_IPV6_TRUNCATED
    if end < n:
        data = data[:end]
    tc = (vtf >> 20) & 0xFF
    off = 40
    frag = FRAG_NONE
    count = 0
    while True:
        if nh in _EXT_ALL:
            count += 1
            if count > _MAX_IPV6_EXT:
                return M_IPV6_TOO_MANY_EXT
            if off + 8 > end:  # every extension header is at least 8 octets
                return M_IPV6_EXT_TRUNCATED
            if nh == _EXT_FRAG:
                fo = _U16.unpack_from(data, off + 2)[0]
                nh = data[off]
                off += 8
                if fo & 0xFFF8:
                    return Packet(
                        data, 6, src, dst, nh, 0, 0, 0, -1, -1, hlim, tc, -1, end, FRAG_LATER, vlans
                    )
                if fo & 1:
                    frag = FRAG_FIRST
                # else an atomic fragment (RFC 6946): a whole packet, keep walking
                continue
            if nh == _EXT_HBH and off != 40:
                # RFC 8200 4.3: hop-by-hop must come first; elsewhere it is an evasion trick.
                return M_IPV6_BAD_HBH
            if nh == _EXT_AH:
                hlen = (data[off + 1] + 2) << 2
            else:
                hlen = (data[off + 1] + 1) << 3
            if off + hlen > end:
                return M_IPV6_EXT_TRUNCATED
            nh = data[off]
            off += hlen
            continue
        break
    if nh == PROTO_TCP:
        if end - off < 20:
            return M_IPV6_TINY_FRAGMENT if frag else M_TCP_TRUNCATED
        sport, dport, doff, flags = _TCP.unpack_from(data, off)
        doff = (doff >> 4) << 2
        if doff < 20:
            return M_TCP_BAD_DOFF
        if off + doff > end:
            return M_IPV6_TINY_FRAGMENT if frag else M_TCP_BAD_DOFF
        return Packet(
            data,
            6,
            src,
            dst,
            nh,
            sport,
            dport,
            flags,
            -1,
            -1,
            hlim,
            tc,
            off,
            off + doff,
            frag,
            vlans,
        )
    if nh == _NO_NEXT:
        return Packet(data, 6, src, dst, nh, 0, 0, 0, -1, -1, hlim, tc, -1, end, frag, vlans)
    return _decode_l4(data, end, off, 6, src, dst, nh, hlim, tc, frag, vlans)


def _decode_l4(
    data: bytes,
    end: int,
    off: int,
    family: int,
    src: bytes,
    dst: bytes,
    proto: int,
    ttl: int,
    tos: int,
    frag: int,
    vlans: tuple[int, ...],
) -> Packet | Malformed:
    """Transport header at `off` (everything but TCP, which the IP decoders inline)."""
    avail = end - off
    if proto == PROTO_UDP:
        if avail < 8:
            return _tiny(family) if frag else M_UDP_TRUNCATED
        sport, dport, ulen = _UDP.unpack_from(data, off)
        # A first fragment holds only part of the datagram the UDP length describes.
        if ulen < 8 or (ulen > avail and not frag):
            return M_UDP_BAD_LENGTH
        return Packet(
            data,
            family,
            src,
            dst,
            proto,
            sport,
            dport,
            0,
            -1,
            -1,
            ttl,
            tos,
            off,
            off + 8,
            frag,
            vlans,
        )
    if proto in _ICMPS:
        if avail < 4:
            return _tiny(family) if frag else _icmp_truncated(proto)
        itype = data[off]
        code = data[off + 1]
        if proto == PROTO_ICMP:
            echo = itype == 8 or itype == 0
        else:
            echo = itype == 128 or itype == 129
        ident = 0
        if echo:
            if avail < 8:
                return _tiny(family) if frag else _icmp_truncated(proto)
            ident = _ICMP_ECHO.unpack_from(data, off)[2]
        # Every ICMP message has an 8-byte header (type, code, checksum, 4 type-specific).
        return Packet(
            data,
            family,
            src,
            dst,
            proto,
            ident,
            ident,
            0,
            itype,
            code,
            ttl,
            tos,
            off,
            off + 8 if avail >= 8 else end,
            frag,
            vlans,
        )
    if proto in _PORTS_ONLY:
        hlen = 12 if proto == PROTO_SCTP else 8
        if avail < hlen:
            if frag:
                return _tiny(family)
            return M_SCTP_TRUNCATED if proto == PROTO_SCTP else M_UDPLITE_TRUNCATED
        sport, dport = _U16x2.unpack_from(data, off)
        return Packet(
            data,
            family,
            src,
            dst,
            proto,
            sport,
            dport,
            0,
            -1,
            -1,
            ttl,
            tos,
            off,
            off + hlen,
            frag,
            vlans,
        )
    # Unknown to us (GRE, ESP, IPIP, ...): the header starts here; we don't parse it.
    return Packet(data, family, src, dst, proto, 0, 0, 0, -1, -1, ttl, tos, off, off, frag, vlans)


def _tiny(family: int) -> Malformed:
    return M_IPV4_TINY_FRAGMENT if family == 4 else M_IPV6_TINY_FRAGMENT


def _icmp_truncated(proto: int) -> Malformed:
    return M_ICMP_TRUNCATED if proto == PROTO_ICMP else M_ICMPV6_TRUNCATED


# --- link layer -------------------------------------------------------------------------------


def _by_ethertype(
    data: bytes, off: int, etype: int, vlans: tuple[int, ...] = ()
) -> Packet | Malformed | None:
    """Peel VLAN tags starting at `off` (whose ethertype is `etype`), then decode IP."""
    if etype in _VLAN_TPIDS:
        tags: list[int] = []
        n = len(data)
        while etype in _VLAN_TPIDS:
            if len(tags) >= _MAX_VLAN_TAGS:
                return M_L2_TOO_MANY_VLANS
            if off + 4 > n:
                return M_L2_TRUNCATED
            tci, etype = _U16x2.unpack_from(data, off)
            tags.append(tci & 0x0FFF)
            off += 4
        vlans = tuple(tags)
    if etype == _ETH_IPV4:
        return _l3_expect(data[off:], 4, vlans)
    if etype == _ETH_IPV6:
        return _l3_expect(data[off:], 6, vlans)
    return None  # ARP, LLDP, MPLS, PPPoE...: not an IP datagram we inspect


def _l3_expect(data: bytes, version: int, vlans: tuple[int, ...]) -> Packet | Malformed:
    # The link layer announced a version; a datagram claiming another one is what a kernel
    # drops (ip_rcv checks the version), so inspecting it under the other family would be wrong.
    if not data:
        return M_IP_TRUNCATED
    if data[0] >> 4 != version:
        return M_IP_BAD_VERSION
    if version == 4:
        return decode_ipv4(data, vlans)
    return _decode_ipv6(data, vlans)


def _by_af(data: bytes, af: int) -> Packet | Malformed | None:
    if af == _AF_INET:
        return _l3_expect(data[4:], 4, ())
    if af in _AF_INET6:
        return _l3_expect(data[4:], 6, ())
    return None


def decode_frame(data: bytes, linktype: int) -> Packet | Malformed | None:
    """Strip the link layer named by a pcap LINKTYPE_* value and decode the IP datagram.

    Returns None for frames that carry something other than IPv4/IPv6 (ARP, LLDP, ...).
    """
    linktype &= 0x0FFFFFFF  # high bits carry FCS info in some captures
    if linktype == LINKTYPE_ETHERNET:
        if len(data) < 14:
            return M_L2_TRUNCATED
        return _by_ethertype(data, 14, _U16.unpack_from(data, 12)[0])
    if linktype in _RAW_TYPES:
        return decode_l3(data)
    if linktype == LINKTYPE_LINUX_SLL:
        if len(data) < 16:
            return M_L2_TRUNCATED
        return _by_ethertype(data, 16, _U16.unpack_from(data, 14)[0])
    if linktype == LINKTYPE_LINUX_SLL2:
        if len(data) < 20:
            return M_L2_TRUNCATED
        return _by_ethertype(data, 20, _U16.unpack_from(data, 0)[0])
    if linktype == LINKTYPE_NULL:
        if len(data) < 4:
            return M_L2_TRUNCATED
        # Host byte order of the capturing machine: AF values are small, so a value with
        # high bits set was written in the other order.
        af = _U32_LE.unpack_from(data)[0]
        if af > 0xFFFF:
            af = _U32_BE.unpack_from(data)[0]
        return _by_af(data, af)
    if linktype == LINKTYPE_LOOP:
        if len(data) < 4:
            return M_L2_TRUNCATED
        return _by_af(data, _U32_BE.unpack_from(data)[0])
    if linktype == LINKTYPE_IPV4:
        return _l3_expect(data, 4, ())
    if linktype == LINKTYPE_IPV6:
        return _l3_expect(data, 6, ())
    return M_L2_UNSUPPORTED


_ICMPS = frozenset((PROTO_ICMP, PROTO_ICMPV6))
_PORTS_ONLY = frozenset((PROTO_SCTP, PROTO_UDPLITE))
_RAW_TYPES = frozenset((LINKTYPE_RAW, LINKTYPE_RAW_OPENBSD, LINKTYPE_RAW_BSD))
