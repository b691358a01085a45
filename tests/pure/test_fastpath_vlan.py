"""Ethernet frames with VLAN tags in compiled code (ips/fast/_fastpath.pyx `_vlan_tags`): the
tags peeled as ips/core/decode.py peels them (802.1Q, 802.1ad, 0x9100; up to eight, the ids
outermost first), so that a tagged frame is decided as the same frame untagged (no decision
reads the tags), and what the fast path decodes but leaves to Python is the very Packet the
Python decoder makes, its `vlans` included. Frames the decoder counts malformed (a ninth
tag, a tag cut short, a datagram of the other IP version) and tagged frames that carry no
IP are what Engine.handle_python makes of them."""

from __future__ import annotations

import random
import struct

import pytest
from packets import ping, tcp, udp
from test_fastpath_differential import _PACKET_FIELDS, Pair, need_fast_path

from ips.core.decode import decode_frame
from ips.core.packet import LINKTYPE_ETHERNET, Packet
from ips.engine import Engine, Meta
from ips.policy.resolve import load_policy_text

ETHER = Meta(linktype=LINKTYPE_ETHERNET)
TPIDS = (0x8100, 0x88A8, 0x9100)
MACS = bytes.fromhex("020000000001") + bytes.fromhex("020000000002")


def frame(l3: bytes, tags: list[tuple[int, int]], etype: int | None = None) -> bytes:
    """An Ethernet frame: `tags` as (TPID, TCI), outermost first, then the datagram."""
    if etype is None:
        etype = 0x0800 if l3[0] >> 4 == 4 else 0x86DD
    head = MACS
    kinds = [tpid for tpid, _ in tags] + [etype]
    head += struct.pack("!H", kinds[0])
    for k, (_, tci) in enumerate(tags):
        head += struct.pack("!HH", tci, kinds[k + 1])
    return head + l3


def traffic(seed: int) -> list[tuple[float, bytes]]:
    """Connections, datagrams and pings, each frame with none to three tags (ids with the
    priority bits set now and then, which the id leaves out), in time order."""
    rng = random.Random(seed)
    out: list[tuple[float, bytes]] = []
    t = 1000.0
    for k in range(300):
        tags = [
            (rng.choice(TPIDS), rng.randrange(0, 0x10000) if rng.random() < 0.3 else k % 4095)
            for _ in range(rng.choice((0, 1, 1, 2, 3)))
        ]
        a, b = f"10.0.{k % 7}.{1 + k % 50}", f"10.1.0.{1 + k % 9}"
        if rng.random() < 0.2:
            a, b = f"2001:db8::{k % 40 + 1:x}", "2001:db8:1::1"
        sport, dport = 40000 + k % 300, rng.choice((22, 53, 80, 443))
        what = rng.choice(("tcp", "udp", "ping"))
        if what == "tcp":
            steps = [
                tcp(a, b, sport, dport, flags="S"),
                tcp(b, a, dport, sport, flags="SA"),
                tcp(a, b, sport, dport, flags="A"),
                tcp(a, b, sport, dport, flags="PA", payload=b"x" * rng.randrange(1, 200)),
                tcp(b, a, dport, sport, flags="PA", payload=b"y" * rng.randrange(1, 900)),
                tcp(a, b, sport, dport, flags="A"),
            ]
        elif what == "udp":
            steps = [udp(a, b, sport, dport), udp(b, a, dport, sport, payload=b"r" * 30)] * 3
        else:
            steps = [ping(a, b, k), ping(b, a, k, reply=True)] * 3
        for step in steps:
            t += rng.choice((0.0001, 0.001, 0.01, 0.4))
            out.append((t, frame(step, tags)))
    return out


@pytest.mark.parametrize("policy", ["accept", "gateway-like"])
def test_tagged_frames_decide_as_the_python_engine(policy: str) -> None:
    text = {
        "accept": "set default accept\nset app-layer off\n",
        "gateway-like": (
            "table banned dynamic timeout 1h\nset default drop\nset app-layer off\n"
            "drop from @banned\naccept proto tcp to port { 22, 80, 443 }\n"
            "accept proto tcp from port { 22, 80, 443 }\naccept proto udp to port 53\n"
            "accept proto udp from port 53\naccept proto icmp\naccept proto icmpv6\n"
            "detect portscan\ndetect synflood rate 500/s per dst limit\n"
        ),
    }[policy]
    pair = Pair(text)
    for when, data in traffic(1):
        pair.handle(data, ETHER, when)
    pair.finish(2000.0)
    if pair.fast._fast_path is not None:
        assert pair.fast_packets > 300  # tagged frames decided in compiled code


def _malformed_or_odd() -> list[bytes]:
    ip4 = tcp("10.0.0.1", "10.0.0.2", 1000, 80, flags="A")
    ip6 = udp("2001:db8::1", "2001:db8::2", 1000, 53)
    arp = bytes(28)
    eight = [(0x8100, k) for k in range(8)]
    return [
        frame(ip4, eight),  # eight tags: the most the decoder peels
        frame(ip4, [*eight, (0x8100, 9)]),  # a ninth: malformed
        frame(ip4, [(0x8100, 5)])[:16],  # a tag cut short
        frame(ip4, [(0x8100, 5)])[:18],  # a tag and nothing after it
        frame(ip4, [(0x8100, 5)], etype=0x86DD),  # announced IPv6, carries IPv4
        frame(ip6, [(0x88A8, 5), (0x8100, 6)], etype=0x0800),  # the other way round
        frame(arp, [(0x8100, 5)], etype=0x0806),  # ARP in a VLAN: no IP
        frame(arp, [(0x88A8, 5), (0x8100, 7)], etype=0x88CC),  # LLDP behind two tags
        frame(ip6, [(0x9100, 4095)]),
        frame(b"", [(0x8100, 5)], etype=0x0800),  # tags and no datagram
    ]


def test_odd_tagged_frames_are_what_the_python_engine_makes_of_them() -> None:
    pair = Pair("set default accept\nset app-layer off\nset malformed drop\n")
    for k, data in enumerate(_malformed_or_odd() * 3):
        pair.handle(data, ETHER, 10.0 + k * 0.01)
    pair.finish(20.0)
    assert pair.slow.stats.not_ip == 6
    assert sum(pair.slow.stats.malformed.values()) >= 12


def test_a_tagged_packet_decoded_in_compiled_code_is_the_python_decoders() -> None:
    """What the fast path decodes but does not decide (no flow yet, default accept) is the
    Packet decode_frame makes, its VLAN ids included; frames with no IP are counted as such;
    what the decoder finds malformed is left to it."""
    need_fast_path()
    engine = Engine(load_policy_text("set default accept\n", "t.rules"))
    path = engine._fast_path
    assert path is not None
    decoded = not_ip = left = 0
    samples = [data for _, data in traffic(2)] + _malformed_or_odd()
    for data in samples:
        got = path.handle(data, ETHER, 1.0)
        want = decode_frame(data, LINKTYPE_ETHERNET)
        if got is None:
            left += 1
            assert not isinstance(want, Packet) or want.vlans == () or want.frag
            continue
        if got is engine._not_ip:
            assert want is None
            not_ip += 1
            continue
        assert isinstance(got, Packet) and isinstance(want, Packet)
        assert [getattr(got, f) for f in _PACKET_FIELDS] == [
            getattr(want, f) for f in _PACKET_FIELDS
        ]
        decoded += 1 if got.vlans else 0
    assert decoded > 200 and not_ip == 2 and left >= 5
