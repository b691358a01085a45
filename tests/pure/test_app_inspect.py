"""The application-layer inspector wired into the engine (issue 20): built packets through
`Engine.handle`, and what comes out: AppEvents among the Decision's effects, flow.app's fields
and their client_done/server_done, counters, and the reassembly memory given back.

Real bytes: the post-quantum ClientHello and the TLS 1.2 server flight of test_app_tls.py
(a certificate made by `cryptography`), DNS messages of test_app_parsers.py, HTTP and SSH
text as clients send it."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ips.app.inspect import AppInspector
from ips.app.ja import ja3, ja4
from ips.app.tls import ClientHello, parse_client_hello
from ips.core.app_fields import APP_NOT_STARTED
from ips.core.build import build_packet
from ips.core.decode import decode_l3
from ips.core.events import AppEvent, FlowEnd
from ips.core.flow import Flow
from ips.core.packet import (
    PROTO_ICMP,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_FIN,
    TCP_PSH,
    TCP_SYN,
    Packet,
)
from ips.engine import Engine
from ips.policy.resolve import load_policy_text
from tests.pure.test_app_parsers import dns_query, dns_response
from tests.pure.test_app_tls import (
    alpn_ext,
    chrome_like_extensions,
    client_hello_message,
    records,
    self_signed_der,
    server_hello_message,
)

CLIENT, SERVER = "10.0.0.1", "10.0.0.2"
DATA = TCP_PSH | TCP_ACK
CLIENT_HELLO = records(client_hello_message(chrome_like_extensions("Example.COM")))
HTTP_GET = (
    b"GET /index.html?q=1 HTTP/1.1\r\nHost: WWW.Example.com:8080\r\n"
    b"User-Agent: curl/8.0\r\nAccept: */*\r\n\r\n"
)
HTTP_OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\n\r\nhello"
SSH_CLIENT = b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"
SSH_SERVER = b"SSH-2.0-dropbear_2022.83\r\n"


def engine(extra: str = "") -> Engine:
    return Engine(load_policy_text(f"set default accept\n{extra}", "t.rules"))


DER = self_signed_der()  # made once: every call makes a new key


def tls12_flight() -> bytes:
    der = DER
    chain = len(der).to_bytes(3, "big") + der
    certificate = b"\x0b" + (len(chain) + 3).to_bytes(3, "big") + len(chain).to_bytes(3, "big")
    hello = server_hello_message(alpn_ext([b"h2"]), cipher=0xC02F)
    return records(hello + certificate + chain + b"\x0e\x00\x00\x00", version=0x0303)


class Conn:
    """A TCP connection through an engine: the handshake, then segments either way with
    their sequence numbers; every effect the engine returned is kept."""

    def __init__(self, eng: Engine, dport: int = 443, sport: int = 40000) -> None:
        self.eng, self.dport, self.sport = eng, dport, sport
        self.seq = {True: 1000, False: 5000}
        self.effects: list[object] = []
        self.now = 100.0
        self.send(True, b"", TCP_SYN, seq=999)
        self.send(False, b"", TCP_SYN | TCP_ACK, seq=4999)
        self.send(True, b"", TCP_ACK)

    def send(
        self, to_server: bool, payload: bytes, flags: int = DATA, seq: int | None = None
    ) -> list[object]:
        if seq is None:
            seq = self.seq[to_server]
            self.seq[to_server] += len(payload)
        a, b, pa, pb = (
            (CLIENT, SERVER, self.sport, self.dport)
            if to_server
            else (SERVER, CLIENT, self.dport, self.sport)
        )
        packet = build_packet(PROTO_TCP, a, b, pa, pb, flags=flags, seq=seq, payload=payload)
        self.now += 0.01
        got = list(self.eng.handle(packet, now=self.now).effects)
        self.effects += got
        return got

    @property
    def flow(self) -> Flow:
        flows = [
            f for f in self.eng.flows.flows() if f.proto == PROTO_TCP and f.sport == self.sport
        ]
        assert len(flows) == 1
        return flows[0]

    def app_events(self, kind: str | None = None) -> list[AppEvent]:
        return [
            e
            for e in self.effects
            if isinstance(e, AppEvent) and (kind is None or e.event_type == kind)
        ]


def hello_fields() -> ClientHello:
    hello = parse_client_hello(CLIENT_HELLO)
    assert isinstance(hello, ClientHello)
    return hello


# ---- TLS ----------------------------------------------------------------------------------------


def test_a_tls_handshake_fills_the_fields_and_writes_one_tls_event() -> None:
    conn = Conn(engine())
    # The handshake only: the inspector reads the flow, its fields come with its payload.
    assert conn.flow.app is None and conn.flow.app_state is not None
    conn.send(True, CLIENT_HELLO)
    app = conn.flow.app
    hello = hello_fields()
    assert app is not None and app.client_done and not app.server_done
    assert app.tls_sni == "example.com"  # lower-case, as clauses compare it
    assert app.tls_ja3 == ja3(hello)[1]
    assert app.tls_ja4 == ja4(hello)
    assert app.tls_alpn == ("h2", "http/1.1")
    assert conn.flow.app_proto == "tls" and conn.flow.app_state is not None
    assert not conn.app_events()  # the server's side is still to come
    flight = tls12_flight()
    conn.send(False, flight[:60])
    assert app.tls_ja3s is None and not app.server_done
    conn.send(False, flight[60:])
    assert app.server_done and app.tls_ja3s is not None
    assert conn.flow.app_state is None  # nothing left to read: one attribute check from now
    assert conn.eng.app.memory == 0
    (event,) = conn.app_events("tls")
    assert (event.src_ip, event.sport, event.dest_ip, event.dport) == (CLIENT, 40000, SERVER, 443)
    body = event.body
    assert body["sni"] == "Example.COM"  # EVE keeps what the client sent
    assert body["ja3"] == {"hash": ja3(hello)[1], "string": ja3(hello)[0]}
    assert body["ja4"] == ja4(hello)
    assert body["client_alpns"] == ["h2", "http/1.1"]
    assert body["server_alpns"] == ["h2"]
    assert body["version"] == "TLS 1.2"
    assert body["subject"] == "C=DK, O=Lab Ltd, CN=ok.lab"
    assert body["serial"] == "01:02:03:04:05"
    assert body["notbefore"] == "2026-01-02T03:04:05"
    sha1 = hashlib.sha1(DER).hexdigest()
    assert str(body["fingerprint"]).replace(":", "") == sha1
    assert conn.eng.stats.app.events["tls"] == 1
    assert conn.eng.stats.app.protocols["tls"] == 1


def test_a_post_quantum_client_hello_over_two_segments_parses_after_the_second() -> None:
    assert len(CLIENT_HELLO) > 1500
    conn = Conn(engine())
    conn.send(True, CLIENT_HELLO[:1000])
    app = conn.flow.app
    assert app is not None and not app.client_done and app.tls_sni is None  # pending
    conn.send(True, CLIENT_HELLO[1000:])
    assert app.client_done and app.tls_sni == "example.com"


def test_a_client_hello_out_of_order_and_retransmitted_parses_once_whole() -> None:
    conn = Conn(engine())
    cut1, cut2 = 600, 1300
    conn.send(True, CLIENT_HELLO[cut2:], seq=1000 + cut2)  # the last piece first
    conn.send(True, CLIENT_HELLO[cut1:cut2], seq=1000 + cut1)
    app = conn.flow.app
    assert app is not None and not app.client_done
    conn.send(True, CLIENT_HELLO[cut1:cut2], seq=1000 + cut1)  # retransmitted
    conn.send(True, CLIENT_HELLO[:cut1], seq=1000)
    assert app.client_done and app.tls_sni == "example.com"
    assert app.tls_ja4 == ja4(hello_fields())
    assert conn.eng.app.reassembler.counters["retransmission"] >= 1


def test_the_tls_event_of_a_server_that_never_answered_comes_with_the_flow_end() -> None:
    conn = Conn(engine())
    conn.send(True, CLIENT_HELLO)
    assert conn.eng.app.memory == len(CLIENT_HELLO)
    ended = conn.eng.drain(200.0)
    kinds = [type(e).__name__ for e in ended]
    assert kinds == ["AppEvent", "FlowEnd"]  # the owed event first, then the flow record
    event = ended[0]
    assert isinstance(event, AppEvent) and event.event_type == "tls"
    assert "ja3s" not in event.body and event.body["version"] == "TLS 1.3"
    assert conn.eng.app.memory == 0  # the memory went back with the flow
    assert conn.eng.stats.app.released_bytes == len(CLIENT_HELLO)
    assert conn.eng.stats.app.released_flows == 1


def test_memory_of_expired_flows_is_returned() -> None:
    eng = engine()
    for port in range(41000, 41010):
        Conn(eng, sport=port).send(True, CLIENT_HELLO[:800])
    assert eng.app.memory == 8000
    events = eng.tick(100.0 + 3 * 3600)  # established flows time out after an hour
    assert sum(isinstance(e, FlowEnd) for e in events) == 10
    assert eng.app.memory == 0
    assert eng.stats.app.released_bytes == 8000


def test_a_malformed_client_hello_is_counted_and_its_side_is_done() -> None:
    conn = Conn(engine())
    bad = bytearray(CLIENT_HELLO)
    bad[9:11] = b"\x03\x03"
    bad[43] = 40  # a session id longer than 32 bytes
    conn.send(True, bytes(bad))
    app = conn.flow.app
    assert app is not None and app.client_done and app.tls_sni is None  # final: never known
    assert conn.eng.stats.app.malformed == {"tls.bad-session-id": 1}


def test_a_stream_cut_by_fin_before_the_hello_ends_is_final_and_incomplete() -> None:
    conn = Conn(engine())
    conn.send(True, CLIENT_HELLO[:900])
    conn.send(True, b"", DATA | TCP_FIN)
    app = conn.flow.app
    assert app is not None and app.client_done and app.tls_sni is None
    assert conn.eng.stats.app.incomplete["tls"] == 1


def test_the_stream_bound_ends_a_hello_longer_than_it() -> None:
    conn = Conn(engine("set app-stream-bytes 1024\n"))
    conn.send(True, CLIENT_HELLO[:1400])
    app = conn.flow.app
    assert app is not None and app.client_done and app.tls_sni is None  # never known
    assert conn.eng.app.reassembler.counters["beyond-limit"] == 1


# ---- HTTP, SSH, DNS over TCP --------------------------------------------------------------------


def test_http_requests_and_responses_pair_into_events() -> None:
    conn = Conn(engine(), dport=8080)
    conn.send(True, HTTP_GET + HTTP_GET.replace(b"/index.html?q=1", b"/two"))
    app = conn.flow.app
    assert app is not None and app.client_done and app.server_done
    assert (app.http_method, app.http_host, app.http_uri) == (
        "GET",
        "www.example.com",
        "/index.html?q=1",
    )
    assert app.http_user_agent == "curl/8.0"
    assert not conn.app_events()
    conn.send(False, HTTP_OK)
    (first,) = conn.app_events("http")
    assert first.tx_id == 0
    assert first.body == {
        "hostname": "WWW.Example.com", "http_port": 8080, "url": "/index.html?q=1",
        "http_user_agent": "curl/8.0", "http_method": "GET", "protocol": "HTTP/1.1",
        "http_content_type": "text/html", "status": 200, "length": 5,
    }  # fmt: skip
    assert first.src_ip == CLIENT  # the request's direction, whoever sent the packet
    conn.send(False, b"", DATA | TCP_FIN)  # the server is done: the unanswered request too
    second = conn.app_events("http")[1]
    assert second.body["url"] == "/two" and "status" not in second.body
    assert conn.flow.app_state is None


def test_ssh_banners_of_both_sides_make_one_event() -> None:
    conn = Conn(engine(), dport=2222)
    conn.send(False, SSH_SERVER)  # servers speak first
    app = conn.flow.app
    assert app is not None and app.ssh_server == "dropbear_2022.83" and not app.client_done
    conn.send(True, SSH_CLIENT[:10])
    assert app.ssh_client is None
    conn.send(True, SSH_CLIENT[10:])
    assert app.ssh_client == "OpenSSH_9.2p1"
    (event,) = conn.app_events("ssh")
    assert event.body == {
        "client": {"proto_version": "2.0", "software_version": "OpenSSH_9.2p1"},
        "server": {"proto_version": "2.0", "software_version": "dropbear_2022.83"},
    }
    assert conn.flow.app_state is None


def test_dns_over_tcp_messages_are_events_and_teach_passive_dns() -> None:
    conn = Conn(engine(), dport=53)
    query = dns_query("Example.com")
    conn.send(True, struct.pack("!H", len(query)) + query[:5])
    app = conn.flow.app
    assert app is not None and not app.client_done
    conn.send(True, query[5:])
    assert app.client_done and app.dns_queries == ("example.com",)
    conn.send(False, struct.pack("!H", len(dns_response())) + dns_response())
    assert app.dns_queries == ()  # the names of the client message in hand only
    query_event, answer = conn.app_events("dns")
    assert query_event.body["type"] == "query" and query_event.src_ip == CLIENT
    assert answer.body["type"] == "answer" and answer.src_ip == SERVER  # the answer's way
    assert answer.tx_id == query_event.tx_id == query_event.body["tx_id"] == 0
    assert conn.eng.pdns.name_of(bytes((192, 0, 2, 1)), 101.0) == "example.com"


# ---- UDP: DNS and QUIC --------------------------------------------------------------------------


def udp(eng: Engine, to_server: bool, payload: bytes, dport: int = 53, now: float = 100.0) -> list:
    a, b, pa, pb = (CLIENT, SERVER, 40000, dport) if to_server else (SERVER, CLIENT, dport, 40000)
    return list(eng.handle(build_packet(PROTO_UDP, a, b, pa, pb, payload=payload), now=now).effects)


def test_every_dns_datagram_is_read_and_names_the_flows_that_follow() -> None:
    eng = engine()
    got = udp(eng, True, dns_query("Example.com"), dport=5353)  # any port: content decides
    (flow,) = eng.flows.flows()
    assert flow.app is not None and flow.app.dns_queries == ("example.com",)
    assert [e.body["type"] for e in got] == ["query"]
    got = udp(eng, False, dns_response(), dport=5353)
    assert [e.body["type"] for e in got] == ["answer"]
    assert flow.app.dns_queries == ()
    udp(eng, True, dns_query("second.example"), dport=5353)
    assert flow.app.dns_queries == ("second.example",)  # every message, for the flow's life
    assert flow.app_state is not None
    conn = Conn(eng, dport=443)  # to the address the answer gave
    assert conn.flow.dst_name is None  # 10.0.0.2 was not in the answer
    eng.handle(build_packet(PROTO_TCP, CLIENT, "192.0.2.1", 40001, 443, flags=TCP_SYN), now=101.0)
    named = [f for f in eng.flows.flows() if f.sport == 40001]
    assert named[0].dst_name == "example.com"


def test_a_malformed_dns_datagram_is_counted() -> None:
    eng = engine()
    udp(eng, True, dns_query())
    assert udp(eng, True, dns_query()[:20]) == []
    assert eng.stats.app.malformed == {"dns.truncated-name": 1}


def test_a_quic_client_initial_gives_sni_ja4_and_a_quic_event() -> None:
    pytest.importorskip("aioquic")
    from tests.pure.test_app_tls_quic import aioquic_initials

    eng = engine()
    datagrams = aioquic_initials("Blocked.Lab", ["h3"])
    got: list = []
    for datagram in datagrams:
        got += udp(eng, True, datagram, dport=4433)
    (flow,) = eng.flows.flows()
    assert flow.app_proto == "quic" and flow.app is not None
    assert flow.app.quic_sni == "blocked.lab" and flow.app.client_done
    assert flow.app.quic_ja4 is not None and flow.app.quic_ja4.startswith("q13d")
    (event,) = [e for e in got if e.event_type == "quic"]
    assert event.body["sni"] == "Blocked.Lab" and event.body["ja4"] == flow.app.quic_ja4
    assert {"name": "alpn", "type": 16, "values": ["h3"]} in event.body["extensions"]
    assert flow.app_state is None


def test_garbage_over_udp_is_unknown_at_once() -> None:
    eng = engine()
    udp(eng, True, b"\x07nothing we know", dport=9999)
    (flow,) = eng.flows.flows()
    assert flow.app_proto == "unknown" and flow.app_state is None
    assert flow.app is not None and flow.app.client_done and flow.app.server_done


# ---- on, off, and the cost of a decided flow ----------------------------------------------------


def test_app_layer_off_reads_nothing() -> None:
    eng = engine("set app-layer off\n")
    conn = Conn(eng)
    conn.send(True, CLIENT_HELLO)
    conn.send(False, tls12_flight())
    udp(eng, True, dns_query())
    assert not conn.app_events()
    for flow in eng.flows.flows():
        assert flow.app is None and flow.app_state is None and flow.app_proto is None
        assert flow.dst_name is None
    assert eng.app_stats()["enabled"] is False and not eng.stats.app.events


def test_turning_app_layer_off_by_a_load_returns_the_memory() -> None:
    eng = engine()
    conn = Conn(eng)
    conn.send(True, CLIENT_HELLO[:700])
    assert eng.app.memory == 700
    eng.load(load_policy_text("set default accept\nset app-layer off\n", "t.rules"))
    conn.send(True, CLIENT_HELLO[700:])
    assert eng.app.memory == 0 and conn.flow.app_state is None


def test_flows_without_an_application_layer_never_start_it() -> None:
    eng = engine()
    eng.handle(build_packet(PROTO_ICMP, CLIENT, SERVER, icmp_type=8, payload=b"x" * 8), now=1.0)
    (flow,) = eng.flows.flows()
    assert flow.app is None and flow.app_state is None and flow.app_proto == ""


def test_a_decided_flow_never_calls_the_inspector_again(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = Conn(engine())
    conn.send(True, CLIENT_HELLO)
    conn.send(False, tls12_flight())
    assert conn.flow.app_state is None
    calls: list[int] = []
    monkeypatch.setattr(conn.eng.app, "inspect", lambda *a: calls.append(1))
    for _ in range(50):
        conn.send(True, b"x" * 100)
        conn.send(False, b"y" * 100)
    assert calls == []


def test_a_refused_first_packet_gives_its_memory_back() -> None:
    eng = Engine(load_policy_text("set default drop\n", "t.rules"))
    # A SYN carrying data (TCP Fast Open), refused by the policy: no flow, no bytes held.
    packet = build_packet(
        PROTO_TCP, CLIENT, SERVER, 40000, 443, flags=TCP_SYN, payload=CLIENT_HELLO
    )
    eng.handle(packet, now=1.0)
    assert len(eng.flows) == 0 and eng.app.memory == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("set app-layer maybe\n", "app-layer"),
        ("set app-stream-bytes 10\n", "app-stream-bytes"),
        ("set app-memcap lots\n", "app-memcap"),
    ],
)
def test_bad_app_options_are_refused(text: str, message: str) -> None:
    from ips.policy.diagnostics import PolicyError

    with pytest.raises(PolicyError) as err:
        load_policy_text(text, "t.rules")
    assert message in str(err.value)


def test_app_options_reach_the_inspector() -> None:
    eng = engine("set app-stream-bytes 2048\nset app-memcap 100000\n")
    assert eng.app.reassembler.limit == 2048 and eng.app.reassembler.memory_cap == 100000
    assert engine().app.reassembler.limit == 4096
    assert engine().app.reassembler.memory_cap == 32 * 1024 * 1024


# ---- random segment streams ---------------------------------------------------------------------


def _packet(seq: int, flags: int, payload: bytes, to_server: bool) -> Packet:
    a, b, pa, pb = (CLIENT, SERVER, 40000, 443) if to_server else (SERVER, CLIENT, 443, 40000)
    pkt = decode_l3(build_packet(PROTO_TCP, a, b, pa, pb, flags=flags, seq=seq, payload=payload))
    assert isinstance(pkt, Packet)
    return pkt


SOURCES = [CLIENT_HELLO, tls12_flight(), HTTP_GET, HTTP_OK, SSH_CLIENT, dns_query()]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.booleans(),  # direction
            st.integers(0, 5),  # which source stream
            st.integers(0, 3000),  # offset in it
            st.integers(0, 1600),  # length
            st.sampled_from([DATA, DATA | TCP_FIN, TCP_SYN, TCP_ACK, DATA | 0x04]),
            st.binary(max_size=8),  # bytes to flip in
        ),
        max_size=40,
    ),
    st.integers(1024, 6000),  # memory cap
)
def test_random_segment_streams_never_raise_and_stay_within_memory(
    segments: list[tuple[bool, int, int, int, int, bytes]], memory_cap: int
) -> None:
    inspector = AppInspector(limit=2048, memory_cap=memory_cap)
    flows = []
    first = _packet(999, TCP_SYN, b"", True)
    from ips.core.flow import FlowTable

    table = FlowTable()
    for i in range(2):
        pkt = _packet(999, TCP_SYN, b"", True)
        flow = Flow(pkt, i + 1, 0.0)
        assert flow.app_state is APP_NOT_STARTED
        inspector.inspect(first, flow, True, 0.0)
        flows.append(flow)
    del table
    for n, (to_server, source, offset, length, flags, noise) in enumerate(segments):
        data = bytearray(SOURCES[source][offset : offset + length])
        for j, b in enumerate(noise):
            if data:
                data[(j * 131) % len(data)] = b
        base = 1000 if to_server else 5000
        pkt = _packet(base + offset, flags, bytes(data), to_server)
        flow = flows[n % 2]
        if flow.app_state is not None:
            inspector.inspect(pkt, flow, to_server, float(n))
        assert inspector.memory <= memory_cap
    for flow in flows:
        inspector.release(flow, 99.0)
        assert flow.app_state is None
    assert inspector.memory == 0


def test_status_and_prometheus_show_the_app_counters() -> None:
    from ips.sinks.prometheus import families
    from ips.views.status import _app_lines

    conn = Conn(engine())
    conn.send(True, CLIENT_HELLO)
    conn.eng.drain(200.0)
    stats = conn.eng.app_stats()
    text = "\n".join(_app_lines(stats))
    assert "flows tls 1; events tls 1" in text and "returned at flow end" in text
    metrics = {
        (m.name, tuple(s.labels.values())): s.value
        for m in families({"ok": True, "worker": {"ok": True, "app": stats}})
        for s in m.samples
    }
    assert metrics[("ipsctl_app_events", ("tls",))] == 1
    assert metrics[("ipsctl_app_flows", ("tls",))] == 1
    assert metrics[("ipsctl_app_reassembly_memory_bytes", ())] == 0
