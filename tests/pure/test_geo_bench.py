"""bench/geo.py runs as its docs line says and finds a cached lookup under 2 µs."""

from __future__ import annotations

import json

from benchkit import ROOT, run_bench


def test_bench_geo_runs_and_a_cached_lookup_is_cheap() -> None:
    proc = run_bench(ROOT / "bench" / "geo.py", "--repeat", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)["us"]
    assert set(figures) == {
        "cached-v4",
        "cached-v6",
        "uncached-v4",
        "uncached-v6",
        "service-name",
    }
    assert figures["cached-v4"] < 2 and figures["cached-v6"] < 2, figures
