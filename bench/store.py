"""The store's figures (docs/store.md): records/s ingested, `report top` time, bytes on
disk, and the engine's packets/s with the store sink on and off.

  ingest      flow records through the StoreSink (row made, batched, written, rollups
              updated) into SQLite and into PostgreSQL (a server this script starts itself,
              as the tests do): records/s, batches of 1,000
  scale       N flows (--flows, 1,000,000 by default) spread over 24 h from 65,536 sources
              and 4,096 destinations into SQLite (and PostgreSQL with --scale-postgres):
              `report top --by src --since 24h` from the rollups (median of 5), the same
              with a --filter (from the raw rows), and the store's bytes on disk per
              million flows
  packets     Engine.handle over short UDP flows (2 packets each), flow records handed to
              no sink vs to a StoreSink with its writer thread (SQLite): packets/s and
              their ratio (goal >= 0.95)

    .venv/bin/python bench/store.py [--flows 1000000] [--ingest 200000] [--no-postgres]
                                    [--scale-postgres] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from store_data import fresh_database, postgres_server  # noqa: E402

from ips.core.build import build_packet  # noqa: E402
from ips.core.events import FlowEnd  # noqa: E402
from ips.core.packet import PROTO_UDP  # noqa: E402
from ips.engine import Engine, Meta  # noqa: E402
from ips.policy.resolve import load_policy_text  # noqa: E402
from ips.store.backend import PostgresStore, SqliteStore  # noqa: E402
from ips.store.query import top  # noqa: E402
from ips.store.sink import StoreSink  # noqa: E402

DAY = 86400.0
T0 = 1_764_547_200.0  # 2025-12-01 00:00 UTC


def flows(n: int, seed: int, t0: float = T0, span: float = DAY) -> list[FlowEnd]:
    """n flow records: sources in 10.1.0.0/16, destinations in 4,096 addresses, TCP/UDP."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        end = t0 + rng.random() * span
        proto = 6 if rng.random() < 0.7 else 17
        dport = rng.choice((443, 80, 53, 22, 8080, 25))
        f = SimpleNamespace(
            flow_id=seed * 10_000_000 + i, family=4, proto=proto,
            src=bytes((10, 1, rng.randrange(256), rng.randrange(256))),
            sport=rng.randrange(1024, 65535),
            dst=bytes((93, 184, rng.randrange(16), rng.randrange(256))), dport=dport,
            first_seen=end - rng.random() * 60, last_seen=end,
            pkts_fwd=rng.randrange(1, 40), pkts_rev=rng.randrange(0, 60),
            bytes_fwd=rng.randrange(40, 20_000), bytes_rev=rng.randrange(0, 200_000),
            replied=True, offloaded=False, app=None, dst_name=None, icmp=-1, iif=None, oif=None,
            app_proto={443: "tls", 80: "http", 53: "dns", 22: "ssh"}.get(dport),
        )  # fmt: skip
        out.append(FlowEnd(f, "timeout", end + 30))  # type: ignore[arg-type]
    return out


def ingest(store: Any, records: list[FlowEnd]) -> float:
    """Records/s through a synchronous StoreSink (batches of 1,000)."""
    sink = StoreSink(store, synchronous=True, batch_size=1000)
    t = time.perf_counter()
    for start in range(0, len(records), 1000):
        sink.events(records[start : start + 1000])
    sink.flush()
    elapsed = time.perf_counter() - t
    assert sink.write_errors == 0, sink.last_error
    return len(records) / elapsed


def fill(store: Any, n: int) -> float:
    chunk = 100_000
    rates = []
    for k in range(0, n, chunk):
        rates.append(ingest(store, flows(min(chunk, n - k), seed=1000 + k // chunk)))
        print(f"  {k + chunk:,} flows written", file=sys.stderr, flush=True)
    return statistics.median(rates)


def time_top(store: Any, filter_text: str = "", runs: int = 5) -> tuple[float, int]:
    times = []
    rows = 0
    for _ in range(runs):
        t = time.perf_counter()
        result = top(store, by="src", metric="bytes", since=T0, until=T0 + DAY,
                     filter_text=filter_text, limit=10)  # fmt: skip
        times.append(time.perf_counter() - t)
        rows = len(result["rows"])
    return statistics.median(times), rows


def packets(n_flows: int, runs: int) -> dict[str, float]:
    """Engine.handle over n_flows 2-packet UDP flows, ticks every second of packet time."""
    policy = load_policy_text("set default accept\n", "bench.rules")
    pkts = []
    for i in range(n_flows):
        client = bytes((10, 2, (i >> 8) & 255, i & 255))
        server = bytes((93, 184, 0, i % 200))
        sport = 1024 + i % 60000
        pkts.append(build_packet(PROTO_UDP, client, server, sport, 53, payload=b"q" * 40))
        pkts.append(build_packet(PROTO_UDP, server, client, 53, sport, payload=b"a" * 120))
    meta = Meta()

    def once(with_store: bool) -> float:
        engine = Engine(policy)
        tmp = tempfile.TemporaryDirectory()
        sink = StoreSink(SqliteStore(Path(tmp.name) / "s")).start() if with_store else None
        t = time.perf_counter()
        now = T0
        next_tick = now + 1.0
        for j, data in enumerate(pkts):
            now = T0 + j * 0.001  # 1,000 packets per second of packet time
            decision = engine.handle(data, meta, now)
            if sink is not None and decision.effects:
                sink.events(decision.effects)
            if now >= next_tick:
                ended = engine.tick(now)
                if sink is not None:
                    sink.events(ended)
                next_tick = now + 1.0
        ended = engine.drain(now + 3600)
        if sink is not None:
            sink.events(ended)
        elapsed = time.perf_counter() - t
        if sink is not None:
            sink.close(60)
            assert sink.dropped == 0 and sink.write_errors == 0, sink.stats()
        tmp.cleanup()
        return len(pkts) / elapsed

    off, on = [], []
    for _ in range(runs):  # interleaved
        off.append(once(False))
        on.append(once(True))
    return {
        "pps_store_off": statistics.median(off),
        "pps_store_on": statistics.median(on),
        "ratio": statistics.median(on) / statistics.median(off),
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--flows", type=int, default=1_000_000)
    ap.add_argument("--ingest", type=int, default=200_000)
    ap.add_argument("--packet-flows", type=int, default=50_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-postgres", action="store_true")
    ap.add_argument("--scale-postgres", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out: dict[str, Any] = {}
    records = flows(args.ingest, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        out["ingest_sqlite_per_s"] = ingest(SqliteStore(Path(tmp) / "s"), records)
    if not args.no_postgres:
        with postgres_server() as url:
            pg = PostgresStore(fresh_database(url, "ingest"))
            out["ingest_postgres_per_s"] = ingest(pg, records)
            pg.close()
            if args.scale_postgres:
                pg = PostgresStore(fresh_database(url, "scale"))
                fill(pg, args.flows)
                out["postgres_top_rollups_s"], _ = time_top(pg)
                out["postgres_top_filtered_s"], _ = time_top(pg, "proto tcp dport 443", runs=1)
                out["postgres_bytes_per_million_flows"] = pg.size() * 1e6 / args.flows
                pg.close()
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "s")
        out["scale_flows"] = args.flows
        out["scale_ingest_sqlite_per_s"] = fill(store, args.flows)
        out["sqlite_top_rollups_s"], rows = time_top(store)
        assert rows == 10
        out["sqlite_top_filtered_s"], _ = time_top(store, "proto tcp dport 443", runs=1)
        out["sqlite_bytes_per_million_flows"] = store.size() * 1e6 / args.flows
        store.close()
    out.update(packets(args.packet_flows, args.runs))
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k:<36} {v:,.3f}" if isinstance(v, float) else f"{k:<36} {v:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
