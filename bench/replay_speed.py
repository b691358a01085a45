"""Offline replay speed: `ipsctl replay` over a capture of ≥ 1,000,000 packets, on one core.

The capture (made once, then reused; bench/out/ is not committed) is every shared capture of
../shared/pcaps repeated until it holds --packets packets, each repetition k with its
addresses moved (IPv4: the second and third octets XOR k; IPv6: the fifth and sixth bytes),
so that each repetition's flows are new flows, and its times laid after the previous one's
(each capture rebased to start 0.1 s after the last ended). Frames keep their link layer
(Ethernet, VLAN tags included); the few captures of other link types are given an Ethernet
header. Checksums are not fixed (the engine does not read them).

Measured as CPU time of this process (time.process_time: the machine is shared), in
interleaved rounds, each variant once a round; printed: the median over the rounds of
packets/s and of CPU µs per packet, with the lowest and highest round:
  pure             the Python engine alone (Engine(fast=False)), the reader of ips/io/pcap.py
  compiled         the engine with the compiled fast path, the same reader
  compiled+mmap    replay_captures as `ipsctl replay` runs it: the capture mapped, its records
                   parsed and the fast packets judged in compiled code (ips/fast/)
each with application parsing on (the policy's default) and off (`set app-layer off`).

The capture's addresses are not the gateway policy's (10.10.1.0/24 and 10.10.2.0/24), so that
policy refuses 93 % of its packets at their flow's first packet. `--lab` measures beside it,
in the same rounds, the capture of a site that runs the gateway policy: the same packets
with their addresses moved into the lab's networks by `ipsctl mix` (benign initiators in
10.10.1.0/24, responders in 10.10.2.0/24, each flow's timing kept, seed 1; the few records
mix leaves out — not IP, malformed — are not in it), converted to classic pcap, made once
beside the other (replay-N-lab.pcap). The policy accepts most of its flows.

    .venv/bin/python bench/replay_speed.py [--packets 1000000] [--rounds 3] [--policy FILE]
                                           [--variants pure,compiled,compiled+mmap]
                                           [--apps on,off] [--lab] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

from ips.core.decode import decode_frame
from ips.core.packet import LINKTYPE_ETHERNET, Packet
from ips.engine import Engine
from ips.io.pcap import read_capture, write_pcap
from ips.policy.resolve import load_policy_text
from ips.replay import replay_captures

ROOT = Path(__file__).resolve().parents[1]
PCAPS = ROOT.parent / "shared" / "pcaps"
OUT = ROOT / "bench" / "out"
GATEWAY = ROOT / "policies" / "gateway.rules"
_VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)


def _l3_offset(frame: bytes) -> int:
    """Where the IP header starts in an Ethernet frame (after any VLAN tags); -1: not IP."""
    off = 12
    while off + 2 <= len(frame):
        etype = struct.unpack_from("!H", frame, off)[0]
        if etype in _VLAN_TPIDS:
            off += 4
            continue
        return off + 2 if etype in (0x0800, 0x86DD) else -1
    return -1


def _moved(frame: bytearray, k: int) -> None:
    off = _l3_offset(bytes(frame[:64]))
    if off < 0 or off >= len(frame):
        return
    version = frame[off] >> 4
    hi, lo = (k >> 8) & 0xFF, k & 0xFF
    if version == 4 and off + 20 <= len(frame):
        for a in (off + 12, off + 16):
            frame[a + 1] ^= lo
            frame[a + 2] ^= hi
    elif version == 6 and off + 40 <= len(frame):
        for a in (off + 8, off + 24):
            frame[a + 4] ^= lo
            frame[a + 5] ^= hi


def make_capture(path: Path, packets: int) -> int:
    """The repeated capture (see the module's doc); returns its number of packets."""
    base: list[list[tuple[float, bytes]]] = []
    for cap in sorted(PCAPS.glob("*.pcap*")):
        with read_capture(cap) as reader:
            records = list(reader)
        if not records:
            continue
        first = min(r.timestamp for r in records)
        frames = []
        for r in records:
            data = r.data
            if r.linktype != LINKTYPE_ETHERNET:
                pkt = decode_frame(data, r.linktype)
                if pkt.__class__ is not Packet:
                    continue
                etype = 0x0800 if pkt.family == 4 else 0x86DD  # type: ignore[union-attr]
                data = bytes(12) + struct.pack("!H", etype) + pkt.data  # type: ignore[union-attr]
            frames.append((r.timestamp - first, data))
        base.append(frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    now = 1_700_000_000.0
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, LINKTYPE_ETHERNET))
        k = 0
        while written < packets:
            k += 1
            for frames in base:
                end = now
                for rel, data in frames:
                    frame = bytearray(data)
                    _moved(frame, k)
                    ts = now + rel
                    end = max(end, ts)
                    sec = int(ts)
                    usec = round((ts - sec) * 1_000_000) % 1_000_000
                    f.write(struct.pack("<IIII", sec, usec, len(frame), len(frame)))
                    f.write(frame)
                    written += 1
                now = end + 0.1
    return written


LAB_CLIENTS = "10.10.1.0/24"  # policies/gateway.rules' $lan
LAB_SERVERS = "10.10.2.0/24"  # and $dmz


def make_lab_capture(source: Path, path: Path) -> int:
    """`source` with its addresses moved into the lab's networks by `ipsctl mix` (see the
    module's doc), as a classic pcap (the mapped loop reads those); returns its packets."""
    mixed = path.with_suffix(".pcapng")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run(
        [sys.executable, "-m", "ips.cli", "mix", "-i", f"benign={source}", "--ratio", "100",
         "--clients", LAB_CLIENTS, "--servers", LAB_SERVERS, "--timing", "benign=keep",
         "--seed", "1", "--no-progress", "-o", str(mixed)],
        check=True, env=env, stdout=sys.stderr,
    )  # fmt: skip
    try:
        with read_capture(mixed) as reader:
            return write_pcap(path, reader, LINKTYPE_ETHERNET)
    finally:
        for suffix in (".pcapng", ".labels.jsonl", ".labels.packets"):
            mixed.with_suffix(suffix).unlink(missing_ok=True)


def run_once(variant: str, policy_text: str, capture: Path) -> tuple[float, int]:
    """CPU seconds of one replay, and its packets."""
    policy = load_policy_text(policy_text, "gateway.rules")
    engine = Engine(policy, fast=variant != "pure")
    start = time.process_time()
    result = replay_captures(
        policy, [str(capture)], engine=engine, progress=False, mapped=variant == "compiled+mmap"
    )
    return time.process_time() - start, result.packets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--policy", type=Path, default=GATEWAY)
    ap.add_argument("--variants", default="pure,compiled,compiled+mmap")
    ap.add_argument(
        "--apps", default="on,off", help="application parsing, comma-separated: on,off (both)"
    )
    ap.add_argument("--lab", action="store_true", help="also the capture in the lab's networks")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    capture = OUT / f"replay-{args.packets}.pcap"
    if not capture.exists():
        print(f"making {capture} ...", file=sys.stderr)
        made = make_capture(capture, args.packets)
        print(f"  {made} packets, {capture.stat().st_size / 1e6:.0f} MB", file=sys.stderr)
    captures = {"": capture}
    if args.lab:
        lab = OUT / f"replay-{args.packets}-lab.pcap"
        if not lab.exists():
            print(f"making {lab} (ipsctl mix) ...", file=sys.stderr)
            made = make_lab_capture(capture, lab)
            print(f"  {made} packets, {lab.stat().st_size / 1e6:.0f} MB", file=sys.stderr)
        captures["lab "] = lab
    apps = args.apps.split(",")
    if not apps or any(app not in ("on", "off") for app in apps):
        ap.error(f"--apps {args.apps!r}: on, off, or on,off")
    text = args.policy.read_text()
    cases = []
    for where in captures:
        for variant in args.variants.split(","):
            for app in apps:
                cases.append((where, variant, app))
    results: dict[str, list[tuple[float, int]]] = {f"{w}{v} app {a}": [] for w, v, a in cases}
    for r in range(args.rounds):
        order = cases if r % 2 == 0 else list(reversed(cases))
        for where, variant, app in order:
            policy_text = text + ("\nset app-layer off\n" if app == "off" else "")
            cpu, n = run_once(variant, policy_text, captures[where])
            results[f"{where}{variant} app {app}"].append((cpu, n))
            print(f"round {r + 1} {where}{variant:<14} app {app:<3} {n / cpu:>10,.0f} packets/s "
                  f"{cpu / n * 1e6:6.2f} µs/packet", file=sys.stderr)  # fmt: skip
    table = {}
    for name, runs in results.items():
        rates = [n / cpu for cpu, n in runs]
        table[name] = {
            "packets": runs[0][1],
            "packets_per_s": statistics.median(rates),
            "low": min(rates),
            "high": max(rates),
            "cpu_us_per_packet": statistics.median(cpu / n * 1e6 for cpu, n in runs),
        }
    if args.json:
        print(json.dumps(table, indent=2))
        return
    names = " and ".join(c.name for c in captures.values())
    print(f"capture {names}, policy {args.policy.name}, {args.rounds} rounds, CPU time")
    print(f"{'variant':<32} {'packets/s':>12} {'µs/packet':>10}  (low – high)")
    for name, row in table.items():
        print(
            f"{name:<32} {row['packets_per_s']:>12,.0f} {row['cpu_us_per_packet']:>10.2f}"
            f"  ({row['low']:,.0f} – {row['high']:,.0f})"
        )


if __name__ == "__main__":
    main()
