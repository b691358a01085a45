"""Metrics: the Prometheus endpoint of `ipsctl run --metrics`, scraped by a real Prometheus
server, and the worker-side meter that feeds its latency histogram.

The daemon runs in the lab's gw namespace; its endpoint is bound to 127.0.0.1 there, and the
Prometheus server runs in the same namespace on 127.0.0.1 (started and killed by PID).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
from labkit import ATTACKER, CLIENT, ROOT, SERVER, InlineLab, inline_lab, wait_until

from ips.core.build import build_packet
from ips.engine import Engine
from ips.policy.resolve import load_policy_text
from ips.sinks.meter import LATENCY_BOUNDS, PacketMeter, RecentAlerts, install_meter
from ips.sinks.prometheus import families, parse_listen

POLICY = """\
table banned dynamic timeout 1h
set default accept
drop    from @banned
drop    proto tcp to port 23 alert "telnet attempt" sid 2000010
accept  proto tcp to port 80 label "web"
detect  portscan ports 15 within 60s block 30s
"""

# Every series the issue asks for, by name as Prometheus stores it.
SERIES = (
    "ipsctl_packets_total", "ipsctl_bytes_total", "ipsctl_rule_hits_total",
    "ipsctl_alerts_total", "ipsctl_blocks_active", "ipsctl_flows_active",
    "ipsctl_flow_evictions_total", "ipsctl_malformed_packets_total",
    "ipsctl_engine_latency_seconds_bucket", "ipsctl_engine_latency_seconds_count",
    "ipsctl_queue_waiting_packets", "ipsctl_queue_dropped_total",
    "ipsctl_queue_user_dropped_total", "ipsctl_up",
)  # fmt: skip


# ---- the parts, without a daemon ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [("9108", ("127.0.0.1", 9108)), ("0.0.0.0:9100", ("0.0.0.0", 9100)),
     ("[::1]:9108", ("::1", 9108)), ("127.0.0.2:1", ("127.0.0.2", 1))],
)  # fmt: skip
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
        capture_output=True, text=True, cwd=ROOT, timeout=30,
    )  # fmt: skip
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
        d = engine.handle(build_packet(6, "10.0.0.9", "10.0.0.2", 4000 + i, 23, flags=2),
                          now=float(i))  # fmt: skip
        ring.events(d.effects)
    assert ring.seq == 5
    assert [a["seq"] for a in ring.since(0)] == [3, 4, 5]
    assert [a["seq"] for a in ring.since(4)] == [5]
    assert ring.since(0, limit=1)[0]["event"]["alert"]["signature"] == "telnet attempt"


def test_families_from_a_status_snapshot_agree_with_it() -> None:
    status = {
        "ok": True, "uptime": 5.0, "counters": {"worker_restarts": 1}, "policy": {"rules": 3},
        "worker": {
            "ok": True, "packets": 7, "verdicts": {"accept": 5, "drop": 2}, "bytes": 700,
            "alerts": 3, "detectors": {"portscan": {"alerts": 2, "drops": 0}},
            "rules": [{"where": "p.rules:5", "name": "web", "action": "accept", "hits": 4}],
            "flows": 2, "flow_table": {"created": 9, "expired": 4, "evicted": 3},
            "malformed": {"tcp.truncated": 1},
            "latency": {"bounds": [1e-5, 1e-4], "counts": [2, 1, 1], "sum": 0.5, "count": 4,
                        "every": 16},
            "gc": {"collections": {"0": 40, "1": 3, "2": 1}, "frozen": 9000},
        },
        "kernel_hits": {"p.rules:5": 11},
        "blocks": {"active": 1, "kernel_drops": 6, "added_by_detectors": 1, "added_manually": 2},
        "queue": {"queue_number": 3, "queue_total": 1, "queue_dropped": 8, "user_dropped": 9},
        "tap": {"kernel_drops": 12},
    }  # fmt: skip
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


# ---- a real Prometheus scraping the daemon in the lab ---------------------------------------


def _free_port(box: InlineLab, node: str) -> int:
    out = box.python(node, "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); "
                           "print(s.getsockname()[1])")  # fmt: skip
    return int(out.stdout)


def _query(box: InlineLab, port: int, promql: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(promql)}"
    out = box.run("gw", ["curl", "-s", "-m", "3", url])
    if out.returncode != 0 or not out.stdout:
        return []
    reply = json.loads(out.stdout)
    return reply["data"]["result"] if reply.get("status") == "success" else []


def test_prometheus_scrapes_the_series(tmp_path: Path) -> None:
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is missing: apt-get install prometheus (scripts/setup.sh)")
    with inline_lab(tmp_path, "mp") as box:
        mport, pport = _free_port(box, "gw"), _free_port(box, "gw")
        box.start_daemon(POLICY, "--metrics", str(mport))
        # bound to the loopback of gw only (the default address)
        listening = box.gw_text(["ss", "-Hltn", f"sport = :{mport}"])
        assert f"127.0.0.1:{mport}" in listening, listening
        # traffic: web requests (rule "web"), a telnet attempt (a rule alert)
        for _ in range(3):
            assert box.curl("client", f"http://{SERVER}/").returncode == 0
        box.run("attacker", ["curl", "-s", "-m", "1", f"telnet://{SERVER}:23"], timeout=10)
        status = box.status()
        assert status["worker"]["verdicts"].get("accept", 0) > 0

        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: ipsctl\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{mport}']\n"
        )
        log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed below
        prom = box.lab.popen(
            "gw",
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{pport}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            got = wait_until(
                lambda: _query(box, pport, 'ipsctl_packets_total{verdict="accept"}'), timeout=40,
                every=0.5,
            )  # fmt: skip
            assert got, (tmp_path / "prometheus.log").read_text()[-2000:]
            accept = _query(box, pport, 'ipsctl_packets_total{verdict="accept"}')[0]
            assert accept["metric"]["job"] == "ipsctl"
            assert float(accept["value"][1]) >= status["worker"]["verdicts"]["accept"]
            names = {r["metric"]["__name__"] for r in _query(box, pport, '{__name__=~"ipsctl_.+"}')}
            missing = set(SERIES) - names
            assert not missing, sorted(names)
            web = _query(box, pport, 'ipsctl_rule_hits_total{rule="web",stage="engine"}')
            assert web and float(web[0]["value"][1]) >= 3
            policy_alerts = _query(box, pport, 'ipsctl_alerts_total{category="policy"}')
            assert policy_alerts and float(policy_alerts[0]["value"][1]) >= 1
            assert _query(box, pport, 'ipsctl_alerts_total{category="portscan"}')
            sampled = _query(box, pport, "ipsctl_engine_latency_seconds_count")
            assert sampled and float(sampled[0]["value"][1]) >= 1
            queue = _query(box, pport, 'ipsctl_queue_waiting_packets{queue="0"}')
            assert queue, "the queue's line of /proc/net/netfilter/nfnetlink_queue"
            # a scan: the detector's alert and its block show up in the series too
            box.run("attacker", ["nmap", "-sS", "-Pn", "-n", "-T4", "--max-retries", "0",
                                 "-p", "1-100", SERVER], timeout=40)  # fmt: skip
            assert wait_until(lambda: ATTACKER in box.kernel_blocks(), timeout=5)
            assert wait_until(
                lambda: any(float(r["value"][1]) >= 1 for r in
                            _query(box, pport, 'ipsctl_alerts_total{category="portscan"}')),
                timeout=10, every=0.5,
            )  # fmt: skip
            assert wait_until(
                lambda: any(float(r["value"][1]) >= 1 for r in
                            _query(box, pport, "ipsctl_blocks_active")),
                timeout=10, every=0.5,
            )  # fmt: skip
        finally:
            prom.send_signal(signal.SIGTERM)
            try:
                prom.wait(15)
            except subprocess.TimeoutExpired:
                prom.kill()
                prom.wait(5)
            log.close()
        # the client's address never was blocked on the way
        assert CLIENT not in box.kernel_blocks()
        # status shows the same counters the metrics export
        text = box.ipsctl("status").stdout
        assert "latency  engine mean" in text and "flows created" in text
