"""FlowTable: direction, counters, TCP state, expiry, capacity and ids."""

from __future__ import annotations

import ipaddress

import pytest
from packets import ip

from ips.core.flow import (
    END_EVICTED,
    END_REUSED,
    END_SHUTDOWN,
    END_TIMEOUT,
    TCP_CLOSED,
    TCP_CLOSING,
    TCP_ESTABLISHED,
    TCP_FIN_WAIT,
    TCP_NONE,
    TCP_SYN_RECV,
    TCP_SYN_SENT,
    Flow,
    FlowTable,
    FlowTimeouts,
)
from ips.core.packet import (
    FRAG_LATER,
    FRAG_NONE,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_FIN,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
    Packet,
)

SYN, A, R = TCP_SYN, TCP_ACK, TCP_RST
SA, PA, FA = SYN | A, TCP_PSH | A, TCP_FIN | A

A4, B4 = "192.0.2.1", "198.51.100.7"
A6, B6 = "2001:db8::1", "2001:db8:1::7"


def pkt(
    src: str = A4,
    dst: str = B4,
    proto: int = PROTO_TCP,
    sport: int = 40000,
    dport: int = 80,
    flags: int = 0,
    size: int = 60,
    frag: int = FRAG_NONE,
) -> Packet:
    s, d = ip(src), ip(dst)
    family = 4 if len(s) == 4 else 6
    # Fresh bytes objects, as the decoder makes per packet: lookups must not rely on identity.
    return Packet(
        bytes(size),
        family,
        bytes(bytearray(s)),
        bytes(bytearray(d)),
        proto,
        sport,
        dport,
        flags,
        frag=frag,
    )


def rev(p: Packet, flags: int = 0, size: int = 60) -> Packet:
    """The reply to p."""
    return Packet(bytes(size), p.family, p.dst, p.src, p.proto, p.dport, p.sport, flags)


def fwd(p: Packet, flags: int = 0, size: int = 60) -> Packet:
    return Packet(bytes(size), p.family, p.src, p.dst, p.proto, p.sport, p.dport, flags)


def echo(src: str, dst: str, ident: int) -> Packet:
    proto = PROTO_ICMP if ":" not in src else PROTO_ICMPV6
    return pkt(src, dst, proto, ident, ident)


# -- direction and counters ------------------------------------------------------------


@pytest.mark.parametrize(
    "first",
    [
        pkt(A4, B4, PROTO_TCP, 40000, 443, SYN),
        pkt(A6, B6, PROTO_TCP, 40000, 443, SYN),
        pkt(A4, B4, PROTO_UDP, 5353, 53),
        pkt(A6, B6, PROTO_UDP, 5353, 53),
        echo(A4, B4, 77),
        echo(A6, B6, 77),
    ],
    ids=["tcp4", "tcp6", "udp4", "udp6", "icmp4", "icmp6"],
)
def test_direction_both_ways(first: Packet) -> None:
    t = FlowTable()
    flow, forward = t.track(first, 1.0)
    assert forward is True
    assert (flow.src, flow.sport, flow.dst, flow.dport) == (
        first.src,
        first.sport,
        first.dst,
        first.dport,
    )
    assert flow.family == first.family and flow.proto == first.proto

    reply = rev(first, SA if first.proto == PROTO_TCP else 0, size=100)
    flow2, forward2 = t.track(reply, 2.0)
    assert flow2 is flow and forward2 is False
    flow3, forward3 = t.track(fwd(first, A if first.proto == PROTO_TCP else 0, 40), 3.0)
    assert flow3 is flow and forward3 is True

    assert (flow.pkts_fwd, flow.pkts_rev) == (2, 1)
    assert (flow.bytes_fwd, flow.bytes_rev) == (60 + 40, 100)
    assert flow.first_seen == 1.0 and flow.last_seen == 3.0
    assert len(t) == 1


def test_icmp_echo_ids_are_separate_flows() -> None:
    t = FlowTable()
    f1, _ = t.track(echo(A4, B4, 1), 0.0)
    f2, _ = t.track(echo(A4, B4, 2), 0.0)
    assert f1 is not f2
    assert t.track(rev(echo(A4, B4, 2)), 0.0) == (f2, False)


def test_v4_and_v6_and_protocols_do_not_collide() -> None:
    t = FlowTable()
    f_tcp, _ = t.track(pkt(proto=PROTO_TCP, sport=1, dport=2), 0.0)
    f_udp, _ = t.track(pkt(proto=PROTO_UDP, sport=1, dport=2), 0.0)
    f_v6, _ = t.track(pkt("::ffff:" + A4, "::ffff:" + B4, PROTO_TCP, 1, 2), 0.0)
    assert len({id(f_tcp), id(f_udp), id(f_v6)}) == 3


def test_same_endpoints_both_sides_is_one_forward_flow() -> None:
    t = FlowTable()
    p = pkt("127.0.0.1", "127.0.0.1", PROTO_UDP, 9999, 9999)
    f, d1 = t.track(p, 0.0)
    f2, d2 = t.track(rev(p), 0.0)
    assert f2 is f and d1 and d2 and not f.replied
    # Same address, different ports: still two directions.
    q = pkt("127.0.0.1", "127.0.0.1", PROTO_UDP, 5000, 80)
    g, _ = t.track(q, 0.0)
    assert t.track(rev(q), 0.0) == (g, False)


def test_flags_are_ored_per_direction() -> None:
    t = FlowTable()
    p = pkt(flags=SYN)
    f, _ = t.track(p, 0)
    t.track(rev(p, SA), 0)
    t.track(fwd(p, PA), 0)
    assert f.flags_fwd == SYN | PA
    assert f.flags_rev == SA


def test_non_first_fragment_maps_to_port_zero_flow() -> None:
    t = FlowTable()
    conn, _ = t.track(pkt(proto=PROTO_UDP, sport=5000, dport=53), 0.0)
    frag = pkt(proto=PROTO_UDP, sport=0, dport=0, frag=FRAG_LATER)
    f, forward = t.track(frag, 0.0)
    assert f is not conn and forward
    assert (f.sport, f.dport) == (0, 0)
    assert t.track(pkt(proto=PROTO_UDP, sport=0, dport=0, frag=FRAG_LATER), 0.0)[0] is f


def test_peek_neither_creates_nor_counts() -> None:
    t = FlowTable()
    p = pkt(proto=PROTO_UDP)
    assert t.peek(p) is None
    assert len(t) == 0
    f, _ = t.track(p, 5.0)
    assert t.peek(rev(p)) == (f, False)
    assert t.peek(fwd(p)) == (f, True)
    assert (f.pkts_fwd, f.pkts_rev, f.last_seen, f.replied) == (1, 0, 5.0, False)


def test_engine_slots_start_empty_and_are_writable() -> None:
    f, _ = FlowTable().track(pkt(), 0)
    assert (f.cache_fwd, f.cache_rev, f.nat, f.user, f.end_reason) == (None,) * 5
    f.cache_fwd, f.user = "verdict", {"x": 1}
    with pytest.raises(AttributeError):
        f.something_else = 1  # type: ignore[attr-defined]


# -- replied and TCP state -------------------------------------------------------------


def test_replied_only_after_reverse_packet() -> None:
    t = FlowTable()
    p = pkt(proto=PROTO_UDP)
    f, _ = t.track(p, 0)
    for _ in range(3):
        t.track(fwd(p), 1)
    assert not f.replied
    t.track(rev(p), 2)
    assert f.replied


def test_tcp_handshake_and_fin_fin() -> None:
    t = FlowTable()
    p = pkt(flags=SYN)
    f, _ = t.track(p, 0)
    assert f.tcp_state == TCP_SYN_SENT and not f.replied
    t.track(fwd(p, SYN), 1)  # retransmitted SYN
    assert f.tcp_state == TCP_SYN_SENT
    t.track(rev(p, SA), 1)
    assert f.tcp_state == TCP_SYN_RECV and f.replied
    t.track(fwd(p, A), 1)
    assert f.tcp_state == TCP_ESTABLISHED
    t.track(fwd(p, PA), 2)
    t.track(rev(p, A), 2)
    assert f.tcp_state == TCP_ESTABLISHED
    t.track(rev(p, FA), 3)
    assert f.tcp_state == TCP_FIN_WAIT
    t.track(fwd(p, A), 3)
    assert f.tcp_state == TCP_FIN_WAIT
    t.track(fwd(p, FA), 3)
    assert f.tcp_state == TCP_CLOSING
    assert f.tcp_state_name == "closing"


def test_tcp_rst_closes_from_any_state() -> None:
    for setup in ([SYN], [SYN, SA], [SYN, SA, A], [SYN, SA, A, FA]):
        t = FlowTable()
        p = pkt(flags=setup[0])
        f, _ = t.track(p, 0)
        for i, fl in enumerate(setup[1:], 1):
            t.track(rev(p, fl) if i % 2 else fwd(p, fl), 0)
        t.track(rev(p, R | TCP_ACK), 0)
        assert f.tcp_state == TCP_CLOSED, setup


def test_tcp_refused_syn() -> None:
    t = FlowTable()
    p = pkt(flags=SYN)
    f, _ = t.track(p, 0)
    t.track(rev(p, R | TCP_ACK), 0)
    assert f.tcp_state == TCP_CLOSED and f.replied


def test_tcp_midstream_pickup_becomes_established_only_when_replied() -> None:
    t = FlowTable()
    p = pkt(flags=PA)
    f, _ = t.track(p, 0)
    assert f.tcp_state == TCP_NONE
    t.track(fwd(p, PA), 0)
    assert f.tcp_state == TCP_NONE
    t.track(rev(p, A), 0)
    assert f.tcp_state == TCP_ESTABLISHED


def test_syn_fin_scan_is_not_a_closing_connection() -> None:
    t = FlowTable()
    f, _ = t.track(pkt(flags=SYN | TCP_FIN), 0)
    assert f.tcp_state == TCP_SYN_SENT


@pytest.mark.parametrize("closing", [[R], [FA, FA]], ids=["rst", "fin-fin"])
def test_new_syn_on_closed_tuple_starts_new_flow(closing: list[int]) -> None:
    t = FlowTable()
    p = pkt(flags=SYN)
    old, _ = t.track(p, 0)
    t.track(rev(p, SA), 0)
    t.track(fwd(p, A), 0)
    for i, fl in enumerate(closing):
        t.track(fwd(p, fl) if i % 2 == 0 else rev(p, fl), 1)
    assert old.tcp_state >= TCP_CLOSING
    # The old responder opens a connection back on the same tuple.
    new, forward = t.track(rev(p, SYN), 2)
    assert new is not old and forward
    assert new.src == p.dst and new.sport == p.dport
    assert not new.replied and new.tcp_state == TCP_SYN_SENT and new.pkts_fwd == 1
    assert old.pkts_rev == 1 if closing == [R] else 2  # the SYN is not counted on the old flow
    assert t.pop_evicted() == [old]
    assert old.end_reason == END_REUSED
    assert t.stats.reused == 1 and len(t) == 1


def test_syn_on_established_flow_does_not_restart_it() -> None:
    t = FlowTable()
    p = pkt(flags=SYN)
    f, _ = t.track(p, 0)
    t.track(rev(p, SA), 0)
    t.track(fwd(p, A), 0)
    assert t.track(fwd(p, SYN), 1) == (f, True)
    assert f.tcp_state == TCP_ESTABLISHED and t.stats.created == 1


# -- expiry ----------------------------------------------------------------------------

TO = FlowTimeouts()


def _tcp(flags_seq: list[tuple[str, int]]):
    def setup(t: FlowTable, now: float) -> Flow:
        p = pkt(flags=flags_seq[0][1])
        f, _ = t.track(p, now)
        for way, fl in flags_seq[1:]:
            t.track(fwd(p, fl) if way == ">" else rev(p, fl), now)
        return f

    return setup


def _simple(proto: int, reply: bool, ports: tuple[int, int] = (5000, 53)):
    def setup(t: FlowTable, now: float) -> Flow:
        p = pkt(proto=proto, sport=ports[0], dport=ports[1])
        f, _ = t.track(p, now)
        if reply:
            t.track(rev(p), now)
        return f

    return setup


HANDSHAKE = [(">", SYN), ("<", SA), (">", A)]


@pytest.mark.parametrize(
    ("setup", "timeout"),
    [
        (_tcp([(">", SYN)]), TO.tcp_new),
        (_tcp([(">", SYN), ("<", SA)]), TO.tcp_new),
        (_tcp(HANDSHAKE), TO.tcp_established),
        (_tcp([*HANDSHAKE, (">", FA)]), TO.tcp_half_closed),
        (_tcp([*HANDSHAKE, (">", FA), ("<", FA)]), TO.tcp_closing),
        (_tcp([*HANDSHAKE, ("<", R)]), TO.tcp_closed),
        (_simple(PROTO_UDP, False), TO.udp_new),
        (_simple(PROTO_UDP, True), TO.udp_replied),
        (_simple(PROTO_ICMP, True, (9, 9)), TO.icmp),
        (_simple(47, True, (0, 0)), TO.other),
    ],
    ids=[
        "syn",
        "synack",
        "established",
        "half-closed",
        "closing",
        "rst",
        "udp-new",
        "udp-replied",
        "icmp",
        "gre",
    ],
)
def test_expiry_per_state(setup, timeout: float) -> None:
    t = FlowTable()
    start = 1000.25
    f = setup(t, start)
    assert t.expire(start + timeout - 0.01) == []
    assert len(t) == 1
    # Wheel slots are 1 s, so expiry may be up to 1 s late, never early.
    assert t.expire(start + timeout + 1.0) == [f]
    assert f.end_reason == END_TIMEOUT
    assert len(t) == 0 and t.peek(pkt()) is None
    assert t.stats.expired == 1


def test_shorter_timeout_after_fin_takes_effect() -> None:
    t = FlowTable()
    f = _tcp(HANDSHAKE)(t, 0.0)
    t.track(pkt(flags=FA), 100.0)
    assert t.expire(100 + TO.tcp_half_closed + 1) == [f]


def test_activity_postpones_expiry() -> None:
    t = FlowTable()
    p = pkt(proto=PROTO_UDP)
    f, _ = t.track(p, 0.0)
    for now in range(10, 300, 10):
        t.track(fwd(p), float(now))
        assert t.expire(float(now)) == []
    assert t.expire(290 + TO.udp_new - 0.5) == []
    assert t.expire(290 + TO.udp_new + 1) == [f]


def test_custom_timeouts() -> None:
    t = FlowTable(timeouts=FlowTimeouts(udp_new=5.0))
    f, _ = t.track(pkt(proto=PROTO_UDP), 0.0)
    assert t.expire(4.9) == []
    assert t.expire(6.0) == [f]


def test_incremental_expire_with_budget_gets_all_exactly_once() -> None:
    t = FlowTable()
    flows = {t.track(pkt(proto=PROTO_UDP, sport=1000 + i), i / 1000)[0] for i in range(1000)}
    got: list[Flow] = []
    calls = 0
    while len(t):
        batch = t.expire(100.0, budget=64)
        assert len(batch) <= 64
        got += batch
        calls += 1
        assert calls < 100
    assert calls >= 1000 // 64
    assert len(got) == 1000 and set(got) == flows


def test_expire_only_touches_due_flows() -> None:
    t = FlowTable()
    for i in range(2000):  # long-lived, not due
        p = pkt(proto=PROTO_UDP, sport=1000 + i)
        t.track(p, 0.0)
        t.track(rev(p), 0.0)
    # They were filed under the unreplied deadline; the first pass re-files each once.
    assert t.expire(TO.udp_new + 1) == []
    due = [t.track(pkt(proto=PROTO_UDP, sport=20000 + i), 50.0)[0] for i in range(10)]
    for now in range(51, 80):
        assert t.expire(float(now), budget=1) == []
    # A budget of 10 suffices: the 2000 replied flows are not looked at again.
    got = t.expire(50 + TO.udp_new + 1, budget=10)
    assert sorted(f.sport for f in got) == [f.sport for f in due]
    assert len(t) == 2000


def test_drain_returns_everything() -> None:
    t = FlowTable()
    for i in range(50):
        t.track(pkt(proto=PROTO_UDP, sport=1000 + i), float(i))
    out = t.drain()
    assert len(out) == 50 and len(set(out)) == 50
    assert [f.first_seen for f in out] == sorted(f.first_seen for f in out)
    assert all(f.end_reason == END_SHUTDOWN for f in out)
    assert len(t) == 0 and t.expire(1e9) == [] and t.drain() == []
    s = t.stats
    assert (s.created, s.drained, s.active) == (50, 50, 0)
    # The table is usable afterwards.
    t.track(pkt(), 100.0)
    assert len(t) == 1


# -- capacity --------------------------------------------------------------------------


def test_eviction_prefers_unreplied_oldest_first() -> None:
    t = FlowTable(max_flows=10)
    replied = []
    for i in range(5):
        p = pkt(proto=PROTO_UDP, sport=100 + i)
        replied.append(t.track(p, 0.0)[0])
        t.track(rev(p), 0.0)
    unreplied = [t.track(pkt(proto=PROTO_UDP, sport=1000 + i), 1.0)[0] for i in range(20)]
    assert len(t) == 10
    evicted = t.pop_evicted()
    assert evicted == unreplied[:15]
    assert all(f.end_reason == END_EVICTED for f in evicted)
    assert set(t.flows()) == set(replied) | set(unreplied[15:])
    assert t.stats.evicted == 15
    assert t.pop_evicted() == []


def test_eviction_when_all_replied_takes_most_idle() -> None:
    t = FlowTable(max_flows=3)
    flows = []
    for i, last in enumerate((50.0, 10.0, 30.0)):
        p = pkt(proto=PROTO_UDP, sport=100 + i)
        flows.append(t.track(p, 0.0)[0])
        t.track(rev(p), last)
    t.track(pkt(proto=PROTO_UDP, sport=999), 60.0)
    assert t.pop_evicted() == [flows[1]]
    assert len(t) == 3


def test_capacity_reclaims_expired_before_evicting() -> None:
    t = FlowTable(max_flows=5)
    old = [t.track(pkt(proto=PROTO_UDP, sport=100 + i), 0.0)[0] for i in range(5)]
    t.track(pkt(proto=PROTO_UDP, sport=999), TO.udp_new + 5)
    ended = t.pop_evicted()
    assert ended and set(ended) <= set(old)
    assert all(f.end_reason == END_TIMEOUT for f in ended)
    s = t.stats
    assert s.evicted == 0 and s.expired == len(ended)


def test_spoofed_flood_stays_bounded_and_spares_established() -> None:
    t = FlowTable(max_flows=1000)
    keep = []
    for i in range(100):
        p = pkt(sport=2000 + i, flags=SYN)
        keep.append(t.track(p, 0.0)[0])
        t.track(rev(p, SA), 0.0)
        t.track(fwd(p, A), 0.0)
    ended = 0
    for i in range(100_000):
        src = ipaddress.IPv4Address(0x0A000000 + i).packed
        p = Packet(bytes(40), 4, src, ip(B4), PROTO_TCP, 1024 + i % 50000, 80, SYN)
        t.track(p, i / 100_000)
        assert len(t) <= 1000
        ended += len(t.pop_evicted())
    assert all(t.peek(pkt(sport=f.sport)) == (f, True) for f in keep)
    s = t.stats
    assert s.created == 100_100 and s.active == 1000
    assert s.created == s.expired + s.evicted + s.reused + s.drained + s.active
    assert ended == s.expired + s.evicted


def test_max_flows_one() -> None:
    t = FlowTable(max_flows=1)
    p = pkt(proto=PROTO_UDP)
    a, _ = t.track(p, 0.0)
    t.track(rev(p), 0.0)
    b, _ = t.track(pkt(proto=PROTO_UDP, sport=1), 1.0)
    assert t.pop_evicted() == [a] and t.flows() == [b]


# -- ids -------------------------------------------------------------------------------


def test_flow_ids_unique_and_stable() -> None:
    def ids(seed: int) -> list[int]:
        t = FlowTable(max_flows=500, id_seed=seed)
        return [t.track(pkt(proto=PROTO_UDP, sport=i), 0.0)[0].flow_id for i in range(5000)]

    plain = ids(0)
    assert plain == list(range(1, 5001))
    seeded = ids(12345)
    assert len(set(seeded)) == 5000  # unique even across eviction
    assert all(0 <= i < 2**53 for i in seeded)
    assert seeded == ids(12345)
    assert set(seeded) != set(ids(54321))
    # The id stays with the flow for its life.
    t = FlowTable(id_seed=7)
    p = pkt(proto=PROTO_UDP)
    f, _ = t.track(p, 0.0)
    fid = f.flow_id
    t.track(rev(p), 1.0)
    assert t.track(fwd(p), 2.0)[0].flow_id == fid


def test_bad_max_flows() -> None:
    with pytest.raises(ValueError):
        FlowTable(max_flows=0)


def test_the_oldest_handshake_is_forgotten_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond HANDSHAKE_MEMORY sources, the one whose handshake is oldest goes first; a
    source that completes another handshake is the most recent again."""
    import ips.core.flow as flow_module

    monkeypatch.setattr(flow_module, "HANDSHAKE_MEMORY", 3)
    table = FlowTable()

    def handshake(src: str, sport: int) -> None:
        syn = pkt(src=src, sport=sport, flags=SYN)
        table.track(syn, 1.0)
        table.track(rev(syn, SA), 1.0)
        table.track(fwd(syn, A), 1.0)

    for i, src in enumerate(["10.0.0.1", "10.0.0.2", "10.0.0.3"]):
        handshake(src, 40000 + i)
    handshake("10.0.0.1", 41000)  # again: the most recent now
    handshake("10.0.0.4", 41001)  # the memory is full: 10.0.0.2 goes
    assert [ipaddress.ip_address(a) for a in table.handshakes] == [
        ipaddress.ip_address(a) for a in ("10.0.0.3", "10.0.0.1", "10.0.0.4")
    ]
