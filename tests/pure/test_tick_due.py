"""A tick with nothing due is cheap: Engine.tick asks each part first whether it has anything
due (FlowTable.due, BlockManager.due, and in Detectors.tick each detector's `due`) and skips
the parts that have not. Held here to ticks that skip nothing: two engines fed the same
packets, one ticking as Engine.tick does and one with every `due` saying True (the tick as
it was before), must give the same effects at every tick and hold the same state after it —
flows and the timer wheel, blocks, every detector's windows, probes and buckets in their
order. Fed: the shared captures, generated scans, and a story on a quarter-second grid whose
ticks fall exactly on the moments things come due (a probe's answer time, a window's end, a
bucket's idle time, a block's expiry, a flow's timeout slot), with time that goes back now
and then. And each boundary on its own, with what must happen at it."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from packets import ping, tcp, udp
from test_fastpath_differential import (
    _bench_replay_module,
    flow_view,
    shared_captures,
    table_internals,
)
from test_fastpath_differential import plain as differential_plain
from test_scanprobe_equivalence import scan_story

from ips.core.events import Alert, FlowEnd, Unblock
from ips.core.flow import FlowTable, FlowTimeouts
from ips.detect import common
from ips.detect.common import Detector
from ips.detect.scan import GRACE
from ips.engine import Engine, Meta
from ips.engine.blocks import BlockManager
from ips.io.pcap import read_capture
from ips.policy.resolve import load_policy_text
from ips.replay import replay_captures

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = (ROOT / "policies" / "gateway.rules").read_text()
META = Meta(iif="lan0", oif="dmz0")
T0 = 1_700_000_000.0  # a whole second: the grid's times below are exact in binary

# Every detector, small windows, rates whose buckets go idle after whole or half seconds,
# short blocks: on a quarter-second grid things come due at tick times.
EVERY_DETECTOR = """\
table banned dynamic timeout 1h
set default accept
set detect-probes 24
set detect-memory 32
drop from @banned
detect portscan ports 4 within 5s block 3s
detect sweep hosts 5 within 5s block 2s
detect ackscan ports 4 within 5s
detect slowscan ports 6 hosts 7 within 30s
detect stealth count 2 within 5s block 3s
detect synflood rate 4/s per dst limit
detect udpflood rate 2/s per src block 2s
detect icmpflood rate 1/s per src limit
detect reflection rate 2/s sources 2
detect volume packets 4/s per dst
"""

# Short timeouts (whole seconds): flows time out within the stories.
SHORT = FlowTimeouts(tcp_new=2.0, tcp_established=4.0, tcp_closed=1.0, udp_new=3.0, icmp=2.0)


# ---- the tick as it was: nothing skipped ----------------------------------------------------


def _classes_with_due() -> list[type]:
    found: list[type] = [FlowTable, BlockManager]
    todo: list[type] = [Detector]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return [cls for cls in found if "due" in vars(cls)]


@contextmanager
def nothing_skipped() -> Iterator[None]:
    """Every `due` says True while inside: each part of a tick runs, as before they were
    asked."""
    saved = [(cls, vars(cls)["due"]) for cls in _classes_with_due()]

    def always(self: object, now: float) -> bool:
        return True

    for cls, _ in saved:
        cls.due = always  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for cls, due in saved:
            cls.due = due  # type: ignore[attr-defined]


def plain(value: object) -> object:
    return differential_plain(value, ordered=True, limit=8)


def state(engine: Engine) -> dict[str, object]:
    """What a tick reads or changes: the flow table (flows, timer wheel, unreplied queue,
    statistics), counters, dynamic tables and MAC blocks, held requests, and every
    detector's state in its order (windows, pending probes, buckets: the order is eviction
    order) but for a flood's `oldest_use`: a bound on when its tick has work, made exact
    only by a tick that runs, so an engine whose ticks all run has it exact sooner."""
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
            name: plain({k: v for k, v in vars(det).items() if k not in ("spec", "oldest_use")})
            for name, det in detect.by_name.items()
        },
    }


class Twin:
    """An engine whose ticks skip what is not due, and one whose ticks skip nothing."""

    def __init__(
        self, text: str, timeouts: FlowTimeouts | None = None, fast_path: bool = False
    ) -> None:
        policy = load_policy_text(text, "t.rules")
        self.skipping = Engine(policy, timeouts=timeouts, fast=fast_path)
        self.thorough = Engine(load_policy_text(text, "t.rules"), timeouts=timeouts, fast=False)
        self.ticks = 0
        self.effects = 0
        self.skipped = 0  # parts a tick of `skipping` did not run
        self.ran = 0  # parts it ran

    def handle(self, data: bytes, meta: Meta, now: float) -> None:
        want = self.thorough.handle(data, meta, now)
        got = self.skipping.handle(data, meta, now)
        assert plain(got) == plain(want), now
        self.effects += len(want.effects)

    def _count_parts(self, now: float) -> None:
        engine = self.skipping
        parts = [engine.flows.due(now), engine.blocks.due(now)]
        if engine.detect is not None:
            parts += [det.due(now) for det in engine.detect.by_name.values()]
        self.ran += sum(parts)
        self.skipped += len(parts) - sum(parts)

    def tick(self, now: float) -> None:
        self.ticks += 1
        with nothing_skipped():
            want = self.thorough.tick(now)
        self._count_parts(now)
        got = self.skipping.tick(now)
        self.effects += len(want)
        # FlowEnds in the order of a set of flows (the timer wheel's bucket), which no two
        # engines share; everything else in the order it was made.
        ends = sorted(repr(plain(e)) for e in want if isinstance(e, FlowEnd))
        assert sorted(repr(plain(e)) for e in got if isinstance(e, FlowEnd)) == ends, now
        others = [e for e in want if not isinstance(e, FlowEnd)]
        assert plain([e for e in got if not isinstance(e, FlowEnd)]) == plain(others), now
        assert state(self.skipping) == state(self.thorough), now


# ---- traffic ----------------------------------------------------------------------------------

SOURCES = ["10.0.0.66", "10.0.0.67", "10.0.0.20", "2001:db8::66", "192.0.2.9"]
TARGETS = [f"10.0.1.{i}" for i in range(1, 12)] + ["2001:db8:1::1", "2001:db8:1::2"]


def grid_story(seed: int, steps: int) -> list[tuple[float, bytes]]:
    """Scans, floods, pings, answered and unanswered, on a quarter-second grid (so that
    probes come due, windows end, buckets go idle, blocks and flows expire exactly at tick
    times), now and then a packet from the past (a capture whose clock went back)."""
    rng = random.Random(seed)
    story: list[tuple[float, bytes]] = []
    t = T0
    for _ in range(steps):
        t += rng.choice((0.0, 0.0, 0.25, 0.25, 0.5, 1.0, 2.0, 3.0))
        when = t - rng.choice((0.25, 1.0, 5.0)) if rng.random() < 0.03 else t
        src = rng.choice(SOURCES)
        six = ":" in src
        dst = rng.choice([a for a in TARGETS if (":" in a) == six])
        sport = rng.randrange(30000, 30050)
        dport = rng.choice((22, 23, 25, 53, 80, 123, 161, 443, 1900, 8080))
        what = rng.choice(("syn", "syn", "udp", "udp", "ping", "ack", "xmas", "answer", "burst"))
        if what == "syn":
            story.append((when, tcp(src, dst, sport, dport, flags="S")))
            fate = rng.choice(("silent", "rst", "synack"))
            later = when + rng.choice((0.25, 1.0, 2.0))
            if fate == "rst":
                story.append((later, tcp(dst, src, dport, sport, flags="RA")))
            elif fate == "synack":
                story.append((later, tcp(dst, src, dport, sport, flags="SA")))
        elif what == "udp":
            story.append((when, udp(src, dst, sport, dport, payload=b"q" * rng.randrange(1, 9))))
            if rng.random() < 0.4:
                story.append((when + 0.25, udp(dst, src, dport, sport, payload=b"r" * 30)))
        elif what == "ping":
            ident = rng.randrange(1, 40)
            story.append((when, ping(src, dst, ident)))
            if rng.random() < 0.5:
                story.append((when + 0.25, ping(dst, src, ident, reply=True)))
        elif what == "ack":
            story.append((when, tcp(src, dst, sport, dport, flags="A")))
        elif what == "xmas":
            story.append((when, tcp(src, dst, sport, dport, flags="FPU")))
        elif what == "answer":  # unsolicited answers from several hosts (reflection)
            for k in range(rng.randrange(1, 6)):
                reflector = f"10.0.2.{k + 1}" if not six else f"2001:db8:2::{k + 1}"
                story.append((when, udp(reflector, src, 123, sport + k, payload=b"a" * 90)))
        else:  # a burst: many ports of one host, or one port of many hosts
            for k in range(rng.randrange(3, 12)):
                host = rng.choice([a for a in TARGETS if (":" in a) == six])
                story.append((when, tcp(src, host, sport + k, 1 + (dport + k) % 1024)))
    story.sort(key=lambda item: item[0])  # stable: same-time packets keep their order
    return story


def feed(twin: Twin, story: list[tuple[float, bytes]], step: float) -> None:
    """Each packet at its time; a tick at every multiple of `step` the story passes (and at
    a packet's time when it is a multiple: the packet first, as the replay's order is)."""
    next_tick = story[0][0] + step
    for when, data in story:
        while when > next_tick:
            twin.tick(next_tick)
            next_tick += step
        twin.handle(data, META, when)
        if when == next_tick:
            twin.tick(when)
            next_tick += step
    last = story[-1][0]
    for later in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 10.0, 40.0, 4000.0):
        twin.tick(last + later)


# ---- the twins ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_ticks_on_the_grid_skip_nothing_due(seed: int) -> None:
    twin = Twin(EVERY_DETECTOR, timeouts=SHORT)
    feed(twin, grid_story(seed, 350), 0.25)
    assert twin.effects > 150
    assert twin.skipped > 1000 and twin.ran > 500  # ticks skipped parts, and ran parts
    stats = twin.skipping.detect.stats()  # type: ignore[union-attr]
    assert stats["portscan"]["blocks"] > 0 and stats["synflood"]["drops"] > 0
    assert twin.skipping.stats.unblocks > 0  # blocks expired on the grid
    assert twin.skipping.flows.stats.expired > 50


def test_a_replay_clock_that_goes_back_skips_nothing_due() -> None:
    """Ticks as the replay makes them (the first at or past a second after the last), with
    packets from earlier times: a bucket made at an earlier time than the last tick's."""
    twin = Twin(EVERY_DETECTOR, timeouts=SHORT)
    story = grid_story(7, 1000)
    rng = random.Random(3)
    story = [(when - rng.choice((0.0, 0.0, 0.0, 2.5)), data) for when, data in story]
    next_tick = None
    for when, data in story:
        twin.handle(data, META, when)
        if next_tick is None:
            next_tick = when + 1.0
        elif when >= next_tick:
            twin.tick(when)
            next_tick = when + 1.0
    assert twin.ticks > 100 and twin.skipped > 100


@pytest.mark.parametrize("policy", ["every-detector", "gateway"])
def test_generated_scans_skip_nothing_due(policy: str) -> None:
    text = EVERY_DETECTOR if policy == "every-detector" else GATEWAY
    twin = Twin(text, timeouts=SHORT)
    story = scan_story(5, 1000)
    feed(twin, story, 0.5)
    assert twin.effects > 50 and twin.skipped > 100


def test_the_shared_captures_skip_nothing_due(pcaps_dir: Path) -> None:
    """Every shared capture, ticks once a second of capture time as the replay makes them."""
    twin = Twin(EVERY_DETECTOR, fast_path=True)
    metas: dict[int, Meta] = {}
    next_tick: float | None = None
    last = 0.0
    for path in shared_captures():
        with read_capture(path) as reader:
            for rec in reader:
                meta = metas.get(rec.linktype)
                if meta is None:
                    meta = metas[rec.linktype] = Meta(linktype=rec.linktype)
                twin.handle(rec.data, meta, rec.timestamp)
                last = max(last, rec.timestamp)
                if next_tick is None:
                    next_tick = rec.timestamp + 1.0
                elif rec.timestamp >= next_tick:
                    twin.tick(rec.timestamp)
                    next_tick = rec.timestamp + 1.0
    for later in (1.0, 3.0, 40.0, 4000.0):
        twin.tick(last + later)
    assert twin.ticks > 30 and twin.skipped > 100 and twin.ran > 30


def test_many_buckets_are_moved_by_every_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past TICK_BUDGET buckets a tick moves those it looks at behind the others, idle or
    not (the order `_make_room` evicts by): such a tick is never skipped."""
    monkeypatch.setattr(common, "TICK_BUDGET", 5)
    twin = Twin("set default accept\ndetect udpflood rate 2/s per src limit\n")
    for k in range(12):
        twin.handle(udp(f"10.0.3.{k + 1}", "10.0.1.1", 5000, 53), META, T0 + k * 0.01)
    for k in range(8):
        twin.tick(T0 + 0.5 + k * 0.05)  # nothing idle: every bucket used within a second
    det: Any = twin.skipping.detect.by_name["udpflood"]  # type: ignore[union-attr]
    assert len(det.buckets) == 12
    assert next(iter(det.buckets)) != b"\x0a\x00\x03\x01"  # moved


def _replay(text: str, paths: list[str]) -> tuple[str, str]:
    policy = load_policy_text(text, "replay.rules")
    eve = io.StringIO()
    engine = Engine(policy, fast=True)
    result = replay_captures(
        policy, paths, engine=engine, eve_stream=eve, progress=False, mapped=True
    )
    return json.dumps(result.as_dict(), sort_keys=True), "".join(
        sorted(eve.getvalue().splitlines(True))
    )


@pytest.mark.parametrize("policy", ["every-detector", "gateway-app-off"])
def test_a_replay_writes_what_it_wrote_with_nothing_skipped(pcaps_dir: Path, policy: str) -> None:
    """The mapped replay (compiled where built) of every shared capture: the same result and
    EVE lines (sorted: flows a tick ends come in set order) when no tick skips anything."""
    text = EVERY_DETECTOR if policy == "every-detector" else "set app-layer off\n" + GATEWAY
    paths = [str(p) for p in shared_captures()]
    got = _replay(text, paths)
    with nothing_skipped():
        want = _replay(text, paths)
    assert got == want
    assert '"event_type": "alert"' in got[1] or '"event_type":"alert"' in got[1]


def test_a_replay_of_a_repeated_capture_writes_what_it_wrote_with_nothing_skipped(
    tmp_path: Path,
) -> None:
    """bench/replay_speed.py's capture (the shared captures repeated, addresses moved: refused
    first packets by the thousand, probes and floods over many seconds), gateway policy."""
    path = tmp_path / "repeated.pcap"
    _bench_replay_module().make_capture(path, 12_000)
    text = "set app-layer off\n" + GATEWAY
    got = _replay(text, [str(path)])
    with nothing_skipped():
        want = _replay(text, [str(path)])
    assert got == want


# ---- each boundary, with what must happen at it -----------------------------------------------


BANNED = "table banned dynamic timeout 1h\nset default accept\n"


def make(text: str, timeouts: FlowTimeouts | None = None) -> Engine:
    return Engine(load_policy_text(text, "t.rules"), timeouts=timeouts, fast=False)


def test_a_probe_is_weighed_at_the_tick_of_its_answer_time() -> None:
    """Three unanswered SYNs to three ports at T0 make a portscan when weighed, at T0 + GRACE
    exactly (a probe is due when due <= now), not a tick later."""
    engine = make(BANNED + "detect portscan ports 3 within 60s")
    for port in (21, 22, 23):
        engine.handle(tcp("10.0.0.66", "10.0.0.10", 40000 + port, port), META, T0)
    assert engine.tick(T0 + GRACE - 0.25) == []
    found = engine.tick(T0 + GRACE)
    assert [e.category for e in found if isinstance(e, Alert)] == ["portscan"]
    assert not engine.detect.by_name["portscan"].pending  # type: ignore[union-attr,attr-defined]


def test_a_window_goes_at_the_first_tick_past_its_end() -> None:
    """A stealth window that started at T0 (within 60 s) is kept by the tick at T0 + 60 and
    dropped by the next one (an entry goes when its start < now - within)."""
    engine = make(BANNED + "detect stealth count 5 within 60s")
    engine.handle(tcp("10.0.0.66", "10.0.0.10", 40000, 80, flags="FPU"), META, T0)
    stealth: Any = engine.detect.by_name["stealth"]  # type: ignore[union-attr]
    engine.tick(T0 + 60.0)
    assert len(stealth.entries) == 1
    engine.tick(T0 + 60.25)
    assert len(stealth.entries) == 0


def test_a_flood_bucket_goes_at_the_tick_it_is_idle() -> None:
    """A synflood bucket (rate 4/s: idle after 1 s) used at T0 is kept by the tick at
    T0 + 0.75 and dropped by the tick at T0 + 1 exactly."""
    engine = make("set default accept\ndetect synflood rate 4/s per dst limit")
    engine.handle(tcp("10.0.0.66", "10.0.0.10", 40000, 80), META, T0)
    flood: Any = engine.detect.by_name["synflood"]  # type: ignore[union-attr]
    engine.tick(T0 + 0.75)
    assert len(flood.buckets) == 1
    engine.tick(T0 + 1.0)
    assert len(flood.buckets) == 0


def test_a_bucket_from_before_the_last_tick_goes_when_idle() -> None:
    """A tick that looked at every bucket knows the oldest use; a packet from an earlier
    time (a capture whose clock went back) makes a bucket older than that: the next tick
    still drops it once idle."""
    engine = make("set default accept\ndetect udpflood rate 2/s per src limit")
    flood: Any = engine.detect.by_name["udpflood"]  # type: ignore[union-attr]
    engine.handle(udp("10.0.0.1", "10.0.1.1"), META, T0 + 100.0)
    engine.tick(T0 + 100.5)  # the oldest use: T0 + 100
    engine.handle(udp("10.0.0.2", "10.0.1.1"), META, T0 + 90.0)  # from the past
    engine.tick(T0 + 100.75)  # the first bucket is not idle (1 s), the second is
    assert list(flood.buckets) == [bytes((10, 0, 0, 1))]


def test_a_block_is_lifted_at_the_tick_it_expires() -> None:
    engine = make("table banned dynamic timeout 1h\nset default accept\ndrop from @banned")
    addr = bytes((10, 0, 0, 66))
    assert engine.block(addr, T0, 10.0) is not None
    assert engine.tick(T0 + 9.75) == []
    found = engine.tick(T0 + 10.0)
    assert [type(e) for e in found] == [Unblock]
    assert engine.blocks.stats()["blocked"] == 0


def test_a_mac_block_is_forgotten_at_the_tick_it_expires() -> None:
    engine = make("table banned dynamic timeout 1h\nset default accept")
    engine.blocks.macs[b"\x02\x00\x00\x00\x00\x01"] = T0 + 5.0
    engine.tick(T0 + 4.75)
    assert engine.blocks.macs
    engine.tick(T0 + 5.0)
    assert not engine.blocks.macs


def test_a_flow_ends_at_the_tick_of_its_timeout_slot() -> None:
    """A UDP flow last seen at T0 (timeout 3 s) is filed in the slot after T0 + 3: it ends
    at the tick at T0 + 4 exactly, not before."""
    engine = make("set default accept", timeouts=SHORT)
    engine.handle(udp("10.0.0.20", "10.0.1.1"), META, T0)
    assert engine.tick(T0 + 3.75) == []
    found = engine.tick(T0 + 4.0)
    assert [type(e) for e in found] == [FlowEnd]


def test_a_flow_evicted_for_room_ends_at_the_next_tick() -> None:
    """A full table evicts a flow as a packet opens another: its end is reported by the next
    tick, whenever that is (no timer slot is due)."""
    engine = Engine(load_policy_text("set default accept", "t.rules"), max_flows=2, fast=False)
    for k in range(3):
        engine.handle(udp("10.0.0.20", "10.0.1.1", 5000 + k), META, T0 + k * 0.1)
    found = engine.tick(T0 + 0.5)
    assert [e.reason for e in found] == ["evicted"]  # type: ignore[attr-defined]
