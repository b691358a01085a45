"""The first pass of a mix: each input read once, its packets grouped into flows.

A flow is the packets of one 5-tuple in both directions (protocol, the two addresses and
ports; an ICMP echo's identifier stands for its ports), and ends when it has been idle longer
than `idle_timeout` or when a TCP SYN opens the 5-tuple again after a FIN or RST. Its
initiator is the sender of its first packet.

What stays in memory: per flow, one `FlowSummary` (addresses, ports, first time, duration,
packet count) and, while the input is read, its entry in the 5-tuple table.
Per packet nothing: each packet's small record (its flow, time, where its bytes are in the
input, their length, link type and where the IP header starts) goes to an index file on disk,
32 bytes a packet, which the second pass reads in order.

Packets that cannot go into a mix are counted by reason and left out: malformed ones (the
decoder's reason), frames that carry no IP datagram (ARP...), and datagrams found inside
something the address rewrite cannot reach (`mix.unsupported-encapsulation`). A frame cut by
the capture's snaplen is decoded as if padded to its length on the wire, so it goes in.
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from ips.core.packet import PROTO_TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, Malformed
from ips.io.pcap import read_capture
from ips.mix.plan import FlowSummary
from ips.mix.rewrite import UNSUPPORTED, open_frame

__all__ = ["INDEX_RECORD", "InputIndex", "index_capture"]

# flow, time (µs), offset of the captured bytes, captured length, length on the wire, link
# type, offset of the IP header in the frame.
INDEX_RECORD = struct.Struct("<IqQIIHH")
_MAX_L3_OFFSET = 0xFFFF
Progress = Callable[[int], None]  # bytes of the input read so far


@dataclass
class InputIndex:
    input: int
    path: str
    name: str  # the file's name, as the labels say it
    cls: str
    index_path: str
    flows: list[FlowSummary] = field(default_factory=list)
    packets: int = 0  # indexed (the ones a mix can use)
    records: int = 0  # read from the capture
    left_out: Counter[str] = field(default_factory=Counter)
    truncated: int = 0  # bytes of an incomplete last record

    @property
    def span_us(self) -> int:
        if not self.flows:
            return 0
        first = min(f.start_us for f in self.flows)
        return max(f.start_us + f.duration_us for f in self.flows) - first


class _Building:
    __slots__ = (
        "closing",
        "dport",
        "family",
        "first",
        "flow",
        "initiator",
        "last",
        "packets",
        "proto",
        "responder",
        "sport",
    )

    def __init__(
        self,
        flow: int,
        proto: int,
        family: int,
        src: bytes,
        sport: int,
        dst: bytes,
        dport: int,
        now: int,
    ) -> None:
        self.flow = flow
        self.proto = proto
        self.family = family
        self.initiator = src
        self.sport = sport
        self.responder = dst
        self.dport = dport
        self.first = now
        self.last = now
        self.packets = 0
        self.closing = False


def index_capture(
    input_id: int,
    cls: str,
    path: str,
    index_path: str,
    first_flow: int,
    idle_timeout_us: int,
    progress: Progress | None = None,
) -> InputIndex:
    """Read one capture, write its index file, and return its flows (numbered from
    `first_flow`). Raises CaptureError (bad file) and OSError (cannot read)."""
    result = InputIndex(input_id, path, os.path.basename(path), cls, index_path)
    table: dict[tuple[int, bytes, int, bytes, int], _Building] = {}
    building: list[_Building] = []
    pack = INDEX_RECORD.pack
    with read_capture(path) as reader, open(index_path, "wb", buffering=1 << 20) as out:
        for n, record in enumerate(reader):
            if progress is not None and n % 4096 == 0:
                progress(reader.data_offset)
            opened = open_frame(record.data, record.linktype, record.orig_len)
            if opened is None:
                result.left_out["not-ip"] += 1
                continue
            if isinstance(opened, Malformed):
                result.left_out[opened.reason] += 1
                continue
            _, packet, offset = opened
            if offset > _MAX_L3_OFFSET or record.linktype > 0xFFFF:
                result.left_out[UNSUPPORTED.reason] += 1
                continue
            now = round(record.timestamp * 1_000_000)
            a, b = (packet.src, packet.sport), (packet.dst, packet.dport)
            key = (packet.proto, *a, *b) if a <= b else (packet.proto, *b, *a)
            flow = table.get(key)
            if flow is not None and (
                now - flow.last > idle_timeout_us
                or (
                    flow.closing
                    and packet.proto == PROTO_TCP
                    and packet.flags & (TCP_SYN | TCP_ACK) == TCP_SYN
                )
            ):
                flow = None  # idle too long, or a new connection on the same 5-tuple
            if flow is None:
                flow = _Building(
                    first_flow + len(building),
                    packet.proto,
                    packet.family,
                    packet.src,
                    packet.sport,
                    packet.dst,
                    packet.dport,
                    now,
                )
                building.append(flow)
                table[key] = flow
            flow.packets += 1
            flow.last = max(flow.last, now)
            if packet.proto == PROTO_TCP and packet.flags & (TCP_FIN | TCP_RST):
                flow.closing = True
            out.write(
                pack(
                    flow.flow,
                    now,
                    reader.data_offset,
                    len(record.data),
                    record.orig_len,
                    record.linktype,
                    offset,
                )
            )
            result.packets += 1
        result.records = reader.records
        result.truncated = reader.truncated
        if progress is not None:
            progress(reader.data_offset)
    del table
    # Each record is dropped as its summary is made: the two never all coexist.
    building.reverse()
    while building:
        f = building.pop()
        result.flows.append(
            FlowSummary(
                flow=f.flow,
                input=input_id,
                cls=cls,
                proto=f.proto,
                family=f.family,
                initiator=f.initiator,
                sport=f.sport,
                responder=f.responder,
                dport=f.dport,
                start_us=f.first,
                duration_us=f.last - f.first,
                packets=f.packets,
            )
        )
    return result


def read_index(f: BinaryIO) -> list[tuple[int, int, int, int, int, int, int]]:
    """Every record of an index file (for tests; the mixer streams it)."""
    return list(INDEX_RECORD.iter_unpack(f.read()))
