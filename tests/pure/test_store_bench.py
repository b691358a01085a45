"""bench/store.py runs as its docs line says (small sizes) and reports every figure (the
figures are read by people, not asserted: this machine is shared and noisy)."""

from __future__ import annotations

import json
import os

from benchkit import ROOT, run_bench
from store_data import postgres_bin


def test_bench_store_runs_and_reports_every_figure() -> None:
    args = ["--flows", "3000", "--ingest", "2000", "--packet-flows", "500", "--runs", "1",
            "--top-flows", "20000"]  # fmt: skip
    with_pg = postgres_bin() is not None or os.environ.get("CI") == "true"
    if with_pg:
        args.append("--scale-postgres")
    else:
        args.append("--no-postgres")
    proc = run_bench(ROOT / "bench" / "store.py", *args, "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)
    want = {
        "ingest_sqlite_per_s", "scale_flows", "scale_ingest_sqlite_per_s",
        "sqlite_top_rollups_s", "sqlite_top_filtered_s", "sqlite_bytes_per_million_flows",
        "pps_store_off", "pps_store_on", "ratio", "ingest_sqlite_process_per_s",
        "cpu_us_per_packet_store_off", "cpu_us_per_packet_store_on", "cpu_ratio",
        "top_flows", "sqlite_rollup_fill_per_s", "sqlite_top_day_s", "sqlite_top_24h_s",
        "sqlite_rollup_bytes",
    }  # fmt: skip
    if with_pg:
        want |= {"ingest_postgres_per_s", "postgres_top_rollups_s", "postgres_top_filtered_s",
                 "postgres_bytes_per_million_flows", "postgres_top_flows",
                 "postgres_rollup_fill_per_s", "postgres_top_day_s",
                 "postgres_top_24h_s"}  # fmt: skip
    assert set(figures) == want
    assert all(v > 0 for v in figures.values()), figures
