"""Hostile packets through the decoder, the flow tracker and the engine (bounded versions of
bench/fuzz.py and bench/fuzz_atheris.py, which run a million inputs): no exception escapes,
the engine never needs its on-error verdict, every malformed input is counted under the
reason the decoder gave, and the flow table and detectors stay under their caps."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ips.core.decode import decode_l3
from ips.core.packet import Malformed, Packet
from ips.engine import Engine, Meta
from ips.policy.resolve import load_policy

ROOT = Path(__file__).resolve().parents[2]


def bench_module(name: str) -> ModuleType:
    """A script of bench/ as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


fuzz = bench_module("fuzz")


def test_generated_hostile_inputs_keep_every_contract() -> None:
    report = fuzz.run(30_000, seed=7)
    assert report.violations == []
    assert report.engine_errors == 0
    # the generator reaches deep: many kinds of malformed input, frames, and real packets
    assert len(report.malformed) >= 12, report.malformed
    assert report.packets > 5_000 and report.not_ip > 0 and report.frames > 1_000
    assert set(report.verdicts) >= {"accept", "drop", "reject"}
    # the caps were reached (so eviction ran) and never passed
    assert 0 < report.flows_max <= report.flow_cap
    assert report.detector_tracked_max == report.detector_cap


def test_the_harness_sees_a_crashing_decoder_and_an_engine_error(monkeypatch) -> None:
    """The checks can fail: a decoder that raises on IPv6, and an engine that errs inside."""
    harness = fuzz.Harness()
    real = fuzz.decode_l3

    def fragile(data: bytes, *args: object) -> object:
        if data[:1] == b"\x60":
            raise IndexError("planted")
        return real(data, *args)

    monkeypatch.setattr(fuzz, "decode_l3", fragile)
    harness.feed(fuzz.LINKTYPE_RAW, bytes.fromhex("60") + bytes(39))
    assert any("decoder raised IndexError('planted')" in v for v in harness.report.violations)

    harness = fuzz.Harness()
    monkeypatch.setattr(harness.engine, "_decide", lambda *a: 1 / 0)
    harness.feed(fuzz.LINKTYPE_RAW, fuzz.build_packet(6, "10.10.1.20", "10.10.2.10", 1, 80))
    assert any("engine error" in v for v in harness.report.violations)
    report = harness.finish(1.0)
    assert report.engine_errors == 1


def test_malformed_counts_mismatch_is_reported() -> None:
    harness = fuzz.Harness()
    harness.feed(fuzz.LINKTYPE_RAW, b"\x45\x00")  # truncated IPv4
    harness.report.malformed["ipv4.truncated"] += 1  # pretend the decoder saw two
    assert any("malformed counts differ" in v for v in harness.finish(1.0).violations)


ENGINE_POLICY = load_policy(ROOT / "policies" / "gateway.rules")
SEEDS = [
    fuzz.build_packet(6, "10.10.1.20", "10.10.2.10", 40000, 80, flags=0x02, payload=b"GET /"),
    fuzz.build_packet(17, "10.10.1.20", "10.10.2.10", 5353, 53, payload=b"q" * 12),
    fuzz.build_packet(1, "10.10.1.20", "10.10.2.10", icmp_type=8, payload=b"ping"),
    fuzz.build_packet(58, "2001:db8::1", "2001:db8::2", icmp_type=128),
    fuzz.build_packet(6, "2001:db8::1", "2001:db8::2", 1, 445, flags=0x29),
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), max_size=8),
    st.integers(0, 100),
    st.binary(max_size=40),
)
def test_engine_on_mutated_packets_never_errs_and_counts_malformed(
    seed: bytes, flips: list[tuple[int, int]], cut: int, tail: bytes
) -> None:
    engine = Engine(ENGINE_POLICY, max_flows=64)
    data = bytearray(seed)
    for i, v in flips:
        if i < len(data):
            data[i] = v
    inputs = [bytes(data), bytes(data[:cut]), bytes(data) + tail, tail]
    expected: dict[str, int] = {}
    for n, raw in enumerate(inputs):
        decoded = decode_l3(raw)
        assert decoded is None or isinstance(decoded, Packet | Malformed)
        if isinstance(decoded, Malformed):
            expected[decoded.reason] = expected.get(decoded.reason, 0) + 1
        decision = engine.handle(raw, Meta(iif="lan"), 100.0 + n)
        assert decision.verdict in ("accept", "drop", "reject", "rewrite")
    engine.tick(200.0)
    assert engine.stats.errors == 0
    assert dict(engine.stats.malformed) == expected


def test_atheris_coverage_guided_run() -> None:
    """libFuzzer's own inputs, coverage-guided, 20,000 runs (the bench runs a million)."""
    if importlib.util.find_spec("atheris") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true: atheris is not installed")
        pytest.skip("atheris is not installed")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "fuzz_atheris.py"),
            "-runs=20000",
            "-seed=3",
            "-max_len=400",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT / "bench",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Done 20000 runs" in out.stderr
