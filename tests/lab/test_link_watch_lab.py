"""The worker reads gw's neighbour table and routes when the kernel announces a change, not
every second (ips/kernel/neighbours.py TableWatch, ips/daemon/worker.py LinkViews): a read
costs the worker a few milliseconds during which its packets wait.

In one lab: idle, the reads do not grow by one a second; a neighbour entry added in gw is in
the engine's view within about a second (status: worker.evidence); so is a route. Only gw's
own tables are changed, with an address of the lab's LAN (no host has it) as neighbour and
next hop."""

from __future__ import annotations

import time
from pathlib import Path

from labkit import GATEWAY_RULES, InlineLab, inline_lab, wait_until

NEW_NEIGHBOUR = "10.10.1.77"  # no lab host has it: a permanent entry made for the test
NEW_MAC = "02:00:00:00:01:77"
OTHER_MAC = "02:00:00:00:01:78"


def evidence(box: InlineLab) -> dict:
    return box.status()["worker"]["evidence"]


def test_the_tables_are_read_when_they_change_not_every_second(tmp_path: Path) -> None:
    with inline_lab(tmp_path, "lw") as box:
        box.start_daemon(GATEWAY_RULES)
        first = evidence(box)
        assert first["link_reads"]["watched"] is True, first
        assert first["link_reads"]["errors"] == 0, first
        reads = first["link_reads"]["reads"]
        time.sleep(4.0)  # idle: one a second before the watch; a neighbour's own change may add one
        idle = evidence(box)["link_reads"]
        assert idle["reads"] - reads <= 1, (reads, idle)

        before = evidence(box)["neighbours"]
        box.run("gw", ["ip", "neigh", "add", NEW_NEIGHBOUR, "lladdr", NEW_MAC, "dev", "lan0",
                       "nud", "permanent"], check=True)  # fmt: skip
        assert wait_until(lambda: evidence(box)["neighbours"] == before + 1, timeout=5), (
            before,
            evidence(box),
        )
        after = evidence(box)["link_reads"]
        assert after["announcements"] >= 1 and after["reads"] > idle["reads"], after

        # its state changing with the same MAC (as every talking neighbour's cycles) is
        # announced but changes nothing the view holds: no read; a new MAC is read
        box.run("gw", ["ip", "neigh", "replace", NEW_NEIGHBOUR, "lladdr", NEW_MAC, "dev", "lan0",
                       "nud", "reachable"], check=True)  # fmt: skip
        time.sleep(1.5)
        same = evidence(box)["link_reads"]
        assert same["reads"] == after["reads"], (after, same)
        box.run("gw", ["ip", "neigh", "replace", NEW_NEIGHBOUR, "lladdr", OTHER_MAC, "dev",
                       "lan0", "nud", "permanent"], check=True)  # fmt: skip
        assert wait_until(lambda: evidence(box)["link_reads"]["reads"] > same["reads"], timeout=5)

        # a route through the new neighbour makes its MAC a router's
        routers = evidence(box)["routers"]
        box.run("gw", ["ip", "route", "add", "10.10.9.0/24", "via", NEW_NEIGHBOUR], check=True)
        assert wait_until(lambda: evidence(box)["routers"] == routers + 1, timeout=5), (
            routers,
            evidence(box),
        )
