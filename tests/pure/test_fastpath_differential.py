"""The compiled fast path (ips/fast/) against the Python engine, its definition: two engines,
one with the fast path and one without (fast=False), fed the same packets — every shared
capture, generated traffic, hypothesis-made packets, the 10,000-rule policy — must give the
same decisions and effects packet for packet, and end with the same counters (EngineStats,
every rule's hits, the flow table's contents and its statistics), tick after tick.

Without the extension (not built, or IPSCTL_PURE=1) both engines are the Python engine and
the comparison still runs; a test that needs the fast path to have decided packets fails
under CI=true when it is not built (unless IPSCTL_PURE=1 says that is meant) and skips
otherwise."""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import os
import random
import struct
import sys
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from captures import PCAPS
from hypothesis import given, settings
from hypothesis import strategies as st

from ips import fast
from ips.app.passive_dns import PassiveDns
from ips.core.build import build_packet
from ips.core.decision import OFFLOAD_BARE_ACKS, OFFLOAD_HANDSHAKE_ACK, Decision
from ips.core.decode import decode_frame
from ips.core.flow import Flow, FlowTimeouts
from ips.core.packet import LINKTYPE_RAW, PROTO_ICMP, PROTO_TCP, PROTO_UDP, Packet
from ips.engine import Engine, Meta
from ips.io.pcap import MAX_EMPTY_RUN, CaptureError, read_capture, write_pcap
from ips.policy.compile import CompiledRule
from ips.policy.resolve import load_policy_text
from ips.replay import replay_captures
from tests.pure.test_app_parsers import dns_query, dns_response
from tests.pure.test_app_tls import (
    chrome_like_extensions,
    client_hello_message,
    records,
    server_hello_message,
)

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = (ROOT / "policies" / "gateway.rules").read_text()
META = Meta(iif="lan0", oif="dmz0")


def _bench_engine() -> Any:
    spec = importlib.util.spec_from_file_location("bench_engine", ROOT / "bench" / "engine.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_engine"] = mod
    spec.loader.exec_module(mod)
    return mod


BENCH = _bench_engine()


def need_fast_path() -> None:
    """The comparison means something only when the fast path runs."""
    if fast.available():
        return
    if fast.FORCED_PURE:
        pytest.skip("IPSCTL_PURE=1: the pure-Python engine alone")
    if os.environ.get("CI") == "true":
        pytest.fail("the compiled fast path (ips/fast/_fastpath) is not built")
    pytest.skip("the compiled fast path is not built")


# ---- what is compared ---------------------------------------------------------------------------

_FLOW_FIELDS = (
    "family", "proto", "src", "sport", "dst", "dport", "flow_id", "first_seen", "last_seen",
    "pkts_fwd", "pkts_rev", "bytes_fwd", "bytes_rev", "flags_fwd", "flags_rev", "replied",
    "tcp_state", "offloaded", "back_since", "end_reason", "ttl", "mac", "icmp", "app_proto",
    "dst_name", "nat",
)  # fmt: skip


def flow_view(flow: Flow) -> tuple[object, ...]:
    return tuple(getattr(flow, name) for name in _FLOW_FIELDS)


def plain(value: object, depth: int = 0, ordered: bool = False, limit: int = 6) -> object:
    """A comparable form of a decision's or an event's contents: flows by their fields,
    rules by their position, other objects by their attributes (to `limit` levels). With
    `ordered`, a dict's order counts too (its items as a list)."""
    if depth > limit:
        return repr(value)
    if isinstance(value, Flow):
        return ("flow", flow_view(value))
    if isinstance(value, CompiledRule):
        return ("rule", value.spec.index)

    def inner(item: object) -> object:
        return plain(item, depth + 1, ordered, limit)

    if isinstance(value, (list, tuple, deque)):
        return [inner(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(repr(inner(v)) for v in value)
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, dict):
        if ordered:
            return [(inner(k), inner(v)) for k, v in value.items()]
        return {k: inner(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, bytes, int, float, bool)):
        return value
    fields: dict[str, object] = {}
    for cls in type(value).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if hasattr(value, name):
                fields[name] = inner(getattr(value, name))
    for name, item in getattr(value, "__dict__", {}).items():
        fields[name] = inner(item)
    return (type(value).__name__, fields)


def unordered(events: list[Any]) -> list[str]:
    """Events of a tick, in any order: the flow table's timer wheel hands due flows out in
    set order, which differs between any two engines (the Python engine's too)."""
    return sorted(repr(plain(event)) for event in events)


def detector_state(engine: Engine) -> dict[str, object] | None:
    """Every detector's state: its tables (the floods' token buckets to the bit), counters and
    alert pacing; its configuration (spec) aside."""
    if engine.detect is None:
        return None
    return {
        name: plain({k: v for k, v in vars(det).items() if k != "spec"})
        for name, det in engine.detect.by_name.items()
    }


def table_internals(engine: Engine) -> dict[str, object]:
    """What the flow table keeps besides its flows: the next id, its timer wheel (slots and
    the ids of their flows), the unreplied queue (each entry's flow id, or None for one that
    is gone: a discarded flow's stand-in among them). A flow opened and discarded before it
    was filed leaves its marks there (FlowTable._discard_opened)."""
    table = engine.flows
    gone = -1  # Flow._slot of a flow no longer in a table
    return {
        "next_id": table._next_id,
        "active": table._active,
        "wheel": sorted(
            (slot, sorted(f.flow_id for f in flows)) for slot, flows in table._wheel.items()
        ),
        "slots": sorted(table._slots),
        "unreplied": [f.flow_id if f._slot != gone else None for f in table._unreplied],
    }


def policy_memos(engine: Engine) -> dict[str, object]:
    """The compiled policy's lookup memos (CompiledPolicy.candidate_bits and candidate_entry)
    and the walks by flags byte made so far: the compiled path looks candidates up as the
    engine does, filling the same memos."""
    policy = engine.policy
    dims: dict[str, object] = {}
    for family, fx in sorted(policy._families.items()):
        for name in ("src", "dst", "sport", "dport"):
            dims[f"{family}.{name}"] = sorted(getattr(fx, name).memo.items())
    return {
        "dims": dims,
        "interfaces": sorted(policy._if_memo.items(), key=repr),
        "candidates": sorted(
            (
                bits,
                [r.spec.index for r in rules],
                state,
                None
                if walks is None
                else [None if w is None else [r.spec.index for r in w] for w in walks],
            )
            for bits, (rules, state, walks) in policy._candidates_memo.items()
        ),
    }


def cache_view(engine: Engine, cache: Any) -> object:
    """A flow direction's candidate cache (the engine's RuleCache): made under the running
    policy or not, its interfaces, its rules by position, its offload state, whether it has
    walks by flags byte."""
    if cache is None:
        return None
    policy, iif, oif, rules, state, walks = cache
    return (policy is engine.policy, iif, oif, [r.spec.index for r in rules], state, walks is None)


def engine_state(engine: Engine) -> dict[str, object]:
    return {
        # every flow's candidate caches, both ways (the compiled path makes a handshake's
        # answer's)
        "caches": sorted(
            (
                f.flow_id,
                repr(cache_view(engine, f.cache_fwd)),
                repr(cache_view(engine, f.cache_rev)),
            )
            for f in engine.flows.flows()
        ),
        "table": table_internals(engine),
        "memos": policy_memos(engine),
        "stats": plain(engine.stats.__dict__),
        "hits": [rule.hits for rule in engine.policy.rules],
        # the rules' `limit` token buckets, to the bit
        "limits": [
            None if rule.limiter is None else plain(rule.limiter.buckets)
            for rule in engine.policy.rules
        ],
        "detectors": detector_state(engine),
        "flows": sorted(flow_view(f) for f in engine.flows.flows()),
        # the inspector's state of each flow (a handshake's answer notes the server's start)
        "app_states": sorted(
            (f.flow_id, repr(plain(f.app_state, limit=3))) for f in engine.flows.flows()
        ),
        "flow_stats": engine.flows.stats,
        # (in order: the oldest is forgotten first)
        "handshakes": list(engine.flows.handshakes.items()),
        # passive DNS: a new flow's first look asks it the responder's name (its order
        # and expiry are what that leaves)
        "pdns": (
            list(engine.pdns._entries.items()),
            (engine.pdns.learned, engine.pdns.evicted, engine.pdns.expired),
        )
        if isinstance(engine.pdns, PassiveDns)
        else None,
        "tables": {name: dict(t.members) for name, t in engine.tables.items()},
        # the reassembler's counters by reason and the memory it holds (a refused first
        # segment with payload is placed in it before its flow is discarded)
        "reassembler": (
            list(engine.app.reassembler.counters.items()),
            engine.app.reassembler.used,
        ),
        # the application layer's counters in the order first counted (`status` lists them
        # so); "stats" compares their values
        "app_order": [list(counter) for counter in _app_counters(engine)],
    }


def _app_counters(engine: Engine) -> list[Any]:
    app = engine.stats.app
    return [app.protocols, app.events, app.malformed, app.incomplete]


class Pair:
    """The reference engine and the engine with the fast path, fed together."""

    def __init__(
        self, policy_text: str, name: str = "test.rules", timeouts: FlowTimeouts | None = None
    ) -> None:
        self.slow = Engine(load_policy_text(policy_text, name), fast=False, timeouts=timeouts)
        self.fast = Engine(load_policy_text(policy_text, name), timeouts=timeouts)
        self.packets = 0
        self.next_tick: float | None = None

    def handle(self, data: bytes, meta: Meta, now: float) -> Decision:
        self.packets += 1
        want = self.slow.handle(data, meta, now)
        got = self.fast.handle(data, meta, now)
        assert plain(got) == plain(want), (self.packets, data.hex())
        if self.next_tick is None:
            self.next_tick = now + 1.0
        elif now >= self.next_tick:
            self.tick(now)
            self.next_tick = now + 1.0
        return got

    def tick(self, now: float) -> None:
        assert unordered(self.fast.tick(now)) == unordered(self.slow.tick(now))
        self.check_state()

    def check_state(self) -> None:
        assert engine_state(self.fast) == engine_state(self.slow)

    def finish(self, now: float) -> None:
        assert self.fast.fast_failures == 0
        self.check_state()
        assert unordered(self.fast.drain(now)) == unordered(self.slow.drain(now))
        self.check_state()

    @property
    def fast_packets(self) -> int:
        path = self.fast._fast_path
        return path.fast_packets if path is not None else 0

    @property
    def syn_ack_packets(self) -> int:
        """Handshake answers (SYN+ACK) decided in compiled code (FastPath._syn_ack)."""
        path = self.fast._fast_path
        return path.syn_ack_packets if path is not None else 0

    @property
    def flowless_packets(self) -> int:
        """Packets of no flow refused in compiled code (FastPath._flowless)."""
        path = self.fast._fast_path
        return path.flowless_packets if path is not None else 0


def replay(pair: Pair, records: Iterable[tuple[float, int, bytes]]) -> float:
    metas: dict[int, Meta] = {}
    last = 0.0
    for ts, linktype, data in records:
        meta = metas.get(linktype)
        if meta is None:
            meta = metas[linktype] = Meta(linktype=linktype)
        pair.handle(data, meta, ts)
        last = max(last, ts)
    return last


def capture_records(path: Path) -> list[tuple[float, int, bytes]]:
    with read_capture(path) as reader:
        return [(r.timestamp, r.linktype, r.data) for r in reader]


def shared_captures() -> list[Path]:
    return sorted(p for p in PCAPS.glob("*") if p.suffix in (".pcap", ".pcapng"))


# ---- the shared captures ------------------------------------------------------------------------


NEWER_DETECTORS = """\
set default accept
detect reflection
detect ackscan
detect udpflood rate 50/s per dst limit
"""


# Payload rules with depths, on every address: the offload of a flow they are candidates of
# waits on its plan (OFFLOAD_LATER) until each is past its depth, or ruled out by the flow's
# application protocol (TLS with `encrypted-payload skip`, another protocol's L7 clause).
DEPTHS = """\
set default accept
set offload on
set payload-depth 2k
drop proto tcp to port { http, https, 8080 } payload contains "/etc/passwd" sid 9300001
drop proto tcp to port http payload contains "EVIL" depth 300 alert "evil" sid 9300002
drop proto udp payload contains "evil-marker" depth 100 alert "udp marker" sid 9300003
drop http host "blocked.example" alert "blocked host" sid 9300004
"""


@pytest.mark.parametrize(
    "policy",
    ["gateway", "gateway-app-off", "ten+detect", "accept", "newer-detectors", "volume", "depths"],
)
def test_every_shared_capture_decides_the_same(pcaps_dir: Path, policy: str) -> None:
    text = {
        "gateway": GATEWAY,
        # without application parsing, refused first packets are decided in compiled code
        "gateway-app-off": "set app-layer off\n" + GATEWAY,
        "ten+detect": BENCH.TEN_RULES + BENCH.DETECTORS,
        "accept": "set default accept\n",
        "newer-detectors": NEWER_DETECTORS,
        # `volume` sees every packet: its detectors declare nothing, all goes to Python
        "volume": NEWER_DETECTORS + "detect volume packets 2000/s per dst\n",
        "depths": DEPTHS,
    }[policy]
    pair = Pair(text)
    last = 0.0
    for path in shared_captures():
        last = max(last, replay(pair, capture_records(path)))
    pair.finish(last)
    assert pair.packets > 1000
    if fast.available():
        if policy == "gateway-app-off":
            # most of these captures' flows are refused at their first packet
            assert pair.flowless_packets > pair.packets // 4, pair.flowless_packets
        if policy == "volume":
            # nothing but frames that are not IP or are malformed (which no detector sees)
            stats = pair.slow.stats
            assert 0 < pair.fast_packets <= stats.not_ip + sum(stats.malformed.values())
        elif policy in ("accept", "newer-detectors", "depths"):
            assert pair.fast_packets > 0
        if policy == "depths":
            # Flows offloaded by the compiled path once past their plans, and some while not.
            assert pair.fast.stats.offloaded == pair.slow.stats.offloaded > 0


def test_the_fast_path_decides_most_packets_of_the_captures(pcaps_dir: Path) -> None:
    need_fast_path()
    pair = Pair("set default accept\nset app-layer off\n")
    last = 0.0
    for path in shared_captures():
        last = max(last, replay(pair, capture_records(path)))
    pair.finish(last)
    assert pair.fast_packets > pair.packets // 3


# ---- generated traffic: bench/engine.py's, the 10-rule and the 10,000-rule policies ------------


@pytest.mark.parametrize(
    ("rules", "detectors"),
    [(0, False), (10_000, False), (0, True)],
    ids=["ten", "ten-thousand", "ten-detectors"],
)
def test_bench_traffic_decides_the_same(rules: int, detectors: bool) -> None:
    """The detectors declare what they need (Detectors.interest): with all six on, the
    packets they do not need still take the fast path."""
    need_fast_path()
    text = (BENCH.TEN_RULES + (BENCH.DETECTORS if detectors else "")).replace(
        "set default drop\n", "set default drop\n" + "\n".join(BENCH.generated_rules(rules)) + "\n"
    )
    pair = Pair(text)
    packets = BENCH.traffic(6000, 400)
    for i, data in enumerate(packets):
        pair.handle(data, META, 1000.0 + i * 0.001)
    pair.finish(1010.0)
    assert pair.fast_packets > 0


# ---- hypothesis: packets of a few hosts and ports, any flags, payloads with the patterns ------

_HOSTS = ["10.10.1.10", "10.10.1.20", "10.10.2.10", "10.10.2.20", "192.0.2.7"]
_PORTS = [22, 23, 53, 80, 137, 443, 7, 8080, 8081, 40000, 40001]
_PAYLOADS = [b"", b"x" * 64, b"GET /../../etc/passwd", b"/ETC/PASSWD", b"hello ../.. world"]

packet_specs = st.lists(
    st.tuples(
        st.sampled_from([PROTO_TCP, PROTO_TCP, PROTO_TCP, PROTO_UDP, PROTO_ICMP]),
        st.sampled_from(_HOSTS),
        st.sampled_from(_HOSTS),
        st.sampled_from(_PORTS),
        st.sampled_from(_PORTS),
        st.sampled_from([0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x00, 0x29, 0x03, 0x10, 0x18]),
        st.sampled_from(_PAYLOADS),
        st.floats(min_value=0.0, max_value=3.0),
        st.booleans(),
    ),
    min_size=1,
    max_size=60,
)

HYPOTHESIS_POLICY = (
    GATEWAY
    + """
match   proto tcp to port 8080 length > 100 alert "long"
accept  proto udp to port 40001 length <= 80
drop    proto tcp to port 40000 payload contains "hello" nocase
drop    proto tcp to port 40001 payload contains "world" depth 12
"""
)


@settings(max_examples=60, deadline=None)
@given(packet_specs)
def test_generated_packets_decide_the_same(specs: list[tuple[Any, ...]]) -> None:
    feed_generated(Pair(HYPOTHESIS_POLICY), specs)


@settings(max_examples=60, deadline=None)
@given(packet_specs)
def test_generated_packets_without_app_parsing_decide_the_same(
    specs: list[tuple[Any, ...]],
) -> None:
    """The same without application parsing: the refused first packets (of 192.0.2.7, to
    ports no rule accepts, mid-stream segments) are decided in compiled code."""
    feed_generated(Pair("set app-layer off\n" + HYPOTHESIS_POLICY), specs)


def feed_generated(pair: Pair, specs: list[tuple[Any, ...]]) -> None:
    """Generated packets (a reply turns the spec around; ICMP: an echo request, or its reply)
    to both engines, then the end of the run."""
    now = 100.0
    for proto, src, dst, sport, dport, flags, payload, gap, reply in specs:
        if reply:
            src, dst, sport, dport = dst, src, dport, sport
        now += gap
        if proto == PROTO_TCP:
            data = build_packet(proto, src, dst, sport, dport, flags=flags, payload=payload)
        elif proto == PROTO_UDP:
            data = build_packet(proto, src, dst, sport, dport, payload=payload)
        else:
            data = build_packet(proto, src, dst, icmp_type=0 if reply else 8, icmp_id=sport)
        pair.handle(data, Meta(iif="lan0", oif="dmz0", linktype=LINKTYPE_RAW), now)
    pair.finish(now + 100)


def test_a_policy_load_refreshes_the_fast_path() -> None:
    """After an apply, the flows' caches name the old policy: nothing fast until the Python
    path has cached the new one; the same decisions throughout."""
    pair = Pair(BENCH.TEN_RULES)
    packets = BENCH.traffic(2000, 100)
    for i, data in enumerate(packets[:1000]):
        pair.handle(data, META, 10.0 + i * 0.001)
    for engine in (pair.slow, pair.fast):
        engine.load(load_policy_text("set default accept\n", "new.rules"))
    for i, data in enumerate(packets[1000:]):
        pair.handle(data, META, 12.0 + i * 0.001)
    pair.finish(20.0)


def test_the_loader_says_why_the_pure_engine_runs_alone() -> None:
    """Without the extension an engine still decides (in Python), and the loader says so."""
    engine = Engine(load_policy_text("set default accept\n", "t.rules"), fast=False)
    assert engine._fast_path is None
    assert engine.handle(build_packet(PROTO_UDP, "10.0.0.1", "10.0.0.2", 1, 2), META).verdict
    assert fast.available() == (fast._module is not None)


# ---- offline replay: the mapped compiled loop against the reader and the Python engine ---------


def _replay(text: str, paths: list[str], fast_path: bool, mapped: bool) -> tuple[str, str]:
    policy = load_policy_text(text, "replay.rules")
    eve = io.StringIO()
    engine = Engine(policy, fast=fast_path)
    result = replay_captures(
        policy, paths, engine=engine, eve_stream=eve, progress=False, mapped=mapped
    )
    assert engine.fast_failures == 0
    # EVE lines sorted: the flows a tick ends come out in set order (see `unordered`)
    return json.dumps(result.as_dict(), sort_keys=True), "".join(
        sorted(eve.getvalue().splitlines(True))
    )


@pytest.mark.parametrize("policy", ["gateway", "accept"])
def test_replay_gives_the_same_result_on_every_path(pcaps_dir: Path, policy: str) -> None:
    text = GATEWAY if policy == "gateway" else "set default accept\nset app-layer off\n"
    paths = [str(p) for p in shared_captures()]
    reference = _replay(text, paths, fast_path=False, mapped=False)
    assert _replay(text, paths, fast_path=True, mapped=False) == reference
    assert _replay(text, paths, fast_path=True, mapped=True) == reference


def _bench_replay_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "bench_replay_speed", ROOT / "bench" / "replay_speed.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _replay_state(text: str, path: str, fast_path: bool, mapped: bool) -> tuple[object, ...]:
    """A replay's result, EVE lines, its engine's whole state at the end, and its flow
    table's internals, counters and rule hits at each tick (flows then carry their ids)."""
    policy = load_policy_text(text, "replay.rules")
    eve = io.StringIO()
    engine = Engine(policy, fast=fast_path)
    at_ticks: list[object] = []
    tick = engine.tick

    def noted_tick(now: float) -> Any:
        at_ticks.append(
            (
                now,
                table_internals(engine),
                plain(engine.stats.__dict__),
                [rule.hits for rule in engine.policy.rules],
            )
        )
        return tick(now)

    engine.tick = noted_tick  # type: ignore[method-assign]
    result = replay_captures(
        policy, [path], engine=engine, eve_stream=eve, progress=False, mapped=mapped
    )
    assert engine.fast_failures == 0
    lines = "".join(sorted(eve.getvalue().splitlines(True)))
    flowless = engine._fast_path.flowless_packets if engine._fast_path is not None else 0
    state = engine_state(engine)
    return json.dumps(result.as_dict(), sort_keys=True), lines, state, at_ticks, flowless


@pytest.mark.parametrize("policy", ["gateway-app-off", "gateway-app-on", "ten+detect-app-off"])
def test_mapped_replay_of_a_repeated_capture_leaves_the_same_state(
    tmp_path: Path, policy: str
) -> None:
    """The mapped compiled loop owes its counters to the engine's objects between calls out
    of it (FastPath._flush): over the shared captures repeated with their addresses moved
    (bench/replay_speed.py's capture, ~3 repetitions: refused first packets by the thousand
    between the Python engine's packets and ticks), the result, the EVE lines and the
    engine's whole state (counters, the flow table's ids, wheel and unreplied queue, rule
    hits, detectors) are the Python engine's."""
    text = {
        "gateway-app-off": "set app-layer off\n" + GATEWAY,
        "gateway-app-on": GATEWAY,
        "ten+detect-app-off": "set app-layer off\n" + BENCH.TEN_RULES + BENCH.DETECTORS,
    }[policy]
    path = tmp_path / "repeated.pcap"
    _bench_replay_module().make_capture(path, 12_000)
    reference = _replay_state(text, str(path), fast_path=False, mapped=False)
    got = _replay_state(text, str(path), fast_path=True, mapped=True)
    assert got[0] == reference[0]
    assert got[1] == reference[1]
    assert got[2] == reference[2]
    assert len(got[3]) > 100  # ticks
    assert got[3] == reference[3]
    if fast.available():
        assert got[4] > 5_000, got[4]  # refused first packets decided in compiled code


@settings(max_examples=2000, deadline=None)
@given(
    st.one_of(
        st.floats(allow_nan=False, allow_infinity=False),
        st.floats(min_value=1.6e9, max_value=1.8e9),
        st.integers(min_value=-(2**60), max_value=2**60).map(float),
    )
)
def test_a_timer_slot_in_compiled_code_is_the_flow_tables(deadline: float) -> None:
    """The timer slot of a refused first packet's flow, computed in compiled code as
    CPython's float floor division computes it (FastPath._slot_of), is ips/core/flow.py's."""
    from ips.core.flow import _SLOT

    need_fast_path()
    module = importlib.import_module("ips.fast._fastpath")
    assert module.timer_slot(deadline) == int(deadline // _SLOT) + 1


def _damaged(tmp_path: Path, tail: bytes, empty: int = 3) -> str:
    """A capture of the bench traffic with empty records among them and `tail` at its end."""
    path = tmp_path / "damaged.pcap"
    packets = BENCH.traffic(300, 40)
    records: list[tuple[float, bytes]] = [(10.0 + i * 0.01, p) for i, p in enumerate(packets)]
    records[100:100] = [(11.0, b"")] * empty
    write_pcap(path, records)
    with open(path, "ab") as f:
        f.write(tail)
    return str(path)


@pytest.mark.parametrize(
    "tail",
    [b"", b"\x01\x02\x03", struct.pack("<IIII", 12, 0, 60, 60) + b"x" * 10],
    ids=["clean", "cut-header", "cut-record"],
)
def test_mapped_replay_reads_damaged_captures_as_the_reader(tmp_path: Path, tail: bytes) -> None:
    path = _damaged(tmp_path, tail)
    text = "set default accept\nset app-layer off\n"
    reference = _replay(text, [path], fast_path=False, mapped=False)
    assert _replay(text, [path], fast_path=True, mapped=True) == reference
    assert f'"truncated": {len(tail)}' in reference[0]


def test_mapped_replay_refuses_what_the_reader_refuses(tmp_path: Path) -> None:
    text = "set default accept\n"
    long_record = _damaged(tmp_path, struct.pack("<IIII", 12, 0, 1 << 27, 60))
    with pytest.raises(CaptureError) as reader_error:
        _replay(text, [long_record], fast_path=False, mapped=False)
    with pytest.raises(CaptureError) as mapped_error:
        _replay(text, [long_record], fast_path=True, mapped=True)
    assert str(mapped_error.value) == str(reader_error.value)
    zeros = _damaged(tmp_path, b"", empty=MAX_EMPTY_RUN + 5)
    with pytest.raises(CaptureError) as reader_error:
        _replay(text, [zeros], fast_path=False, mapped=False)
    with pytest.raises(CaptureError) as mapped_error:
        _replay(text, [zeros], fast_path=True, mapped=True)
    assert str(mapped_error.value) == str(reader_error.value)


_PACKET_FIELDS = (
    "data", "family", "src", "dst", "proto", "sport", "dport", "flags", "icmp_type",
    "icmp_code", "ttl", "tos", "length", "l4_offset", "payload_offset", "frag", "vlans",
)  # fmt: skip


def test_a_packet_decoded_in_compiled_code_is_the_python_decoders(pcaps_dir: Path) -> None:
    """What the fast path decodes but does not decide goes back as a Packet; it must be the
    very Packet ips/core/decode.py makes (an engine without flows that accepts by default
    decides nothing but the frames that are not IP, which it counts as such)."""
    need_fast_path()
    engine = Engine(load_policy_text("set default accept\n", "t.rules"))
    path = engine._fast_path
    assert path is not None
    decoded = not_ip = 0
    samples = [r for p in shared_captures() for r in capture_records(p)]
    samples += [(1.0, LINKTYPE_RAW, p) for p in BENCH.traffic(500, 100)]
    for ts, linktype, data in samples:
        got = path.handle(data, Meta(linktype=linktype), ts)
        if got is None:
            continue
        if got is engine._not_ip:
            assert decode_frame(data, linktype) is None
            not_ip += 1
            continue
        assert isinstance(got, Packet)
        want = decode_frame(data, linktype)
        assert isinstance(want, Packet)
        assert [getattr(got, f) for f in _PACKET_FIELDS] == [
            getattr(want, f) for f in _PACKET_FIELDS
        ]
        decoded += 1
    assert decoded > len(samples) // 2
    assert engine.stats.packets == engine.stats.not_ip == not_ip > 0
    assert len(engine.flows) == 0


@pytest.mark.parametrize("mapped", [False, True])
def test_the_progress_bar_shows_packets_per_second(
    tmp_path: Path, mapped: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _damaged(tmp_path, b"", empty=0)
    policy = load_policy_text("set default accept\n", "t.rules")
    result = replay_captures(policy, [path], progress=True, mapped=mapped)
    assert result.packets == 300
    err = capsys.readouterr().err
    assert "packets/s" in err and "300 packets" in err


# ---- floods and limits counted in compiled code: rates crossed both ways ----------------------

_FLOOD_POLICIES = {
    # one udpflood per source, limit: drops from Python, counting in C in between
    "udp-src": "set default accept\ndetect udpflood rate 50/s per src limit\n",
    # per source and per destination, ignore lists, block and alert responses
    "udp-both-ignore": """\
table banned dynamic timeout 1h
set default accept
drop from @banned
detect udpflood rate 50/s per src block 10m ignore { 10.10.1.30, 10.99.0.0/16 }
detect udpflood rate 80/s per dst alert ignore { 10.10.1.30, 10.10.2.20 }
""",
    # reflection: UDP from an amplifier port (53, 123) to another port is its own
    "udp-reflection": """\
set default accept
detect reflection rate 30/s sources 2
detect udpflood rate 60/s per dst limit
detect portscan ports 15 within 60s alert
""",
    # ICMP echo: rule limits per src, dst, flow and rule, two icmpfloods; no `state
    # established` before them, so every echo request meets its limit
    "icmp-limits": """\
set default drop
accept proto icmp type echo-request from 10.10.1.10 limit 100/s per src else drop
accept proto icmp type echo-request from 10.10.1.20 limit 70/s per dst
accept proto icmp type echo-request limit 40/s per flow else drop
accept proto icmp type echo-reply limit 150/s
accept proto icmpv6 type echo-request limit 50/s per src else drop
accept proto icmpv6 type 129
accept proto udp
detect icmpflood rate 60/s per src limit
detect icmpflood rate 90/s per dst alert ignore 10.10.2.20
detect reflection rate 30/s sources 2
""",
    # the bench's policy shape: gateway.rules, its ping limit and flood rates as bench/lab.py
    # makes them (x1000 there; lower here so that this traffic crosses them)
    "gateway": GATEWAY.replace("limit 20/s per src", "limit 120/s per src")
    .replace("rate 200/s", "rate 80/s")
    .replace("rate 5000/s", "rate 90/s")
    + "accept proto udp from $lan to $dmz port 5000-5010\n",
}

_SOURCES = ["10.10.1.10", "10.10.1.20", "10.10.1.30", "10.99.1.1"]
_TARGETS = ["10.10.2.10", "10.10.2.20"]
_V6 = [("fd00::10", "fd00:2::10"), ("fd00::20", "fd00:2::10")]


def flood_traffic(seed: int) -> list[tuple[float, bytes]]:
    """One-way UDP and pings (with their replies, mostly) from a few sources, in phases of
    rates under and over the detectors' and the rules' (20 to 1500 packets a second), with
    equal times, and once a clock that steps back."""
    rng = random.Random(seed)
    out: list[tuple[float, bytes]] = []
    now = 50.0
    for seconds, rate in ((2.0, 25), (1.0, 1500), (1.5, 20), (0.5, 900), (2.0, 40), (1.0, 400)):
        end = now + seconds
        while now < end:
            kind = rng.random()
            src = rng.choice(_SOURCES)
            dst = rng.choice(_TARGETS)
            if kind < 0.45:  # one-way UDP: a few flows per source
                sport = 40000 + rng.randrange(3)
                dport = rng.choice([53, 5000, 5001, 7])
                out.append(
                    (now, build_packet(PROTO_UDP, src, dst, sport, dport, payload=b"u" * 18))
                )
            elif kind < 0.5:  # an answer, now and then
                sport = 40000 + rng.randrange(3)
                out.append((now, build_packet(PROTO_UDP, dst, src, 5000, sport, payload=b"r")))
            elif kind < 0.58:  # from an amplifier port (or an equal one) to the LAN
                sport = rng.choice([53, 123, 40001])
                dport = rng.choice([40000, 123])
                out.append((now, build_packet(PROTO_UDP, dst, src, sport, dport, payload=b"a")))
            elif kind < 0.9:  # a ping, its reply most of the time
                ident = 7 + rng.randrange(2)
                req = build_packet(PROTO_ICMP, src, dst, icmp_type=8, icmp_id=ident, payload=b"p")
                out.append((now, req))
                if rng.random() < 0.8:
                    rep = build_packet(PROTO_ICMP, dst, src, icmp_type=0, icmp_id=ident)
                    out.append((now + 0.0002, rep))
            elif kind < 0.93:  # a reply nobody asked for (reflection's)
                rep = build_packet(PROTO_ICMP, dst, src, icmp_type=0, icmp_id=99)
                out.append((now, rep))
            else:  # ICMPv6 echo
                v6src, v6dst = rng.choice(_V6)
                req = build_packet(58, v6src, v6dst, icmp_type=128, icmp_id=3)
                out.append((now, req))
                if rng.random() < 0.7:
                    out.append((now, build_packet(58, v6dst, v6src, icmp_type=129, icmp_id=3)))
            gap = rng.expovariate(rate)
            now += 0.0 if rng.random() < 0.05 else gap
        if seconds == 1.5:
            now -= 0.5  # the clock steps back once (buckets must not refill backwards)
    return out


@pytest.mark.parametrize("policy", sorted(_FLOOD_POLICIES))
@pytest.mark.parametrize("seed", [1, 2])
def test_floods_and_limits_counted_in_compiled_code_decide_the_same(policy: str, seed: int) -> None:
    """udpflood and icmpflood buckets, and rule limits on ICMP echo, updated by the fast path
    for packets under the rate; Python for new keys and packets over it. Every bucket equal to
    the bit at each tick and at the end."""
    need_fast_path()
    pair = Pair(_FLOOD_POLICIES[policy])
    now = 0.0
    for now, data in flood_traffic(seed):
        pair.handle(data, META, now)
    pair.finish(now + 1.0)
    stats = pair.slow.stats
    assert pair.fast_packets > pair.packets // 5, (pair.fast_packets, pair.packets)
    # the rates were crossed: Python limited or alerted some of them
    assert stats.detector_drops or stats.detector_alerts or stats.verdicts["drop"]
    if policy == "icmp-limits":
        assert any(r.limiter is not None and r.limiter.buckets for r in pair.fast.policy.rules)


def test_icmp_echo_of_a_known_flow_is_decided_in_compiled_code() -> None:
    """A ping within its limit and the icmpflood's rate: after its first exchange, every
    request and reply is decided by the fast path."""
    need_fast_path()
    pair = Pair(_FLOOD_POLICIES["icmp-limits"])
    now = 10.0
    for _ in range(200):
        now += 0.05
        req = build_packet(PROTO_ICMP, "10.10.1.10", "10.10.2.10", icmp_type=8, icmp_id=5)
        pair.handle(req, META, now)
        pair.handle(
            build_packet(PROTO_ICMP, "10.10.2.10", "10.10.1.10", icmp_type=0, icmp_id=5),
            META,
            now + 0.0003,
        )
    pair.finish(now + 1.0)
    assert pair.fast_packets >= 2 * 200 - 4
    assert pair.slow.stats.verdicts == {"accept": 400}


LOW_RATES_POLICY = """\
set default accept
accept proto icmp type echo-request limit 3/s per src else drop
accept proto icmp type echo-reply limit 4/s per flow
accept proto udp to port 137 limit 2/s per dst
detect udpflood rate 2/s per src limit
detect udpflood rate 3/s per dst alert ignore 10.10.1.20
detect icmpflood rate 2/s per dst limit
detect reflection rate 2/s sources 2
detect portscan ports 15 within 60s alert
"""

low_rate_specs = st.lists(
    st.tuples(
        st.sampled_from([PROTO_UDP, PROTO_UDP, PROTO_ICMP, PROTO_ICMP, PROTO_TCP]),
        st.sampled_from(_HOSTS),
        st.sampled_from(_HOSTS),
        st.sampled_from(_PORTS),
        st.sampled_from(_PORTS),
        st.sampled_from([0x10, 0x18, 0x02, 0x12]),
        st.sampled_from(_PAYLOADS[:3]),
        st.sampled_from([0.0, 0.0, 0.001, 0.05, 0.2, 0.7, -0.3]),
        st.booleans(),
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=60, deadline=None)
@given(low_rate_specs)
def test_generated_packets_at_low_rates_decide_the_same(specs: list[tuple[Any, ...]]) -> None:
    """Rates of a few packets a second, gaps of none to most of a second (and a clock that
    steps back): floods and limits cross their rates both ways at every step."""
    feed_generated(Pair(LOW_RATES_POLICY), specs)


# ---- packets of no flow that the policy refuses ------------------------------------------------

_REFUSED_POLICIES = {
    # the bench's ten rules, its 10,000 generated rules (drop from 198.18.0.0/15 among them:
    # terminal drops that count their hits) and the six detectors of the gateway
    "ten-thousand": "set app-layer off\n"
    + (BENCH.TEN_RULES + BENCH.DETECTORS).replace(
        "set default drop\n",
        "set default drop\n" + "\n".join(BENCH.generated_rules(10_000)) + "\n",
    ),
    "gateway": "set app-layer off\n" + GATEWAY,
    # with application parsing on: refused TCP segments without payload (the inspector's
    # first look makes a quiet state that goes with the flow, and asks passive DNS)
    "gateway-app-on": GATEWAY,
    # no detector: UDP of no flow is decided in compiled code too
    "no-detectors": "set app-layer off\n" + BENCH.TEN_RULES,
    # drops with limits per source, per rule and per flow (the last always to Python), a
    # default that rejects (our reply: Python)
    "limits": """\
set app-layer off
set default reject
drop proto tcp from 198.18.0.0/16 limit 40/s per src else accept
drop proto udp limit 30/s
drop proto tcp from 192.0.2.0/24 limit 50/s per flow
drop proto tcp to 203.0.113.0/24
detect portscan ports 15 within 60s alert
""",
}

# sources: many (no one of them a scanner for long: the detectors would ban it, and its
# packets go to Python as blocked), and a few that come back often
_REFUSED_SOURCES = ["198.18.0.1", "198.18.1.7", "198.19.3.3", "192.0.2.7", "10.10.1.10"]
_REFUSED_NETS = ["198.18.{}.{}", "198.19.{}.{}", "192.0.{}.{}", "100.64.{}.{}"]
_REFUSED_TARGETS = ["10.20.0.5", "10.30.0.1", "203.0.113.9", "10.20.7.1"]
# addresses that are no host (multicast, broadcast, loopback): `_probe` skips them
_NO_HOSTS = ["239.255.255.250", "255.255.255.255", "224.0.0.251", "127.0.0.1", "0.0.0.0"]
# mid-stream segments (ACK, ACK with data, PSH+ACK, FIN+ACK), answers (SYN+ACK, resets),
# probes (SYN, bare ACK), a stealth flag combination
_REFUSED_FLAGS = [0x10, 0x10, 0x18, 0x18, 0x11, 0x12, 0x04, 0x14, 0x02, 0x01, 0x29]


def refused_traffic(seed: int) -> list[tuple[float, bytes]]:
    """Packets of no flow, most of them refused, over six seconds (the flow table's timer
    slots made anew each second, its unreplied queue compacted every thousand or so): TCP
    of any flags with and without payload, UDP, and probes followed by their answers (a
    first packet of no flow that answers a pending probe: the detectors note it; one that
    repeats a pending probe: nothing to do, unless a probe is due)."""
    rng = random.Random(seed)
    out: list[tuple[float, bytes]] = []
    now = 20.0
    while now < 26.0:
        if rng.random() < 0.2:
            src = rng.choice(_REFUSED_SOURCES)
        else:
            src = rng.choice(_REFUSED_NETS).format(rng.randrange(4), rng.randrange(1, 250))
        dst = rng.choice(_REFUSED_TARGETS)
        if rng.random() < 0.06:
            dst = rng.choice(_NO_HOSTS)
        elif rng.random() < 0.01:
            src = rng.choice(_NO_HOSTS)
        sport = 30000 + rng.randrange(200)
        dport = rng.choice([22, 25, 80, 443, 445, 3306, 8080, 20000 + rng.randrange(50)])
        kind = rng.random()
        if kind < 0.7:
            flags = rng.choice(_REFUSED_FLAGS)
            payload = b"d" * rng.choice([0, 0, 20, 300]) if flags & 0x10 else b""
            out.append(
                (now, build_packet(PROTO_TCP, src, dst, sport, dport, flags=flags, payload=payload))
            )
        elif kind < 0.85:
            out.append((now, build_packet(PROTO_UDP, src, dst, sport, dport, payload=b"u" * 30)))
        elif kind < 0.91:
            # a UDP probe (now and then to a traceroute port: no probe), repeated now and
            # then, and answered (or not)
            if rng.random() < 0.15:
                dport = 33434 + rng.randrange(101)
            out.append((now, build_packet(PROTO_UDP, src, dst, sport, dport, payload=b"q" * 20)))
            for _ in range(rng.choice([0, 0, 1, 3])):
                again = now + rng.choice([0.05, 0.3, 1.0, 2.5])
                probe_again = build_packet(PROTO_UDP, src, dst, sport, dport, payload=b"q" * 20)
                out.append((again, probe_again))
            if rng.random() < 0.6:
                reply = build_packet(PROTO_UDP, dst, src, dport, sport, payload=b"r" * 20)
                out.append((now + 0.01, reply))
        else:
            # a probe, repeated now and then (within its grace time or after), then its
            # answer (data, SYN+ACK or a reset) a little later
            probe = rng.choice([0x02, 0x10])
            out.append((now, build_packet(PROTO_TCP, src, dst, sport, dport, flags=probe)))
            for _ in range(rng.choice([0, 0, 1, 3])):
                again = now + rng.choice([0.05, 0.3, 1.0, 2.5])
                out.append((again, build_packet(PROTO_TCP, src, dst, sport, dport, flags=probe)))
            answer = rng.choice([0x18, 0x10, 0x12, 0x14])
            payload = b"a" * 40 if answer == 0x18 else b""
            out.append(
                (
                    now + 0.01,
                    build_packet(PROTO_TCP, dst, src, dport, sport, flags=answer, payload=payload),
                )
            )
        now += rng.expovariate(900.0)
    out.sort(key=lambda item: item[0])
    return out


@pytest.mark.parametrize("policy", sorted(_REFUSED_POLICIES))
@pytest.mark.parametrize("seed", [3, 4])
def test_refused_packets_of_no_flow_decide_the_same(policy: str, seed: int) -> None:
    """A first packet the policy refuses leaves no flow; the compiled path decides it when
    the detectors declare nothing to do with it (or only note an answer to a pending probe)
    and the rules drop it with nothing to say: the same decisions, rule hits, limits, flow
    table (its counters, next id, timer slots and unreplied queue), detector state and
    policy memos as the Python engine, tick after tick."""
    need_fast_path()
    pair = Pair(_REFUSED_POLICIES[policy])
    # The answers to pending probes the compiled path notes: in compiled code when the
    # detectors declare note_answer's work (answers_note_outcome), and through
    # Detectors.note_answer when not (seed 4 takes that way: both are held to Python).
    fast_path = pair.fast._fast_path
    if fast_path is not None and seed == 4:
        fast_path.answers_in_c = False
    now = 0.0
    for now, data in refused_traffic(seed):
        pair.handle(data, META, now)
    pair.finish(now + 1.0)
    slow = pair.slow
    assert pair.flowless_packets > pair.packets // 10, (pair.flowless_packets, pair.packets)
    assert slow.flows.stats.discarded > pair.packets // 2
    if policy == "ten-thousand":
        # drop from 198.18.x.y: terminal drops met by packets of no flow
        assert sum(rule.hits for rule in slow.policy.rules if rule.spec.src is not None) > 0
    if policy in ("ten-thousand", "gateway"):
        # answers to pending probes, noted by the compiled path
        assert fast_path is not None and fast_path.answers_noted > 0


@pytest.mark.parametrize("floods", [False, True], ids=["scans", "scans+udpflood"])
def test_a_udp_probe_repeated_or_answered_is_decided_in_compiled_code(floods: bool) -> None:
    """UDP first packets with scans watching (PacketInterest.first_udp): a probe is filed,
    the same probe repeated within its grace time does nothing, and its answer is noted
    (each flood counting them, a new key's bucket made): all decided in compiled code. Due
    probes are Python's, as are a flood's packets over its rate (an alert: an effect)."""
    need_fast_path()
    policy = "set app-layer off\nset default drop\ndetect portscan ports 15 within 60s alert\n"
    if floods:
        policy += "detect udpflood rate 30/s per dst alert\n"
    pair = Pair(policy)
    pair.next_tick = 200.0  # no tick here: the due probes are weighed by a packet
    scanner, target = "198.18.5.5", "10.30.0.1"
    now = 100.0
    for port in range(1000, 1020):
        now += 0.01
        pair.handle(build_packet(PROTO_UDP, scanner, target, 40000, port, payload=b"p"), META, now)
    before = pair.flowless_packets
    noted = pair.fast._fast_path.answers_noted
    for port in range(1000, 1020):  # within their grace time: nothing to do
        now += 0.01
        pair.handle(build_packet(PROTO_UDP, scanner, target, 40000, port, payload=b"p"), META, now)
    for port in range(1000, 1005):  # answers (refused too): noted
        now += 0.01
        pair.handle(build_packet(PROTO_UDP, target, scanner, port, 40000, payload=b"a"), META, now)
    # (with the flood per dst, the first answer makes its bucket for the scanner)
    assert pair.flowless_packets == before + 25
    assert pair.fast._fast_path.answers_noted == noted + 5
    pair.check_state()
    # to addresses that are no host (SSDP, mDNS, broadcast; IPv6 multicast, loopback):
    # `_probe` skips them, whatever is pending (with the flood, a new bucket each)
    before = pair.flowless_packets
    for src, dst in [
        ("198.18.5.5", "239.255.255.250"),
        ("198.18.5.5", "224.0.0.251"),
        ("198.18.5.5", "255.255.255.255"),
        ("2001:db8::5", "ff02::fb"),
        ("2001:db8::5", "::1"),
        ("2001:db8::5", "2001:db8::9"),  # a host: a probe (filed), then its repeat
    ]:
        for _ in range(2):
            now += 0.01
            pair.handle(build_packet(PROTO_UDP, src, dst, 5353, 1900, payload=b"m"), META, now)
    assert pair.flowless_packets == before + 12
    pair.check_state()
    # a burst past the flood's rate (to new ports: probes, and over the rate: Python)
    for port in range(2000, 2060):
        now += 0.001
        pair.handle(build_packet(PROTO_UDP, scanner, target, 40000, port, payload=b"p"), META, now)
    assert (pair.slow.stats.detector_alerts["udpflood"] > 0) == floods
    # due now: the first repeat weighs them (an alert), before any tick
    pair.handle(build_packet(PROTO_UDP, scanner, target, 40000, 1010, payload=b"p"), META, 102.6)
    pair.finish(104.0)


@pytest.mark.parametrize("probe", [0x10, 0x02], ids=["ack", "syn"])
def test_a_repeated_probe_is_decided_in_compiled_code_unless_probes_are_due(probe: int) -> None:
    """A scanner's probes of twenty ports, unanswered; each repeated within its grace time
    does nothing (decided in compiled code); repeated once they are due, `_probe` weighs
    them first (Python), and the repeat is a new probe: with SYNs, the scan is complete and
    its alert rides on that packet's Decision (an unanswered ACK weighs nothing)."""
    need_fast_path()
    policy = "set app-layer off\nset default drop\ndetect portscan ports 15 within 60s alert\n"
    pair = Pair(policy)
    pair.next_tick = 200.0  # no tick here: the due probes are weighed by a packet
    scanner, target = "198.18.5.5", "10.30.0.1"
    now = 100.0
    for port in range(1000, 1020):
        now += 0.01
        pair.handle(build_packet(PROTO_TCP, scanner, target, 40000, port, flags=probe), META, now)
    before = pair.flowless_packets
    for port in range(1000, 1020):  # within their grace time: nothing to do
        now += 0.01
        pair.handle(build_packet(PROTO_TCP, scanner, target, 40000, port, flags=probe), META, now)
    assert pair.flowless_packets == before + 20
    # a data segment of no flow (no probe): it opens the flow table's timer slot of this
    # second (made in compiled code too), so that the repeat below is left to Python for
    # its probes alone
    data = build_packet(PROTO_TCP, "192.0.2.1", target, 40001, 80, flags=0x18, payload=b"x")
    pair.handle(data, META, 102.5)
    assert pair.flowless_packets == before + 21
    # due now: the first repeat weighs them (an alert), before any tick
    pair.handle(build_packet(PROTO_TCP, scanner, target, 40000, 1000, flags=probe), META, 102.6)
    assert pair.flowless_packets == before + 21
    assert pair.slow.stats.alerts == (1 if probe == 0x02 else 0)
    pair.finish(104.0)


# ---- accepted handshakes: the responder's SYN+ACK ------------------------------------------------

# bench/newflow.py's and bench/lab.py's ports (5201-5209: no payload rule, offloaded at the
# SYN+ACK) beside the gateway's web ports (payload rules: offload waits on their depth)
_BENCH_ACCEPT = "accept  proto { tcp, udp } from $lan to $dmz port 5201-5209\n"
# (the servers trusted: the answers with FIN below are `stealth`'s SYN+FIN, which would ban
# them, and every later answer would be a blocked source's)
_GATEWAY_BENCH = GATEWAY.replace(
    "accept  state established\n", "accept  state established\n" + _BENCH_ACCEPT
).replace(
    "table trusted = { 127.0.0.0/8, ::1 }", "table trusted = { 127.0.0.0/8, ::1, 10.10.2.0/24 }"
)

_HANDSHAKE_POLICIES = {
    # the gateway's six detectors (stealth and synflood look at some reverse flags bytes)
    "gateway": "set app-layer off\n" + _GATEWAY_BENCH,
    "gateway-offload-off": "set app-layer off\nset offload off\n" + _GATEWAY_BENCH,
    # application parsing on: the inspector's state of a flow without payload yet, and
    # no offload while it reads (offload_kind's app_reading)
    "gateway-app": _GATEWAY_BENCH,
    "no-detectors": "set app-layer off\n"
    + BENCH.TEN_RULES.replace("10.20.0.0/16", "10.10.2.0/24")
    + "accept proto tcp from 10.10.1.0/24 to 10.10.2.0/24 port 5201-5209\n",
    # rules the answer meets itself: limits per source, per flow (a new key each flow) and
    # per rule, a drop of one server's answers, a payload rule on the way back (offload
    # waits on its depth that way), states, and a default that accepts
    "reverse-rules": """\
set app-layer off
set default accept
accept proto tcp from 10.10.2.10 port 80 limit 40/s per src else drop
accept proto tcp from 10.10.2.20 port 443 limit 30/s per flow
drop   proto tcp from 10.10.2.20 port 8080
accept proto tcp from 10.10.2.10 port 22 limit 25/s
drop   proto tcp from 10.10.2.0/24 port 5209 payload contains "EVIL"
accept proto tcp state new to 10.10.2.0/24
accept proto tcp state established flags SA/SAFR from 10.10.2.0/24 port 25
detect portscan ports 15 within 60s alert
detect synflood rate 40/s per dst limit
""",
    # the same with application parsing on: the inspector notes the answer's start (its
    # drops, while the inspector reads, owe its events: Python)
    "reverse-rules-app": """\
set default accept
accept proto tcp from 10.10.2.10 port 80 limit 40/s per src else drop
drop   proto tcp from 10.10.2.20 port 8080
accept proto tcp state new to 10.10.2.0/24
detect portscan ports 15 within 60s alert
""",
    # `volume` declares nothing: every packet goes to Python
    "volume": "set app-layer off\n"
    + _GATEWAY_BENCH
    + "detect volume packets 20000/s per dst alert\n",
}

_CLIENTS = ["10.10.1.10", "10.10.1.20", "10.10.1.30"]
_SERVERS = ["10.10.2.10", "10.10.2.20"]
_SERVICES = [80, 443, 8080, 22, 25, 5201, 5209, 5209]
# the answer's flags byte: SYN+ACK alone, or with PSH, ECE, ECE+CWR, URG; with FIN (Python)
_ANSWER_FLAGS = [0x12, 0x12, 0x12, 0x1A, 0x52, 0xD2, 0x32, 0x13]


def handshake_traffic(seed: int) -> list[tuple[float, bytes]]:
    """TCP connections from the LAN to the servers, most of them accepted: SYN (sometimes
    repeated), the answer (any of _ANSWER_FLAGS, now and then with payload, repeated, or
    after a reverse segment), the handshake's ACK, data both ways and an end, or nothing
    after the SYN+ACK; ports reused, phases of 20 to 600 connections a second (the limits
    crossed), and a clock that steps back."""
    rng = random.Random(seed)
    out: list[tuple[float, bytes]] = []
    now = 30.0

    def tcp(
        at: float, src: str, dst: str, sp: int, dp: int, flags: int, payload: bytes = b""
    ) -> None:
        out.append((at, build_packet(PROTO_TCP, src, dst, sp, dp, flags=flags, payload=payload)))

    for seconds, rate in ((1.5, 20), (1.0, 600), (1.5, 60), (1.0, 300)):
        end = now + seconds
        while now < end:
            client, server = rng.choice(_CLIENTS), rng.choice(_SERVERS)
            cport = 41000 + rng.randrange(300)  # reused now and then
            port = rng.choice(_SERVICES)
            t = now
            tcp(t, client, server, cport, port, 0x02)
            if rng.random() < 0.1:
                t += 0.2
                tcp(t, client, server, cport, port, 0x02)  # the SYN again
            if rng.random() < 0.05:
                t += 0.0001
                tcp(t, server, client, port, cport, 0x10)  # a reverse segment first
            flags = rng.choice(_ANSWER_FLAGS)
            payload = b"EVIL answer" if rng.random() < 0.05 else b""
            t += rng.choice([0.0, 0.0002, 0.001])
            tcp(t, server, client, port, cport, flags, payload)
            if rng.random() < 0.1:
                tcp(t + 0.3, server, client, port, cport, flags)  # the answer again
            if rng.random() < 0.8:
                t += 0.0002
                tcp(t, client, server, cport, port, 0x10)
                tcp(t + 0.0001, client, server, cport, port, 0x18, b"GET / HTTP/1.1\r\n\r\n")
                tcp(t + 0.0003, server, client, port, cport, 0x18, b"HTTP/1.1 200 OK\r\n\r\n")
                end_flags = rng.choice([0x11, 0x14])
                tcp(t + 0.0004, client, server, cport, port, end_flags)
            now += rng.expovariate(rate)
        if seconds == 1.0 and rate == 600:
            now -= 0.4  # the clock steps back once
    out.sort(key=lambda item: item[0])
    return out


@pytest.mark.parametrize("policy", sorted(_HANDSHAKE_POLICIES))
@pytest.mark.parametrize("seed", [5, 6])
def test_accepted_handshakes_decide_the_same(policy: str, seed: int) -> None:
    """The responder's SYN+ACK of a flow whose SYN was accepted: decided in compiled code
    (FastPath._syn_ack: the flow's state moved, its reverse candidates found and kept, the
    rules walked, OFFLOAD_HANDSHAKE_ACK chosen as offload_kind chooses it) when the
    detectors declare nothing to do with it and the flow has no application-layer work
    left; the same decisions, caches, flow table, detector state, limits and counters as
    the Python engine, tick after tick."""
    need_fast_path()
    pair = Pair(_HANDSHAKE_POLICIES[policy])
    now = 0.0
    traffic = handshake_traffic(seed)
    for i, (now, data) in enumerate(traffic):
        if i == len(traffic) // 2:
            # an apply in the middle: handshakes under way whose forward candidates name
            # the old policy, offloaded flows that come back
            for engine in (pair.slow, pair.fast):
                engine.load(load_policy_text(_HANDSHAKE_POLICIES[policy], "applied.rules"))
        pair.handle(data, META, now)
    pair.finish(now + 1.0)
    verdicts = pair.slow.stats.verdicts
    assert verdicts["accept"] > pair.packets // 2, verdicts
    if policy == "volume":
        assert pair.syn_ack_packets == 0  # a detector that declares nothing sees every packet
    else:
        assert pair.syn_ack_packets > 100, (pair.syn_ack_packets, pair.packets)
    if policy in ("gateway", "no-detectors", "reverse-rules"):
        assert pair.slow.stats.offloaded > 0
    if policy == "reverse-rules":
        # the answers met limits over their rate (Python) and under it (compiled code)
        limited = [r for r in pair.slow.policy.rules if r.limiter is not None]
        assert all(r.hits > 0 for r in limited), [r.hits for r in limited]


@pytest.mark.parametrize("policy", ["gateway", "gateway-app"])
def test_a_handshake_step_that_would_refile_its_flow_sooner_goes_to_python(policy: str) -> None:
    """With ESTABLISHED's timeout shorter than a new connection's, the handshake's last ACK
    moves its flow sooner on the timer wheel (FlowTable._refile_if_sooner): Python's to do.
    The compiled path must leave it (FastPath._refiled_sooner); the flow table's wheel and
    slots, compared tick after tick, say whether it did."""
    need_fast_path()
    timeouts = FlowTimeouts(tcp_new=30.0, tcp_established=5.0)
    pair = Pair(_HANDSHAKE_POLICIES[policy], timeouts=timeouts)
    now = 0.0
    for now, data in handshake_traffic(5):
        pair.handle(data, META, now)
    pair.finish(now + 1.0)
    assert pair.syn_ack_packets > 100  # the answers (SYN_SENT -> SYN_RECV: no sooner)


def test_a_handshake_answer_is_offloaded_in_compiled_code() -> None:
    """bench/newflow.py's connection: the SYN in Python (a new flow), its SYN+ACK decided
    in compiled code with OFFLOAD_HANDSHAKE_ACK, as the Python engine decides it."""
    need_fast_path()
    pair = Pair(_HANDSHAKE_POLICIES["gateway"])
    now = 40.0
    client, server = "10.10.1.20", "10.10.2.10"
    for i in range(50):
        now += 0.01
        syn = build_packet(PROTO_TCP, client, server, 42000 + i, 5209, flags=0x02)
        pair.handle(syn, META, now)
        before = pair.syn_ack_packets
        answer = build_packet(PROTO_TCP, server, client, 5209, 42000 + i, flags=0x12)
        pair.handle(answer, META, now + 0.0001)
        # (the first answer's candidates are not memoised yet: Python makes them)
        assert pair.syn_ack_packets == before + (i > 0)
        got = pair.fast.handle(answer, META, now + 0.0002)  # its retransmission: Python
        assert got.offload == OFFLOAD_HANDSHAKE_ACK
        assert pair.slow.handle(answer, META, now + 0.0002).offload == OFFLOAD_HANDSHAKE_ACK
    pair.finish(now + 1.0)
    assert pair.slow.stats.verdicts == {"accept": 150}


def test_a_handshake_with_application_parsing_is_decided_in_compiled_code() -> None:
    """With application parsing on, the connection of bench/newflow.py: the SYN and the
    request in Python (a new flow; the inspector reads the payload), the SYN+ACK and the
    handshake's ACK in compiled code (the inspector's quiet state: nothing to read yet).
    The SYN+ACK lets the kernel pass the bare ACKs only (OFFLOAD_BARE_ACKS: the request
    must come to the queue); the ACK is fed anyway, as a connection of an older generation
    would bring it."""
    need_fast_path()
    pair = Pair(_HANDSHAKE_POLICIES["gateway-app"])
    now = 40.0
    client, server = "10.10.1.20", "10.10.2.10"
    for i in range(30):
        now += 0.01
        cport = 42000 + i
        pair.handle(build_packet(PROTO_TCP, client, server, cport, 5209, flags=0x02), META, now)
        before, answers = pair.fast_packets, pair.syn_ack_packets
        answer = build_packet(PROTO_TCP, server, client, 5209, cport, flags=0x12)
        assert pair.handle(answer, META, now + 0.0001).offload == OFFLOAD_BARE_ACKS
        assert pair.syn_ack_packets == answers + (i > 0)
        ack = build_packet(PROTO_TCP, client, server, cport, 5209, flags=0x10)
        pair.handle(ack, META, now + 0.0002)
        request = b"GET / HTTP/1.1\r\nHost: s\r\n\r\n"
        data = build_packet(PROTO_TCP, client, server, cport, 5209, flags=0x18, payload=request)
        pair.handle(data, META, now + 0.0003)
        # (the first answer's candidates are not memoised yet: Python makes them)
        assert pair.fast_packets == before + (2 if i > 0 else 1)
    pair.finish(now + 1.0)
    assert pair.slow.flows.handshakes  # the ACKs recorded the clients' handshakes


def test_handshakes_beyond_their_memory_are_forgotten_alike(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The flow table remembers HANDSHAKE_MEMORY sources that completed a handshake, the
    oldest forgotten first: the compiled path records a handshake's last ACK with the same
    dict operations (here with a memory of 4, so that the traffic's clients overflow it)."""
    need_fast_path()
    import ips.core.flow as flow_module
    from ips.fast import _fastpath

    monkeypatch.setattr(flow_module, "HANDSHAKE_MEMORY", 4)
    monkeypatch.setattr(_fastpath, "HANDSHAKE_MEMORY", 4)
    pair = Pair(_HANDSHAKE_POLICIES["gateway-app"])
    now = 50.0
    for i in range(40):
        now += 0.01
        client, cport = f"10.10.1.{40 + i % 9}", 43000 + i
        for src, dst, sport, dport, flags in (
            (client, "10.10.2.10", cport, 5209, 0x02),
            ("10.10.2.10", client, 5209, cport, 0x12),
            (client, "10.10.2.10", cport, 5209, 0x10),
        ):
            pair.handle(build_packet(PROTO_TCP, src, dst, sport, dport, flags=flags), META, now)
        pair.check_state()
    pair.finish(now + 1.0)
    assert len(pair.slow.flows.handshakes) == 4
    assert pair.fast_packets >= 2 * 39


# ---- refused first segments with payload, application parsing on ----------------------------

# First payloads of every kind the stream detection tells apart (ips/app/detect.py): each
# protocol (the parsers then read it: Python), the starts of each that need more bytes
# (held until the flow's release), and bytes of no protocol (unknown).
_DNS_QUERY = bytes.fromhex("1234 0100 0001 0000 0000 0000 07 6578616d706c65 03 636f6d 00 0001 0001")
_FIRST_PAYLOADS = [
    # TLS: a ClientHello's and a ServerHello's record starts (Python), application data,
    # record starts too short to tell, and a 0x16 that is no TLS record
    b"\x16\x03\x01\x00\x50\x01\x00\x00\x4c\x03\x03" + bytes(range(60)),
    b"\x16\x03\x03\x00\x40\x02\x00\x00\x3c\x03\x03" + bytes(40),
    b"\x17\x03\x03\x01\x00" + bytes(range(200)),
    b"\x16",
    b"\x16\x03",
    b"\x16\x03\x01\x00",
    b"\x16\x05\x00\x00\x00\x00\x00\x00",
    # HTTP: requests, a response, method starts, a line of no method
    b"GET /index.html HTTP/1.1\r\nHost: www.example.com\r\n\r\n",
    b"POST /x HTTP/1.0\r\nContent-Length: 4\r\n\r\nabcd",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"GE",
    b"PROPF",
    b"HTTP/",
    b"Gxyz and then some text that is no request at all",
    b"HELLO there",
    # SSH: a banner, its starts, an S that is none
    b"SSH-2.0-OpenSSH_9.6\r\n",
    b"SS",
    b"SSH",
    b"Sx",
    b"SEARC",
    # DNS over TCP: a whole query (an event: Python), a length prefix and a header still
    # arriving, a question cut, a length too small
    struct.pack("!H", len(_DNS_QUERY)) + _DNS_QUERY,
    struct.pack("!H", len(_DNS_QUERY)) + _DNS_QUERY[:14],
    b"\x00",
    b"\x03\xe8" + bytes.fromhex("abcd 0100 0001 0000 0000 0000") + b"\x3f" + b"q" * 40,
    b"\x00\x05" + bytes(20),
    # a start that needs more, exactly 64 bytes long (the small policy's bound: complete,
    # so unknown)
    b"\x03\xe8" + bytes.fromhex("abcd 0100 0001 0000 0000 0000") + b"\x3f" + b"q" * 49,
    # no protocol
    b"d" * 20,
    b"\x00\x00\x00\x00",
    bytes(range(256)) * 2,
]
_FIRST_PAYLOADS += [
    # whole ClientHellos (parsed: the release counts the tls event the flow owed), one cut
    # (the parser waits for its length), a ServerHello read as a client's (malformed)
    records(client_hello_message(chrome_like_extensions("Example.COM", pq=False))),
    records(client_hello_message(chrome_like_extensions("refused.example")))[:900],
    records(server_hello_message(b"")),
    # HTTP requests the parser reads whole, one cut, one malformed
    b"GET /a HTTP/1.1\r\nHost: refused.example\r\nUser-Agent: t\r\n\r\n"
    b"GET /b HTTP/1.1\r\nHost: refused.example\r\n\r\n",
    b"GET /cut HTTP/1.1\r\nHost: refu",
    b"GET \x00\x01 bad\r\n\r\n",
    # HTTP responses read as a client's requests (a flow picked up at the server's
    # answer): a header block still arriving, one ended by LF alone, one with too many
    # header lines
    b"HTTP/1.1 200 OK\r\nServer: x\r\n",
    b"HTTP/1.0 404 Not Found\n\nbody",
    b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 140 + b"\r\n",
    # a ServerHello read as a client's (a single record), and followed by another record:
    # a ChangeCipherSpec, or a handshake record of a bad version (malformed as that)
    records(server_hello_message(b"")) + b"\x14\x03\x03\x00\x01\x01",
    records(server_hello_message(b"")) + b"\x16\x03\x09\x00\x01\x00",
    # an SSH banner cut, and one that is malformed
    b"SSH-2.0-Open",
    b"SSH-9\r\n",
]
# UDP datagrams: DNS (each message is an event: Python), a QUIC Initial's start (its
# reader: Python), bytes of no protocol (unknown), and none (the flow's UDP state goes)
_FIRST_DATAGRAMS = [
    dns_query("refused.example"),
    dns_response(),
    b"\xc3\x00\x00\x00\x01\x08" + bytes(8) + b"\x00" + bytes(60),
    b"\xc3\x00\x00\x00\x02\x08" + bytes(70),
    b"u" * 30,
    bytes(range(40)),
    b"",
]
_FIRST_FLAGS = [0x10, 0x18, 0x18, 0x11, 0x14, 0x19, 0x02]

_FIRST_PAYLOAD_POLICIES = {
    "gateway-app-on": GATEWAY,
    # a bound of 64 bytes (longer payloads reach it: Python) and a memory cap of 4 KiB that
    # the accepted flows' held bytes fill (a payload over the cap: "memcap", Python)
    "gateway-app-small": "set app-stream-bytes 64\nset app-memcap 4096\n" + GATEWAY,
    # no detector at all
    "no-detectors-app": "set default drop\naccept proto tcp from 10.10.1.0/24 to port 80\n",
}


def first_payload_traffic(seed: int) -> list[tuple[float, bytes]]:
    """The first packets of many flows picked up mid-stream (their SYN never seen), most of
    them refused, with payloads of every kind (_FIRST_PAYLOADS), several flows with the same
    payload, retransmissions, and now and then an accepted flow from the lan whose first
    bytes need more to tell (held: the reassembler's memory grows toward its cap)."""
    rng = random.Random(seed)
    out: list[tuple[float, bytes]] = []
    now = 30.0
    while now < 34.0:
        payload = rng.choice(_FIRST_PAYLOADS)
        if rng.random() < 0.15:
            payload = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 90)))
        flags = rng.choice(_FIRST_FLAGS)
        if rng.random() < 0.15:
            # accepted (lan to a web server): a flow is filed and its bytes held
            src, dst, dport = f"10.10.1.{rng.randrange(20, 200)}", "10.10.2.5", 80
            flags = 0x18
        else:
            src = rng.choice(_REFUSED_NETS).format(rng.randrange(4), rng.randrange(1, 250))
            dst = rng.choice(_REFUSED_TARGETS)
            dport = rng.choice([22, 53, 80, 443, 8080, 20000 + rng.randrange(50)])
        if rng.random() < 0.1:
            dst = "192.0.2.1"  # the name passive DNS learns (dns_response: example.com)
        elif rng.random() < 0.1:
            src, dst = f"2001:db8:7::{rng.randrange(1, 200):x}", "2001:db8::1"  # (learned too)
        sport = 30000 + rng.randrange(2000)
        seq = rng.randrange(1 << 32)
        if rng.random() < 0.25:
            datagram = rng.choice(_FIRST_DATAGRAMS)
            if datagram is _FIRST_DATAGRAMS[1]:
                # an answer that teaches passive DNS
                src, sport = ("2001:db8::53" if ":" in dst else "10.10.2.53"), 53
            packet = build_packet(PROTO_UDP, src, dst, sport, dport, payload=datagram)
            out.append((now, packet))
            now += rng.expovariate(700.0)
            continue
        for copy in range(rng.choice([1, 1, 1, 2, 3])):
            packet = build_packet(
                PROTO_TCP, src, dst, sport, dport, flags=flags, seq=seq, payload=payload
            )
            out.append((now + copy * 0.2, packet))
        now += rng.expovariate(700.0)
    out.sort(key=lambda item: item[0])
    return out


@pytest.mark.parametrize("policy", sorted(_FIRST_PAYLOAD_POLICIES))
@pytest.mark.parametrize("seed", [7, 8])
def test_refused_first_segments_with_payload_decide_the_same(policy: str, seed: int) -> None:
    """With application parsing on, a refused first TCP segment with payload is decided in
    compiled code when the inspector's first look leaves only counters: the stream
    detection needs more bytes (the release counts the flow and its bytes) or names no
    protocol (protocols["unknown"]); a protocol (its parser), a payload at the bound or
    over the memory cap go to Python. The same decisions, application counters (their
    order too), reassembler counters and memory, passive DNS, flow table and detector
    state as the Python engine, tick after tick."""
    need_fast_path()
    pair = Pair(_FIRST_PAYLOAD_POLICIES[policy])
    now = 0.0
    for now, data in first_payload_traffic(seed):
        pair.handle(data, META, now)
    pair.finish(now + 1.0)
    app = pair.slow.stats.app
    # every outcome occurred: held bytes released, unknown, each protocol, the events owed
    # at the release (tls, http), malformed and incomplete messages, names asked and learned
    assert app.released_flows > 0 and app.protocols["unknown"] > 0, app
    assert {"tls", "http", "ssh", "dns", "quic"} <= set(app.protocols), app.protocols
    # (a ClientHello is longer than the small bound: cut, incomplete, no event)
    assert {"http", "dns"} <= set(app.events), app.events
    if policy != "gateway-app-small":
        assert app.events["tls"] > 0, app.events
    assert app.malformed, app
    assert pair.slow.pdns.learned > 0
    assert pair.flowless_packets > pair.packets // 4, (pair.flowless_packets, pair.packets)
    if policy == "gateway-app-small":
        reasons = pair.slow.app.reassembler.counters
        assert reasons["memcap"] > 0 and reasons["beyond-limit"] > 0, reasons


_DETECTION_SEEDS = [
    b"GET ", b"PROPPATCH ", b"HTTP/1.1 200", b"SEARCH ", b"SSH-2.0-x", b"\x16\x03\x01\x00\x10\x01",
    b"\x16\x03\x03\x48\x01\x02", b"\x16\x03\x05", b"\x00\x1d" + _DNS_QUERY[:12] + b"\x03abc\x00",
    struct.pack("!H", len(_DNS_QUERY)) + _DNS_QUERY,
]  # fmt: skip


@settings(max_examples=3000, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=40),
        st.tuples(
            st.sampled_from(_DETECTION_SEEDS), st.integers(0, 40), st.binary(max_size=30)
        ).map(lambda t: t[0][: t[1]] + t[2]),
        st.tuples(st.sampled_from(_DETECTION_SEEDS), st.integers(0, 40), st.integers(0, 255)).map(
            lambda t: t[0][: t[1]] + bytes([t[2]]) + t[0][t[1] + 1 :]
        ),
    )
)
def test_the_compiled_stream_detection_is_detect_streams(data: bytes) -> None:
    """The compiled path's port of ips/app/detect.py `detect_stream` (which tells what a
    refused first segment leaves) answers as the Python function, on any bytes: random,
    starts of each protocol's first bytes cut anywhere, and those with one byte changed."""
    need_fast_path()
    from ips.app.detect import detect_stream
    from ips.fast import _fastpath

    assert _fastpath.detect_stream_compiled(data) == detect_stream(data)


@settings(max_examples=2000, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=60),
        st.tuples(
            st.sampled_from([*_FIRST_DATAGRAMS, _DNS_QUERY]),
            st.integers(0, 70),
            st.integers(0, 255),
        ).map(lambda t: t[0][: t[1]] + bytes([t[2]]) + t[0][t[1] + 1 :]),
    )
)
def test_the_compiled_datagram_detection_is_detect_datagrams(data: bytes) -> None:
    """The compiled path's port of ips/app/detect.py `detect_datagram` answers as the
    Python function: random bytes, and QUIC and DNS datagrams with one byte changed."""
    need_fast_path()
    from ips.app.detect import detect_datagram
    from ips.fast import _fastpath

    assert _fastpath.detect_datagram_compiled(data) == detect_datagram(data)
    for cut in (7, 17, 30):
        assert _fastpath.detect_datagram_compiled(data[:cut]) == detect_datagram(data[:cut])


def test_the_compiled_stream_detection_agrees_on_every_short_start() -> None:
    """Every one- and two-byte stream, and every start of the seeds and the payloads
    above: the compiled detection's answer is detect_stream's."""
    need_fast_path()
    from ips.app.detect import detect_stream
    from ips.fast import _fastpath

    samples = [bytes([a, b]) for a in range(256) for b in range(256)]
    samples += [bytes([a]) for a in range(256)]
    for seed in _DETECTION_SEEDS + _FIRST_PAYLOADS:
        samples += [seed[:i] for i in range(len(seed) + 1)]
    # TLS record headers at their bounds: versions, lengths, handshake types
    for major in (2, 3, 4):
        for minor in range(7):
            for length in (0, 1, 17, 0x4800, 0x4801, 0xFFFF):
                for kind in range(4):
                    header = bytes([0x16, major, minor]) + struct.pack("!H", length)
                    samples += [header + bytes([kind]), header + bytes([kind]) + bytes(12)]
    # DNS over TCP at its bounds: lengths, opcodes, the Z bit, counts, labels, classes
    question = b"\x07example\x03com\x00"
    for opcode in range(16):
        for z in (0, 0x40):
            flags = (opcode << 11) | z | 0x0100
            for counts in ((1, 0, 0, 0), (1, 256, 256, 256), (1, 257, 0, 0), (2, 0, 0, 0)):
                header = struct.pack("!HH4H", 0x1234, flags, *counts)
                body = header + question + b"\x00\x01\x00\x01"
                framed = struct.pack("!H", len(body)) + body
                samples += [framed[:i] for i in range(len(framed) + 1)]  # what can wait
    for high in range(3):  # a count's bytes on either side of 256, cut anywhere
        for low in (0, 1, 0xFF):
            header = struct.pack("!HHH", 0x1234, 0x0100, 1) + bytes([high, low]) * 3
            samples += [b"\x00\x40" + header[:i] for i in range(len(header) + 1)]
    for label in (0x00, 0x01, 0x3F, 0x40, 0x80, 0xC0):
        for qclass in (0, 1, 2, 3, 4, 5, 253, 254, 255, 256, 0x8001, 0x80FF, 0xFFFF):
            body = (
                struct.pack("!HH4H", 1, 0x0100, 1, 0, 0, 0)
                + bytes([label])
                + b"a" * (label & 0x3F)
                + b"\x00"
                + struct.pack("!HH", 1, qclass)
            )
            for length in (16, 17, len(body), len(body) + 1, 0xFFFF):
                framed = struct.pack("!H", length) + body
                samples += [framed, framed[:-1], framed[:-4]]
    for data in samples:
        assert _fastpath.detect_stream_compiled(data) == detect_stream(data), data


def _segment(
    ends: tuple[str, str, int, int], fwd: bool, flags: int, seq: int, payload: bytes = b""
) -> bytes:
    """A TCP segment of the connection (client, server, client port, server port)."""
    client, server, cport, port = ends
    if fwd:
        return build_packet(
            PROTO_TCP, client, server, cport, port, flags=flags, seq=seq, payload=payload
        )
    return build_packet(
        PROTO_TCP, server, client, port, cport, flags=flags, seq=seq, payload=payload
    )


@pytest.mark.parametrize("cut", [300, 1000])
def test_bare_acks_of_a_flow_being_read_are_decided_in_compiled_code(cut: int) -> None:
    """With application parsing on, a bare ACK of an accepted flow whose first bytes the
    inspector is reading (a ClientHello or a request still arriving): `inspect` does
    nothing with it, so the compiled path decides it — unless its direction has ended (a
    FIN) while its side is still read, which `inspect` reads once more (Python). The same
    decisions, application state and counters as the Python engine."""
    need_fast_path()
    pair = Pair(GATEWAY)
    hello = records(client_hello_message(chrome_like_extensions("reading.example")))
    request = b"GET /slow HTTP/1.1\r\nHost: reading.example\r\nUser-Agent: t\r\n\r\n"
    now = 60.0
    decided = 0
    for i in range(24):
        now += 0.01
        port, first, at = (443, hello, cut) if i % 2 else (80, request, 20)
        ends = (f"10.10.1.{20 + i % 5}", "10.10.2.10", 44000 + i, port)
        head, rest = first[:at], first[at:]
        c, s = 1000, 5000  # each side's first sequence number after its SYN
        for fwd, flags, seq, payload in (
            (True, 0x02, c - 1, b""),
            (False, 0x12, s - 1, b""),
            (True, 0x10, c, b""),
            (True, 0x18, c, head),  # the inspector starts reading
        ):
            pair.handle(_segment(ends, fwd, flags, seq, payload), META, now)
        before = pair.fast_packets
        # bare ACKs, each way: nothing to read
        pair.handle(_segment(ends, False, 0x10, s), META, now)
        pair.handle(_segment(ends, True, 0x10, c + len(head)), META, now)
        decided += pair.fast_packets - before
        if i % 3 == 0:
            # the client's side ends before its message is whole: its next bare ACK is read
            steps = [(True, 0x11, c + len(head)), (True, 0x10, c + len(head) + 1)]
            for fwd, flags, seq in steps:
                pair.handle(_segment(ends, fwd, flags, seq), META, now)
        else:
            pair.handle(_segment(ends, True, 0x18, c + len(head), rest), META, now)
        pair.handle(_segment(ends, False, 0x10, s), META, now)
        pair.check_state()
    pair.finish(now + 1.0)
    assert decided >= 2 * 20, decided
    assert pair.slow.stats.app.incomplete, pair.slow.stats.app
