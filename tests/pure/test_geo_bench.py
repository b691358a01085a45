"""bench/geo.py runs as its docs line says and reports every figure (the figures
themselves are read by people, not asserted: this machine is shared and noisy)."""

from __future__ import annotations

import json

from benchkit import ROOT, run_bench


def test_bench_geo_runs_and_reports_every_figure() -> None:
    proc = run_bench(ROOT / "bench" / "geo.py", "--repeat", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)["us"]
    assert set(figures) == {
        "cached-v4",
        "cached-v6",
        "uncached-v4",
        "uncached-v6",
        "service-name",
        "enrich-flow",
        "enrich-flow-dict",
        "enrich-flow-new",
    }
    assert all(value > 0 for value in figures.values()), figures
