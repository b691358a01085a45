"""The detectors (ips/detect) through the engine, with packets built in-process and a fake
clock: each fires at its threshold and not below, answers are weighed, floods are limited at
the victim, blocks respect trust, ignore lists, never_block and the ban budget, escalate and
expire, and real benign captures raise nothing."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import pytest
from packets import ip as addr
from packets import ping, tcp, udp
from playbook import Playbook, alert, block, packet, tick, unblock

from ips.core import craft
from ips.core.build import build_packet
from ips.core.decode import decode_l3
from ips.core.events import Alert, Block, Unblock
from ips.core.packet import (
    PROTO_TCP,
    TCP_ACK,
    TCP_FIN,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
    TCP_URG,
)
from ips.detect.scan import GRACE
from ips.engine import Engine
from ips.policy.diagnostics import PolicyError
from ips.policy.model import DETECTOR_SID_BASE
from ips.policy.resolve import load_policy, load_policy_text
from ips.replay import replay_captures
from ips.sinks.eve import EveWriter

ROOT = Path(__file__).resolve().parents[2]
PCAPS = Path(__file__).resolve().parents[3] / "shared" / "pcaps"
SCANNER = "10.0.0.66"
VICTIM = "10.0.0.10"
CLIENT = "10.0.0.20"
T0 = 1_700_000_000.0
XMAS = TCP_FIN | TCP_PSH | TCP_URG


def make(detect: str, *extra: str, default: str = "accept", **kw: object) -> Engine:
    text = "\n".join(
        [
            "table banned dynamic timeout 1h",
            f"set default {default}",
            "drop from @banned",
            *extra,
            detect,
        ]
    )
    return Engine(load_policy_text(text, "t.rules"), **kw)  # type: ignore[arg-type]


def rst_for(probe: bytes) -> bytes:
    answer = craft.tcp_reset_for(decode_l3(probe))  # type: ignore[arg-type]
    assert answer is not None
    return answer


def unreachable_for(probe: bytes) -> bytes:
    answer = craft.icmp_unreachable_for(decode_l3(probe), code=3)  # type: ignore[arg-type]
    assert answer is not None
    return answer


def run(engine: Engine, packets: list[bytes], t: float, step: float = 0.001) -> list[object]:
    """Feed packets from time t, `step` apart; return all effects."""
    effects: list[object] = []
    for p in packets:
        effects += engine.handle(p, now=t).effects
        t += step
    return effects


def alerts(effects: list[object], category: str | None = None) -> list[Alert]:
    return [e for e in effects if isinstance(e, Alert) and category in (None, e.category)]


def blocks(effects: list[object]) -> list[Block]:
    return [e for e in effects if isinstance(e, Block)]


def banned(engine: Engine) -> set[bytes]:
    return set(engine.tables["banned"].members)


# ---- portscan ------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [5, 15])
def test_portscan_fires_at_its_threshold_and_not_below(threshold: int) -> None:
    e = make(f"detect portscan ports {threshold} within 60s block 10m")
    effects: list[object] = []
    for port in range(1, threshold):  # SYN probes, each reset by the target
        probe = tcp(SCANNER, VICTIM, 40000 + port, port)
        effects += run(e, [probe, rst_for(probe)], T0 + port * 0.01)
    assert alerts(effects) == [] and banned(e) == set()
    probe = tcp(SCANNER, VICTIM, 40000, 1000)
    effects = run(e, [probe, rst_for(probe)], T0 + 1)
    (alert,) = alerts(effects)
    (block,) = blocks(effects)
    assert alert.category == "portscan" and alert.action == "blocked"
    assert alert.signature_id == DETECTOR_SID_BASE["portscan"] + 1 == 9000101
    assert (alert.src_ip, alert.dest_ip, alert.dport) == (SCANNER, VICTIM, 1000)
    assert alert.extra is not None
    assert alert.extra["count"] == threshold and alert.extra["threshold"] == threshold
    assert alert.extra["targets"] == [*range(1, threshold), 1000]
    assert (alert.extra["source"], alert.extra["target"], alert.extra["window"]) == (
        SCANNER,
        VICTIM,
        60.0,
    )
    assert (block.addr_text, block.detector, block.ttl, block.offense) == (
        SCANNER,
        "portscan",
        600.0,
        1,
    )
    assert banned(e) == {addr(SCANNER)}
    # the next packet of the scanner meets `drop from @banned`
    assert e.handle(tcp(SCANNER, VICTIM, 40001, 2000), now=T0 + 2).verdict == "drop"


def test_unanswered_syn_and_udp_probes_count_when_overdue() -> None:
    e = make("detect portscan ports 15 within 60s block 10m")
    story = Playbook(e, now=T0, step=0.001)
    for p in range(1, 9):
        story >> tcp(SCANNER, VICTIM, 40000 + p, p)  # no answer yet: nothing known
    for p in range(100, 107):
        story >> udp(SCANNER, VICTIM, 40000 + p, p)
    assert (
        story
        >> tick(at=T0 + GRACE - 0.5)
        >> tick(at=T0 + GRACE + 1)
        << alert(category="portscan", check=lambda a: a.extra["count"] == a.extra["failed"] == 15)
        << block(SCANNER)
    )
    assert banned(e) == {addr(SCANNER)}


def test_rejected_probes_count_at_once_icmp_unreachable_and_our_own_reject() -> None:
    # UDP probes answered by ICMP port unreachable (the target's answer)
    e = make("detect portscan ports 10 within 60s alert")
    effects: list[object] = []
    for p in range(1, 11):
        probe = udp(SCANNER, VICTIM, 50000 + p, p)
        effects += run(e, [probe, unreachable_for(probe)], T0 + p * 0.01)
    assert len(alerts(effects, "portscan")) == 1
    # ACK probes (nmap -sA) rejected by our own policy: `reject` is a reset too
    e = make("detect portscan ports 10 within 60s alert", "reject proto tcp to port 1-100")
    effects = run(e, [tcp(SCANNER, VICTIM, 50000 + p, p, TCP_ACK) for p in range(1, 11)], T0)
    (alert,) = alerts(effects, "portscan")
    assert alert.action == "allowed"  # the response is `alert`


def test_ack_probes_count_when_reset_not_when_silent() -> None:
    e = make("detect portscan ports 10 within 60s alert")
    silent = [tcp(SCANNER, VICTIM, 41000 + p, p, TCP_ACK) for p in range(1, 30)]
    run(e, silent, T0)
    assert alerts(e.tick(T0 + 10)) == []  # silence after a bare ACK: maybe a picked-up flow
    effects: list[object] = []
    for p in range(1, 11):
        probe = tcp(SCANNER, VICTIM, 42000 + p, 100 + p, TCP_ACK)
        effects += run(e, [probe, rst_for(probe)], T0 + 20 + p * 0.01)
    assert len(alerts(effects, "portscan")) == 1


def test_open_ports_weigh_less_and_used_services_nothing() -> None:
    e = make("detect portscan ports 10 within 60s alert")
    t = T0
    # 20 open ports, handshake only (a SYN scan of open ports): a quarter each -> 5 < 10
    for p in range(1, 21):
        syn = tcp(SCANNER, VICTIM, 43000 + p, p)
        run(e, [syn, tcp(VICTIM, SCANNER, p, 43000 + p, TCP_SYN | TCP_ACK)], t)
        t += 0.01
    assert alerts(e.tick(t + GRACE + 1)) == []
    # 20 more: now 40 open ports, 10 points
    for p in range(21, 41):
        syn = tcp(SCANNER, VICTIM, 43000 + p, p)
        run(e, [syn, tcp(VICTIM, SCANNER, p, 43000 + p, TCP_SYN | TCP_ACK)], t)
        t += 0.01
    assert len(alerts(e.tick(t + GRACE + 1), "portscan")) == 1
    # a client using 50 services of a server (data both ways): nothing
    e = make("detect portscan ports 10 within 60s alert")
    for p in range(1, 51):
        run(
            e,
            [
                tcp(CLIENT, VICTIM, 44000 + p, 1000 + p),
                tcp(VICTIM, CLIENT, 1000 + p, 44000 + p, TCP_SYN | TCP_ACK),
                tcp(CLIENT, VICTIM, 44000 + p, 1000 + p, TCP_ACK | TCP_PSH, payload=b"GET /"),
                tcp(VICTIM, CLIENT, 1000 + p, 44000 + p, TCP_ACK | TCP_PSH, payload=b"200"),
            ],
            T0 + p * 0.01,
        )
    assert alerts(e.tick(T0 + 10)) == []


def test_offloaded_connections_are_used_services_not_open_ports() -> None:
    """With offload the engine sees a connection up to the client's first data, never the
    server's answer (the kernel passes it): still a used service, weighing nothing.
    (Application parsing is off: with it on, offload waits for the server's side.)"""
    e = make(
        "detect portscan ports 10 within 60s alert", "set app-layer off", "accept state established"
    )
    for p in range(1, 51):
        decisions = [
            e.handle(pkt, now=T0 + p * 0.01)
            for pkt in (
                tcp(CLIENT, VICTIM, 44000 + p, 1000 + p),
                tcp(VICTIM, CLIENT, 1000 + p, 44000 + p, TCP_SYN | TCP_ACK),
                tcp(CLIENT, VICTIM, 44000 + p, 1000 + p, TCP_ACK),
                tcp(CLIENT, VICTIM, 44000 + p, 1000 + p, TCP_ACK | TCP_PSH, payload=b"GET /"),
            )
        ]
        assert decisions[-1].offload  # the rest of it went on in the kernel
    assert alerts(e.tick(T0 + 10)) == []


def test_traceroute_and_forged_icmp_errors_do_not_count() -> None:
    e = make("detect portscan ports 5 within 60s block 10m")
    # traceroute's UDP probes, 33434-33534, unanswered or not
    run(e, [udp(CLIENT, VICTIM, 45000, 33434 + i) for i in range(60)], T0)
    assert alerts(e.tick(T0 + 5)) == []
    # ICMP errors quoting datagrams the client never sent (wrong source port): no effect
    for p in range(1, 20):
        real = udp(CLIENT, VICTIM, 46000, 53)
        forged = unreachable_for(udp(CLIENT, VICTIM, 46001 + p, p))
        run(e, [real, forged], T0 + 10 + p * 0.01)
    assert banned(e) == set()
    assert alerts(e.tick(T0 + 20)) == []


# ---- sweep ---------------------------------------------------------------------------------


def test_sweep_over_30_hosts_with_echo_syn_and_udp_probes() -> None:
    e = make("detect sweep hosts 25 within 60s block 10m")
    hosts = [f"10.0.1.{i}" for i in range(1, 31)]
    effects: list[object] = []
    t = T0
    for i, host in enumerate(hosts):
        if i % 3 == 0:
            effects += run(e, [ping(SCANNER, host, ident=i)], t)  # unanswered echo
        elif i % 3 == 1:
            probe = tcp(SCANNER, host, 47000 + i, 443)  # reset
            effects += run(e, [probe, rst_for(probe)], t)
        else:
            probe = udp(SCANNER, host, 47000 + i, 161)  # port unreachable
            effects += run(e, [probe, unreachable_for(probe)], t)
        t += 0.05
    effects += e.tick(t + GRACE + 1)
    (alert,) = alerts(effects, "sweep")
    assert alert.signature_id == 9000201
    assert alert.extra["count"] == 25 and alert.extra["threshold"] == 25  # type: ignore[index]
    assert len(alert.extra["targets"]) == 25  # type: ignore[index, arg-type]
    assert banned(e) == {addr(SCANNER)}


def test_sweep_not_below_threshold_and_answered_hosts_do_not_count() -> None:
    e = make("detect sweep hosts 25 within 60s block 10m")
    t = T0
    for i in range(24):  # 24 hosts that do not answer
        run(e, [ping(SCANNER, f"10.0.1.{i + 1}", ident=i)], t)
        t += 0.01
    for i in range(100):  # a browser: 100 hosts that answer, plus unanswered UDP (QUIC)
        host = f"10.0.2.{i + 1}"
        run(
            e,
            [
                tcp(SCANNER, host, 48000 + i, 443),
                tcp(host, SCANNER, 443, 48000 + i, TCP_SYN | TCP_ACK),
                udp(SCANNER, host, 49000 + i, 443),
            ],
            t,
        )
        t += 0.01
    assert alerts(e.tick(t + GRACE + 1)) == [] and banned(e) == set()
    # a multicast or broadcast destination is not a host
    run(e, [udp(SCANNER, "224.0.0.251", 5353, 5353), udp(SCANNER, "255.255.255.255", 68, 67)], t)
    assert alerts(e.tick(t + 10)) == []


def test_a_ping_sweep_of_live_hosts_counts_as_it_is_sent() -> None:
    e = make("detect sweep hosts 25 within 60s block 10m")
    effects: list[object] = []
    for i in range(24):  # answered pings (nmap -sn over live hosts), IPv6 too
        host = f"fd00::{i + 1:x}" if i % 2 else f"10.0.3.{i + 1}"
        src = "fd00::66" if i % 2 else SCANNER
        effects += run(
            e, [ping(src, host, ident=i), ping(host, src, ident=i, reply=True)], T0 + i * 0.01
        )
    assert alerts(effects) == []  # 12 + 12: each family's source is its own
    e = make("detect sweep hosts 25 within 60s block 10m")
    for i in range(25):
        host = f"10.0.3.{i + 1}"
        effects = run(
            e,
            [ping(SCANNER, host, ident=i), ping(host, SCANNER, ident=i, reply=True)],
            T0 + i * 0.01,
        )
    assert len(alerts(effects, "sweep")) == 1 and banned(e) == {addr(SCANNER)}


# ---- stealth -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "kind", "sid"),
    [
        (0, "null", 1),
        (XMAS, "xmas", 2),
        (TCP_FIN, "fin", 3),
        (TCP_SYN | TCP_FIN, "syn-fin", 4),
        (TCP_SYN | TCP_RST, "syn-rst", 5),
        (0xFF, "syn-fin", 4),  # every flag set
        (TCP_PSH, "invalid", 6),
    ],
)
def test_stealth_alerts_each_kind_and_blocks_on_repetition(flags: int, kind: str, sid: int) -> None:
    e = make("detect stealth count 3 within 60s block 1h")
    first = run(e, [tcp(SCANNER, VICTIM, 51000, 80, flags)], T0)
    (alert,) = alerts(first)
    assert (alert.category, alert.action) == ("stealth", "allowed")
    assert alert.signature_id == 9000300 + sid
    assert alert.extra["kind"] == kind and alert.extra["count"] == 1  # type: ignore[index]
    second = run(e, [tcp(SCANNER, VICTIM, 51001, 81, flags)], T0 + 2)
    assert len(alerts(second)) == 1 and blocks(second) == []
    third = run(e, [tcp(SCANNER, VICTIM, 51002, 82, flags)], T0 + 2.1)  # within the second
    (alert,) = alerts(third)  # the block's alert is never held back
    (block,) = blocks(third)
    assert alert.action == "blocked" and alert.extra["count"] == 3  # type: ignore[index]
    assert (block.detector, block.ttl) == ("stealth", 3600.0)


def test_stealth_alerts_are_paced_per_source_with_a_count() -> None:
    e = make("detect stealth count 10000 within 60s alert")
    packets = [tcp(SCANNER, VICTIM, 52000 + i, i % 1000 + 1, XMAS) for i in range(5000)]
    effects = run(e, packets, T0, step=0.0005)  # 2.5 s of an XMAS scan
    found = alerts(effects, "stealth")
    folded = [a.extra["packets"] for a in found]  # type: ignore[index]
    assert len(found) == 3 and folded[0] == 1 and all(1990 < n < 2010 for n in folded[1:])
    assert found[-1].extra["count"] == sum(folded)  # type: ignore[index]
    assert blocks(effects) == []


def test_fin_in_a_connection_and_later_fragments_are_not_stealth() -> None:
    e = make("detect stealth count 1 within 60s block 1h")
    run(
        e,
        [
            tcp(CLIENT, VICTIM, 53000, 80),
            tcp(VICTIM, CLIENT, 80, 53000, TCP_SYN | TCP_ACK),
            tcp(CLIENT, VICTIM, 53000, 80, TCP_FIN),
        ],
        T0,
    )
    # a non-first fragment of a TCP datagram: no header, so no flags to judge
    frag = bytearray(build_packet(PROTO_TCP, CLIENT, VICTIM, 1, 2, payload=b"x" * 40))
    frag[6:8] = (0x0010).to_bytes(2, "big")  # offset 16 (x8 bytes), last fragment
    frag[10:12] = b"\0\0"
    frag[10:12] = craft.checksum(bytes(frag[:20])).to_bytes(2, "big")
    effects = run(e, [bytes(frag)], T0 + 1)
    assert alerts(effects) == [] and banned(e) == set()


# ---- floods --------------------------------------------------------------------------------

FLOODS = {
    "icmpflood": lambda src, dst, i: ping(src, dst, ident=i),
    "synflood": lambda src, dst, i: tcp(src, dst, 10000 + i % 50000, 80),
    "udpflood": lambda src, dst, i: udp(src, dst, 10000 + i % 50000, 53),
}


@pytest.mark.parametrize("name", list(FLOODS))
def test_flood_limit_drops_over_the_rate_at_the_victim_and_bans_nobody(name: str) -> None:
    e = make(f"detect {name} rate 100/s per dst limit")
    make_packet = FLOODS[name]
    # 400 packets in 0.2 s from 400 (spoofed) sources to the victim: 100 of burst + 20
    verdicts = [
        e.handle(make_packet(f"10.9.{i // 250}.{i % 250 + 1}", VICTIM, i), now=T0 + i * 0.0005)
        for i in range(400)
    ]
    dropped = [d for d in verdicts if d.verdict == "drop"]
    assert 250 <= len(dropped) <= 300
    assert all(d.reason == f"detector:{name}" for d in dropped)
    assert all(d.verdict == "accept" for d in verdicts[:100])
    assert e.stats.detector_drops[name] == len(dropped)
    found = [a for d in verdicts for a in alerts(list(d.effects), name)]
    assert len(found) == 1  # one a second per victim
    assert (found[0].action, found[0].signature_id) == ("blocked", DETECTOR_SID_BASE[name] + 2)
    assert found[0].extra["per"] == "dst" and found[0].extra["threshold"] == 100  # type: ignore[index]
    # another destination is not limited, and nobody is banned
    assert e.handle(make_packet(CLIENT, "10.0.0.11", 7), now=T0 + 0.2).verdict == "accept"
    assert banned(e) == set() and e.stats.blocks == 0


@pytest.mark.parametrize("name", list(FLOODS))
def test_flood_block_bans_the_source_and_alert_only_alerts(name: str) -> None:
    make_packet = FLOODS[name]
    e = make(f"detect {name} rate 50/s per src block 5m")
    effects = run(e, [make_packet(SCANNER, VICTIM, i) for i in range(200)], T0, step=0.0001)
    (block,) = blocks(effects)
    assert (block.addr_text, block.detector, block.ttl) == (SCANNER, name, 300.0)
    assert alerts(effects, name)[0].action == "blocked"
    assert e.stats.detector_drops[name] == 0  # `block` bans; the rules drop what follows
    e = make(f"detect {name} rate 50/s per src alert")
    verdicts = [e.handle(make_packet(SCANNER, VICTIM, i), now=T0 + i * 0.0001) for i in range(200)]
    assert all(d.verdict == "accept" for d in verdicts)
    found = [a for d in verdicts for a in alerts(list(d.effects), name)]
    assert len(found) == 1 and found[0].action == "allowed"
    assert found[0].signature_id == DETECTOR_SID_BASE[name] + 1
    assert banned(e) == set()


def test_a_flood_leaves_alone_a_source_another_detection_banned_in_the_same_packet() -> None:
    """Detectors only ask for blocks; the engine settles the requests in order. A sweep that
    completes on a scanner's SYN bans it, and the SYN flood over the same packet's victim
    then finds it banned already: no second alert, no second request."""
    e = make(
        "detect sweep hosts 3 within 60s block 10s",
        "detect synflood rate 2/s per dst block 5m",
        "table trusted = { 10.0.2.0/24 }",  # the flooders stay, so the victim stays flooded
    )
    t = T0
    for host in range(1, 6):  # unanswered probes, due after the grace time
        e.handle(tcp(SCANNER, f"10.0.1.{host}", 1000 + host, 80), now=t)
    for k in range(70):  # retransmitted SYNs: no new flow, so no probe is weighed meanwhile
        t += 0.04
        e.handle(tcp(f"10.0.2.{k % 7 + 1}", VICTIM, 2000 + k % 7, 80), now=t)
    effects = list(e.handle(tcp(SCANNER, VICTIM, 3000, 80), now=t + 0.01).effects)
    assert [type(x).__name__ for x in effects] == ["Alert", "Block"]
    assert (effects[0].category, effects[0].action, effects[1].detector) == (  # type: ignore[union-attr]
        "sweep",
        "blocked",
        "sweep",
    )
    assert e.detect is not None and e.detect.by_name["synflood"].blocked == 0
    assert e.blocks.stats()["added"] == 1 and e.stats.blocks == 1


def test_udpflood_counts_only_unanswered_flows() -> None:
    e = make("detect udpflood rate 100/s per src limit")
    # a QUIC download: 2000 packets a second both ways on one answered flow
    packets = [udp(CLIENT, VICTIM, 443, 50000), udp(VICTIM, CLIENT, 50000, 443)]
    verdicts = [e.handle(packets[i % 2], now=T0 + i * 0.0005) for i in range(4000)]
    assert all(d.verdict == "accept" for d in verdicts)


# ---- never block the wrong host -------------------------------------------------------------


def test_trusted_ignored_and_never_block_addresses_are_never_blocked() -> None:
    e = make(
        "detect stealth count 1 within 60s block 1h ignore 10.0.0.30",
        "table trusted = { 10.0.0.20 }",
        never_block=["10.0.0.40/32", "192.168.0.0/16"],
    )
    effects: list[object] = []
    for i, src in enumerate(["10.0.0.20", "10.0.0.30", "10.0.0.40", "192.168.7.7", "0.0.0.0"]):
        effects += run(e, [tcp(src, VICTIM, 54000 + i, 80, XMAS)], T0 + i)
    assert blocks(effects) == [] and banned(e) == set()
    why = {a.src_ip: (a.action, a.extra["block"]) for a in alerts(effects)}  # type: ignore[index]
    assert why == {
        "10.0.0.20": ("allowed", "trusted"),
        "10.0.0.40": ("allowed", "never-block"),
        "192.168.7.7": ("allowed", "never-block"),
        "0.0.0.0": ("allowed", "reserved"),
    }  # 10.0.0.30 is in the detector's ignore list: not even watched
    assert e.blocks.refused == {"trusted": 1, "never-block": 2, "reserved": 1}
    with pytest.raises(ValueError):
        make("detect stealth", never_block=["10.0.0.300/8"])


def test_ban_budget_and_memory_cap_under_a_spoofed_flood_of_100000_sources() -> None:
    e = make(
        "detect stealth count 1 within 60s block 10m",
        "detect synflood rate 1000/s per dst limit",
        "table trusted = { 10.0.0.20 }",
        "set detect-memory 50000",
    )
    effects: list[object] = []
    t = T0
    for i in range(100_000):
        src = f"{11 + i // 65536}.{i // 256 % 256}.{i % 256}.1"
        effects += e.handle(tcp(src, VICTIM, 1024 + i % 60000, 80, XMAS), now=t).effects
        t += 0.00005  # 5 s in all
    effects += run(e, [tcp(CLIENT, VICTIM, 55000, 80, XMAS)], t)  # the trusted client, spoofed
    assert len(blocks(effects)) == 30 == len(banned(e))  # set ban-budget: 30 a minute
    assert addr(CLIENT) not in banned(e)
    stats = e.detect.stats()["stealth"]  # type: ignore[union-attr]
    assert stats["tracked"] == 50_000 and stats["evicted"] == 50_001
    assert e.blocks.refused["budget"] == 100_000 - 30
    # alerts are paced too: ~100 a second for all sources together, plus the 30 blocks
    assert len(alerts(effects)) <= 30 + 100 * 6 + 100
    # a minute later the budget is back
    later = run(e, [tcp("99.0.0.1", VICTIM, 1, 80, XMAS)], t + 61)
    assert len(blocks(later)) == 1


def test_escalation_doubles_the_block_up_to_ban_max_and_expiry_unblocks() -> None:
    e = make(
        "detect stealth count 1 within 1s block 10s", "set ban-escalation 2", "set ban-max 35s"
    )
    story = Playbook(e)
    t = T0
    for offense, ttl in [(1, 10.0), (2, 20.0), (3, 35.0), (4, 35.0), (5, 35.0)]:
        story >> packet(tcp(SCANNER, VICTIM, 56000, 80, XMAS), at=t)
        story << alert(category="stealth") << block(SCANNER, offense=offense, ttl=ttl)
        t += ttl
        story >> tick(at=t - 0.5)
        story >> tick(at=t + 0.1) << unblock(SCANNER, reason="expired", table="banned")
        assert story and banned(e) == set()
        t += 2


def test_manual_block_unblock_and_adopt() -> None:
    e = make("detect stealth count 1 within 60s block 10m", "table trusted = { 10.0.0.20 }")
    # manual: the operator's word wins over trust and budget, and is not an offense
    block = e.block(addr(CLIENT), T0, 60)
    assert block is not None and (block.detector, block.offense, block.ttl) == ("manual", 1, 60)
    assert addr(CLIENT) in banned(e) and e.blocks.offenses(addr(CLIENT), T0) == 0
    unblock = e.unblock(addr(CLIENT), T0 + 1)
    assert unblock is not None and unblock.reason == "manual" and banned(e) == set()
    assert e.unblock(addr(CLIENT), T0 + 2) is None
    # adopt: a block found in the kernel at start; expires by itself; counts as an offense
    assert e.adopt_block(addr(SCANNER), T0 + 30)
    assert e.handle(tcp(SCANNER, VICTIM, 1, 80), now=T0 + 10).verdict == "drop"
    gone = [x for x in e.tick(T0 + 31) if isinstance(x, Unblock)]
    assert [u.addr_text for u in gone] == [SCANNER]
    (again,) = blocks(run(e, [tcp(SCANNER, VICTIM, 2, 80, XMAS)], T0 + 40))
    assert (again.offense, again.ttl) == (2, 1200.0)
    # a manual unblock forgets the offenses: the next block is a first one again
    e.unblock(addr(SCANNER), T0 + 41)
    (fresh,) = blocks(run(e, [tcp(SCANNER, VICTIM, 3, 80, XMAS)], T0 + 101))  # a new window
    assert (fresh.offense, fresh.ttl) == (1, 600.0)
    # no table `banned`: nothing to block into
    plain = Engine(load_policy_text("set default accept", "t.rules"))
    assert plain.detect is None and plain.block(addr(CLIENT), T0, 60) is None


# ---- policy ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message", "hint"),
    [
        (
            "detect portscan",
            "blocks, but the policy has no dynamic table 'banned'",
            "table banned dynamic timeout 1h",
        ),
        (
            "table banned = { 10.0.0.1 }\ndetect sweep block 5m",
            "table 'banned' is not dynamic",
            "table banned dynamic timeout 1h",
        ),
        ("drop sid 9000101", "sid 9000101 is reserved for the detectors' alerts", None),
        ("set ban-budget 0", "'set ban-budget' takes a whole number from 1 to 1000000", None),
        ("set ban-max 10", "'set ban-max' takes a duration", None),
        ("set ban-escalation fast", "'set ban-escalation' takes a whole number", None),
        ("set detect-memory 8", "'set detect-memory' takes a whole number from 16", None),
    ],
)
def test_policy_errors(text: str, message: str, hint: str | None) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "t.rules")
    (diag,) = info.value.diagnostics
    assert message in diag.message
    if hint is not None:
        assert hint in (diag.hint or "")


def test_policy_options_and_alert_only_detectors_need_no_table() -> None:
    policy = load_policy_text(
        "set ban-budget 5\nset ban-escalation 3\nset ban-max 2h\nset detect-memory 1000\n"
        "detect portscan alert\ndetect synflood rate 10/s per dst limit",
        "t.rules",
    )
    assert (policy.ban_budget, policy.ban_escalation, policy.ban_max, policy.detect_memory) == (
        5,
        3,
        7200.0,
        1000,
    )
    defaults = load_policy_text("", "t.rules")
    assert (defaults.ban_budget, defaults.ban_escalation, defaults.ban_max) == (30, 2, 86400.0)
    assert defaults.detect_memory == 65536
    warned = load_policy_text(
        "table banned dynamic\ndetect synflood per dst block", "t.rules"
    ).warnings
    assert any("easily spoofed" in w.message for w in warned)


def test_reload_keeps_the_state_of_unchanged_detectors() -> None:
    text = "table banned dynamic\nset default accept\ndetect stealth count 3 within 60s block 1h"
    e = Engine(load_policy_text(text, "t.rules"))
    run(e, [tcp(SCANNER, VICTIM, 1, 80, XMAS), tcp(SCANNER, VICTIM, 2, 80, XMAS)], T0)
    e.load(load_policy_text(text + "\ndrop proto tcp to port 23", "t.rules"))
    (block,) = blocks(run(e, [tcp(SCANNER, VICTIM, 3, 80, XMAS)], T0 + 1))
    assert block.detector == "stealth"
    e.load(load_policy_text("set default accept", "t.rules"))
    assert e.detect is None and "banned" not in e.tables


def test_no_detectors_no_cost_and_shared_decisions_stay_shared() -> None:
    e = Engine(load_policy_text("set default accept\naccept proto udp", "t.rules"))
    assert e.detect is None
    first = e.handle(udp(CLIENT, VICTIM, 1, 53), now=T0)
    second = e.handle(udp(CLIENT, VICTIM, 2, 53), now=T0)
    assert first is second and first.effects == ()
    e = make("detect stealth alert")
    quiet = e.handle(udp(CLIENT, VICTIM, 1, 53), now=T0)
    run(e, [tcp(SCANNER, VICTIM, 1, 80, 0)], T0)
    assert e.handle(udp(CLIENT, VICTIM, 3, 53), now=T0) is quiet and quiet.effects == ()


# ---- EVE and replay -------------------------------------------------------------------------


def test_eve_records_of_detections_blocks_and_unblocks() -> None:
    e = make("detect portscan ports 3 within 60s block 10m")
    effects: list[object] = []
    for p in (21, 22, 23):
        probe = tcp(SCANNER, VICTIM, 57000 + p, p)
        effects += run(e, [probe, rst_for(probe)], T0)
    effects += [x for x in e.tick(T0 + 601) if isinstance(x, Unblock)]
    out = io.StringIO()
    EveWriter(out).events(effects)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["event_type"] for r in records] == ["alert", "ipsctl_block", "ipsctl_unblock"]
    alert, block, unblock = records
    assert alert["src_ip"] == SCANNER and alert["dest_ip"] == VICTIM and alert["proto"] == "TCP"
    assert alert["alert"]["category"] == "portscan" and alert["alert"]["action"] == "blocked"
    assert alert["alert"]["signature_id"] == 9000101
    assert alert["alert"]["metadata"] == {"rule": ["t.rules:4"], "detector": ["portscan"]}
    assert alert["ipsctl"] == {
        "detector": "portscan",
        "source": SCANNER,
        "target": VICTIM,
        "targets": [21, 22, 23],
        "count": 3,
        "score": 3.0,
        "threshold": 3,
        "window": 60.0,
        "failed": 3,
        "block": "added",
        "ttl": 600.0,
        "offense": 1,
    }
    assert block["src_ip"] == SCANNER and "dest_ip" not in block
    assert block["ipsctl_block"] == {
        "table": "banned",
        "detector": "portscan",
        "offense": 1,
        "ttl": 600.0,
        "expires": block["ipsctl_block"]["expires"],
        "reason": f"portscan: 3 ports of {VICTIM} probed within 60s",
        "enforced": True,
    }
    assert block["ipsctl_block"]["expires"].startswith("2023-11-14T22:23:20")
    assert unblock["ipsctl_unblock"] == {"table": "banned", "reason": "expired"}


def test_replay_reports_detector_alerts_and_blocks(tmp_path: Path) -> None:
    from ips.io.pcap import write_pcap  # type: ignore[attr-defined]

    records = [(T0 + i * 0.01, tcp(SCANNER, VICTIM, 58000, 80, XMAS)) for i in range(3)]
    capture = tmp_path / "xmas.pcap"
    write_pcap(capture, records)
    policy = load_policy_text(
        "table banned dynamic\ndrop from @banned\ndetect stealth count 2 within 60s block 1h",
        "t.rules",
    )
    result = replay_captures(policy, [str(capture)], progress=False)
    report = result.as_dict()
    assert report["detector_alerts"] == {"stealth": 2}  # the 1st, then the block on the 2nd
    (block,) = report["blocks"]  # type: ignore[misc]
    assert (block["addr"], block["detector"], block["ttl"]) == (SCANNER, "stealth", 3600.0)
    table = result.table()
    assert "blocks    1" in table and "detectors stealth 2" in table
    assert f"  {SCANNER}  stealth  3600s  offense 1" in table


# ---- real captures: benign traffic raises nothing ---------------------------------------------


def _attack_captures() -> set[str]:
    """The captures the shared README calls an attack (their alerts are detections)."""
    readme = PCAPS / "README.md"
    names = set()
    for line in readme.read_text().splitlines():
        m = re.match(r"\|\s*(\S+\.pcap\S*)\s*\|[^|]*\|([^|]*)\|", line)
        if m and "ATTACK" in m.group(2):
            names.add(m.group(1))
    return names


@pytest.mark.parametrize("policy_name", ["gateway.rules", "tap.rules"])
def test_benign_captures_raise_no_detector_alert(policy_name: str) -> None:
    if not PCAPS.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"shared captures not found at {PCAPS}")
        pytest.skip(f"shared captures not found at {PCAPS}")
    policy = load_policy(ROOT / "policies" / policy_name)
    attacks = _attack_captures()
    assert "td_tcp_eight_lowest_weight_flags_set.pcap" in attacks
    captures = sorted(p for p in PCAPS.iterdir() if p.suffix in (".pcap", ".pcapng"))
    assert captures
    for capture in captures:
        result = replay_captures(policy, [str(capture)], progress=False)
        if capture.name in attacks:
            continue
        assert (dict(result.detector_alerts), result.blocks, dict(result.detector_drops)) == (
            {},
            [],
            {},
        ), capture.name
    # the one attack indicator among them, a packet with every TCP flag set, is seen
    flags = replay_captures(
        policy, [str(PCAPS / "td_tcp_eight_lowest_weight_flags_set.pcap")], progress=False
    )
    assert dict(flags.detector_alerts) == {"stealth": 1}
