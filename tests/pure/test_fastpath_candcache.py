"""The compiled path's candidate cache (ips/fast/_fastpath.pyx, ips_cand_slot): a packet of no
flow whose memo reads would all find their keys takes its candidate entry from a cache keyed
by its own dimensions, without reading the memos. It must give what the memos give, and
change nothing the Python engine would not: held to the Python engine (the Pair of
tests/pure/test_fastpath_differential.py: decisions, counters, flow table, detectors and the
policy's memos, compared tick after tick) while the memos are emptied (as a full one is, or
by hand), changed by hand, and the policy loaded again between packets."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ips.core.build import build_packet
from ips.core.packet import PROTO_TCP, PROTO_UDP
from ips.engine import Engine
from ips.policy import compile as compile_mod
from ips.policy.resolve import load_policy_text
from tests.pure.test_fastpath_differential import (
    GATEWAY,
    META,
    Pair,
    need_fast_path,
    refused_traffic,
)

POLICY = "set app-layer off\n" + GATEWAY


def _cand_hits(pair: Pair) -> int:
    path = pair.fast._fast_path
    return path.cand_hits if path is not None else 0


def _feed(pair: Pair, packets: list[tuple[float, bytes]], shift: float) -> float:
    now = 0.0
    for ts, data in packets:
        now = ts + shift
        pair.handle(data, META, now)
    return now


def _empty_every_memo(engine: Engine) -> None:
    """Every memo candidate_bits and candidate_entry read, emptied in place (as a full one
    is: CompiledPolicy.candidate_entry, _AddrIndex.lookup)."""
    policy = engine.policy
    for fx in policy._families.values():
        for index in (fx.src, fx.dst, fx.sport, fx.dport):
            index.memo.clear()
    policy._if_memo.clear()
    policy._candidates_memo.clear()
    policy.offload_plans.clear()


def _empty_one_address_memo(engine: Engine) -> None:
    engine.policy._families[4].dst.memo.clear()


def _empty_the_entries(engine: Engine) -> None:
    engine.policy._candidates_memo.clear()
    engine.policy.offload_plans.clear()


def _forget_one_port(engine: Engine) -> None:
    """Keys out of a memo that otherwise only grows (a port's)."""
    memo = engine.policy._families[4].dport.memo
    for port in (445, 22, 3306):
        memo.pop(port, None)


def _reload(engine: Engine) -> None:
    engine.load(load_policy_text(POLICY, "gateway.rules"))


CHANGES: dict[str, Callable[[Engine], None]] = {
    "every-memo-emptied": _empty_every_memo,
    "an-address-memo-emptied": _empty_one_address_memo,
    "the-entries-emptied": _empty_the_entries,
    "a-port-forgotten": _forget_one_port,
    "policy-reloaded": _reload,
}


def test_the_cache_answers_repeated_packets_of_no_flow_as_the_memos() -> None:
    """The same refused traffic twice: the second pass's candidates come from the cache."""
    need_fast_path()
    pair = Pair(POLICY)
    packets = refused_traffic(5)
    now = _feed(pair, packets, 0.0)
    now = _feed(pair, packets, now + 100.0)
    pair.finish(now + 1.0)
    assert _cand_hits(pair) > len(packets) // 5, _cand_hits(pair)


@pytest.mark.parametrize("proto", [PROTO_TCP, PROTO_UDP], ids=["tcp", "udp"])
@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_cached_packet_after_a_memo_change_reads_the_memos(change: str, proto: int) -> None:
    """One refused packet of no flow (data to a port no rule allows, from a host no detector
    minds) sent until the cache answers it; then the memos changed in both engines: the same
    packet again must read them as Python does (looking up again what a memo lost), compared
    at once; and the cache answers it again once they hold their keys."""
    need_fast_path()
    pair = Pair(POLICY)
    flags = 0x18 if proto == PROTO_TCP else 0
    data = build_packet(proto, "198.51.100.7", "203.0.113.9", 40001, 3306, flags=flags,
                        payload=b"x" * 30)  # fmt: skip
    now = 10.0
    for _ in range(4):
        now += 0.01
        pair.handle(data, META, now)
    pair.check_state()
    hits = _cand_hits(pair)
    assert hits >= 1
    for engine in (pair.slow, pair.fast):
        CHANGES[change](engine)
    now += 0.01
    pair.handle(data, META, now)
    pair.check_state()
    for _ in range(3):
        now += 0.01
        pair.handle(data, META, now)
    pair.finish(now + 1.0)
    assert _cand_hits(pair) > hits + 1


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_memo_change_between_packets_leaves_no_stale_entry(change: str) -> None:
    """The cache warmed, then the memos changed in both engines between two packets (or the
    policy loaded again): the packets after it read the memos as Python does (a memo that
    lost a key looks it up again, filling it as the Python engine fills its own), and the
    cache serves again once they hold their keys."""
    need_fast_path()
    pair = Pair(POLICY)
    packets = refused_traffic(6)
    half = len(packets) // 2
    now = _feed(pair, packets, 0.0)
    hits_before = _cand_hits(pair)
    assert hits_before > 0
    for engine in (pair.slow, pair.fast):
        CHANGES[change](engine)
    pair.check_state()
    # A few packets first, compared one by one: a stale entry shows in the memos at once.
    for ts, data in packets[:50]:
        pair.handle(data, META, ts + now + 100.0)
        pair.check_state()
    now = _feed(pair, packets[50:half], now + 100.0)
    pair.finish(now + 1.0)
    assert _cand_hits(pair) > hits_before


def test_a_memo_value_changed_by_hand_is_read_again() -> None:
    """A memo's value replaced (a different bitset for an address the cache has seen): the
    cache must give the entry of the new value, as the memos do, not the one it noted."""
    need_fast_path()
    pair = Pair(POLICY)
    packets = refused_traffic(7)
    now = _feed(pair, packets, 0.0)
    assert _cand_hits(pair) > 0
    # Every destination seen is admitted by no rule now: their candidates are the empty
    # bitset's (not memoised yet: Python makes that entry).
    for engine in (pair.slow, pair.fast):
        memo = engine.policy._families[4].dst.memo
        for addr in list(memo):
            memo[addr] = 0
    hits = _cand_hits(pair)
    for ts, data in packets[:300]:
        pair.handle(data, META, ts + now + 100.0)
    pair.finish(now + 200.0)
    assert _cand_hits(pair) > hits  # (the new values served too, once memoised)


def test_memos_emptied_when_full_leave_the_same_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """With memos bounded at a few keys, Python empties them every few packets (a spoofed
    flood's churn): the cache follows, and both engines keep the same memos."""
    need_fast_path()
    monkeypatch.setattr(compile_mod, "MEMO_MAX", 6)
    pair = Pair(POLICY)
    packets = refused_traffic(8)
    now = _feed(pair, packets[:1500], 0.0)
    now = _feed(pair, packets[:1500], now + 100.0)
    pair.finish(now + 1.0)


# ---- due probes weighed in compiled code (FastPath._resolve_quietly) -----------------------------

_WEIGH_POLICY = """\
set app-layer off
set default drop
accept proto tcp to 10.30.0.1 port { 80, 81, 82, 83 }
accept proto udp to 10.30.0.2 port 53
detect portscan ports 15 within 60s alert
detect sweep hosts 25 within 60s alert
"""


@pytest.mark.parametrize("rounds", [1, 3])
def test_due_probes_weighed_in_compiled_code_weigh_as_python(rounds: int) -> None:
    """Probes of every weight come due, then a new probe from the same scanner: the compiled
    path weighs the due ones first (ScanDetector.resolve_quietly, in compiled code) and the
    windows' weights and scores, the queues and indexes are the Python engine's. The probes:
    SYNs accepted and answered by a SYN+ACK alone (an open port knocked on: W_HANDSHAKE),
    answered and followed by more from the target (a connection: nothing), answered by a
    reset (W_FAILED), or not at all; refused SYNs and ACKs left unanswered or answered; UDP
    datagrams (a sweep weighs none); probes to other hosts (the sweep's)."""
    need_fast_path()
    pair = Pair(_WEIGH_POLICY)
    pair.next_tick = 1e9  # no tick: the due probes are weighed by a packet
    scanner, host = "198.18.0.1", "10.30.0.1"
    now = 100.0
    sport = 40000
    for _ in range(rounds):
        # accepted SYNs and what the target says to each
        for port, answers in ((80, [0x12]), (81, [0x12, 0x18]), (82, [0x14]), (83, [])):
            sport += 1
            now += 0.01
            pair.handle(build_packet(PROTO_TCP, scanner, host, sport, port, flags=0x02), META, now)
            for flags in answers:
                now += 0.001
                payload = b"hello" if flags == 0x18 else b""
                reply = build_packet(PROTO_TCP, host, scanner, port, sport, flags=flags,
                                     payload=payload)  # fmt: skip
                pair.handle(reply, META, now)
        # refused probes (SYN, ACK) to ports and hosts, some answered by data
        for i, (dst, port, flags) in enumerate(
            [(host, 700, 0x02), (host, 701, 0x10), ("10.30.0.7", 22, 0x02),
             ("10.30.0.8", 22, 0x10), (host, 702, 0x02)]
        ):  # fmt: skip
            sport += 1
            now += 0.01
            pair.handle(build_packet(PROTO_TCP, scanner, dst, sport, port, flags=flags), META, now)
            if i == 4:
                now += 0.001
                data = build_packet(PROTO_TCP, dst, scanner, port, sport, flags=0x18, payload=b"x")
                pair.handle(data, META, now)
        # UDP datagrams: one accepted and answered, others refused
        for dst, port in (("10.30.0.2", 53), ("10.30.0.9", 161), (host, 123)):
            sport += 1
            now += 0.01
            pair.handle(build_packet(PROTO_UDP, scanner, dst, sport, port, payload=b"q"), META, now)
            if port == 53:
                now += 0.001
                answer = build_packet(PROTO_UDP, dst, scanner, port, sport, payload=b"a")
                pair.handle(answer, META, now)
        pair.check_state()
        # past their grace time: a new refused probe weighs them first
        now += 2.5
        sport += 1
        pair.handle(build_packet(PROTO_TCP, scanner, host, sport, 900, flags=0x02), META, now)
        pair.check_state()
    path = pair.fast._fast_path
    assert path is not None and path.quiet_in_c >= rounds
    fast = pair.fast.detect
    assert fast is not None and fast.portscan is not None
    weights = [w for entry in fast.portscan.entries.values() for w in entry.weights.values()]
    assert 0.25 in weights and 1.0 in weights  # (W_HANDSHAKE and W_FAILED both credited)
    pair.finish(now + 10.0)
