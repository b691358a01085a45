"""Operator views: `ipsctl flows` (filter, sort, group, JSON/CSV) and `ipsctl top` (a live
terminal view, run in a tmux pseudo-terminal), both through the control socket's read-only
ops — tested as an unprivileged user (uid 65534) against a daemon inline in the lab.
"""

from __future__ import annotations

import io

import pytest

from ips.core.build import build_packet
from ips.engine import Engine
from ips.policy.resolve import load_policy_text
from ips.views.flows import FilterError, parse_filter, select_flows
from ips.views.top import TopState, render, sparkline

# ---- without a daemon -----------------------------------------------------------------------


def _engine_with_flows() -> Engine:
    engine = Engine(load_policy_text("set default accept\n"))
    t = 100.0
    for i, (src, dst, proto, sport, dport, size, n) in enumerate(
        [
            ("10.0.0.1", "10.0.0.9", 6, 40000, 80, 1000, 5),
            ("10.0.0.1", "10.0.0.9", 6, 40001, 443, 100, 2),
            ("10.0.0.2", "10.0.0.9", 17, 5353, 53, 50, 9),
            ("2001:db8::1", "2001:db8::9", 6, 40002, 80, 3000, 1),
        ]
    ):
        for k in range(n):
            pkt = build_packet(
                proto, src, dst, sport, dport, flags=0x18 if k else 2, payload=b"x" * size
            )
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
    assert talkers[0] == {"key": "10.0.0.1", "flows": 2, "packets": 7, "bytes": 5 * 1040 + 2 * 140}
    ports = select_flows(flows, 200.0, group="port", sort="packets")["groups"]
    assert ports[0]["key"] == "53/udp" and ports[0]["packets"] == 9
    assert ports[0]["service"] == "domain"  # IANA's name, for display


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("proto", "needs a value"),
        ("proto foo", "unknown protocol"),
        ("port 99999", "0-65535"),
        ("src 10.0.0.300", "not an address"),
        ("state open", "new or established"),
        ("colour red", "unknown filter word"),
    ],
)
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
            return {
                "ok": True,
                "pid": 1,
                "uptime": 9,
                "worker": {"ok": True, "packets": n, "bytes": n * 100, "flows": 3},
            }
        if op == "flows":
            key = "10.0.0.7" if msg["group"] == "src" else "80/tcp"
            return {"ok": True, "groups": [{"key": key, "flows": 2, "packets": 30, "bytes": 9000}]}
        if op == "alerts":
            event = {
                "src_ip": "10.0.0.66",
                "dest_ip": "10.0.0.9",
                "alert": {
                    "category": "portscan",
                    "signature": "many ports probed",
                    "action": "blocked",
                },
            }
            return {"ok": True, "seq": 1, "alerts": [{"seq": 1, "time": 0, "event": event}]}
        return {
            "ok": True,
            "blocks": [
                {"addr": "10.0.0.66", "detector": "portscan", "expires_in": 30, "reason": "scan"}
            ],
        }

    state = TopState()
    state.poll(request, now=0.0)
    state.poll(request, now=1.0)
    assert list(state.pps) == [300.0] and list(state.bps) == [300 * 100 * 8.0]
    assert len(state.alerts) == 1  # the same alert twice in the replies: shown once
    from rich.console import Console

    console = Console(width=160, record=True, file=io.StringIO())
    console.print(render(state))
    text = console.export_text()
    for expected in (
        "packets/s",
        "300",
        "10.0.0.7",
        "80/tcp",
        "many ports probed",
        "portscan",
        "10.0.0.66 > 10.0.0.9",
        "active blocks (1)",
    ):
        assert expected in text, (expected, text)


def test_top_shows_an_error_line_when_the_daemon_is_gone() -> None:
    def request(msg: dict) -> dict:
        raise ConnectionRefusedError("no daemon")

    state = TopState()
    state.poll(request, now=0.0)
    assert "ConnectionRefusedError" in state.error


# ---- the daemon in the lab, seen by an unprivileged user ------------------------------------
