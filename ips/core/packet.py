"""The light packet view the decoder produces and everything above it reads.

One `Packet` is made per packet on the hot path, so it is a plain __slots__ class (no
dataclass machinery, no properties that compute on access) and holds only ints and bytes.
"""

from __future__ import annotations

# IP protocol numbers used across the core.
PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58
PROTO_SCTP = 132
PROTO_UDPLITE = 136

# Protocols whose packets carry source/destination ports.
PORT_PROTOS = frozenset((PROTO_TCP, PROTO_UDP, PROTO_SCTP, PROTO_UDPLITE))

# TCP flag bits (the flags byte of the TCP header).
TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_URG = 0x20
TCP_ECE = 0x40
TCP_CWR = 0x80

# Values of Packet.frag.
FRAG_NONE = 0
FRAG_FIRST = 1  # offset 0 with more-fragments set: carries the transport header
FRAG_LATER = 2  # offset > 0: no transport header in this packet

# pcap link-layer types (LINKTYPE_*) the decoder understands.
LINKTYPE_NULL = 0  # BSD loopback, 4-byte address family in host byte order
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW_OPENBSD = 12  # raw IP on some platforms
LINKTYPE_RAW_BSD = 14
LINKTYPE_RAW = 101  # raw IP: what NFQUEUE and WinDivert hand us
LINKTYPE_LOOP = 108  # OpenBSD loopback, address family in network byte order
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276


class Packet:
    """A decoded IPv4/IPv6 packet.

    data            the L3 datagram, from the IP header to the IP total length (trailing
                    link-layer padding removed)
    family          4 or 6
    src, dst        addresses as bytes (4 or 16 long)
    proto           upper-layer protocol (after IPv6 extension headers)
    sport, dport    ports for TCP/UDP/SCTP/UDP-Lite; for ICMP/ICMPv6 echo request/reply both
                    hold the echo identifier (as conntrack does) so a ping and its reply
                    share one flow; 0 otherwise and for non-first fragments
    flags           TCP flags byte (TCP_* bits), 0 for other protocols
    icmp_type/code  for ICMP and ICMPv6, else -1
    ttl             IPv4 TTL or IPv6 hop limit
    tos             IPv4 TOS or IPv6 traffic class byte (DSCP is tos >> 2)
    length          len(data)
    l4_offset       offset of the transport header in data; -1 when it is not in this packet
    payload_offset  offset of the transport payload in data (== length when there is none)
    frag            FRAG_NONE, FRAG_FIRST or FRAG_LATER
    vlans           VLAN ids from the link layer, outermost first; () when untagged
    """

    __slots__ = (
        "data",
        "dport",
        "dst",
        "family",
        "flags",
        "frag",
        "icmp_code",
        "icmp_type",
        "l4_offset",
        "length",
        "payload_offset",
        "proto",
        "sport",
        "src",
        "tos",
        "ttl",
        "vlans",
    )

    def __init__(
        self,
        data: bytes,
        family: int,
        src: bytes,
        dst: bytes,
        proto: int,
        sport: int = 0,
        dport: int = 0,
        flags: int = 0,
        icmp_type: int = -1,
        icmp_code: int = -1,
        ttl: int = 64,
        tos: int = 0,
        l4_offset: int = -1,
        payload_offset: int = -1,
        frag: int = FRAG_NONE,
        vlans: tuple[int, ...] = (),
    ) -> None:
        self.data = data
        self.family = family
        self.src = src
        self.dst = dst
        self.proto = proto
        self.sport = sport
        self.dport = dport
        self.flags = flags
        self.icmp_type = icmp_type
        self.icmp_code = icmp_code
        self.ttl = ttl
        self.tos = tos
        self.length = len(data)
        self.l4_offset = l4_offset
        self.payload_offset = self.length if payload_offset < 0 else payload_offset
        self.frag = frag
        self.vlans = vlans

    @property
    def payload(self) -> bytes:
        """The transport payload (a copy; not for the hot path)."""
        return self.data[self.payload_offset :]

    def __repr__(self) -> str:
        from ips.core.addr import format_addr

        return (
            f"Packet(v{self.family} proto={self.proto} {format_addr(self.src)}:{self.sport} > "
            f"{format_addr(self.dst)}:{self.dport} flags={self.flags:#04x} len={self.length}"
            f"{' frag=' + str(self.frag) if self.frag else ''})"
        )


class Malformed:
    """A packet the decoder could not make sense of. `reason` is a short stable code such as
    'ipv4.truncated' or 'tcp.bad-data-offset', used as a counter label."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"Malformed({self.reason!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Malformed) and other.reason == self.reason

    def __hash__(self) -> int:
        return hash(self.reason)
