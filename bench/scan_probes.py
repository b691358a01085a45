"""Memory the scan detectors hold under a fast flood of forged sources: N forged SYNs (one per
source, 60,000 a second, so all are sent within GRACE and every probe still waits) through
portscan and sweep with `set default drop` (the flows are refused: only the probes hold them).
Prints the bytes traced by tracemalloc after the flood, the pending probes and the dropped
ones per detector.

    .venv/bin/python bench/scan_probes.py [--sources 60000] [--probes 16384] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import tracemalloc

from ips.core.build import build_packet
from ips.core.packet import PROTO_TCP
from ips.engine import Engine
from ips.policy.resolve import load_policy_text

POLICY = """\
table banned dynamic timeout 1h
set default drop
set detect-probes {probes}
drop from @banned
detect portscan
detect sweep
"""


def run(sources: int, probes: int) -> dict[str, object]:
    policy = load_policy_text(POLICY.format(probes=probes), "probes.rules")
    packets = [
        build_packet(
            PROTO_TCP,
            bytes((11 + i // 65536, i // 256 % 256, i % 256, 1)),
            bytes((10, 0, 0, 10)),
            1024 + i % 60000,
            80,
            flags=0x02,
        )
        for i in range(sources)
    ]
    engine = Engine(policy)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    now = 1000.0
    for p in packets:
        engine.handle(p, now=now)
        now += 1.0 / 60000
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert engine.detect is not None
    stats = engine.detect.stats()
    return {
        "sources": sources,
        "probes_cap": probes,
        "mb": round(held / 1e6, 1),
        "detectors": {
            name: {k: s[k] for k in ("tracked", "pending", "probes_dropped")}
            for name, s in stats.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=60_000)
    parser.add_argument("--probes", type=int, default=16_384)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.sources, args.probes)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.sources} forged sources, detect-probes {args.probes}: {result['mb']} MB held")
        for name, s in result["detectors"].items():  # type: ignore[attr-defined]
            print(f"  {name}: {s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
