"""Hardening of the namespace lab, item 13 of issue 19 (root, network namespaces; fails under
CI=true without them): a lab whose state file is gone is still found by its namespaces, which
carry the lab's prefix in their names and its mark on their loopback, and `lab down --prefix`
removes it and ends only the processes inside those namespaces. It creates its own lab with a
unique prefix and touches nothing else."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import string
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ips.lab import netns
from ips.lab.cli import lab as lab_cli

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = ROOT / "labs" / "gateway.yaml"


# ---- item 13: a lab whose state file is gone ----------------------------------------------------


def _need_root_and_namespaces() -> None:
    missing = [] if os.geteuid() == 0 else ["root"]
    missing += [tool for tool in ("ip", "sleep") if shutil.which(tool) is None]
    if missing:
        message = f"namespace lab tests need: {', '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def _namespaces(prefix: str) -> list[str]:
    return sorted(n for n in os.listdir(netns.NETNS_DIR) if n.startswith(prefix))


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


@pytest.fixture
def orphan_prefix(request: pytest.FixtureRequest) -> str:
    """A fresh prefix; whatever the test leaves under it (even when `down` cannot find it, as
    before the fix) is removed afterwards: only namespaces named with this prefix, which
    nobody else uses, and only processes inside them."""
    _need_root_and_namespaces()
    prefix = f"o{os.getpid() % 10000}{''.join(random.choices(string.ascii_lowercase, k=3))}-"

    def clean() -> None:
        from pyroute2 import netns as pyroute_netns

        netns.down(prefix)
        for name in _namespaces(prefix) if netns.NETNS_DIR.is_dir() else []:
            for pid in netns._pids_in(name):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                pyroute_netns.remove(name)
        netns.state_path(prefix).unlink(missing_ok=True)
        for log in netns.STATE_DIR.glob(f"{prefix}*.log"):
            log.unlink(missing_ok=True)

    request.addfinalizer(clean)
    return prefix


def test_lab_without_its_state_file_is_listed_and_removed_with_the_processes_inside(
    orphan_prefix: str,
) -> None:
    from pyroute2 import netns as pyroute_netns

    prefix = orphan_prefix
    lab = netns.up(GATEWAY, prefix)
    ours = sorted(prefix + n for n in ["attacker", "client", "gw", "server", "sw"])
    assert _namespaces(prefix) == ours
    service = lab.services[0].pid
    # What a killed test run leaves: a process it started inside the lab, and no state file.
    inside = lab.popen("client", ["sleep", "300"])
    outside = subprocess.Popen(["sleep", "300"])  # in the host's namespace: not the lab's
    squatter = prefix + "zz"  # named with the prefix but not made by the lab: left alone
    pyroute_netns.create(squatter)
    try:
        netns.state_path(prefix).unlink()

        listed = CliRunner().invoke(lab_cli, ["list", "--json"])
        assert listed.exit_code == 0, listed.output
        mine = [info for info in json.loads(listed.output) if info["prefix"] == prefix]
        assert len(mine) == 1 and mine[0]["status"] == "orphaned"
        assert sorted(mine[0]["namespaces"]) == ours
        assert {service, inside.pid} <= {int(pid) for pid in mine[0]["services"]}
        text = CliRunner().invoke(lab_cli, ["list"]).output
        assert f"prefix {prefix}  orphaned (its state file is gone" in text

        started = time.monotonic()
        result = CliRunner().invoke(lab_cli, ["down", "--prefix", prefix])
        assert result.exit_code == 0, result.output
        assert (
            f"lab {prefix} removed (found by its namespaces; its state file was gone): "
            "5 namespaces, processes inside stopped (pid "
        ) in result.output
        assert time.monotonic() - started < 10
        assert _namespaces(prefix) == [squatter]
        assert inside.wait(timeout=5) is not None
        assert _gone(service)
        assert outside.poll() is None  # only processes inside the lab's namespaces end
        again = CliRunner().invoke(lab_cli, ["down", "--prefix", prefix])
        assert "nothing to do" in again.output
        assert _namespaces(prefix) == [squatter]
    finally:
        outside.kill()
        outside.wait()
        if inside.poll() is None:
            inside.kill()
        inside.wait()
        pyroute_netns.remove(squatter)
