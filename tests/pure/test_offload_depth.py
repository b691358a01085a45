"""Inspection depth (issue 24, item 5): `payload contains` reads the first bytes of each
direction of a flow (`set payload-depth`, a rule's `depth`), as Suricata's stream depth; a
flow whose candidate rules are all past their depth, or ruled out by the flow's application
protocol, is offloaded. With the shipped gateway policy an opaque stream to port 443 (iperf3)
goes to the kernel after a bounded number of packets, and a TLS flow after its handshake."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from packets import tcp, udp
from scapy.layers.dns import DNS, DNSQR

from ips.core.decision import OFFLOAD_FLOW, Decision
from ips.core.decode import decode_l3
from ips.core.packet import Packet
from ips.engine import Engine
from ips.policy.diagnostics import PolicyError
from ips.policy.explain import AppContext, explain
from ips.policy.model import DEFAULT_PAYLOAD_DEPTH, UNLIMITED_DEPTH
from ips.policy.resolve import load_policy, load_policy_text
from tests.pure.test_app_tls import chrome_like_extensions, client_hello_message, records
from tests.pure.test_policy_fastparse import compare_line

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = ROOT / "policies" / "gateway.rules"
C, S = "10.10.1.20", "10.10.2.10"  # a LAN client and a server of the gateway's DMZ
SEGMENT = 1400  # payload bytes of each data segment (an Ethernet MSS, about)


class Connection:
    """One TCP connection through an engine, with consistent sequence numbers."""

    def __init__(self, engine: Engine, dport: int, sport: int = 40000) -> None:
        self.engine, self.dport, self.sport = engine, dport, sport
        self.seq_c, self.seq_s = 101, 901
        self.now = 1.0
        self.decisions: list[Decision] = []
        self.send(b"", flags="S", seq=100)
        self.reply(b"", flags="SA", seq=900)
        self.send(b"", flags="A")

    def _handle(self, data: bytes) -> Decision:
        self.now += 0.001
        decision = self.engine.handle(data, now=self.now)
        self.decisions.append(decision)
        return decision

    def send(self, payload: bytes, flags: str = "PA", seq: int | None = None) -> Decision:
        """A packet from the client (the flow's forward direction)."""
        pkt = tcp(C, S, self.sport, self.dport, flags=flags, payload=payload,
                  seq=self.seq_c if seq is None else seq, ack=self.seq_s)  # fmt: skip
        self.seq_c += len(payload)
        return self._handle(pkt)

    def reply(self, payload: bytes, flags: str = "PA", seq: int | None = None) -> Decision:
        pkt = tcp(S, C, self.dport, self.sport, flags=flags, payload=payload,
                  seq=self.seq_s if seq is None else seq, ack=self.seq_c)  # fmt: skip
        self.seq_s += len(payload)
        return self._handle(pkt)

    def stream(self, total: int, limit: int = 100_000) -> int | None:
        """Opaque bytes from the client in SEGMENT-sized packets until `total` were sent or the
        engine offloads the flow: the 1-based number of the data packet that offloaded it."""
        sent = packets = 0
        while sent < total and packets < limit:
            packets += 1
            decision = self.send(bytes((packets + i) % 251 for i in range(SEGMENT)))
            sent += SEGMENT
            assert decision.verdict == "accept", decision
            if decision.offload == OFFLOAD_FLOW:
                return packets
        return None


def engine_of(text: str) -> Engine:
    return Engine(load_policy_text(text, "t.rules"))


# ---- what `payload contains` reads -------------------------------------------------------------

DEPTH_100 = """\
set app-layer off
set payload-depth 100
drop proto tcp payload contains "evil"
accept
"""


@pytest.mark.parametrize(
    ("before", "verdict"),
    [
        (0, "drop"),
        (60, "drop"),
        (96, "drop"),  # "evil" ends at byte 100: wholly within the depth
        (97, "accept"),  # it would end at byte 101: past it, never read
        (100, "accept"),
        (3000, "accept"),
    ],
)
def test_payload_contains_reads_the_first_bytes_of_each_direction(
    before: int, verdict: str
) -> None:
    conn = Connection(engine_of(DEPTH_100), 80)
    if before:
        assert conn.send(b"." * before).verdict == "accept"
    assert conn.send(b"evil").verdict == verdict


def test_a_pattern_within_one_packet_is_cut_at_the_depth() -> None:
    conn = Connection(engine_of(DEPTH_100), 80)
    assert conn.send(b"." * 97 + b"evil").verdict == "accept"
    conn = Connection(engine_of(DEPTH_100), 80, sport=40001)
    assert conn.send(b"." * 96 + b"evil" + b"." * 500).verdict == "drop"


def test_each_direction_has_its_own_depth() -> None:
    conn = Connection(engine_of(DEPTH_100), 80)
    assert conn.reply(b"." * 5000).verdict == "accept"  # the server's direction is past it
    assert conn.send(b"..evil").verdict == "drop"  # the client's is not
    assert conn.reply(b"evil").verdict == "accept"


def test_a_rule_s_depth_overrides_the_policy_s() -> None:
    text = DEPTH_100.replace('"evil"', '"evil" depth 1k') + 'drop payload contains "vile"\n'
    text = text.replace("accept\n", "") + "accept\n"
    conn = Connection(engine_of(text), 80)
    conn.send(b"." * 500)
    assert conn.send(b"vile").verdict == "accept"  # past the policy's 100 bytes
    assert conn.send(b"evil").verdict == "drop"  # within the rule's 1k


def test_unlimited_reads_everything_and_never_offloads() -> None:
    text = DEPTH_100.replace("set payload-depth 100", "set payload-depth unlimited")
    conn = Connection(engine_of(text), 80)
    assert conn.stream(200_000) is None  # never offloaded
    assert conn.send(b"evil").verdict == "drop"


# ---- offload with the shipped gateway policy ---------------------------------------------------


def test_gateway_policy_offloads_an_opaque_stream_to_443_past_its_depth() -> None:
    """iperf3 to port 443: the two `payload contains` rules on the web ports hold the flow
    in the queue for its first payload-depth bytes (1 MiB), then it goes to the kernel."""
    policy = load_policy(GATEWAY)
    assert policy.payload_depth == DEFAULT_PAYLOAD_DEPTH
    engine = Engine(policy)
    conn = Connection(engine, 443)
    offloaded_at = conn.stream(4 * DEFAULT_PAYLOAD_DEPTH)
    assert offloaded_at == math.ceil(DEFAULT_PAYLOAD_DEPTH / SEGMENT)
    (flow,) = engine.flows.flows()
    assert flow.offloaded and flow.app_proto == "unknown"
    assert engine.stats.offloaded == 1
    # Nothing before it was offloaded: the handshake, and every data packet within the depth.
    assert [d.offload for d in conn.decisions[: 3 + offloaded_at - 1]] == [0] * (
        3 + offloaded_at - 1
    )


def test_gateway_policy_still_drops_a_traversal_within_the_depth_on_443() -> None:
    conn = Connection(Engine(load_policy(GATEWAY)), 443)
    assert conn.stream(64 * 1024) is None
    decision = conn.send(b"GET /../../etc/passwd HTTP/1.1\r\n\r\n")
    assert decision.verdict == "drop" and decision.rule is not None


def test_gateway_policy_offloads_a_tls_flow_after_its_handshake() -> None:
    """A TLS flow's payload is ciphertext: `payload contains` does not read it (set
    encrypted-payload skip, as Suricata's encryption-handling default), so the flow leaves
    as soon as the inspector has read what it reads — not after 1 MiB of upload."""
    text = GATEWAY.read_text() + "\nset app-stream-bytes 64\n"
    engine = engine_of(text)
    conn = Connection(engine, 443)
    hello = records(client_hello_message(chrome_like_extensions("www.example.lab", pq=False)))
    decision = conn.send(hello)
    assert decision.verdict == "accept" and decision.offload == OFFLOAD_FLOW
    (flow,) = engine.flows.flows()
    assert flow.app_proto == "tls"


def test_encrypted_payload_inspect_keeps_reading_tls_to_the_depth() -> None:
    text = GATEWAY.read_text() + "\nset app-stream-bytes 64\nset encrypted-payload inspect\n"
    engine = engine_of(text)
    conn = Connection(engine, 443)
    hello = records(client_hello_message(chrome_like_extensions("www.example.lab", pq=False)))
    assert conn.send(hello).offload == 0
    offloaded_at = conn.stream(2 * DEFAULT_PAYLOAD_DEPTH)
    assert offloaded_at is not None
    assert len(hello) + offloaded_at * SEGMENT >= DEFAULT_PAYLOAD_DEPTH


# ---- candidates ruled out by the application protocol -----------------------------------------

RULED_OUT = """\
set app-stream-bytes 64
set default drop
reject dns query { "bad.lab" }
accept app http limit 100/s per src
accept state established
accept proto tcp to port { 443, 5201 }
"""


def test_rules_of_another_protocol_do_not_hold_offload_back() -> None:
    """`dns query` (every DNS message is judged) and `app http … limit` (every packet is
    counted) would keep every TCP flow in the queue; on a flow named TLS or unknown neither
    can ever match, so they leave its candidates."""
    engine = engine_of(RULED_OUT)
    conn = Connection(engine, 5201)
    assert [d.offload for d in conn.decisions] == [0, 0, 0]  # the protocol is not known yet
    decision = conn.send(b"\x00\x01 an opaque protocol, nothing ipsctl knows" * 4)
    (flow,) = engine.flows.flows()
    assert flow.app_proto == "unknown"
    assert decision.offload == OFFLOAD_FLOW


def test_a_flow_of_the_rules_protocol_stays() -> None:
    engine = engine_of(RULED_OUT.replace("{ 443, 5201 }", "80"))
    conn = Connection(engine, 80)
    decision = conn.send(b"GET / HTTP/1.1\r\nHost: ok.lab\r\n\r\n")
    (flow,) = engine.flows.flows()
    assert flow.app_proto == "http" and decision.verdict == "accept"
    assert conn.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").offload == 0
    assert conn.stream(100_000) is None  # its `limit` counts every packet: never offloaded


def test_a_dns_query_rule_keeps_dns_flows_and_lets_other_udp_go() -> None:
    engine = engine_of('reject dns query { "bad.lab" }\naccept\n')
    query = bytes(DNS(id=7, rd=1, qd=DNSQR(qname="ok.lab", qtype="A")))
    answer = bytes(DNS(id=7, qr=1, qd=DNSQR(qname="ok.lab", qtype="A")))
    dns = [
        engine.handle(udp(C, S, 53000, 53, payload=query), now=1.0),
        engine.handle(udp(S, C, 53, 53000, payload=answer), now=1.1),
        engine.handle(udp(C, S, 53000, 53, payload=query), now=1.2),
    ]
    assert [d.offload for d in dns] == [0, 0, 0]  # every DNS message is judged
    other = [
        engine.handle(udp(C, S, 53001, 5000, payload=b"\x00\x07opaque"), now=1.0),
        engine.handle(udp(S, C, 5000, 53001, payload=b"\x00\x07opaque"), now=1.1),
    ]
    assert [d.offload for d in other] == [0, OFFLOAD_FLOW]  # named unknown: offloaded


def test_an_app_bound_payload_rule_is_ruled_out_by_another_protocol() -> None:
    text = 'set app-stream-bytes 64\ndrop app http payload contains "evil"\naccept\n'
    conn = Connection(engine_of(text), 5201)
    assert conn.send(b"\x00\x01 an opaque protocol, nothing ipsctl knows" * 4).offload == (
        OFFLOAD_FLOW
    )


# ---- the language: values, diagnostics, explain ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("set payload-depth 64k", 65536),
        ("set payload-depth 1M", 1 << 20),
        ("set payload-depth 2MiB", 2 << 20),
        ("set payload-depth 4096", 4096),
        ("set payload-depth unlimited", UNLIMITED_DEPTH),
    ],
)
def test_payload_depth_values(text: str, depth: int) -> None:
    assert load_policy_text(text + "\n").payload_depth == depth


@pytest.mark.parametrize(
    ("text", "where", "message", "hint"),
    [
        ("set payload-depth 1m", "1:19", "'1m' is a duration (m is minutes)", "1M"),
        ("set payload-depth 0", "1:19", "from 1 byte to 1G", "unlimited"),
        ("set payload-depth 4G", "1:19", "from 1 byte to 1G", "64k"),
        ("set payload-depth lots", "1:19", "not a size", "64k"),
        (
            'drop proto tcp payload contains "x" depth unlimted',
            "1:43",
            "not a size for 'depth'",
            "did you mean 'unlimited'",
        ),
        ("drop proto tcp to port 80 depth 8k", "1:27", "has none", "payload contains"),
        ('drop payload contains "x" depth 8k depth 1k', "1:36", "given twice", ""),
    ],
)
def test_bad_depths_are_refused_with_place_and_hint(
    text: str, where: str, message: str, hint: str
) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text + "\n", "t.rules")
    shown = caught.value.render()
    assert f"t.rules:{where}:" in shown
    assert message in shown
    assert hint in shown


@pytest.mark.parametrize(
    "line",
    [
        "set payload-depth 64k",
        "set payload-depth 1M",
        "set payload-depth 2GiB",
        "set payload-depth 4096",
        "set payload-depth unlimited",
        "set payload-depth 1m",
        "set encrypted-payload inspect",
        'drop proto tcp to port 80 payload contains "x" depth 8k alert',
        "drop depth 16KiB proto tcp payload contains |2e 2e| nocase",
        'drop proto tcp payload contains "x" depth unlimited sid 7',
        'drop proto tcp payload contains "x" depth 1m',
        'drop proto tcp payload contains "x" depth 100',
    ],
)
def test_the_fast_reader_and_lark_read_depths_alike(line: str) -> None:
    assert compare_line(line)  # taken by the fast path, and the very statement Lark builds


def test_explain_says_how_far_payload_contains_reads() -> None:
    policy = load_policy(GATEWAY)
    raw = tcp(C, S, 40000, 443, flags="PA", payload=b"GET /etc/passwd HTTP/1.1\r\n\r\n")
    pkt = decode_l3(raw)
    assert isinstance(pkt, Packet)
    steps, rule = explain(policy, pkt, established=True)
    assert rule is not None and rule.sid == 2000021
    assert "reads only the first 1M of each direction of a flow" in steps[-1].reason
    tls = AppContext(None, "tls")
    steps, rule = explain(policy, pkt, established=True, app=tls)
    assert rule is not None and rule.sid != 2000021
    assert any("ciphertext and not read" in s.reason for s in steps)
