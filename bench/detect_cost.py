"""What the detectors cost per packet, in-process: bench/engine.py's traffic through its
10-rule policy with no detector, the six of policies/gateway.rules, those plus the detectors
of issue 23 (reflection, ackscan, udpflood and icmpflood per destination), and plus one
`detect volume` line. CPU time of this thread, interleaved rounds (the machine is shared);
each figure the median of the rounds, in µs per packet.

    .venv/bin/python bench/detect_cost.py [--packets 100000] [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

from ips.engine import Engine, Meta
from ips.policy.resolve import load_policy_text

NEW = """
detect udpflood   rate 10000/s per dst  limit
detect icmpflood  rate 500/s  per dst   limit
detect reflection limit
detect ackscan    alert
"""
VOLUME = "detect volume bytes 10MB/s per dst port 443 alert\n"


def _engine_bench():  # type: ignore[no-untyped-def]
    path = Path(__file__).with_name("engine.py")
    spec = importlib.util.spec_from_file_location("bench_engine", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    bench = _engine_bench()
    base = bench.TEN_RULES
    policies = {
        "none": load_policy_text(base, "none.rules"),
        "six": load_policy_text(base + bench.DETECTORS, "six.rules"),
        "six+new": load_policy_text(base + bench.DETECTORS + NEW, "new.rules"),
        "six+new+volume": load_policy_text(base + bench.DETECTORS + NEW + VOLUME, "vol.rules"),
    }
    packets = bench.traffic(args.packets, 2000)
    meta = Meta(iif="eth0", oif="eth1")
    rounds: dict[str, list[float]] = {name: [] for name in policies}
    for r in range(args.rounds):
        order = list(policies) if r % 2 == 0 else list(reversed(policies))
        for name in order:
            engine = Engine(policies[name])
            gc.collect()
            now = 1000.0
            start = time.process_time()
            for p in packets:
                engine.handle(p, meta, now)
                now += 0.00001
            rounds[name].append((time.process_time() - start) / len(packets) * 1e6)
    result = {name: round(statistics.median(v), 3) for name, v in rounds.items()}
    if args.json:
        print(json.dumps({"us_per_packet": result, "rounds": rounds}, indent=2))
    else:
        for name, us in result.items():
            print(f"{name:16s} {us:6.2f} µs/packet  ({us / result['none']:.3f} of none)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
