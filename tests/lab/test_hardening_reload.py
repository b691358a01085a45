"""Reload under load (a bounded run of bench/reload.py, which does 100): `ipsctl apply` in a
row while an iperf3 TCP stream crosses ipsctl: every apply takes effect, and the established
connection is neither reset nor loses a packet (no engine drop or reject, no queue drop, and
every retransmitted TCP segment — if any — was proved unnecessary by the receiver's D-SACKs:
the original had arrived, later; reordering under CPU contention or at an offload's change —
or is explained by a drop the kernel counted outside ipsctl: a link's backlog or a socket of
the two ends, on a machine starved of CPU). With GSO on and off."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from labkit import inline_lab

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench_reload", ROOT / "bench" / "reload.py")
assert spec is not None and spec.loader is not None
reload = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = reload
spec.loader.exec_module(reload)


UNEXPLAINED_SEGMENTS = 2


@pytest.mark.parametrize("gso", ["off", "on"])
def test_applies_during_an_iperf3_stream(tmp_path: Path, gso: str) -> None:
    # With GSO on, the stream crosses the queue as super-packets of up to 45 segments.
    with inline_lab(tmp_path, f"hr{gso[1]}") as box:
        r = reload.run(box, tmp_path, applies=8, seconds=15, daemon_args=("--gso", gso))
    print(r)
    assert r.applies_failed == 0 and r.digests == 2  # both policies were running in turn
    assert r.iperf_error == ""  # not reset, and still running when the applies were done
    assert r.bytes_received > 10_000_000
    assert r.engine_drops == 0 and r.engine_rejects == 0
    assert r.queue_dropped == 0 and r.user_dropped == 0
    # No loss of ipsctl's making: each retransmitted segment was reported a duplicate
    # (D-SACKed segments), or the kernel dropped one outside ipsctl (a starved machine).
    # UNEXPLAINED_SEGMENTS more are let pass: quiet runs saw 0 or 1 retransmission that no
    # D-SACK and no drop counter explains (94 retransmitted, 93 D-SACKed, nothing dropped),
    # while a packet lost at each apply would be 8 and a queue lost at one, hundreds.
    unexplained = r.retransmits - r.dsack_segments - r.kernel_drops
    assert unexplained <= UNEXPLAINED_SEGMENTS, r
