"""The divert backend without privileges: pydivert's packet views over our bytes, the policy
-> WinDivert filter translation (checked by pydivert's own filter compiler and evaluator,
against the engine), the verdict mapping of DivertWorker, and the adapter's ban set.

pydivert's check_filter and Packet.matches run WinDivert's compiler and evaluator (bundled
in libebpfdivert on Linux) and need no root and no handle.
"""

from __future__ import annotations

import random
from pathlib import Path

import pydivert
import pytest
from pydivert import Direction, Layer

from ips.core.build import build_packet
from ips.core.decode import decode_l3
from ips.core.events import Block, Unblock
from ips.engine import Engine
from ips.io.divert import DivertError, DivertWorker, UserBlocks, layer_for, read_bans
from ips.policy.resolve import load_policy, load_policy_text
from ips.translate.windivert import divert_filter, needs_everything

ROOT = Path(__file__).resolve().parents[2]
TCP, UDP, ICMP, ICMPV6, SCTP = 6, 17, 1, 58, 132
SYN, ACK, FIN, RST, PSH, URG = 0x02, 0x10, 0x01, 0x04, 0x08, 0x20

FILTER_HEAD = "set default accept\nset malformed accept\n"
# Filter-style policies (the ones the translator narrows), covering every translated field.
POLICIES = [
    'drop proto tcp to port 23 alert "telnet"\n',
    "reject proto tcp to 10.10.2.0/24 port { 135-139, 445 }\n",
    "drop proto tcp flags FPU/FSRPAU\ndrop proto tcp flags /FSRPAU\n",
    "drop proto udp from !10.10.1.0/24 to port !53\n",
    "accept proto icmp type echo-request limit 5/s per src else drop\n"
    "drop proto icmpv6 type 128 code 0\n",
    "drop from { 192.0.2.0/24, 2001:db8::/32 } to port 8000-8100\n",
    'rewrite proto udp to port 53 set ttl 64\nmatch proto tcp to port 80 alert "web"\n',
    "drop proto 132\nreject to fd00:10:2::/64 port 7\n",
    "accept proto tcp to port 80\ndrop proto tcp to port 80-90\ndrop to ::/0 port 9\n",
]
ADDRS4 = ["10.10.1.20", "10.10.1.66", "10.10.2.10", "192.0.2.7", "198.51.100.1"]
ADDRS6 = ["fd00:10:1::20", "fd00:10:2::10", "2001:db8::5", "2001:db9::1"]
PORTS = [7, 9, 22, 23, 53, 80, 85, 135, 137, 139, 445, 8000, 8050, 8100, 8101, 40000]


def fwd_packet(raw: bytes) -> pydivert.Packet:
    """A packet as the NETWORK_FORWARD layer delivers it."""
    return pydivert.Packet(
        raw, interface=(3, 0), direction=Direction.OUTBOUND, layer=Layer.NETWORK_FORWARD
    )


def checksums_ok(raw: bytes) -> bool:
    """All checksums right: WinDivert's own recalculation leaves the bytes as they are."""
    p = pydivert.Packet(raw)
    p.recalculate_checksums()
    return bytes(p.raw) == raw


def random_packet(rng: random.Random) -> bytes:
    v6 = rng.random() < 0.3
    pool = ADDRS6 if v6 else ADDRS4
    src, dst = rng.choice(pool), rng.choice(pool)
    proto = rng.choice([TCP, TCP, UDP, UDP, ICMPV6 if v6 else ICMP, SCTP])
    if proto in (ICMP, ICMPV6):
        typ = rng.choice([0, 3, 8, 11] if proto == ICMP else [1, 128, 129, 135])
        return build_packet(proto, src, dst, icmp_type=typ, icmp_code=rng.choice([0, 0, 1]))
    flags = rng.choice([SYN, SYN | ACK, ACK, 0, FIN | PSH | URG, FIN, RST, SYN | FIN])
    payload = rng.choice([b"", b"GET / HTTP/1.0\r\n\r\n"])
    return build_packet(
        proto, src, dst, rng.choice(PORTS), rng.choice(PORTS), flags=flags, payload=payload
    )


def engine_cares(policy_text: str, raw: bytes) -> bool:
    """Would the engine treat this packet other than a silent accept? (fresh state)"""
    d = Engine(load_policy_text(policy_text)).handle(raw, now=1000.0)
    return d.verdict != "accept" or bool(d.effects) or d.data is not None


# ---- packet views ----------------------------------------------------------------------------


def test_packet_views_over_our_bytes_and_back() -> None:
    raw = build_packet(
        TCP,
        "10.10.1.20",
        "10.10.2.10",
        40000,
        80,
        flags=PSH | ACK,
        payload=b"GET / HTTP/1.0\r\n\r\n",
    )
    p = fwd_packet(raw)
    assert (p.src_addr, p.dst_addr, p.src_port, p.dst_port) == (
        "10.10.1.20",
        "10.10.2.10",
        40000,
        80,
    )
    assert p.tcp.psh and p.tcp.ack and not p.tcp.syn
    assert p.payload == b"GET / HTTP/1.0\r\n\r\n" and checksums_ok(raw)
    p.payload = b"GET /other HTTP/1.0\r\n\r\n"
    p.recalculate_checksums()
    ours = decode_l3(bytes(p.raw))
    assert ours.dport == 80 and bytes(p.raw)[ours.payload_offset :].startswith(b"GET /other")
    assert checksums_ok(bytes(p.raw))
    v6 = fwd_packet(build_packet(UDP, "fd00:10:1::20", "fd00:10:2::10", 5000, 53, payload=b"q"))
    assert v6.ipv6 is not None and v6.udp.dst_port == 53 and v6.payload == b"q"


# ---- filter translation ------------------------------------------------------------------------


def test_policies_that_need_every_packet_divert_everything() -> None:
    gateway = load_policy(ROOT / "policies" / "gateway.rules")
    assert needs_everything(gateway) == "set default drop"
    assert divert_filter(gateway) == "true"
    assert divert_filter(load_policy_text("drop proto tcp to port 23\n")) == "true"  # malformed
    for extra, why in [
        ("detect portscan\ntable banned dynamic\n", "detectors"),
        ("drop state new proto tcp to port 22\n", "state"),
        ("rewrite proto tcp to port 81 set dport 80\n", "translated"),
    ]:
        policy = load_policy_text(FILTER_HEAD + extra)
        assert why in (needs_everything(policy) or "") and divert_filter(policy) == "true"
    # host handles: one direction only
    assert divert_filter(gateway, direction="inbound") == "inbound"
    with pytest.raises(ValueError):
        divert_filter(gateway, direction="sideways")


def test_nothing_to_see_diverts_nothing_but_banned_sources() -> None:
    plain = load_policy_text(FILTER_HEAD + "accept proto tcp to port 80\n")
    assert divert_filter(plain) == "false"
    f = divert_filter(plain, ["10.10.1.66", "fd00:10:1::66"])
    assert f == "ip.SrcAddr == 10.10.1.66 or ipv6.SrcAddr == fd00:10:1::66"
    assert fwd_packet(build_packet(TCP, "10.10.1.66", "10.10.2.10", 1, 80)).matches(f)
    assert not fwd_packet(build_packet(TCP, "10.10.1.20", "10.10.2.10", 1, 80)).matches(f)


def test_too_many_terms_widen_to_everything() -> None:
    rules = "".join(f"drop proto tcp to port {p}\n" for p in range(1000, 1400))
    assert divert_filter(load_policy_text(FILTER_HEAD + rules)) == "true"


@pytest.mark.parametrize("index", range(len(POLICIES)))
def test_filter_compiles_and_diverts_every_packet_the_engine_judges(index: int) -> None:
    """Differential: for random packets, whenever the engine would do anything but a silent
    accept, WinDivert's own evaluator says the filter diverts the packet. And the filter is
    narrow: some packets the engine does not care about stay in the stack."""
    text = FILTER_HEAD + POLICIES[index]
    banned = ["198.51.100.1", "2001:db9::1"]
    f = divert_filter(load_policy_text(text), banned)
    assert f not in ("true", "false")
    for layer in (Layer.NETWORK_FORWARD, Layer.NETWORK):
        assert pydivert.Divert.check_filter(f, layer) == (True, 0, ""), f
    rng = random.Random(index)
    judged = skipped = 0
    for _ in range(400):
        raw = random_packet(rng)
        diverted = fwd_packet(raw).matches(f)
        if engine_cares(text, raw) or raw[12:16] == bytes([198, 51, 100, 1]):
            judged += 1
            assert diverted, (POLICIES[index], decode_l3(raw), f)
        elif not diverted:
            skipped += 1
    assert judged >= 5 and skipped >= 20, (judged, skipped)


def test_negated_and_v6_ranges_are_exact_at_their_edges() -> None:
    f = divert_filter(
        load_policy_text(
            FILTER_HEAD + "drop proto udp from !10.10.1.0/24\ndrop from 2001:db8::/32\n"
        )
    )

    def hit(src: str) -> bool:
        dst = "10.10.2.10" if "." in src else "fd00::1"
        return fwd_packet(build_packet(UDP, src, dst, 1, 2)).matches(f)

    assert not hit("10.10.1.0") and not hit("10.10.1.255")
    assert hit("10.10.0.255") and hit("10.10.2.0")
    assert hit("2001:db8::") and hit("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")
    assert not hit("2001:db9::") and not hit("2001:db7:ffff::1")


# ---- verdict mapping ------------------------------------------------------------------------


class RecordingHandle:
    """Stands in for an open pydivert handle (opening a real one needs root and hooks the
    namespace: tests/lab/test_divert_inline.py does that): records what is sent, recalculating
    checksums when asked, as EBPFDivert.send does."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, packet: pydivert.Packet, recalculate_checksum: bool = True) -> int:
        if recalculate_checksum:
            packet.recalculate_checksums()
        self.sent.append(bytes(packet.raw))
        return len(packet.raw)


VERDICT_POLICY = """
set default accept
drop proto tcp to port 23
reject proto tcp to port 445
reject proto udp to port 9
rewrite proto tcp to 10.10.2.10 port 8081 set dport 8080
"""


def worker_for(policy: str) -> tuple[DivertWorker, RecordingHandle]:
    worker = DivertWorker(Engine(load_policy_text(policy)), hooks=("forward",), log=None)
    worker.handle = RecordingHandle()
    return worker, worker.handle


def test_verdicts_map_to_send_nothing_reply_or_rewritten() -> None:
    worker, handle = worker_for(VERDICT_POLICY)
    syn = build_packet(TCP, "10.10.1.20", "10.10.2.10", 40000, 80, flags=SYN)
    worker._on_packet(fwd_packet(syn))
    assert handle.sent == [syn]  # accept: re-injected unchanged
    worker._on_packet(
        fwd_packet(build_packet(TCP, "10.10.1.20", "10.10.2.10", 40001, 23, flags=SYN))
    )
    assert len(handle.sent) == 1  # drop: not sent
    worker._on_packet(
        fwd_packet(build_packet(TCP, "10.10.1.20", "10.10.2.10", 40002, 445, flags=SYN))
    )
    rst = decode_l3(handle.sent[-1])  # reject: a reset back to the client, not the SYN
    assert (rst.src, rst.dst, rst.sport, rst.dport) == (
        bytes([10, 10, 2, 10]),
        bytes([10, 10, 1, 20]),
        445,
        40002,
    )
    assert rst.flags & RST and checksums_ok(handle.sent[-1])
    worker._on_packet(fwd_packet(build_packet(UDP, "10.10.1.20", "10.10.2.10", 5000, 9)))
    icmp = decode_l3(handle.sent[-1])
    assert icmp.proto == ICMP and icmp.dst == bytes([10, 10, 1, 20])
    moved = build_packet(TCP, "10.10.1.20", "10.10.2.10", 40003, 8081, flags=SYN)
    worker._on_packet(fwd_packet(moved))
    out = decode_l3(handle.sent[-1])
    assert out.dport == 8080 and checksums_ok(handle.sent[-1])
    assert worker.replies.sent == 2 and worker.verdict_errors == 0
    verdicts = worker.engine.stats.verdicts
    assert verdicts["accept"] == 1 and verdicts["drop"] == 1 and verdicts["reject"] == 2
    assert verdicts["rewrite"] == 1


def test_banned_source_is_dropped_before_the_engine() -> None:
    worker, handle = worker_for(VERDICT_POLICY)
    worker.blocks.add("10.10.1.66", 60, "manual|0|test", now=1000.0)
    worker.clock = lambda: 1010.0
    worker._on_packet(fwd_packet(build_packet(TCP, "10.10.1.66", "10.10.2.10", 1, 80, flags=SYN)))
    assert handle.sent == [] and worker.engine.stats.packets == 0 and worker.blocks.drops == 1
    worker.clock = lambda: 1061.0  # expired: judged again
    worker._on_packet(fwd_packet(build_packet(TCP, "10.10.1.66", "10.10.2.10", 1, 80, flags=SYN)))
    assert len(handle.sent) == 1 and worker.blocks.expired == 1


def test_engine_failure_gives_the_on_error_verdict() -> None:
    worker, handle = worker_for("set on-error accept\n")
    worker.engine.handle = None  # type: ignore[assignment, method-assign]  # calling it fails
    raw = build_packet(UDP, "10.10.1.20", "10.10.2.10", 1, 2)
    worker._on_packet(fwd_packet(raw))
    assert handle.sent == [raw] and worker.verdict_errors == 1
    worker, handle = worker_for("set on-error drop\n")
    worker.engine.handle = None  # type: ignore[assignment, method-assign]
    worker._on_packet(fwd_packet(raw))
    assert handle.sent == [] and worker.verdict_errors == 1


def test_layers_for_hooks() -> None:
    assert layer_for(["forward"]) == ("NETWORK_FORWARD", None)
    assert layer_for(["input"]) == ("NETWORK", "inbound")
    assert layer_for(["output"]) == ("NETWORK", "outbound")
    assert layer_for(["input", "output"]) == ("NETWORK", None)
    with pytest.raises(DivertError, match="forward"):
        layer_for(["forward", "input"])


# ---- the ban set ------------------------------------------------------------------------------


def test_ban_set_follows_block_effects_and_survives_in_its_file(tmp_path: Path) -> None:
    path = tmp_path / "bans.json"
    bans = UserBlocks(path, clock=lambda: 1000.0, log=None)
    v = bans.version
    bans.note(
        [
            Block(
                bytes([10, 10, 1, 66]),
                table="banned",
                ttl=600.0,
                detector="portscan",
                offense=1,
                reason="15 ports",
                time=1000.0,
            )
        ]
    )
    assert bans.version > v and bans.is_blocked(bytes([10, 10, 1, 66]), 1001.0)
    bans.flush()
    again = UserBlocks(path, clock=lambda: 1100.0, log=None)
    assert again.load() == 1
    (e,) = again.elements(1100.0)
    assert (e.addr, e.timeout, e.expires) == ("10.10.1.66", 600, 500)
    assert e.comment == "portscan|1|15 ports"
    again.note([Unblock(bytes([10, 10, 1, 66]), table="banned", reason="manual")])
    again.flush()
    assert not again.is_blocked(bytes([10, 10, 1, 66]), 1100.0)
    assert read_bans(path, 1100.0) == [] and again.removed == 1
