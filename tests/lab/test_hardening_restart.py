"""Crash and restart under traffic (a bounded run of bench/restart.py: one SIGKILL per fail
mode, the daemon under a systemd-style restart loop, three UDP streams of 500 packets/s).

fail-open: while no daemon runs, forbidden packets pass (that is what fail-open means) and
allowed ones are not lost beyond the few the dead worker held; the new daemon enforces again
(forbidden packets stop). fail-closed: not one forbidden packet passes, allowed ones are lost
only until the new daemon runs. Both: a block made before the kill drops every packet of its
source throughout (it lives in the kernel's set) and the restarted daemon lists it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from labkit import inline_lab

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench_restart", ROOT / "bench" / "restart.py")
assert spec is not None and spec.loader is not None
restart = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = restart
spec.loader.exec_module(restart)


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_sigkill_under_traffic_with_a_restart_loop(tmp_path: Path, mode: str) -> None:
    with inline_lab(tmp_path, f"hr{mode[0]}") as box:
        (result,) = restart.run_mode(box, tmp_path, mode, kills=1)
    print(result)
    assert result.sent_after_kill > 1000  # 2 s and more of traffic after the kill
    assert result.blocked_passed == 0 and result.block_kept
    assert 0 < result.gap_seconds < 15  # it comes back, and enforces (or passes) again
    if mode == "open":
        assert result.bad_passed > 0  # unfiltered while down: fail-open, visibly
        # ... until the new daemon enforces: the last forbidden packet passed within the gap
        assert result.bad_passed <= result.gap_seconds / restart.INTERVAL + 5
        assert result.good_lost <= 50  # at most what the killed worker held
    else:
        assert result.bad_passed == 0
        assert result.good_lost > 0  # dropped while down: fail-closed, visibly
        assert result.good_lost <= result.gap_seconds / restart.INTERVAL + 1
