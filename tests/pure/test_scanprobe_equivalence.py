"""The scan detectors' probe bookkeeping (ips/detect/scan.py, the probe and answer parts of
ips/detect/detectors.py) held to what it was before it was made cheaper: a frozen copy of the
old code (tests/scan_oracle/) is the oracle. Two engines fed the same packets, one with the
policy's detectors as ips/detect makes them and one with the oracle's, must give the same
decisions and effects packet for packet (in the same order), the same effects at every tick,
and after every tick the same counters and the same detector state: every window (weights,
score, pending and waiting counts), every pending probe in its queue, every index entry.

Fed: every shared capture under four policies, and generated scan traffic (portscans and
sweeps of IPv4 and IPv6 hosts, SYNs answered by SYN+ACK, by a reset or not at all, used
connections, retransmissions, UDP probes refused by ICMP unreachable, answered or unanswered,
ICMP echo and timestamp sweeps, bare ACK and SCTP probes, traceroute, multicast and forged
ICMP errors, our own `reject`), bursty enough that the queue of pending probes is full (`set
detect-probes`: its oldest weighed early or forgotten), keys are evicted (`set
detect-memory`) and keys reach their cap of waiting probes.

The oracle shares ips/detect/common.py with the code under test: what changed there
(`Detector.drop_finished_windows`) is held to the loop it replaced on its own, below."""

from __future__ import annotations

import random
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
from packets import ping, tcp, udp
from scan_oracle.oracle_detectors import Detectors as OracleDetectors
from test_fastpath_differential import plain as differential_plain

from ips.core import craft
from ips.core.build import build_packet
from ips.core.decode import decode_l3
from ips.core.events import FlowEnd
from ips.core.packet import PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, Packet
from ips.detect.detectors import Detectors
from ips.engine import Engine, Meta
from ips.io.pcap import read_capture
from ips.policy.resolve import load_policy_text

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = (ROOT / "policies" / "gateway.rules").read_text()

# Every scan detector, small thresholds and windows, and the smallest caps: the queue of
# pending probes (16) is full most of the time and windows are evicted (16 keys).
EVERYTHING = """\
table banned dynamic timeout 1h
set default accept
set detect-probes 16
set detect-memory 16
drop from @banned
detect portscan ports 6 within 20s block 10m
detect sweep hosts 8 within 20s alert
detect ackscan ports 5 within 20s
detect slowscan ports 10 hosts 12 distributed 6 within 1h
detect stealth
detect synflood rate 50/s per dst limit
detect udpflood rate 80/s per src limit
detect reflection
"""

# First packets refused (no flow: answers matched through the index), some by our own
# `reject` (a failed probe at once), an ignored source range, blocks by every scan detector.
REFUSING = """\
table banned dynamic timeout 1h
set default drop
set detect-probes 40
set detect-memory 64
drop from @banned
reject proto tcp to port { 23, 25, 8000-8010 }
reject proto udp to port 161
accept proto tcp to port { 22, 80, 443 }
accept proto tcp from port { 22, 80, 443 }
accept proto udp to port 53
accept proto icmp
detect portscan ports 8 within 30s ignore { 192.0.2.0/24 }
detect sweep hosts 10 within 30s
detect ackscan ports 6 within 30s block 5m
detect slowscan ports 12 hosts 14 within 2h block 1h
"""

# The scan detectors at their defaults, and their default queue: no cap is reached.
DEFAULTS = """\
table banned dynamic timeout 1h
set default accept
detect portscan
detect sweep
detect ackscan
"""

POLICIES = {
    "gateway": GATEWAY,
    "everything": EVERYTHING,
    "refusing": REFUSING,
    "defaults": DEFAULTS,
}


# ---- what is compared ---------------------------------------------------------------------------


def plain(value: object) -> object:
    """A comparable form of a decision, an event or a detector's state (the differential
    test's, with a dict's order counted: the detectors evict by it), deep enough for the
    scans' windows of pending probes."""
    return differential_plain(value, ordered=True, limit=8)


def detector_state(detect: Any) -> dict[str, object]:
    """Each detector's counters (what `status` shows) and everything it holds: windows in
    their order (which is eviction order), pending probes in their queue, the index of
    answers (in its order too: its order is that of the probes it was filed for), and the
    long window. A scan detector's `slow` is compared as the detector it is. A flood's
    `oldest_use` is left out: a bound on when its tick has work, which the tick makes exact
    only when it runs (the oracle's Detectors.tick runs every detector's, ips/detect's skips
    a detector with nothing due: tests/pure/test_tick_due.py holds that to the same state).
    A scan's `unreported` (what a quiet resolve reported after all) is not the oracle's."""
    left_out = ("spec", "slow", "oldest_use", "unreported")
    return {
        name: (
            det.stats(),
            plain({k: v for k, v in vars(det).items() if k not in left_out}),
        )
        for name, det in detect.by_name.items()
    }


def engine_state(engine: Engine) -> dict[str, object]:
    return {
        "stats": plain(engine.stats.__dict__),
        "hits": [rule.hits for rule in engine.policy.rules],
        "detectors": detector_state(engine.detect),
        "banned": {name: dict(t.members) for name, t in engine.tables.items()},
        "flows": sorted(repr(plain(f)) for f in engine.flows.flows()),
    }


class Twin:
    """An engine with ips/detect's detectors and one with the oracle's, fed together."""

    def __init__(self, policy_text: str) -> None:
        self.new = Engine(load_policy_text(policy_text, "t.rules"), fast=False)
        self.old = Engine(load_policy_text(policy_text, "t.rules"), fast=False)
        assert isinstance(self.new.detect, Detectors)
        self.old.detect = OracleDetectors(self.old.policy.policy, None, self.old.shards)  # type: ignore[assignment]
        self.packets = 0
        self.effects = 0
        self.next_tick: float | None = None

    def handle(self, data: bytes, meta: Meta, now: float) -> None:
        self.packets += 1
        want = self.old.handle(data, meta, now)
        got = self.new.handle(data, meta, now)
        self.effects += len(want.effects)
        assert plain(got) == plain(want), (self.packets, now, data.hex())
        if self.next_tick is None:
            self.next_tick = now + 1.0
        elif now >= self.next_tick or now < self.next_tick - 2.0:  # (a capture that goes back)
            self.tick(now)
            self.next_tick = now + 1.0

    def tick(self, now: float) -> None:
        want, got = self.old.tick(now), self.new.tick(now)
        # FlowEnds come in the order of a set of flows (the timer wheel's), which no two
        # engines share; everything else in the order it was made.
        assert sorted(repr(plain(e)) for e in got if isinstance(e, FlowEnd)) == sorted(
            repr(plain(e)) for e in want if isinstance(e, FlowEnd)
        )
        others = [e for e in want if not isinstance(e, FlowEnd)]
        self.effects += len(others)
        assert plain([e for e in got if not isinstance(e, FlowEnd)]) == plain(others), now
        self.check_state()

    def check_state(self) -> None:
        assert engine_state(self.new) == engine_state(self.old)

    def finish(self, now: float) -> None:
        for later in (now + 1.0, now + 2.5, now + 30.0):  # every pending probe weighed
            self.tick(later)


# ---- the shared captures ------------------------------------------------------------------------


def shared_captures(pcaps_dir: Path) -> list[Path]:
    return sorted(p for p in pcaps_dir.glob("*") if p.suffix in (".pcap", ".pcapng"))


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_every_shared_capture_gives_what_the_old_bookkeeping_gave(
    pcaps_dir: Path, policy: str
) -> None:
    twin = Twin(POLICIES[policy])
    metas: dict[int, Meta] = {}
    last = 0.0
    for path in shared_captures(pcaps_dir):
        with read_capture(path) as reader:
            for rec in reader:
                meta = metas.get(rec.linktype)
                if meta is None:
                    meta = metas[rec.linktype] = Meta(linktype=rec.linktype)
                twin.handle(rec.data, meta, rec.timestamp)
                last = max(last, rec.timestamp)
    twin.finish(last)
    assert twin.packets > 1000


# ---- generated scan traffic ---------------------------------------------------------------------

SCANNERS = ["10.0.0.66", "10.0.0.67", "2001:db8::66", "192.0.2.9", "10.0.0.68"]
CLIENTS = ["10.0.0.20", "10.0.0.21", "2001:db8::20"]
TARGETS4 = [f"10.0.1.{i}" for i in range(1, 31)]
TARGETS6 = [f"2001:db8:1::{i:x}" for i in range(1, 16)]
PORTS = [21, 22, 23, 25, 53, 80, 110, 161, 443, 445, 3389, 8000, 8005, 8080, 5353]
SYN, SYN_ACK, ACK, RST, RST_ACK, PSH_ACK = 0x02, 0x12, 0x10, 0x04, 0x14, 0x18


def _target(rng: random.Random, src: str) -> str:
    if ":" in src:
        return rng.choice(TARGETS6 + ["ff02::1"] * (rng.random() < 0.05))
    extra = ["224.0.0.251", "255.255.255.255", "127.0.0.1"] if rng.random() < 0.05 else []
    return rng.choice(TARGETS4 + extra)


def _sctp(src: str, dst: str, sport: int, dport: int) -> bytes:
    header = struct.pack("!HHII", sport, dport, 0, 0)
    return build_packet(PROTO_SCTP, src, dst, payload=header + bytes(16))


def _unreachable(probe: bytes) -> bytes | None:
    pkt = decode_l3(probe)
    assert isinstance(pkt, Packet)
    return craft.icmp_unreachable_for(pkt, code=3)


def _reset(probe: bytes) -> bytes | None:
    pkt = decode_l3(probe)
    assert isinstance(pkt, Packet)
    return craft.tcp_reset_for(pkt)


def scan_story(seed: int, steps: int) -> list[tuple[float, bytes]]:
    """Probes and what answers them (or not), in time order: bursts of probes a few tenths
    of a millisecond apart, pauses past EARLY and past GRACE."""
    rng = random.Random(seed)
    victims = {src: _target(rng, src) for src in SCANNERS}  # each scanner's host of the day
    events: list[tuple[float, int, bytes]] = []
    t = 1_700_000_000.0

    def at(when: float, data: bytes | None) -> None:
        if data is not None:
            events.append((when, len(events), data))

    for _ in range(steps):
        t += rng.choice((0.0002, 0.0002, 0.0002, 0.001, 0.01, 0.05, 0.3, 1.2, 2.5))
        scanner = rng.random() < 0.7
        src = rng.choice(SCANNERS if scanner else CLIENTS)
        if scanner and rng.random() < 0.02:
            victims[src] = _target(rng, src)
        dst = victims[src] if scanner and rng.random() < 0.6 else _target(rng, src)
        sport = rng.randrange(30000, 30400) if scanner else rng.randrange(40000, 60000)
        dport = rng.choice(PORTS) if rng.random() < 0.6 else rng.randrange(1, 1024)
        later = t + rng.choice((0.0001, 0.001, 0.05, 0.8, 1.5, 2.2, 3.0))
        what = rng.choice(("syn",) * 5 + ("udp",) * 2 + ("ping", "ack", "ack", "sctp", "forged"))
        if scanner and rng.random() < 0.04:
            what = "burst"
        if what == "burst":  # nmap at full speed: many ports of its victim, or many hosts
            hosts = rng.random() < 0.4
            flags = rng.choice((SYN, SYN, ACK))
            for k in range(rng.randrange(10, 60)):
                t += rng.choice((0.0002, 0.001, 0.02))
                host = _target(rng, src) if hosts else dst
                port = dport if hosts else 1 + (dport + k) % 1024
                at(t, tcp(src, host, sport, port, flags=flags))
                if rng.random() < 0.3:
                    at(t + 0.001, tcp(host, src, port, sport, flags=RST_ACK))
        elif what == "syn":
            probe = tcp(src, dst, sport, dport, flags=SYN)
            at(t, probe)
            fate = rng.choice(("silent", "silent", "rst", "synack", "used", "again"))
            if fate == "rst":
                at(later, tcp(dst, src, dport, sport, flags=RST_ACK))
            elif fate == "again":  # retransmitted: the first one stands for it
                at(t + 1.0, probe)
                if rng.random() < 0.5:
                    at(t + 1.1, _reset(probe))
            elif fate in ("synack", "used"):
                at(later, tcp(dst, src, dport, sport, flags=SYN_ACK))
                at(later + 0.0001, tcp(src, dst, sport, dport, flags=ACK))
                if fate == "used":
                    at(
                        later + 0.0002,
                        tcp(src, dst, sport, dport, flags=PSH_ACK, payload=b"q" * 20),
                    )
                    at(
                        later + 0.0003,
                        tcp(dst, src, dport, sport, flags=PSH_ACK, payload=b"a" * 90),
                    )
                elif rng.random() < 0.5:
                    at(later + 0.0002, tcp(src, dst, sport, dport, flags=RST))
        elif what == "udp":
            if rng.random() < 0.05:
                dport = rng.randrange(33434, 33535)  # traceroute: no probe
            probe = udp(src, dst, sport, dport, payload=b"p" * rng.randrange(1, 30))
            at(t, probe)
            fate = rng.choice(("silent", "unreachable", "unreachable", "reply"))
            if fate == "unreachable":
                at(later, _unreachable(probe))
            elif fate == "reply":
                at(later, udp(dst, src, dport, sport, payload=b"r" * 40))
        elif what == "ping":
            v6 = ":" in src
            ident = rng.randrange(1, 200)
            if rng.random() < 0.3 and not v6:  # a timestamp request
                at(t, build_packet(PROTO_ICMP, src, dst, icmp_type=13, icmp_id=ident))
            else:
                at(t, ping(src, dst, ident))
            if rng.random() < 0.5:
                at(later, ping(dst, src, ident, reply=True))
        elif what == "ack":
            size = rng.randrange(0, 2)
            probe = tcp(src, dst, sport, dport, flags=ACK if size == 0 else 0x11)  # ACK, FIN+ACK
            at(t, probe)
            fate = rng.choice(("silent", "rst", "again", "data"))
            if fate == "rst":
                at(later, tcp(dst, src, dport, sport, flags=RST))
            elif fate == "again":
                for k in range(rng.randrange(1, 5)):
                    at(t + 0.5 * (k + 1), probe)
            elif fate == "data":
                at(later, tcp(src, dst, sport, dport, flags=PSH_ACK, payload=b"d" * 50))
        elif what == "sctp":
            probe = _sctp(src, dst, sport, dport)
            at(t, probe)
            if rng.random() < 0.5:
                at(later, _sctp(dst, src, dport, sport))
        else:  # forged errors: a quote of nothing sent, or not to the sender of the quote
            quoted = udp(dst, rng.choice(TARGETS4 if ":" not in src else TARGETS6), 5, 7)
            error = _unreachable(udp(src, dst, sport, dport))
            at(t, error if rng.random() < 0.5 else _unreachable(quoted))
            proto = PROTO_ICMPV6 if ":" in src else PROTO_ICMP
            at(t, build_packet(proto, dst, src, icmp_type=3 if proto == PROTO_ICMP else 1))
    events.sort()
    return [(when, data) for when, _, data in events]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("policy", ["everything", "refusing", "gateway", "defaults"])
def test_generated_scans_give_what_the_old_bookkeeping_gave(policy: str, seed: int) -> None:
    twin = Twin(POLICIES[policy])
    meta = Meta(iif="lan0", oif="dmz0")
    story = scan_story(seed, 2500)
    for when, data in story:
        twin.handle(data, meta, when)
    twin.finish(story[-1][0])
    stats = twin.new.detect.stats()  # type: ignore[union-attr]
    assert twin.effects > 0 and stats["portscan"]["blocks"] > 0  # scans were found
    if policy in ("everything", "refusing"):
        assert stats["sweep"]["alerts"] + stats["sweep"]["blocks"] > 0
        assert stats["ackscan"]["alerts"] > 0 and stats["slowscan"]["alerts"] > 0
    if policy == "everything":  # the queue of pending probes full, keys evicted
        for name in ("portscan", "sweep"):
            assert stats[name]["probes_early"] > 0 and stats[name]["probes_dropped"] > 0
        assert stats["portscan"]["evicted"] > 0
    if policy == "refusing":  # keys at their cap of waiting probes
        assert stats["portscan"]["probes_skipped"] + stats["sweep"]["probes_skipped"] > 0


def test_the_oracle_is_the_frozen_copy() -> None:
    """The twin's old engine runs tests/scan_oracle's code, not ips/detect's."""
    twin = Twin(EVERYTHING)
    assert type(twin.old.detect).__module__ == "scan_oracle.oracle_detectors"
    assert type(twin.old.detect.by_name["portscan"]).__module__ == "scan_oracle.oracle_scan"  # type: ignore[union-attr]
    assert type(twin.new.detect.by_name["portscan"]).__module__ == "ips.detect.scan"  # type: ignore[union-attr]


# ---- windows that end ---------------------------------------------------------------------------


class _Window:
    __slots__ = ("start",)

    def __init__(self, start: float) -> None:
        self.start = start


def _drop_one_by_one(entries: dict[int, _Window], horizon: float) -> None:
    """What Detector.drop_finished_windows did before (the oracle): the first key, again
    after each deletion."""
    while entries:
        key = next(iter(entries))
        if entries[key].start >= horizon:
            break
        del entries[key]


@pytest.mark.parametrize("ordered", [False, True])
def test_finished_windows_go_as_they_went_one_by_one(ordered: bool) -> None:
    """Detector.drop_finished_windows (ips/detect/common.py, shared by the oracle) against
    the loop it replaced: windows started at times that go back now and then, renewed
    (moved to the end), evicted from the front, expired with every horizon."""
    rng = random.Random(7)
    detector = Engine(load_policy_text(EVERYTHING, "t.rules"), fast=False).detect.by_name["stealth"]  # type: ignore[union-attr]
    detector.within = 10.0  # type: ignore[attr-defined]
    kind = OrderedDict if ordered else dict
    got: dict[int, _Window] = kind()
    want: dict[int, _Window] = kind()
    now = 0.0
    for step in range(20_000):
        now += rng.choice((0.0, 0.01, 0.1, 1.0, -0.5))
        key = rng.randrange(3000)
        for entries in (got, want):
            entries.pop(key, None)  # a new window: at the end
            entries[key] = _Window(now)
            if len(entries) > 2000:
                del entries[next(iter(entries))]
        if step % rng.choice((1, 7, 500)) == 0:
            detector.drop_finished_windows(got, now)
            _drop_one_by_one(want, now - 10.0)
            assert [(k, w.start) for k, w in got.items()] == [(k, w.start) for k, w in want.items()]
    assert 0 < len(got) < 2000
