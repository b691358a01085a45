"""What the application layer adds to detector alerts, flow records and the flows view
(issue 20 follow-up): detector alerts carry the flow's app_proto and passive DNS name like
rule alerts, and an ICMP detector alert's Community ID hashes the type and code; flows show
the SNI or HTTP host the client sent (the NAME column falls back to it when passive DNS had
no name); QUIC's EVE `version` is written as Suricata 7 writes it."""

from __future__ import annotations

import io
import json

from packets import ping, udp

from ips.app.alert_fields import alert_app_objects
from ips.app.community_id import community_id, community_id_packet
from ips.app.dns import DnsMessage
from ips.app.inspect import quic_version_text
from ips.core.addr import parse_addr
from ips.core.app_fields import AppFields
from ips.core.build import build_packet
from ips.core.decode import decode_l3
from ips.core.events import Alert, FlowEnd
from ips.core.packet import PROTO_TCP, TCP_ACK, TCP_PSH, TCP_SYN, Packet
from ips.engine import Engine
from ips.policy.resolve import load_policy_text
from ips.sinks.eve import EveWriter, alert_record, flow_line, flow_record
from ips.views.flows import flows_csv, format_flows, select_flows
from ips.views.top import alert_name
from tests.pure.test_app_parsers import dns_query
from tests.pure.test_app_tls import chrome_like_extensions, client_hello_message, records

ATTACKER, VICTIM = "10.9.0.1", "10.0.0.10"


class Names:
    """Passive DNS that knows one name: the victim's."""

    def learn(self, msg: DnsMessage, now: float) -> int:
        return 0

    def name_of(self, addr: bytes, now: float) -> str | None:
        return "victim.lab" if addr == parse_addr(VICTIM) else None


def flood_alerts(detect: str, packets: list[bytes]) -> list[Alert]:
    engine = Engine(load_policy_text(f"set default accept\n{detect}", "t.rules"), names=Names())
    found: list[Alert] = []
    for i, packet in enumerate(packets):
        decision = engine.handle(packet, now=1000.0 + i * 0.001)
        found += [e for e in decision.effects if isinstance(e, Alert)]
    return found


def test_an_icmp_detector_alert_hashes_type_and_code_and_names_the_victim() -> None:
    pings = [ping(ATTACKER, VICTIM, ident=1) for _ in range(300)]
    (alert, *_) = flood_alerts("detect icmpflood rate 100/s per dst limit", pings)
    assert alert.category == "icmpflood"
    assert alert.icmp == 8 << 8 and alert.dst_name == "victim.lab"
    record = alert_record(alert)
    echo = decode_l3(pings[0])
    assert isinstance(echo, Packet)
    assert record["community_id"] == community_id_packet(echo)
    assert record["community_id"] == community_id(1, echo.src, echo.dst, 8, 0)
    assert record["ipsctl"]["dst_name"] == "victim.lab"


def test_a_detector_alert_carries_the_flows_app_proto() -> None:
    queries = [udp(ATTACKER, VICTIM, 50000, 53, payload=dns_query(ident=i)) for i in range(300)]
    (alert, *_) = flood_alerts("detect udpflood rate 100/s per dst limit", queries)
    assert alert.category == "udpflood" and alert.app_proto == "dns"
    record = alert_record(alert)
    assert record["app_proto"] == "dns" and record["ipsctl"]["dst_name"] == "victim.lab"


def test_quic_version_as_suricata_7_writes_it() -> None:
    assert quic_version_text(1) == "1"  # QUIC v1
    assert quic_version_text(0xFF00001D) == "ff00001d"  # draft 29
    assert quic_version_text(0x6B3343CF) == "6b3343cf"  # v2
    assert quic_version_text(0x51303436) == "Q046"  # Google's tags by their letters


def test_alert_objects_hold_only_what_is_known() -> None:
    app = AppFields()
    assert alert_app_objects(None, "tls") is None
    assert alert_app_objects(app, "tls") is None  # nothing read yet
    assert alert_app_objects(app, "") is None
    app.tls_sni = "a.lab"
    app.tls_ja3s = "0" * 32
    assert alert_app_objects(app, "tls") == {"tls": {"sni": "a.lab", "ja3s": {"hash": "0" * 32}}}
    app.http_host = "h.lab"
    assert alert_app_objects(app, "http") == {"http": {"hostname": "h.lab"}}
    app.quic_sni = "q.lab"
    assert alert_app_objects(app, "quic") == {"quic": {"sni": "q.lab"}}
    app.ssh_server = "dropbear"
    assert alert_app_objects(app, "ssh") == {"ssh": {"server": {"software_version": "dropbear"}}}


def test_top_names_an_alert_by_passive_dns_then_by_what_its_client_sent() -> None:
    assert alert_name({"ipsctl": {"dst_name": "p.lab"}, "tls": {"sni": "s.lab"}}) == "p.lab"
    assert alert_name({"tls": {"sni": "s.lab"}}) == "s.lab"
    assert alert_name({"quic": {"sni": "q.lab"}}) == "q.lab"
    assert alert_name({"http": {"hostname": "h.lab"}}) == "h.lab"
    assert alert_name({}) is None


# ---- flows: the server name the application layer read -----------------------------------------


def tls_and_http_engine() -> Engine:
    """Two connections, neither named by passive DNS: TLS to .10:443 (SNI "web.corp.lab")
    and HTTP to .11:80 (Host "wiki.corp.lab"); a third, to .12, that passive DNS names
    (its SNI "x.example")."""

    class OneName(Names):
        def name_of(self, addr: bytes, now: float) -> str | None:
            return "named.lab" if addr == parse_addr("10.0.0.12") else None

    engine = Engine(load_policy_text("set default accept", "t.rules"), names=OneName())
    hello = records(client_hello_message(chrome_like_extensions("Web.Corp.Lab", pq=False)))
    request = b"GET / HTTP/1.1\r\nHost: Wiki.Corp.Lab:8080\r\n\r\n"
    for dst, dport, payload in (
        ("10.0.0.10", 443, hello),
        ("10.0.0.11", 80, request),
        ("10.0.0.12", 443, records(client_hello_message(chrome_like_extensions("x.example")))),
    ):
        engine.handle(build_packet(PROTO_TCP, "10.1.0.1", dst, 40000, dport, flags=TCP_SYN,
                                   seq=99), now=1.0)  # fmt: skip
        engine.handle(build_packet(PROTO_TCP, "10.1.0.1", dst, 40000, dport,
                                   flags=TCP_PSH | TCP_ACK, seq=100, payload=payload),
                      now=1.1)  # fmt: skip
    return engine


def test_flows_show_the_sni_and_http_host() -> None:
    engine = tls_and_http_engine()
    found = select_flows(engine.flows.flows(), 2.0, sort="duration")
    rows = {r["dst"]: r for r in found["flows"]}
    assert (rows["10.0.0.10"]["sni"], rows["10.0.0.10"]["http_host"]) == ("web.corp.lab", None)
    assert (rows["10.0.0.11"]["sni"], rows["10.0.0.11"]["http_host"]) == (None, "wiki.corp.lab")
    assert rows["10.0.0.12"]["dst_name"] == "named.lab"
    assert json.loads(json.dumps(found))["flows"]  # --json: plain values
    table = format_flows(found["flows"], found["total"])
    names = {line.split()[3].split(":")[0]: line.split()[-1] for line in table.splitlines()[1:-1]}
    assert names == {"10.0.0.10": "web.corp.lab", "10.0.0.11": "wiki.corp.lab",
                     "10.0.0.12": "named.lab"}  # fmt: skip
    assert "sni,http_host" in flows_csv(found["flows"]).splitlines()[0]
    only = select_flows(engine.flows.flows(), 2.0, filter_text="name *.corp.lab")
    assert {r["dst"] for r in only["flows"]} == {"10.0.0.10", "10.0.0.11"}
    exact = select_flows(engine.flows.flows(), 2.0, filter_text="name wiki.corp.lab")
    assert [r["dst"] for r in exact["flows"]] == ["10.0.0.11"]
    anything = select_flows(engine.flows.flows(), 2.0, filter_text="name *")
    assert anything["total"] == 3
    groups = select_flows(engine.flows.flows(), 2.0, group="dst")["groups"]
    assert {g["key"]: g["name"] for g in groups} == {
        "10.0.0.10": "web.corp.lab", "10.0.0.11": "wiki.corp.lab", "10.0.0.12": "named.lab",
    }  # fmt: skip


def test_flow_records_carry_the_sni_and_http_host() -> None:
    engine = tls_and_http_engine()
    ends = [e for e in engine.drain(3.0) if isinstance(e, FlowEnd)]
    by_dst = {e.flow.dst: e for e in ends}
    for dst, own in (
        ("10.0.0.10", {"sni": "web.corp.lab"}),
        ("10.0.0.11", {"http_host": "wiki.corp.lab"}),
        ("10.0.0.12", {"dst_name": "named.lab", "sni": "x.example"}),
    ):
        end = by_dst[parse_addr(dst)]
        record = flow_record(end)
        assert record["ipsctl"] == own
        assert flow_line(end) == json.dumps(record, separators=(",", ":"))
    out = io.StringIO()
    EveWriter(out).events(ends)
    assert out.getvalue().count('"ipsctl":{') == 3
