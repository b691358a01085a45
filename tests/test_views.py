"""Operator views: `ipsctl flows` (filter, sort, group, JSON/CSV) and `ipsctl top` (a live
terminal view, run in a tmux pseudo-terminal), both through the control socket's read-only
ops — tested as an unprivileged user (uid 65534) against a daemon inline in the lab.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from labkit import ATTACKER, CLIENT, ROOT, SERVER, InlineLab, inline_lab, unique_prefix

from ips.core.build import build_packet
from ips.engine import Engine
from ips.policy.resolve import load_policy_text
from ips.views.flows import FilterError, parse_filter, select_flows
from ips.views.top import TopState, render, sparkline

POLICY = """\
table banned dynamic timeout 1h
set default accept
drop    from @banned
accept  proto tcp to port 80 state new
detect  portscan ports 15 within 60s block 30s
"""

NOBODY = 65534

# Runs ipsctl as uid/gid 65534 (no groups): everything it needs is imported first, as the
# interpreter lives where that user cannot read.
AS_NOBODY = """
import os, sys
import ips.cli, ips.control, ips.daemon, ips.views.top, rich.live
from rich.console import Console
from ips.views.top import TopState, render
with open(os.devnull, "w") as sink:
    Console(file=sink, force_terminal=True).print(render(TopState()))
os.setgroups([]); os.setgid(NOBODY); os.setuid(NOBODY)
sys.argv = ["ipsctl", *sys.argv[1:]]
ips.cli.main()
""".replace("NOBODY", str(NOBODY))


# ---- without a daemon -----------------------------------------------------------------------


def _engine_with_flows() -> Engine:
    engine = Engine(load_policy_text("set default accept\n"))
    t = 100.0
    for i, (src, dst, proto, sport, dport, size, n) in enumerate([
        ("10.0.0.1", "10.0.0.9", 6, 40000, 80, 1000, 5),
        ("10.0.0.1", "10.0.0.9", 6, 40001, 443, 100, 2),
        ("10.0.0.2", "10.0.0.9", 17, 5353, 53, 50, 9),
        ("2001:db8::1", "2001:db8::9", 6, 40002, 80, 3000, 1),
    ]):  # fmt: skip
        for k in range(n):
            pkt = build_packet(proto, src, dst, sport, dport, flags=0x18 if k else 2,
                               payload=b"x" * size)  # fmt: skip
            engine.handle(pkt, now=t + i + k)
    return engine


def test_flows_sorted_filtered_and_grouped() -> None:
    engine = _engine_with_flows()
    flows = engine.flows.flows()
    by_bytes = select_flows(flows, 200.0, top=10)["flows"]
    assert [r["dport"] for r in by_bytes] == [80, 80, 53, 443]  # 5x1040, 1x3060, 9x78, 2x140
    assert by_bytes[0]["packets"] == 5 and by_bytes[0]["duration"] == 4.0
    assert by_bytes[0]["src"] == "10.0.0.1" and by_bytes[0]["proto"] == "tcp"
    by_packets = select_flows(flows, 200.0, sort="packets", top=1)["flows"]
    assert [r["dport"] for r in by_packets] == [53]
    got = select_flows(flows, 200.0, filter_text="proto tcp and dport http")
    assert got["total"] == 2 and {r["src"] for r in got["flows"]} == {"10.0.0.1", "2001:db8::1"}
    got = select_flows(flows, 200.0, filter_text="src 10.0.0.0/24 port 400-500")
    assert [r["dport"] for r in got["flows"]] == [443]
    assert select_flows(flows, 200.0, filter_text="host 2001:db8::9")["total"] == 1
    assert select_flows(flows, 200.0, filter_text="state established")["total"] == 0
    talkers = select_flows(flows, 200.0, group="src")["groups"]
    assert talkers[0] == {"key": "10.0.0.1", "flows": 2, "packets": 7,
                          "bytes": 5 * 1040 + 2 * 140}  # fmt: skip
    ports = select_flows(flows, 200.0, group="port", sort="packets")["groups"]
    assert ports[0]["key"] == "53/udp" and ports[0]["packets"] == 9


@pytest.mark.parametrize(
    ("text", "message"),
    [("proto", "needs a value"), ("proto foo", "unknown protocol"),
     ("port 99999", "0-65535"), ("src 10.0.0.300", "not an address"),
     ("state open", "new or established"), ("colour red", "unknown filter word")],
)  # fmt: skip
def test_bad_filters_say_why(text: str, message: str) -> None:
    with pytest.raises(FilterError, match=message):
        parse_filter(text)


def test_sparkline_scales_to_its_maximum() -> None:
    assert sparkline([0, 5, 10]) == "▁▅█"
    assert sparkline([0, 0]) == "▁▁"
    assert sparkline([]) == ""
    assert len(sparkline(range(100), width=60)) == 60


def test_top_frame_shows_rates_talkers_alerts_and_blocks() -> None:
    replies = iter([100, 400])

    def request(msg: dict) -> dict:
        op = msg["op"]
        if op == "status":
            n = next(replies)
            return {"ok": True, "pid": 1, "uptime": 9,
                    "worker": {"ok": True, "packets": n, "bytes": n * 100, "flows": 3}}  # fmt: skip
        if op == "flows":
            key = "10.0.0.7" if msg["group"] == "src" else "80/tcp"
            return {"ok": True, "groups": [{"key": key, "flows": 2, "packets": 30, "bytes": 9000}]}
        if op == "alerts":
            event = {"src_ip": "10.0.0.66", "dest_ip": "10.0.0.9",
                     "alert": {"category": "portscan", "signature": "many ports probed",
                               "action": "blocked"}}  # fmt: skip
            return {"ok": True, "seq": 1, "alerts": [{"seq": 1, "time": 0, "event": event}]}
        return {"ok": True, "blocks": [{"addr": "10.0.0.66", "detector": "portscan",
                                        "expires_in": 30, "reason": "scan"}]}  # fmt: skip

    state = TopState()
    state.poll(request, now=0.0)
    state.poll(request, now=1.0)
    assert list(state.pps) == [300.0] and list(state.bps) == [300 * 100 * 8.0]
    assert len(state.alerts) == 1  # the same alert twice in the replies: shown once
    from rich.console import Console

    console = Console(width=160, record=True, file=io.StringIO())
    console.print(render(state))
    text = console.export_text()
    for expected in ("packets/s", "300", "10.0.0.7", "80/tcp", "many ports probed",
                     "portscan", "10.0.0.66 > 10.0.0.9", "active blocks (1)"):  # fmt: skip
        assert expected in text, (expected, text)


def test_top_shows_an_error_line_when_the_daemon_is_gone() -> None:
    def request(msg: dict) -> dict:
        raise ConnectionRefusedError("no daemon")

    state = TopState()
    state.poll(request, now=0.0)
    assert "ConnectionRefusedError" in state.error


# ---- the daemon in the lab, seen by an unprivileged user ------------------------------------


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A work dir the unprivileged user can reach (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="ipsctl-views-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def as_nobody(box: InlineLab, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", AS_NOBODY, *args, "--socket", box.socket],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )  # fmt: skip


class Tmux:
    """A tmux server of our own (its own socket name), killed at the end."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["tmux", "-L", self.name, *args], capture_output=True, text=True,
                              timeout=10)  # fmt: skip

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "top").stdout


def test_flows_and_top_as_an_unprivileged_user(open_dir: Path) -> None:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is missing: apt-get install tmux (scripts/setup.sh)")
    with inline_lab(open_dir, "vw") as box:
        box.start_daemon(POLICY)
        # the read-only group, stood in for: anyone may connect (0600 root otherwise)
        os.chmod(box.socket, 0o666)
        for _ in range(2):
            assert box.curl("client", f"http://{SERVER}/").returncode == 0

        out = as_nobody(box, "flows", "--filter", f"src {CLIENT} dport 80", "--json")
        assert out.returncode == 0, out.stderr
        rows = json.loads(out.stdout)["flows"]
        assert len(rows) == 2 and all(r["dst"] == SERVER and r["proto"] == "tcp" for r in rows)
        assert all(r["bytes"] > 0 and r["packets"] >= 3 for r in rows)
        out = as_nobody(box, "flows", "--csv", "--sort", "packets", "--top", "1")
        table = list(csv.DictReader(io.StringIO(out.stdout)))
        assert len(table) == 1 and table[0]["src"] == CLIENT and table[0]["dport"] == "80"
        out = as_nobody(box, "flows")
        assert f"{CLIENT}:" in out.stdout and f"{SERVER}:80" in out.stdout
        out = as_nobody(box, "flows", "--filter", "proto nope")
        assert out.returncode == 2 and "unknown protocol" in out.stderr
        # read-only really: changing anything needs root
        out = as_nobody(box, "blocks", "add", "10.10.1.99")
        assert out.returncode == 1 and "needs root" in out.stderr

        tmux = Tmux(unique_prefix("top").rstrip("-"))
        argv = [sys.executable, "-c", AS_NOBODY, "top", "--socket", box.socket]
        env = f"PYTHONPATH={os.environ.get('PYTHONPATH', ROOT)}"
        started = tmux("new-session", "-d", "-s", "top", "-x", "150", "-y", "50",
                       "env", env, *argv)  # fmt: skip
        assert started.returncode == 0, started.stderr
        try:
            deadline = time.monotonic() + 15
            while "top talkers" not in tmux.screen() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert CLIENT in tmux.screen(), tmux.screen()  # a talker already
            scan = box.lab.popen(
                "attacker",
                ["nmap", "-sS", "-Pn", "-n", "-T4", "--max-retries", "0", "-p", "1-100", SERVER],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                alert_seen = shown = None
                deadline = time.monotonic() + 30
                while shown is None and time.monotonic() < deadline:
                    if alert_seen is None and any(
                        e["event_type"] == "alert" and e["alert"]["category"] == "portscan"
                        for e in box.eve_events()
                    ):
                        alert_seen = time.monotonic()
                    screen = tmux.screen()
                    if "portscan" in screen and ATTACKER in screen:
                        shown = time.monotonic()
                    time.sleep(0.1)
                assert alert_seen is not None and shown is not None, tmux.screen()
                # refreshed every second: on screen within 2 s of the alert being written
                assert shown - alert_seen <= 2.0, (shown - alert_seen, tmux.screen())
            finally:
                scan.wait(40)
            # and the block it made
            deadline = time.monotonic() + 5
            while "active blocks (1)" not in tmux.screen() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert "active blocks (1)" in tmux.screen(), tmux.screen()
        finally:
            tmux("kill-server")
