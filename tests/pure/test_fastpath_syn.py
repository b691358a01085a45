"""An accepted SYN of no flow, filed in compiled code (ips/fast/_fastpath.pyx `_syn_first`)
against the Python engine, its definition: two engines, one with the compiled path and one
without, fed the same connections must give the same decisions and leave the same state,
compared after every packet and down to what test_fastpath_differential.py leaves out: every
slot of every flow (its candidate caches, interfaces, application fields and inspector
state), the flow table's dict in its order, the timer wheel and its heap, the unreplied
queue entry by entry, each pending probe's
flow (the very Flow object the table holds, not a copy), and everything
`engine_state` compares (counters, hits, limits, detectors, passive DNS).

Without the extension both engines are the Python engine and the comparison still runs; the
tests that need SYNs filed in compiled code say so (`need_fast_path`)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from ips.core.build import build_packet
from ips.core.decode import decode_frame
from ips.core.flow import Flow, FlowTimeouts
from ips.core.packet import PROTO_TCP, PROTO_UDP, Packet
from ips.engine import Engine, Meta
from ips.io.pcap import write_pcap
from ips.policy.resolve import load_policy_text
from ips.replay import replay_captures
from tests.pure.test_app_parsers import dns_response
from tests.pure.test_fastpath_differential import (
    _HANDSHAKE_POLICIES,
    GATEWAY,
    META,
    Pair,
    cache_view,
    capture_records,
    engine_state,
    need_fast_path,
    plain,
    replay,
    shared_captures,
)

SYN, SYN_ACK, ACK, PSH_ACK, FIN_ACK, RST = 0x02, 0x12, 0x10, 0x18, 0x11, 0x04

# Every slot of a flow but those compared by their views below.
_PLAIN_SLOTS = tuple(
    name for name in Flow.__slots__ if name not in ("cache_fwd", "cache_rev", "app", "app_state")
)


def full_flow(engine: Engine, flow: Flow) -> str:
    return repr(
        (
            tuple(getattr(flow, name) for name in _PLAIN_SLOTS),
            cache_view(engine, flow.cache_fwd),
            cache_view(engine, flow.cache_rev),
            plain(flow.app, limit=3),
            plain(flow.app_state, limit=3),
        )
    )


def full_state(engine: Engine) -> dict[str, Any]:
    """What an accepted SYN's filing touches, in the order it was made where order is
    kept (the table's dict, the queues)."""
    table = engine.flows
    gone = -1
    scans = []
    if engine.detect is not None:
        for det in engine.detect.scans:
            scans.append(
                [
                    (
                        repr(probe.answer),
                        probe.kind,
                        probe.size,
                        repr(probe.due),
                        full_flow(engine, probe.flow),
                        # the probe holds the table's flow itself (a filed flow is kept live)
                        table._flows.get(probe.flow.key) is probe.flow,
                    )
                    for probe in det.pending
                ]
            )
    return {
        "keys": [(repr(key), flow.flow_id) for key, flow in table._flows.items()],
        "flows": sorted(full_flow(engine, f) for f in table.flows()),
        # (sorted: expiry pops a slot's flows in set order, which differs between any two
        # engines, and refiles those that saw traffic in that order)
        "wheel": sorted(
            (slot, sorted(f.flow_id for f in flows)) for slot, flows in table._wheel.items()
        ),
        "heap": sorted(table._slots),
        "unreplied": [(f.flow_id if f._slot != gone else None) for f in table._unreplied],
        "counts": (
            table._next_id,
            table._active,
            table._created,
            table._discarded,
            table._opened is None,
        ),
        "scans": scans,
    }


class SynPair(Pair):
    """Pair, with the flow table's size chosen: after each packet, the flow of its key
    compared in full in both engines, and everything (full_state) every `every` packets."""

    def __init__(
        self,
        text: str,
        *,
        max_flows: int = 262_144,
        timeouts: FlowTimeouts | None = None,
        every: int = 1,
    ) -> None:
        self.slow = Engine(
            load_policy_text(text, "syn.rules"), fast=False, max_flows=max_flows, timeouts=timeouts
        )
        self.fast = Engine(
            load_policy_text(text, "syn.rules"), max_flows=max_flows, timeouts=timeouts
        )
        self.packets = 0
        self.next_tick: float | None = None
        self.every = every

    def handle(self, data: bytes, meta: Meta, now: float) -> None:
        super().handle(data, meta, now)
        pkt = decode_frame(data, meta.linktype)
        if isinstance(pkt, Packet):
            key = (pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport)
            flows = [engine.flows._flows.get(key) for engine in (self.fast, self.slow)]
            views = [
                None if f is None else full_flow(e, f)
                for f, e in zip(flows, (self.fast, self.slow), strict=True)
            ]
            assert views[0] == views[1], (self.packets, data.hex())
        if self.packets % self.every == 0:
            assert full_state(self.fast) == full_state(self.slow), (self.packets, data.hex())

    def check_state(self) -> None:
        super().check_state()
        assert full_state(self.fast) == full_state(self.slow)

    def load(self, text: str) -> None:
        for engine in (self.slow, self.fast):
            engine.load(load_policy_text(text, "applied.rules"))

    @property
    def syn_flows(self) -> int:
        """Accepted SYNs whose flow was filed in compiled code."""
        path = self.fast._fast_path
        return path.syn_flows if path is not None else 0


def tcp(
    src: str, dst: str, sport: int, dport: int, flags: int, payload: bytes = b"", seq: int = 0
) -> bytes:
    return build_packet(PROTO_TCP, src, dst, sport, dport, flags=flags, payload=payload, seq=seq)


_CLIENTS4 = ["10.10.1.10", "10.10.1.20", "10.10.1.30"]
_SERVERS4 = ["10.10.2.10", "10.10.2.20"]
_CLIENTS6 = ["fd00:10:10:1::10", "fd00:10:10:1::20"]
_SERVERS6 = ["fd00:10:10:2::10"]
_PORTS = [80, 443, 8080, 22, 25, 5201, 5209, 5209, 5209]


def connection_traffic(seed: int, count: int = 400) -> list[tuple[float, bytes]]:
    """Connections whole: SYN (now and then again, or with payload, or IPv6), the answer,
    the handshake's ACK, data both ways, FINs both ways and the last ACK, a reset now and
    then instead; some left at the SYN or the answer; client ports reused (a SYN on a
    closing flow starts a new one), connections interleaved, sequence numbers random."""
    rng = random.Random(seed)
    out: list[tuple[float, bytes]] = []
    now = 50.0
    for _ in range(count):
        if rng.random() < 0.2:
            client, server = rng.choice(_CLIENTS6), rng.choice(_SERVERS6)
        else:
            client, server = rng.choice(_CLIENTS4), rng.choice(_SERVERS4)
        cport = 40000 + rng.randrange(150)
        port = rng.choice(_PORTS)
        seq = rng.randrange(1 << 32)
        t = now
        syn_payload = b"fast open" if rng.random() < 0.05 else b""
        out.append((t, tcp(client, server, cport, port, SYN, syn_payload, seq=seq)))
        if rng.random() < 0.1:
            t += 0.3
            out.append((t, tcp(client, server, cport, port, SYN, seq=seq)))  # retransmitted
        if rng.random() < 0.1:
            now += rng.expovariate(200)
            continue  # never answered
        t += 0.0002
        out.append((t, tcp(server, client, port, cport, SYN_ACK, seq=rng.randrange(1 << 32))))
        if rng.random() < 0.1:
            now += rng.expovariate(200)
            continue
        t += 0.0002
        out.append((t, tcp(client, server, cport, port, ACK)))
        out.append(
            (t + 0.0001, tcp(client, server, cport, port, PSH_ACK, b"GET / HTTP/1.1\r\n\r\n"))
        )
        out.append(
            (t + 0.0002, tcp(server, client, port, cport, PSH_ACK, b"HTTP/1.1 200 OK\r\n\r\n"))
        )
        if rng.random() < 0.15:
            out.append((t + 0.0003, tcp(client, server, cport, port, RST)))
        else:
            out.append((t + 0.0003, tcp(client, server, cport, port, FIN_ACK)))
            out.append((t + 0.0004, tcp(server, client, port, cport, FIN_ACK)))
            out.append((t + 0.0005, tcp(client, server, cport, port, ACK)))
        now += rng.expovariate(200)
    out.sort(key=lambda item: item[0])
    return out


@pytest.mark.parametrize("policy", sorted(_HANDSHAKE_POLICIES))
@pytest.mark.parametrize("seed", [1, 2])
def test_whole_connections_decide_the_same(policy: str, seed: int) -> None:
    """Connections from SYN to FIN (and resets, retransmissions, reused ports, IPv6, a SYN
    with payload), the policy applied again halfway: every accepted SYN of no flow that
    compiled code files leaves what the Python engine leaves, packet after packet."""
    pair = SynPair(_HANDSHAKE_POLICIES[policy], every=50)
    traffic = connection_traffic(seed)
    now = 0.0
    for i, (now, data) in enumerate(traffic):
        if i == len(traffic) // 2:
            pair.load(_HANDSHAKE_POLICIES[policy])
        pair.handle(data, META, now)
    pair.finish(now + 1.0)
    if policy == "volume":
        assert pair.syn_flows == 0  # a detector that declares nothing: Python sees all
    else:
        need_fast_path()
        assert pair.syn_flows > 100, pair.syn_flows


def test_bench_connections_file_every_syn_after_the_first_in_compiled_code() -> None:
    """bench/newflow.py's connection with parsing off: after the first (whose candidates
    Python memoises), each SYN's flow is filed in compiled code and its answer decided
    there, with OFFLOAD_HANDSHAKE_ACK."""
    need_fast_path()
    pair = SynPair(_HANDSHAKE_POLICIES["gateway"])
    now = 40.0
    for i in range(40):
        now += 0.01
        before = pair.syn_flows
        pair.handle(tcp("10.10.1.20", "10.10.2.10", 42000 + i, 5209, SYN), META, now)
        assert pair.syn_flows == before + (i > 0)
        pair.handle(tcp("10.10.2.10", "10.10.1.20", 5209, 42000 + i, SYN_ACK), META, now + 1e-4)
    pair.finish(now + 1.0)
    assert pair.fast.flows.stats.drained == 40  # (finish drains them)


@pytest.mark.parametrize("app", ["off", "on"])
def test_a_syn_to_a_port_refused_later(app: str) -> None:
    """SYNs accepted (filed in compiled code), then a policy that drops their port: the
    retransmitted SYNs meet flows whose caches name the old policy, the new SYNs are
    refused; then the first policy again, under which SYNs are accepted anew."""
    accept = f"set app-layer {app}\nset default drop\ndetect portscan ports 20 within 60s alert\n"
    accept += "accept proto tcp from 10.10.1.0/24 to 10.10.2.0/24 port 5201-5209\n"
    refuse = accept.replace("accept proto tcp from", "drop proto tcp from")
    pair = SynPair(accept)
    now = 10.0
    for phase, text in enumerate((accept, refuse, accept)):
        if phase:
            pair.load(text)
        for i in range(30):
            now += 0.05
            cport = 43000 + i + 7 * phase
            pair.handle(tcp("10.10.1.30", "10.10.2.20", cport, 5205, SYN), META, now)
            if i % 3 == 0:
                pair.handle(tcp("10.10.2.20", "10.10.1.30", 5205, cport, SYN_ACK), META, now + 1e-3)
    pair.finish(now + 1.0)
    need_fast_path()
    assert pair.syn_flows > 30


def test_a_full_flow_table_makes_room_in_python() -> None:
    """With the table full, FlowTable.open makes room first (expiry, eviction): such SYNs
    are Python's; the others are filed in compiled code, and both tables stay alike."""
    pair = SynPair(_HANDSHAKE_POLICIES["gateway"], max_flows=40)
    now = 5.0
    for i in range(300):
        now += 0.01
        cport = 20000 + i
        pair.handle(tcp("10.10.1.10", "10.10.2.10", cport, 5209, SYN), META, now)
        if i % 4 == 0:
            pair.handle(tcp("10.10.2.10", "10.10.1.10", 5209, cport, SYN_ACK), META, now + 1e-3)
        if i == 150:
            now += 40.0  # past tcp_new: the table's flows expire (reclaimed when full)
    pair.finish(now + 1.0)
    assert pair.slow.flows.stats.evicted > 0
    need_fast_path()
    assert 0 < pair.syn_flows < 300


def test_refused_flows_crowd_the_unreplied_queue_until_python_compacts_it() -> None:
    """Refused SYNs leave stand-ins in the unreplied queue (owed by the compiled path, which
    writes them before an accepted SYN's flow takes its place after them); once the queue
    outgrows twice the table plus 1,024, filing compacts it, which is Python's to do."""
    text = "set app-layer off\nset default drop\n"
    text += "accept proto tcp from 10.10.1.0/24 to 10.10.2.0/24 port 5201-5209\n"
    pair = SynPair(text, every=100)
    now = 1.0
    for i in range(2600):
        now += 0.001
        refused = i % 10 != 0
        dport = 9999 if refused else 5209
        data = tcp("10.10.1.20", "10.10.2.10", 10000 + i, dport, SYN)
        pair.handle(data, META, now)
        if i % 100 == 0:
            pair.check_state()
    pair.finish(now + 1.0)
    need_fast_path()
    assert pair.flowless_packets > 2000
    assert pair.syn_flows > 100


@pytest.mark.parametrize("app", ["off", "on"])
def test_accepted_syns_are_scan_probes_filed_with_their_flow(app: str) -> None:
    """A client trying many ports that the policy accepts: each SYN is portscan's and
    sweep's probe, holding its filed flow; windows roll over, keys reach their cap, the
    queue fills (its oldest forgotten), due probes are weighed first (their answers came,
    or never), a scan detected: what compiled code files is what ScanDetector.probe files,
    and the same Flow object is in the table and in the probe."""
    text = f"set app-layer {app}\nset default accept\n"
    text += "detect portscan ports 12 within 3s alert\ndetect sweep hosts 6 within 3s alert\n"
    text += "detect synflood rate 400/s per dst\n"
    pair = SynPair(text, every=10)
    rng = random.Random(7)
    now = 100.0
    for _ in range(900):
        now += rng.choice([0.001, 0.004, 0.02, 0.3])
        client = rng.choice(["10.1.0.5", "10.1.0.6", "fd00::5"])
        v6 = ":" in client
        server = f"fd00::2:{rng.randrange(1, 9)}" if v6 else f"10.2.0.{rng.randrange(1, 9)}"
        port = rng.randrange(1, 60)
        cport = 30000 + rng.randrange(2000)
        pair.handle(tcp(client, server, cport, port, SYN), META, now)
        roll = rng.random()
        if roll < 0.4:
            pair.handle(tcp(server, client, port, cport, SYN_ACK), META, now + 0.001)
        elif roll < 0.6:
            pair.handle(tcp(server, client, port, cport, RST | ACK), META, now + 0.001)
    pair.finish(now + 10.0)
    assert pair.slow.stats.detector_alerts
    need_fast_path()
    assert pair.syn_flows > 300, pair.syn_flows


def test_a_syn_names_its_responder_and_starts_the_inspectors_quiet_state() -> None:
    """With parsing on, the SYN's flow takes the name passive DNS learned for its
    responder (AppInspector._start) and the inspector's quiet state with the client's
    start (the SYN's sequence number + 1, modulo 2**32: _quiet); a SYN with payload is the
    inspector's to read (Python)."""
    text = "set default accept\ndetect portscan ports 20 within 60s alert\n"
    pair = SynPair(text)
    resolver, client, server = "10.10.1.1", "10.10.1.20", "192.0.2.1"  # (example.com's A)
    answer = build_packet(PROTO_UDP, resolver, client, 53, 5353, payload=dns_response())
    pair.handle(answer, META, 1.0)
    now = 2.0
    for i, seq in enumerate([0, 1, 0xFFFFFFFF, 0x7FFFFFFF, 123456789] * 4):
        now += 0.01
        payload = b"GET / HTTP/1.1\r\n\r\n" if i == 7 else b""
        before = pair.syn_flows
        pair.handle(tcp(client, server, 44000 + i, 443, SYN, payload, seq=seq), META, now)
        flow = pair.fast.flows._flows[(PROTO_TCP, *_key(client, 44000 + i, server, 443))]
        assert flow.dst_name == "example.com"
        if not payload:
            assert flow.app_state.client_base == (seq + 1) & 0xFFFFFFFF
        if i > 0:
            need_fast_path()
            assert pair.syn_flows == before + (not payload)
    pair.finish(now + 1.0)


def _key(src: str, sport: int, dst: str, dport: int) -> tuple[bytes, int, bytes, int]:
    from ips.core.addr import parse_addr

    return parse_addr(src), sport, parse_addr(dst), dport


_SCANS = """\
detect portscan ports 15 within 60s alert
detect sweep hosts 10 within 60s alert
detect synflood rate 40/s per dst limit
"""


@pytest.mark.parametrize("policy", ["gateway", "gateway-app-off", "accept", "accept-app"])
def test_the_shared_captures_decide_the_same(pcaps_dir: Any, policy: str) -> None:
    """Every shared capture through both engines (their accepted SYNs filed in compiled
    code where it may), compared in full at the end of each."""
    text = {
        "gateway": GATEWAY,
        "gateway-app-off": "set app-layer off\n" + GATEWAY,
        "accept": "set default accept\nset app-layer off\n" + _SCANS,
        "accept-app": "set default accept\n" + _SCANS,
    }[policy]
    pair = SynPair(text, every=100)
    last = 0.0
    for path in shared_captures():
        last = max(last, replay(pair, capture_records(path)))
        pair.check_state()
    pair.finish(last)
    if policy.startswith("accept"):
        need_fast_path()
        assert pair.syn_flows > 0


def _replay_end_state(text: str, path: str, fast_path: bool) -> tuple[object, ...]:
    """A replay's result and its engine's whole state at the end (mapped: the compiled
    loop, which owes counters across packets; the reference reads records in Python)."""
    policy = load_policy_text(text, "replay.rules")
    engine = Engine(policy, fast=fast_path)
    at_ticks: list[object] = []
    tick = engine.tick

    def noted_tick(now: float) -> Any:
        at_ticks.append((now, full_state(engine)))
        return tick(now)

    engine.tick = noted_tick  # type: ignore[method-assign]
    result = replay_captures(policy, [path], engine=engine, progress=False, mapped=fast_path)
    assert engine.fast_failures == 0
    syn_flows = engine._fast_path.syn_flows if engine._fast_path is not None else 0
    return (
        json.dumps(result.as_dict(), sort_keys=True),
        engine_state(engine),
        full_state(engine),
        at_ticks,
        syn_flows,
    )


@pytest.mark.parametrize("detectors", ["none", "scans"])
@pytest.mark.parametrize("app", ["off", "on"])
def test_a_mapped_replay_files_accepted_syns_after_the_owed_refusals(
    tmp_path: Path, app: str, detectors: str
) -> None:
    """In the mapped replay the compiled loop owes the refused first packets' counts (the
    next flow id, the unreplied queue's stand-ins) across packets: an accepted SYN's flow
    takes its id after theirs and its place in the queue after their stand-ins, as in the
    Python engine, and the queue, crowded by them, is compacted when filing the flow would
    compact it (Python's); the result and the whole state at every tick and at the end
    alike."""
    text = f"set app-layer {app}\nset default drop\n"
    if detectors == "scans":
        text += _SCANS.replace("40/s", "400/s")
    text += "accept proto tcp from 10.10.1.0/24 to 10.10.2.0/24 port 5201-5209\n"
    rng = random.Random(11)
    records: list[tuple[float, bytes]] = []
    now = 1000.0
    # (few values of each address and port, so that the policy's lookups are memoised
    # and nothing calls out of the compiled loop, which would write what is owed first)
    combos = [(d, p, c) for d in range(1, 41) for p in range(5201, 5210) for c in range(20)]
    rng.shuffle(combos)
    for i in range(8000):
        now += 0.001
        cport = 10000 + i % 20
        if rng.random() < 0.85:
            dport = rng.choice([9999, 23, 445])  # refused
            records.append((now, tcp("10.10.1.20", "10.10.2.10", cport, dport, SYN)))
            continue
        host, port, cport = combos.pop()
        server = f"10.10.2.{host}"
        records.append((now, tcp("10.10.1.20", server, 10000 + cport, port, SYN)))
        if rng.random() < 0.5:
            answer = tcp(server, "10.10.1.20", port, 10000 + cport, SYN_ACK)
            records.append((now + 1e-4, answer))
    path = tmp_path / "mixed.pcap"
    write_pcap(path, records)
    reference = _replay_end_state(text, str(path), fast_path=False)
    got = _replay_end_state(text, str(path), fast_path=True)
    assert got[0] == reference[0]
    assert got[1] == reference[1]
    assert got[2] == reference[2]
    assert len(got[3]) > 3  # ticks
    assert got[3] == reference[3]
    need_fast_path()
    assert got[4] > 400, got[4]


def test_a_refused_syn_where_the_last_was_accepted_stays_compiled() -> None:
    """With accepted SYNs filed in compiled code, the guess that sent a SYN to a
    destination and port whose last SYN was accepted to Python at once (syn_accepted, noted
    when an accepted SYN could not be filed there: here one with payload, which the
    inspector reads) is not consulted: later accepted and refused SYNs there are both
    decided in compiled code."""
    text = (
        "set default drop\n"
        "accept proto tcp from 10.10.1.1 to 10.10.2.1 port 443\n"
        "detect portscan ports 15 within 60s alert\n"
    )
    pair = SynPair(text)
    now = 100.0
    decided: list[int] = []
    syns = [
        ("198.18.0.9", 40000, b""),
        ("10.10.1.1", 41000, b""),
        ("10.10.1.1", 41001, b"\x16\x03\x01"),  # accepted, with payload: Python
        ("198.18.0.9", 40001, b""),
        ("10.10.1.1", 41002, b""),
        ("198.18.0.9", 40002, b""),
    ]
    for src, sport, payload in syns:
        now += 0.01
        before = pair.fast_packets
        pair.handle(tcp(src, "10.10.2.1", sport, 443, SYN, payload), META, now)
        decided.append(pair.fast_packets - before)
    pair.finish(now + 3.0)
    need_fast_path()
    # (the first of each kind: its candidates made by Python)
    assert decided == [0, 0, 0, 1, 1, 1]
    assert pair.syn_flows == 1
