"""Hostile packets: generated inputs through the decoder, the flow tracker and the engine.

Every input goes three ways, and each way has a contract checked on every input:
  decode   decode_l3 / decode_frame return a Packet, a Malformed or None (not IP): no exception
  flows    a FlowTable with a small cap tracks every decoded Packet: no exception, never over
           its cap
  engine   Engine.handle (gateway policy, all six detectors, a small flow cap, tick() as time
           advances): no internal error (stats.errors == 0, so the `set on-error` verdict was
           never needed), every input counted once, and every malformed input counted under
           the reason the decoder gave (engine malformed counts == decoder malformed counts)

Inputs: valid packets of every protocol and family with random fields, the same mutated
(byte flips, truncation, extension, lying length fields: IHL, total length, IPv6 payload
length, TCP data offset, IPv4 options, IPv6 extension chains, fragments), random bytes, and
link-layer frames (Ethernet with VLAN tags, SLL, SLL2, loopback, unknown link types). Sources
are drawn from a wide space, so the flow table and the detectors stay full and evict.

    .venv/bin/python bench/fuzz.py [--inputs 1000000] [--seed 1] [--json]

Exit status 0 when every contract held, 1 with the first violations printed.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ips.core.build import build_packet
from ips.core.decode import decode_frame, decode_l3
from ips.core.flow import FlowTable
from ips.core.packet import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    PROTO_UDPLITE,
    Malformed,
    Packet,
)
from ips.engine import Engine, Meta
from ips.policy.resolve import load_policy_text

ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "policies" / "gateway.rules"
LINKTYPES = (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    LINKTYPE_LOOP,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    4242,
)
PROTOS = (PROTO_TCP, PROTO_UDP, PROTO_ICMP, PROTO_SCTP, PROTO_UDPLITE, 47, 0, 255)
V6_EXT = (0, 43, 44, 51, 60, 135, 59, 50)  # hop-by-hop, routing, fragment, AH, dest, mobility…


@dataclass
class Report:
    """What a run saw. `violations` must be empty."""

    inputs: int = 0
    packets: int = 0  # the decoder gave a Packet
    malformed: Counter[str] = field(default_factory=Counter)  # by the decoder's reason
    not_ip: int = 0
    frames: int = 0  # inputs that went through decode_frame (a link layer)
    verdicts: Counter[str] = field(default_factory=Counter)
    engine_errors: int = 0
    flows_max: int = 0  # the most flows either table held at any check
    flow_cap: int = 0
    detector_tracked_max: int = 0
    detector_cap: int = 0
    seconds: float = 0.0
    rss_mb: float = 0.0
    violations: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        d = dict(self.__dict__)
        d["malformed_total"] = sum(self.malformed.values())
        d["rate"] = round(self.inputs / self.seconds) if self.seconds else 0
        return d


# ---- generators -------------------------------------------------------------------------------


def _addr(rng: random.Random, v6: bool) -> bytes:
    if v6:
        return b"\x20\x01\x0d\xb8" + rng.randbytes(12)
    # mostly the lab's networks (the policy's rules match them), sometimes anything at all
    if rng.random() < 0.7:
        return bytes((10, 10, rng.choice((1, 2)), rng.randrange(256)))
    return rng.randbytes(4)


def valid_packet(rng: random.Random) -> bytes:
    v6 = rng.random() < 0.3
    proto = rng.choice(PROTOS)
    if proto == PROTO_ICMP and v6:
        proto = PROTO_ICMPV6
    icmp_type = rng.choice((0, 3, 5, 8, 11, 13, 17, 128, 129, 1, 135, 255))
    return build_packet(
        proto,
        _addr(rng, v6),
        _addr(rng, v6),
        rng.randrange(65536),
        rng.choice((22, 23, 53, 80, 443, 445, 7, rng.randrange(65536))),
        flags=rng.randrange(256),
        seq=rng.randrange(2**32),
        ack=rng.randrange(2**32),
        icmp_type=icmp_type if proto in (PROTO_ICMP, PROTO_ICMPV6) else None,
        icmp_code=rng.randrange(16),
        icmp_id=rng.randrange(65536),
        payload=rng.randbytes(rng.choice((0, 0, 1, 8, 40, 300))),
        ttl=rng.randrange(256),
    )


def _v6_chain(rng: random.Random) -> bytes:
    """An IPv6 header followed by a chain of extension headers (some lying about lengths)."""
    hops = [rng.choice(V6_EXT) for _ in range(rng.randrange(1, 6))]
    last = rng.choice((PROTO_TCP, PROTO_UDP, PROTO_ICMPV6, 59))
    body = bytearray()
    for i, nh in enumerate(hops):
        nxt = hops[i + 1] if i + 1 < len(hops) else last
        if nh == 44:  # fragment: fixed 8 bytes, offset and M flag random
            body += struct.pack("!BBHI", nxt, 0, rng.randrange(65536), rng.randrange(2**32))
        elif nh == 51:  # AH counts in 4-byte units (+2)
            units = rng.randrange(0, 6)
            body += bytes((nxt, units)) + rng.randbytes(max(0, (units + 2) * 4 - 2))
        else:
            units = rng.randrange(0, 3)
            body += bytes((nxt, units)) + rng.randbytes(6 + units * 8)
    body += rng.randbytes(rng.choice((0, 4, 8, 20, 40)))
    first = hops[0]
    plen = len(body) if rng.random() < 0.8 else rng.randrange(65536)
    hdr = struct.pack("!IHBB16s16s", 6 << 28, plen, first, 64, _addr(rng, True), _addr(rng, True))
    return hdr + bytes(body)


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(8)
        if op == 0 and buf:  # flip bytes
            for _ in range(rng.randrange(1, 5)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 1:  # truncate
            del buf[rng.randrange(len(buf) + 1) :]
        elif op == 2:  # extend with junk
            buf += rng.randbytes(rng.randrange(1, 64))
        elif op == 3 and buf and buf[0] >> 4 == 4:  # IPv4: lie about IHL
            buf[0] = 0x40 | rng.randrange(16)
        elif op == 4 and len(buf) >= 4:  # total length (v4) / flow label+payload len (v6)
            at = 2 if buf[0] >> 4 == 4 else 4
            if len(buf) >= at + 2:
                buf[at : at + 2] = rng.randrange(65536).to_bytes(2, "big")
        elif op == 5 and len(buf) >= 33 and buf[0] >> 4 == 4:  # TCP data offset
            hl = (buf[0] & 15) * 4
            if len(buf) > hl + 12:
                buf[hl + 12] = rng.randrange(256)
        elif op == 6 and len(buf) >= 8 and buf[0] >> 4 == 4:  # fragment fields
            buf[6:8] = rng.randrange(65536).to_bytes(2, "big")
        elif op == 7 and len(buf) >= 20 and buf[0] >> 4 == 4:  # IPv4 options (maybe broken)
            opts = rng.randbytes(rng.choice((4, 8, 12, 40)))
            ihl = min(15, 5 + len(opts) // 4)
            buf = bytearray(bytes((0x40 | ihl,)) + buf[1:20] + opts + buf[20:])
    return bytes(buf)


def link_frame(rng: random.Random, l3: bytes) -> tuple[int, bytes]:
    lt = rng.choice(LINKTYPES)
    v6 = bool(l3) and l3[0] >> 4 == 6
    ethertype = 0x86DD if v6 else 0x0800
    if lt == LINKTYPE_ETHERNET:
        tags = b"".join(
            struct.pack("!HH", rng.choice((0x8100, 0x88A8)), rng.randrange(65536))
            for _ in range(rng.randrange(0, 3))
        )
        head = (
            rng.randbytes(12)
            + tags
            + struct.pack("!H", rng.choice((ethertype, ethertype, 0x0806, 0x8100)))
        )
    elif lt == LINKTYPE_LINUX_SLL:
        head = rng.randbytes(14) + struct.pack("!H", ethertype)
    elif lt == LINKTYPE_LINUX_SLL2:
        head = struct.pack("!H", ethertype) + rng.randbytes(18)
    elif lt == LINKTYPE_NULL:
        head = struct.pack("=I", rng.choice((2, 10, 24, 28, 30, 99)))
    elif lt == LINKTYPE_LOOP:
        head = struct.pack("!I", rng.choice((2, 24, 28, 30, 99)))
    else:
        head = b""
    frame = head + l3
    if rng.random() < 0.3:
        frame = frame[: rng.randrange(len(frame) + 1)]
    return lt, frame


def hostile_input(rng: random.Random) -> tuple[int, bytes]:
    """One input: (link type, bytes)."""
    kind = rng.random()
    if kind < 0.25:
        data = valid_packet(rng)
    elif kind < 0.65:
        data = mutate(rng, valid_packet(rng))
    elif kind < 0.75:
        data = mutate(rng, _v6_chain(rng)) if rng.random() < 0.5 else _v6_chain(rng)
    elif kind < 0.85:
        data = rng.choice((b"\x45", b"\x60", b"")) + rng.randbytes(rng.randrange(0, 80))
    else:
        return link_frame(
            rng, mutate(rng, valid_packet(rng)) if rng.random() < 0.5 else valid_packet(rng)
        )
    return LINKTYPE_RAW, data


# ---- the run ----------------------------------------------------------------------------------


class Harness:
    """The three contracts, checked input by input. `feed` never raises for a contract
    violation: it records it (the first 20), so a run reports them all."""

    def __init__(self, max_flows: int = 1024, detect_memory: int = 2048) -> None:
        text = POLICY.read_text().replace(
            "set malformed drop", f"set malformed drop\nset detect-memory {detect_memory}"
        )
        policy = load_policy_text(text, POLICY.name, base_dir=POLICY.parent)
        self.engine = Engine(policy, max_flows=max_flows, never_block=("10.10.1.1/32",))
        self.flows = FlowTable(max_flows=max_flows // 4)
        self.report = Report(flow_cap=max_flows, detector_cap=detect_memory)
        self.now = 1_000_000.0
        self._meta = {lt: Meta(iif="eth0", linktype=lt) for lt in (*LINKTYPES, LINKTYPE_RAW)}

    def _violation(self, text: str) -> None:
        if len(self.report.violations) < 20:
            self.report.violations.append(text)

    def feed(self, linktype: int, data: bytes) -> None:
        r = self.report
        r.inputs += 1
        self.now += 0.0005  # 2000 inputs a second of simulated time: windows and timeouts run
        try:
            if linktype == LINKTYPE_RAW:
                result: object = decode_l3(data)
            else:
                r.frames += 1
                result = decode_frame(data, linktype)
        except Exception as exc:
            self._violation(f"decoder raised {exc!r} on lt={linktype} {data.hex()}")
            result = "crashed"
        if result is None:
            r.not_ip += 1
        elif isinstance(result, Malformed):
            r.malformed[result.reason] += 1
        elif isinstance(result, Packet):
            r.packets += 1
            try:
                self.flows.track(result, self.now)
            except Exception as exc:
                self._violation(f"flow table raised {exc!r} on {data.hex()}")
        elif result != "crashed":
            self._violation(f"decoder returned {type(result).__name__} on {data.hex()}")
        errors = self.engine.stats.errors
        decision = self.engine.handle(data, self._meta[linktype], self.now)
        if self.engine.stats.errors != errors:
            self._violation(f"engine error (on-error verdict) on lt={linktype} {data.hex()}")
        r.verdicts[decision.verdict] += 1
        if r.inputs % 2000 == 0:
            self.check()

    def check(self) -> None:
        """Tick the engine (about once a simulated second) and check the caps."""
        r = self.report
        try:
            self.engine.tick(self.now)
        except Exception as exc:
            self._violation(f"engine.tick raised {exc!r}")
        self.flows.expire(self.now)
        flows = max(len(self.engine.flows), len(self.flows))
        r.flows_max = max(r.flows_max, flows)
        if len(self.engine.flows) > r.flow_cap or len(self.flows) > self.flows.max_flows:
            self._violation(f"flow table over its cap: {len(self.engine.flows)}")
        det = self.engine.detect
        if det is not None:
            for name, s in det.stats().items():
                r.detector_tracked_max = max(r.detector_tracked_max, s["tracked"])
                if s["tracked"] > s["memory"]:
                    self._violation(f"detector {name} over its memory: {s}")

    def finish(self, seconds: float) -> Report:
        self.check()
        r = self.report
        s = self.engine.stats
        r.engine_errors = s.errors
        r.seconds = round(seconds, 2)
        r.rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        # the engine counts undecodable inputs by reason (malformed, not IP), not as verdicts
        accounted = sum(s.verdicts.values()) + sum(s.malformed.values()) + s.not_ip
        if s.packets != r.inputs or accounted != r.inputs:
            self._violation(
                f"engine counted {s.packets} packets, accounted for {accounted}, "
                f"of {r.inputs} inputs"
            )
        if dict(s.malformed) != dict(r.malformed):
            self._violation(
                f"malformed counts differ: engine {dict(s.malformed)} decoder {dict(r.malformed)}"
            )
        if s.not_ip != r.not_ip:
            self._violation(f"not-IP counts differ: engine {s.not_ip}, decoder {r.not_ip}")
        return r


def run(inputs: int, seed: int = 1, max_flows: int = 1024, detect_memory: int = 2048) -> Report:
    rng = random.Random(seed)
    harness = Harness(max_flows=max_flows, detect_memory=detect_memory)
    start = time.perf_counter()
    for _ in range(inputs):
        harness.feed(*hostile_input(rng))
    return harness.finish(time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    report = run(args.inputs, args.seed)
    d = report.as_dict()
    if args.json:
        print(json.dumps(d, default=dict))
    else:
        print(f"inputs {d['inputs']:,} in {d['seconds']} s ({d['rate']:,}/s), RSS {d['rss_mb']} MB")
        print(
            f"  decoded packets {report.packets:,}, malformed {d['malformed_total']:,} "
            f"(counted by the engine under the same reasons), not IP {report.not_ip:,}, "
            f"link-layer frames {report.frames:,}"
        )
        print(f"  malformed by reason: {dict(report.malformed.most_common())}")
        print(f"  verdicts: {dict(report.verdicts)}; engine errors: {report.engine_errors}")
        print(
            f"  flows: at most {report.flows_max:,} (cap {report.flow_cap:,}); detector keys:"
            f" at most {report.detector_tracked_max:,} (cap {report.detector_cap:,})"
        )
        print("  violations: " + ("none" if not report.violations else ""))
        for v in report.violations:
            print("   ", v)
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
