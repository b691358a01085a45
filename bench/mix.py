"""Cost of `ipsctl mix`, in-process: CPU time and packets a second of a whole mix (both passes),
and the memory it holds (tracemalloc's peak) at two sizes, to show what grows with flows and
what does not grow with packets.

Inputs are built here (tests/pure/test_mix.py's builders): a benign capture of TCP connections
and DNS (about 9 packets a flow) and a SYN flood (one packet a flow). Cases:

  ratio-80/20    --ratio 80/20 over `--packets` packets
  timeline       three windows, 30 % and 60 % ddos
  long-flows     the same packets in flows 10 times longer (memory per packet vs per flow)

  .venv/bin/python bench/mix.py [--packets 100000] [--rounds 3] [--json]

Medians of interleaved rounds. The machine may be loaded by others: CPU time, not wall time.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ips.core.build import build_packet
from ips.core.packet import PROTO_TCP
from ips.io.pcap import write_pcap
from ips.mix.mixer import MixRequest, run_mix
from tests.pure.test_mix import _benign, _synflood

T0 = 1_700_000_000.0


def _long_flows(path: Path, flows: int, packets_per_flow: int, span: float) -> int:
    """TCP flows of many data packets each (few flows, many packets)."""
    rng = random.Random(4)
    records = []
    for i in range(flows):
        t = T0 + rng.random() * span / 2
        client, server = f"192.168.7.{i % 250 + 1}", f"172.16.9.{i % 10 + 1}"
        for k in range(packets_per_flow):
            if k % 2:
                pkt = build_packet(
                    PROTO_TCP, server, client, 443, 30000 + i, flags=0x18, payload=b"y" * 200
                )
            else:
                pkt = build_packet(
                    PROTO_TCP, client, server, 30000 + i, 443, flags=0x18, payload=b"x" * 50
                )
            records.append((t, pkt))
            t += rng.random() * 0.01
    records.sort(key=lambda r: r[0])
    return write_pcap(path, records)


def _cpu(request: MixRequest) -> tuple[float, int, int]:
    cpu = time.process_time()
    report = run_mix(request)
    return time.process_time() - cpu, report.packets, report.flows


def _peak(request: MixRequest) -> tuple[int, int]:
    """tracemalloc's peak of one run (a run apart: tracing slows Python down many times)."""
    tracemalloc.start()
    report = run_mix(request)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, report.flows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-mix-") as tmp:
        d = Path(tmp)
        benign_flows = max(100, args.packets // 9)
        _benign(d / "benign.pcap", benign_flows, 600.0, seed=1)
        _synflood(d / "ddos.pcap", max(100, args.packets // 4), 2000.0, seed=2)
        _long_flows(d / "long.pcap", max(10, benign_flows // 10), 90, 600.0)
        cases = {
            "ratio-80/20": dict(
                inputs=[("benign", str(d / "benign.pcap")), ("ddos", str(d / "ddos.pcap"))],
                ratio="80/20",
                packets=args.packets,
            ),
            "timeline": dict(
                inputs=[("benign", str(d / "benign.pcap")), ("ddos", str(d / "ddos.pcap"))],
                timeline="0-4m benign; 4-7m 30% ddos; 7-10m 60% ddos",
                rate=args.packets / 600,
            ),
            "long-flows": dict(
                inputs=[("benign", str(d / "long.pcap")), ("ddos", str(d / "ddos.pcap"))],
                ratio="80/20",
                packets=args.packets,
            ),
        }
        cpu: dict[str, list[tuple[float, int, int]]] = {name: [] for name in cases}
        out = str(d / "out.pcapng")
        for _ in range(args.rounds):
            for name, kw in cases.items():
                cpu[name].append(_cpu(MixRequest(output=out, seed=1, **kw)))
        peaks = {}
        for name, kw in cases.items():
            half = (
                dict(kw, packets=args.packets // 2)
                if "packets" in kw
                else dict(kw, rate=args.packets / 1200)
            )
            peaks[name] = (
                _peak(MixRequest(output=out, seed=1, **half)),
                _peak(MixRequest(output=out, seed=1, **kw)),
            )
    summary = {}
    for name, runs in cpu.items():
        seconds = statistics.median(r[0] for r in runs)
        packets, flows = runs[0][1], runs[0][2]
        (peak_half, flows_half), (peak, _) = peaks[name]
        summary[name] = {
            "packets": packets,
            "flows": flows,
            "cpu_s": round(seconds, 3),
            "packets_per_s": round(packets / seconds),
            "us_per_packet": round(seconds / packets * 1e6, 2),
            "peak_mib": round(peak / 2**20, 1),
            # What one more flow costs at the peak: the slope between the half and full runs.
            "peak_bytes_per_flow": round((peak - peak_half) / max(flows - flows_half, 1)),
        }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(
        f"{'case':<13}{'packets':>9}{'flows':>8}{'CPU s':>8}{'pkt/s':>9}{'µs/pkt':>8}"
        f"{'peak MiB':>10}{'B/flow':>8}"
    )
    for name, s in summary.items():
        print(
            f"{name:<13}{s['packets']:>9}{s['flows']:>8}{s['cpu_s']:>8}{s['packets_per_s']:>9}"
            f"{s['us_per_packet']:>8}{s['peak_mib']:>10}{s['peak_bytes_per_flow']:>8}"
        )


if __name__ == "__main__":
    main()
