"""Memory bounds under a spoofed-source flood: in-process (a bounded bench/memory.py run with
small caps, so they are reached many times over) and in the lab (hping3 --rand-source through
ipsctl inline with a small --max-flows): the flow table, every detector's state, the rule
limiters and the ban history stay under their caps; the trusted address is never banned."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from labkit import CLIENT, SERVER, inline_lab, wait_until

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
    policy = memory.load_policy_text(memory.POLICY.format(trusted=memory.TRUSTED, memory=1000),
                                     "flood.rules")  # fmt: skip
    engine = memory.Engine(policy, max_flows=1000)
    for i in range(50):
        engine.handle(memory.packet_for(0, memory.spoofed(i)), memory.Meta(), 1.0)
    memory._check(engine, r, 2.0, b"\x0a\x0a\x01\x14")
    assert any("flow table 50 > 10" in v for v in r.violations)


FLOOD_POLICY = f"""\
table trusted = {{ 127.0.0.0/8, {CLIENT} }}
table banned dynamic timeout 1h
set default drop
drop    from @banned
drop    proto tcp to port 23 alert "telnet" sid 1000001   # userspace from here on
accept  state established
accept  proto tcp to 10.10.2.0/24 port 80
detect  portscan  ports 15 within 60s  block 30s
detect  stealth   count 3  within 60s  block 30s
"""


def _rss_kb(box, pid: int) -> int:  # type: ignore[no-untyped-def]
    text = box.gw_text(["cat", f"/proc/{pid}/status"])
    return next(int(line.split()[1]) for line in text.splitlines() if line.startswith("VmRSS:"))


def test_rand_source_flood_in_the_lab_keeps_the_flow_table_at_its_cap(tmp_path: Path) -> None:
    """20,000 SYNs from random sources (hping3 --rand-source, bounded) through the worker, with
    --max-flows 2000: the table fills to its cap and stays there; no engine error; the
    worker's memory barely moves; the client is still served."""
    with inline_lab(tmp_path, "hmf") as box:
        box.start_daemon(FLOOD_POLICY, "--max-flows", "2000")
        status = box.status()
        worker = status["worker"]["pid"]
        before = _rss_kb(box, worker)
        flood = box.run("attacker", ["hping3", "-S", "-p", "80", "--rand-source", "-c", "20000",
                                     "-i", "u40", SERVER], timeout=60)  # fmt: skip
        assert "20000 packets transmitted" in flood.stdout + flood.stderr, flood
        assert wait_until(lambda: box.status()["worker"]["packets"] >= 15_000, timeout=10)
        status = box.status()
        assert status["worker"]["pid"] == worker  # the same worker: nothing crashed
        assert status["worker"]["engine_errors"] == 0
        assert 1_500 <= status["worker"]["flows"] <= 2_000, status["worker"]["flows"]
        grown = _rss_kb(box, worker) - before
        assert grown < 40_000, f"worker RSS grew by {grown} kB"
        assert box.curl("client", f"http://{SERVER}/").returncode == 0
        assert CLIENT not in box.kernel_blocks()
