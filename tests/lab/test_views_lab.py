"""ipsctl flows and top as an unprivileged user, against a daemon in a namespace lab."""

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
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


class Tmux:
    """A tmux server of our own (its own socket name), killed at the end."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["tmux", "-L", self.name, *args], capture_output=True, text=True, timeout=10
        )

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
        assert all(r["app_proto"] == "http" for r in rows), rows  # named by content
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
        started = tmux("new-session", "-d", "-s", "top", "-x", "150", "-y", "50", "env", env, *argv)
        assert started.returncode == 0, started.stderr
        try:
            deadline = time.monotonic() + 15
            while "top talkers" not in tmux.screen() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert CLIENT in tmux.screen(), tmux.screen()  # a talker already
            scan = box.lab.popen(
                "attacker",
                ["nmap", "-sS", "-Pn", "-n", "-T4", "--max-retries", "0", "-p", "1-100", SERVER],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
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
