"""Hypothesis over every application parser: random and mutated inputs, never an exception.

Each parser's contract: a value, None (need more bytes) or a `Malformed` whose reason is one
of the module's REASONS. bench/fuzz_app_proto.py runs the same contracts under atheris for
a million inputs and more.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ips.app import dns, http, ssh
from ips.app.detect import APP_UNKNOWN, detect_datagram, detect_stream
from ips.core.packet import Malformed
from tests.pure.test_app_parsers import dns_query, dns_response

SEEDS = [
    dns_response(),
    dns_query(),
    b"GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n",
    b"\x16\x03\x01\x00\x40\x01\x00\x00\x3c\x03\x03",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.integers(0, 3))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == 0 and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == 1:
            data = data[:pos]
        elif kind == 2:
            data[pos:pos] = draw(st.binary(max_size=16))
        elif data:
            data[pos] = 0xC0  # a compression pointer, anywhere
    return bytes(data)


inputs = st.one_of(st.binary(max_size=600), mutated())


def check_dns(data: bytes) -> None:
    got = dns.parse_message(data)
    assert isinstance(got, dns.DnsMessage) or got.reason in dns.REASONS
    if isinstance(got, dns.DnsMessage):
        for rec in (*got.answers, *got.authorities, *got.additionals):
            assert len(rec.name) < 4 * 256  # escaped, but bounded
        dns.eve_dns(got)
    messages, used = dns.parse_tcp_stream(data)
    assert 0 <= used <= len(data)
    for m in messages:
        assert isinstance(m, dns.DnsMessage) or m.reason in dns.REASONS


def check_http(data: bytes) -> None:
    requests, used, why = http.parse_requests(data)
    assert 0 <= used <= len(data) and len(requests) <= http.MAX_MESSAGES
    assert why in (http.END, http.INCOMPLETE) or why.reason in http.REASONS  # type: ignore[union-attr]
    for r in requests:
        http.eve_http(r, None)
    responses, used, why = http.parse_responses(data, [r.method for r in requests])
    assert 0 <= used <= len(data)
    assert isinstance(why, str) or why.reason in http.REASONS
    for r in responses:
        http.eve_http(None, r)


def check_ssh(data: bytes) -> None:
    for server in (False, True):
        got = ssh.parse_banner(data, server=server)
        assert got is None or isinstance(got, ssh.SshBanner) or got.reason in ssh.REASONS


@settings(max_examples=3000, deadline=None)
@given(inputs)
def test_every_parser_on_random_and_mutated_input(data: bytes) -> None:
    assert detect_stream(data) in (None, APP_UNKNOWN, "tls", "http", "dns", "ssh")
    assert detect_datagram(data) in (APP_UNKNOWN, "dns", "quic")
    check_dns(data)
    check_http(data)
    check_ssh(data)


@settings(max_examples=2000, deadline=None)
@given(inputs, st.binary(max_size=60))
def test_detection_at_an_offset_reads_what_a_copy_would(data: bytes, before: bytes) -> None:
    # The engine hands a packet and its payload's offset to detection, not a copy.
    whole = before + data
    assert detect_stream(whole, len(before)) == detect_stream(data)
    assert detect_datagram(whole, len(before)) == detect_datagram(data)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 300))
def test_dns_pointer_chains_end(depth: int) -> None:
    # A chain of pointers, each one back to the previous: walks end, names stay bounded.
    head = bytearray(b"\x00\x01\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00")
    head += b"\x01a\x00\x00\x01\x00\x01"
    for i in range(depth):
        target = 12 if i == 0 else len(head) - 8
        head += b"\x01b" + bytes((0xC0 | (target >> 8), target & 0xFF)) + b"\x00\x01\x00\x01"
    head[5] = min(depth + 1, 255)
    got = dns.parse_message(bytes(head))
    assert isinstance(got, dns.DnsMessage) or got == Malformed("dns.name-too-long")
