"""The EVE objects built from DNS, HTTP and SSH results validate against Suricata's schema.

The schema is Suricata's own (etc/schema.json, in ../shared/schemas/, not copied here); every
event below is a whole EVE line, with the community_id of its flow.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eve_schema import eve_validator

from ips.app.community_id import community_id
from ips.app.dns import DnsMessage, eve_dns, parse_message
from ips.app.http import eve_http, parse_requests, parse_responses
from ips.app.ssh import SshBanner, eve_ssh, parse_banner
from ips.core.addr import parse_addr
from ips.core.packet import PROTO_TCP, PROTO_UDP
from tests.pure.test_app_oracle import Capture
from tests.pure.test_app_parsers import dns_query, dns_response


@pytest.fixture(scope="module")
def validator() -> object:
    return eve_validator()


def line(event_type: str, proto: int, body: dict[str, object]) -> dict[str, object]:
    src, dst = parse_addr("192.0.2.10"), parse_addr("198.51.100.53")
    return {
        "timestamp": "2026-12-05T10:00:00.000000+0000",
        "event_type": event_type,
        "src_ip": "192.0.2.10", "src_port": 40000,
        "dest_ip": "198.51.100.53", "dest_port": 53 if event_type == "dns" else 80,
        "proto": "TCP" if proto == PROTO_TCP else "UDP",
        "community_id": community_id(proto, src, dst, 40000, 53),
        event_type: body,
    }  # fmt: skip


def valid(validator: object, event: dict[str, object]) -> None:
    errors = sorted(validator.iter_errors(event), key=str)  # type: ignore[attr-defined]
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]
    json.dumps(event)  # and it serialises


def test_dns_query_and_answer_events(validator: object) -> None:
    for raw in (dns_query(), dns_response()):
        msg = parse_message(raw)
        assert isinstance(msg, DnsMessage)
        for obj in eve_dns(msg):
            valid(validator, line("dns", PROTO_UDP, obj))
    answer = eve_dns(parse_message(dns_response()))[0]  # type: ignore[arg-type]
    kinds = {a["rrtype"] for a in answer["answers"]}  # type: ignore[union-attr]
    assert kinds == {"A", "AAAA", "CNAME", "NS", "PTR", "MX", "TXT", "SRV"}
    assert answer["authorities"][0]["soa"]["serial"] == 7  # type: ignore[index]


def test_events_from_the_shared_captures(validator: object, pcaps_dir: Path) -> None:
    count = 0
    for name in ("sv_tls-subjectaltname_input.pcap", "td_dns_tcp.pcap", "zk_http-bro.org.pcap"):
        capture = Capture(pcaps_dir / name)
        for _frame, pkt, payload in capture.udp:
            if 53 in (pkt.sport, pkt.dport):
                msg = parse_message(payload)
                assert isinstance(msg, DnsMessage)
                for obj in eve_dns(msg):
                    valid(validator, line("dns", PROTO_UDP, obj))
                    count += 1
        for streams, _server in capture.tcp.values():
            requests, _u, _w = parse_requests(streams.data(True))
            responses, _u, _w = parse_responses(streams.data(False), [r.method for r in requests])
            for i, request in enumerate(requests):
                response = responses[i] if i < len(responses) else None
                valid(validator, line("http", PROTO_TCP, eve_http(request, response)))
                count += 1
    assert count >= 100


def test_ssh_event(validator: object) -> None:
    client = parse_banner(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
    server = parse_banner(b"SSH-2.0-dropbear_2022.83\r\n", server=True)
    assert isinstance(client, SshBanner) and isinstance(server, SshBanner)
    obj = eve_ssh(client, server)
    assert obj == {
        "client": {"proto_version": "2.0", "software_version": "OpenSSH_9.2p1"},
        "server": {"proto_version": "2.0", "software_version": "dropbear_2022.83"},
    }
    valid(validator, line("ssh", PROTO_TCP, obj))


def test_a_wrong_object_is_caught(validator: object) -> None:
    bad = line("dns", PROTO_UDP, {"version": 2, "type": "answer", "answers": "not a list"})
    assert list(validator.iter_errors(bad))  # type: ignore[attr-defined]
