"""The frames the compiled fast path's own decoder leaves (ips/fast/_fastpath.pyx `_rest`):
decoded whole in C as ips/core/decode.py's decode_frame decodes them (IPv6 extension
headers, IPv4 options, fragments, every ICMP and ICMPv6 message, the protocols without
ports, and every malformed frame with its reason), then the malformed counted as
Engine._undecodable counts them, an ICMP or ICMPv6 message of a flow decided as any packet
of a flow (`_decide`, with Detectors._icmp's routing by type: an unreachable whose quote
answers a pending probe goes to Python), and a refused packet of no flow without ports or a
later fragment decided as `_flowless` decides TCP and UDP (`_flowless_other`).

Held to the Python engine by tests/pure/test_fastpath_differential.py's Pair (decisions
and effects packet by packet; EngineStats, rule hits, the flow table, every detector's
state, tick after tick), over made traffic (neighbour discovery, MLD behind a hop-by-hop
header, ICMP and ICMPv6 errors quoting probes and not, echoes, fragments of every kind,
GRE, IGMP, ESP, SCTP, UDP-Lite, frames cut at every length, VLAN tags), hypothesis-made
traffic and the shared captures, under several policies; and the decoder to decode_frame
on every frame of those."""

from __future__ import annotations

import random
import struct
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packets import ip, tcp, udp
from test_fastpath_differential import (
    _PACKET_FIELDS,
    GATEWAY,
    Pair,
    capture_records,
    need_fast_path,
    replay,
    shared_captures,
)

from ips import fast
from ips.core.decode import REASONS, decode_frame
from ips.core.packet import LINKTYPE_ETHERNET, LINKTYPE_RAW, Packet
from ips.engine import Meta

RAW = Meta(linktype=LINKTYPE_RAW)
ETHER = Meta(linktype=LINKTYPE_ETHERNET)
MACS = bytes.fromhex("020000000001") + bytes.fromhex("020000000002")

# ---- frames, made byte by byte (the builders of tests/packets.py make only valid TCP, UDP and
# echoes; these need any ICMP type, extension headers, fragments and damage)


def ipv4(
    src: str,
    dst: str,
    proto: int,
    body: bytes,
    *,
    frag: int = 0,
    more: bool = False,
    dont: bool = False,
    options: bytes = b"",
    ttl: int = 64,
    total: int | None = None,
) -> bytes:
    ihl = 5 + len(options) // 4
    length = 20 + len(options) + len(body) if total is None else total
    fo = frag | (0x2000 if more else 0) | (0x4000 if dont else 0)
    head = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | ihl, 0, length, 7, fo, ttl, proto, 0, ip(src), ip(dst)
    )
    return head + options + body


def ipv6(
    src: str,
    dst: str,
    proto: int,
    body: bytes,
    *,
    exts: Iterable[tuple[int, bytes]] = (),
    hlim: int = 64,
    plen: int | None = None,
) -> bytes:
    """IPv6 with extension headers: (type, its bytes after the next-header byte)."""
    chain = list(exts)
    types = [kind for kind, _ in chain] + [proto]
    rest = b"".join(bytes([types[k + 1]]) + data for k, (_, data) in enumerate(chain)) + body
    length = len(rest) if plen is None else plen
    head = struct.pack("!IHBB16s16s", 0x60012345, length, types[0], hlim, ip(src), ip(dst))
    return head + rest


def generic_ext(units: int = 0) -> bytes:
    """The bytes of a hop-by-hop, routing or destination header after its next-header byte."""
    return bytes([units]) + bytes(6 + 8 * units)


ROUTER_ALERT = bytes([0, 5, 2, 0, 0, 1, 0])  # hop-by-hop: router alert (MLD), PadN


# An authentication header of 24 bytes: its length byte 4 ((4 + 2) * 4 bytes), the rest.
AH = bytes([4]) + bytes(22)


def frag_ext(offset: int, more: bool, ident: int = 99) -> bytes:
    return struct.pack("!BHI", 0, (offset << 3) | (1 if more else 0), ident)


def icmp(itype: int, code: int = 0, rest: bytes = b"\0\0\0\0", body: bytes = b"") -> bytes:
    return struct.pack("!BBH", itype, code, 0) + rest + body


def echo(itype: int, ident: int, body: bytes = b"ping") -> bytes:
    return icmp(itype, 0, struct.pack("!HH", ident, 1), body)


def ether(l3: bytes, vlans: Iterable[int] = ()) -> bytes:
    out = MACS
    for vid in vlans:
        out += struct.pack("!HH", 0x8100, vid)
    return out + struct.pack("!H", 0x0800 if l3[:1] and l3[0] >> 4 == 4 else 0x86DD) + l3


LAN = [f"10.10.1.{k}" for k in range(2, 12)]
DMZ = [f"10.10.2.{k}" for k in range(10, 16)]
LAN6 = [f"2001:db8:1::{k:x}" for k in range(2, 9)]
DMZ6 = [f"2001:db8:2::{k:x}" for k in range(10, 14)]
LINK6 = [f"fe80::{k:x}" for k in range(1, 6)]


def probe_and_errors(rng: random.Random, t: float) -> list[tuple[float, bytes]]:
    """A SYN or UDP probe (a scan files it: pending) and ICMP errors quoting it (a failure,
    Python's) or quoting something else (nothing: compiled)."""
    six = rng.random() < 0.5
    client = rng.choice(LAN6 if six else LAN)
    server = rng.choice(DMZ6 if six else DMZ)
    sport, dport = rng.randrange(30000, 60000), rng.choice((23, 25, 111, 3389, 8443))
    if rng.random() < 0.5:
        probe = tcp(client, server, sport, dport, flags="S")
    else:
        probe = udp(client, server, sport, dport, payload=b"probe")
    out = [(t, probe)]
    other = udp(client, server, sport + 1, dport, payload=b"other")
    for quoted in (probe, other, probe[:30], probe[: rng.randrange(1, len(probe))]):
        rest = b"\0\0\0\0"
        if six:
            err = ipv6(server, client, 58, icmp(1, rng.choice((1, 3, 4)), rest, quoted))
        else:
            err = ipv4(server, client, 1, icmp(3, rng.choice((1, 3, 13)), rest, quoted))
        t += rng.random() * 0.2
        out.append((t, err))
    return out


def neighbours(rng: random.Random, t: float) -> list[tuple[float, bytes]]:
    """Neighbour discovery, router discovery and MLD (behind a hop-by-hop header), repeated:
    first packets and later packets of their flows."""
    out = []
    a, b = rng.sample(LINK6, 2)
    target = bytes(ip(b))
    for _ in range(rng.randrange(1, 4)):
        out.append(
            (
                t,
                ipv6(
                    a, f"ff02::1:ff00:{rng.randrange(1, 9):x}", 58, icmp(135, 0, bytes(4), target)
                ),
            )
        )
        out.append((t + 0.001, ipv6(b, a, 58, icmp(136, 0, b"\x60\0\0\0", target))))
        out.append((t + 0.002, ipv6(a, "ff02::2", 58, icmp(133))))
        out.append((t + 0.003, ipv6(b, "ff02::1", 58, icmp(134, 0, b"\x40\0\x07\x08", bytes(8)))))
        mld = icmp(143, 0, b"\0\0\0\1", bytes([4, 0, 0, 0]) + ip("ff02::fb"))
        out.append((t + 0.004, ipv6(a, "ff02::16", 58, mld, exts=[(0, ROUTER_ALERT)], hlim=1)))
        out.append(
            (
                t + 0.005,
                ipv6(
                    a,
                    "ff02::16",
                    58,
                    icmp(130, 0, bytes(4), bytes(16)),
                    exts=[(0, ROUTER_ALERT)],
                    hlim=1,
                ),
            )
        )
        out.append((t + 0.006, ipv6(b, a, 58, icmp(137, 0, bytes(4), target + target))))
        t += rng.random() * 0.5
    return out


def errors_and_echoes(rng: random.Random, t: float) -> list[tuple[float, bytes]]:
    """ICMP and ICMPv6 messages of every kind between hosts, echoes behind extension
    headers, ICMP inside IPv6 and ICMPv6 inside IPv4 (typed by their protocol)."""
    out = []
    six = rng.random() < 0.5
    a = rng.choice(LAN6 if six else LAN)
    b = rng.choice(DMZ6 if six else DMZ)
    itype = rng.choice(
        # (8 and 0 in ICMPv6, 128 and 129 in ICMP: no echoes there)
        (1, 2, 3, 4, 8, 0, 128, 129, 130, 200, 255)
        if six
        else (0, 3, 4, 5, 8, 11, 12, 13, 14, 17, 18, 40, 128, 129)
    )
    code = rng.choice((0, 0, 1, 4))
    rest = struct.pack("!HH", rng.randrange(3), 1)
    body = bytes(rng.randrange(0, 40))
    msg = icmp(itype, code, rest, body)
    exts = rng.choice(
        (
            [],
            [],
            [(0, generic_ext())],
            [(60, generic_ext(1))],
            [(44, frag_ext(0, False))],
            [(51, AH), (60, generic_ext())],  # (AH counts its length in 4-byte words)
        )
    )
    if six:
        pkt = ipv6(a, b, 58, msg, exts=exts)
        reply = ipv6(b, a, 58, msg)
    else:
        pkt = ipv4(a, b, 1, msg, options=rng.choice((b"", b"\x01\x01\x01\x00")))
        reply = ipv4(b, a, 1, msg)
    out.append((t, pkt))
    if rng.random() < 0.5:
        out.append((t + 0.01, reply))
    if rng.random() < 0.5:
        out.append((t + 0.02, pkt))
    if rng.random() < 0.2:
        # typed by the protocol, not the version: an echo request of ICMP inside IPv6
        out.append((t + 0.03, ipv6(rng.choice(LAN6), rng.choice(DMZ6), 1, echo(8, 5))))
        out.append((t + 0.03, ipv4(rng.choice(LAN), rng.choice(DMZ), 58, echo(128, 5))))
    return out


def fragments(rng: random.Random, t: float) -> list[tuple[float, bytes]]:
    """First and later fragments of TCP, UDP and ICMP, IPv4 and IPv6."""
    out = []
    six = rng.random() < 0.5
    a = rng.choice(LAN6 if six else LAN)
    b = rng.choice(DMZ6 if six else DMZ)
    proto = rng.choice((6, 17, 1 if not six else 58, 47))
    first = {6: tcp(a, b, 40000, 80, flags="S"), 17: udp(a, b, 40000, 53, payload=bytes(30))}
    l4 = first.get(proto)
    l4 = l4[40 if six else 20 :] if l4 is not None else echo(8 if proto == 1 else 128, 9, bytes(30))
    later = bytes(rng.randrange(0, 64))
    if six:
        out.append((t, ipv6(a, b, proto, l4, exts=[(44, frag_ext(0, True))])))
        out.append(
            (
                t + 0.01,
                ipv6(
                    a,
                    b,
                    proto,
                    later,
                    exts=[(44, frag_ext(rng.randrange(1, 100), rng.random() < 0.5))],
                ),
            )
        )
        out.append(
            (
                t + 0.02,
                ipv6(a, b, proto, later, exts=[(0, generic_ext()), (44, frag_ext(3, False))]),
            )
        )
    else:
        out.append((t, ipv4(a, b, proto, l4, more=True)))
        out.append(
            (
                t + 0.01,
                ipv4(a, b, proto, later, frag=rng.randrange(1, 200), more=rng.random() < 0.5),
            )
        )
        out.append((t + 0.02, ipv4(a, b, proto, l4[: rng.randrange(0, len(l4))], more=True)))
    return out


def other_protocols(rng: random.Random, t: float) -> list[tuple[float, bytes]]:
    """GRE, IGMP, ESP, no next header, SCTP, UDP-Lite; some answered."""
    six = rng.random() < 0.4
    a = rng.choice(LAN6 if six else LAN)
    b = rng.choice(DMZ6 if six else DMZ)
    proto = rng.choice((2, 47, 50, 59, 132, 136, 41, 253))
    body = struct.pack("!HH", rng.randrange(1000, 1010), 9) + bytes(rng.randrange(0, 20))
    make = ipv6 if six else ipv4
    out = [(t, make(a, b, proto, body))]
    if rng.random() < 0.3:
        out.append((t + 0.01, make(b, a, proto, body)))
    if rng.random() < 0.3:
        out.append((t + 0.02, make(a, b, proto, body)))
    return out


def malformed(rng: random.Random, t: float) -> list[tuple[float, bytes]]:
    """Frames the decoder calls malformed, of every kind it knows, and cuts of good ones."""
    a, b = rng.choice(LAN), rng.choice(DMZ)
    a6, b6 = rng.choice(LAN6), rng.choice(DMZ6)
    good = rng.choice(
        (
            tcp(a, b, 40000, 80, flags="S"),
            udp(a, b),
            ipv4(a, b, 1, icmp(3, 1, bytes(4), bytes(30))),
            ipv6(a6, b6, 58, icmp(1, 4, bytes(4), bytes(50)), exts=[(0, generic_ext())]),
            ipv6(a6, b6, 132, bytes(16)),
            ipv4(a, b, 136, bytes(10)),
            tcp(a6, b6, flags="SA"),
        )
    )
    bad = [
        good[: rng.randrange(0, len(good))],
        bytes([0x50]) + good[1:],  # version 5
        bytes([0x44]) + good[1:],  # IHL 4
        ipv4(a, b, 6, bytes(40), total=19),
        ipv4(a, b, 6, bytes(40), options=b"\x07\x09\0\0"),  # an option longer than the header
        ipv4(a, b, 6, bytes(10)),
        ipv4(a, b, 6, bytes(10), more=True),
        ipv4(a, b, 6, bytes(40), frag=1),
        ipv4(a, b, 6, bytes(12) + b"\x40" + bytes(27)),  # data offset 4
        ipv4(a, b, 17, bytes(6)),
        ipv4(a, b, 17, struct.pack("!HHH", 1, 2, 4) + bytes(10)),
        ipv4(a, b, 1, bytes(3)),
        ipv4(a, b, 1, b"\x08\0\0\0\0\0"),
        ipv6(a6, b6, 58, b"\x80\0\0\0"),
        ipv6(a6, b6, 0, b"", plen=0),
        ipv6(a6, b6, 6, bytes(20), plen=200),
        ipv6(a6, b6, 6, bytes(20), exts=[(60, generic_ext()), (0, generic_ext())]),
        ipv6(a6, b6, 6, bytes(20), exts=[(60, generic_ext())] * 17),
        ipv6(a6, b6, 6, b"", exts=[(43, generic_ext(3)[:10])]),
        ipv6(a6, b6, 6, bytes(8), exts=[(44, frag_ext(0, True))]),
        ipv6(a6, b6, 132, bytes(8)),
        ipv6(a6, b6, 136, bytes(4)),
        ipv6(a6, b6, 51, bytes(30)),
    ]
    return [(t + k * 0.001, frame) for k, frame in enumerate(rng.sample(bad, rng.randrange(1, 5)))]


KINDS = (probe_and_errors, neighbours, errors_and_echoes, fragments, other_protocols, malformed)


def made_traffic(seed: int, count: int = 220) -> list[tuple[float, Meta, bytes]]:
    """Time-ordered frames of every kind above, raw or in Ethernet with VLAN tags, with gaps
    that cross the flows' and the probes' timeouts now and then."""
    rng = random.Random(seed)
    out: list[tuple[float, Meta, bytes]] = []
    t = 5000.0
    for _ in range(count):
        kind = rng.choice(KINDS)
        for ts, data in kind(rng, t):
            if rng.random() < 0.3:
                out.append(
                    (ts, ETHER, ether(data, [rng.randrange(1, 4095)] * rng.choice((0, 0, 1, 2))))
                )
            else:
                out.append((ts, RAW, data))
        t += rng.choice((0.01, 0.1, 0.5, 1.5, 4.0, 31.0, 70.0)) if rng.random() < 0.3 else 0.05
    out.sort(key=lambda item: item[0])
    return out


def feed(pair: Pair, frames: Iterable[tuple[float, Meta, bytes]]) -> float:
    last = 0.0
    for ts, meta, data in frames:
        pair.handle(data, meta, ts)
        last = max(last, ts)
    return last


# Rules on what `_rest` decides: ICMP types and codes, a later fragment (`fragment`: such a
# packet goes to Python), lengths, a `limit` on ICMPv6 types, protocols without ports.
TYPES = """\
set default drop
set app-layer off
accept proto icmpv6 type { 135, 136 }
drop proto icmpv6 type 143 sid 9400001
accept proto icmpv6 type 2 limit 3/s per src else drop
accept proto icmp type time-exceeded code 0
drop proto icmp type 13 length > 30
accept proto gre from 10.10.1.0/24
drop proto udp fragment alert "udp fragment" sid 9400002
accept proto esp
detect portscan ports 5 within 10s alert
detect sweep hosts 4 within 10s alert
detect icmpflood rate 20/s per src limit
"""

POLICIES = {
    "gateway-app-off": "set app-layer off\n" + GATEWAY,
    "gateway": GATEWAY,
    "types": TYPES,
    "no-detectors": "set default drop\nset app-layer off\naccept proto icmpv6 type 135\n",
    "accept": "set default accept\nset app-layer off\n",
    "reflection": "set app-layer off\nset default drop\ndetect reflection\n"
    "detect sweep hosts 3 within 5s alert\n",
    "reject": "set app-layer off\nset default reject\ndetect portscan ports 3 within 5s alert\n",
    # echoes offloaded once answered (their reverse candidates found in compiled code first)
    "offload": "set app-layer off\nset offload on\nset default accept\n"
    "drop proto icmpv6 type 143\ndetect icmpflood rate 50/s per src limit\n",
}


def sweeps(seed: int) -> list[tuple[float, Meta, bytes]]:
    """Sweepers pinging many hosts, v4 and v6 (their echoes counted as sent: a window
    credited, then detected), some answered, each source a new key of the rules' and the
    floods' limits, bursts over the rates."""
    rng = random.Random(seed)
    out: list[tuple[float, Meta, bytes]] = []
    t = 100.0
    for k in range(12):
        six = k % 2 == 1
        source = f"2001:db8:1::{k + 2:x}" if six else f"10.10.1.{k + 20}"
        for n in range(rng.choice((3, 10, 30))):
            target = f"2001:db8:2::{n + 1:x}" if six else f"10.10.2.{n + 1}"
            if six:
                req = ipv6(source, target, 58, echo(128, k))
                rep = ipv6(target, source, 58, echo(129, k))
            else:
                req = ipv4(source, target, 1, echo(8, k))
                rep = ipv4(target, source, 1, echo(0, k))
            out.append((t, RAW, req))
            if rng.random() < 0.3:
                out.append((t + 0.001, RAW, rep))
            if rng.random() < 0.1:
                for _ in range(rng.choice((5, 30))):  # a burst past the limits and floods
                    t += 0.001
                    out.append((t, RAW, req))
            t += rng.choice((0.002, 0.05, 0.5, 3.0))
    return out


SWEEP = """\
set app-layer off
set default drop
table banned dynamic timeout 1h
accept proto icmp type echo-request limit 5/s per src else drop
accept proto icmpv6 type echo-request limit 5/s per dst
accept proto icmpv6 type echo-reply limit 50/s
detect sweep hosts 8 within 20s block 10m
detect portscan ports 5 within 20s alert
detect icmpflood rate 30/s per src limit
"""


@pytest.mark.parametrize("policy", ["gateway-app-off", "sweep"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sweeps_decide_the_same(policy: str, seed: int) -> None:
    pair = Pair(POLICIES.get(policy, SWEEP))
    pair.finish(feed(pair, sweeps(seed)))
    if fast.available():
        path = pair.fast._fast_path
        assert path is not None
        assert path.other_flows > 10, path.other_flows  # echoes filed with their probes
        assert path.probes_filed > 10, path.probes_filed
    if policy == "sweep":
        assert pair.slow.detect is not None
        assert pair.slow.detect.by_name["sweep"].alerts > 0  # (detected, in Python)


@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("seed", [1, 2])
def test_made_traffic_decides_the_same(policy: str, seed: int) -> None:
    pair = Pair(POLICIES[policy])
    frames = made_traffic(seed)
    pair.finish(feed(pair, frames))
    assert pair.packets == len(frames)
    if fast.available() and policy in ("gateway-app-off", "types", "no-detectors"):
        path = pair.fast._fast_path
        assert path is not None
        # the malformed counted, ICMP messages and other protocols decided in compiled code
        assert path.malformed_packets > 0
        assert path.other_flowless_packets > 20, path.other_flowless_packets
        assert pair.slow.stats.malformed == pair.fast.stats.malformed
    if fast.available() and policy in ("gateway-app-off", "types", "accept", "offload"):
        path = pair.fast._fast_path
        assert path is not None
        # accepted first messages without ports filed in compiled code
        assert path.other_flows > 10, path.other_flows
    if fast.available() and policy == "offload":
        assert pair.fast.stats.offloaded == pair.slow.stats.offloaded > 0


def test_icmp_messages_of_a_flow_are_decided_in_compiled_code() -> None:
    """Neighbour solicitations and advertisements repeated, time exceeded and unreachables
    of flows already filed: after their first packets, compiled code decides them all; an
    unreachable quoting a pending probe (a failure, weighed at once) goes to Python."""
    need_fast_path()
    pair = Pair("set app-layer off\n" + GATEWAY)
    a, b = "fe80::1", "fe80::2"
    ns = ipv6(a, "ff02::1:ff00:2", 58, icmp(135, 0, bytes(4), ip(b)))
    na = ipv6(b, a, 58, icmp(136, 0, b"\x60\0\0\0", ip(b)))
    te = ipv6("2001:db8:2::1", "2001:db8:1::5", 58, icmp(3, 0, bytes(4), bytes(48)))
    t = 100.0
    for _ in range(50):
        for data in (ns, na, te):
            pair.handle(data, RAW, t)
        t += 0.5
    pair.finish(t)
    first = pair.fast_packets
    assert first >= 3 * 50 - 3, first
    # a probe, then the unreachable that quotes it: Python weighs the failure
    probe = tcp("2001:db8:1::5", "2001:db8:2::1", 41000, 23, flags="S")
    error = ipv6("2001:db8:2::1", "2001:db8:1::5", 58, icmp(1, 4, bytes(4), probe))
    pair.handle(probe, RAW, t)
    before = pair.fast_packets
    pair.handle(error, RAW, t + 0.1)
    assert pair.fast_packets == before
    # one quoting a segment no scan awaits an answer to: nothing to weigh, compiled
    other = tcp("2001:db8:1::5", "2001:db8:2::1", 41001, 23, flags="S")
    pair.handle(
        ipv6("2001:db8:2::1", "2001:db8:1::5", 58, icmp(1, 4, bytes(4), other)), RAW, t + 0.2
    )
    assert pair.fast_packets == before + 1
    pair.finish(t + 1)


def test_icmp_types_are_read_by_their_protocol() -> None:
    """Type 8 is an echo request in ICMP only, 128 in ICMPv6 only (Detectors._icmp reads the
    types by protocol): a host whose echoes made its icmpflood bucket sends messages of the
    other protocol's echo type in flows of their own, which no flood counts."""
    need_fast_path()
    pair = Pair("set app-layer off\nset default accept\ndetect icmpflood rate 50/s per src limit\n")
    t = 10.0
    for k in range(30):
        pair.handle(ipv6("2001:db8::1", "2001:db8::2", 58, echo(128, 7)), RAW, t)
        pair.handle(ipv4("10.0.0.1", "10.0.0.2", 1, echo(8, 7)), RAW, t)
        pair.handle(ipv6("2001:db8::1", "2001:db8::3", 58, echo(8, 7)), RAW, t + 0.001)
        pair.handle(ipv4("10.0.0.1", "10.0.0.3", 1, echo(128, 7)), RAW, t + 0.001)
        pair.handle(ipv6("2001:db8::1", "2001:db8::4", 1, echo(8, 7)), RAW, t + 0.002)
        pair.handle(ipv4("10.0.0.1", "10.0.0.4", 58, echo(128, 7)), RAW, t + 0.002)
        t += 0.01 * (k % 3)
        pair.check_state()
    pair.finish(t)
    assert pair.fast_packets > 150


def test_refused_messages_of_no_flow_are_decided_in_compiled_code() -> None:
    """MLD reports behind a hop-by-hop header, router solicitations, later fragments, GRE:
    refused first packets, decided in compiled code, each counted as the Python engine
    counts it (the discarded flow's id, its timer slot of ICMP's or `other`'s timeout)."""
    need_fast_path()
    pair = Pair("set app-layer off\n" + GATEWAY)
    t = 100.0
    frames = []
    for k in range(40):
        src = f"fe80::{k % 5 + 1:x}"
        mld = icmp(143, 0, b"\0\0\0\1", bytes([4, 0, 0, 0]) + ip("ff02::fb"))
        frames.append(ipv6(src, "ff02::16", 58, mld, exts=[(0, ROUTER_ALERT)], hlim=1))
        frames.append(ipv6(src, "ff02::2", 58, icmp(133)))
        frames.append(ipv4(f"10.10.9.{k}", "10.10.2.10", 17, bytes(20), frag=100))
        frames.append(
            ipv6(
                f"2001:db8:9::{k:x}", "2001:db8:2::1", 6, bytes(20), exts=[(44, frag_ext(5, False))]
            )
        )
        frames.append(ipv4(f"192.0.2.{k}", "10.10.2.10", 47, bytes(8)))
    for data in frames:
        pair.handle(data, RAW, t)
        t += 0.3
    pair.finish(t)
    path = pair.fast._fast_path
    assert path is not None
    # (but the first of a kind whose candidates Python has not memoised yet)
    assert path.other_flowless_packets >= len(frames) - 5, path.other_flowless_packets
    assert pair.slow.flows.stats == pair.fast.flows.stats


@pytest.mark.parametrize("policy", ["gateway-app-off", "types"])
def test_the_unreplied_queue_is_compacted_alike(policy: str) -> None:
    """Thousands of refused first packets (segments, datagrams, messages without ports)
    between flows accepted, answered or not, and expiring: the flow table's unreplied queue
    grows past twice the table and 1,024 again and again, and is compacted in compiled code
    as FlowTable compacts it (the flows still filed and not replied, in their order)."""
    pair = Pair(POLICIES[policy])
    rng = random.Random(7)
    t = 50.0
    for k in range(5000):
        src = f"198.51.100.{k % 200}"
        if k % 97 == 0:
            a, b = rng.choice(LINK6), "fe80::99"
            pair.handle(ipv6(a, b, 58, icmp(135, 0, bytes(4), ip(b))), RAW, t)  # accepted
            if k % 2:
                pair.handle(ipv6(b, a, 58, icmp(136, 0, bytes(4), ip(b))), RAW, t)
        kind = k % 3
        if kind == 0:
            data = tcp(src, "10.10.2.10", 20000 + k, 9, flags="A")
        elif kind == 1:
            data = udp(src, "10.10.2.10", 20000 + k, 9999)
        else:
            data = ipv4(src, "10.10.2.10", 47, bytes(8))
        pair.handle(data, RAW, t)
        t += rng.choice((0.001, 0.01, 0.2))
    pair.finish(t)
    if fast.available():
        path = pair.fast._fast_path
        assert path is not None
        assert path.compactions >= 2, path.compactions


def test_malformed_frames_are_counted_in_compiled_code() -> None:
    """Every reason the decoder gives, counted alike (the first of each reason by Python,
    which makes its Decision; the others here)."""
    need_fast_path()
    pair = Pair("set app-layer off\n" + GATEWAY)
    rng = random.Random(5)
    t = 10.0
    for _ in range(300):
        for ts, data in malformed(rng, t):
            pair.handle(data, RAW, ts)
            pair.handle(ether(data, [7] * rng.choice((0, 1, 9))), ETHER, ts)
        t += 0.1
    pair.handle(MACS[:10], ETHER, t)  # a cut Ethernet header
    pair.handle(MACS + b"\x81\x00\x00", ETHER, t)  # a cut tag
    pair.finish(t)
    path = pair.fast._fast_path
    assert path is not None
    counts = pair.slow.stats.malformed
    assert pair.fast.stats.malformed == counts
    assert len(counts) >= 20, sorted(counts)
    assert path.malformed_packets == sum(counts.values()) - len(counts)


def test_the_shared_captures_decide_the_same_with_the_policies_here() -> None:
    for text in (TYPES, POLICIES["reflection"]):
        pair = Pair(text)
        last = 0.0
        for capture in shared_captures():
            last = max(last, replay(pair, capture_records(capture)))
        pair.finish(last)


# ---- the decoder itself ---------------------------------------------------------------------


def compiled_decode(data: bytes, linktype: int) -> object:
    from ips.fast import _fastpath

    return _fastpath.decode_frame_compiled(data, linktype)


def same_decoding(data: bytes, linktype: int) -> None:
    got = compiled_decode(data, linktype)
    want = decode_frame(data, linktype)
    if got is NotImplemented:
        return
    if isinstance(want, Packet):
        assert isinstance(got, Packet), (data.hex(), got)
        assert [getattr(got, f) for f in _PACKET_FIELDS] == [
            getattr(want, f) for f in _PACKET_FIELDS
        ], data.hex()
    elif want is None:
        assert got is None, data.hex()
    else:
        assert got == want.reason, (data.hex(), got, want.reason)


def test_the_compiled_decoder_is_decode_frame(pcaps_dir: Path) -> None:
    """On every frame of the shared captures and of the made traffic, and on every cut of
    those made frames: the same Packet, the same reason, or no IP."""
    need_fast_path()
    for capture in shared_captures():
        for _, linktype, data in capture_records(capture):
            same_decoding(data, linktype)
    reasons = set()
    for _, meta, data in made_traffic(3, 300):
        for cut in range(len(data) + 1):
            same_decoding(data[:cut], meta.linktype)
            want = decode_frame(data[:cut], meta.linktype)
            if want is not None and not isinstance(want, Packet):
                reasons.add(want.reason)
    assert reasons >= set(REASONS) - {"l2.unsupported-linktype", "l2.too-many-vlan-tags"}
    tags = ether(ipv4("10.0.0.1", "10.0.0.2", 47, b""), [1] * 9)
    assert compiled_decode(tags, LINKTYPE_ETHERNET) == "l2.too-many-vlan-tags"
    assert compiled_decode(b"x" * 30, 113) is NotImplemented  # (Linux cooked: Python's)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([f for _, _, f in made_traffic(4, 60)]),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
    st.booleans(),
)
def test_the_compiled_decoder_reads_damaged_frames_as_decode_frame(
    frame: bytes, changes: list[tuple[int, int]], ethernet: bool
) -> None:
    need_fast_path()
    data = bytearray(frame)
    for at, value in changes:
        if at < len(data):
            data[at] = value
    raw = bytes(data)
    same_decoding(raw, LINKTYPE_RAW)
    same_decoding(ether(raw) if ethernet else raw, LINKTYPE_ETHERNET if ethernet else LINKTYPE_RAW)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(KINDS),
            st.sampled_from((0.0, 0.05, 0.4, 2.0, 35.0)),
            st.booleans(),
        ),
        min_size=1,
        max_size=40,
    ),
    st.integers(0, 2**32),
    st.sampled_from(sorted(POLICIES)),
)
def test_generated_traffic_decides_the_same(
    steps: list[tuple[object, float, bool]], seed: int, policy: str
) -> None:
    pair = Pair(POLICIES[policy])
    rng = random.Random(seed)
    t = 1000.0
    last = t
    for kind, gap, tagged in steps:
        for ts, data in kind(rng, t):  # type: ignore[operator]
            if tagged:
                pair.handle(ether(data, [3]), ETHER, ts)
            else:
                pair.handle(data, RAW, ts)
            last = max(last, ts)
        t = last + gap
    pair.finish(last)
