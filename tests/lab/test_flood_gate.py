"""Issue 19, item 2: a flood opens the gate (fail-open), and now says so; with the SYN proxy
the kernel absorbs the flood and every path-traversal request is dropped.

Bounded: hping3 runs FLOOD_SECONDS under `timeout` from `attacker` to the lab's server only
(random sources: its forged packets still only go to that server); the client sends at most
TRAVERSALS requests. Prints the figures of the closing note (run with -s to see them)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.lab.labkit import GATEWAY_RULES, SERVER, InlineLab, inline_lab, wait_until

pytestmark = pytest.mark.lab

FLOOD_SECONDS = 6
TRAVERSALS = 12
TRAVERSAL_URL = f"http://{SERVER}/../../etc/passwd"
UNJUDGED_SID = 9000901


def _flood_with_traversals(box: InlineLab) -> tuple[int, int]:
    """A SYN flood with random sources for FLOOD_SECONDS, and the client's traversal
    requests meanwhile: (requests that reached the server, requests sent)."""
    argv = [
        "timeout",
        str(FLOOD_SECONDS),
        "hping3",
        "--flood",
        "--rand-source",
        "-S",
        "-p",
        "80",
        "-q",
        SERVER,
    ]
    flood = box.lab.popen("attacker", argv)
    passed = sent = 0
    try:
        time.sleep(1.0)  # the queue fills
        deadline = time.monotonic() + FLOOD_SECONDS - 1.5
        while sent < TRAVERSALS and time.monotonic() < deadline:
            r = box.run(
                "client",
                [
                    "curl",
                    "-s",
                    "--path-as-is",
                    "-m",
                    "0.4",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    TRAVERSAL_URL,
                ],
                timeout=5,
            )
            sent += 1
            if r.returncode == 0 and r.stdout.strip() not in ("", "000"):
                passed += 1  # the server answered: the request got through
    finally:
        flood.wait(FLOOD_SECONDS + 10)
    return passed, sent


def _queue_counter(box: InlineLab) -> int:
    """The true number the kernel sent to the queue: the counter of `ipsctl:to-userspace`."""
    table = json.loads(box.gw_text(["nft", "-j", "list", "chain", "inet", "ipsctl", "forward"]))
    return sum(
        x["counter"]["packets"]
        for obj in table["nftables"]
        if (rule := obj.get("rule")) and rule.get("comment") == "ipsctl:to-userspace"
        for x in rule["expr"]
        if "counter" in x
    )


def _metric(box: InlineLab, port: int, name: str) -> float | None:
    out = box.run("gw", ["curl", "-s", "-m", "3", f"http://127.0.0.1:{port}/metrics"])
    for line in out.stdout.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "_total "):
            return float(line.split()[-1])
    return None


def test_a_flood_that_opens_the_gate_is_counted_and_alerted(tmp_path: Path) -> None:
    with inline_lab(tmp_path, "fg") as box:
        port = 9467
        box.start_daemon(GATEWAY_RULES, "--metrics", str(port))
        assert box.curl("client", f"http://{SERVER}/").returncode == 0
        passed, sent = _flood_with_traversals(box)
        # settled: nothing waits in the queue any more
        assert wait_until(lambda: (box.queue_line() or {}).get("queue_total", 0) == 0, 20)
        time.sleep(1.5)  # the supervisor's next reading
        status = box.status()
        u = status["unjudged"]
        offered = _queue_counter(box)
        worker = status["worker"]
        copies = sum(int(w.get("copies") or 0) for w in status["workers"])
        true_unjudged = offered - (int(worker["packets"]) - copies)
        print(
            f"\nfail-open flood: {passed} of {sent} traversal requests reached the server; "
            f"unjudged reported {u['packets']}, true {true_unjudged} (offered {offered}, "
            f"judged {u['judged']})"
        )
        assert true_unjudged > 0, "the flood did not overflow the queue: no gate to count"
        assert u["packets"] > 0
        # within 1 % (+ a verdict batch) of the true number
        assert abs(u["packets"] - true_unjudged) <= 0.01 * true_unjudged + 64, (u, offered)
        assert u["packets"] <= offered
        # status text, metrics, EVE (alert + stats)
        text = box.ipsctl("status").stdout
        assert "packets passed without inspection" in text, text
        assert (_metric(box, port, "ipsctl_unjudged_packets") or 0) > 0
        alerts = [
            e
            for e in box.eve_events()
            if e["event_type"] == "alert" and e["alert"]["signature_id"] == UNJUDGED_SID
        ]
        assert alerts, "no unjudged-packets alert"
        assert alerts[0]["alert"]["signature"].startswith("unjudged packets: the queue was full; ")
        assert len(alerts) <= 2  # rate-limited: one per minute at most (plus the first)
        stats = [
            e
            for e in box.eve_events()
            if e["event_type"] == "stats" and "unjudged" in (e["stats"].get("ipsctl") or {})
        ]
        assert stats and stats[0]["stats"]["ipsctl"]["unjudged"]["packets"] > 0


def test_the_syn_proxy_absorbs_the_flood_and_every_traversal_is_dropped(
    tmp_path: Path,
) -> None:
    policy = tmp_path / "synproxy.rules"
    policy.write_text("set synproxy on\n" + GATEWAY_RULES.read_text())
    with inline_lab(tmp_path, "fs") as box:
        box.start_daemon(policy)
        # the proxy passes a real connection
        assert box.curl("client", f"http://{SERVER}/").returncode == 0
        passed, sent = _flood_with_traversals(box)
        time.sleep(1.5)
        status = box.status()
        u = status["unjudged"]
        print(
            f"\nsynproxy flood: {passed} of {sent} traversal requests reached the server; "
            f"unjudged {u['packets']}, offered {u['offered']}"
        )
        assert sent >= 3
        assert passed == 0
        assert box.curl("client", f"http://{SERVER}/").returncode == 0

        # the requests were judged (and dropped) by the engine, not lost on the way
        assert any(
            e["event_type"] == "alert" and e["alert"].get("signature_id") in (2000020, 2000021)
            for e in box.eve_events()
        )
