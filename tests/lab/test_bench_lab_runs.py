"""bench/lab.py and bench/nfq_client.py run for real in a namespace lab."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
from benchkit import BENCH, ROOT, bench_module, run_bench
from labkit import need_root, unique_prefix

from ips.lab import netns


def test_quick_run_measures_kernel_conntrack_and_accept_only(tmp_path: Path) -> None:
    need_root()
    out_json = tmp_path / "lab.json"
    before = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    res = run_bench(
        BENCH,
        "--quick",
        "--seconds",
        "1",
        "--only",
        "kernel,kernel-ct,accept-only",
        "--json",
        str(out_json),
    )
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(out_json.read_text())
    for name in ("kernel", "kernel-ct", "accept-only"):
        v = doc["variants"][name]
        assert v["status"] == "ok", v
        for metric in (
            "tcp_gbps",
            "udp_pps",
            "conn_per_s",
            "conn_par_per_s",
            "ping_p50_us",
            "ping_p99_us",
        ):
            assert v["median"][metric] > 0, (name, metric, v["median"])
        assert v["median"]["ping_p99_us"] >= v["median"]["ping_p50_us"]
    # The accept-only loop really was in the path: the flood went through its queue.
    queued = doc["variants"]["accept-only"]["runs"][0]["detail"]["udp"]["queued"]
    assert sum(queued.values()) > 0
    # …and its CPU time per packet was measured (the kernel variants have no queue: none).
    assert doc["variants"]["accept-only"]["median"]["udp_cpu_us_per_packet"] > 0
    assert "udp_cpu_us_per_packet" not in doc["variants"]["kernel"]["median"]
    assert "queued" not in doc["variants"]["kernel"]["runs"][0]["detail"]["udp"]
    assert "udp_pps accept-only / kernel" in doc["ratios"]
    # kernel-ct: the kernel tracked the bench's connections (the plain kernel variant not)
    assert doc["variants"]["kernel-ct"]["runs"][0]["detail"]["conntrack_entries"] > 0
    assert "conntrack_entries" not in doc["variants"]["kernel"]["runs"][0]["detail"]
    assert "tcp_gbps kernel-ct / kernel" in doc["ratios"]
    # The printed table has a row of figures per variant.
    rows = {ln.split()[0]: ln.split()[1:] for ln in res.stdout.splitlines() if ln.strip()}
    for name in ("kernel", "accept-only"):
        figures = [float(x.replace(",", "")) for x in rows[name][:6]]
        assert all(f > 0 for f in figures), rows[name]
    # Its lab is gone.
    after = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    assert not {n for n in after - before if n.startswith("bl")}


def test_storm_only_measures_connections_and_their_cost(tmp_path: Path) -> None:
    """--storm-only: conn/s at 1 and 16 in flight, and per connection the gateway's CPU
    time and the packets its queue took (the accept-only loop queues every packet of a
    connection: at least its SYN, SYN+ACK, ACK, data and FIN)."""
    need_root()
    out_json = tmp_path / "storm.json"
    res = run_bench(
        BENCH, "--quick", "--seconds", "1", "--only", "accept-only", "--storm-only",
        "--json", str(out_json),
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(out_json.read_text())
    v = doc["variants"]["accept-only"]
    assert v["status"] == "ok", v
    assert v["median"]["conn_per_s"] > 0 and v["median"]["conn_par_per_s"] > 0
    assert "tcp_gbps" not in v["median"] and "udp_pps" not in v["median"]
    for key in ("storm", "storm_parallel"):
        detail = v["runs"][0]["detail"][key]
        assert detail["cpu_us_per_conn"] > 0, detail
        assert detail["queued_per_conn"] >= 5, detail
    assert "gateway CPU us per connection" in res.stdout


NFQ_CLIENT_BENCH = ROOT / "bench" / "nfq_client.py"


def test_nfq_client_bench_runs_its_variants_in_a_lab(tmp_path: Path) -> None:
    """bench/nfq_client.py shares bench/lab.py's machinery: a quick run of one variant per
    client still goes end to end (it once broke when lab_for grew an option)."""
    need_root()
    out_json = tmp_path / "nfq.json"
    res = run_bench(
        NFQ_CLIENT_BENCH,
        "--runs",
        "1",
        "--seconds",
        "1",
        "--only",
        "nfq-accept,nfqnl-engine",
        "--json",
        str(out_json),
    )
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(out_json.read_text())
    for name in ("nfq-accept", "nfqnl-engine"):
        assert doc["median_pps"][name] > 0, doc
        assert doc["median_cpu_us_per_packet"][name] > 0, doc
    # The Engine variant really ran the engine over the flood, and gave it verdicts.
    engine_run = doc["runs"]["nfqnl-engine"][0]
    assert engine_run["worker"]["engine_verdicts"]["accept"] > 0, engine_run


def test_lab_for_refuses_bad_arguments_before_it_brings_a_lab_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An argument lab_for cannot use fails before netns.up, not after it (where it left a
    lab's namespaces and processes behind)."""
    need_root()
    lab = bench_module()
    prefix = unique_prefix("blt")
    monkeypatch.setattr(lab, "unique_prefix", lambda: prefix)
    args = argparse.Namespace(seconds=1.0, fail_mode="closed")  # no nfq_client
    try:
        with pytest.raises(AttributeError, match="nfq_client"), lab.lab_for(args, tmp_path):
            pass
        left = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
        assert not [n for n in left if n.startswith(prefix)]
    finally:
        netns.down(prefix)  # if it did come up: not left behind by this test either
