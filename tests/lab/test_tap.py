"""Tap mode in the lab: `ipsctl run --mode tap --iface lan0` on gw reads copies of the frames
of gw's LAN interface. The same engine and detectors run; nothing is enforced.

Traffic only between the lab's own hosts (attacker 10.10.1.66 -> server 10.10.2.10); every
tool run is bounded in packets and time.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

from labkit import ATTACKER, CLIENT, SERVER, InlineLab, inline_lab, wait_until
from test_attacks import attack_policy

from ips.control import request

NMAP = [
    "nmap",
    "-sS",
    "-Pn",
    "-n",
    "-T4",
    "--max-retries",
    "0",
    "--host-timeout",
    "20s",
    "-p",
    "1-100",
    SERVER,
]
FLOOD = ["hping3", "-1", "-c", "1500", "-i", "u200", SERVER]  # 5000/s for 0.3 s, ICMP echo


def detector_alerts(events: list[dict]) -> list[dict]:
    return [e for e in events if e["event_type"] == "alert" and e["alert"]["category"] != "policy"]


def received(hping_output: str) -> tuple[int, int]:
    m = re.search(r"(\d+) packets transmitted, (\d+) packets received", hping_output)
    assert m, hping_output
    return int(m.group(1)), int(m.group(2))


def flood_then_scan(box: InlineLab) -> tuple[subprocess.CompletedProcess[str], str]:
    flood = box.run("attacker", FLOOD, timeout=30)
    scan = box.run("attacker", NMAP, timeout=40)
    assert scan.returncode == 0, scan.stderr
    return scan, flood.stdout + flood.stderr


def wait_for_detections(box: InlineLab) -> list[dict]:
    def both() -> bool:
        found = {e["alert"]["category"] for e in detector_alerts(box.eve_events())}
        return {"portscan", "icmpflood"} <= found

    assert wait_until(both, timeout=8), box.eve_events()[-5:]
    return detector_alerts(box.eve_events())


def test_tap_detects_what_inline_detects_and_enforces_nothing(tmp_path: Path) -> None:
    policy = attack_policy(tmp_path, icmpflood="rate 200/s per src limit")
    identity = lambda a: (a["alert"]["category"], a["alert"]["signature_id"], a["src_ip"])  # noqa: E731
    with inline_lab(tmp_path, "tap") as box:
        # inline first: the reference
        box.start_daemon(policy)
        inline_scan, inline_flood = flood_then_scan(box)
        inline_alerts = wait_for_detections(box)
        assert ATTACKER in box.kernel_blocks()
        assert box.ipsctl("blocks", "flush").returncode == 0  # else the tap starts with it
        box.stop_daemon()
        box.eve.rename(tmp_path / "inline-eve.json")

        box.start_daemon(policy, "--mode", "tap", "--iface", "lan0")
        tap_scan, tap_flood = flood_then_scan(box)
        tap_alerts = wait_for_detections(box)

        # the same detections, from the same source …
        assert {identity(a) for a in tap_alerts} == {identity(a) for a in inline_alerts}
        # … marked as not enforced
        actions = {a["alert"]["action"] for a in tap_alerts}
        assert "would_drop" in actions and "blocked" not in actions, actions
        assert {a["alert"]["action"] for a in inline_alerts} & {"blocked"}
        blocks = [e for e in box.eve_events() if e["event_type"] == "ipsctl_block"]
        assert blocks and all(b["ipsctl_block"]["enforced"] is False for b in blocks)
        # every sink says so, not only the EVE file: the recent alerts `ipsctl top` shows
        feed = request(box.socket, {"op": "alerts", "since": 0, "limit": 256})
        fed = {a["event"]["alert"]["action"] for a in feed["alerts"]}
        assert "would_drop" in fed and "blocked" not in fed, fed

        # nothing enforced: every echo answered (inline limited them), the scan saw the
        # server's real answers (closed ports, not filtered), the attacker still gets through,
        # and the kernel table has no rule at all (the block set only records)
        sent, got = received(tap_flood)
        assert got >= 0.9 * sent, tap_flood
        inline_sent, inline_got = received(inline_flood)
        assert inline_got < 0.9 * inline_sent, inline_flood
        assert "closed tcp ports" in tap_scan.stdout, tap_scan.stdout
        assert "closed tcp ports" not in inline_scan.stdout, inline_scan.stdout
        assert box.curl("attacker", f"http://{SERVER}/").returncode == 0
        table = json.loads(box.gw_text(["nft", "-j", "list", "table", "inet", "ipsctl"]))
        assert not [o for o in table["nftables"] if "rule" in o or "chain" in o]

        status = box.status()
        assert status["mode"] == "tap"
        tap = status["tap"]
        assert tap["iface"] == "lan0" and tap["frames"] >= 1500
        assert isinstance(tap["kernel_drops"], int) and tap["kernel_packets"] >= tap["frames"]
        verdicts = status["worker"]["verdicts"]
        assert verdicts.get("drop", 0) > 0  # what would have been dropped, counted
        assert "would_drop" in box.ipsctl("status").stdout


def test_tap_enforces_blocks_only_when_the_policy_asks(tmp_path: Path) -> None:
    policy = attack_policy(tmp_path)
    policy.write_text(policy.read_text() + "set tap-blocks enforce\n")
    with inline_lab(tmp_path, "tpe") as box:
        box.start_daemon(policy, "--mode", "tap", "--iface", "lan0")
        box.run("attacker", NMAP, timeout=40)
        assert wait_until(lambda: ATTACKER in box.kernel_blocks(), timeout=5)
        # the block drops in the kernel of the tap host (gw forwards here) …
        assert box.curl("attacker", f"http://{SERVER}/", max_time=2).returncode != 0
        assert box.block_drops() > 0
        # … and nothing else of the policy is in the kernel: only the block rules
        table = json.loads(box.gw_text(["nft", "-j", "list", "table", "inet", "ipsctl"]))
        rules = [o["rule"] for o in table["nftables"] if "rule" in o]
        assert rules and {r.get("comment") for r in rules} == {"ipsctl:blocks"}
        assert box.curl("client", f"http://{SERVER}/").returncode == 0
        blocks = [e for e in box.eve_events() if e["event_type"] == "ipsctl_block"]
        assert blocks and blocks[0]["ipsctl_block"]["enforced"] is True
        # `set tap-blocks report` by apply: the drop rules go, the recorded block stays
        policy.write_text(policy.read_text().replace("enforce", "report"))
        assert box.ipsctl("apply", str(policy)).returncode == 0
        assert box.curl("attacker", f"http://{SERVER}/").returncode == 0
        assert ATTACKER in box.kernel_blocks()


def test_tap_bpf_filter_promiscuous_mode_and_bad_arguments(tmp_path: Path) -> None:
    with inline_lab(tmp_path, "tpb") as box:
        box.start_daemon(
            attack_policy(tmp_path),
            "--mode",
            "tap",
            "--iface",
            "lan0",
            "--bpf",
            "not icmp",
            "--promisc",
        )
        # PACKET_MR_PROMISC counts in the interface's promiscuity (ip -d shows it)
        assert "promiscuity 1" in box.gw_text(["ip", "-d", "link", "show", "lan0"])
        before = box.status()["tap"]["frames"]
        box.run("attacker", ["ping", "-c", "20", "-i", "0.01", "-q", SERVER])
        after_ping = box.status()["tap"]["frames"]
        assert box.curl("client", f"http://{SERVER}/").returncode == 0
        status = box.status()
        assert status["tap"]["bpf"] == "not icmp"
        # none of the 40 ICMP packets was read (the kernel filtered them), the client's HTTP
        # exchange was
        assert after_ping - before < 5, (before, after_ping)
        assert status["tap"]["frames"] - after_ping >= 8, status["tap"]
        box.stop_daemon()
        assert "promiscuity 0" in box.gw_text(["ip", "-d", "link", "show", "lan0"])

        bad = [
            (["--mode", "tap", "--iface", "lan0", "--bpf", "port banana"], "bad --bpf"),
            (["--mode", "tap", "--iface", "nosuch0"], "nosuch0"),
            (["--mode", "tap"], "--iface"),
            (["--iface", "lan0"], "--mode tap"),
            (["--mode", "tap", "--iface", "lan0", "--nfq-client", "own"], "--nfq-client"),
        ]
        policy = str(attack_policy(tmp_path))
        for extra, message in bad:
            argv = [
                sys.executable,
                "-m",
                "ips.cli",
                "run",
                "--policy",
                policy,
                "--socket",
                str(tmp_path / "x.sock"),
                *extra,
            ]
            out = box.run("gw", argv, timeout=20)
            assert out.returncode == 2, (extra, out.stdout, out.stderr)
            assert message in out.stderr, (extra, out.stderr)


def test_eve_reopens_on_sighup_and_stats_and_syslog_carry_the_events(tmp_path: Path) -> None:
    """logrotate's way (move the file, SIGHUP), periodic `stats` events, and RFC 5424 syslog
    over a Unix datagram socket the test listens on."""
    sock_path = str(tmp_path / "syslog.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(sock_path)
    receiver.settimeout(5)
    try:
        with inline_lab(tmp_path, "tph") as box:
            box.start_daemon(
                attack_policy(tmp_path),
                "--mode",
                "tap",
                "--iface",
                "lan0",
                "--stats-interval",
                "1",
                "--syslog",
                f"unix:{sock_path}",
            )
            box.run("attacker", ["curl", "-s", "--max-time", "2", f"http://{SERVER}:23/"])
            assert wait_until(lambda: any(e["event_type"] == "stats" for e in box.eve_events()))
            stats = [e for e in box.eve_events() if e["event_type"] == "stats"][-1]["stats"]
            assert set(stats) >= {"uptime", "capture", "decoder", "flow", "detect"}
            assert stats["capture"]["kernel_drops"] == 0

            data = receiver.recv(65536)  # the telnet alert of the policy
            m = re.match(rb"<(\d+)>1 (\S+) (\S+) ipsctl (\d+) alert - \xef\xbb\xbf(.*)", data)
            assert m, data
            assert int(m.group(1)) == 21 * 8 + 2  # local5, crit (severity 1)
            record = json.loads(m.group(5))
            assert record["alert"]["signature"] == "telnet attempt"
            assert record["alert"]["action"] == "would_drop"

            rotated = tmp_path / "eve.json.1"
            box.eve.rename(rotated)
            assert box.daemon is not None
            os.kill(box.daemon.pid, signal.SIGHUP)
            assert wait_until(box.eve.exists, timeout=5)
            box.run("client", ["curl", "-s", "--max-time", "2", f"http://{SERVER}:23/"])
            assert wait_until(
                lambda: any(
                    e["event_type"] == "alert" and e["src_ip"] == CLIENT for e in box.eve_events()
                )
            )
            old = [json.loads(line) for line in rotated.read_text().splitlines()]
            assert not any(e.get("src_ip") == CLIENT for e in old)
            assert box.status()["sinks"]["eve"]["reopens"] >= 1
    finally:
        receiver.close()
