"""The compiled tick (ips/fast/_fastpath.pyx Ticker, what Engine.tick runs with the compiled
path) against the Python one (Engine._tick_in_python, the reference): two engines fed the
same packets, one with the compiled path and its Ticker, one in pure Python, must give the
same effects at every tick and hold the same state after it — flows and the timer wheel,
blocks, every detector's windows, probes and buckets in their order, and a flood's
`oldest_use` too (the Ticker runs a flood's pass only when BucketDetector.due would). And
the parts the Ticker does in compiled code must have run there (its counters), so that the
comparison is not of two Python ticks. Fed: the grid stories of test_tick_due (things come
due exactly at tick times, time goes back now and then), generated scans, the shared
captures; and a mapped replay, whose compiled loop ticks in place (ips/replay.py)."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import pytest
from packets import tcp, udp
from test_fastpath_differential import flow_view, shared_captures, table_internals
from test_fastpath_differential import plain as differential_plain
from test_scanprobe_equivalence import scan_story
from test_tick_due import EVERY_DETECTOR, GATEWAY, META, SHORT, T0, grid_story

from ips import fast
from ips.core.events import FlowEnd
from ips.core.flow import FlowTimeouts
from ips.engine import Engine, Meta
from ips.io.pcap import read_capture
from ips.policy.resolve import load_policy_text
from ips.replay import replay_captures

pytestmark = pytest.mark.skipif(not fast.available(), reason="the compiled path is not built")


def plain(value: object) -> object:
    return differential_plain(value, ordered=True, limit=8)


def state(engine: Engine) -> dict[str, object]:
    """What a tick reads or changes, every detector's attributes included (`oldest_use`)."""
    detect = engine.detect
    return {
        "table": table_internals(engine),
        "flows": sorted(flow_view(f) for f in engine.flows.flows()),
        "flow_stats": engine.flows.stats,
        "stats": plain(engine.stats.__dict__),
        "tables": {name: list(t.members.items()) for name, t in engine.tables.items()},
        "macs": list(engine.blocks.macs.items()),
        "blocks": engine.blocks.stats(),
        "held": plain(engine.evidence.held),
        "late": plain(engine._late_events),
        "detectors": None
        if detect is None
        else {
            name: plain({k: v for k, v in vars(det).items() if k != "spec"})
            for name, det in detect.by_name.items()
        },
    }


class Pair:
    """An engine with the compiled path (its ticks the Ticker's) and a pure one."""

    def __init__(self, text: str, timeouts: FlowTimeouts | None = None) -> None:
        self.compiled = Engine(load_policy_text(text, "t.rules"), timeouts=timeouts)
        self.pure = Engine(load_policy_text(text, "t.rules"), timeouts=timeouts, fast=False)
        assert self.compiled._ticker is not None and self.pure._ticker is None
        self.ticks = 0
        self.effects = 0

    def handle(self, data: bytes, meta: Meta, now: float) -> None:
        want = self.pure.handle(data, meta, now)
        got = self.compiled.handle(data, meta, now)
        assert plain(got) == plain(want), now

    def tick(self, now: float) -> None:
        self.ticks += 1
        want = self.pure.tick(now)
        got = self.compiled.tick(now)
        self.effects += len(want)
        # FlowEnds in the order of a set of flows (a timer wheel's bucket), which no two
        # engines share; everything else in the order it was made.
        ends = sorted(repr(plain(e)) for e in want if isinstance(e, FlowEnd))
        assert sorted(repr(plain(e)) for e in got if isinstance(e, FlowEnd)) == ends, now
        others = [e for e in want if not isinstance(e, FlowEnd)]
        assert plain([e for e in got if not isinstance(e, FlowEnd)]) == plain(others), now
        assert state(self.compiled) == state(self.pure), now

    @property
    def ticker(self) -> Any:
        return self.compiled._ticker


def feed(pair: Pair, story: list[tuple[float, bytes]], step: float) -> None:
    """Each packet at its time; a tick at every multiple of `step` the story passes (and at
    a packet's time when it is a multiple: the packet first, as the replay's order is)."""
    next_tick = story[0][0] + step
    for when, data in story:
        while when > next_tick:
            pair.tick(next_tick)
            next_tick += step
        pair.handle(data, META, when)
        if when == next_tick:
            pair.tick(when)
            next_tick += step
    last = story[-1][0]
    for later in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 10.0, 40.0, 4000.0):
        pair.tick(last + later)


# Every detector but the long window, which the scans tell every weight (with it, their due
# probes are weighed in Python: ScanDetector.resolve_quietly declines).
NO_SLOWSCAN = "\n".join(
    line for line in EVERY_DETECTOR.splitlines() if not line.startswith("detect slowscan")
)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("slowscan", [True, False])
def test_ticks_on_the_grid_are_the_python_ticks(seed: int, slowscan: bool) -> None:
    pair = Pair(EVERY_DETECTOR if slowscan else NO_SLOWSCAN, timeouts=SHORT)
    feed(pair, grid_story(seed, 350), 0.25)
    assert pair.effects > 150
    ticker = pair.ticker
    # each compiled part ran (and some went to Python: probes that complete a scan, blocks)
    assert ticker.floods_in_c > 20 and ticker.windows_in_c > 5
    assert ticker.scans_in_c == 0 if slowscan else ticker.scans_in_c > 5
    assert ticker.flows_in_c > 20 and ticker.flows_ended_in_c > 20
    assert ticker.in_python > 0
    stats = pair.compiled.detect.stats()  # type: ignore[union-attr]
    assert stats["portscan"]["blocks"] > 0 and stats["synflood"]["drops"] > 0


def test_a_clock_that_goes_back_ticks_as_python_does() -> None:
    """Ticks as the replay makes them (the first at or past a second after the last), with
    packets from earlier times: buckets and flows older than the last tick's look."""
    pair = Pair(EVERY_DETECTOR, timeouts=SHORT)
    story = grid_story(7, 1000)
    rng = random.Random(3)
    story = [(when - rng.choice((0.0, 0.0, 0.0, 2.5)), data) for when, data in story]
    next_tick = None
    for when, data in story:
        pair.handle(data, META, when)
        if next_tick is None:
            next_tick = when + 1.0
        elif when >= next_tick:
            pair.tick(when)
            next_tick = when + 1.0
    assert pair.ticks > 100 and pair.ticker.floods_in_c > 20


@pytest.mark.parametrize("policy", ["every-detector", "gateway"])
def test_generated_scans_tick_as_python_does(policy: str) -> None:
    pair = Pair(NO_SLOWSCAN if policy == "every-detector" else GATEWAY, timeouts=SHORT)
    feed(pair, scan_story(5, 1000), 0.5)
    assert pair.effects > 50 and pair.ticker.scans_in_c > 5


def test_the_shared_captures_tick_as_python_does(pcaps_dir: Path) -> None:
    """Every shared capture, gateway policy, ticks once a second of capture time."""
    pair = Pair("set app-layer off\n" + GATEWAY)
    metas: dict[int, Meta] = {}
    next_tick: float | None = None
    last = 0.0
    for path in shared_captures():
        with read_capture(path) as reader:
            for rec in reader:
                meta = metas.get(rec.linktype)
                if meta is None:
                    meta = metas[rec.linktype] = Meta(linktype=rec.linktype)
                pair.handle(rec.data, meta, rec.timestamp)
                last = max(last, rec.timestamp)
                if next_tick is None:
                    next_tick = rec.timestamp + 1.0
                elif rec.timestamp >= next_tick:
                    pair.tick(rec.timestamp)
                    next_tick = rec.timestamp + 1.0
    for later in (1.0, 3.0, 40.0, 4000.0):
        pair.tick(last + later)
    ticker = pair.ticker
    assert pair.ticks > 30 and ticker.flows_in_c > 5 and ticker.floods_in_c > 0


def test_a_table_full_of_buckets_is_ticked_by_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past TICK_BUDGET buckets a flood's tick moves those it looks at behind the others:
    that pass is Python's, and leaves the same order."""
    from ips.detect import common

    monkeypatch.setattr(common, "TICK_BUDGET", 5)
    pair = Pair("set default accept\ndetect udpflood rate 2/s per src limit\n")
    for k in range(12):
        pair.handle(udp(f"10.0.3.{k + 1}", "10.0.1.1", 5000, 53), META, T0 + k * 0.01)
    for k in range(8):
        pair.tick(T0 + 0.5 + k * 0.05)
    pair.tick(T0 + 3.0)
    assert pair.ticker.floods_in_c == 0 and pair.ticker.in_python >= 8


def test_a_tick_at_a_time_not_a_float_is_pythons() -> None:
    pair = Pair("set default accept\ndetect synflood rate 4/s per dst limit", timeouts=SHORT)
    pair.handle(tcp("10.0.0.66", "10.0.0.10", 40000, 80), META, T0)
    want = pair.pure.tick(int(T0) + 10)
    got = pair.compiled.tick(int(T0) + 10)  # type: ignore[arg-type]
    assert plain(got) == plain(want) and state(pair.compiled) == state(pair.pure)


def _replay(text: str, paths: list[str], fast_path: bool) -> tuple[str, str]:
    policy = load_policy_text(text, "replay.rules")
    eve = io.StringIO()
    engine = Engine(policy, fast=fast_path)
    result = replay_captures(
        policy, paths, engine=engine, eve_stream=eve, progress=False, mapped=True
    )
    return json.dumps(result.as_dict(), sort_keys=True), "".join(
        sorted(eve.getvalue().splitlines(True))
    )


@pytest.mark.parametrize("policy", ["every-detector", "gateway-app-off"])
def test_a_replay_ticking_in_its_compiled_loop_writes_what_python_writes(
    pcaps_dir: Path, policy: str
) -> None:
    """The mapped replay of every shared capture: its compiled loop calls the tick itself and
    hands back only the ticks with events (ips/replay.py); the same result and EVE lines
    (sorted: flows a tick ends come in set order) as the pure engine's replay."""
    text = EVERY_DETECTOR if policy == "every-detector" else "set app-layer off\n" + GATEWAY
    paths = [str(p) for p in shared_captures()]
    got = _replay(text, paths, True)
    want = _replay(text, paths, False)
    assert got == want
    assert '"flow_end"' in got[1] or "flow" in got[1]


def test_a_policy_load_midway_ticks_as_python_does() -> None:
    """A reload replaces the Detectors (keeping the detectors configured alike): the Ticker
    reads its parts again, and ticks the new and the kept detectors as Python does."""
    pair = Pair(NO_SLOWSCAN, timeouts=SHORT)
    story = grid_story(11, 400)
    half = len(story) // 2
    feed(pair, story[:half], 0.25)
    changed = NO_SLOWSCAN.replace("detect udpflood rate 2/s", "detect udpflood rate 3/s")
    for engine in (pair.compiled, pair.pure):
        engine.load(load_policy_text(changed, "t.rules"))
    floods = pair.ticker.floods_in_c
    feed(pair, story[half:], 0.25)
    assert pair.ticker.floods_in_c > floods and pair.ticker.scans_in_c > 0
