"""One flow's packets from a script of bytes, driven through the application-layer inspector,
with its contract checked after every packet. Shared by the atheris harness
(bench/fuzz_app_inspect.py) and the hypothesis test (tests/pure/test_app_inspect_fuzz.py).

The script (read by a small cursor over the input bytes, so any bytes are a script):

  byte 0     which seed conversation (TLS, HTTP, SSH, DNS over TCP, DNS over UDP, QUIC-like
             UDP, or none: fuzz bytes only), and whether a TCP handshake comes first
  bytes 1-8  the two initial sequence numbers
  then, per packet: the direction, a kind (a slice of the seed's stream at some offset, or
             raw script bytes, or a FIN/RST), an offset and length, a sequence jitter, flags

The contract, per packet and at the end:
  - no exception from the flow table or the inspector;
  - events are AppEvents of a known type (tls, quic, dns, http, ssh);
  - the reassembler never holds more than its memory cap;
  - a side's L7 fields, once its `*_done` is True, never change again (FINAL, the promise
    policy clauses rely on; DNS's per-message `dns_queries` aside);
  - malformed reasons counted are ones the parsers declare (their REASONS);
  - after the flow ends (`release`): app_state None, both sides done, and the reassembler
    holds nothing (every flow of the run has ended);
  - passive DNS stays within its bound.
"""

from __future__ import annotations

import struct

from ips.app import dns, http, quic, ssh, tls
from ips.app.inspect import AppCounters, AppInspector
from ips.app.passive_dns import PassiveDns
from ips.core.build import build_packet
from ips.core.decode import decode_l3
from ips.core.events import AppEvent
from ips.core.flow import FlowTable
from ips.core.packet import PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN

EVENT_TYPES = frozenset(("tls", "quic", "dns", "http", "ssh"))
REASONS = frozenset(tls.REASONS + dns.REASONS + http.REASONS + ssh.REASONS + quic.REASONS)
MEMORY_CAP = 64 * 1024
LIMIT = 2048
PDNS_BOUND = 32

CLIENT_FIELDS = (
    *("tls_sni", "tls_ja3", "tls_ja4", "tls_alpn", "quic_sni", "quic_ja4"),
    *("http_host", "http_uri", "http_method", "http_user_agent", "ssh_client"),
)
SERVER_FIELDS = ("tls_ja3s", "ssh_server")


class ContractViolation(AssertionError):
    pass


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise ContractViolation(what)


def _qname(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"


def _dns_pair() -> tuple[bytes, bytes]:
    question = _qname("www.example.com") + struct.pack("!HH", 1, 1)
    query = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + question
    cname = _qname("edge.cdn.example.net")
    answer = (
        struct.pack("!HHHHHH", 0x4242, 0x8180, 1, 2, 0, 0)
        + question
        + b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 60, len(cname)) + cname
        + b"\xc0\x2d" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes((192, 0, 2, 7))
    )  # fmt: skip
    return query, answer


def _client_hello() -> bytes:
    """A TLS 1.3-style ClientHello with SNI, ALPN, groups, versions and a key share."""

    def ext(kind: int, body: bytes) -> bytes:
        return struct.pack("!HH", kind, len(body)) + body

    sni = b"\x00" + struct.pack("!H", 11) + b"example.com"
    exts = (
        ext(0, struct.pack("!H", len(sni)) + sni)
        + ext(16, b"\x00\x03\x02h2")
        + ext(10, b"\x00\x04\x00\x1d\x00\x17")
        + ext(43, b"\x04\x03\x04\x03\x03")
        + ext(13, b"\x00\x04\x04\x03\x08\x04")
        + ext(51, b"\x00\x24\x00\x1d\x00\x20" + bytes(32))
    )
    body = b"\x03\x03" + bytes(32) + b"\x20" + bytes(32) + b"\x00\x04\x13\x01\x13\x02\x01\x00"
    body += struct.pack("!H", len(exts)) + exts
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def _server_hello() -> bytes:
    exts = b"\x00\x2b\x00\x02\x03\x04" + b"\x00\x33\x00\x24\x00\x1d\x00\x20" + bytes(32)
    body = b"\x03\x03" + bytes(32) + b"\x20" + bytes(32) + b"\x13\x01\x00"
    body += struct.pack("!H", len(exts)) + exts
    hs = b"\x02" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x03" + struct.pack("!H", len(hs)) + hs


_QUERY, _ANSWER = _dns_pair()
# (protocol, client stream or datagram, server stream or datagram)
SEEDS: list[tuple[int, bytes, bytes]] = [
    (PROTO_TCP, _client_hello(), _server_hello()),
    (PROTO_TCP,
     b"GET /a?b=c HTTP/1.1\r\nHost: Example.com:8080\r\nUser-Agent: fuzz/1\r\n\r\n"
     b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
     b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
     b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n"),
    (PROTO_TCP, b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n", b"SSH-2.0-dropbear_2022.83\r\n"),
    (PROTO_TCP, struct.pack("!H", len(_QUERY)) + _QUERY, struct.pack("!H", len(_ANSWER)) + _ANSWER),
    (PROTO_UDP, _QUERY, _ANSWER),
    (PROTO_UDP, b"\xc3\x00\x00\x00\x01\x08" + bytes(8) + b"\x00\x00\x44\xd0" + bytes(1200), b""),
    (PROTO_TCP, b"", b""),
]  # fmt: skip


class _Cursor:
    """Integers and byte strings read from the front of the script; zeros once it ends."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def u16(self) -> int:
        return self.byte() << 8 | self.byte()

    def u32(self) -> int:
        return self.u16() << 16 | self.u16()

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out


class Harness:
    """One inspector (and its reassembler, with a small global cap) for a whole fuzzing run,
    so the accounting is checked across inputs, not only within one."""

    def __init__(self) -> None:
        self.names = PassiveDns(max_entries=PDNS_BOUND)
        self.inspector = AppInspector(
            limit=LIMIT, memory_cap=MEMORY_CAP, names=self.names, counters=AppCounters()
        )
        self.flows = 0
        self.events = 0

    def run(self, script: bytes, max_packets: int = 48) -> None:
        cur = _Cursor(script)
        head = cur.byte()
        proto, client_stream, server_stream = SEEDS[(head & 0x7F) % len(SEEDS)]
        handshake = proto == PROTO_TCP and bool(head & 0x80)
        isn = [cur.u32(), cur.u32()]  # client, server
        self.flows += 1
        sport = 1024 + self.flows % 60000
        client, server = "10.0.0.1", "192.0.2.7"
        table = FlowTable(max_flows=4)
        inspector = self.inspector
        now = 1000.0
        final: dict[str, tuple] = {}

        def send(fwd: bool, flags: int, seq: int, payload: bytes) -> None:
            nonlocal now
            now += 0.001
            src, dst, sp, dp = (client, server, sport, 53) if fwd else (server, client, 53, sport)
            raw = build_packet(proto, src, dst, sp, dp, flags=flags, seq=seq, payload=payload)
            pkt = decode_l3(raw)
            _check(not isinstance(pkt, Exception) and hasattr(pkt, "proto"), "decode")
            flow, forward = table.track(pkt, now)  # type: ignore[arg-type]
            if flow.app_state is None:
                return
            events = inspector.inspect(pkt, flow, forward, now)  # type: ignore[arg-type]
            for ev in events or ():
                _check(isinstance(ev, AppEvent) and ev.event_type in EVENT_TYPES, "event type")
                self.events += 1
            app = flow.app
            if app is not None:
                for side, done, names in (("client", app.client_done, CLIENT_FIELDS),
                                          ("server", app.server_done, SERVER_FIELDS)):  # fmt: skip
                    if not done:
                        continue
                    values = tuple(getattr(app, n) for n in names)
                    _check(final.setdefault(side, values) == values, f"{side} fields changed")
            _check(0 <= inspector.reassembler.used <= MEMORY_CAP, "memory cap")

        if handshake:
            send(True, TCP_SYN, isn[0], b"")
            send(False, TCP_SYN | TCP_ACK, isn[1], b"")
        packets = 0
        while cur.left() > 0 and packets < max_packets:
            packets += 1
            op = cur.byte()
            fwd = not op & 1
            stream = client_stream if fwd else server_stream
            kind = (op >> 1) & 3
            offset = cur.u16() % (len(stream) + 64)
            length = cur.u16() % 1500
            if kind == 3:
                payload = cur.take(cur.byte())  # raw bytes from the script
            else:
                payload = stream[offset : offset + length]
            jitter = cur.byte()
            seq_offset = offset + (jitter - 128 if jitter & 0x80 and op & 0x40 else 0)
            flags = TCP_ACK | (TCP_PSH if payload else 0)
            if kind == 2:
                flags |= TCP_FIN if jitter & 1 else TCP_RST
            if proto == PROTO_UDP:
                # A datagram is a whole message: the seed's, cut, or script bytes.
                payload = payload if kind == 3 or op & 0x20 else stream
            send(fwd, flags, (isn[0 if fwd else 1] + 1 + seq_offset) & 0xFFFFFFFF, payload)
        for flow in table.drain():
            for ev in inspector.release(flow, now) or ():
                _check(isinstance(ev, AppEvent) and ev.event_type in EVENT_TYPES, "event type")
            _check(flow.app_state is None, "app_state after release")
            app = flow.app
            _check(app is None or (app.client_done and app.server_done), "done after release")
        _check(inspector.reassembler.used == 0, "memory returned")
        _check(set(inspector.counters.malformed) <= REASONS, "malformed reasons")
        _check(len(self.names) <= PDNS_BOUND, "passive DNS bound")
