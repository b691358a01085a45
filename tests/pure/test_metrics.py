"""Metrics: the Prometheus endpoint of `ipsctl run --metrics`, scraped by a real Prometheus
server, and the worker-side meter that feeds its latency histogram.

The daemon runs in the lab's gw namespace; its endpoint is bound to 127.0.0.1 there, and the
Prometheus server runs in the same namespace on 127.0.0.1 (started and killed by PID).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ips.core.build import build_packet
from ips.engine import Engine
from ips.policy.resolve import load_policy_text
from ips.sinks.meter import LATENCY_BOUNDS, PacketMeter, RecentAlerts, install_meter
from ips.sinks.prometheus import families, parse_listen

ROOT = Path(__file__).resolve().parents[2]  # the repository
POLICY = """\
table banned dynamic timeout 1h
set default accept
drop    from @banned
drop    proto tcp to port 23 alert "telnet attempt" sid 2000010
accept  proto tcp to port 80 label "web"
detect  portscan ports 15 within 60s block 30s
"""


# ---- the parts, without a daemon ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("9108", ("127.0.0.1", 9108)),
        ("0.0.0.0:9100", ("0.0.0.0", 9100)),
        ("[::1]:9108", ("::1", 9108)),
        ("127.0.0.2:1", ("127.0.0.2", 1)),
    ],
)
def test_listen_address_defaults_to_localhost(text: str, want: tuple[str, int]) -> None:
    assert parse_listen(text) == want


@pytest.mark.parametrize("text", ["", "0", "65536", "localhost:9108", "[::1]9108", "1.2.3:80"])
def test_bad_listen_address_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(text)


def test_run_refuses_a_bad_metrics_address_with_a_usage_error(tmp_path: Path) -> None:
    policy = tmp_path / "p.rules"
    policy.write_text(POLICY)
    out = subprocess.run(
        [sys.executable, "-m", "ips.cli", "run", "--policy", str(policy), "--metrics", "x:80"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert out.returncode == 2
    assert "not an IP address" in out.stderr


def test_meter_counts_every_byte_and_times_one_packet_in_n() -> None:
    engine = Engine(load_policy_text(POLICY))
    meter = install_meter(engine, every=4)
    pkt = build_packet(6, "10.0.0.1", "10.0.0.2", 1234, 80, flags=2)
    for i in range(10):
        assert engine.handle(pkt, now=float(i)).verdict == "accept"  # through the meter
    assert meter.bytes == 10 * len(pkt)
    assert meter.count == 3  # packets 1, 5 and 9
    assert sum(meter.counts) == 3 and meter.sum > 0
    snap = meter.snapshot()
    assert snap["bounds"] == list(LATENCY_BOUNDS) and len(snap["counts"]) == len(LATENCY_BOUNDS) + 1
    with pytest.raises(ValueError):
        PacketMeter(engine.handle, every=0)


def test_meter_buckets_by_upper_bound() -> None:
    meter = PacketMeter(lambda *a: None, bounds=(1e-6, 1e-3))
    for seconds in (5e-7, 1e-6, 2e-6, 1.0):
        meter.observe(seconds)
    assert meter.counts == [2, 1, 1]  # <=1µs (le is inclusive), <=1ms, +Inf


def test_recent_alerts_keep_the_last_ones_numbered() -> None:
    engine = Engine(load_policy_text(POLICY))
    ring = RecentAlerts(size=3)
    for i in range(5):
        d = engine.handle(
            build_packet(6, "10.0.0.9", "10.0.0.2", 4000 + i, 23, flags=2), now=float(i)
        )
        ring.events(d.effects)
    assert ring.seq == 5
    assert [a["seq"] for a in ring.since(0)] == [3, 4, 5]
    assert [a["seq"] for a in ring.since(4)] == [5]
    assert ring.since(0, limit=1)[0]["event"]["alert"]["signature"] == "telnet attempt"


def test_families_from_a_status_snapshot_agree_with_it() -> None:
    status = {
        "ok": True,
        "uptime": 5.0,
        "counters": {"worker_restarts": 1},
        "policy": {"rules": 3},
        "worker": {
            "ok": True,
            "packets": 7,
            "verdicts": {"accept": 5, "drop": 2},
            "bytes": 700,
            "alerts": 3,
            "detectors": {"portscan": {"alerts": 2, "drops": 0}},
            "rules": [{"where": "p.rules:5", "name": "web", "action": "accept", "hits": 4}],
            "flows": 2,
            "flow_table": {"created": 9, "expired": 4, "evicted": 3},
            "malformed": {"tcp.truncated": 1},
            "latency": {
                "bounds": [1e-5, 1e-4],
                "counts": [2, 1, 1],
                "sum": 0.5,
                "count": 4,
                "every": 16,
            },
            "gc": {"collections": {"0": 40, "1": 3, "2": 1}, "frozen": 9000},
        },
        "kernel_hits": {"p.rules:5": 11},
        "blocks": {"active": 1, "kernel_drops": 6, "added_by_detectors": 1, "added_manually": 2},
        "queue": {"queue_number": 3, "queue_total": 1, "queue_dropped": 8, "user_dropped": 9},
        "tap": {"kernel_drops": 12},
    }
    samples = {}
    for fam in families(status):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert samples[("ipsctl_packets_total", (("verdict", "accept"),))] == 5
    assert samples[("ipsctl_packets_total", (("verdict", "reject"),))] == 0  # always there
    assert samples[("ipsctl_alerts_total", (("category", "policy"),))] == 1  # 3 - 2 detector
    assert samples[("ipsctl_alerts_total", (("category", "portscan"),))] == 2
    rule = (("action", "accept"), ("rule", "web"))
    assert samples[("ipsctl_rule_hits_total", (*rule, ("stage", "engine")))] == 4
    assert samples[("ipsctl_rule_hits_total", (*rule, ("stage", "kernel")))] == 11
    assert samples[("ipsctl_flow_evictions_total", ())] == 3
    assert samples[("ipsctl_malformed_packets_total", (("reason", "tcp.truncated"),))] == 1
    assert samples[("ipsctl_malformed_packets_total", (("reason", "ip.truncated"),))] == 0
    # histogram buckets are cumulative
    assert samples[("ipsctl_engine_latency_seconds_bucket", (("le", "0.0001"),))] == 3
    assert samples[("ipsctl_engine_latency_seconds_bucket", (("le", "+Inf"),))] == 4
    assert samples[("ipsctl_engine_latency_seconds_count", ())] == 4
    assert samples[("ipsctl_queue_dropped_total", (("queue", "3"),))] == 8
    assert samples[("ipsctl_worker_gc_collections_total", (("generation", "2"),))] == 1
    assert samples[("ipsctl_tap_kernel_drops_total", ())] == 12
    assert samples[("ipsctl_blocks_added_total", (("by", "manual"),))] == 2
    # a worker that does not answer: the daemon is up, the worker is not, no stale counters
    down = families({**status, "worker": {"ok": False, "error": "timeout"}})
    names = {s.name for fam in down for s in fam.samples}
    assert "ipsctl_packets_total" not in names
    assert {s.value for fam in down for s in fam.samples if s.name == "ipsctl_worker_up"} == {0}
