"""Bounded reassembly of the first bytes of each direction of a TCP flow.

Only the start of a stream matters to application metadata (a ClientHello, an HTTP request's
headers, a DNS-over-TCP query, an SSH banner), so each direction keeps at most `limit` bytes
(4 KiB by default) from the start of its stream, in order, and nothing after.

How a segment is placed:
- Sequence numbers are relative to the direction's start: the SYN's ISN + 1 when the SYN was
  seen, else the first sequence number seen (a flow picked up mid-stream). Arithmetic is
  modulo 2**32, so a stream whose sequence numbers wrap past zero reassembles like any other;
  a segment that starts more than 2**31 before the start is taken as old data and trimmed.
- Data before the start, beyond `limit`, or already delivered is dropped and counted.
- Overlaps: first-seen data wins, byte by byte, for retransmissions and for out-of-order data
  alike (Suricata's default `first` policy on a host it knows nothing about; Linux keeps the
  old data too). A later copy that differs from what was kept is counted as
  "overlap-conflict": nothing legitimate sends different bytes for the same sequence numbers,
  and it is the classic IDS evasion.
- Out-of-order data is held (within the direction's bound, at most `max_pieces` pieces) and
  delivered as soon as the gap before it is filled.
- Memory: each byte held, in order or not, counts against one global `memory_cap` shared by
  every flow; a segment that would exceed it is dropped ("memcap"). `close` gives a flow's
  bytes back; the engine calls it when the flow's decision is done or the flow ends.

The engine's use, per TCP packet of a flow still undecided:

    n = reassembler.add(streams, to_server, seq, flags, payload)
    if n:  # new in-order bytes: parse streams.data(to_server)
    ...
    reassembler.close(streams)  # decided: stop calling, memory returned

Nothing here reads a clock. Counters are by reason (see `REASONS`), in `counters`.
"""

from __future__ import annotations

import struct
from bisect import insort

from ips.core.packet import TCP_SYN, Packet

__all__ = ["DEFAULT_LIMIT", "REASONS", "Direction", "Reassembler", "TcpStreams", "tcp_seq"]

DEFAULT_LIMIT = 4096
DEFAULT_MEMORY_CAP = 32 * 1024 * 1024
DEFAULT_MAX_PIECES = 64

_U32 = struct.Struct("!I")
_MOD = 1 << 32
_HALF = 1 << 31

R_BEFORE_START = "before-start"  # data (partly) older than the stream's start
R_RETRANSMISSION = "retransmission"  # bytes already held or delivered, seen again
R_OVERLAP_CONFLICT = "overlap-conflict"  # a later copy of held bytes differs (first wins)
R_BEYOND_LIMIT = "beyond-limit"  # bytes past the direction's bound (truncated)
R_TOO_MANY_PIECES = "too-many-pieces"  # out-of-order pieces over max_pieces: dropped
R_MEMCAP = "memcap"  # the global memory cap was reached: dropped
R_CLOSED = "closed"  # a segment for a flow already closed
REASONS: tuple[str, ...] = (R_BEFORE_START, R_RETRANSMISSION, R_OVERLAP_CONFLICT,
                            R_BEYOND_LIMIT, R_TOO_MANY_PIECES, R_MEMCAP, R_CLOSED)  # fmt: skip


def tcp_seq(pkt: Packet) -> int:
    """The sequence number of a decoded TCP packet."""
    return _U32.unpack_from(pkt.data, pkt.l4_offset + 4)[0]


class Direction:
    """One direction of a stream: the in-order bytes from its start, and held pieces."""

    __slots__ = ("base", "buf", "complete", "fin", "pieces")

    def __init__(self) -> None:
        self.base = -1  # sequence number of stream byte 0; -1 until the first segment
        self.buf = bytearray()  # in-order bytes from the start (at most the limit)
        self.pieces: list[tuple[int, bytes]] = []  # out-of-order (offset, bytes), disjoint
        self.complete = False  # the bound was reached: nothing more will be kept
        self.fin = False  # a FIN or RST was seen: no more data will come

    @property
    def delivered(self) -> int:
        return len(self.buf)

    @property
    def held(self) -> int:
        if not self.pieces:  # the common case: asked of every flow that ends
            return len(self.buf)
        return len(self.buf) + sum(len(p) for _, p in self.pieces)


class TcpStreams:
    """Both directions of one TCP flow, as the engine keeps it in its flow state."""

    __slots__ = ("closed", "to_client", "to_server")

    def __init__(self) -> None:
        self.to_server = Direction()
        self.to_client = Direction()
        self.closed = False

    def data(self, to_server: bool) -> bytes:
        """The in-order bytes of one direction so far (a copy)."""
        return bytes((self.to_server if to_server else self.to_client).buf)

    def direction(self, to_server: bool) -> Direction:
        return self.to_server if to_server else self.to_client


class Reassembler:
    """Shared state of every flow's reassembly: the bound, the global cap and the counters."""

    __slots__ = ("counters", "limit", "max_pieces", "memory_cap", "used")

    def __init__(
        self,
        limit: int = DEFAULT_LIMIT,
        memory_cap: int = DEFAULT_MEMORY_CAP,
        max_pieces: int = DEFAULT_MAX_PIECES,
    ) -> None:
        if limit <= 0 or limit >= _HALF:
            raise ValueError("limit must be between 1 and 2**31 - 1 bytes")
        self.limit = limit
        self.memory_cap = memory_cap
        self.max_pieces = max_pieces
        self.used = 0  # bytes held across all open flows
        self.counters: dict[str, int] = dict.fromkeys(REASONS, 0)

    def open(self) -> TcpStreams:
        return TcpStreams()

    def close(self, streams: TcpStreams) -> None:
        """Release a flow's bytes (its decision is done, or it ended)."""
        if streams.closed:
            return
        for d in (streams.to_server, streams.to_client):
            if d.buf or d.pieces:
                self.used -= d.held
                d.buf = bytearray()
                d.pieces = []
        streams.closed = True

    def add_packet(self, streams: TcpStreams, to_server: bool, pkt: Packet) -> int:
        """`add` for a decoded TCP packet."""
        l4 = pkt.l4_offset
        if l4 < 0 or l4 + 8 > pkt.length:
            return 0
        data = pkt.data
        seq = _U32.unpack_from(data, l4 + 4)[0]  # tcp_seq(pkt), without the call
        return self.add(streams, to_server, seq, pkt.flags, data[pkt.payload_offset :])

    def add(
        self, streams: TcpStreams, to_server: bool, seq: int, flags: int, payload: bytes
    ) -> int:
        """Place one segment; return how many new in-order bytes it made available."""
        if streams.closed:
            if payload:
                self.counters[R_CLOSED] += 1
            return 0
        d = streams.to_server if to_server else streams.to_client
        if flags & TCP_SYN:
            if d.base < 0 or (not d.buf and not d.pieces):
                d.base = (seq + 1) & 0xFFFFFFFF
            seq = (seq + 1) & 0xFFFFFFFF  # data on a SYN (TCP Fast Open) follows the ISN
        elif d.base < 0:
            if not payload:
                return 0  # a pure ACK mid-stream says where nothing starts
            d.base = seq
        if flags & 0x05:  # FIN or RST
            d.fin = True
        n = len(payload)
        if not n:
            return 0
        if d.complete:
            self.counters[R_BEYOND_LIMIT] += 1
            return 0
        start = (seq - d.base) % _MOD
        if start >= _HALF:  # before the start: keep only what lies after it
            start -= _MOD
            if start + n <= 0:
                self.counters[R_BEFORE_START] += 1
                return 0
            self.counters[R_BEFORE_START] += 1
            payload = payload[-start:]
            start = 0
            n = len(payload)
        end = start + n
        limit = self.limit
        if end > limit:
            self.counters[R_BEYOND_LIMIT] += 1
            if start >= limit:
                return 0
            payload = payload[: limit - start]
            end = limit
        delivered = len(d.buf)
        if start < delivered:
            # Already delivered bytes: the first copy stays; a different copy is counted.
            overlap = min(end, delivered)
            if d.buf[start:overlap] != payload[: overlap - start]:
                self.counters[R_OVERLAP_CONFLICT] += 1
            if end <= delivered:
                self.counters[R_RETRANSMISSION] += 1
                return 0
            self.counters[R_RETRANSMISSION] += 1
            payload = payload[delivered - start :]
            start = delivered
        if start == delivered and not d.pieces:
            # The common case: in order, nothing held.
            if self.used + len(payload) > self.memory_cap:
                self.counters[R_MEMCAP] += 1
                return 0
            d.buf += payload
            self.used += len(payload)
            if len(d.buf) >= limit:
                d.complete = True
            return len(payload)
        if not self._hold(d, start, payload):
            return 0
        return self._drain(d)

    def _hold(self, d: Direction, start: int, payload: bytes) -> bool:
        """Keep the parts of [start, start+len) that no held piece covers (first wins)."""
        end = start + len(payload)
        gaps: list[tuple[int, bytes]] = []
        pos = start
        conflict = False
        overlapped = False
        for p_start, p_data in d.pieces:
            p_end = p_start + len(p_data)
            if p_end <= pos:
                continue
            if p_start >= end:
                break
            if p_start > pos:
                gaps.append((pos, payload[pos - start : p_start - start]))
            lo, hi = max(pos, p_start), min(end, p_end)
            overlapped = True
            if p_data[lo - p_start : hi - p_start] != payload[lo - start : hi - start]:
                conflict = True
            pos = max(pos, p_end)
            if pos >= end:
                break
        if pos < end:
            gaps.append((pos, payload[pos - start :]))
        if conflict:
            self.counters[R_OVERLAP_CONFLICT] += 1
        if overlapped:
            self.counters[R_RETRANSMISSION] += 1
        if not gaps:
            return False
        size = sum(len(g) for _, g in gaps)
        if self.used + size > self.memory_cap:
            self.counters[R_MEMCAP] += 1
            return False
        if len(d.pieces) + len(gaps) > self.max_pieces:
            self.counters[R_TOO_MANY_PIECES] += 1
            return False
        for g in gaps:
            insort(d.pieces, g)
        self.used += size
        return True

    def _drain(self, d: Direction) -> int:
        """Move held pieces that now continue the in-order bytes into them."""
        pieces = d.pieces
        before = len(d.buf)
        i = 0
        while i < len(pieces) and pieces[i][0] == len(d.buf):
            d.buf += pieces[i][1]
            i += 1
        if i:
            del pieces[:i]
        if len(d.buf) >= self.limit:
            d.complete = True
        return len(d.buf) - before
