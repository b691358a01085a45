"""Helpers for tests that run ipsctl inline in a namespace lab (labs/gateway.yaml).

Each lab gets its own prefix (tests run in parallel); the daemon runs in the lab's `gw`
namespace with its own control socket and EVE file; everything started is stopped by PID and
the lab removed, also when the test fails. Traffic only goes between the lab's own hosts.
"""

from __future__ import annotations

import json
import os
import random
import signal
import string
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ips.lab import netns

ROOT = Path(__file__).resolve().parents[2]
GATEWAY_LAB = ROOT / "labs" / "gateway.yaml"
GATEWAY_RULES = ROOT / "policies" / "gateway.rules"
TIMEOUT = 15
# nmap's options for a quick scan of the lab's server: one try per port, short timeouts, so
# a scan of 200 ports ends in seconds; the tests add the scan type, the ports and the target.
NMAP_QUICK = [
    "-Pn", "-n", "-T4", "--max-retries", "0", "--host-timeout", "20s",
    "--initial-rtt-timeout", "100ms", "--max-rtt-timeout", "200ms",
]  # fmt: skip

CLIENT, ATTACKER, SERVER = "10.10.1.20", "10.10.1.66", "10.10.2.10"


def need_root() -> None:
    """Skip without root and namespaces, except under CI=true where that is a failure."""
    if os.geteuid() == 0:
        return
    message = "needs root (network namespaces, nftables, NFQUEUE)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {message}")
    pytest.skip(message)


def unique_prefix(tag: str) -> str:
    rand = "".join(random.choices(string.ascii_lowercase + string.digits, k=3))
    return f"{tag}{os.getpid() % 1000}{rand}-"


class InlineLab:
    """A lab with ipsctl running inline on gw."""

    def __init__(self, lab: netns.Lab, workdir: Path) -> None:
        self.lab = lab
        self.workdir = workdir
        self.socket = str(workdir / "ipsctl.sock")
        self.eve = workdir / "eve.json"
        self.daemon: subprocess.Popen[bytes] | None = None
        self.daemon_log = workdir / "daemon.log"

    # ---- running commands in the lab -----------------------------------------------------

    def run(
        self, node: str, argv: list[str], timeout: float = TIMEOUT, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        return self.lab.exec(
            node, argv, capture_output=True, text=True, timeout=timeout, check=check
        )

    def python(
        self, node: str, code: str, timeout: float = TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        return self.run(node, [sys.executable, "-c", code], timeout=timeout)

    def curl(self, node: str, url: str, max_time: float = 3) -> subprocess.CompletedProcess[str]:
        return self.run(
            node,
            ["curl", "-s", "-m", str(max_time), "-w", "\n%{time_total}", url],
            timeout=max_time + 5,
        )

    def ipsctl(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """ipsctl as a client in the root namespace (the socket is a file, not a netns thing)."""
        return subprocess.run(
            [sys.executable, "-m", "ips.cli", *args, "--socket", self.socket],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )

    def status(self) -> dict[str, Any]:
        out = self.ipsctl("status", "--json")
        return json.loads(out.stdout)

    def gw_text(self, argv: list[str]) -> str:
        return self.run("gw", argv, check=True).stdout

    def queue_line(self, queue: int = 0) -> dict[str, int] | None:
        """This lab's /proc/net/netfilter/nfnetlink_queue entry (it is per namespace)."""
        text = self.gw_text(["cat", "/proc/net/netfilter/nfnetlink_queue"])
        for line in text.splitlines():
            f = [int(x) for x in line.split()]
            if f[0] == queue:
                keys = ("queue_number", "peer_portid", "queue_total", "copy_mode",
                        "copy_range", "queue_dropped", "user_dropped", "id_sequence")  # fmt: skip
                return dict(zip(keys, f, strict=False))
        return None

    # ---- the daemon -----------------------------------------------------------------------

    def start_daemon(
        self, policy: Path | str, *extra: str, wrapper: tuple[str, ...] = ()
    ) -> subprocess.Popen[bytes]:
        """`ipsctl run` on gw (wrapper: a command line that execs the rest, e.g. unshare)."""
        policy_path = Path(policy)
        if not policy_path.exists():  # policy text
            policy_path = self.workdir / "policy.rules"
            policy_path.write_text(str(policy))
        argv = [
            *wrapper,
            sys.executable,
            "-m",
            "ips.cli",
            "run",
            "--policy",
            str(policy_path),
            "--socket",
            self.socket,
            "--eve",
            str(self.eve),
            *extra,
        ]
        log = open(self.daemon_log, "ab")  # noqa: SIM115 - closed in stop_daemon
        self.daemon = self.lab.popen("gw", argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        self._log = log
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if self.daemon.poll() is not None:
                raise AssertionError(f"daemon exited: {self.daemon_log.read_text()}")
            if os.path.exists(self.socket):
                out = self.ipsctl("status", "--json", timeout=10)
                if out.returncode == 0:
                    return self.daemon
            time.sleep(0.1)
        raise AssertionError(f"daemon did not come up: {self.daemon_log.read_text()}")

    def kill_daemon(self, sig: int = signal.SIGKILL) -> None:
        assert self.daemon is not None
        self.daemon.send_signal(sig)
        self.daemon.wait(TIMEOUT)

    def stop_daemon(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait(5)
        if self.daemon is not None:
            self._log.close()
        self.daemon = None

    def kernel_blocks(self, family: int = 4) -> set[str]:
        """Members of the kernel's block set (`banned_v4` / `banned_v6`), read with nft."""
        out = self.run("gw", ["nft", "-j", "list", "set", "inet", "ipsctl", f"banned_v{family}"])
        if out.returncode != 0:
            return set()
        elems = json.loads(out.stdout)["nftables"][1]["set"].get("elem", [])
        return {str(e["elem"]["val"] if isinstance(e, dict) else e) for e in elems}

    def kernel_mac_blocks(self) -> set[str]:
        """Members of the kernel's set of banned MACs (`banned_ether`), read with nft."""
        out = self.run("gw", ["nft", "-j", "list", "set", "inet", "ipsctl", "banned_ether"])
        if out.returncode != 0:
            return set()
        elems = json.loads(out.stdout)["nftables"][1]["set"].get("elem", [])
        return {str(e["elem"]["val"] if isinstance(e, dict) else e).lower() for e in elems}

    def mac_of(self, node: str, iface: str = "eth0") -> str:
        """A lab host's MAC address."""
        out = self.run(node, ["cat", f"/sys/class/net/{iface}/address"])
        return out.stdout.strip().lower()

    def block_drops(self) -> int:
        """Packets the kernel dropped because their source is blocked (rules `ipsctl:blocks`)."""
        table = json.loads(self.gw_text(["nft", "-j", "list", "table", "inet", "ipsctl"]))
        total = 0
        for obj in table["nftables"]:
            rule = obj.get("rule")
            if rule and rule.get("comment") == "ipsctl:blocks":
                total += sum(x["counter"]["packets"] for x in rule["expr"] if "counter" in x)
        return total

    def eve_events(self) -> list[dict[str, Any]]:
        if not self.eve.exists():
            return []
        return [json.loads(line) for line in self.eve.read_text().splitlines() if line]


@contextmanager
def inline_lab(
    tmp_path: Path, tag: str = "in", topology: Path = GATEWAY_LAB
) -> Iterator[InlineLab]:
    """The lab of `topology` (labs/gateway.yaml by default) with its own prefix; the daemon
    stopped and the lab removed at the end, also when the test fails."""
    need_root()
    prefix = unique_prefix(tag)
    lab = netns.up(topology, prefix=prefix)
    box = InlineLab(lab, tmp_path)
    try:
        yield box
    finally:
        try:
            box.stop_daemon()
        finally:
            netns.down(prefix)


def wait_until(predicate: Any, timeout: float = 10.0, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return bool(predicate())
