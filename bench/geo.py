"""Cost of the geo lookups, in-process (µs per lookup, min of repeats), on the installed data.

cached-v4        GeoDb.lookup of 1,024 IPv4 addresses seen before (the LRU answers)
cached-v6        the same for IPv6 addresses
uncached-v4      GeoDb.lookup of IPv4 addresses never seen (scope, both databases, a new entry)
uncached-v6      the same for IPv6 addresses
service-name     service_name(port, proto) of a known port
enrich-flow      the fields of one flow record (ips/geo/enrich.py): both ends' geo objects
                 and the responder's service name, as the EVE flow line's JSON text
                 (Enricher.fields_json), for ends seen before
enrich-flow-dict the same as a dict (Enricher.fields: alerts, `ipsctl flows` rows)
enrich-flow-new  fields_json of flows whose ends were never seen (two uncached lookups)
open             GeoDb.open of the data directory (ms, once)

  .venv/bin/python bench/geo.py [--geo-dir DIR] [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import time
import timeit
from collections.abc import Callable

from ips.geo.db import GeoDb, default_geo_dir
from ips.geo.enrich import Enricher
from ips.geo.services import service_name


def v4(i: int) -> bytes:
    return ipaddress.IPv4Address(0x01000000 + i * 40503).packed  # spread over the space


def v6(i: int) -> bytes:
    return ipaddress.IPv6Address(0x2000 << 112 | i * (1 << 96) + i).packed


def per_lookup(fn: Callable[[], None], count: int, repeat: int) -> float:
    return min(timeit.repeat(fn, number=1, repeat=repeat)) / count * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--geo-dir", default=default_geo_dir())
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    start = time.perf_counter()
    db = GeoDb.open(args.geo_dir)
    opened_ms = (time.perf_counter() - start) * 1e3
    if db.missing:
        parser.error(f"no {', '.join(db.missing)} in {args.geo_dir} (run scripts/setup.sh)")
    count = 1024
    hot_v4 = [v4(i) for i in range(count)]
    hot_v6 = [v6(i) for i in range(count)]
    for a in hot_v4 + hot_v6:
        db.lookup(a)
    lookup = db.lookup

    def run(addresses: list[bytes]) -> Callable[[], None]:
        def go() -> None:
            for a in addresses:
                lookup(a)

        return go

    results: dict[str, float] = {
        "cached-v4": per_lookup(run(hot_v4), count, args.repeat),
        "cached-v6": per_lookup(run(hot_v6), count, args.repeat),
    }
    # Never-seen addresses: a fresh slice per repeat, so every lookup misses the cache.
    cold: dict[str, list[float]] = {"uncached-v4": [], "uncached-v6": []}
    for r in range(args.repeat):
        # 10,000-15,119: public addresses mostly (v4 of 100,000 and more lands in 240/4,
        # reserved, which costs only the scope check), none seen by another case.
        base = 10_000 + r * count
        for name, make in (("uncached-v4", v4), ("uncached-v6", v6)):
            fresh = [make(base + i) for i in range(count)]
            start = time.perf_counter()
            for a in fresh:
                lookup(a)
            cold[name].append((time.perf_counter() - start) / count * 1e6)
    results.update({name: min(times) for name, times in cold.items()})
    results["service-name"] = (
        min(timeit.repeat(lambda: service_name(5432, 6), number=100_000, repeat=args.repeat))
        / 100_000
        * 1e6
    )
    # One flow record's fields: a private client and a public server on a registered port.
    enrich = Enricher(db)
    client = ipaddress.IPv4Address("10.1.2.3").packed
    fields_json, fields = enrich.fields_json, enrich.fields
    for a in hot_v4:
        fields_json(6, client, a, 40000, 443, False)

    def flows_json() -> None:
        for a in hot_v4:
            fields_json(6, client, a, 40000, 443, False)

    def flows_dict() -> None:
        for a in hot_v4:
            fields(6, client, a, 40000, 443)

    results["enrich-flow"] = per_lookup(flows_json, count, args.repeat)
    results["enrich-flow-dict"] = per_lookup(flows_dict, count, args.repeat)
    new: list[float] = []
    for r in range(args.repeat):
        # Addresses no other case looked up (those use 0-1,023 and 10,000-15,119).
        ends = [(v4(50_000 + r * count + i), v4(70_000 + r * count + i)) for i in range(count)]
        start = time.perf_counter()
        for src, dst in ends:
            fields_json(6, src, dst, 40000, 443, False)
        new.append((time.perf_counter() - start) / count * 1e6)
    results["enrich-flow-new"] = min(new)
    db.close()
    if args.json:
        print(json.dumps({"us": results, "open_ms": opened_ms}))
    else:
        for name, value in results.items():
            print(f"{name:14} {value:8.3f} µs")
        print(f"{'open':14} {opened_ms:8.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
