"""Engine behaviour as tables: packets in, decisions out."""

from __future__ import annotations

import pytest
from packets import ping, tcp, udp
from playbook import Playbook, accept, alert, drop, packet, reject, tick, unblock, wait
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror
from scapy.layers.inet6 import IPv6

from ips.core.build import build_packet
from ips.core.craft import checksum
from ips.core.decode import decode_l3
from ips.core.events import Alert, LogRecord
from ips.core.packet import (
    LINKTYPE_ETHERNET,
    PROTO_ICMP,
    TCP_ACK,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
)
from ips.engine import Engine, Meta
from ips.policy.resolve import load_policy_text

A, B, C = "10.0.0.1", "10.0.0.2", "10.0.5.5"
A6, B6 = "2001:db8::1", "2001:db8::2"


def engine(text: str) -> Engine:
    return Engine(load_policy_text(text, "t.rules"))


def where(decision) -> str:
    return f"line {decision.rule.spec.span.line}" if decision.rule else decision.reason


FIRST_MATCH = """\
set default drop
accept proto tcp to port 22
drop   proto tcp from 10.0.0.1
accept proto tcp
reject proto udp to port 53
accept proto udp
"""


@pytest.mark.parametrize(
    ("packet", "verdict", "decided_by"),
    [
        (tcp(A, B, 1000, 22), "accept", "line 2"),  # earlier accept wins over the drop
        (tcp(A, B, 1000, 80), "drop", "line 3"),
        (tcp(B, A, 1000, 80), "accept", "line 4"),
        (udp(A, B, 1000, 53), "reject", "line 5"),
        (udp(A, B, 1000, 54), "accept", "line 6"),
        (ping(A, B), "drop", "default"),
        (tcp(A6, B6, 1000, 22), "accept", "line 2"),
    ],
)
def test_first_match_order(packet: bytes, verdict: str, decided_by: str) -> None:
    d = engine(FIRST_MATCH).handle(packet, Meta(), 1.0)
    assert (d.verdict, where(d)) == (verdict, decided_by)


def test_default_verdicts_and_options() -> None:
    assert engine("set default accept").handle(ping(A, B)).verdict == "accept"
    assert engine("set default drop").handle(ping(A, B)).verdict == "drop"
    d = engine("set default reject").handle(udp(A, B, 1, 2))
    assert d.verdict == "reject" and d.reply is not None


def test_malformed_is_counted_and_follows_set_malformed() -> None:
    e = engine("set malformed drop")
    truncated = tcp(A, B, 1, 2)[:30]  # IP header says 40 bytes, 30 captured
    d = e.handle(truncated)
    assert d.verdict == "drop" and d.reason.startswith("malformed:")
    assert sum(e.stats.malformed.values()) == 1
    e2 = engine("set malformed accept")
    assert e2.handle(b"\x45garbage").verdict == "accept"
    assert e2.handle(b"").verdict == "accept"
    assert sum(e2.stats.malformed.values()) == 2
    assert e2.stats.errors == 0


def test_engine_error_gives_on_error_verdict_and_is_counted() -> None:
    for mode in ("accept", "drop"):
        e = engine(f"set on-error {mode}\naccept proto tcp")

        def broken(*args: object) -> object:
            raise RuntimeError("bug")

        e.flows.open = broken  # type: ignore[method-assign]
        d = e.handle(tcp(A, B, 1, 2))
        assert d.verdict == mode and d.reason == "error"
        assert e.stats.errors == 1


def test_non_ip_frames_pass_and_are_counted() -> None:
    arp = bytes(6) + bytes(6) + b"\x08\x06" + bytes(28)
    e = engine("set default drop")
    d = e.handle(arp, Meta(linktype=LINKTYPE_ETHERNET))
    assert d.verdict == "accept" and d.reason == "not-ip"
    assert e.stats.not_ip == 1


def test_state_new_and_established_follow_replies() -> None:
    e = engine("accept state established\naccept proto tcp flags S/SA\nset default drop")
    assert (
        Playbook(e, now=1, step=0.1)
        >> tcp(A, B, 1000, 80, "S")
        << accept(line=2)
        >> tcp(A, B, 1000, 80, "A")
        << drop(reason="default")  # no reply yet
        >> tcp(B, A, 80, 1000, "SA")
        << accept(line=1)
        >> tcp(A, B, 1000, 80, "A")
        << accept(line=1)
    )


def test_tcp_flags_with_and_without_mask() -> None:
    e = engine(
        "drop proto tcp flags FPU/FSRPAU\n"
        "drop proto tcp flags S\n"  # exactly SYN
        "accept proto tcp flags S/S\n"  # SYN set, others ignored
        "set default reject"
    )
    assert (
        Playbook(e)
        >> tcp(A, B, 1, 1, "FPU")
        << drop(line=1)
        >> tcp(A, B, 1, 2, "S")
        << drop(line=2)
        >> tcp(A, B, 1, 3, "SE")
        << accept(line=3)  # SYN+ECE
        >> tcp(A, B, 1, 4, "A")
        << reject()
    )


def test_icmp_types_codes_and_family() -> None:
    e = engine(
        "accept proto icmp type echo-request\n"
        "accept proto icmpv6 type { echo-request, 135 }\n"
        "drop proto icmp type destination-unreachable code port-unreachable\n"
        "set default reject"
    )
    unreach = build_packet(PROTO_ICMP, A, B, icmp_type=3, icmp_code=3)
    host_unreach = build_packet(PROTO_ICMP, A, B, icmp_type=3, icmp_code=1)
    assert (
        Playbook(e)
        >> ping(A, B)
        << accept(line=1)
        >> ping(A6, B6)
        << accept(line=2)
        >> unreach
        << drop(line=3)
        >> host_unreach
        << reject()
    )


def test_addresses_prefixes_negation_and_tables() -> None:
    e = engine(
        "table t = { 192.0.2.0/24, 2001:db8:1::/48 }\n"
        "accept from @t\n"
        "drop from !10.0.0.0/8 to 10.0.0.0/8\n"
        "accept to 10.0.0.0/31\n"
        "set default reject"
    )
    assert (
        Playbook(e)
        >> ping("192.0.2.77", A)
        << accept(line=2)
        >> ping("2001:db8:1:5::1", B6)
        << accept(line=2)
        >> ping("172.16.0.1", A)
        << drop(line=3)
        >> ping("10.9.9.9", "10.0.0.1")
        << accept(line=4)
        >> ping("10.9.9.9", "10.0.0.2")
        << reject()
        # an IPv4-only negated rule never matches IPv6 (as in nftables)
        >> ping(A6, B6)
        << reject()
    )


def test_ports_ranges_sets_and_negation() -> None:
    e = engine(
        "accept proto tcp to port { 80, 443, 8000-8010 }\n"
        "drop proto udp from port !53\n"
        "set default reject"
    )
    story = Playbook(e)
    for port in (80, 443, 8000, 8005, 8010):
        story >> tcp(A, B, 1000, port) << accept(line=1)
    assert (
        story
        >> tcp(A, B, 1000, 8011)
        << reject()
        >> udp(A, B, 1000, 9)
        << drop(line=2)
        >> udp(A, B, 53, 9)
        << reject()
    )


def test_interfaces_and_direction() -> None:
    e = engine(
        "accept in on eth0 proto tcp\n"
        "drop out on wan* proto tcp\n"
        "accept on { lan0, lan1 }\n"
        "reject in\n"
        "set default drop"
    )
    p = tcp(A, B, 1, 2)
    assert (
        Playbook(e)
        >> packet(p, Meta(iif="eth0"))
        << accept(line=1)
        >> packet(p, Meta(iif="eth1", oif="wan7"))
        << drop(line=2)
        >> packet(p, Meta(oif="lan1"))
        << accept(line=3)
        >> packet(p, Meta(iif="eth9"))
        << reject(line=4)
        >> packet(p, Meta())
        << drop(reason="default")
    )


def test_length_fragment_and_payload() -> None:
    e = engine(
        "drop length > 1000\n"
        'drop proto tcp payload contains "evil" nocase\n'
        "drop proto udp payload contains |de ad be ef|\n"
        "accept fragment\n"
        "set default reject"
    )
    frag = bytearray(udp(A, B, 1, 2, b"y" * 16))
    frag[6:8] = (0x0002).to_bytes(2, "big")  # offset 16 bytes, a later fragment
    frag[10:12] = b"\0\0"
    frag[10:12] = checksum(bytes(frag[:20])).to_bytes(2, "big")
    assert (
        Playbook(e)
        >> udp(A, B, 1, 2, b"x" * 1000)
        << drop(line=1)
        >> tcp(A, B, 1, 2, "PA", payload=b"an EVIL one")
        << drop(line=2)
        >> udp(A, B, 1, 2, b"\x00\xde\xad\xbe\xef\x00")
        << drop(line=3)
        >> bytes(frag)
        << accept(line=4)
        >> udp(A, B, 1, 2, b"clean")
        << reject()
    )


def test_rate_limit_per_source_with_fake_clock() -> None:
    e = engine("accept proto icmp limit 5/s per src else drop\nset default reject")
    story = Playbook(e, now=10.0)
    for i in range(8):  # the burst defaults to the rate
        story >> ping(A, B, ident=i) << (accept() if i < 5 else drop())
    story >> ping("10.0.0.3", B) << accept()  # another source has its own bucket
    story >> wait(0.4)  # two tokens came back
    for i, verdict in enumerate((accept, accept, drop)):
        story >> ping(A, B, ident=i) << verdict()
    assert story


def test_rate_limit_without_else_falls_through() -> None:
    e = engine('accept proto udp limit 2/s\ndrop proto udp alert "over"\nset default accept')
    assert (
        Playbook(e, now=5.0)
        >> udp(A, B, 1, 0)
        << accept()
        >> udp(A, B, 1, 1)
        << accept()
        >> udp(A, B, 1, 2)
        << drop()
        << alert()
        >> udp(A, B, 1, 3)
        << drop()
        << alert()
    )


def test_alerts_log_and_match_rules_do_not_decide() -> None:
    e = engine(
        'match proto tcp to port 23 alert "telnet seen" sid 42 severity high\n'
        "match proto tcp log\n"
        "accept proto tcp to port 23\n"
        "set default drop"
    )
    d = e.handle(tcp(A, B, 1000, 23), now=3.0)
    assert d.verdict == "accept" and where(d) == "line 3"
    alert, log = d.effects
    assert isinstance(alert, Alert) and isinstance(log, LogRecord)
    assert (alert.signature_id, alert.signature, alert.severity, alert.action) == (
        42,
        "telnet seen",
        1,
        "allowed",
    )
    assert alert.src_ip == A and alert.dport == 23 and alert.time == 3.0
    d = e.handle(tcp(A, B, 1000, 24))
    assert d.verdict == "drop" and [type(x) for x in d.effects] == [LogRecord]
    blocked = engine('drop proto tcp alert "no"').handle(tcp(A, B, 1, 2))
    assert blocked.effects[0].action == "blocked"


def test_reject_sends_tcp_reset_or_icmp_unreachable() -> None:
    e = engine("reject proto tcp\nreject proto udp\nreject proto udp with icmp host-unreachable")
    d = e.handle(tcp(A, B, 1234, 80, TCP_SYN, seq=7000))
    rst = IP(d.reply)
    assert rst.src == B and rst.dst == A
    assert rst[TCP].flags & TCP_RST and rst[TCP].ack == 7001 and rst[TCP].dport == 1234
    d = e.handle(udp(A, B, 1234, 9))
    icmp = IP(d.reply)
    assert icmp[ICMP].type == 3 and icmp[ICMP].code == 3 and icmp.dst == A
    assert icmp[IPerror].src == A and icmp[UDPerror].dport == 9
    e2 = engine("reject proto udp with icmp host-unreachable")
    assert IP(e2.handle(udp(A, B, 1, 9)).reply)[ICMP].code == 1
    e3 = engine("reject proto tcp with icmp admin-prohibited")
    reply = IP(e3.handle(tcp(A, B, 1, 2)).reply)
    assert reply[ICMP].code == 13 and reply[TCPerror].dport == 2
    v6 = IPv6(engine("reject proto udp").handle(udp(A6, B6, 1, 9)).reply)
    assert v6.nh == 58 and v6.dst == A6


def test_rewrite_ttl_dscp_and_payload_keep_checksums_valid() -> None:
    e = engine(
        "rewrite proto udp to port 53 set ttl 9 set dscp ef\n"
        'rewrite proto tcp to port 80 replace "curl" with "CURL"\n'
        "set default accept"
    )
    d = e.handle(udp(A, B, 5000, 53, b"query"))
    assert d.verdict == "rewrite"
    pkt = IP(d.data)
    assert pkt.ttl == 9 and pkt.tos >> 2 == 46
    _assert_checksums(d.data)
    d = e.handle(tcp(A, B, 5000, 80, TCP_PSH | TCP_ACK, payload=b"User-Agent: curl/8"))
    assert IP(d.data)[TCP].payload.load == b"User-Agent: CURL/8"
    _assert_checksums(d.data)
    # nothing to replace: the packet is accepted unchanged
    d = e.handle(tcp(A, B, 5000, 80, TCP_PSH | TCP_ACK, payload=b"wget"))
    assert d.verdict == "accept" and d.data is None


def test_rewrite_destination_translates_replies_back() -> None:
    e = engine(
        "rewrite proto tcp to 10.0.5.5 port 80 set daddr 10.0.9.9 set dport 8080\n"
        "accept state established\n"
        "set default drop"
    )
    d = e.handle(tcp(A, C, 40000, 80, TCP_SYN), now=1)
    out = IP(d.data)
    assert (out.dst, out[TCP].dport, out.src, out[TCP].sport) == ("10.0.9.9", 8080, A, 40000)
    _assert_checksums(d.data)
    # the server answers from its real address; the client must see the address it called
    d = e.handle(tcp("10.0.9.9", A, 8080, 40000, TCP_SYN | TCP_ACK), now=1.1)
    assert d.verdict == "accept" and where(d) == "line 2"
    back = IP(d.data)
    assert (back.src, back[TCP].sport, back.dst, back[TCP].dport) == (C, 80, A, 40000)
    _assert_checksums(d.data)
    # later packets of the client are translated too
    d = e.handle(tcp(A, C, 40000, 80, TCP_ACK), now=1.2)
    assert IP(d.data).dst == "10.0.9.9"
    _assert_checksums(d.data)
    # a packet to the real server that is not a reply of the flow is not touched
    d = e.handle(tcp("10.0.9.9", A, 8080, 40001, TCP_SYN | TCP_ACK), now=1.3)
    assert d.verdict == "drop"
    # the translation ends with the flow
    e.drain(100.0)
    assert not e._nat_replies


def test_dynamic_table_membership_and_expiry() -> None:
    e = engine("table banned dynamic timeout 10s\ndrop from @banned\nset default accept")
    story = Playbook(e, now=1) >> ping(A, B) << accept()
    e.tables["banned"].add(decode_l3(ping(A, B)).src, now=2)  # type: ignore[union-attr]
    # the same flow is re-checked: dynamic conditions are per packet, not cached
    story >> packet(ping(A, B), at=3) << drop()
    story >> packet(ping(A, B), at=12.5) << accept()  # expired at 12
    assert story >> tick(at=13) << unblock(A, reason="expired")
    assert not e.tables["banned"].members


def test_reload_keeps_flows_and_table_members_and_applies_new_rules() -> None:
    e = engine("table banned dynamic\naccept proto tcp\nset default drop")
    e.handle(tcp(A, B, 1, 2), now=1)
    e.tables["banned"].add(decode_l3(ping(C, B)).src, now=1)  # type: ignore[union-attr]
    e.load(load_policy_text("table banned dynamic\ndrop proto tcp\nset default drop", "n.rules"))
    assert len(e.flows) == 1
    assert e.tables["banned"].members  # kept across the reload
    d = e.handle(tcp(A, B, 1, 2), now=2)  # same flow: its cached rule list is refreshed
    assert d.verdict == "drop" and d.rule.spec.span.file == "n.rules"


def test_flow_end_events_on_tick_and_drain() -> None:
    e = engine("set default accept")
    e.handle(udp(A, B, 1, 2), now=0)
    e.handle(udp(B, A, 2, 1), now=0.5)
    assert e.tick(1.0) == []
    ended = e.tick(10_000.0)
    assert len(ended) == 1
    flow = ended[0].flow
    assert (flow.pkts_fwd, flow.pkts_rev) == (1, 1)
    e.handle(tcp(A, B, 1, 2), now=10_001)
    assert len(e.drain(10_002)) == 1


def test_vlan_tagged_ethernet_frames_are_judged() -> None:
    from scapy.layers.l2 import Dot1Q, Ether

    frame = bytes(Ether() / Dot1Q(vlan=6) / IP(src=A, dst=B) / TCP(dport=23, flags="S"))
    e = engine("drop proto tcp to port 23\nset default accept")
    assert e.handle(frame, Meta(linktype=LINKTYPE_ETHERNET)).verdict == "drop"


def test_decisions_without_effects_are_shared_objects() -> None:
    """The fast path allocates no Decision for plain accept/drop rules."""
    e = engine("accept proto udp\nset default drop")
    d1 = e.handle(udp(A, B, 1, 2))
    d2 = e.handle(udp(A, B, 3, 4))
    assert d1 is d2


def _assert_checksums(data: bytes) -> None:
    """Recompute every checksum with scapy and compare with the ones in data."""
    pkt = IP(data)
    layers = [pkt]
    for layer in (TCP, UDP, ICMP):
        if layer in pkt:
            layers.append(pkt[layer])
    expected = [x.chksum for x in layers]
    for x in layers:
        del x.chksum
    rebuilt = IP(bytes(pkt))
    got = [rebuilt.chksum] + [rebuilt[type(x)].chksum for x in layers[1:]]
    assert expected == got


def test_refused_first_packet_leaves_no_connection() -> None:
    """As with conntrack: a SYN dropped by the policy creates no connection, so a reply seen
    later (in a capture) is not `established` and is judged on its own."""
    e = engine(
        "accept state established\n"
        "drop proto tcp to port 23\n"
        "accept proto tcp to port 80\n"
        "set default drop"
    )
    assert e.handle(tcp(A, B, 5000, 23, TCP_SYN), now=1).verdict == "drop"
    assert len(e.flows) == 0
    d = e.handle(tcp(B, A, 23, 5000, TCP_SYN | TCP_ACK), now=1.1)
    assert d.verdict == "drop" and d.reason == "default"
    # an accepted first packet does make a connection
    e.handle(tcp(A, B, 5001, 80, TCP_SYN), now=2)
    assert where(e.handle(tcp(B, A, 80, 5001, TCP_SYN | TCP_ACK), now=2.1)) == "line 1"
    # a later packet of an accepted connection that is dropped keeps the connection
    e2 = engine('drop proto tcp payload contains "x"\naccept proto tcp')
    e2.handle(tcp(A, B, 7, 8, TCP_SYN), now=1)
    e2.handle(tcp(A, B, 7, 8, TCP_ACK, payload=b"x"), now=2)
    assert len(e2.flows) == 1


def test_reject_with_icmpx_answers_each_family_in_its_own_numbering() -> None:
    e = engine("reject proto udp with icmpx admin-prohibited")
    v4 = IP(e.handle(udp(A, B, 1, 9)).reply)
    assert (v4[ICMP].type, v4[ICMP].code) == (3, 13)
    v6 = IPv6(e.handle(udp(A6, B6, 1, 9)).reply)
    assert v6.nh == 58 and (v6.payload.type, v6.payload.code) == (1, 1)
    # `with icmp` answers IPv4 only (as in nftables): IPv6 falls through to the default
    e4 = engine("reject proto udp with icmp port-unreachable\nset default accept")
    assert e4.handle(udp(A6, B6, 1, 9)).verdict == "accept"
    assert e4.handle(udp(A, B, 1, 9)).verdict == "reject"


def test_out_of_range_values_are_refused() -> None:
    from ips.policy.diagnostics import PolicyError

    for text in (
        "drop sid 0",
        "drop sid 4294967296",
        "table t dynamic timeout 0s",
        "detect portscan within 0s",
    ):
        with pytest.raises(PolicyError):
            load_policy_text(text, "t.rules")


def test_blocked_sources_are_dropped_before_any_rule() -> None:
    """As the kernel does inline (its first rule drops the block set): a blocked source is
    dropped even when an earlier rule would accept it, in replay and tap too."""
    e = engine("table banned dynamic timeout 1h\naccept proto icmp\ndrop from @banned")
    assert e.handle(ping(A, B), now=1).verdict == "accept"
    e.tables["banned"].add(decode_l3(ping(A, B)).src, now=1, ttl=10)  # type: ignore[union-attr]
    d = e.handle(ping(A, B), now=2)
    assert d.verdict == "drop" and d.reason == "blocked"
    assert e.handle(ping(A, B), now=12).verdict == "accept"  # the block expired
    assert e.handle(ping(B, A), now=2).verdict == "accept"  # only the source is blocked


def test_rules_only_for_blocked_sources_are_left_out_of_the_per_packet_search() -> None:
    """`drop from @banned` can never match what the block check let through, so it costs no
    lookup per packet; a rule that also names addresses of its own stays."""
    text = (
        "table banned dynamic timeout 1h\ndrop from @banned\n"
        f"drop from {{ @banned, {C} }}\naccept proto icmp\n"
    )
    e = engine(text)
    assert e.handle(ping(A, B), now=1).verdict == "accept"
    assert e.handle(ping(C, B), now=1).verdict == "drop"
    flow = next(f for f in e.flows.flows() if f.pkts_fwd == 1 and f.replied is False)
    lines = [r.spec.span.line for r in flow.cache_fwd[3]]  # type: ignore[index]
    assert 2 not in lines and 3 in lines
    e.tables["banned"].add(decode_l3(ping(A, B)).src, now=1, ttl=10)  # type: ignore[union-attr]
    assert e.handle(ping(A, B), now=2).reason == "blocked"


def test_a_stopping_worker_ends_the_open_flows_within_its_budget(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """At stop every flow still open ends (reason `shutdown`) and its record goes to the
    sinks — within the time budget, so a stop is never held up by a full table."""
    from ips.core.events import FlowEnd
    from ips.daemon.worker import SHUTDOWN_RECORDS_CHUNK, end_open_flows

    def engine_with(n: int) -> Engine:
        eng = Engine(load_policy_text("set default accept\n", "t.rules"))
        for i in range(n):
            eng.handle(build_packet(17, "10.0.0.1", "10.0.0.2", 10000 + i, 53), now=100.0)
        return eng

    class Sinks:
        def __init__(self) -> None:
            self.got: list[object] = []

        def effects(self, events: list[object]) -> None:
            self.got += events

    eng, sinks = engine_with(3000), Sinks()
    assert end_open_flows(eng, sinks, 200.0, 3.0) == 3000
    assert len(sinks.got) == 3000 and len(eng.flows) == 0
    assert all(
        e.__class__ is FlowEnd and e.reason == "shutdown" and e.time == 200.0 for e in sinks.got
    )
    assert len({e.flow.flow_id for e in sinks.got}) == 3000  # type: ignore[attr-defined]
    # A clock that passes the budget after the first chunk: the rest are not written, and
    # the journal says how many.
    ticks = iter([0.0, 0.0, 5.0, 5.0, 5.0])
    eng, sinks = engine_with(3000), Sinks()
    assert end_open_flows(eng, sinks, 200.0, 3.0, clock=lambda: next(ticks)) == (
        SHUTDOWN_RECORDS_CHUNK
    )
    assert len(sinks.got) == SHUTDOWN_RECORDS_CHUNK
    assert f"{3000 - SHUTDOWN_RECORDS_CHUNK} of 3000 flow records not written" in (
        capsys.readouterr().err
    )
