"""The cheaper path of a flow's first packets, held to what it replaced.

* FlowTable.open / settle / discard (a new flow filed only once its first packet is decided)
  against track + discard (filed at once, then removed): the same table, the same counters,
  timer slots and unreplied queue, and so the same evictions at capacity and expiries.
* CompiledPolicy.walk (the candidate rules by TCP flags byte) against the whole candidate
  list: the same decisions, rule hits and limiter state for every flags byte.
"""

from __future__ import annotations

import random

from packets import tcp, udp

from ips.core.flow import _GONE, FlowTable, FlowTimeouts
from ips.core.packet import PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_PSH, TCP_RST, TCP_SYN, Packet
from ips.engine import Engine, Meta
from ips.policy.compile import CompiledPolicy
from ips.policy.resolve import load_policy_text


def _packet(rng: random.Random, hosts: int) -> Packet:
    proto = rng.choice((PROTO_TCP, PROTO_TCP, PROTO_UDP))
    src = bytes((10, 0, 0, rng.randrange(hosts)))
    dst = bytes((10, 1, 0, rng.randrange(hosts)))
    sport, dport = rng.randrange(1000, 1010), rng.choice((80, 443))
    if rng.random() < 0.4:  # the other way
        src, dst, sport, dport = dst, src, dport, sport
    flags = rng.choice((TCP_SYN, TCP_SYN | TCP_ACK, TCP_ACK, TCP_PSH | TCP_ACK, TCP_RST))
    return Packet(
        bytes(40 + rng.randrange(100)), 4, src, dst, proto, sport, dport,
        flags if proto == PROTO_TCP else 0, l4_offset=20, payload_offset=40,
    )  # fmt: skip


def _shape(table: FlowTable) -> tuple[object, ...]:
    """Everything of a table that can change what it does later: its flows and counters,
    its timer slots (empty ones too: an eviction's scan counts them), its heap of slots,
    and its queue of unreplied flows (gone entries too: the scan counts those as well)."""
    flows = sorted(
        (f.flow_id, f.key, f.pkts_fwd, f.pkts_rev, f.replied, f.tcp_state, f._slot)
        for f in table.flows()
    )
    wheel = sorted((slot, sorted(f.flow_id for f in b)) for slot, b in table._wheel.items())
    queue = [None if f._slot == _GONE else f.flow_id for f in table._unreplied]
    return (
        flows, table.stats, table._next_id, wheel, sorted(table._slots), queue,
        sorted(table.handshakes.items()),
    )  # fmt: skip


def _run(deferred: bool, seed: int, max_flows: int, steps: int) -> list[object]:
    """A random run of first packets refused or kept, replies, expiries, at capacity; what
    the table looks like after each step, and every flow it let go (and why)."""
    rng = random.Random(seed)
    # One timeout for every state, and each packet a second or more after the last: every
    # flow's deadline has a timer slot of its own. (Flows that share a slot leave it in the
    # order of a set of objects hashed by their address, which an eviction's scan or a
    # budget can see: no order is promised among them, by either way of filing.)
    timeouts = FlowTimeouts(*(40.0,) * 9)
    table = FlowTable(max_flows=max_flows, timeouts=timeouts)
    seen: list[object] = []
    now = 100.0
    for step in range(steps):
        now += rng.choice((1.0, 2.0, 3.0, 7.0, 45.0))
        pkt = _packet(rng, 6)
        refuse = rng.random() < 0.7
        if deferred:
            flow, fwd = table.open(pkt, now)
        else:
            flow, fwd = table.track(pkt, now)
        if refuse and fwd and flow.pkts_fwd == 1 and not flow.replied:
            table.discard(flow)  # as the engine does with a refused first packet
        elif deferred:
            table.settle()
        if step % 17 == 0:
            gone = table.expire(now, budget=rng.choice((1, 3, 1000)))
            seen.append([(f.flow_id, f.end_reason) for f in gone])
        seen.append([(f.flow_id, f.end_reason) for f in table.pop_evicted()])
        seen.append(_shape(table))
    return seen


def test_deferred_filing_leaves_the_table_as_filing_then_removing() -> None:
    # Small tables (evictions at every other packet) and a long run: the unreplied queue is
    # compacted many times (past 2 × active + 1024 entries), as are the timer slots.
    for seed in range(6):
        for max_flows in (3, 16):
            assert _run(True, seed, max_flows, 3000) == _run(False, seed, max_flows, 3000)


def test_a_refused_first_packet_leaves_no_flow_and_counts_as_discarded() -> None:
    table = FlowTable()
    syn = _packet(random.Random(1), 1)
    flow, fwd = table.open(syn, 1.0)
    assert fwd and len(table) == 1 and table.peek(syn) is None  # counted, not filed yet
    table.discard(flow)
    assert len(table) == 0 and table.peek(syn) is None
    assert table.stats.created == table.stats.discarded == 1
    kept, _ = table.open(syn, 2.0)
    table.settle()
    assert table.peek(syn) == (kept, True) and kept.flow_id == 2


def test_open_settles_a_flow_its_caller_left_unsettled() -> None:
    table = FlowTable()
    rng = random.Random(2)
    first, second = _packet(rng, 3), _packet(rng, 3)
    flow, _ = table.open(first, 1.0)
    table.open(second, 1.0)  # the first packet's flow is filed before anything is looked up
    assert table.peek(first) is not None and table.peek(first)[0] is flow  # type: ignore[index]


FLAG_POLICY = """\
table banned dynamic timeout 1h
set default drop
drop    from @banned
drop    proto tcp flags /FSRPAU         alert "NULL scan"
drop    proto tcp flags FPU/FSRPAU      alert "XMAS scan"
match   proto tcp flags S/SA            log
accept  proto tcp flags SA/SA limit 3/s per src else drop
drop    proto tcp flags R/R to port 81
reject  proto tcp flags F/FSRPAU
accept  state established
accept  proto tcp to port { 80, 443 } flags S/SAFR
accept  proto udp to port 53
"""


def _decisions(walks: bool) -> list[object]:
    policy = CompiledPolicy(load_policy_text(FLAG_POLICY, "flags.rules"))
    if not walks:
        entry = policy.candidate_entry
        policy.candidate_entry = lambda *a: (*entry(*a)[:2], None)  # type: ignore[method-assign]
    engine = Engine(policy, fast=False)
    out: list[object] = []
    meta = Meta(iif="eth0", oif="eth1")
    for flags in range(256):
        for dport in (80, 81, 22):
            t = flags * 0.01
            for data in (
                tcp("10.0.0.1", "10.0.1.1", 1000 + flags, dport, flags=flags),
                tcp("10.0.1.1", "10.0.0.1", dport, 1000 + flags, flags=flags ^ 0x12),
                udp("10.0.0.1", "10.0.1.1", 2000 + flags, 53),
            ):
                d = engine.handle(data, meta, t)
                out.append((d.verdict, d.reason, d.rule.spec.index if d.rule else None,
                            [type(e).__name__ for e in d.effects]))  # fmt: skip
    out.append([rule.hits for rule in policy.rules])
    out.append(dict(engine.stats.verdicts))
    return out


def test_walks_by_flags_decide_as_the_whole_candidate_list() -> None:
    assert _decisions(True) == _decisions(False)
