"""The detectors of issue 23 through the engine, with packets built in-process and a fake
clock: reflection and amplification (unsolicited answers from many sources at one victim),
floods measured per source and per destination together, ACK scans judged from one side,
`detect volume` thresholds, and the cap on the scan detectors' pending probes. Each fires on
its synthetic attack with the counts asserted, and none fires on the shared benign captures
at its defaults."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from captures import PCAPS
from hypothesis import given, settings
from hypothesis import strategies as st
from packets import ip as addr
from packets import ping, tcp, udp

from ips.core import craft
from ips.core.decode import decode_l3
from ips.core.events import Alert, Block
from ips.detect.scan import GRACE
from ips.engine import Engine
from ips.policy.diagnostics import PolicyError
from ips.policy.model import DETECTOR_SID_BASE
from ips.policy.resolve import load_policy_text
from ips.replay import replay_captures

VICTIM = "10.0.0.10"
SCANNER = "10.0.0.66"
T0 = 1_700_000_000.0
ALL_NEW = (
    "detect reflection",
    "detect ackscan",
    "detect udpflood per src",
    "detect udpflood per dst",
    "detect icmpflood per src",
    "detect icmpflood per dst",
    "detect volume bytes 10MB/s per dst port 443",
    "detect volume packets 20000/s per port",
)


def make(*lines: str, **kw: object) -> Engine:
    text = "\n".join(["table banned dynamic timeout 1h", "drop from @banned", *lines])
    return Engine(load_policy_text(text, "t.rules"), **kw)  # type: ignore[arg-type]


def feed(engine: Engine, packets: list[bytes], t: float, step: float) -> tuple[list[object], int]:
    """Feed packets `step` apart from time t; (effects, packets dropped by a detector)."""
    effects: list[object] = []
    drops = 0
    for p in packets:
        decision = engine.handle(p, now=t)
        effects += decision.effects
        drops += decision.reason.startswith("detector:")
        t += step
    return effects, drops


def alerts(effects: list[object], category: str | None = None) -> list[Alert]:
    return [
        e for e in effects if isinstance(e, Alert) and (category is None or e.category == category)
    ]


def reflectors(n: int) -> list[str]:
    return [f"198.51.{i // 200}.{i % 200 + 1}" for i in range(n)]


# ---- reflection and amplification -------------------------------------------------------------


def test_dns_amplification_from_50_resolvers_is_limited_at_the_victim_and_nobody_banned() -> None:
    e = make("detect reflection")
    sources = reflectors(50)
    # 2,000 answers a second from port 53 for 0.5 s, round robin over 50 resolvers
    answers = [udp(sources[i % 50], VICTIM, 53, 40000 + i % 7, b"x" * 400) for i in range(1000)]
    effects, drops = feed(e, answers, T0, 0.0005)
    # the bucket passes its burst (100) and 0.5 s at 100/s; the rest is dropped
    assert 845 <= drops <= 855
    (alert,) = alerts(effects, "reflection")  # paced: one per victim per second
    assert alert.signature_id == DETECTOR_SID_BASE["reflection"] + 2
    extra = alert.extra or {}
    assert extra["answers"] == "udp" and extra["service_port"] == 53
    assert extra["sources"] == 20 and extra["target"] == VICTIM
    assert not [x for x in effects if isinstance(x, Block)] and not e.tables["banned"].members
    stats = e.detect.stats()["reflection"]  # type: ignore[union-attr]
    assert stats["counted"] == 1000 and stats["drops"] == drops and stats["tracked"] == 1
    # a victim keeps at most `sources` senders, packed: 20 IPv4 addresses
    victim = e.detect.by_name["reflection"].victims[addr(VICTIM)]  # type: ignore[union-attr, attr-defined]
    assert len(victim.sources) == 20 * 4


def test_syn_ack_backscatter_and_smurf_replies_are_reflection() -> None:
    e = make("detect reflection alert")
    syn_acks = [tcp(s, VICTIM, 443, 1024 + i, "SA") for i, s in enumerate(reflectors(300))]
    effects, drops = feed(e, syn_acks, T0, 0.001)  # 1,000 a second
    assert drops == 0  # `alert`: nothing dropped
    found = alerts(effects, "reflection")
    assert len(found) == 1 and found[0].signature_id == DETECTOR_SID_BASE["reflection"] + 1
    assert (found[0].extra or {})["count"] >= 1
    replies = [ping(s, "10.0.0.11", ident=i, reply=True) for i, s in enumerate(reflectors(300))]
    effects, _ = feed(e, replies, T0 + 5, 0.001)
    assert [a.signature_id for a in alerts(effects)] == [DETECTOR_SID_BASE["reflection"] + 3]


def test_answers_that_were_asked_for_or_come_from_few_sources_are_not_reflection() -> None:
    e = make("detect reflection")
    sources = reflectors(50)
    asked: list[bytes] = []
    for i, s in enumerate(sources * 20):  # 1,000 queries, each answered: a busy resolver client
        asked += [udp(VICTIM, s, 30000 + i, 53), udp(s, VICTIM, 53, 30000 + i, b"y" * 300)]
    # 2 resolvers whose answers we see without their queries (asymmetric routing), fast
    lost = [udp(sources[i % 2], VICTIM, 53, 20000 + i, b"z" * 300) for i in range(2000)]
    # NTP peers (123 <-> 123) and IKE (500 <-> 500) are conversations, not answers
    peers = [udp(s, VICTIM, 123, 123) for s in sources] + [
        udp(s, VICTIM, 500, 500) for s in sources
    ]
    # an SSDP M-SEARCH to the multicast group, answered by 60 devices from their port 1900
    search = [udp(VICTIM, "239.255.255.250", 50000, 1900, b"M-SEARCH")]
    devices = [udp(f"10.0.1.{i + 1}", VICTIM, 1900, 50000, b"HTTP/1.1 200") for i in range(60)]
    # a ping of all IPv6 nodes, answered by 150 of them
    all_nodes = [ping("2001:db8::10", "ff02::1", ident=9)]
    nodes = [
        ping(f"2001:db8::{i + 100:x}", "2001:db8::10", ident=9, reply=True) for i in range(150)
    ]
    effects, drops = feed(
        e, asked + lost + peers * 5 + search + devices * 4 + all_nodes + nodes, T0, 0.0002
    )
    assert (alerts(effects), drops) == ([], 0)
    stats = e.detect.stats()["reflection"]  # type: ignore[union-attr]
    assert stats["counted"] == 2000 and stats["solicited"] == 240 + 150


def test_reflection_thresholds_are_shared_among_workers() -> None:
    e = make("detect reflection rate 100/s sources 20", shards=4)
    det = e.detect.by_name["reflection"]  # type: ignore[union-attr]
    assert (det.rate, det.sources) == (25.0, 5)  # type: ignore[attr-defined]
    answers = [udp(s, VICTIM, 123, 40000, b"x" * 400) for s in reflectors(5) * 40]
    _, drops = feed(e, answers, T0, 0.001)  # 1,000 a second from 5 sources: this worker's share
    assert drops > 0


def test_reflection_block_is_warned_about() -> None:
    policy = load_policy_text(
        "table banned dynamic timeout 1h\ndetect reflection block 10m\n", "t.rules"
    )
    assert any("amplifiers" in w.message for w in policy.warnings)


# ---- floods per source and per destination -------------------------------------------------


def test_udp_flood_from_200_spoofed_sources_is_seen_per_destination_not_per_source() -> None:
    e = make("detect udpflood per src", "detect udpflood per dst")
    assert set(e.detect.by_name) == {"udpflood", "udpflood-dst"}  # type: ignore[union-attr]
    # 30,000 datagrams in 1 s, 200 sources at 150/s each (per source: far below 5000/s)
    flood = [
        udp(f"203.0.{i % 200 // 100}.{i % 100 + 1}", VICTIM, 1024, 9, b"x") for i in range(30000)
    ]
    effects, drops = feed(e, flood, T0, 1 / 30000)
    by = e.stats.detector_drops
    assert by["udpflood"] == 0 and drops == by["udpflood-dst"]
    # per destination: 10,000/s by default, with one second of burst: 20,000 pass in 1 s
    assert 9900 <= drops <= 10100
    sids = {a.signature_id for a in alerts(effects)}
    assert sids == {DETECTOR_SID_BASE["udpflood"] + 2}


def test_a_single_source_flood_is_caught_by_both_and_counted_once() -> None:
    e = make("detect icmpflood per src", "detect icmpflood per dst")
    assert set(e.detect.by_name) == {"icmpflood", "icmpflood-dst"}  # type: ignore[union-attr]
    flood = [ping(SCANNER, VICTIM, ident=7) for _ in range(1000)]  # 1,000/s for 1 s (ping -f)
    effects, drops = feed(e, flood, T0, 0.001)
    by = e.stats.detector_drops
    # per source (200/s, and 200 of burst) drops first: 400 pass in 1 s; per destination (500/s)
    # also counts what per source let pass, and is never over
    assert drops == by["icmpflood"] == sum(by.values())
    assert 595 <= drops <= 605
    assert {a.signature_id for a in alerts(effects)} >= {DETECTOR_SID_BASE["icmpflood"] + 1}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("detect udpflood per src\ndetect udpflood per src", "already configured"),
        ("detect portscan\ndetect portscan", "already configured"),
        ("detect udpflood per port", "counts per src or per dst"),
        ("detect volume per dst", "needs one threshold"),
        ("detect volume bytes 10MB/s packets 10/s", "needs one threshold"),
        ("detect volume bytes 10XB/s", "is not a bytes rate"),
        ("detect volume packets 10MB/s", "is not a packets rate"),
        ("detect volume bytes 1MB/s per host", "counts per src, per dst or per port"),
        ("detect reflection sources 0", "'sources' must be from 1 to"),
        ("detect reflection port { 53, nope }", "unknown service 'nope'"),
        ("detect ackscan rate 10/s", "'rate' is not an option of detector 'ackscan'"),
    ],
)
def test_policy_errors_of_the_new_lines(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as err:
        load_policy_text("table banned dynamic timeout 1h\n" + text + "\n", "t.rules")
    assert message in str(err.value)
    assert "t.rules:" in str(err.value)


def test_flood_defaults_per_destination_and_the_second_lines_key() -> None:
    policy = load_policy_text(
        "detect icmpflood per dst\ndetect udpflood per dst\ndetect synflood per src\n", "t.rules"
    )
    rates = {k: d.params["rate"] for k, d in policy.detectors.items()}
    assert rates == {"icmpflood": 500.0, "udpflood": 10000.0, "synflood": 200.0}


# ---- ACK scans seen from one side ------------------------------------------------------------


def test_ack_scan_on_a_tap_without_answers_fires_at_25_targets() -> None:
    e = make("detect ackscan")
    probes = [tcp(SCANNER, VICTIM, 61000, port, "A") for port in range(1, 25)]
    effects, _ = feed(e, probes, T0, 0.01)
    effects += e.tick(T0 + GRACE + 1)
    assert alerts(effects) == []  # 24 targets: one short
    effects, _ = feed(e, [tcp(SCANNER, "10.0.0.11", 61000, 80, "A")], T0 + 4, 0.01)
    effects += e.tick(T0 + 4 + GRACE + 1)
    (alert,) = alerts(effects, "ackscan")
    assert alert.signature_id == DETECTOR_SID_BASE["ackscan"] + 1
    extra = alert.extra or {}
    assert (extra["count"], extra["hosts"], extra["threshold"]) == (25, 2, 25)
    assert "10.0.0.10:1" in extra["targets"]  # type: ignore[operator]
    assert not e.tables["banned"].members  # alert only by default


def test_window_and_maimon_probes_count_and_connections_picked_up_mid_stream_do_not() -> None:
    e = make("detect ackscan ports 10")
    effects: list[object] = []
    t = T0
    for i in range(40):  # a client's 40 connections picked up mid-stream: a bare ACK, then data
        client, port = "10.0.2.1", 30000 + i
        more, _ = feed(
            e,
            [
                tcp(client, f"10.0.9.{i + 1}", port, 443, "A"),
                tcp(client, f"10.0.9.{i + 1}", port, 443, "PA", payload=b"data"),
            ],
            t,
            0.01,
        )
        effects += more
        t += 0.05
    one = "10.0.3.1"  # one client with 40 connections, each answered by the server
    for i in range(40):
        more, _ = feed(
            e,
            [tcp(one, VICTIM, 20000 + i, 443, "A"), tcp(VICTIM, one, 443, 20000 + i, "A")],
            t,
            0.01,
        )
        effects += more
    effects += e.tick(t + GRACE + 1)
    assert alerts(effects) == []
    # a Maimon scan (FIN+ACK) of 10 ports: reset by the target, or silent
    probes = [tcp(SCANNER, VICTIM, 62000, port, "FA") for port in range(100, 110)]
    reset = craft.tcp_reset_for(decode_l3(probes[0]))  # type: ignore[arg-type]
    assert reset is not None
    effects, _ = feed(e, [*probes, reset], t + 10, 0.01)
    effects += e.tick(t + 10 + GRACE + 1)
    assert len(alerts(effects, "ackscan")) == 1


# ---- volume ------------------------------------------------------------------------------------


def test_volume_bytes_to_port_443_over_10_megabytes_a_second() -> None:
    e = make("detect volume bytes 10MB/s per dst port 443 alert")
    client = "10.0.0.20"
    big = tcp(client, VICTIM, 40000, 443, "A", payload=b"x" * 1460)  # 1500 bytes
    other = tcp(client, VICTIM, 40001, 80, "A", payload=b"x" * 1460)
    # 20 MB/s to port 443 for 1 s (and as much to port 80, not counted)
    effects, drops = feed(e, [big, other] * 13333, T0, 0.5 / 13333)
    assert drops == 0
    found = alerts(effects, "volume")
    assert len(found) == 1 and found[0].signature_id == DETECTOR_SID_BASE["volume"] + 1
    extra = found[0].extra or {}
    assert extra["per"] == "dst" and extra["key"] == VICTIM and extra["threshold"] == 10e6
    # a second later, at half the rate: quiet
    effects, _ = feed(e, [big] * 3000, T0 + 2, 1 / 3000)
    assert alerts(effects) == []


def test_volume_packets_per_port_limit_and_several_volume_lines() -> None:
    e = make("detect volume packets 1000/s per port limit", "detect volume bytes 1Gbit/s per src")
    assert set(e.detect.by_name) == {"volume", "volume-2"}  # type: ignore[union-attr]
    assert e.detect.by_name["volume-2"].rate == 125e6  # type: ignore[union-attr, attr-defined]
    packets = [udp(f"10.0.4.{i % 50 + 1}", f"10.0.5.{i % 7 + 1}", 5000, 5060) for i in range(3000)]
    effects, drops = feed(e, packets, T0, 1 / 3000)  # 3,000 a second to port 5060
    assert 995 <= drops <= 1005 and e.stats.detector_drops["volume"] == drops
    assert (alerts(effects, "volume")[0].extra or {})["key"] == "5060"


# ---- the cap on pending probes -----------------------------------------------------------------


def test_pending_probes_are_capped_and_a_scan_is_still_judged_under_a_spoofed_flood() -> None:
    e = make("set detect-probes 8000", "set default drop", "detect portscan", "detect sweep")
    effects: list[object] = []
    t = T0
    for i in range(12_000):  # 6,000 spoofed SYNs a second for 2 s; a scanner among them
        effects += e.handle(
            tcp(f"100.{64 + i // 65536}.{i // 256 % 256}.{i % 256}", VICTIM, 1024 + i % 50000, 80),
            now=t,
        ).effects
        if i % 40 == 0:  # 150 ports a second, nobody answers (filtered)
            effects += e.handle(tcp(SCANNER, VICTIM, 50000, 1 + i // 40), now=t).effects
        t += 1 / 6000
        if i % 6000 == 0:
            effects += e.tick(t)
    effects += e.tick(t + GRACE + 1)
    stats = e.detect.stats()  # type: ignore[union-attr]
    for name in ("portscan", "sweep"):
        assert stats[name]["pending"] <= 8000
        assert stats[name]["probes_dropped"] > 3000
    assert stats["portscan"]["probes_early"] > 0
    assert [a.extra["source"] for a in alerts(effects, "portscan")] == [SCANNER]  # type: ignore[index]


def test_one_source_holds_at_most_4_times_its_threshold_and_still_fires() -> None:
    e = make("set default drop", "detect portscan ports 15")
    probes = [tcp(SCANNER, VICTIM, 50000, port) for port in range(1, 1001)]
    effects, _ = feed(e, probes, T0, 0.0005)  # 1,000 ports in 0.5 s, unanswered
    stats = e.detect.stats()["portscan"]  # type: ignore[union-attr]
    assert stats["pending"] == 60 and stats["probes_skipped"] == 940
    effects += e.tick(T0 + GRACE + 1)
    assert len(alerts(effects, "portscan")) == 1


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),  # kind of packet
            st.integers(0, 40),  # source
            st.integers(0, 6),  # port
            st.integers(1, 4000),  # micro-steps of time
        ),
        max_size=300,
    )
)
def test_random_traffic_never_crashes_and_state_stays_bounded(
    steps: list[tuple[int, int, int, int]],
) -> None:
    e = make(*ALL_NEW, "detect portscan alert", "set detect-memory 16", "set detect-probes 16")
    ports = (53, 123, 443, 1900, 80, 11211, 500)
    t = T0
    for kind, src_i, port_i, dt in steps:
        src, port = f"198.51.100.{src_i}", ports[port_i]
        packet = (
            udp(src, VICTIM, port, 40000 + src_i),
            tcp(src, VICTIM, port, 40000, "SA" if src_i % 2 else "A"),
            ping(src, VICTIM, ident=src_i, reply=bool(src_i % 2)),
            udp(VICTIM, "239.255.255.250", 40000, port),
        )[kind]
        e.handle(packet, now=t)
        t += dt / 1000
        if dt > 3000:
            e.tick(t)
    for name, s in e.detect.stats().items():  # type: ignore[union-attr]
        assert s["tracked"] <= 16, name
        assert s.get("pending", 0) <= 16, name


# ---- real captures: benign traffic raises nothing -----------------------------------------------


def test_benign_captures_raise_nothing_with_every_new_detector_at_its_defaults() -> None:
    if not PCAPS.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"shared captures not found at {PCAPS}")
        pytest.skip(f"shared captures not found at {PCAPS}")
    text = "\n".join(
        [
            "table banned dynamic timeout 1h",
            "drop from @banned",
            *ALL_NEW,
            "detect synflood per src",
        ]
    )
    policy = load_policy_text(text, "t.rules")
    captures = sorted(p for p in Path(PCAPS).iterdir() if p.suffix in (".pcap", ".pcapng"))
    assert len(captures) >= 30
    for capture in captures:
        engine = Engine(policy)
        result = replay_captures(policy, [str(capture)], progress=False, engine=engine)
        assert (dict(result.detector_alerts), result.blocks, dict(result.detector_drops)) == (
            {},
            [],
            {},
        ), capture.name


def test_retransmitted_ack_probes_still_count_and_a_one_sided_download_does_not() -> None:
    e = make("detect ackscan ports 10")
    effects: list[object] = []
    # a download seen from the client's side only: a stream of bare ACKs in each of 12 flows
    for i in range(12):
        acks = [tcp("10.0.6.1", f"10.0.7.{i + 1}", 33000 + i, 443, "A")] * 20
        more, _ = feed(e, acks, T0 + i * 0.1, 0.005)
        effects += more
    effects += e.tick(T0 + 5)
    assert alerts(effects) == []
    # nmap -sA against filtered ports: every probe sent twice, nothing comes back
    probes = [tcp(SCANNER, VICTIM, 61000, port, "A") for port in range(1, 11) for _ in range(2)]
    effects, _ = feed(e, probes, T0 + 10, 0.05)
    effects += e.tick(T0 + 10 + GRACE + 2)
    (alert,) = alerts(effects, "ackscan")
    assert (alert.extra or {})["count"] == 10


@settings(max_examples=60, deadline=None)
@given(st.from_regex(r"\A[0-9]{1,14}[A-Za-z]{0,5}/(s|m|h|d|x|second)\Z"))
def test_any_byte_rate_is_read_or_refused_with_a_diagnostic(rate: str) -> None:
    text = f"detect volume bytes {rate} per port\n"
    try:
        policy = load_policy_text(text, "t.rules")
    except PolicyError as err:
        assert "t.rules:1:" in str(err)
        return
    assert float(policy.detectors["volume"].params["rate"]) > 0  # type: ignore[arg-type]


def test_new_detectors_summarise_as_json_and_keep_their_state_across_an_apply() -> None:
    from ips.cli.policy import policy_summary

    text = "\n".join(["table banned dynamic timeout 1h", *ALL_NEW])
    policy = load_policy_text(text, "t.rules")
    summary = json.loads(json.dumps(policy_summary(policy)))
    assert summary["detectors"]["reflection"]["port"][2] == [53, 53]
    assert summary["detectors"]["volume-2"]["metric"] == "packets"
    e = Engine(policy)
    feed(e, [udp(s, VICTIM, 53, 40000) for s in reflectors(30)], T0, 0.001)
    before = e.detect.by_name["reflection"]  # type: ignore[union-attr]
    e.load(load_policy_text(text + "\ndetect portscan alert\n", "t.rules"))
    assert e.detect.by_name["reflection"] is before  # type: ignore[union-attr]
    assert before.stats()["counted"] == 30


def test_workers_share_what_is_counted_per_destination_not_per_source() -> None:
    e = make(
        "detect volume packets 1000/s per dst",
        "detect volume packets 1000/s per src",
        "detect volume packets 1000/s per port",
        "detect udpflood per src",
        "detect udpflood per dst",
        shards=4,
    )
    by = e.detect.by_name  # type: ignore[union-attr]
    rates = {k: by[k].rate for k in ("volume", "volume-2", "volume-3", "udpflood", "udpflood-dst")}  # type: ignore[attr-defined]
    assert rates == {
        "volume": 250.0,
        "volume-2": 1000.0,
        "volume-3": 250.0,
        "udpflood": 5000.0,
        "udpflood-dst": 2500.0,
    }


def test_connections_picked_up_mid_stream_by_a_gateway_that_refuses_them_are_no_ack_scan() -> None:
    # a restarted gateway with `set default drop`: each connection's next packets are refused,
    # each one the first packet of a new flow (the refused one is forgotten)
    e = make("set default drop", "detect ackscan ports 10")
    effects: list[object] = []
    for i in range(30):  # one busy client's 30 connections
        server, port = f"10.0.8.{i + 1}", 40000 + i
        bare = tcp("10.0.3.3", server, port, 443, "A")
        data = tcp("10.0.3.3", server, port, 443, "PA", payload=b"more")
        more, _ = feed(e, [bare, data] if i % 2 else [bare] * 4, T0 + i * 0.01, 0.1)
        effects += more
    effects += e.tick(T0 + GRACE + 2)
    assert alerts(effects) == []
    # a scan refused the same way still counts (each probe sent twice, never answered)
    probes = [tcp(SCANNER, VICTIM, 61000, port, "A") for port in range(1, 11) for _ in range(2)]
    effects, _ = feed(e, probes, T0 + 10, 0.05)
    effects += e.tick(T0 + 10 + GRACE + 2)
    assert len(alerts(effects, "ackscan")) == 1


def test_eve_lines_of_the_new_detectors() -> None:
    import io

    from ips.sinks.eve import EveWriter

    e = make(
        "detect reflection alert",
        "detect volume packets 100/s per dst alert",
        "detect ackscan ports 3",
    )
    effects, _ = feed(
        e, [udp(s, VICTIM, 11211, 40000, b"v" * 1000) for s in reflectors(40) * 5], T0, 0.001
    )
    more, _ = feed(e, [tcp(SCANNER, VICTIM, 61000, port, "A") for port in (1, 2, 3)], T0 + 1, 0.01)
    effects += more + e.tick(T0 + 1 + GRACE + 1)
    out = io.StringIO()
    EveWriter(out).events(effects)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    by = {r["alert"]["category"]: r for r in records if r["event_type"] == "alert"}
    assert set(by) == {"reflection", "volume", "ackscan"}
    reflection = by["reflection"]["ipsctl"]
    assert reflection["detector"] == "reflection" and reflection["service_port"] == 11211
    assert len(reflection["reflectors"]) == 20 and reflection["answers"] == "udp"
    assert by["volume"]["ipsctl"]["metric"] == "packets" and by["volume"]["ipsctl"]["key"] == VICTIM
    assert by["ackscan"]["ipsctl"]["targets"] == ["10.0.0.10:1", "10.0.0.10:2", "10.0.0.10:3"]
    assert by["ackscan"]["alert"]["signature_id"] == 9000821


def test_probes_of_one_target_do_not_use_up_the_room_of_the_sweep_that_follows() -> None:
    # The per-key cap counts the targets waiting: 40 SYNs to one host (answered by resets,
    # still waiting to be weighed) once took all of the key's room in the sweep detector, and
    # the 20 hosts swept next were skipped (found by the lab's forged-scan test).
    engine = make("set default accept", "detect sweep hosts 10 within 60s alert")
    packets = []
    for port in range(1, 41):
        packets.append(tcp(SCANNER, VICTIM, 40000 + port, port, "S"))
        packets.append(tcp(VICTIM, SCANNER, port, 40000 + port, "RA"))
    packets += [tcp(SCANNER, f"10.0.2.{host}", 44444, 4444, "S") for host in range(100, 120)]
    effects, _ = feed(engine, packets, T0, 0.002)
    for t in (1.0, 2.0, GRACE + 1.0):
        effects += engine.tick(T0 + t)
    found = alerts(effects, "sweep")
    assert len(found) == 1
    stats = engine.detect.stats()["sweep"]  # type: ignore[union-attr]
    assert stats["probes_skipped"] == 0 and stats["pending"] == 0
