"""CPU per packet of the lab bench's floods and pings through Engine.handle, in-process.

The lab bench (bench/lab.py) sends, through the gateway, a 64-byte UDP flood of a few
one-way flows (every packet "UDP of a flow not answered": `detect udpflood` counts it) and
a ping (ICMP echo under the policy's `limit … per src else drop`, counted by `detect
icmpflood`). This replays the same kinds of packets, in memory, through an engine with the
bench policy (gateway.rules as bench/lab.py changes it, offload off), with the compiled fast
path and without it (Engine(fast=False)), in interleaved rounds: the median CPU time per
packet of each, and the share of packets the fast path decided. `ping-cold`: the wall time
of one ping packet after the caches were flushed (a 32 MB read), as the first packet after
an idle gap finds them — what a ping through the gateway pays.

    .venv/bin/python bench/fastpath_floods.py [--packets 200000] [--rounds 5] [--json]

Nothing here is timed in a test: speed lives in bench/. The machine may be shared: the
figures are CPU time of this thread (time.thread_time), medians of the rounds.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from ips.core.build import build_packet
from ips.core.packet import PROTO_ICMP, PROTO_UDP
from ips.engine import Engine, Meta
from ips.policy.resolve import load_policy_text

ROOT = Path(__file__).resolve().parents[1]
META = Meta(iif="lan0", oif="dmz0")
REPLY_META = Meta(iif="dmz0", oif="lan0")


def _lab() -> Any:
    spec = importlib.util.spec_from_file_location("bench_lab", ROOT / "bench" / "lab.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_lab"] = mod
    spec.loader.exec_module(mod)
    return mod


def bench_policy_text() -> str:
    lab = _lab()
    text = lab.bench_policy((ROOT / "policies" / "gateway.rules").read_text())
    return "set offload off\n" + text


def udp_flood(n: int) -> list[tuple[float, bytes, Meta]]:
    """4 one-way flows LAN -> DMZ port 5201, 64-byte datagrams, 4 µs apart (250,000/s)."""
    flows = [
        build_packet(
            PROTO_UDP, f"10.10.1.{10 + i}", "10.10.2.10", 40000 + i, 5201, payload=b"x" * 36
        )
        for i in range(4)
    ]
    return [(1000.0 + k * 4e-6, flows[k % 4], META) for k in range(n)]


def pings(n: int) -> list[tuple[float, bytes, Meta]]:
    """One ping: echo request and its reply, a request every millisecond (the bench's ping
    sends 100 a second; its limit is 2000/s per source)."""
    req = build_packet(
        PROTO_ICMP, "10.10.1.10", "10.10.2.10", icmp_type=8, icmp_id=77, payload=b"p" * 56
    )
    rep = build_packet(
        PROTO_ICMP, "10.10.2.10", "10.10.1.10", icmp_type=0, icmp_id=77, payload=b"p" * 56
    )
    out: list[tuple[float, bytes, Meta]] = []
    for k in range(n // 2):
        t = 1000.0 + k * 1e-3
        out.append((t, req, META))
        out.append((t + 1e-4, rep, REPLY_META))
    return out


def run(text: str, packets: list[tuple[float, bytes, Meta]], fast: bool) -> tuple[float, float]:
    """(CPU µs per packet, share decided by the fast path) of one pass on a fresh engine."""
    engine = Engine(load_policy_text(text, "bench.rules"), fast=fast)
    handle = engine.handle
    start = time.thread_time()
    for now, data, meta in packets:
        handle(data, meta, now)
    cpu = time.thread_time() - start
    path = engine._fast_path
    share = path.fast_packets / len(packets) if path is not None else 0.0
    return cpu / len(packets) * 1e6, share


def cold_ping(text: str, fast: bool, n: int, evict: bytearray) -> float:
    """Median µs of Engine.handle for one echo request or reply after the caches were
    flushed (a read of all of `evict`, larger than the last-level cache): the first packet after
    an idle gap, as a ping's are. The flow is known (its first exchange is made first)."""
    engine = Engine(load_policy_text(text, "bench.rules"), fast=fast)
    packets = pings(2 * n + 2)
    for now, data, meta in packets[:2]:
        engine.handle(data, meta, now)
    times: list[float] = []
    clock = time.perf_counter
    for now, data, meta in packets[2:]:
        evict.find(b"\x01")  # reads every line of it (memchr): the caches hold it instead
        start = clock()
        engine.handle(data, meta, now)
        times.append(clock() - start)
    return statistics.median(times) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    text = bench_policy_text()
    cases = {"udp64-flood": udp_flood(args.packets), "ping": pings(args.packets)}
    results: dict[str, dict[str, float]] = {}
    for name, packets in cases.items():
        compiled: list[float] = []
        pure: list[float] = []
        share = 0.0
        for r in range(args.rounds):
            order = (True, False) if r % 2 == 0 else (False, True)
            for fast in order:
                us, s = run(text, packets, fast)
                if fast:
                    compiled.append(us)
                    share = s
                else:
                    pure.append(us)
        results[name] = {
            "compiled_us_per_packet": statistics.median(compiled),
            "pure_us_per_packet": statistics.median(pure),
            "fast_share": share,
        }
    # the first packet after an idle gap: caches flushed before each (wall time, one core)
    evict = bytearray(32 << 20)
    compiled, pure = [], []
    for r in range(args.rounds):
        for fast in (True, False) if r % 2 == 0 else (False, True):
            (compiled if fast else pure).append(cold_ping(text, fast, 300, evict))
    results["ping-cold"] = {
        "compiled_us_per_packet": statistics.median(compiled),
        "pure_us_per_packet": statistics.median(pure),
        "fast_share": 1.0,
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        f"{'case':<14} {'compiled µs/pkt':>16} {'pure µs/pkt':>12} {'ratio':>6} {'fast share':>11}"
    )
    for name, r in results.items():
        ratio = r["compiled_us_per_packet"] / r["pure_us_per_packet"]
        print(
            f"{name:<14} {r['compiled_us_per_packet']:>16.3f} {r['pure_us_per_packet']:>12.3f} "
            f"{ratio:>6.2f} {r['fast_share']:>11.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
