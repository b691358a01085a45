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
  top         --top-flows N (e.g. 10,000,000) flows in time order over one day, from 65,536
              sources and 4,096 destinations, into the rollups only (no raw rows: loading
              10M raw rows takes hours here, and `top` without a filter never reads them):
              `report top --by src` over the whole day (the day rollups) and over 24 h
              not aligned to a day (hours and minutes), median of 5
  packets     Engine.handle over short UDP flows (--packets-per-flow, 2 by default: the worst
              case, a flow record per two packets), flow records handed to no sink vs to the
              daemon's store sink (its writer process, SQLite), interleaved rounds, the
              collector set up as the worker sets it: CPU time per packet of the process
              running the engine and packets/s, medians, and their ratios (goal >= 0.95)

    .venv/bin/python bench/store.py [--flows 1000000] [--ingest 200000] [--no-postgres]
                                    [--scale-postgres] [--top-flows 10000000] [--json]
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
from ips.heap import settle, tune_collector  # noqa: E402
from ips.policy.resolve import load_policy_text  # noqa: E402
from ips.store.backend import Batch, PostgresStore, SqliteStore  # noqa: E402
from ips.store.query import top  # noqa: E402
from ips.store.records import add_rollups  # noqa: E402
from ips.store.sink import StoreSink  # noqa: E402
from ips.store.writer import ProcessStoreSink  # noqa: E402

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


def time_top(
    store: Any, filter_text: str = "", runs: int = 5, since: float = T0, until: float = T0 + DAY
) -> tuple[float, int]:
    times = []
    rows = 0
    for _ in range(runs):
        t = time.perf_counter()
        result = top(store, by="src", metric="bytes", since=since, until=until,
                     filter_text=filter_text, limit=10)  # fmt: skip
        times.append(time.perf_counter() - t)
        rows = len(result["rows"])
    return statistics.median(times), rows


def ingest_process(target: str, records: list[FlowEnd]) -> float:
    """Records/s through the daemon's store sink: handed over, written by its process."""
    sink = ProcessStoreSink(target).start()
    t = time.perf_counter()
    for start in range(0, len(records), 1000):
        sink.events(records[start : start + 1000])
        while sink.stats()["dropped"]:
            raise AssertionError("the bench overfilled the queue")
        while len(sink.queue) > 50_000:  # the writer is behind: wait, do not drop
            time.sleep(0.01)
    while sink.stats()["written"] < len(records):
        time.sleep(0.01)
    elapsed = time.perf_counter() - t
    sink.close(60)
    assert sink.stats()["write_errors"] == 0, sink.stats()
    return len(records) / elapsed


def rollup_rows(n: int, seed: int, t0: float = T0, span: float = DAY) -> Any:
    """n flow rows (schema.FLOW_COLUMNS) in time order over span seconds, as flows() draws
    them, made directly (only the columns the rollups read are filled): batches of them."""
    rng = random.Random(seed)
    rand, randrange, choice = rng.random, rng.randrange, rng.choice
    ports = (443, 80, 53, 22, 8080, 25)
    apps = {443: "tls", 80: "http", 53: "dns", 22: "ssh"}
    batch = []
    for i in range(n):
        end = t0 + span * i / n
        proto = 6 if rand() < 0.7 else 17
        dport = choice(ports)
        src = bytes((10, 1, randrange(256), randrange(256)))
        dst = bytes((93, 184, randrange(16), randrange(256)))
        batch.append((
            end - 30, end, i, 4, proto, src, 40000, dst, dport, apps.get(dport),
            randrange(1, 40), randrange(0, 60), randrange(40, 20_000), randrange(0, 200_000),
            None, "timeout", 1, 0, "out", None, None, None, "", None, None, None, None, None,
            None,
        ))  # fmt: skip
        if len(batch) == 20_000:
            yield batch
            batch = []
    if batch:
        yield batch


def fill_rollups(store: Any, n: int) -> float:
    """The rollups of n flows (rollup_rows), written as the sink writes them; flows/s."""
    t = time.perf_counter()
    done = 0
    for rows in rollup_rows(n, seed=77):
        store.write(Batch({}, add_rollups(rows)))
        done += len(rows)
        if done % 1_000_000 == 0:
            print(f"  {done:,} flows rolled up", file=sys.stderr, flush=True)
    return n / (time.perf_counter() - t)


def top_postgres(url: str, n: int) -> dict[str, Any]:
    """The rollups of n flows into PostgreSQL, then `report top` over the day and over 24 h
    not aligned to it."""
    out: dict[str, Any] = {}
    pg = PostgresStore(fresh_database(url, "top"))
    out["postgres_top_flows"] = n
    out["postgres_rollup_fill_per_s"] = fill_rollups(pg, n)
    out["postgres_top_day_s"], _ = time_top(pg)
    out["postgres_top_24h_s"], _ = time_top(pg, since=T0 + 43_234.5, until=T0 + 43_234.5 + DAY)
    pg.close()
    return out


def packets(n_flows: int, runs: int, per_flow: int = 2, thread: bool = False) -> dict[str, float]:
    """Engine.handle over n_flows UDP flows of per_flow packets, ticks every second of
    packet time; store off vs on (the daemon's ProcessStoreSink; thread: the StoreSink with
    its writer thread, as the daemon had it before), interleaved rounds."""
    policy = load_policy_text("set default accept\n", "bench.rules")
    pkts = []
    for i in range(n_flows):
        client = bytes((10, 2, (i >> 8) & 255, i & 255))
        server = bytes((93, 184, 0, i % 200))
        sport = 1024 + i % 60000
        for k in range(per_flow):
            if k % 2 == 0:
                pkts.append(build_packet(PROTO_UDP, client, server, sport, 53, payload=b"q" * 40))
            else:
                pkts.append(build_packet(PROTO_UDP, server, client, 53, sport, payload=b"a" * 120))
    meta = Meta()
    tune_collector()  # as the worker does (ips/daemon/worker.py)

    def once(with_store: bool) -> tuple[float, float]:
        engine = Engine(policy)
        tmp = tempfile.TemporaryDirectory()
        sink: Any = None
        if with_store and thread:
            sink = StoreSink(SqliteStore(Path(tmp.name) / "s")).start()
        elif with_store:
            sink = ProcessStoreSink(str(Path(tmp.name) / "s")).start()
        settle()
        t, cpu = time.perf_counter(), time.process_time()
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
            # The hand-over thread's work is the worker's CPU too: counted until the last
            # batch is handed over (waiting for the writer process costs this one nothing;
            # the writer thread's rows, rollups and SQLite are this process's CPU).
            sink.close(60)
        used = time.process_time() - cpu
        if sink is not None:
            s = sink.stats()
            assert s["dropped"] == 0 and s["write_errors"] == 0 and not s.get("lost"), s
            assert s["written"] == n_flows, s
        tmp.cleanup()
        return len(pkts) / elapsed, used / len(pkts) * 1e6

    off, on, cpu_off, cpu_on = [], [], [], []
    for _ in range(runs):  # interleaved
        pps, cpu = once(False)
        off.append(pps)
        cpu_off.append(cpu)
        pps, cpu = once(True)
        on.append(pps)
        cpu_on.append(cpu)
    return {
        "pps_store_off": statistics.median(off),
        "pps_store_on": statistics.median(on),
        "ratio": statistics.median(on) / statistics.median(off),
        "cpu_us_per_packet_store_off": statistics.median(cpu_off),
        "cpu_us_per_packet_store_on": statistics.median(cpu_on),
        # Each round's own off/on ratio (its two runs saw the same load), the median of them.
        "cpu_ratio": statistics.median(a / b for a, b in zip(cpu_off, cpu_on, strict=True)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--flows", type=int, default=1_000_000)
    ap.add_argument("--ingest", type=int, default=200_000)
    ap.add_argument("--packet-flows", type=int, default=50_000)
    ap.add_argument("--packets-per-flow", type=int, default=2)
    ap.add_argument("--top-flows", type=int, default=0, help="rollups of N flows, then top")
    ap.add_argument("--thread-sink", action="store_true", help="packets: the writer thread")
    ap.add_argument(
        "--only", choices=("packets", "top", "top-postgres", "ingest"), help="one part alone"
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-postgres", action="store_true")
    ap.add_argument("--scale-postgres", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out: dict[str, Any] = {}
    if args.only in (None, "ingest"):
        records = flows(args.ingest, seed=1)
        with tempfile.TemporaryDirectory() as tmp:
            out["ingest_sqlite_per_s"] = ingest(SqliteStore(Path(tmp) / "s"), records)
        with tempfile.TemporaryDirectory() as tmp:
            out["ingest_sqlite_process_per_s"] = ingest_process(str(Path(tmp) / "s"), records)
    if args.only is None and not args.no_postgres:
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
            if args.top_flows:
                out.update(top_postgres(url, args.top_flows))
    if args.top_flows and args.only == "top-postgres":
        with postgres_server() as url:
            out.update(top_postgres(url, args.top_flows))
    if args.only is None:
        with tempfile.TemporaryDirectory() as tmp:
            store = SqliteStore(Path(tmp) / "s")
            out["scale_flows"] = args.flows
            out["scale_ingest_sqlite_per_s"] = fill(store, args.flows)
            out["sqlite_top_rollups_s"], rows = time_top(store)
            assert rows == 10
            out["sqlite_top_filtered_s"], _ = time_top(store, "proto tcp dport 443", runs=1)
            out["sqlite_bytes_per_million_flows"] = store.size() * 1e6 / args.flows
            store.close()
    if args.top_flows and args.only in (None, "top"):
        with tempfile.TemporaryDirectory() as tmp:
            store = SqliteStore(Path(tmp) / "s")
            out["top_flows"] = args.top_flows
            out["sqlite_rollup_fill_per_s"] = fill_rollups(store, args.top_flows)
            out["sqlite_top_day_s"], rows = time_top(store)
            assert rows == 10
            out["sqlite_top_24h_s"], _ = time_top(store, since=T0 + 43_234.5,
                                                  until=T0 + 43_234.5 + DAY)  # fmt: skip
            out["sqlite_rollup_bytes"] = store.size()
            store.close()
    if args.only in (None, "packets"):
        out.update(packets(args.packet_flows, args.runs, args.packets_per_flow, args.thread_sink))
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k:<36} {v:,.3f}" if isinstance(v, float) else f"{k:<36} {v:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
