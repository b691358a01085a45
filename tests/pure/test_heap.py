"""The worker makes full garbage collections rare (ips/heap.py). That is safe only while the
engine makes no reference cycles per packet or per flow: these tests hold it to that, and
check that a policy load frees the policy it replaces."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from ips.core.build import build_packet
from ips.core.packet import PROTO_ICMP, PROTO_TCP, PROTO_UDP
from ips.daemon.worker import make_engine
from ips.heap import FULL_AFTER, collector_stats, settle, tune_collector
from ips.io.nflog import LoggedPacket
from ips.io.nfqnl import QueuedPacket
from ips.io.nfqueue import QueueWorker
from ips.policy.resolve import load_policy_sources
from ips.replay import replay_captures

GATEWAY = Path(__file__).resolve().parents[2] / "policies" / "gateway.rules"
LAN, DMZ, ATTACKER = "10.10.1.21", "10.10.2.10", "10.10.1.66"
SYN, ACK, PSH, FIN, RST = 0x02, 0x10, 0x08, 0x01, 0x04


def _policy(text: str | None = None):  # type: ignore[no-untyped-def]
    main = str(GATEWAY)
    return load_policy_sources(main, {main: GATEWAY.read_text() if text is None else text})


def collect_everything() -> None:
    """Collect until a collection finds nothing. One may not be enough: a compiled fast path
    holds its candidate cache's entries (a policy's rules) in C, where the collector cannot
    see them, so an earlier test's policy becomes garbage only when the collection that
    frees that fast path has run -- and would be counted by the next one, inside a test."""
    for _ in range(10):
        if gc.collect() == 0:
            return


@pytest.fixture
def collector_untouched() -> Iterator[None]:
    """These tests change process-wide collector state: give it back as it was."""
    thresholds = gc.get_threshold()
    was_enabled = gc.isenabled()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    if was_enabled:
        gc.enable()


def _traffic(worker: QueueWorker, clock: list[float]) -> None:
    """What a gateway sees: short connections through the queue and their offloaded rest as
    copies, refused ones, a port scan (alerts, a block), UDP and pings, garbage; then every
    flow expires."""

    def queued(data: bytes, indev: int = 2, outdev: int = 3) -> None:
        clock[0] += 0.001
        worker._on_queued(QueuedPacket(1, data, indev, outdev, 0, 0x800, 2))

    def copied(data: bytes, indev: int = 2, outdev: int = 3) -> None:
        clock[0] += 0.001
        worker._on_copied(LoggedPacket(data, indev, outdev, 0))

    for i in range(300):
        sport = 20000 + i
        queued(build_packet(PROTO_TCP, LAN, DMZ, sport, 80, flags=SYN))
        queued(build_packet(PROTO_TCP, DMZ, LAN, 80, sport, flags=SYN | ACK), 3, 2)
        copied(build_packet(PROTO_TCP, LAN, DMZ, sport, 80, flags=PSH | ACK, payload=b"GET /"))
        copied(build_packet(PROTO_TCP, DMZ, LAN, 80, sport, flags=FIN | ACK), 3, 2)
        copied(build_packet(PROTO_TCP, LAN, DMZ, sport, 80, flags=FIN | ACK))
        if i % 3 == 0:  # the client reuses its port: the old flow ends, a new one starts
            queued(build_packet(PROTO_TCP, LAN, DMZ, sport, 80, flags=SYN))
        queued(build_packet(PROTO_TCP, LAN, DMZ, sport, 23, flags=SYN))  # telnet: alert, drop
        queued(build_packet(PROTO_UDP, LAN, DMZ, sport, 53, payload=b"q"))
        queued(build_packet(PROTO_UDP, DMZ, LAN, 53, sport, payload=b"a"), 3, 2)
        queued(build_packet(PROTO_ICMP, LAN, DMZ, icmp_type=8, icmp_id=i))
    for port in range(1, 200):  # a port scan: the portscan detector alerts and blocks
        queued(build_packet(PROTO_TCP, ATTACKER, DMZ, 40000, port, flags=SYN))
        queued(build_packet(PROTO_TCP, DMZ, ATTACKER, port, 40000, flags=RST | ACK), 3, 2)
    queued(b"\x45\x00\x00")  # truncated
    queued(b"\x00" * 40)  # not IP either
    events = worker.engine.tick(clock[0] + 3600.0)  # every flow ends
    worker.effects(events)


def test_the_engine_and_queue_worker_leave_no_cyclic_garbage(
    collector_untouched: None,
) -> None:
    engine = make_engine(_policy(), 10_000, (), 1)
    worker = QueueWorker(0, engine)
    worker.ifnames._names.update({2: "lan0", 3: "dmz0"})
    clock = [1000.0]
    worker.clock = lambda: clock[0]
    collect_everything()
    gc.disable()
    _traffic(worker, clock)
    stats = engine.stats
    # the traffic did what it says: connections, refusals, alerts, a block, expiry
    assert stats.offloaded >= 300 and stats.alerts >= 300
    assert stats.verdicts["drop"] >= 300 and sum(stats.malformed.values()) == 2
    assert engine.detect is not None and engine.detect.stats()["portscan"]["alerts"] >= 1
    assert len(engine.flows) == 0
    # Drop the engine (its flow table may still hold ended flows, reachable) but not its
    # policy, whose rules form cycles by design, one set per load (see ips/heap.py: settle).
    policy = engine.policy
    del engine, worker, stats
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        found = gc.collect()
        kinds = sorted({type(o).__name__ for o in gc.garbage})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert found == 0, f"reference cycles left behind: {kinds}"
    assert policy.rules


def test_replaying_the_shared_captures_leaves_no_cyclic_garbage(
    pcaps_dir: Path, collector_untouched: None
) -> None:
    paths = sorted(str(p) for p in pcaps_dir.iterdir() if p.suffix in (".pcap", ".pcapng"))
    engine = make_engine(_policy(), 10_000, (), 1)
    collect_everything()
    gc.disable()
    result = replay_captures(engine.policy, paths, engine=engine, progress=False)
    assert result.packets > 1000
    policy = engine.policy
    del engine, result
    assert gc.collect() == 0
    assert policy.rules


def test_a_cycle_is_caught(collector_untouched: None) -> None:
    """The checks above can fail: a flow that refers to itself is left behind."""
    engine = make_engine(_policy(), 10_000, (), 1)
    policy = engine.policy
    collect_everything()
    gc.disable()
    decision = engine.handle(build_packet(PROTO_TCP, LAN, DMZ, 1234, 80, flags=SYN))
    assert decision.verdict == "accept"
    flow = next(iter(engine.flows.flows()))
    flow.user = flow
    del engine, flow, decision
    assert gc.collect() > 0
    assert policy.rules


def test_settle_frees_the_replaced_policy_and_freezes_the_rest(
    collector_untouched: None,
) -> None:
    engine = make_engine(_policy(), 10_000, (), 1)
    gc.disable()  # nothing but settle may collect here
    settle()  # as the worker does when ready: the first policy is frozen
    engine.load(_policy(GATEWAY.read_text().replace("port 7 limit", "port 9 limit")))
    before = collector_stats()["collected"]["2"]  # type: ignore[index]
    settle()
    freed = collector_stats()["collected"]["2"] - before  # type: ignore[index]
    assert freed > 50  # the old policy's rules, their decisions, checks, ... (thawed first)
    assert collector_stats()["frozen"] > 1000  # modules, the new policy, ...
    before = collector_stats()["collected"]["2"]  # type: ignore[index]
    settle()
    assert collector_stats()["collected"]["2"] == before  # type: ignore[index]


def test_tune_collector_keeps_the_young_generations_and_makes_full_collections_rare(
    collector_untouched: None,
) -> None:
    gc.set_threshold(700, 10, 10)
    tune_collector()
    assert gc.get_threshold() == (700, 10, FULL_AFTER)
    stats = collector_stats()
    assert set(stats["collections"]) == {"0", "1", "2"}  # type: ignore[arg-type]
