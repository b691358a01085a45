"""The TCP reassembler: in order across segments, first-seen wins, bounded, counted."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from ips.app.detect import APP_TLS, detect_stream
from ips.app.reassembly import (
    R_BEFORE_START,
    R_BEYOND_LIMIT,
    R_MEMCAP,
    R_OVERLAP_CONFLICT,
    R_RETRANSMISSION,
    R_TOO_MANY_PIECES,
    Reassembler,
)
from ips.core.build import build_packet
from ips.core.decode import decode_l3
from ips.core.packet import PROTO_TCP, TCP_ACK, TCP_PSH, TCP_SYN, Packet


def client_hello(size: int) -> bytes:
    """A TLS record carrying a ClientHello of about `size` bytes (a post-quantum key share
    makes real ones ~1.8 KB, more than one segment)."""
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    ext = b"\x00\x33" + struct.pack("!H", size) + bytes(size)  # key_share, padded
    body += struct.pack("!H", len(ext)) + ext
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def test_client_hello_across_two_segments_comes_out_whole() -> None:
    hello = client_hello(1700)
    r = Reassembler()
    s = r.open()
    isn = 0xFFFFFF00  # the sequence numbers wrap inside the ClientHello
    r.add(s, True, isn, TCP_SYN, b"")
    first, second = hello[:1400], hello[1400:]
    assert r.add(s, True, isn + 1, TCP_ACK, first) == 1400
    assert detect_stream(s.data(True)) == APP_TLS
    assert r.add(s, True, (isn + 1 + 1400) & 0xFFFFFFFF, TCP_PSH | TCP_ACK, second) == len(second)
    assert s.data(True) == hello
    assert r.used == len(hello)
    r.close(s)
    assert r.used == 0


def test_segments_out_of_order_are_held_then_delivered() -> None:
    hello = client_hello(1700)
    r = Reassembler()
    s = r.open()
    r.add(s, True, 100, TCP_SYN, b"")
    assert r.add(s, True, 101 + 1000, TCP_ACK, hello[1000:]) == 0  # the second half first
    assert s.data(True) == b""
    assert r.add(s, True, 101, TCP_ACK, hello[:1000]) == len(hello)
    assert s.data(True) == hello


def test_through_decoded_packets() -> None:
    hello = client_hello(1700)
    r = Reassembler()
    s = r.open()
    for seq, flags, payload in ((7, TCP_SYN, b""), (8, TCP_ACK, hello[:900]),
                                (908, TCP_ACK, hello[900:])):  # fmt: skip
        pkt = decode_l3(build_packet(PROTO_TCP, "10.0.0.1", "10.0.0.2", 5555, 443, flags=flags,
                                     seq=seq, payload=payload))  # fmt: skip
        assert isinstance(pkt, Packet)
        r.add_packet(s, True, pkt)
    assert s.data(True) == hello


def test_first_seen_wins_and_a_different_copy_is_counted() -> None:
    r = Reassembler()
    s = r.open()
    r.add(s, True, 0, TCP_SYN, b"")
    r.add(s, True, 1, TCP_ACK, b"GET / HTTP/1.1\r\n")
    r.add(s, True, 1, TCP_ACK, b"GET / HTTP/1.1\r\n")  # plain retransmission
    r.add(s, True, 5, TCP_ACK, b"/etc/passwd HTTP/1.1\r\n")  # rewrites "/ HTTP" and more
    assert s.data(True).startswith(b"GET / HTTP/1.1\r\n")
    assert r.counters[R_RETRANSMISSION] == 2
    assert r.counters[R_OVERLAP_CONFLICT] == 1
    # Out of order too: the first held copy wins over a later one and over the in-order fill.
    r.add(s, True, 40, TCP_ACK, b"AAAA")
    r.add(s, True, 38, TCP_ACK, b"BBBBBB")
    r.add(s, True, 1 + 16, TCP_ACK, b"x" * 30)
    # Stream offsets: "/etc/passwd..." delivered 16..25; BB held at 37-38, AAAA at 39-42.
    assert s.data(True)[26:] == b"x" * 11 + b"BB" + b"AAAA" + b"x" * 3
    assert r.counters[R_OVERLAP_CONFLICT] == 4


def test_bounded_per_direction_and_counted() -> None:
    r = Reassembler(limit=100)
    s = r.open()
    r.add(s, False, 5000, TCP_SYN | TCP_ACK, b"")
    assert r.add(s, False, 5001, TCP_ACK, b"a" * 150) == 100
    assert s.to_client.complete
    assert r.add(s, False, 5151, TCP_ACK, b"b" * 10) == 0
    assert r.counters[R_BEYOND_LIMIT] == 2
    assert len(s.data(False)) == 100


def test_mid_stream_pickup_and_data_before_the_start() -> None:
    r = Reassembler()
    s = r.open()
    assert r.add(s, True, 10_000, TCP_ACK, b"") == 0  # a bare ACK fixes nothing
    assert r.add(s, True, 10_000, TCP_ACK, b"hello") == 5
    assert r.add(s, True, 9_990, TCP_ACK, b"0123456789hello world") == 6
    assert s.data(True) == b"hello world"
    assert r.counters[R_BEFORE_START] == 1
    assert r.add(s, True, 9_000, TCP_ACK, b"old") == 0
    assert r.counters[R_BEFORE_START] == 2


def test_global_memory_cap_and_piece_cap() -> None:
    r = Reassembler(limit=1000, memory_cap=1500, max_pieces=3)
    a, b = r.open(), r.open()
    r.add(a, True, 0, TCP_SYN, b"")
    r.add(b, True, 0, TCP_SYN, b"")
    assert r.add(a, True, 1, TCP_ACK, b"x" * 1000) == 1000
    assert r.add(b, True, 1, TCP_ACK, b"y" * 600) == 0
    assert r.counters[R_MEMCAP] == 1
    assert r.used == 1000
    r.close(a)
    assert r.used == 0
    for off in (10, 20, 30):
        r.add(b, True, 1 + off, TCP_ACK, b"z")
    r.add(b, True, 1 + 40, TCP_ACK, b"z")
    assert r.counters[R_TOO_MANY_PIECES] == 1
    assert r.used == 3


def test_closed_flow_costs_nothing() -> None:
    r = Reassembler()
    s = r.open()
    r.add(s, True, 0, TCP_SYN, b"")
    r.add(s, True, 1, TCP_ACK, b"abc")
    r.close(s)
    r.close(s)
    assert r.add(s, True, 4, TCP_ACK, b"def") == 0
    assert r.used == 0


# ---- a model: first-seen bytes, in order from the start, within the bound ---------------------

segments = st.lists(
    st.tuples(st.integers(-50, 5000), st.integers(0, 1500), st.integers(0, 255)),
    max_size=40,
)


@settings(max_examples=400, deadline=None)
@given(
    isn=st.one_of(st.integers(0, 2**32 - 1), st.integers(2**32 - 3000, 2**32 - 1)),
    segs=segments,
    limit=st.sampled_from((1, 100, 1460, 4096)),
)
def test_matches_the_first_seen_model(isn: int, segs: list, limit: int) -> None:
    r = Reassembler(limit=limit, memory_cap=1 << 30, max_pieces=1 << 20)
    s = r.open()
    r.add(s, True, isn, TCP_SYN, b"")
    model: list[int | None] = [None] * limit
    for off, length, fill in segs:
        payload = bytes((fill + i) & 0xFF for i in range(length))
        r.add(s, True, (isn + 1 + off) & 0xFFFFFFFF, TCP_ACK, payload)
        for i in range(max(0, -off), length):
            if off + i < limit and model[off + i] is None:
                model[off + i] = payload[i]
    expected = bytearray()
    for byte in model:
        if byte is None:
            break
        expected.append(byte)
    assert s.data(True) == bytes(expected)
    assert r.used == s.to_server.held <= limit
    r.close(s)
    assert r.used == 0


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.integers(0, 7),
            st.booleans(),
            st.integers(0, 2**32 - 1),
            st.integers(0, 255),
            st.binary(max_size=600),
            st.booleans(),
        ),
        max_size=60,
    )
)
def test_never_raises_and_memory_stays_bounded(ops: list) -> None:
    r = Reassembler(limit=512, memory_cap=2048, max_pieces=8)
    flows = [r.open() for _ in range(8)]
    for i, to_server, seq, flags, payload, close in ops:
        r.add(flows[i], to_server, seq, flags, payload)
        assert 0 <= r.used <= 2048
        assert sum(f.to_server.held + f.to_client.held for f in flows if not f.closed) == r.used
        if close:
            r.close(flows[i])
    for f in flows:
        r.close(f)
    assert r.used == 0
