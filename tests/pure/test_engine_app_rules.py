"""The engine with application-layer rules (issue 20, items 5 and 6): a terminal rule whose L7
clause is pending accepts the packet ("app-pending", never offloaded) unless the rules after
it decide the same anyway; the rule decides once flow.app says; offload waits for the fields;
a reject answers a DNS query with NXDOMAIN or REFUSED and resets a TCP connection both ways.

Every engine here runs the real inspector (ips/app/inspect.py): DNS queries are real
datagrams, the TLS connections carry a real ClientHello (tests/pure/test_app_tls.py's
builder). tests/pure/test_engine_app_real.py has the rest of the real-bytes cases (a hello
over two segments, HTTP, QUIC, SSH, fingerprints, the events a refusal writes); one test
below replaces flow.app by an object that fails when read, which no bytes could do."""

from __future__ import annotations

import struct

import pytest
from packets import tcp, udp
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP

from ips.app.dns import DnsMessage, parse_message
from ips.core.craft import DNS_NXDOMAIN, DNS_REFUSED, dns_refusal_for, tcp_reset_to_peer
from ips.core.decision import OFFLOAD_BARE_ACKS, OFFLOAD_FLOW, Decision
from ips.core.decode import decode_l3
from ips.core.events import Alert
from ips.core.flow import Flow
from ips.core.packet import Packet
from ips.engine import Engine
from ips.engine.engine import APP_PENDING
from ips.io.nfqnl import QueuedPacket
from ips.io.nfqueue import QueueWorker
from ips.policy.resolve import load_policy_text
from tests.pure.test_app_tls import chrome_like_extensions, client_hello_message, records

C, S = "10.10.1.20", "10.10.2.10"


def real_engine(text: str) -> Engine:
    """An Engine with its own inspector: flow.app is what the bytes said."""
    return Engine(load_policy_text(text))


def only_flow(engine: Engine) -> Flow:
    (flow,) = engine.flows.flows()
    return flow


TLS_GATE = """\
set default drop
{action} tls sni {{ "blocked.lab", "*.bad.lab" }} to port 443
accept state established
accept proto tcp to port 443
"""


def handshake(engine: Engine) -> list[Decision]:
    """SYN, SYN+ACK, ACK of a connection from C to S:443."""
    return [
        engine.handle(tcp(C, S, 40000, 443, flags="S", seq=100), now=1.0),
        engine.handle(tcp(S, C, 443, 40000, flags="SA", seq=900, ack=101), now=1.1),
        engine.handle(tcp(C, S, 40000, 443, flags="A", seq=101, ack=901), now=1.2),
    ]


def hello_bytes(sni: str) -> bytes:
    """A real ClientHello (one segment: the engine's inspector reads it)."""
    return records(client_hello_message(chrome_like_extensions(sni, pq=False)))


def client_hello(engine: Engine, sni: str) -> Decision:
    hello = tcp(C, S, 40000, 443, flags="PA", seq=101, ack=901, payload=hello_bytes(sni))
    return engine.handle(hello, now=1.3)


def test_pending_accepts_without_offload_then_the_sni_drops() -> None:
    engine = real_engine(TLS_GATE.format(action="drop"))
    syn, syn_ack, ack = handshake(engine)
    assert (syn.verdict, syn.reason, syn.offload) == ("accept", APP_PENDING, 0)
    # The flow waits for the fields; only the handshake's bare ACKs may pass in the kernel,
    # and the packet after them comes to the queue.
    assert syn_ack.verdict == "accept" and syn_ack.offload == OFFLOAD_BARE_ACKS
    assert (ack.verdict, ack.reason, ack.offload) == ("accept", APP_PENDING, 0)
    assert engine.stats.app_pending == 2
    decided = client_hello(engine, "www.bad.lab")
    assert decided.verdict == "drop" and decided.rule is not None
    assert decided.rule.spec.span.line == 2


def test_a_name_not_blocked_goes_on_and_offloads_once_known() -> None:
    engine = real_engine("set app-stream-bytes 64\n" + TLS_GATE.format(action="drop"))
    handshake(engine)
    hello = client_hello(engine, "ok.lab")
    assert hello.verdict == "accept" and hello.rule is not None
    assert hello.rule.spec.span.line == 4  # accept state established (after the `set`)
    # The fields the rules read are final, but the inspector still reads the server's side
    # (its events want it), so offload waits for that, within its bound: here a small
    # app-stream-bytes, which the hello has already passed.
    assert hello.offload == OFFLOAD_FLOW


def test_a_pending_drop_the_rest_would_drop_anyway_is_decided_at_once() -> None:
    """A port the policy drops stays dropped before any SNI is known (a scan sees nothing)."""
    engine = real_engine(TLS_GATE.format(action="drop").replace(" to port 443\n", "\n", 1))
    syn = engine.handle(tcp(C, S, 40001, 8443, flags="S"), now=1.0)
    assert syn.verdict == "drop" and syn.reason == "default"
    assert engine.stats.app_pending == 0
    assert not engine.flows.flows()  # a refused first packet leaves no connection


def test_a_pending_match_rule_is_skipped_and_alerts_once_known() -> None:
    engine = real_engine('match tls sni "*.bad.lab" alert "bad name"\naccept proto tcp to port 443')
    syn = engine.handle(tcp(C, S, 40000, 443, flags="S", seq=100), now=1.0)
    assert syn.verdict == "accept" and not syn.effects and syn.reason != APP_PENDING
    hello = tcp(C, S, 40000, 443, flags="PA", seq=101, payload=hello_bytes("x.bad.lab"))
    data = engine.handle(hello, now=1.1)
    assert [e.signature for e in data.effects if isinstance(e, Alert)] == ["bad name"]


def test_app_layer_off_makes_l7_rules_final_false() -> None:
    engine = Engine(load_policy_text("set app-layer off\n" + TLS_GATE.format(action="drop")))
    syn = engine.handle(tcp(C, S, 40000, 443, flags="S"), now=1.0)
    assert only_flow(engine).app is None  # application parsing off: nothing will be known
    assert syn.verdict == "accept" and syn.reason != APP_PENDING


def test_flows_without_l7_rules_never_read_the_app_fields() -> None:
    class Untouchable:
        def __getattr__(self, name: str) -> object:
            raise AssertionError(f"read {name}")

    engine = Engine(
        load_policy_text("accept state established\naccept proto tcp to port 443 flags S")
    )
    engine.handle(tcp(C, S, 40000, 443, flags="S"), now=1.0)
    only_flow(engine).app = Untouchable()  # type: ignore[assignment]
    decided = engine.handle(tcp(S, C, 443, 40000, flags="SA"), now=1.1)
    assert decided.verdict == "accept" and engine.stats.errors == 0


# ---- reject ------------------------------------------------------------------------------------


def test_reject_resets_both_ways_with_the_right_numbers() -> None:
    engine = real_engine(TLS_GATE.format(action="reject"))
    handshake(engine)
    decided = client_hello(engine, "blocked.lab")  # seq 101, ack 901
    assert decided.verdict == "reject"
    assert decided.reply is not None and decided.peer_reply is not None
    to_client = IP(decided.reply)
    assert (to_client.src, to_client.dst) == (S, C)
    assert (to_client[TCP].sport, to_client[TCP].dport) == (443, 40000)
    assert to_client[TCP].flags == "R" and to_client[TCP].seq == 901
    to_server = IP(decided.peer_reply)
    assert (to_server.src, to_server.dst) == (C, S)
    assert (to_server[TCP].sport, to_server[TCP].dport) == (40000, 443)
    assert to_server[TCP].flags == "RA"
    assert (to_server[TCP].seq, to_server[TCP].ack) == (101, 901)
    for raw in (decided.reply, decided.peer_reply):
        assert_checksums_right(raw)


def test_reject_of_a_rule_without_l7_clauses_sends_one_reset() -> None:
    engine = Engine(load_policy_text("reject proto tcp to port 443"))
    decided = engine.handle(tcp(C, S, 40000, 443, flags="S"), now=1.0)
    assert decided.reply is not None and decided.peer_reply is None


def assert_checksums_right(raw: bytes) -> None:
    """scapy recomputes every checksum of a copy with them cleared: they must be the same."""
    parsed = IP(raw)
    fresh = parsed.copy()
    del fresh.chksum
    layer = fresh[TCP] if TCP in fresh else fresh[UDP]
    del layer.chksum
    assert bytes(fresh) == raw


DNS_GATE = """\
{option}
reject dns query {{ "blocked.lab", "*.bad.lab" }} to port 53
accept proto udp to port 53
"""


def dns_query(name: str, ident: int = 0x1234, rd: int = 1) -> bytes:
    query = bytes(DNS(id=ident, rd=rd, qd=DNSQR(qname=name, qtype="A")))
    return udp(C, S, 53000, 53, payload=query)


@pytest.mark.parametrize(
    ("option", "rcode"), [("", DNS_NXDOMAIN), ("set dns-reject refused", DNS_REFUSED)]
)
def test_a_rejected_dns_query_gets_an_answer_from_the_server(option: str, rcode: int) -> None:
    engine = real_engine(DNS_GATE.format(option=option))
    decided = engine.handle(dns_query("www.bad.lab"), now=1.0)
    assert decided.verdict == "reject" and decided.peer_reply is None
    assert decided.reply is not None
    answer = IP(decided.reply)
    assert (answer.src, answer.dst) == (S, C)
    assert (answer[UDP].sport, answer[UDP].dport) == (53, 53000)
    dns = answer[DNS]
    assert (dns.id, dns.qr, dns.rcode, dns.rd, dns.ra) == (0x1234, 1, rcode, 1, 1)
    assert dns.qd[0].qname == b"www.bad.lab."
    assert dns.ancount == 0
    assert_checksums_right(decided.reply)
    # and the project's own parser reads it back the same
    pkt = decode_l3(decided.reply)
    assert isinstance(pkt, Packet)
    msg = parse_message(pkt.data, pkt.payload_offset, pkt.length)
    assert isinstance(msg, DnsMessage)
    assert msg.qr and msg.rcode == rcode and msg.id == 0x1234
    assert [q.name for q in msg.questions] == ["www.bad.lab"]
    good = engine.handle(dns_query("ok.lab"), now=1.1)
    assert good.verdict == "accept"


def test_the_dns_answer_copies_rd_into_ra_and_refuses_non_queries() -> None:
    pkt = decode_l3(dns_query("x.bad.lab", rd=0))
    assert isinstance(pkt, Packet)
    answer = dns_refusal_for(pkt)
    assert answer is not None
    dns = IP(answer)[DNS]
    assert (dns.rd, dns.ra, dns.rcode) == (0, 0, DNS_NXDOMAIN)
    response = bytes(DNS(id=1, qr=1, qd=DNSQR(qname="x.lab")))
    assert dns_refusal_for(decode_l3(udp(S, C, 53, 53000, payload=response))) is None  # type: ignore[arg-type]
    assert dns_refusal_for(decode_l3(udp(C, S, 53000, 53, payload=b"\x00" * 5))) is None  # type: ignore[arg-type]
    truncated = bytes(DNS(id=1, qd=DNSQR(qname="x.lab")))[:-3]
    assert dns_refusal_for(decode_l3(udp(C, S, 53000, 53, payload=truncated))) is None  # type: ignore[arg-type]


def test_dns_query_rules_keep_dns_flows_with_the_engine() -> None:
    engine = real_engine(DNS_GATE.format(option=""))
    engine.handle(dns_query("ok.lab"), now=1.0)
    answer = udp(S, C, 53, 53000, payload=bytes(DNS(id=0x1234, qr=1, qd=DNSQR(qname="ok.lab"))))
    assert engine.handle(answer, now=1.1).offload == 0
    again = engine.handle(dns_query("ok.lab", ident=7), now=1.2)
    assert again.verdict == "accept" and again.offload == 0


def test_peer_reset_of_ipv6() -> None:
    pkt = decode_l3(tcp("2001:db8::1", "2001:db8::2", 1000, 443, flags="PA", seq=5, ack=9))
    assert isinstance(pkt, Packet)
    raw = tcp_reset_to_peer(pkt)
    assert raw is not None
    seq, ack = struct.unpack_from("!II", raw, 40 + 4)
    assert (seq, ack) == (5, 9) and raw[8:24] == pkt.src and raw[24:40] == pkt.dst


def test_the_queue_worker_sends_both_resets() -> None:
    class OneReject:
        class policy:
            on_error = "accept"

        def handle(self, data: bytes, meta: object, now: float) -> Decision:
            return Decision("reject", reply=b"to-client", peer_reply=b"to-server")

    sent: list[bytes] = []
    worker = QueueWorker(0, OneReject())  # type: ignore[arg-type]
    worker.replies.send = sent.append  # type: ignore[method-assign]
    worker._on_queued(QueuedPacket(1, b"x"))
    assert sent == [b"to-client", b"to-server"]
