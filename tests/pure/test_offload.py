"""Flow offload in the engine: which accepted flows are handed to the kernel, and when."""

from __future__ import annotations

import pytest

from ips.core.build import build_packet
from ips.core.decision import OFFLOAD_BARE_ACKS, OFFLOAD_FLOW, OFFLOAD_HANDSHAKE_ACK
from ips.core.packet import PROTO_ICMP, PROTO_TCP, PROTO_UDP
from ips.engine import Engine
from ips.engine.offload import REOFFLOAD_AFTER
from ips.policy.resolve import load_policy_text

C, S = "10.0.0.1", "10.0.0.2"
SYN, ACK, PSH, SYNACK = 0x02, 0x10, 0x08, 0x12
# Decision.offload of tcp_exchange's packets when the flow may be offloaded: the SYN+ACK lets
# the kernel pass the handshake's bare ACK, the first data offloads the flow, and a packet
# that still reaches the engine after that is offloaded again.
FLOW, HS_ACK, BARE_ACKS = OFFLOAD_FLOW, OFFLOAD_HANDSHAKE_ACK, OFFLOAD_BARE_ACKS
EXCHANGE_OFFLOADED = [0, HS_ACK, 0, FLOW, FLOW, FLOW]


def engine(text: str) -> Engine:
    """An engine for the offload mechanics. Application parsing is off here: while the
    inspector reads a flow's first bytes, offload waits for it (tested on its own below)."""
    return Engine(load_policy_text("set app-layer off\n" + text, "t.rules"))


def inspecting_engine(text: str, limit: int = 4096) -> Engine:
    return Engine(load_policy_text(f"set app-stream-bytes {limit}\n" + text, "t.rules"))


def tcp_exchange(e: Engine, dport: int = 5201, now: float = 1.0) -> list[bool]:
    """A connection: handshake, data each way, more data. Returns Decision.offload of each
    (a packet after the offloading one reaches the engine only when the kernel sent it back:
    it is offloaded again)."""
    packets = [
        build_packet(PROTO_TCP, C, S, 40000, dport, flags=SYN),
        build_packet(PROTO_TCP, S, C, dport, 40000, flags=SYNACK),
        build_packet(PROTO_TCP, C, S, 40000, dport, flags=ACK),
        build_packet(
            PROTO_TCP, C, S, 40000, dport, flags=ACK | PSH, payload=b"hello from the client"
        ),
        build_packet(
            PROTO_TCP, S, C, dport, 40000, flags=ACK | PSH, payload=b"world from the server"
        ),
        build_packet(
            PROTO_TCP, C, S, 40000, dport, flags=ACK | PSH, payload=b"more from the client"
        ),
    ]
    out = []
    for i, p in enumerate(packets):
        d = e.handle(p, now=now + i * 0.01)
        assert d.verdict in ("accept", "rewrite"), (i, d)
        out.append(d.offload)
    return out


HEAD = """
table banned dynamic timeout 1h
drop from @banned
drop proto tcp flags F/FSRPAU alert "FIN scan"
"""
BASE = HEAD + "accept state established\n"


def test_tcp_flow_is_offloaded_at_its_first_data_packet_once() -> None:
    e = engine(BASE + "accept proto tcp to port 5201\nset default drop\n")
    assert tcp_exchange(e) == EXCHANGE_OFFLOADED
    assert e.stats.offloaded == 1
    flow = next(iter(e.flows.flows()))
    assert flow.offloaded


@pytest.mark.parametrize(
    "rule",
    [
        'drop proto tcp to port 5201 payload contains "zz"\naccept proto tcp',  # payload
        "accept proto tcp to port 5201 limit 1000/s per src",  # a rate
        "accept proto tcp to port 5201 inspect",  # the operator's opt-out
        "accept proto tcp to port 5201 alert",  # an alert on every packet
        "accept proto tcp to port 5201 log",
        "match proto tcp to port 5201 log\naccept proto tcp to port 5201",
        "rewrite proto tcp to port 5201 set ttl 9\naccept proto tcp to port 5201",
        "table watch dynamic\ndrop to @watch\naccept proto tcp to port 5201",
        'drop proto tcp from port 5201 payload contains "secret"\naccept proto tcp',  # replies
    ],
)
def test_flows_a_rule_must_keep_seeing_are_not_offloaded(rule: str) -> None:
    e = engine(HEAD + rule + "\naccept state established\nset default drop\n")
    assert not any(tcp_exchange(e))
    assert e.stats.offloaded == 0


@pytest.mark.parametrize(
    "rule",
    [
        "accept proto tcp to port 5201 limit 1000/s per src",
        'drop proto tcp payload contains "zz"\naccept proto tcp',
    ],
)
def test_rules_after_accept_state_established_do_not_prevent_offload(rule: str) -> None:
    """No later packet of a replied flow gets past `accept state established`."""
    e = engine(BASE + rule + "\nset default drop\n")
    assert tcp_exchange(e) == EXCHANGE_OFFLOADED


def test_rules_for_new_connections_only_do_not_prevent_offload() -> None:
    rules = 'accept proto tcp to port 5201 state new payload contains "x"\n'
    e = engine(BASE + rules + "accept proto tcp to port 5201\n")
    assert any(tcp_exchange(e))


def test_set_offload_off_and_default_accept() -> None:
    assert not any(tcp_exchange(engine("set offload off\nset default accept\n")))
    assert tcp_exchange(engine("set default accept\n")) == EXCHANGE_OFFLOADED


def test_udp_offloaded_once_answered() -> None:
    e = engine("set default accept\n")
    first = e.handle(build_packet(PROTO_UDP, C, S, 5000, 53, payload=b"q"), now=1.0)
    reply = e.handle(build_packet(PROTO_UDP, S, C, 53, 5000, payload=b"a"), now=1.1)
    assert (first.offload, reply.offload) == (False, True)


def ping(e: Engine, count: int = 3, icmp_id: int = 7, now: float = 2.0) -> list[bool]:
    """Echo requests and their replies on one echo id: Decision.offload of each."""
    out = []
    for i in range(count):
        for src, dst, itype in ((C, S, 8), (S, C, 0)):
            d = e.handle(
                build_packet(PROTO_ICMP, src, dst, icmp_type=itype, icmp_id=icmp_id), now=now + i
            )
            assert d.verdict == "accept", d
            out.append(d.offload)
    return out


def test_a_ping_is_offloaded_at_its_first_reply() -> None:
    assert ping(engine("set default accept\n")) == [False, True, True, True, True, True]


def test_a_ping_limit_after_state_established_does_not_prevent_offload() -> None:
    """gateway.rules: `accept state established` first, then the echo-request limit. The limit
    decides only a ping's first request (the later ones are established), so offload is safe."""
    rules = "accept state established\naccept proto icmp type echo-request limit 20/s per src\n"
    assert ping(engine(rules + "set default drop\n"))[1]
    limit_first = "accept proto icmp type echo-request limit 20/s per src\n" + rules
    assert not any(ping(engine(limit_first + "set default drop\n")))


def test_icmp_other_than_echo_is_never_offloaded() -> None:
    e = engine("set default accept\n")
    for i in range(3):
        for src, dst in ((C, S), (S, C)):
            d = e.handle(build_packet(PROTO_ICMP, src, dst, icmp_type=13), now=1.0 + i)
            assert not d.offload  # timestamp requests and replies


def test_a_new_policy_re_decides_offloaded_flows() -> None:
    """After apply the flow's packets come back (the kernel's offload mark of the old
    policy no longer matches): the new policy judges them, and offloads them again if it can."""
    e = engine(BASE + "accept proto tcp to port 5201\nset default drop\n")
    tcp_exchange(e)
    e.load(load_policy_text(BASE + "accept proto tcp to port 5201\n", "t.rules"))
    flow = next(iter(e.flows.flows()))
    assert flow.offloaded  # the engine's record; the kernel side is the daemon's
    e.load(load_policy_text('drop proto tcp to port 5201 payload contains "more"\n', "t.rules"))
    d = e.handle(
        build_packet(
            PROTO_TCP, C, S, 40000, 5201, flags=ACK | PSH, payload=b"more from the client"
        ),
        now=5.0,
    )
    assert d.verdict == "drop"


def test_flow_record_of_an_offloaded_flow_says_bypass() -> None:
    from ips.core.events import FlowEnd
    from ips.sinks.eve import flow_record

    e = engine("set default accept\n")
    tcp_exchange(e)
    flow = next(iter(e.flows.flows()))
    record = flow_record(FlowEnd(flow, "timeout", 100.0))
    assert record["flow"]["bypass"] == "capture"  # type: ignore[index]
    plain = engine("set offload off\nset default accept\n")
    tcp_exchange(plain)
    record = flow_record(FlowEnd(next(iter(plain.flows.flows())), "timeout", 100.0))
    assert "bypass" not in record["flow"]  # type: ignore[operator]


def test_a_port_reused_after_an_offloaded_connection_is_a_new_flow_offloaded_again() -> None:
    """The engine never sees an offloaded connection's end; when the client reuses the port,
    the kernel (a new conntrack entry) sends the SYN to us: a new flow, offloaded in its turn
    (before, it stayed in the old flow, and every packet of it went through the queue)."""
    e = engine(BASE + "accept proto tcp to port 5201\nset default drop\n")
    assert tcp_exchange(e) == EXCHANGE_OFFLOADED
    first = next(iter(e.flows.flows()))
    assert tcp_exchange(e, now=30.0) == EXCHANGE_OFFLOADED
    second = next(iter(e.flows.flows()))
    assert second is not first and second.flow_id != first.flow_id
    assert e.stats.offloaded == 2


def test_packets_of_an_offloaded_flow_that_come_back_are_offloaded_again() -> None:
    """After an apply (a new generation) the kernel sends the flow to us again: offloaded
    again once it has been back REOFFLOAD_AFTER seconds (the packets the swap queued are
    through by then: the kernel passing the next ones at once would reorder the stream),
    counted once."""
    e = engine(BASE + "accept proto tcp to port 5201\nset default drop\n")
    tcp_exchange(e)
    e.load(load_policy_text(BASE + "accept proto tcp to port 5201\n", "t.rules"))

    def data(now: float, src: str = C) -> int:
        sport, dport, dst = (40000, 5201, S) if src == C else (5201, 40000, C)
        d = e.handle(
            build_packet(
                PROTO_TCP, src, dst, sport, dport, flags=ACK | PSH, payload=b"again from the client"
            ),
            now=now,
        )
        assert d.verdict == "accept"
        return d.offload

    assert data(5.0, S) == 0 and data(5.1) == 0  # back, both directions judged anew
    assert data(5.0 + REOFFLOAD_AFTER / 2) == 0
    assert data(5.1 + REOFFLOAD_AFTER) == FLOW
    assert e.stats.offloaded == 1


# ---- offload waits while the inspector reads (ips/engine/offload.py app_reading) ----------


def test_offload_waits_until_the_inspector_has_named_the_protocol() -> None:
    # The first data packet is too short to tell a protocol from; the inspector keeps
    # reading, so the flow does not go to the kernel yet: only the handshake's bare ACKs
    # do (they carry nothing to read), and the packet after them comes to the queue.
    e = inspecting_engine("set default accept\n")
    seq_c, seq_s = 100, 900
    out = [
        e.handle(build_packet(PROTO_TCP, C, S, 40000, 5201, flags=SYN, seq=seq_c), now=1.0),
        e.handle(
            build_packet(PROTO_TCP, S, C, 5201, 40000, flags=SYNACK, seq=seq_s, ack=seq_c + 1),
            now=1.0,
        ),
        e.handle(
            build_packet(PROTO_TCP, C, S, 40000, 5201, flags=ACK | PSH, seq=seq_c + 1,
                         ack=seq_s + 1, payload=b"hi"),
            now=1.1,
        ),
        e.handle(
            build_packet(PROTO_TCP, S, C, 5201, 40000, flags=ACK | PSH, seq=seq_s + 1,
                         ack=seq_c + 3, payload=b"yo"),
            now=1.1,
        ),
    ]  # fmt: skip
    assert [d.offload for d in out] == [0, BARE_ACKS, 0, 0]
    flow = next(iter(e.flows.flows()))
    assert flow.app_state is not None and not flow.offloaded
    # More of the client's stream: not a protocol ipsctl knows; inspection over, offload.
    more = build_packet(
        PROTO_TCP, C, S, 40000, 5201, flags=ACK | PSH, seq=seq_c + 3, ack=seq_s + 3,
        payload=b"\x00\x01 a binary blob here",
    )  # fmt: skip
    assert e.handle(more, now=2.0).offload == FLOW
    assert flow.app_state is None and flow.app_proto == "unknown"


def test_an_http_flow_stays_until_the_response_is_read() -> None:
    e = inspecting_engine("set default accept\n")
    request = b"GET / HTTP/1.1\r\nHost: ok.lab\r\n\r\n"
    response = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
    seq_c, seq_s = 100, 900
    out = [
        e.handle(build_packet(PROTO_TCP, C, S, 40000, 80, flags=SYN, seq=seq_c), now=1.0),
        e.handle(
            build_packet(PROTO_TCP, S, C, 80, 40000, flags=SYNACK, seq=seq_s, ack=seq_c + 1),
            now=1.0,
        ),
        e.handle(
            build_packet(
                PROTO_TCP, C, S, 40000, 80, flags=ACK | PSH, seq=seq_c + 1, ack=seq_s + 1,
                payload=request,
            ),
            now=1.1,
        ),
    ]  # fmt: skip
    assert [d.offload for d in out] == [0, BARE_ACKS, 0]  # the response is still to be read
    answer = build_packet(
        PROTO_TCP, S, C, 80, 40000, flags=ACK | PSH, seq=seq_s + 1, ack=seq_c + 1 + len(request),
        payload=response,
    )  # fmt: skip
    decision = e.handle(answer, now=1.2)
    # The server's side was seen, so the event has the status (offloaded at the request,
    # the flow would have given an event without it).
    http = [ev for ev in decision.effects if getattr(ev, "event_type", "") == "http"]
    assert http and http[0].body["status"] == 200  # type: ignore[attr-defined]


def test_the_wait_is_bounded_and_what_was_read_comes_out_at_the_next_tick() -> None:
    # An HTTP upload whose server says nothing: past APP_OFFLOAD_WAIT × app-stream-bytes of
    # flow the flow is offloaded anyway, and the request's event is handed out at the tick.
    e = inspecting_engine("set default accept\n", limit=256)
    seq_c, seq_s = 100, 900
    e.handle(build_packet(PROTO_TCP, C, S, 40000, 80, flags=SYN, seq=seq_c), now=1.0)
    e.handle(
        build_packet(PROTO_TCP, S, C, 80, 40000, flags=SYNACK, seq=seq_s, ack=seq_c + 1), now=1.0
    )
    head = b"POST /up HTTP/1.1\r\nHost: ok.lab\r\nContent-Length: 100000\r\n\r\n"
    seq = seq_c + 1
    offloads = []
    for i in range(12):
        chunk = head if i == 0 else b"x" * 200
        pkt = build_packet(
            PROTO_TCP, C, S, 40000, 80, flags=ACK | PSH, seq=seq, ack=seq_s + 1, payload=chunk
        )
        seq += len(chunk)
        offloads.append(e.handle(pkt, now=1.1 + i / 100).offload)
    assert FLOW in offloads and offloads[0] == 0
    flow = next(iter(e.flows.flows()))
    assert flow.offloaded and flow.app_state is None
    events = e.tick(2.0)
    http = [ev for ev in events if getattr(ev, "event_type", "") == "http"]
    assert [h.body["url"] for h in http] == ["/up"]  # type: ignore[attr-defined]
