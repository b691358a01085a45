"""Test-only TCP stream starts from a capture: for each connection, the first bytes each
direction carried, in sequence order (ips.io.pcap + ips.core.decode; no reassembler).

Deliberately simple: segments are placed by sequence number relative to the SYN (or the first
segment seen), the contiguous prefix from offset 0 is the stream, retransmissions and overlaps
keep the first copy. The real, bounded reassembler lives in ips/app (another module); this
helper only feeds the parsers' oracle tests.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from ips.core.addr import format_addr
from ips.core.decode import decode_frame
from ips.core.packet import PROTO_TCP, TCP_SYN, Packet
from ips.io.pcap import read_capture

_SEQ = struct.Struct("!I")


@dataclass
class Direction:
    base: int | None = None
    segments: dict[int, bytes] = field(default_factory=dict)

    def add(self, seq: int, payload: bytes, syn: bool, limit: int) -> None:
        if syn:
            self.base = (seq + 1) & 0xFFFFFFFF
            return
        if not payload:
            return
        if self.base is None:
            self.base = seq
        offset = (seq - self.base) & 0xFFFFFFFF
        if offset < limit and offset not in self.segments:
            self.segments[offset] = payload

    def stream(self) -> bytes:
        out = bytearray()
        for offset in sorted(self.segments):
            data = self.segments[offset]
            if offset > len(out):
                break
            out += data[len(out) - offset :]
        return bytes(out)


@dataclass
class Connection:
    """One TCP connection: `client` is the side that sent the first SYN (or first packet)."""

    client: tuple[str, int]
    server: tuple[str, int]
    to_server: Direction = field(default_factory=Direction)
    to_client: Direction = field(default_factory=Direction)
    data_seen: bool = False


def tcp_connections(path: Path, limit: int = 1 << 16) -> list[Connection]:
    """Every TCP connection of the capture in order of its first packet."""
    connections: list[Connection] = []
    open_by_key: dict[tuple, Connection] = {}
    with read_capture(path) as reader:
        for record in reader:
            packet = decode_frame(record.data, record.linktype)
            if not isinstance(packet, Packet) or packet.proto != PROTO_TCP:
                continue
            if packet.l4_offset < 0:
                continue
            src = (format_addr(packet.src), packet.sport)
            dst = (format_addr(packet.dst), packet.dport)
            key = (src, dst) if src <= dst else (dst, src)
            syn_only = packet.flags & 0x12 == TCP_SYN
            conn = open_by_key.get(key)
            if conn is None or (syn_only and conn.data_seen and src == conn.client):
                conn = Connection(client=src, server=dst)
                connections.append(conn)
                open_by_key[key] = conn
            (seq,) = _SEQ.unpack_from(packet.data, packet.l4_offset + 4)
            payload = packet.data[packet.payload_offset :]
            direction = conn.to_server if src == conn.client else conn.to_client
            direction.add(seq, payload, bool(packet.flags & TCP_SYN), limit)
            if payload:
                conn.data_seen = True
    return connections
