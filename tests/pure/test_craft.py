"""craft: checksums, RST and ICMP replies, checksum-preserving rewrites.

Packets are built with scapy, turned into `Packet` views by a small local parser (independent
of ips.core.decode), and results are checked with scapy: re-parse, drop the outer checksums,
rebuild, and compare bytes with what craft produced.
"""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from packets import ip
from scapy.layers.inet import ICMP, IP, TCP, UDP, defragment, fragment
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6TimeExceeded,
    IPv6,
    IPv6ExtHdrFragment,
    _ICMPv6,
)
from scapy.packet import Raw

from ips.core import craft
from ips.core.craft import (
    ICMP6_ADMIN_PROHIBITED,
    ICMP6_PORT_UNREACH,
    ICMP_ADMIN_PROHIBITED,
    ICMP_HOST_PROHIBITED,
    ICMP_PORT_UNREACH,
    checksum,
    csum_adjust,
    icmp_unreachable_for,
    l4_checksum,
    replace_payload,
    set_daddr,
    set_dport,
    set_dscp,
    set_saddr,
    set_sport,
    set_ttl,
    tcp_reset_for,
)
from ips.core.packet import (
    FRAG_FIRST,
    FRAG_LATER,
    FRAG_NONE,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    Packet,
)

# -- helpers ---------------------------------------------------------------------------


def view(layers: object) -> Packet:
    """A Packet for scapy `layers`, parsed here (not by ips.core.decode)."""
    data = bytes(layers)  # type: ignore[call-overload]
    frag = FRAG_NONE
    if data[0] >> 4 == 4:
        family, off, proto = 4, (data[0] & 0x0F) * 4, data[9]
        src, dst, ttl, tos = data[12:16], data[16:20], data[8], data[1]
        fo = struct.unpack_from("!H", data, 6)[0]
        frag = FRAG_LATER if fo & 0x1FFF else FRAG_FIRST if fo & 0x2000 else FRAG_NONE
    else:
        family, off, proto = 6, 40, data[6]
        src, dst, ttl = data[8:24], data[24:40], data[7]
        tos = ((data[0] & 0x0F) << 4) | (data[1] >> 4)
        while proto in (0, 43, 44, 60):
            nxt = data[off]
            if proto == 44:
                fo = struct.unpack_from("!H", data, off + 2)[0]
                frag = FRAG_LATER if fo >> 3 else FRAG_FIRST if fo & 1 else FRAG_NONE
                off += 8
            else:
                off += (data[off + 1] + 1) * 8
            proto = nxt
    if frag == FRAG_LATER:
        return Packet(
            data, family, src, dst, proto, ttl=ttl, tos=tos, payload_offset=off, frag=frag
        )
    sport = dport = flags = 0
    itype = icode = -1
    payload = off + 8
    if proto == PROTO_TCP:
        sport, dport = struct.unpack_from("!HH", data, off)
        flags = data[off + 13]
        payload = off + (data[off + 12] >> 4) * 4
    elif proto == PROTO_UDP:
        sport, dport = struct.unpack_from("!HH", data, off)
    elif proto in (PROTO_ICMP, PROTO_ICMPV6):
        itype, icode = data[off], data[off + 1]
        if itype in (0, 8, 128, 129):
            sport = dport = struct.unpack_from("!H", data, off + 4)[0]
    elif proto == PROTO_SCTP:
        sport, dport = struct.unpack_from("!HH", data, off)
        payload = off + 12
    return Packet(
        data,
        family,
        src,
        dst,
        proto,
        sport,
        dport,
        flags,
        itype,
        icode,
        ttl,
        tos,
        l4_offset=off,
        payload_offset=payload,
        frag=frag,
    )


def parse(data: bytes):
    return IP(data) if data[0] >> 4 == 4 else IPv6(data)


def rebuilt(data: bytes) -> bytes:
    """data with scapy recomputing the IPv4 header checksum and the first transport checksum
    (quoted packets inside ICMP errors are left alone)."""
    p = parse(data)
    layer = p
    while layer is not None and not isinstance(layer, Raw) and layer.name != "NoPayload":
        if type(layer) is IP:
            del layer.chksum
        elif type(layer) in (TCP, UDP, ICMP):
            del layer.chksum
            break
        elif isinstance(layer, _ICMPv6):
            del layer.cksum
            break
        layer = layer.payload
    return bytes(p)


def ones_sum(data: bytes) -> int:
    """Reference RFC 1071 sum, the slow obvious way."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def l4_ok(data: bytes, pkt: Packet) -> bool:
    """Independent check: the transport checksum (with pseudo-header) verifies."""
    seg = data[pkt.l4_offset :]
    if pkt.proto == PROTO_ICMP:
        return ones_sum(seg) == 0xFFFF
    if pkt.family == 4:
        pseudo = data[12:20] + struct.pack("!BBH", 0, pkt.proto, len(seg))
    else:
        pseudo = data[8:40] + struct.pack("!IxxxB", len(seg), pkt.proto)
    return ones_sum(pseudo + seg) == 0xFFFF


def assert_valid(data: bytes) -> None:
    assert rebuilt(data) == data
    pkt = view(data)
    if pkt.family == 4:
        assert ones_sum(data[: pkt.l4_offset]) == 0xFFFF
    assert l4_ok(data, pkt)


A4, B4, C4 = "192.0.2.1", "198.51.100.7", "203.0.113.9"
A6, B6, C6 = "2001:db8::1", "2001:db8:1::7", "2001:db8:2::9"
PAYLOAD = b"GET /etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n"


def tcp4(**kw):
    return IP(src=A4, dst=B4, tos=0x03) / TCP(sport=40000, dport=80, **kw)


def tcp6(**kw):
    return IPv6(src=A6, dst=B6, tc=0x03, fl=0xABCDE) / TCP(sport=40000, dport=80, **kw)


SAMPLES = {
    "tcp4": lambda: tcp4(flags="PA", seq=1, ack=2) / PAYLOAD,
    "udp4": lambda: IP(src=A4, dst=B4) / UDP(sport=5353, dport=53) / PAYLOAD,
    "udp4-odd": lambda: IP(src=A4, dst=B4) / UDP(sport=5353, dport=53) / (PAYLOAD + b"!"),
    "icmp4": lambda: IP(src=A4, dst=B4) / ICMP(type=8, id=77, seq=1) / PAYLOAD,
    "tcp6": lambda: tcp6(flags="PA", seq=1, ack=2) / PAYLOAD,
    "udp6": lambda: IPv6(src=A6, dst=B6) / UDP(sport=5353, dport=53) / PAYLOAD,
    "icmp6": lambda: IPv6(src=A6, dst=B6) / ICMPv6EchoRequest(id=77, seq=1, data=PAYLOAD),
}


@pytest.fixture(params=sorted(SAMPLES))
def sample(request) -> tuple[bytes, Packet]:
    data = bytes(SAMPLES[request.param]())
    assert_valid(data)
    return data, view(data)


# -- checksums -------------------------------------------------------------------------


@given(st.binary(max_size=300))
def test_checksum_matches_reference(data: bytes) -> None:
    value = checksum(data)
    # Storing the checksum makes the whole verify (sum 0xFFFF), at an even offset.
    assert ones_sum(data + (b"\0" if len(data) % 2 else b"") + struct.pack("!H", value)) == 0xFFFF
    assert value == (~ones_sum(data) & 0xFFFF) or (value == 0 and ones_sum(data) == 0xFFFF)


def test_checksum_edge_values() -> None:
    assert checksum(b"") == 0xFFFF
    assert checksum(b"\0\0\0") == 0xFFFF
    assert checksum(b"\xff\xff") == 0
    assert checksum(b"\x01") == 0xFEFF  # odd length pads on the right
    hdr = bytes(IP(src=A4, dst=B4))
    assert checksum(hdr[:10] + b"\0\0" + hdr[12:]) == struct.unpack("!H", hdr[10:12])[0]


@given(st.binary(min_size=20, max_size=200), st.data())
def test_csum_adjust_equals_recompute(data: bytes, draw) -> None:
    data = data[: len(data) & ~1]
    csum = checksum(data)
    i = draw.draw(st.integers(0, len(data) // 2 - 1)) * 2
    new = draw.draw(st.binary(min_size=2, max_size=2))
    changed = data[:i] + new + data[i + 2 :]
    # Real checksummed data (IP header, pseudo-header) is never all zeroes.
    assume(any(changed))
    adjusted = csum_adjust(csum, int.from_bytes(data[i : i + 2]), int.from_bytes(new))
    # Both are valid; they differ only in the representation of zero.
    assert ones_sum(changed + struct.pack("!H", adjusted)) == 0xFFFF
    assert adjusted == checksum(changed) or {adjusted, checksum(changed)} == {0, 0xFFFF}


def test_l4_checksum_matches_scapy() -> None:
    for layers in (SAMPLES["tcp4"](), SAMPLES["udp6"](), SAMPLES["icmp6"]()):
        data = bytes(layers)
        pkt = view(data)
        at = pkt.l4_offset + (16 if pkt.proto == PROTO_TCP else 6 if pkt.proto == 17 else 2)
        seg = bytearray(data[pkt.l4_offset :])
        seg[at - pkt.l4_offset : at - pkt.l4_offset + 2] = b"\0\0"
        assert l4_checksum(pkt.src, pkt.dst, pkt.proto, seg) == int.from_bytes(data[at : at + 2])


# -- TCP RST ---------------------------------------------------------------------------


@pytest.mark.parametrize("mk", [tcp4, tcp6], ids=["v4", "v6"])
def test_rst_for_syn(mk) -> None:
    orig = view(mk(flags="S", seq=1000))
    out = tcp_reset_for(orig)
    assert out is not None
    assert_valid(out)
    p = parse(out)
    t = p[TCP]
    assert (p.src, p.dst) == (parse(orig.data).dst, parse(orig.data).src)
    assert (t.sport, t.dport) == (80, 40000)
    assert t.flags == "RA"
    assert (t.seq, t.ack) == (0, 1001)
    assert (p.ttl if orig.family == 4 else p.hlim) == 64
    assert len(out) == (40 if orig.family == 4 else 60)


@pytest.mark.parametrize("mk", [tcp4, tcp6], ids=["v4", "v6"])
def test_rst_without_ack_counts_payload_syn_and_fin(mk) -> None:
    orig = view(mk(flags="SF", seq=0xFFFFFFF0) / (b"x" * 20))
    t = parse(tcp_reset_for(orig))[TCP]
    assert t.flags == "RA"
    assert (t.seq, t.ack) == (0, (0xFFFFFFF0 + 20 + 2) % 2**32)  # wraps


@pytest.mark.parametrize("mk", [tcp4, tcp6], ids=["v4", "v6"])
def test_rst_for_segment_with_ack(mk) -> None:
    orig = view(mk(flags="PA", seq=7, ack=5555) / PAYLOAD)
    out = tcp_reset_for(orig)
    assert_valid(out)
    t = parse(out)[TCP]
    assert t.flags == "R"
    assert (t.seq, t.ack) == (5555, 0)


def test_no_rst_for_rst_non_tcp_fragments_multicast() -> None:
    assert tcp_reset_for(view(tcp4(flags="R"))) is None
    assert tcp_reset_for(view(tcp4(flags="RA", ack=5))) is None
    assert tcp_reset_for(view(IP(src=A4, dst=B4) / UDP())) is None
    assert tcp_reset_for(view(IP(src=A4, dst="224.0.0.1") / TCP(flags="S"))) is None
    assert tcp_reset_for(view(IP(src=A4, dst="255.255.255.255") / TCP(flags="S"))) is None
    assert tcp_reset_for(view(IPv6(src=A6, dst="ff02::1") / TCP(flags="S"))) is None
    later = IP(src=A4, dst=B4, proto=6, frag=10) / Raw(b"x" * 40)
    assert view(later).frag == FRAG_LATER
    assert tcp_reset_for(view(later)) is None


# -- ICMP unreachable ------------------------------------------------------------------


def test_icmp4_port_unreachable_for_udp_quotes_datagram() -> None:
    orig = bytes(IP(src=A4, dst=B4, ttl=3) / UDP(sport=5353, dport=53) / PAYLOAD)
    out = icmp_unreachable_for(view(orig))
    assert out is not None
    assert_valid(out)
    p = IP(out)
    assert (p.src, p.dst, p.proto, p.ttl) == (B4, A4, 1, 64)
    assert (p[ICMP].type, p[ICMP].code) == (3, ICMP_PORT_UNREACH)
    assert out[28:] == orig  # small: quoted whole


def test_icmp4_defaults_and_explicit_code() -> None:
    tcp = view(tcp4(flags="S"))
    assert IP(icmp_unreachable_for(tcp))[ICMP].code == ICMP_ADMIN_PROHIBITED
    gre = view(IP(src=A4, dst=B4, proto=47) / Raw(b"\0" * 8))
    assert IP(icmp_unreachable_for(gre))[ICMP].code == ICMP_ADMIN_PROHIBITED
    out = icmp_unreachable_for(tcp, ICMP_HOST_PROHIBITED)
    assert_valid(out)
    assert IP(out)[ICMP].code == ICMP_HOST_PROHIBITED


def test_icmp4_size_cap_576() -> None:
    orig = bytes(IP(src=A4, dst=B4) / UDP(sport=1, dport=2) / (b"z" * 1400))
    out = icmp_unreachable_for(view(orig))
    assert len(out) == 576
    assert out[28:] == orig[:548]
    assert IP(out).len == 576
    assert ones_sum(out[20:]) == 0xFFFF and ones_sum(out[:20]) == 0xFFFF


def test_icmp_source_override() -> None:
    out = icmp_unreachable_for(view(IP(src=A4, dst=B4) / UDP()), src=ip(C4))
    assert_valid(out)
    assert IP(out).src == C4
    out6 = icmp_unreachable_for(view(IPv6(src=A6, dst=B6) / UDP()), src=ip(C6))
    assert_valid(out6)
    assert IPv6(out6).src == C6


def test_icmp6_unreachable() -> None:
    orig = bytes(IPv6(src=A6, dst=B6) / UDP(sport=5353, dport=53) / PAYLOAD)
    out = icmp_unreachable_for(view(orig))
    assert_valid(out)
    p = IPv6(out)
    assert (p.src, p.dst, p.nh, p.hlim) == (B6, A6, 58, 64)
    assert isinstance(p.payload, ICMPv6DestUnreach)
    assert (p[ICMPv6DestUnreach].type, p[ICMPv6DestUnreach].code) == (1, ICMP6_PORT_UNREACH)
    assert out[48:] == orig
    tcp = icmp_unreachable_for(view(tcp6(flags="S")))
    assert_valid(tcp)
    assert IPv6(tcp)[ICMPv6DestUnreach].code == ICMP6_ADMIN_PROHIBITED


def test_icmp6_size_cap_1280() -> None:
    orig = bytes(IPv6(src=A6, dst=B6) / UDP(sport=1, dport=2) / (b"z" * 1452))
    assert len(orig) == 1500
    out = icmp_unreachable_for(view(orig))
    assert len(out) == 1280
    assert out[48:] == orig[:1232]
    assert_valid(out)


@pytest.mark.parametrize(
    "layers",
    [
        IP(src=A4, dst=B4) / ICMP(type=3, code=3) / IP(src=B4, dst=A4) / UDP(),
        IP(src=A4, dst=B4) / ICMP(type=11) / IP(src=B4, dst=A4) / UDP(),
        IP(src=A4, dst=B4) / ICMP(type=5) / IP(src=B4, dst=A4) / UDP(),
        IP(src=A4, dst=B4) / ICMP(type=42),  # unknown: could be an error
        IPv6(src=A6, dst=B6) / ICMPv6DestUnreach() / IPv6(src=B6, dst=A6) / UDP(),
        IPv6(src=A6, dst=B6) / ICMPv6TimeExceeded() / IPv6(src=B6, dst=A6) / UDP(),
        IP(src=A4, dst="224.0.0.251") / UDP(dport=5353),
        IP(src=A4, dst="239.1.2.3") / UDP(),
        IP(src=A4, dst="255.255.255.255") / UDP(dport=67),
        IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67),
        IP(src="0.0.0.0", dst=B4) / UDP(),
        IP(src="224.0.0.5", dst=B4) / UDP(),
        IPv6(src=A6, dst="ff02::1") / UDP(),
        IPv6(src="::", dst=B6) / UDP(),
        IPv6(src="ff05::2", dst=B6) / UDP(),
        IP(src=A4, dst=B4, proto=17, frag=20) / Raw(b"x" * 16),
        IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment(nh=17, offset=8) / Raw(b"x" * 16),
    ],
    ids=lambda x: x.summary(),
)
def test_no_icmp_error_for(layers) -> None:
    assert icmp_unreachable_for(view(layers)) is None


def test_icmp_error_for_echo_is_allowed() -> None:
    for layers in (
        IP(src=A4, dst=B4) / ICMP(type=8, id=1),
        IPv6(src=A6, dst=B6) / ICMPv6EchoRequest(id=1),
        IPv6(src=A6, dst=B6) / ICMPv6EchoReply(id=1),
    ):
        out = icmp_unreachable_for(view(layers))
        assert out is not None
        assert_valid(out)


# -- rewrites --------------------------------------------------------------------------


def test_set_ttl(sample) -> None:
    data, pkt = sample
    out = set_ttl(data, pkt, 7)
    assert_valid(out)
    p = parse(out)
    assert (p.ttl if pkt.family == 4 else p.hlim) == 7
    assert out[pkt.l4_offset :] == data[pkt.l4_offset :]
    with pytest.raises(ValueError):
        set_ttl(data, pkt, 256)


def test_set_dscp_keeps_ecn_and_flow_label(sample) -> None:
    data, pkt = sample
    src = bytearray(data)
    if pkt.family == 4:
        src[1] = 0x03  # ECN CE
        src[10:12] = b"\0\0"
        src[10:12] = struct.pack("!H", checksum(src[:20]))
    else:
        src[0:4] = struct.pack("!I", (6 << 28) | (0x03 << 20) | 0xABCDE)
    data = bytes(src)
    out = set_dscp(data, pkt, 46)
    assert_valid(out)
    p = parse(out)
    if pkt.family == 4:
        assert p.tos == (46 << 2) | 0x03
    else:
        assert (p.version, p.tc, p.fl) == (6, (46 << 2) | 0x03, 0xABCDE)
    assert out[pkt.l4_offset :] == data[pkt.l4_offset :]
    with pytest.raises(ValueError):
        set_dscp(data, pkt, 64)


@pytest.mark.parametrize("which", ["src", "dst"])
def test_set_addr(sample, which: str) -> None:
    data, pkt = sample
    new = ip(C4) if pkt.family == 4 else ip(C6)
    fn = set_saddr if which == "src" else set_daddr
    out = fn(data, pkt, new)
    assert_valid(out)
    p = parse(out)
    text = C4 if pkt.family == 4 else C6
    assert getattr(p, which) == text
    with pytest.raises(ValueError):
        fn(data, pkt, b"\1" * (16 if pkt.family == 4 else 4))


@pytest.mark.parametrize("which", ["sport", "dport"])
def test_set_port(sample, which: str) -> None:
    data, pkt = sample
    fn = set_sport if which == "sport" else set_dport
    out = fn(data, pkt, 8080)
    if pkt.proto not in (PROTO_TCP, PROTO_UDP):
        assert out is None
        return
    assert out is not None
    assert_valid(out)
    assert getattr(parse(out).payload, which) == 8080


def test_rewrites_chain(sample) -> None:
    data, pkt = sample
    new = ip(C4) if pkt.family == 4 else ip(C6)
    out = set_daddr(data, pkt, new)
    out = set_dport(out, pkt, 8443) or out
    out = set_ttl(out, pkt, 9)
    out = set_saddr(out, pkt, new)
    out = set_dscp(out, pkt, 10)
    out = replace_payload(out, pkt, b"passwd", b"xxxxxx")
    assert out is not None
    assert_valid(out)


def test_replace_payload(sample) -> None:
    data, pkt = sample
    assert replace_payload(data, pkt, b"not there", b"xxxxxxxxx") is None
    out = replace_payload(data, pkt, b"/etc/passwd", b"/dev/nullxx")
    assert out is not None
    assert_valid(out)
    assert out[: pkt.l4_offset] == data[: pkt.l4_offset]
    assert b"/dev/nullxx" in out and b"/etc/passwd" not in out
    with pytest.raises(ValueError):
        replace_payload(data, pkt, b"abc", b"ab")


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_replace_payload_many_matches_odd_and_even(family: int, proto: str) -> None:
    payload = b"ab" + b"xAByABzAB" * 3 + b"A"  # matches at odd and even offsets
    net = IP(src=A4, dst=B4) if family == 4 else IPv6(src=A6, dst=B6)
    l4 = TCP(sport=1, dport=2, flags="A") if proto == "tcp" else UDP(sport=1, dport=2)
    data = bytes(net / l4 / payload)
    pkt = view(data)
    out = replace_payload(data, pkt, b"AB", b"\xff\x01")
    assert out[pkt.payload_offset :] == payload.replace(b"AB", b"\xff\x01")
    assert_valid(out)
    # Only the payload is searched, not the headers.
    assert replace_payload(data, pkt, data[:4], b"\0\0\0\0") is None


def test_replace_payload_only_in_payload_not_headers() -> None:
    data = bytes(IP(src=A4, dst=B4) / UDP(sport=0x4142, dport=2) / b"hello")
    pkt = view(data)
    assert replace_payload(data, pkt, b"AB", b"CD") is None


def test_udp_zero_checksum_is_kept_over_ipv4() -> None:
    data = bytes(IP(src=A4, dst=B4) / UDP(sport=5353, dport=53, chksum=0) / PAYLOAD)
    pkt = view(data)
    for out in (
        set_daddr(data, pkt, ip(C4)),
        set_saddr(data, pkt, ip(C4)),
        set_dport(data, pkt, 5300),
        set_sport(data, pkt, 1),
        replace_payload(data, pkt, b"passwd", b"PASSWD"),
    ):
        assert out is not None
        assert UDP in IP(out) and IP(out)[UDP].chksum == 0
        assert ones_sum(out[:20]) == 0xFFFF
    assert IP(set_dport(data, pkt, 5300))[UDP].dport == 5300


def test_udp_checksum_that_becomes_zero_is_sent_as_ffff() -> None:
    # Find a port whose rewrite makes the computed checksum 0: it must go out as 0xFFFF.
    data = bytes(IP(src=A4, dst=B4) / UDP(sport=1000, dport=53) / b"payload!")
    pkt = view(data)
    csum = IP(data)[UDP].chksum
    # Changing dport by d changes the sum by d; aim the complement at 0.
    target = (53 + csum) % 0xFFFF
    out = set_dport(data, pkt, target)
    assert IP(out)[UDP].dport == target
    assert IP(out)[UDP].chksum == 0xFFFF
    assert l4_ok(out, view(out))


def test_rewrite_keeps_a_bad_checksum_bad() -> None:
    good = bytearray(bytes(tcp4(flags="A") / PAYLOAD))
    pkt = view(bytes(good))
    good[36] ^= 0xFF  # corrupt the TCP checksum
    out = set_dport(bytes(good), pkt, 8080)
    assert not l4_ok(out, pkt)


def test_ports_and_payload_refused_on_non_first_fragment() -> None:
    later = bytes(IP(src=A4, dst=B4, proto=17, frag=10) / Raw(b"x" * 40))
    pkt = view(later)
    assert pkt.frag == FRAG_LATER
    assert set_dport(later, pkt, 1) is None
    assert set_sport(later, pkt, 1) is None
    assert replace_payload(later, pkt, b"x", b"y") is None
    # Address and TTL rewrites touch only the IP header.
    out = set_daddr(later, pkt, ip(C4))
    assert out[20:] == later[20:] and ones_sum(out[:20]) == 0xFFFF
    assert IP(out).dst == C4
    v6 = bytes(IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment(nh=17, offset=8) / Raw(b"x" * 16))
    p6 = view(v6)
    assert set_dport(v6, p6, 1) is None
    assert set_daddr(v6, p6, ip(C6))[48:] == v6[48:]


def test_sctp_ports_refused() -> None:
    data = bytes(IP(src=A4, dst=B4, proto=PROTO_SCTP) / Raw(b"\0\1\0\2" + b"\0" * 8))
    assert set_dport(data, view(data), 9) is None


def test_fragmented_udp_rewrite_survives_reassembly() -> None:
    whole = IP(src=A4, dst=B4, id=99) / UDP(sport=5353, dport=53) / (b"q" * 3000)
    frags = fragment(whole, fragsize=1000)
    assert len(frags) > 2
    out = []
    for f in frags:
        data = bytes(f)
        pkt = view(data)
        data = set_daddr(data, pkt, ip(C4))
        if pkt.frag == FRAG_FIRST:
            data = set_dport(data, pkt, 5300)
        out.append(IP(data))
    joined = defragment(out)[0]
    raw = bytes(joined)
    assert IP(raw).dst == C4 and IP(raw)[UDP].dport == 5300
    assert l4_ok(raw, view(raw))


def test_random_packets_rewrites_valid() -> None:
    rnd = os.urandom
    for i in range(50):
        v6 = i % 2
        net = IPv6(src=A6, dst=B6) if v6 else IP(src=A4, dst=B4)
        l4 = TCP(sport=1, dport=2, flags="PA") if i % 3 else UDP(sport=1, dport=2)
        data = bytes(net / l4 / rnd(i * 7 + 1))
        pkt = view(data)
        new = rnd(16 if v6 else 4)
        for out in (
            set_daddr(data, pkt, new),
            set_saddr(data, pkt, new),
            set_dport(data, pkt, int.from_bytes(rnd(2))),
        ):
            assert l4_ok(out, pkt)
            assert rebuilt(out) == out


def test_public_names_exported() -> None:
    for name in craft.__all__:
        assert hasattr(craft, name)
    assert TCP_SYN | TCP_FIN | TCP_ACK | TCP_RST
