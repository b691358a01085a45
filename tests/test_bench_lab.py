"""bench/lab.py: its policies let exactly the bench traffic through, and a quick run in a real
lab measures every figure for the kernel and the accept-only loop (behaviour, never speed)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ips.core.build import build_packet
from ips.core.packet import PROTO_ICMP, PROTO_TCP, PROTO_UDP
from ips.engine import Engine, Meta
from ips.policy.resolve import load_policy_text
from tests.labkit import ROOT, need_root

BENCH = ROOT / "bench" / "lab.py"
META = Meta(iif="lan0", oif="dmz0")


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_lab", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_lab"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _bench_packets(lab) -> list[bytes]:
    """One packet of each kind the bench sends from the client to the server."""
    client = "10.10.1.20"
    out = [build_packet(PROTO_TCP, client, lab.SERVER, 40000, lab.TCP_PORT, flags=0x02)]
    out += [
        build_packet(PROTO_UDP, client, dst, 40000 + i, lab.UDP_PORT + i, payload=b"x" * 64)
        for i, dst in enumerate(lab.UDP_DSTS)
    ]
    out += [
        build_packet(PROTO_TCP, client, dst, 41000, lab.STORM_PORT, flags=0x02)
        for dst in lab.STORM_DSTS
    ]
    out.append(build_packet(PROTO_ICMP, client, lab.SERVER, icmp_type=8, icmp_id=7))
    return out


def _verdicts(text: str, packets: list[bytes]) -> list[str]:
    engine = Engine(load_policy_text(text, "bench.rules"))
    return [engine.handle(p, META, 1.0).verdict for p in packets]


def test_bench_policies_accept_the_bench_traffic_and_only_add_what_they_say() -> None:
    lab = _bench_module()
    base = lab.GATEWAY_RULES.read_text()
    packets = _bench_packets(lab)
    # gateway.rules itself refuses the bench's ports: the bench policy's accept is needed.
    assert "accept" not in _verdicts(base, packets[:-1])
    bench = lab.bench_policy(base)
    assert _verdicts(bench, packets) == ["accept"] * len(packets)
    big = lab.policy_10k(bench)
    base_rules = len(load_policy_text(bench, "b.rules").rules)
    assert len(load_policy_text(big, "big.rules").rules) == base_rules + 10_000
    # The 10,000 rules sit before the accepts and match none of the bench's packets.
    assert _verdicts(big, packets) == ["accept"] * len(packets)
    # What the policy still refuses, it refuses: telnet from the LAN is dropped.
    telnet = build_packet(PROTO_TCP, "10.10.1.20", lab.SERVER, 40000, 23, flags=0x02)
    assert _verdicts(big, [telnet]) == ["drop"]


def test_quick_run_measures_kernel_and_accept_only(tmp_path: Path) -> None:
    need_root()
    out_json = tmp_path / "lab.json"
    before = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    res = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--seconds", "1", "--only",
         "kernel,accept-only", "--json", str(out_json)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(out_json.read_text())
    for name in ("kernel", "accept-only"):
        v = doc["variants"][name]
        assert v["status"] == "ok", v
        for metric in ("tcp_gbps", "udp_pps", "conn_per_s", "ping_p50_us", "ping_p99_us"):
            assert v["median"][metric] > 0, (name, metric, v["median"])
        assert v["median"]["ping_p99_us"] >= v["median"]["ping_p50_us"]
    # The accept-only loop really was in the path: the flood went through its queue.
    queued = doc["variants"]["accept-only"]["runs"][0]["detail"]["udp"]["queued"]
    assert sum(queued.values()) > 0
    assert "queued" not in doc["variants"]["kernel"]["runs"][0]["detail"]["udp"]
    assert "udp_pps accept-only / kernel" in doc["ratios"]
    # The printed table has a row of figures per variant.
    rows = {ln.split()[0]: ln.split()[1:] for ln in res.stdout.splitlines() if ln.strip()}
    for name in ("kernel", "accept-only"):
        figures = [float(x.replace(",", "")) for x in rows[name][:5]]
        assert all(f > 0 for f in figures), rows[name]
    # Its lab is gone.
    after = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    assert not {n for n in after - before if n.startswith("bl")}


@pytest.mark.parametrize("argv", [["--only", "nosuch"], ["--runs", "0"]])
def test_bad_arguments_are_refused_clearly(argv: list[str]) -> None:
    res = subprocess.run(
        [sys.executable, str(BENCH), *argv], capture_output=True, text=True, timeout=60,
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert res.returncode == 2
    assert "nosuch" in res.stderr if "nosuch" in argv else "--runs" in res.stderr
