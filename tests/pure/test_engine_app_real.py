"""Application-layer rules decided by the REAL inspector (ips/app/inspect.py) over real bytes:
a post-quantum ClientHello built as tests/pure/test_app_tls.py builds it and sent across two
TCP segments, an HTTP request, DNS queries, a QUIC client Initial made by aioquic, an SSH
banner. Nothing of flow.app is set by hand here (tests/pure/test_engine_app_rules.py keeps
the rule semantics that real bytes cannot reach).

Also what a refusal writes (issue 20 follow-up): the packet that completed the client's
message is dropped or rejected, so the flow will never complete; the `tls` (or `http`,
`ssh`) event it owes rides on that packet's Decision, not on the flow's end, and the alert
of the deciding rule carries the L7 object that decided, as Suricata's alert metadata does.
Every EVE line validates against Suricata's schema (ipsctl's own `ipsctl` object aside)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from eve_schema import assert_valid_eve
from scapy.layers.dns import DNS
from scapy.layers.inet import IP, TCP, UDP

from ips.app.ja import ja3, ja4
from ips.app.tls import ClientHello, parse_client_hello
from ips.core.build import build_packet
from ips.core.craft import DNS_NXDOMAIN
from ips.core.decision import Decision
from ips.core.events import Alert, AppEvent, Effect
from ips.core.flow import Flow
from ips.core.packet import PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_PSH, TCP_SYN
from ips.engine import Engine
from ips.engine.engine import APP_PENDING
from ips.policy.resolve import load_policy_text
from ips.sinks.eve import EveWriter
from tests.pure.test_app_parsers import dns_query
from tests.pure.test_app_tls import chrome_like_extensions, client_hello_message, records

CLIENT, SERVER = "10.10.1.20", "10.10.2.10"
DATA = TCP_PSH | TCP_ACK


def hello_bytes(sni: str) -> bytes:
    """A Chrome-like ClientHello with an X25519MLKEM768 key share: ~1.8 KB, two segments."""
    return records(client_hello_message(chrome_like_extensions(sni)))


def rules(text: str) -> Engine:
    return Engine(load_policy_text(text, "gate.rules"))


class Tcp:
    """A TCP connection from CLIENT to SERVER through an engine; every Decision is kept."""

    def __init__(self, eng: Engine, dport: int = 443, sport: int = 40000) -> None:
        self.eng, self.dport, self.sport = eng, dport, sport
        self.seq = {True: 1000, False: 5000}
        self.now = 100.0
        self.decisions: list[Decision] = []

    def handshake(self) -> list[Decision]:
        return [
            self.send(True, b"", TCP_SYN, seq=999),
            self.send(False, b"", TCP_SYN | TCP_ACK, seq=4999),
            self.send(True, b"", TCP_ACK),
        ]

    def send(
        self, to_server: bool, payload: bytes, flags: int = DATA, seq: int | None = None
    ) -> Decision:
        if seq is None:
            seq = self.seq[to_server]
            self.seq[to_server] += len(payload)
        a, b, pa, pb = (
            (CLIENT, SERVER, self.sport, self.dport)
            if to_server
            else (SERVER, CLIENT, self.dport, self.sport)
        )
        ack = self.seq[not to_server] if flags & TCP_ACK else 0
        packet = build_packet(
            PROTO_TCP, a, b, pa, pb, flags=flags, seq=seq, ack=ack, payload=payload
        )
        self.now += 0.01
        decision = self.eng.handle(packet, now=self.now)
        self.decisions.append(decision)
        return decision

    def hello_in_two(self, sni: str) -> tuple[Decision, Decision]:
        """The ClientHello cut in two segments (the cut inside its key share)."""
        stream = hello_bytes(sni)
        assert len(stream) > 1500
        return self.send(True, stream[:1000]), self.send(True, stream[1000:])

    @property
    def flow(self) -> Flow:
        (flow,) = [f for f in self.eng.flows.flows() if f.sport == self.sport]
        return flow


def app_events(effects: object, kind: str) -> list[AppEvent]:
    return [e for e in effects if isinstance(e, AppEvent) and e.event_type == kind]  # type: ignore[attr-defined]


def alerts(effects: object) -> list[Alert]:
    return [e for e in effects if isinstance(e, Alert)]  # type: ignore[attr-defined]


def eve_lines(effects: list[Effect]) -> list[dict]:
    out = io.StringIO()
    EveWriter(out).events(effects)
    return [json.loads(line) for line in out.getvalue().splitlines()]


# ---- TLS: drop, reject, allow-list ---------------------------------------------------------

TLS_GATE = """\
set default drop
{action} tls sni {{ "blocked.lab", "*.bad.lab" }} to port 443 alert "blocked name"
accept state established
accept proto tcp to port 443
"""


def test_drop_tls_sni_over_two_segments_writes_the_tls_event_with_the_drop() -> None:
    eng = rules(TLS_GATE.format(action="drop"))
    conn = Tcp(eng)
    syn, _syn_ack, ack = conn.handshake()
    assert (syn.verdict, syn.reason, syn.offload) == ("accept", APP_PENDING, 0)
    assert (ack.verdict, ack.reason) == ("accept", APP_PENDING)
    stream = hello_bytes("WWW.Bad.Lab")
    first = conn.send(True, stream[:1000])
    assert (first.verdict, first.reason, first.offload) == ("accept", APP_PENDING, 0)
    assert conn.flow.app is not None and not conn.flow.app.client_done  # half a hello
    second = conn.send(True, stream[1000:])
    assert second.verdict == "drop" and second.rule is not None
    assert second.rule.spec.span.line == 2
    # The event the flow owes comes with the drop: its server will never answer.
    (event,) = app_events(second.effects, "tls")
    assert event.body["sni"] == "WWW.Bad.Lab"
    assert (event.src_ip, event.sport, event.dest_ip, event.dport) == (CLIENT, 40000, SERVER, 443)
    (alert,) = alerts(second.effects)
    assert alert.action == "blocked" and alert.app_proto == "tls"
    tls = (alert.app_layer or {})["tls"]
    assert tls["sni"] == "www.bad.lab"  # the field the clause read
    hello = parse_client_hello(hello_bytes("WWW.Bad.Lab"))
    assert isinstance(hello, ClientHello)
    assert tls["ja3"] == {"hash": ja3(hello)[1]} and tls["ja4"] == ja4(hello)
    assert tls["client_alpns"] == ["h2", "http/1.1"]
    # The inspection is over: memory returned; the retransmitted hello meets the same rule,
    # and the flow's end writes no second event.
    assert conn.flow.app_state is None and eng.app.memory == 0
    again = conn.send(True, hello_bytes("WWW.Bad.Lab")[1000:], seq=2000)
    assert again.verdict == "drop" and not app_events(again.effects, "tls")
    assert not app_events(eng.drain(200.0), "tls")
    lines = eve_lines(list(second.effects))
    alert_line = next(r for r in lines if r["event_type"] == "alert")
    assert alert_line["tls"]["sni"] == "www.bad.lab" and alert_line["app_proto"] == "tls"
    assert_valid_eve(lines)


def test_reject_tls_sni_resets_both_ways_and_writes_the_event() -> None:
    eng = rules(TLS_GATE.format(action="reject"))
    conn = Tcp(eng)
    conn.handshake()
    _first, second = conn.hello_in_two("blocked.lab")
    assert second.verdict == "reject"
    assert second.reply is not None and second.peer_reply is not None
    to_client, to_server = IP(second.reply), IP(second.peer_reply)
    assert (to_client.src, to_client.dst, to_client[TCP].flags) == (SERVER, CLIENT, "R")
    assert to_client[TCP].seq == 5000  # the client's ack: what the server would send next
    assert (to_server.src, to_server.dst, to_server[TCP].flags) == (CLIENT, SERVER, "RA")
    assert to_server[TCP].seq == 2000  # the rejected segment's own sequence number
    (event,) = app_events(second.effects, "tls")
    assert event.body["sni"] == "blocked.lab"
    assert alerts(second.effects)[0].app_layer == {
        "tls": {
            "sni": "blocked.lab",
            "ja3": {"hash": conn.flow.app.tls_ja3},  # type: ignore[union-attr]
            "ja4": conn.flow.app.tls_ja4,  # type: ignore[union-attr]
            "client_alpns": ["h2", "http/1.1"],
        }
    }
    assert_valid_eve(eve_lines(list(second.effects)))


def test_a_name_not_blocked_passes_and_its_event_waits_for_the_server() -> None:
    eng = rules(TLS_GATE.format(action="drop"))
    conn = Tcp(eng)
    conn.handshake()
    _first, second = conn.hello_in_two("ok.lab")
    assert second.verdict == "accept" and second.rule is not None
    # The inspector still reads: offload waits for the server's hello (its event wants it).
    assert second.rule.spec.span.line == 3 and second.offload == 0
    assert not app_events(second.effects, "tls")  # the server's hello is still to come
    (event,) = app_events(eng.drain(200.0), "tls")
    assert event.body["sni"] == "ok.lab"


ALLOW_LIST = """\
set default drop
accept proto tcp to port 443 tls sni "*.corp.lab"
accept proto tcp from port 443
"""


@pytest.mark.parametrize(("sni", "verdict"), [("git.corp.lab", "accept"), ("evil.lab", "drop")])
def test_accept_tls_sni_then_default_drop(sni: str, verdict: str) -> None:
    eng = rules(ALLOW_LIST)
    conn = Tcp(eng)
    syn, syn_ack, ack = conn.handshake()
    assert [d.verdict for d in (syn, syn_ack, ack)] == ["accept"] * 3
    assert syn.reason == APP_PENDING and ack.reason == APP_PENDING
    first, second = conn.hello_in_two(sni)
    assert first.reason == APP_PENDING
    assert second.verdict == verdict
    events = app_events(second.effects, "tls")
    if verdict == "drop":
        assert second.rule is None and second.reason == "default"
        assert [e.body["sni"] for e in events] == [sni]  # the refused name, at once
    else:
        assert second.rule is not None and not events


# ---- HTTP, DNS, QUIC, SSH ----------------------------------------------------------------------


def test_http_host_drop_writes_the_request_with_the_drop() -> None:
    eng = rules(
        'drop http host "*.bad.lab" alert "bad host"\naccept state established\n'
        "accept proto tcp to port 80"
    )
    conn = Tcp(eng, dport=80)
    conn.handshake()
    request = (
        b"GET /x?y=1 HTTP/1.1\r\nHost: Www.Bad.Lab:80\r\nUser-Agent: curl/8.0\r\n"
        b"Accept: */*\r\n\r\n"
    )
    decided = conn.send(True, request)
    assert decided.verdict == "drop" and decided.rule is not None
    (event,) = app_events(decided.effects, "http")
    assert event.body["hostname"] == "Www.Bad.Lab" and event.body["url"] == "/x?y=1"
    (alert,) = alerts(decided.effects)
    assert alert.app_layer == {
        "http": {
            "hostname": "www.bad.lab",
            "url": "/x?y=1",
            "http_method": "GET",
            "http_user_agent": "curl/8.0",
        }
    }
    assert_valid_eve(eve_lines(list(decided.effects)))
    good = Tcp(eng, dport=80, sport=40001)
    good.handshake()
    passed = good.send(True, request.replace(b"Www.Bad.Lab", b"ok.lab"))
    assert passed.verdict == "accept" and not app_events(passed.effects, "http")


def dns_datagram(name: str, ident: int, sport: int = 53000) -> bytes:
    return build_packet(PROTO_UDP, CLIENT, SERVER, sport, 53, payload=dns_query(name, ident=ident))


def test_dns_query_reject_answers_nxdomain_and_the_flow_goes_on_being_read() -> None:
    eng = rules(
        'reject dns query "*.bad.lab" to port 53 alert "bad name"\naccept proto udp to port 53'
    )
    good = eng.handle(dns_datagram("ok.lab", 1), now=1.0)
    assert good.verdict == "accept" and good.offload == 0  # every query is judged
    assert [e.body["rrname"] for e in app_events(good.effects, "dns")] == ["ok.lab"]
    bad = eng.handle(dns_datagram("WWW.bad.lab", 2), now=1.1)  # the same socket
    assert bad.verdict == "reject" and bad.reply is not None and bad.peer_reply is None
    answer = IP(bad.reply)
    assert (answer.src, answer.dst, answer[UDP].sport, answer[UDP].dport) == (
        SERVER, CLIENT, 53, 53000,
    )  # fmt: skip
    dns = answer[DNS]
    assert (dns.id, dns.qr, dns.rcode, dns.ancount) == (2, 1, DNS_NXDOMAIN, 0)
    assert dns.qd[0].qname == b"WWW.bad.lab."
    (event,) = app_events(bad.effects, "dns")
    assert event.body["rrname"] == "WWW.bad.lab" and event.body["type"] == "query"
    (alert,) = alerts(bad.effects)
    assert alert.app_layer == {
        "dns": {"version": 2, "query": [{"type": "query", "rrname": "www.bad.lab"}]}
    }
    # The DNS flow is still read: the next query on the same socket is judged on its name.
    (flow,) = eng.flows.flows()
    assert flow.app_state is not None
    after = eng.handle(dns_datagram("ok.lab", 3), now=1.2)
    assert after.verdict == "accept" and flow.app.dns_queries == ("ok.lab",)  # type: ignore[union-attr]
    lines = eve_lines(list(bad.effects))
    assert next(r for r in lines if r["event_type"] == "alert")["dns"]["query"][0]["rrname"]
    assert_valid_eve(lines)


def test_quic_sni_drop_with_a_real_initial() -> None:
    pytest.importorskip("aioquic")
    from tests.pure.test_app_tls_quic import aioquic_initials

    eng = rules('drop quic sni "blocked.lab" alert "blocked"\naccept proto udp to port 443')
    got: list[Decision] = []
    for sport, name in ((50000, "Blocked.Lab"), (50001, "ok.lab")):
        for datagram in aioquic_initials(name, ["h3"]):
            packet = build_packet(PROTO_UDP, CLIENT, SERVER, sport, 443, payload=datagram)
            got.append(eng.handle(packet, now=1.0))
    blocked, ok = got
    assert blocked.verdict == "drop" and ok.verdict == "accept"
    (event,) = app_events(blocked.effects, "quic")
    assert event.body["sni"] == "Blocked.Lab" and event.body["version"] == "1"
    (alert,) = alerts(blocked.effects)
    assert alert.app_layer is not None and alert.app_layer["quic"]["sni"] == "blocked.lab"
    assert alert.app_layer["quic"]["ja4"].startswith("q13d")
    assert [e.body["sni"] for e in app_events(ok.effects, "quic")] == ["ok.lab"]
    assert_valid_eve(eve_lines(list(blocked.effects) + list(ok.effects)))


def test_app_ssh_drop_writes_the_client_banner() -> None:
    eng = rules('drop app ssh alert "ssh anywhere"\naccept state established\naccept proto tcp')
    conn = Tcp(eng, dport=2222)
    syn, _syn_ack, _ack = conn.handshake()
    assert syn.reason == APP_PENDING  # `app ssh` waits for the protocol to be named
    decided = conn.send(True, b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
    assert decided.verdict == "drop" and decided.rule is not None
    (event,) = app_events(decided.effects, "ssh")
    assert event.body["client"]["software_version"] == "OpenSSH_9.2p1"
    (alert,) = alerts(decided.effects)
    assert alert.app_proto == "ssh"
    assert alert.app_layer == {"ssh": {"client": {"software_version": "OpenSSH_9.2p1"}}}
    assert_valid_eve(eve_lines(list(decided.effects)))


# ---- fingerprints from the oracles -------------------------------------------------------------


def oracle_ja4(stream: bytes) -> str:
    """ja4plus's JA4 of the hello, from its own scapy reader."""
    pytest.importorskip("ja4plus")
    from ja4plus import JA4Fingerprinter
    from scapy.packet import Raw

    packet = IP(src=CLIENT, dst=SERVER) / TCP(sport=40000, dport=443, flags="PA") / Raw(stream)
    found = JA4Fingerprinter().process_packet(IP(bytes(packet)))
    assert isinstance(found, str)
    return found


def oracle_ja3(stream: bytes, tmp_path: Path) -> str:
    """tshark's JA3 hash of the hello, from a capture of it written here."""
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark not installed (scripts/setup.sh)")
    from scapy.packet import Raw
    from scapy.utils import wrpcap

    path = tmp_path / "hello.pcap"
    ip, back = IP(src=CLIENT, dst=SERVER), IP(src=SERVER, dst=CLIENT)
    wrpcap(
        str(path),
        [
            ip / TCP(sport=40000, dport=443, flags="S", seq=999),
            back / TCP(sport=443, dport=40000, flags="SA", seq=4999, ack=1000),
            ip / TCP(sport=40000, dport=443, flags="A", seq=1000, ack=5000),
            ip / TCP(sport=40000, dport=443, flags="PA", seq=1000, ack=5000) / Raw(stream),
        ],
    )
    out = subprocess.run(
        [tshark, "-r", str(path), "-Y", "tls.handshake.type == 1", "-T", "fields",
         "-e", "tls.handshake.ja3"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout.split()  # fmt: skip
    assert len(out) == 1
    return out[0]


@pytest.mark.parametrize("clause", ["ja3", "ja4"])
def test_tls_fingerprint_rules_with_the_oracles_values(clause: str, tmp_path: Path) -> None:
    stream = hello_bytes("fp.lab")
    value = oracle_ja3(stream, tmp_path) if clause == "ja3" else oracle_ja4(stream)
    eng = rules(
        f'drop tls {clause} "{value}" to port 443\naccept state established\n'
        "accept proto tcp to port 443"
    )
    conn = Tcp(eng)
    conn.handshake()
    _first, second = conn.hello_in_two("fp.lab")
    assert second.verdict == "drop" and second.rule is not None
    other = Tcp(eng, sport=40001)
    other.handshake()
    # Another client, whose hello offers fewer ciphers: other fingerprints, accepted.
    stream = records(client_hello_message(chrome_like_extensions("fp.lab"), [0x1301, 0x1302]))
    passed = other.send(True, stream)
    assert passed.verdict == "accept"
