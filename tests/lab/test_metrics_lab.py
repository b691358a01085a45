"""Prometheus scrapes the daemon's series in a namespace lab."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import urllib.parse
from pathlib import Path

import pytest
from labkit import ATTACKER, CLIENT, SERVER, InlineLab, inline_lab, wait_until

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


def _free_port(box: InlineLab, node: str) -> int:
    out = box.python(
        node,
        "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])",
    )
    return int(out.stdout)


def _query(box: InlineLab, port: int, promql: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(promql)}"
    # -f: Prometheus answers 503 "Service Unavailable" while it starts; that is "not yet".
    out = box.run("gw", ["curl", "-s", "-f", "-m", "3", url])
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
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{pport}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            got = wait_until(
                lambda: _query(box, pport, 'ipsctl_packets_total{verdict="accept"}'),
                timeout=40,
                every=0.5,
            )
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
            box.run(
                "attacker",
                ["nmap", "-sS", "-Pn", "-n", "-T4", "--max-retries", "0", "-p", "1-100", SERVER],
                timeout=40,
            )
            assert wait_until(lambda: ATTACKER in box.kernel_blocks(), timeout=5)
            assert wait_until(
                lambda: any(
                    float(r["value"][1]) >= 1
                    for r in _query(box, pport, 'ipsctl_alerts_total{category="portscan"}')
                ),
                timeout=10,
                every=0.5,
            )
            assert wait_until(
                lambda: any(
                    float(r["value"][1]) >= 1 for r in _query(box, pport, "ipsctl_blocks_active")
                ),
                timeout=10,
                every=0.5,
            )
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
