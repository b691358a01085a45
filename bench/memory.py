"""Memory bounds under a spoofed-source flood, in-process: N distinct sources (1,000,000 by
default) through the engine with every detector, and a trusted address spoofed in between;
one source in a thousand scans for real (3 XMAS packets) and is blocked, within the ban budget.

Each source sends one packet of a mix that feeds every kind of state: SYNs to the web servers
(accepted: flows; synflood per destination; portscan probes), XMAS packets (stealth, per
source), UDP (udpflood per source), ICMP echo through a `limit 20/s per src` rule (token
buckets per source; icmpflood) and probes of many ports (portscan, sweep); every fourth source
also sends an unsolicited NTP answer to a victim of its own (reflection) or a bare ACK
(ackscan), and everything counts for `volume`. Simulated time runs
at 10,000 packets a second, so the flow table's unreplied timeout (30 s) alone would not keep
it under its cap. Every 10,000 packets: tick, and check the flow table, every detector's keys,
the rule limiters, the block table and the ban history against their caps, and the scan
detectors' pending probes against `set detect-probes`.

    .venv/bin/python bench/memory.py [--sources 1000000] [--max-flows 262144]
                                     [--detect-memory 65536] [--json]

Exit status 0 when every bound held (and the trusted address was never banned), 1 otherwise.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from dataclasses import dataclass, field

from ips.core.build import build_packet
from ips.core.packet import PROTO_ICMP, PROTO_TCP, PROTO_UDP
from ips.engine import Engine, Meta
from ips.policy.resolve import load_policy_text

TRUSTED = "10.10.1.20"
SERVERS = 16  # 10.10.2.100-115
RATE = 10_000.0  # simulated packets per second
LIMIT_KEYS = 65536  # TokenBuckets' default cap (ips/core/tables.py)

POLICY = """\
table trusted = {{ {trusted} }}
table banned dynamic timeout 1h
set default drop
set detect-memory {memory}
drop    from @banned
accept  state established
accept  proto tcp to 10.10.2.0/24 port {{ 80, 443 }}
accept  proto udp to 10.10.2.0/24 port 53
accept  proto icmp type echo-request limit 20/s per src else drop
detect portscan   ports 15 within 60s   block 10m
detect sweep      hosts 25 within 60s   block 10m
detect stealth    count 3  within 60s   block 1h
detect icmpflood  rate 200/s  per src   limit
detect synflood   rate 500/s  per dst   limit
detect udpflood   rate 5000/s per src   limit
detect udpflood   rate 10000/s per dst  limit
detect reflection                       limit
detect ackscan                          alert
detect volume     bytes 1MB/s per dst   alert
"""


@dataclass
class Report:
    sources: int = 0
    seconds: float = 0.0
    simulated_seconds: float = 0.0
    max_flows: int = 0
    flows_max: int = 0
    flows_evicted: int = 0
    detect_memory: int = 0
    detector_max: dict[str, int] = field(default_factory=dict)  # most keys each detector held
    detector_evicted: dict[str, int] = field(default_factory=dict)
    limiter_max: int = 0
    banned_max: int = 0
    blocks_added: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    history_max: int = 0
    trusted_banned: bool = False
    rss_start_mb: float = 0.0
    rss_end_mb: float = 0.0
    rss_peak_mb: float = 0.0
    violations: list[str] = field(default_factory=list)


def spoofed(i: int) -> bytes:
    """The i-th distinct source: i times an odd constant mod 2^28 is a bijection, so a million
    sources are a million addresses, scattered over 11.0.0.0-26.255.255.255."""
    return (0x0B000000 + (i * 2654435761) % (1 << 28)).to_bytes(4, "big")


def packet_for(i: int, src: bytes) -> bytes:
    dst = bytes((10, 10, 2, 100 + i % SERVERS))
    kind = i % 6
    if kind in (0, 1):
        return build_packet(PROTO_TCP, src, dst, 1024 + i % 60000, 80, flags=0x02)  # SYN
    if kind == 2:
        return build_packet(PROTO_TCP, src, dst, 1024, 80, flags=0x29)  # XMAS
    if kind == 3:
        return build_packet(PROTO_UDP, src, dst, 1024, 53, payload=b"q" * 20)
    if kind == 4:
        return build_packet(PROTO_ICMP, src, dst, icmp_type=8, icmp_id=i & 0xFFFF)
    return build_packet(PROTO_TCP, src, dst, 2000, 1 + i % 1024, flags=0x02)  # probe


def extra_for(i: int, src: bytes) -> bytes:
    """A second packet of every fourth source: an unsolicited NTP answer to a victim of its
    own (reflection), or a bare ACK of no connection (ackscan)."""
    if i % 8 == 0:
        return build_packet(PROTO_UDP, src, spoofed(i + 1), 123, 40000, payload=b"a" * 400)
    return build_packet(
        PROTO_TCP, src, bytes((10, 10, 2, 100 + i % SERVERS)), 3000, 1 + i % 1024, flags=0x10
    )


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run(sources: int, max_flows: int = 262_144, detect_memory: int = 65_536) -> Report:
    gc.collect()
    r = Report(sources=sources, max_flows=max_flows, detect_memory=detect_memory)
    r.rss_start_mb = round(rss_mb(), 1)
    policy = load_policy_text(POLICY.format(trusted=TRUSTED, memory=detect_memory), "flood.rules")
    engine = Engine(policy, max_flows=max_flows, never_block=("10.10.2.1/32",))
    meta = Meta(iif="wan")
    trusted_xmas = build_packet(PROTO_TCP, TRUSTED, "10.10.2.100", 1024, 80, flags=0x29)
    trusted_addr = bytes((10, 10, 1, 20))
    start = time.perf_counter()
    now = 1_000_000.0
    for i in range(sources):
        now += 1.0 / RATE
        src = spoofed(i)
        engine.handle(packet_for(i, src), meta, now)
        if i % 4 == 0:
            engine.handle(extra_for(i, src), meta, now)
        if i % 1000 == 0:  # some sources scan for real: stealth blocks them, within the budget
            for _ in range(3):
                engine.handle(
                    build_packet(PROTO_TCP, src, b"\x0a\x0a\x02\x64", 1, 80, flags=0x29), meta, now
                )
        if i % 100 == 0:  # the trusted address, spoofed: XMAS (a stealth scan) and probes
            engine.handle(trusted_xmas, meta, now)
        if i % 10_000 == 9_999:
            _check(engine, r, now, trusted_addr)
    _check(engine, r, now, trusted_addr)
    r.seconds = round(time.perf_counter() - start, 1)
    r.simulated_seconds = round(sources / RATE, 1)
    r.flows_evicted = engine.flows.stats.evicted
    blocks = engine.blocks.stats()
    r.blocks_added = int(blocks["added"])  # type: ignore[call-overload]
    r.refused = dict(blocks["refused"])  # type: ignore[call-overload]
    r.rss_end_mb = round(rss_mb(), 1)
    r.rss_peak_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    budget = engine.blocks.budget * (int(r.simulated_seconds // 60) + 1)
    if r.blocks_added > budget:
        r.violations.append(f"{r.blocks_added} blocks > the ban budget ({budget})")
    if engine.stats.errors:
        r.violations.append(f"engine errors: {engine.stats.errors}")
    return r


def _check(engine: Engine, r: Report, now: float, trusted: bytes) -> None:
    engine.tick(now)
    flows = len(engine.flows)
    r.flows_max = max(r.flows_max, flows)
    if flows > r.max_flows:
        r.violations.append(f"flow table {flows} > {r.max_flows}")
    assert engine.detect is not None
    for name, s in engine.detect.stats().items():
        r.detector_max[name] = max(r.detector_max.get(name, 0), s["tracked"])
        r.detector_evicted[name] = s["evicted"]
        if s["tracked"] > s["memory"]:
            r.violations.append(f"detector {name}: {s['tracked']} keys > {s['memory']}")
        if s.get("pending", 0) > s.get("probes", 0):
            r.violations.append(f"detector {name}: {s['pending']} probes > {s['probes']}")
    for rule in engine.policy.rules:
        if rule.limiter is not None:
            keys = len(rule.limiter.buckets)
            r.limiter_max = max(r.limiter_max, keys)
            if keys > rule.limiter.max_keys:
                r.violations.append(f"limiter {keys} keys > {rule.limiter.max_keys}")
    banned = engine.tables["banned"]
    r.banned_max = max(r.banned_max, len(banned.members))
    history = int(engine.blocks.stats()["remembered"])  # type: ignore[call-overload]
    r.history_max = max(r.history_max, history)
    if history > r.detect_memory:
        r.violations.append(f"ban history {history} > {r.detect_memory}")
    if trusted in banned.members:
        r.trusted_banned = True
        r.violations.append("the trusted address was banned")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sources", type=int, default=1_000_000)
    ap.add_argument("--max-flows", type=int, default=262_144)
    ap.add_argument("--detect-memory", type=int, default=65_536)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    r = run(args.sources, args.max_flows, args.detect_memory)
    if args.json:
        print(json.dumps(r.__dict__))
    else:
        print(
            f"{r.sources:,} spoofed sources in {r.seconds} s "
            f"({round(r.sources / max(r.seconds, 1e-9)):,}/s; {r.simulated_seconds} s simulated)"
        )
        print(f"  flows: at most {r.flows_max:,} (cap {r.max_flows:,})")
        print(f"  detector keys, most held (cap {r.detect_memory:,}): {r.detector_max}")
        print(f"  detector evictions: {r.detector_evicted}")
        print(f"  rule limiter keys: at most {r.limiter_max:,} (cap {LIMIT_KEYS:,})")
        print(
            f"  blocks: {r.blocks_added} added (most at once {r.banned_max}), refused "
            f"{r.refused}; ban history at most {r.history_max:,}"
        )
        print(f"  trusted {TRUSTED} banned: {r.trusted_banned}")
        print(
            f"  RSS: {r.rss_start_mb} MB before, {r.rss_end_mb} MB after, peak {r.rss_peak_mb} MB"
        )
        print("  violations: " + ("none" if not r.violations else "; ".join(r.violations[:10])))
    return 1 if r.violations else 0


if __name__ == "__main__":
    sys.exit(main())
