"""ipsctl inline on the lab's gateway over the divert backend (pydivert -> eBPFDivert): the
Windows backend's code, run for real in a network namespace. No nftables, no NFQUEUE.

eBPFDivert attaches TC programs to every interface of the namespace the handle is opened
in (checked below: the gateway's own interfaces only, never the root namespace's). Every
test builds its own lab (own prefix) and sends traffic only between the lab's hosts.
Under CI=true a handle that cannot be opened fails the test (no skip): labkit.need_root,
and `ipsctl run` exits non-zero when the backend cannot run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from labkit import (
    ATTACKER,
    CLIENT,
    GATEWAY_RULES,
    NMAP_QUICK,
    SERVER,
    InlineLab,
    inline_lab,
    wait_until,
)
from test_attacks import ClientProbe, attack_policy, detector_alerts
from test_inline import check_gateway_verdicts

DIVERT = ("--backend", "divert")


def root_tc_filters() -> str:
    """Every TC filter on the root namespace's interfaces (ours must never be among them)."""
    out = []
    for dev in sorted(p.name for p in Path("/sys/class/net").iterdir()):
        for hook in ("ingress", "egress"):
            r = subprocess.run(
                ["tc", "filter", "show", "dev", dev, hook], capture_output=True, text=True
            )
            out.append(f"{dev} {hook}: {r.stdout}")
    return "\n".join(out)


def gw_tc_filters(box: InlineLab) -> str:
    text = []
    for dev in ("lan0", "dmz0", "lo"):
        for hook in ("ingress", "egress"):
            text.append(box.gw_text(["tc", "filter", "show", "dev", dev, hook]))
    return "".join(text)


def blocked(box: InlineLab) -> set[str]:
    out = box.ipsctl("blocks", "list", "--json")
    return (
        {row["addr"] for row in json.loads(out.stdout)["blocks"]} if out.returncode == 0 else set()
    )


def test_accept_drop_reject_rewrite_end_to_end(tmp_path: Path) -> None:
    root_before = root_tc_filters()
    with inline_lab(tmp_path, "dv") as box:
        box.start_daemon(GATEWAY_RULES, *DIVERT)
        # the handle hooks the gateway's interfaces, and nothing outside the lab
        assert "tc_divert" in gw_tc_filters(box)
        assert root_tc_filters() == root_before
        # nothing of the NFQUEUE backend was installed
        assert box.run("gw", ["nft", "list", "table", "inet", "ipsctl"]).returncode != 0
        # the same checks as the NFQUEUE backend's (rejects injected through the handle,
        # rewrites with checksums recalculated)
        status = check_gateway_verdicts(box)
        assert status["worker"]["replies_sent"] >= 2 and status["worker"]["replies_failed"] == 0
        assert status["worker"]["verdict_errors"] == 0
        assert status["diversion"]["backend"].startswith("divert")
        assert status["diversion"]["layer"] == "NETWORK_FORWARD"
        divert = status["worker"]["divert"]
        assert divert["filter"] == "true"  # gateway.rules: default drop, detectors: all
        assert divert["handle"]["diverted"] >= 10
    # the lab is gone, and the root namespace never had a filter of ours
    assert root_tc_filters() == root_before


def test_manual_block_is_enforced_by_the_adapter_and_expires(tmp_path: Path) -> None:
    # default accept, no detectors: the filter diverts only telnet and the banned sources
    policy = "set default accept\nset malformed accept\ndrop proto tcp to port 23\n"
    with inline_lab(tmp_path, "dvb") as box:
        box.start_daemon(policy, *DIVERT)
        status = box.status()["worker"]["divert"]
        assert status["filter"] == "tcp and tcp.DstPort == 23", status
        assert box.curl("attacker", f"http://{SERVER}/").returncode == 0
        add = box.ipsctl("blocks", "add", ATTACKER, "--ttl", "4s", "--reason", "test")
        assert add.returncode == 0, add.stderr
        assert ATTACKER in blocked(box)
        # the filter now diverts the banned source (the handle was re-opened) ...
        divert = box.status()["worker"]["divert"]
        assert f"ip.SrcAddr == {ATTACKER}" in divert["filter"] and divert["reopens"] >= 1
        # ... and the adapter drops it before the engine; the client is not affected
        assert box.curl("attacker", f"http://{SERVER}/", max_time=2).returncode == 28
        assert box.curl("client", f"http://{SERVER}/").returncode == 0
        assert box.status()["blocks"]["kernel_drops"] >= 1
        # the block expires in the adapter, and the attacker gets through again
        assert wait_until(lambda: ATTACKER not in blocked(box), timeout=8)
        assert wait_until(
            lambda: box.curl("attacker", f"http://{SERVER}/", max_time=2).returncode == 0, timeout=5
        )
        # del of an address not blocked is an error; add + del works
        assert box.ipsctl("blocks", "add", ATTACKER).returncode == 0
        assert box.ipsctl("blocks", "del", ATTACKER).returncode == 0
        assert box.curl("attacker", f"http://{SERVER}/").returncode == 0


def test_nmap_scan_is_detected_and_blocked(tmp_path: Path) -> None:
    with inline_lab(tmp_path, "dvs") as box:
        box.start_daemon(attack_policy(tmp_path), *DIVERT)
        with ClientProbe(box) as probe:
            scan = box.run(
                "attacker",
                [
                    "nmap",
                    "-sS",
                    *NMAP_QUICK,
                    "-p",
                    "1-200",
                    SERVER,
                ],
                timeout=40,
            )
            assert scan.returncode == 0, scan.stderr
            assert wait_until(lambda: ATTACKER in blocked(box), timeout=5)
        assert probe.ok >= 1 and probe.failed == 0, (probe.ok, probe.failed)
        assert CLIENT not in blocked(box)
        alerts = detector_alerts(box, "portscan")
        assert alerts and alerts[0]["src_ip"] == ATTACKER
        # once banned, the attacker's new SYNs stop in the adapter, before the engine
        before = box.status()
        box.run(
            "attacker",
            ["nmap", "-sS", "-Pn", "-n", "--max-retries", "0", "-p", "1000-1050", SERVER],
            timeout=30,
        )
        after = box.status()
        assert after["blocks"]["kernel_drops"] - before["blocks"]["kernel_drops"] >= 51
        assert after["worker"]["packets"] - before["worker"]["packets"] <= 4
        assert box.curl("client", f"http://{SERVER}/").returncode == 0


def test_worker_restart_keeps_the_blocks(tmp_path: Path) -> None:
    with inline_lab(tmp_path, "dvw") as box:
        box.start_daemon(GATEWAY_RULES, *DIVERT, "--hang-timeout", "2")
        assert box.ipsctl("blocks", "add", ATTACKER, "--ttl", "10m").returncode == 0
        pid = box.status()["worker"]["pid"]
        subprocess.run(["kill", "-KILL", str(pid)], check=True)  # our daemon's worker, by PID
        assert wait_until(lambda: box.status()["worker"].get("pid") not in (None, pid), timeout=10)
        assert ATTACKER in blocked(box)
        assert box.curl("client", f"http://{SERVER}/").returncode == 0
        assert box.curl("attacker", f"http://{SERVER}/", max_time=2).returncode == 28


READER_THREAD_WORKER = """
import select, sys, time
from ips.engine import Engine
from ips.io.divert import DivertWorker
from ips.policy.resolve import load_policy_text
engine = Engine(load_policy_text("set default accept\\ndrop proto icmp type echo-request\\n"))
w = DivertWorker(engine, hooks=("forward",), reader_thread=True)
fd = w.bind()
print("bound", w.filter, flush=True)
end = time.time() + 6
while time.time() < end:
    if select.select([fd], [], [], 0.2)[0]:
        w.process_pending()
w.unbind()
print("verdicts", dict(engine.stats.verdicts), flush=True)
"""


def test_reader_thread_path_of_windows_runs_here(tmp_path: Path) -> None:
    """The Windows-only way to wait for packets (a reader thread and a wake-up pipe), forced
    on Linux: pings are dropped by the policy, a web request passes."""
    with inline_lab(tmp_path, "dvt") as box:
        log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 - closed below
        root = str(Path(__file__).parents[2])
        proc = box.lab.popen(
            "gw",
            [sys.executable, "-c", READER_THREAD_WORKER],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=root,
        )
        try:
            assert wait_until(lambda: "bound" in (tmp_path / "worker.log").read_text(), 10)
            ping = box.run("client", ["ping", "-c", "2", "-i", "0.2", "-W", "1", SERVER])
            assert ping.returncode != 0  # echo requests dropped by the engine
            assert box.curl("client", f"http://{SERVER}/").returncode == 0
            proc.wait(15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            log.close()
        out = (tmp_path / "worker.log").read_text()
        assert "verdicts" in out and "'drop': 2" in out, out
