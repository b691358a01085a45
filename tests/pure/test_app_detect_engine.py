"""Protocol detection wired into the engine (issue 20, item 1): every flow that carries
payload gets its app_proto from content, on any port, and flow records, `flows` rows and the
text table show it. Real bytes throughout: a ClientHello, an HTTP GET, a DNS query, an SSH
banner, a QUIC Initial from aioquic, and the shared captures replayed."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

import ips.app.inspect as inspect_module
from ips.core.build import build_packet
from ips.core.events import FlowEnd
from ips.core.flow import Flow
from ips.core.packet import PROTO_ICMP, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_PSH, TCP_SYN
from ips.engine import Engine
from ips.policy.resolve import load_policy_text
from ips.replay import replay_captures
from ips.sinks.eve import flow_line, flow_record
from ips.views.flows import format_flows, select_flows
from tests.pure.test_app_parsers import dns_query
from tests.pure.test_app_tls import chrome_like_extensions, client_hello_message, records

PCAPS = Path(__file__).resolve().parents[3] / "shared" / "pcaps"
SCHEMA = Path(__file__).resolve().parents[3] / "shared" / "schemas" / "suricata-eve-schema.json"
CLIENT, SERVER = "10.0.0.1", "10.0.0.2"
DATA = TCP_PSH | TCP_ACK

CLIENT_HELLO = records(client_hello_message(chrome_like_extensions("example.com")))
HTTP_GET = b"GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8.0\r\n\r\n"
SSH_BANNER = b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"


def new_engine() -> Engine:
    return Engine(load_policy_text("set default accept\n", "t.rules"))


def only_flow(engine: Engine) -> Flow:
    flows = list(engine.flows.flows())
    assert len(flows) == 1
    return flows[0]


def tcp_stream(engine: Engine, dport: int, *segments: bytes, server_first: bool = False) -> Flow:
    """A handshake, then each segment from the client (or the server first when asked), in
    sequence (the engine reassembles each direction)."""
    now = 100.0
    engine.handle(
        build_packet(PROTO_TCP, CLIENT, SERVER, 40000, dport, flags=TCP_SYN, seq=999), now=now
    )
    syn_ack = build_packet(
        PROTO_TCP, SERVER, CLIENT, dport, 40000, flags=TCP_SYN | TCP_ACK, seq=4999, ack=1000
    )
    engine.handle(syn_ack, now=now)
    engine.handle(
        build_packet(PROTO_TCP, CLIENT, SERVER, 40000, dport, flags=TCP_ACK, seq=1000), now=now
    )
    flow = only_flow(engine)
    assert flow.app_proto is None  # the handshake carries no payload
    seq = 5000 if server_first else 1000
    for payload in segments:
        a, b, pa, pb = (
            (SERVER, CLIENT, dport, 40000) if server_first else (CLIENT, SERVER, 40000, dport)
        )
        packet = build_packet(PROTO_TCP, a, b, pa, pb, flags=DATA, seq=seq, payload=payload)
        engine.handle(packet, now=now)
        seq += len(payload)
    return flow


def udp_datagram(engine: Engine, dport: int, payload: bytes) -> Flow:
    engine.handle(build_packet(PROTO_UDP, CLIENT, SERVER, 40000, dport, payload=payload), now=100.0)
    return only_flow(engine)


@pytest.mark.parametrize(
    ("payload", "dport", "want"),
    [
        (CLIENT_HELLO, 443, "tls"),
        (CLIENT_HELLO, 8443, "tls"),  # not TLS's port: content decides
        (HTTP_GET, 80, "http"),
        (HTTP_GET, 5555, "http"),
        (SSH_BANNER, 2222, "ssh"),
        (b"\x00\x01binary that is no protocol we know" * 4, 443, "unknown"),
    ],
)
def test_tcp_flows_are_named_by_their_first_data_segment(
    payload: bytes, dport: int, want: str
) -> None:
    flow = tcp_stream(new_engine(), dport, payload)
    assert flow.app_proto == want


def test_the_server_speaking_first_names_the_flow() -> None:
    # SSH servers send their banner first; detection takes either direction.
    assert tcp_stream(new_engine(), 22, SSH_BANNER, server_first=True).app_proto == "ssh"


def test_an_undecided_stream_waits_for_the_next_segments_of_its_direction() -> None:
    # "GE" could still be "GET ": detection waits for more of the stream, reassembled.
    assert tcp_stream(new_engine(), 5555, b"GE", HTTP_GET[2:]).app_proto == "http"
    assert tcp_stream(new_engine(), 5555, b"G", b"E", b"T", HTTP_GET[3:]).app_proto == "http"
    assert tcp_stream(new_engine(), 5555, b"GE").app_proto is None  # not decided yet
    # "GEGE" could still be a DNS message's length prefix and header; 16 bytes cannot.
    assert tcp_stream(new_engine(), 5555, b"GE", b"GE").app_proto is None
    assert tcp_stream(new_engine(), 5555, b"GE", b"GE" * 8).app_proto == "unknown"


def test_udp_flows_are_named_by_their_first_datagram() -> None:
    assert udp_datagram(new_engine(), 53, dns_query("example.com")).app_proto == "dns"
    assert udp_datagram(new_engine(), 5353, dns_query("printer.local")).app_proto == "dns"
    assert udp_datagram(new_engine(), 9999, b"\x07nothing").app_proto == "unknown"


def test_a_quic_initial_from_aioquic_names_the_flow() -> None:
    pytest.importorskip("aioquic")
    from tests.pure.test_app_tls_quic import aioquic_initials

    datagram = aioquic_initials("example.com", ["h3"])[0]
    assert udp_datagram(new_engine(), 443, datagram).app_proto == "quic"
    assert udp_datagram(new_engine(), 4433, datagram).app_proto == "quic"


def test_flows_without_an_application_layer_stay_unnamed() -> None:
    engine = new_engine()
    ping = build_packet(PROTO_ICMP, CLIENT, SERVER, icmp_type=8, payload=b"abcdefgh" * 4)
    engine.handle(ping, now=100.0)
    flow = only_flow(engine)
    assert flow.app_proto in (None, "")
    assert "app_proto" not in flow_record(FlowEnd(flow, "timeout", 101.0))


def test_a_named_flow_is_not_looked_at_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = inspect_module.detect_stream

    def counted(data: bytes, offset: int = 0) -> str | None:
        calls.append(len(data) - offset)
        return real(data, offset)

    monkeypatch.setattr(inspect_module, "detect_stream", counted)
    flow = tcp_stream(new_engine(), 443, CLIENT_HELLO, b"x" * 100, b"y" * 200, server_first=False)
    assert flow.app_proto == "tls"
    assert calls == [len(CLIENT_HELLO)]  # the handshake has no payload, the later data is not read


def test_flow_records_rows_and_the_table_carry_app_proto() -> None:
    engine = new_engine()
    tcp_stream(engine, 8443, CLIENT_HELLO)
    flow = only_flow(engine)
    end = FlowEnd(flow, "timeout", 200.0)
    record = flow_record(end)
    assert record["app_proto"] == "tls"
    assert list(record).index("app_proto") == list(record).index("proto") + 1  # as Suricata
    assert flow_line(end) == json.dumps(record, separators=(",", ":"))
    flow.app_proto = "unknown"
    assert flow_record(end)["app_proto"] == "failed"  # Suricata's word for gave up
    flow.app_proto = "tls"
    reply = select_flows(engine.flows.flows(), 200.0)
    assert reply["flows"][0]["app_proto"] == "tls"
    table = format_flows(reply["flows"], reply["total"]).splitlines()
    assert table[0].split()[:3] == ["PROTO", "APP", "SOURCE"]
    assert table[1].split()[:3] == ["tcp", "tls", f"{CLIENT}:40000"]


@pytest.mark.parametrize(
    ("capture", "want"),
    [
        ("zk_tls-chrome-34-google.pcap", "tls"),
        ("td_dns_udp.pcap", "dns"),
        ("zk_http-bro.org.pcap", "http"),
    ],
)
def test_replayed_captures_name_their_flows(capture: str, want: str) -> None:
    path = PCAPS / capture
    if not path.is_file():
        pytest.skip(f"shared capture not found: {path}")
    out = io.StringIO()
    replay_captures(
        load_policy_text("set default accept\n", "t.rules"), [str(path)], eve_stream=out
    )
    flows = [json.loads(x) for x in out.getvalue().splitlines() if '"event_type":"flow"' in x]
    assert flows
    assert want in {f.get("app_proto") for f in flows}
    if SCHEMA.is_file():
        jsonschema = pytest.importorskip("jsonschema")
        schema = json.loads(SCHEMA.read_text())
        validator = jsonschema.validators.validator_for(schema)(schema)
        for f in flows:
            # ipsctl's own top-level object (the names: ipsctl.sni, ipsctl.http_host) aside
            suricata_part = {k: v for k, v in f.items() if k != "ipsctl"}
            errors = [e.message for e in validator.iter_errors(suricata_part)]
            assert not errors, (f, errors)
