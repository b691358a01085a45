"""The mixer's address rewrite: the packet the builder would have made with the new addresses
(checksums by full computation as the oracle), in any link layer, truncated or not, and an ICMP
error's quoted datagram rewritten with it."""

from __future__ import annotations

import ipaddress
import random

import pytest

from ips.core.build import build_packet
from ips.core.craft import checksum, icmp_unreachable_for, l4_checksum
from ips.core.decode import decode_frame, decode_l3
from ips.core.packet import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_RAW,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    Packet,
)
from ips.mix.rewrite import l3_offset, open_frame, rewrite_addresses


def _decoded(data: bytes) -> Packet:
    p = decode_l3(data)
    assert isinstance(p, Packet)
    return p


def _address(rng: random.Random, v6: bool) -> bytes:
    return ipaddress.ip_address(rng.getrandbits(128 if v6 else 32)).packed


@pytest.mark.parametrize("v6", [False, True])
def test_the_same_as_building_with_the_new_addresses(v6: bool) -> None:
    rng = random.Random(v6)
    for n in range(1500):
        proto = (PROTO_TCP, PROTO_UDP, PROTO_ICMPV6 if v6 else PROTO_ICMP)[n % 3]
        payload = rng.randbytes(rng.randrange(40))
        kw = {"payload": payload, "flags": 0x18} if proto == PROTO_TCP else {"payload": payload}
        ports = (rng.randrange(65536), rng.randrange(65536))
        args = ports if proto in (PROTO_TCP, PROTO_UDP) else ()
        original = build_packet(proto, _address(rng, v6), _address(rng, v6), *args, **kw)
        packet = _decoded(original)
        src, dst = _address(rng, v6), _address(rng, v6)
        expected = build_packet(proto, src, dst, *args, **kw)
        assert rewrite_addresses(original, 0, packet, src, dst) == expected


def test_link_layers_and_truncated_captures() -> None:
    ip = build_packet(
        PROTO_TCP, "192.0.2.1", "198.51.100.2", 1234, 80, flags=0x18, payload=b"x" * 300
    )
    new_src, new_dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    want = build_packet(PROTO_TCP, new_src, new_dst, 1234, 80, flags=0x18, payload=b"x" * 300)
    eth = bytes(12) + b"\x81\x00\x00\x05" + b"\x08\x00"  # one VLAN tag
    sll = bytes(14) + b"\x08\x00"
    for linktype, head in [
        (LINKTYPE_RAW, b""),
        (LINKTYPE_ETHERNET, eth),
        (LINKTYPE_LINUX_SLL, sll),
    ]:
        frame = head + ip + b"\0\0"  # trailing link-layer padding stays
        packet = decode_frame(frame, linktype)
        assert isinstance(packet, Packet)
        offset = l3_offset(frame, linktype, packet)
        assert offset == len(head)
        assert rewrite_addresses(frame, offset, packet, new_src, new_dst) == head + want + b"\0\0"
    # Cut by a snaplen after the TCP header: decoded as if padded to its length on the wire;
    # the checksum is still the full packet's.
    opened = open_frame(ip[:60], LINKTYPE_RAW, len(ip))
    assert isinstance(opened, tuple)
    padded, packet, offset = opened
    assert rewrite_addresses(padded, offset, packet, new_src, new_dst)[:60] == want[:60]
    assert open_frame(b"\x08\x06" + bytes(40), LINKTYPE_LINUX_SLL, 42) is None


def test_a_wrong_checksum_stays_wrong_by_as_much() -> None:
    good = build_packet(PROTO_UDP, "192.0.2.1", "192.0.2.2", 5, 53, payload=b"q")
    bad = bytearray(good)
    bad[26] ^= 0x01  # the UDP checksum off by one bit
    packet = _decoded(bytes(bad))
    out = rewrite_addresses(bytes(bad), 0, packet, bytes([10, 1, 1, 1]), bytes([10, 2, 2, 2]))
    rebuilt = build_packet(PROTO_UDP, "10.1.1.1", "10.2.2.2", 5, 53, payload=b"q")

    def value(data: bytes | bytearray) -> int:
        return int.from_bytes(data[26:28], "big")

    # Off by the same amount in one's-complement arithmetic (modulo 0xFFFF).
    assert (value(out) - value(rebuilt)) % 0xFFFF == (value(bad) - value(good)) % 0xFFFF != 0


@pytest.mark.parametrize(
    ("client", "server", "new_client", "new_server"),
    [
        ("192.0.2.10", "198.51.100.53", "10.50.0.7", "10.60.0.9"),
        ("2001:db8::10", "2001:db8:1::53", "fd00:50::7", "fd00:60::9"),
    ],
)
def test_an_icmp_error_quotes_the_new_addresses(
    client: str, server: str, new_client: str, new_server: str
) -> None:
    query = _decoded(build_packet(PROTO_UDP, client, server, 40000, 53, payload=b"q" * 20))
    error = icmp_unreachable_for(query)
    assert error is not None
    packet = _decoded(error)
    c, s = ipaddress.ip_address(new_client).packed, ipaddress.ip_address(new_server).packed
    out = rewrite_addresses(error, 0, packet, s, c)  # the error goes server -> client
    # The oracle: the same error crafted for the query as it is after the rewrite.
    new_query = _decoded(
        build_packet(PROTO_UDP, new_client, new_server, 40000, 53, payload=b"q" * 20)
    )
    assert out == icmp_unreachable_for(new_query)
    again = _decoded(out)
    if again.family == 4:
        assert checksum(out[20:]) in (0, 0xFFFF)
    else:
        assert l4_checksum(again.src, again.dst, PROTO_ICMPV6, out[40:]) in (0, 0xFFFF)


def test_an_icmp_error_about_a_third_host_keeps_that_address() -> None:
    query = _decoded(build_packet(PROTO_UDP, "192.0.2.10", "203.0.113.99", 40000, 33434))
    error = icmp_unreachable_for(query, src=bytes([192, 0, 2, 1]))  # a router answers
    assert error is not None
    packet = _decoded(error)
    new_router, new_client = bytes([10, 60, 0, 1]), bytes([10, 50, 0, 7])
    out = rewrite_addresses(error, 0, packet, new_router, new_client)
    quoted = out[28:48]
    assert quoted[12:16] == new_client and quoted[16:20] == bytes([203, 0, 113, 99])
    assert checksum(quoted) in (0, 0xFFFF)
    assert checksum(out[20:]) in (0, 0xFFFF)
