"""Hypothesis over the wired application layer: one flow's packets, built from a script of
bytes (bench/inspect_script.py, the same harness atheris runs a million times in
bench/fuzz_app_inspect.py), through the per-flow inspector, with its contract checked after
every packet and at the flow's end: no exception, known event types, the reassembler within
its cap and empty when every flow has ended, a side's fields final once it is done, declared
malformed reasons, passive DNS within its bound."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from benchkit import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

_spec = importlib.util.spec_from_file_location(
    "inspect_script", ROOT / "bench" / "inspect_script.py"
)
assert _spec is not None and _spec.loader is not None
inspect_script = importlib.util.module_from_spec(_spec)
sys.modules["inspect_script"] = inspect_script
_spec.loader.exec_module(inspect_script)
HARNESS = inspect_script.Harness()  # one for all examples: accounting across flows
SEEDS = inspect_script.SEEDS


def whole(seed: int) -> bytes:
    """A script: a handshake, then each direction of the seed in one segment."""
    segment = bytes([0x00, 0x00, 0x00, 0x05, 0xDB, 0x00])
    return bytes([0x80 | seed]) + bytes(8) + segment + bytes([0x01]) + segment[1:]


@st.composite
def scripts(draw: st.DrawFn) -> bytes:
    """Random scripts, and whole seed scripts with bytes overwritten or appended."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=400))
    data = bytearray(whole(draw(st.integers(0, len(SEEDS) - 1))))
    for _ in range(draw(st.integers(0, 6))):
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] = draw(st.integers(0, 255))
    return bytes(data) + draw(st.binary(max_size=120))


@pytest.mark.parametrize("seed", range(len(SEEDS)))
def test_every_seed_gives_its_events(seed: int) -> None:
    """The seed conversations, whole and in order, are what the harness mutates: each gives
    its events (the fuzzer starts from real transactions, not from nothing)."""
    harness = inspect_script.Harness()
    harness.run(whole(seed))
    counters = harness.inspector.counters
    expected = ["tls", "http", "ssh", "dns", "dns", None, None][seed]
    if expected is None:
        assert harness.events == 0
    else:
        assert counters.events[expected] >= 1 and not counters.malformed, dict(counters.malformed)
    if seed in (3, 4):  # the DNS answer taught passive DNS its CNAME-chained name
        assert harness.names.name_of(bytes((192, 0, 2, 7)), 1000.5) == "www.example.com"


@settings(max_examples=400, deadline=None)
@given(scripts())
def test_inspector_contract_on_random_flows(script: bytes) -> None:
    HARNESS.run(script)  # raises ContractViolation when a promise is broken


def test_the_contract_can_fail() -> None:
    """The checks are live: an inspector that forgets a flow at its end (memory kept, fields
    never final) is caught."""
    harness = inspect_script.Harness()
    harness.inspector.release = lambda flow, now: None  # type: ignore[method-assign]
    with pytest.raises(inspect_script.ContractViolation):
        harness.run(whole(1))  # HTTP: the server side never ended, so the flow was open
