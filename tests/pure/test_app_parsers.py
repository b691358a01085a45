"""Detection, DNS, HTTP and SSH parsers on hand-made inputs, the hostile ones above all."""

from __future__ import annotations

import struct

from ips.app.community_id import community_id
from ips.app.detect import (
    APP_DNS,
    APP_HTTP,
    APP_QUIC,
    APP_SSH,
    APP_TLS,
    APP_UNKNOWN,
    detect_datagram,
    detect_stream,
)
from ips.app.dns import (
    REASONS as DNS_REASONS,
)
from ips.app.dns import (
    DnsMessage,
    DnsMx,
    DnsSoa,
    DnsSrv,
    parse_message,
    parse_tcp_stream,
)
from ips.app.http import (
    END,
    INCOMPLETE,
    UNTIL_CLOSE,
    parse_requests,
    parse_responses,
    split_host,
)
from ips.app.ssh import SshBanner, parse_banner
from ips.core.addr import parse_addr
from ips.core.packet import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Malformed


def qname(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p) + b"\x00"


def dns_query(name: str = "example.com", qtype: int = 1, ident: int = 0x1234) -> bytes:
    return (
        struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)
        + qname(name)
        + struct.pack("!HH", qtype, 1)
    )


def rr(name: bytes, rtype: int, rdata: bytes, ttl: int = 300) -> bytes:
    return name + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata


def dns_response() -> bytes:
    head = struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 8, 1, 0) + qname("example.com")
    head += struct.pack("!HH", 1, 1)
    ptr = b"\xc0\x0c"  # example.com at offset 12
    answers = [
        rr(ptr, 1, bytes((192, 0, 2, 1))),
        rr(ptr, 28, parse_addr("2001:db8::1")),
        rr(ptr, 5, b"\x03www" + ptr),
        rr(ptr, 2, b"\x02ns" + ptr),
        rr(ptr, 12, qname("host.example.net")),
        rr(ptr, 15, b"\x00\x0a\x04mail" + ptr),
        rr(ptr, 16, b"\x05hello\x05world"),
        rr(ptr, 33, struct.pack("!HHH", 1, 2, 443) + b"\x03svc" + ptr),
    ]
    soa = rr(ptr, 6, b"\x02ns" + ptr + b"\x05admin" + ptr + struct.pack("!IIIII", 7, 1, 2, 3, 4))
    return head + b"".join(answers) + soa


# ---- detection ---------------------------------------------------------------------------------


def test_detection_by_content_whatever_the_port() -> None:
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
    assert detect_stream(hello) == APP_TLS
    assert detect_stream(b"\x16\x03") is None  # wait for the handshake type
    assert detect_stream(b"GET /x HTTP/1.1\r\n") == APP_HTTP
    assert detect_stream(b"GE") is None
    assert detect_stream(b"HTTP/1.1 200 OK\r\n") == APP_HTTP
    assert detect_stream(b"SSH-2.0-OpenSSH_9.2\r\n") == APP_SSH
    assert detect_stream(b"SS") is None
    q = dns_query()
    assert detect_stream(struct.pack("!H", len(q)) + q) == APP_DNS
    assert detect_stream(struct.pack("!H", len(q)) + q[:14]) is None  # question to come
    assert detect_stream(b"\x00\x00\x00\x00 random binary protocol") == APP_UNKNOWN
    assert detect_stream(b"EHLO mail.example\r\n") == APP_UNKNOWN
    # Fewer bytes than a DNS header: unknown as soon as the bytes that came rule it out
    # (not at the flow's first FIN), and still waiting while they could start one.
    assert detect_stream(b"storm-1\n") == APP_UNKNOWN  # opcode 13 in the flags' place
    assert detect_stream(b"hey") is None  # "he" a length, "y" an id's first byte
    assert detect_stream(b"hello") == APP_UNKNOWN  # "o" as flags: opcode 13
    for cut in range(2, 14):  # a query's every start can still be DNS
        assert detect_stream(struct.pack("!H", len(q)) + q[: cut - 2]) is None
    assert detect_stream(struct.pack("!HHHH", 40, 1, 0x0100, 2)) == APP_UNKNOWN  # 2 questions
    assert detect_stream(struct.pack("!HHHHBB", 40, 1, 0x0100, 1, 1, 1)) == APP_UNKNOWN  # 257
    assert detect_stream(struct.pack("!HHHHB", 40, 1, 0x0100, 1, 1)) is None  # 256 may come
    assert detect_datagram(q) == APP_DNS
    assert detect_datagram(dns_response()) == APP_DNS
    initial = b"\xc3\x00\x00\x00\x01\x08" + bytes(8) + b"\x00" + bytes(1200)
    assert detect_datagram(initial) == APP_QUIC
    assert detect_datagram(b"\xc3\x00\x00\x00\x02\x08" + bytes(1210)) == APP_UNKNOWN  # v2
    assert detect_datagram(b"\xe3\x00\x00\x00\x01\x08" + bytes(1210)) == APP_UNKNOWN  # 0-RTT
    assert detect_datagram(b"") == APP_UNKNOWN


# ---- DNS ---------------------------------------------------------------------------------------


def test_dns_every_decoded_type() -> None:
    msg = parse_message(dns_response())
    assert isinstance(msg, DnsMessage)
    assert msg.qr and msg.rcode == 0 and msg.questions[0].name == "example.com"
    rdata = [a.rdata for a in msg.answers]
    assert rdata == [
        "192.0.2.1", "2001:db8::1", "www.example.com", "ns.example.com", "host.example.net",
        DnsMx(10, "mail.example.com"), (b"hello", b"world"), DnsSrv(1, 2, 443, "svc.example.com"),
    ]  # fmt: skip
    assert msg.authorities[0].rdata == DnsSoa("ns.example.com", "admin.example.com", 7, 1, 2, 3, 4)
    assert msg.answers[0].ttl == 300


def test_dns_pointer_loops_and_forward_pointers_are_malformed() -> None:
    head = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0)
    assert parse_message(head + b"\xc0\x0c" + b"\x00\x01\x00\x01").reason == (  # type: ignore[union-attr]
        "dns.pointer-not-backwards"
    )  # points at itself
    assert isinstance(parse_message(head + b"\xc0\x20" + bytes(40)), Malformed)  # forwards
    two = head + b"\x01a\xc0\x0c\x00\x01\x00\x01"  # a label, then back to its own start
    assert parse_message(two) == Malformed("dns.pointer-not-backwards")
    long = head + b"\x3f" + b"a" * 63
    long = long + b"\x3f" + b"a" * 63 + b"\x3f" + b"a" * 63 + b"\x3f" + b"a" * 63 + b"\x00"
    assert parse_message(long + b"\x00\x01\x00\x01") == Malformed("dns.name-too-long")
    assert parse_message(head + b"\x41abc") == Malformed("dns.bad-label-type")
    assert parse_message(b"\x00" * 11) == Malformed("dns.truncated-header")
    assert parse_message(dns_query()[:-2]) == Malformed("dns.truncated-question")
    bad_a = dns_response().replace(b"\x00\x04\xc0\x00\x02\x01", b"\x00\x03\xc0\x00\x02")
    assert parse_message(bad_a) == Malformed("dns.bad-rdata")
    assert set(DNS_REASONS) >= {"dns.pointer-not-backwards", "dns.truncated-record"}


def test_dns_names_cannot_smuggle_dots() -> None:
    head = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0)
    msg = parse_message(head + b"\x07bad.com\x07example\x00\x00\x01\x00\x01")
    assert isinstance(msg, DnsMessage)
    assert msg.questions[0].name == "bad\\046com.example"


def test_dns_over_tcp_several_messages_and_a_partial_one() -> None:
    q1, q2 = dns_query("a.example"), dns_query("b.example", 28)
    stream = struct.pack("!H", len(q1)) + q1 + struct.pack("!H", len(q2)) + q2
    msgs, used = parse_tcp_stream(stream + b"\x00\x40\x12")
    assert [m.questions[0].name for m in msgs] == ["a.example", "b.example"]  # type: ignore[union-attr]
    assert used == len(stream)
    msgs, used = parse_tcp_stream(b"\x00\x03abc")
    assert msgs == [Malformed("dns.tcp-length-too-short")]


# ---- HTTP --------------------------------------------------------------------------------------


def test_http_pipelined_requests_with_bodies_and_folding() -> None:
    stream = (
        b"POST /upload HTTP/1.1\r\nHost: example.com:8080\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 5\r\nUser-Agent: curl/8.0\r\n  (folded)\r\n\r\nhello"
        b"GET /a?b=c HTTP/1.1\nHost: example.com\n\n"
        b"PUT /chunked HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        b"GET /partial HTTP/1.1\r\nHost: exa"
    )
    requests, used, why = parse_requests(stream)
    assert why == INCOMPLETE
    assert stream[used:].startswith(b"GET /partial")
    assert [(r.method, r.uri) for r in requests] == [
        ("POST", "/upload"), ("GET", "/a?b=c"), ("PUT", "/chunked")
    ]  # fmt: skip
    post = requests[0]
    assert post.host == "example.com:8080" and post.content_length == 5
    assert post.user_agent == "curl/8.0 (folded)" and post.content_type == "text/plain"


def test_http_responses_head_and_until_close() -> None:
    stream = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Type: text/html\r\n\r\n"
        b"HTTP/1.1 304 Not Modified\r\n\r\n"
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nbody to the end"
    )
    responses, _used, why = parse_responses(stream, ("HEAD", "GET", "GET"))
    assert [r.status for r in responses] == [200, 304, 200]
    assert why == UNTIL_CLOSE
    assert responses[0].content_type == "text/html" and responses[0].content_length == 10
    _r, _u, why = parse_responses(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert why == END


def test_http_hostile_inputs_give_reasons() -> None:
    assert parse_requests(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n")[2] == Malformed(
        "http.too-many-headers"
    )
    assert parse_requests(b"GET /" + b"a" * 20000)[2] == Malformed("http.headers-too-long")
    assert parse_requests(b"GET / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n")[2] == Malformed(
        "http.bad-content-length"
    )
    assert parse_requests(b"G\x00T / HTTP/1.1\r\n\r\n")[2] == Malformed("http.bad-request-line")
    assert parse_requests(b"GET / HTTP/1.1\r\nno colon\r\n\r\n")[2] == Malformed(
        "http.bad-header-line"
    )
    assert parse_responses(b"HTTP/1.1 20 OK\r\n\r\n")[2] == Malformed("http.bad-status-line")
    bad_chunk = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    assert parse_responses(bad_chunk)[2] == Malformed("http.bad-chunk")
    many = b"GET / HTTP/1.1\r\n\r\n" * 100
    assert parse_requests(many)[2] == Malformed("http.too-many-messages")


# ---- SSH ---------------------------------------------------------------------------------------


def test_ssh_banners() -> None:
    assert parse_banner(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n") == SshBanner(
        "2.0", "OpenSSH_9.2p1", "Debian-2+deb12u3"
    )
    assert parse_banner(b"SSH-1.99-Cisco-1.25\n") == SshBanner("1.99", "Cisco-1.25", "")
    assert parse_banner(b"SSH-2.0-Open") is None  # the rest is in the next segment
    server = b"Welcome\r\nto the gate\r\nSSH-2.0-dropbear_2022.83\r\n"
    assert parse_banner(server, server=True) == SshBanner("2.0", "dropbear_2022.83", "")
    assert parse_banner(server) == Malformed("ssh.not-ssh")  # a client must start with it
    assert parse_banner(b"SSH-" + b"x" * 300) == Malformed("ssh.line-too-long")
    assert parse_banner(b"SSH-2.0\r\n") == Malformed("ssh.bad-banner")
    assert parse_banner(b"x\n" * 5000, server=True) == Malformed("ssh.no-banner")


# ---- community_id: the specification's published vectors -------------------------------------


def test_community_id_spec_vectors() -> None:
    """Published values (seed 0): the specification's TCP example, and the TCP, UDP, SCTP and
    ICMP vectors other implementations test against (Elasticsearch's community_id processor);
    the ICMPv6 neighbour solicitation/advertisement pair is what tshark prints for
    zk_communityid-icmp6.pcap."""
    a, b = parse_addr("128.232.110.120"), parse_addr("66.35.250.204")
    assert community_id(PROTO_TCP, a, b, 34855, 80) == "1:LQU9qZlK+B5F3KDmev6m5PMibrg="
    assert community_id(PROTO_TCP, b, a, 80, 34855) == "1:LQU9qZlK+B5F3KDmev6m5PMibrg="
    u1, u2 = parse_addr("192.168.1.52"), parse_addr("8.8.8.8")
    assert community_id(PROTO_UDP, u1, u2, 54585, 53) == "1:d/FP5EW3wiY1vCndhwleRRKHowQ="
    s1, s2 = parse_addr("192.168.170.8"), parse_addr("192.168.170.56")
    assert community_id(132, s1, s2, 7, 7) == "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs="
    i1, i2 = parse_addr("192.168.0.89"), parse_addr("192.168.0.1")
    assert community_id(PROTO_ICMP, i1, i2, 8, 0) == "1:X0snYXpgwiv9TZtqg64sgzUn6Dk="
    assert community_id(PROTO_ICMP, i2, i1, 0, 0) == "1:X0snYXpgwiv9TZtqg64sgzUn6Dk="
    v1, v2 = parse_addr("fe80::200:86ff:fe05:80da"), parse_addr("fe80::260:97ff:fe07:69ea")
    assert community_id(PROTO_ICMPV6, v1, v2, 135, 0) == "1:dGHyGvjMfljg6Bppwm3bg0LO8TY="
    assert community_id(PROTO_ICMPV6, v2, v1, 136, 0) == "1:dGHyGvjMfljg6Bppwm3bg0LO8TY="


def test_non_ascii_digits_are_not_numbers() -> None:
    # "²".isdigit() is True but int("²") raises: found by hypothesis in a Content-Length and
    # a Host port. Such a length is malformed, such a port is part of the name.
    stream = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: ²\r\n\r\n".encode()
    why = parse_requests(stream)[2]
    assert isinstance(why, Malformed) and why.reason == "http.bad-content-length"
    assert split_host("example.com:²") == ("example.com:²", None)
    assert split_host("[2001:db8::1]:²") == ("2001:db8::1", None)
    assert split_host("example.com:8080") == ("example.com", 8080)
