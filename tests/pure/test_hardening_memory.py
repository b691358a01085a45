"""Memory bounds under a spoofed-source flood: in-process (a bounded bench/memory.py run with
small caps, so they are reached many times over) and in the lab (hping3 --rand-source through
ipsctl inline with a small --max-flows): the flow table, every detector's state, the rule
limiters and the ban history stay under their caps; the trusted address is never banned."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bench(name: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


memory = _bench("memory")


def test_spoofed_sources_in_process_stay_under_every_cap() -> None:
    r = memory.run(60_000, max_flows=5_000, detect_memory=2_000)
    assert r.violations == []
    assert r.flows_max == 5_000 and r.flows_evicted > 0  # reached, held, evicted
    for name in ("portscan", "sweep", "stealth"):  # per-source state: a key per spoofed source
        assert r.detector_max[name] == 2_000, r.detector_max
        assert r.detector_evicted[name] > 0
    assert r.detector_max["synflood"] <= 16  # per destination: the 16 servers
    assert 0 < r.limiter_max <= memory.LIMIT_KEYS
    # real scanners among them were blocked, but no more than the ban budget allows
    assert 0 < r.blocks_added <= 30 and r.refused.get("budget", 0) > 0
    assert r.refused.get("trusted", 0) > 0 and not r.trusted_banned


def test_the_bound_checks_can_fail() -> None:
    """A cap the engine does not know about is reported as exceeded (the checks are real)."""
    r = memory.Report(max_flows=10, detect_memory=10)
    policy = memory.load_policy_text(
        memory.POLICY.format(trusted=memory.TRUSTED, memory=1000), "flood.rules"
    )
    engine = memory.Engine(policy, max_flows=1000)
    for i in range(50):
        engine.handle(memory.packet_for(0, memory.spoofed(i)), memory.Meta(), 1.0)
    memory._check(engine, r, 2.0, b"\x0a\x0a\x01\x14")
    assert any("flow table 50 > 10" in v for v in r.violations)
