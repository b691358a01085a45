"""Community ID v1 flow hashes (https://github.com/corelight/community-id-spec).

The hash is SHA-1 over: the 16-bit seed, the source and destination addresses, the IP
protocol number, one zero byte of padding and, for protocols with ports, the two 16-bit ports,
all in network byte order, with the endpoints ordered so both directions of a flow give the
same value (the lower address first; on equal addresses the lower port first). The result is
"1:" and the base64 of the digest.

ICMP and ICMPv6 have no ports: the type stands for the source port and the code for the
destination port, except that a request and its reply (echo, timestamp, router and neighbour
solicitation...) are mapped onto each other (the destination "port" becomes the counterpart
type) so they hash alike; messages without a counterpart are one-way and keep their order.
"""

from __future__ import annotations

import base64
import hashlib
import struct

from ips.core.packet import (
    FRAG_LATER,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    Packet,
)

__all__ = [
    "community_id",
    "community_id_packet",
    "community_id_portless",
    "icmp_port_equivalents",
]

_SEED_PROTO = struct.Struct("!H")
_PROTO_PAD = struct.Struct("!BB")
_PORTS = struct.Struct("!HH")

# Protocols the specification hashes with ports (UDP-Lite is not among them).
_PORT_PROTOS = frozenset((PROTO_TCP, PROTO_UDP, PROTO_SCTP))

_ICMP4_COUNTERPART = {
    8: 0, 0: 8,  # echo request / reply
    13: 14, 14: 13,  # timestamp
    15: 16, 16: 15,  # information
    10: 9, 9: 10,  # router solicitation / advertisement
    17: 18, 18: 17,  # address mask
}  # fmt: skip
_ICMP6_COUNTERPART = {
    128: 129, 129: 128,  # echo request / reply
    133: 134, 134: 133,  # router solicitation / advertisement
    135: 136, 136: 135,  # neighbour solicitation / advertisement
    130: 131, 131: 130,  # multicast listener query / report
    139: 140, 140: 139,  # node information query / response
    144: 145, 145: 144,  # home agent address discovery
}  # fmt: skip


def icmp_port_equivalents(icmp_type: int, icmp_code: int, v6: bool) -> tuple[int, int, bool]:
    """(source "port", destination "port", one_way) for an ICMP or ICMPv6 message."""
    table = _ICMP6_COUNTERPART if v6 else _ICMP4_COUNTERPART
    other = table.get(icmp_type)
    if other is None:
        return icmp_type, icmp_code, True
    return icmp_type, other, False


def community_id(
    proto: int,
    src: bytes,
    dst: bytes,
    sport: int = 0,
    dport: int = 0,
    *,
    seed: int = 0,
    one_way: bool = False,
) -> str:
    """The Community ID of a flow. For ICMP/ICMPv6 pass the type as `sport` and the code as
    `dport`: the mapping to counterpart types is applied here."""
    has_ports = proto in _PORT_PROTOS
    if proto in (PROTO_ICMP, PROTO_ICMPV6):
        sport, dport, one_way = icmp_port_equivalents(sport, dport, proto == PROTO_ICMPV6)
        has_ports = True
    if not one_way and (src > dst or (src == dst and sport > dport)):
        src, dst, sport, dport = dst, src, dport, sport
    h = hashlib.sha1(_SEED_PROTO.pack(seed & 0xFFFF))
    h.update(src)
    h.update(dst)
    h.update(_PROTO_PAD.pack(proto & 0xFF, 0))
    if has_ports:
        h.update(_PORTS.pack(sport & 0xFFFF, dport & 0xFFFF))
    return "1:" + base64.b64encode(h.digest()).decode("ascii")


def community_id_packet(pkt: Packet, seed: int = 0) -> str:
    """The Community ID of a decoded packet's flow (ports, or ICMP type and code; a later
    fragment, whose transport header is elsewhere, hashes without ports as the spec does)."""
    proto = pkt.proto
    if pkt.frag == FRAG_LATER:
        return community_id_portless(proto, pkt.src, pkt.dst, seed)
    if proto in (PROTO_ICMP, PROTO_ICMPV6):
        if pkt.icmp_type < 0:
            return community_id_portless(proto, pkt.src, pkt.dst, seed)
        return community_id(proto, pkt.src, pkt.dst, pkt.icmp_type, pkt.icmp_code, seed=seed)
    return community_id(proto, pkt.src, pkt.dst, pkt.sport, pkt.dport, seed=seed)


def community_id_portless(proto: int, src: bytes, dst: bytes, seed: int = 0) -> str:
    """The Community ID without ports: what the specification hashes when the transport
    header is not there (a later fragment, an ICMP message whose type is not known)."""
    src, dst = (src, dst) if src <= dst else (dst, src)
    h = hashlib.sha1(_SEED_PROTO.pack(seed & 0xFFFF))
    h.update(src)
    h.update(dst)
    h.update(_PROTO_PAD.pack(proto & 0xFF, 0))
    return "1:" + base64.b64encode(h.digest()).decode("ascii")
