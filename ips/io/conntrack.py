"""Exact volumes of offloaded flows, from conntrack's accounting (nf_conntrack_acct).

Once a connection is offloaded, the kernel passes its packets and the engine counts no more
of them; those are the largest flows. Conntrack counts them all (from the first packet, both
ways) when `net.netfilter.nf_conntrack_acct` is 1, which the daemon sets in its namespace at
start (ips/kernel/diversion.py). Two readings, over ctnetlink (NETLINK_NETFILTER, subsystem
NFNL_SUBSYS_CTNETLINK, linux/netfilter/nfnetlink_conntrack.h):

    DESTROY events  group NFNLGRP_CONNTRACK_DESTROY: a connection's final counters when
                    conntrack forgets it (after TIME_WAIT for TCP, at its timeout for UDP)
    GET             the entry's counters now, asked when the engine ends an offloaded flow
                    (a TCP connection that closed is in TIME_WAIT then: its counts are final)

ConntrackVolumes (pure, time an argument) holds an offloaded flow's FlowEnd until the kernel's
counts for its 5-tuple are known: a DESTROY seen before (kept in a bounded dict), one that
arrives within HOLD_SECONDS, or else the GET made when the flow ended. A flow whose entry
conntrack no longer has and whose DESTROY never came keeps the engine's counts (counted).
Parsing is pure and counts malformed messages; ConntrackWatch is the socket.

Conntrack sends a DESTROY for every connection of the namespace, and most were never
offloaded: on a busy gateway each would wake every worker to be parsed and thrown away. The
events socket therefore carries a socket filter (classic BPF, `offloaded_only_filter`) that
passes only the events whose ct mark has bits of an offload stamp (OFFLOADED_CT_BITS, the
generation and the handshake bit that ips/translate/nft's offload chain writes: once stamped
they are never cleared). The kernel drops the others before they are queued to the socket. A
kernel that refuses the filter leaves the socket unfiltered (said in `stats`: `filtered`).
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ips.core.events import FlowEnd, KernelVolume
from ips.io.netlink import (
    BE32,
    HEADERS,
    NLA,
    NLA_TYPE_MASK,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    NLMSGHDR,
    MalformedMessage,
    attr,
    nfnl_message,
    open_netfilter_socket,
)
from ips.translate.nft.constants import HANDSHAKE_ACK_CT, OFFLOAD_CT_MASK

NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
NFNLGRP_CONNTRACK_DESTROY = 3
NLA_F_NESTED = 0x8000

CTA_TUPLE_ORIG = 1
CTA_COUNTERS_ORIG = 9
CTA_COUNTERS_REPLY = 10
CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES = 1, 2
CTA_MARK = 8

# The ct-mark bits of an offload stamp: a connection ever offloaded has one of them set.
OFFLOADED_CT_BITS = OFFLOAD_CT_MASK | HANDSHAKE_ACK_CT

# Classic BPF (linux/filter.h, linux/bpf_common.h) for the events socket's filter.
SO_ATTACH_FILTER = 26
BPF_LD, BPF_LDX, BPF_JMP, BPF_RET, BPF_MISC = 0x00, 0x01, 0x05, 0x06, 0x07
BPF_W, BPF_B = 0x00, 0x10
BPF_IMM, BPF_ABS, BPF_IND = 0x00, 0x20, 0x40
BPF_JEQ, BPF_JSET = 0x10, 0x40
BPF_K, BPF_TAX = 0x00, 0x00
SKF_AD_OFF = -0x1000
SKF_AD_NLATTR = 12  # A = offset of the attribute of type X at or after offset A, else 0
BpfProgram = list[tuple[int, int, int, int]]  # (code, jt, jf, k) per instruction

BE16 = struct.Struct("!H")
BE64 = struct.Struct("!Q")
Tuple5 = tuple[int, bytes, int, bytes, int]  # proto, src, sport, dst, dport (original direction)

HOLD_SECONDS = 3.0  # how long an offloaded flow's record waits for its DESTROY event
MAX_HELD = 65536  # records held at once; beyond, the oldest is released with what it has
MAX_DESTROYED = 65536  # DESTROY counts kept for flows the engine has not ended yet


@dataclass(frozen=True)
class ConntrackCounts:
    """One connection's accounting: its original-direction tuple and both ways' counts."""

    tuple5: Tuple5
    pkts_orig: int
    bytes_orig: int
    pkts_reply: int
    bytes_reply: int


def _attrs(buf: bytes, start: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    offset = start
    while offset + 4 <= end:
        length, kind = NLA.unpack_from(buf, offset)
        if length < 4 or offset + length > end:
            raise MalformedMessage(f"attribute length {length} at offset {offset}")
        out[kind & NLA_TYPE_MASK] = buf[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return out


def _nested(value: bytes) -> dict[int, bytes]:
    return _attrs(value, 0, len(value))


def parse_entry(body: bytes) -> ConntrackCounts | None:
    """A ctnetlink entry's attributes (after nfgenmsg) -> its counts; None without counters
    (accounting off) or without ports (not TCP/UDP/SCTP...)."""
    top = _nested(body)
    if CTA_TUPLE_ORIG not in top or CTA_COUNTERS_ORIG not in top:
        return None
    tup = _nested(top[CTA_TUPLE_ORIG])
    ip = _nested(tup.get(CTA_TUPLE_IP, b""))
    proto = _nested(tup.get(CTA_TUPLE_PROTO, b""))
    src = ip.get(CTA_IP_V4_SRC) or ip.get(CTA_IP_V6_SRC)
    dst = ip.get(CTA_IP_V4_DST) or ip.get(CTA_IP_V6_DST)
    if src is None or dst is None or CTA_PROTO_NUM not in proto:
        return None
    sport = proto.get(CTA_PROTO_SRC_PORT)
    dport = proto.get(CTA_PROTO_DST_PORT)
    if sport is None or dport is None or len(sport) < 2 or len(dport) < 2:
        return None
    orig = _nested(top[CTA_COUNTERS_ORIG])
    reply = _nested(top.get(CTA_COUNTERS_REPLY, b""))

    def count(c: dict[int, bytes], kind: int) -> int:
        v = c.get(kind, b"")
        return BE64.unpack(v[:8])[0] if len(v) >= 8 else (BE32.unpack(v[:4])[0] if v else 0)

    tuple5 = (proto[CTA_PROTO_NUM][0], bytes(src), BE16.unpack(sport[:2])[0], bytes(dst),
              BE16.unpack(dport[:2])[0])  # fmt: skip
    return ConntrackCounts(
        tuple5,
        count(orig, CTA_COUNTERS_PACKETS),
        count(orig, CTA_COUNTERS_BYTES),
        count(reply, CTA_COUNTERS_PACKETS),
        count(reply, CTA_COUNTERS_BYTES),
    )


def parse_messages(buf: bytes, n: int) -> tuple[list[ConntrackCounts], int]:
    """The ctnetlink entries in buf[:n] and how many messages were malformed (skipped)."""
    out: list[ConntrackCounts] = []
    bad = 0
    offset = 0
    while offset + 16 <= n:
        length, msg_type, _flags, _seq, _pid = NLMSGHDR.unpack_from(buf, offset)
        if length < 16 or offset + length > n:
            return out, bad + 1
        if msg_type >> 8 == NFNL_SUBSYS_CTNETLINK and length >= 20:
            try:
                entry = parse_entry(bytes(buf[offset + 20 : offset + length]))
            except (MalformedMessage, struct.error, IndexError):
                bad += 1
                entry = None
            if entry is not None:
                out.append(entry)
        offset += (length + 3) & ~3
    return out, bad


def get_request(tuple5: Tuple5, seq: int) -> bytes:
    """IPCTNL_MSG_CT_GET of the entry whose original tuple is tuple5."""
    proto, src, sport, dst, dport = tuple5
    v6 = len(src) == 16
    ip = attr(CTA_IP_V6_SRC if v6 else CTA_IP_V4_SRC, src) + attr(
        CTA_IP_V6_DST if v6 else CTA_IP_V4_DST, dst
    )
    ports = (
        attr(CTA_PROTO_NUM, bytes([proto]))
        + attr(CTA_PROTO_SRC_PORT, BE16.pack(sport))
        + attr(CTA_PROTO_DST_PORT, BE16.pack(dport))
    )
    tup = attr(CTA_TUPLE_IP | NLA_F_NESTED, ip) + attr(CTA_TUPLE_PROTO | NLA_F_NESTED, ports)
    return nfnl_message(
        NFNL_SUBSYS_CTNETLINK,
        IPCTNL_MSG_CT_GET,
        0,
        attr(CTA_TUPLE_ORIG | NLA_F_NESTED, tup),
        NLM_F_REQUEST,  # no ACK asked: the entry, or an NLMSG_ERROR (ENOENT)
        seq,
        socket.AF_INET6 if v6 else socket.AF_INET,
    )


def offloaded_only_filter(mark_bits: int = OFFLOADED_CT_BITS) -> BpfProgram:
    """A socket filter passing the ctnetlink messages whose top-level CTA_MARK has one of
    `mark_bits` set, and dropping the rest (no mark: the kernel leaves the attribute out
    when the mark is 0). The kernel's netlink-attribute extension finds the attribute, as
    libnetfilter_conntrack's filters do; a multicast event is one message per buffer."""
    drop_all, keep_all = 0, 0xFFFFFFFF
    return [
        (BPF_LDX | BPF_W | BPF_IMM, 0, 0, CTA_MARK),  # X = the attribute type sought
        (BPF_LD | BPF_W | BPF_IMM, 0, 0, HEADERS),  # A = where the attributes start
        (BPF_LD | BPF_B | BPF_ABS, 0, 0, (SKF_AD_OFF + SKF_AD_NLATTR) & 0xFFFFFFFF),
        (BPF_JMP | BPF_JEQ | BPF_K, 3, 0, 0),  # no CTA_MARK: never stamped
        (BPF_MISC | BPF_TAX, 0, 0, 0),  # X = the attribute's offset
        (BPF_LD | BPF_W | BPF_IND, 0, 0, 4),  # A = the mark (big-endian, as BPF loads)
        (BPF_JMP | BPF_JSET | BPF_K, 1, 0, mark_bits),
        (BPF_RET | BPF_K, 0, 0, drop_all),
        (BPF_RET | BPF_K, 0, 0, keep_all),
    ]


def attach_filter(sock: socket.socket, program: BpfProgram) -> None:
    """SO_ATTACH_FILTER: struct sock_fprog {u16 len; struct sock_filter *filter;}."""
    code = b"".join(struct.pack("=HBBI", *ins) for ins in program)
    buf = ctypes.create_string_buffer(code)
    fprog = struct.pack("@HP", len(program), ctypes.addressof(buf))  # native: padded pointer
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class ConntrackVolumes:
    """Offloaded flows' records held until the kernel's counts are known (pure: time is an
    argument). `hold` takes a FlowEnd and returns it at once when it needs nothing (not
    offloaded) or the DESTROY is already known; `destroyed` takes the DESTROY counts and
    returns the records they complete; `due` returns the records whose wait is over."""

    def __init__(self, hold_seconds: float = HOLD_SECONDS) -> None:
        self.hold_seconds = hold_seconds
        self._held: OrderedDict[Tuple5, tuple[FlowEnd, float, ConntrackCounts | None]] = (
            OrderedDict()
        )
        self._destroyed: OrderedDict[Tuple5, ConntrackCounts] = OrderedDict()
        self.counted = {"destroy": 0, "get": 0, "engine": 0, "destroy_unmatched": 0}
        self.malformed = 0
        self.errors = 0

    @staticmethod
    def key(end: FlowEnd) -> Tuple5:
        f = end.flow
        return (f.proto, f.src, f.sport, f.dst, f.dport)

    def hold(self, end: FlowEnd, now: float, now_counts: ConntrackCounts | None) -> list[FlowEnd]:
        if not getattr(end.flow, "offloaded", False):
            return [end]
        key = self.key(end)
        known = self._destroyed.pop(key, None)
        if known is not None:
            return [self._complete(end, known, "destroy")]
        out: list[FlowEnd] = []
        old = self._held.pop(key, None)
        if old is not None:  # the same tuple ended twice (port reuse): the first goes now
            out.append(self._release(old))
        self._held[key] = (end, now + self.hold_seconds, now_counts)
        while len(self._held) > MAX_HELD:
            out.append(self._release(self._held.popitem(last=False)[1]))
        return out

    def destroy_known(self, key: Tuple5) -> bool:
        """Whether a DESTROY for this tuple was read and waits for the engine's end."""
        return key in self._destroyed

    def destroyed(self, counts: ConntrackCounts) -> list[FlowEnd]:
        held = self._held.pop(counts.tuple5, None)
        if held is not None:
            return [self._complete(held[0], counts, "destroy")]
        # Not ended by the engine yet (or not offloaded: most are not, and never match).
        self._destroyed[counts.tuple5] = counts
        if len(self._destroyed) > MAX_DESTROYED:
            self._destroyed.popitem(last=False)
            self.counted["destroy_unmatched"] += 1
        return []

    def due(self, now: float) -> list[FlowEnd]:
        out: list[FlowEnd] = []
        while self._held:
            key, held = next(iter(self._held.items()))
            if held[1] > now:
                break
            del self._held[key]
            out.append(self._release(held))
        return out

    def drain(self) -> list[FlowEnd]:
        """Every held record, with what it has (at stop)."""
        out = [self._release(h) for h in self._held.values()]
        self._held.clear()
        return out

    def _release(self, held: tuple[FlowEnd, float, ConntrackCounts | None]) -> FlowEnd:
        end, _deadline, now_counts = held
        if now_counts is not None:
            return self._complete(end, now_counts, "get")
        self.counted["engine"] += 1
        return end

    def _complete(self, end: FlowEnd, c: ConntrackCounts, source: str) -> FlowEnd:
        self.counted[source] += 1
        end.kernel = KernelVolume(c.pkts_orig, c.pkts_reply, c.bytes_orig, c.bytes_reply, source)
        return end

    def stats(self) -> dict[str, object]:
        return {
            **self.counted,
            "held": len(self._held),
            "destroyed_kept": len(self._destroyed),
            "malformed": self.malformed,
            "errors": self.errors,
        }


class ConntrackWatch:
    """The sockets: one subscribed to DESTROY events (its fd for the worker's wait), one for
    GET requests (so an answer never mixes with events). `mark_bits`: the events socket
    passes only connections whose ct mark has one of these bits (see the module's
    docstring); None: every DESTROY."""

    def __init__(self, rcvbuf: int = 4 << 20, mark_bits: int | None = OFFLOADED_CT_BITS) -> None:
        self._events = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
        self.filtered = False
        try:
            if mark_bits is not None:
                try:
                    attach_filter(self._events, offloaded_only_filter(mark_bits))
                    self.filtered = True
                except OSError:
                    pass  # an old kernel: every DESTROY is read, and most thrown away
            self._events.bind((0, 1 << (NFNLGRP_CONNTRACK_DESTROY - 1)))
            try:
                self._events.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE
            except OSError:
                self._events.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self._events.setblocking(False)
            self._get = open_netfilter_socket(1 << 16)
            self._get.settimeout(0.5)
        except BaseException:
            self._events.close()
            raise
        self._buf = bytearray(1 << 16)
        self._seq = 0
        self.enobufs = 0

    def fileno(self) -> int:
        return self._events.fileno()

    def read_events(self, on_bad: Callable[[int], None]) -> list[ConntrackCounts]:
        out: list[ConntrackCounts] = []
        while True:
            try:
                n = self._events.recv_into(self._buf)
            except BlockingIOError:
                return out
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.enobufs += 1
                continue
            entries, bad = parse_messages(bytes(self._buf[:n]), n)
            if bad:
                on_bad(bad)
            out.extend(entries)

    def get(self, tuple5: Tuple5) -> ConntrackCounts | None:
        """The entry's counts now; None when conntrack has no such entry (or cannot say)."""
        self._seq += 1
        seq = self._seq
        try:
            self._get.send(get_request(tuple5, seq))
            for _ in range(4):
                n = self._get.recv_into(self._buf)
                entries, _bad = parse_messages(bytes(self._buf[:n]), n)
                if entries:
                    return entries[0]
                _len, msg_type, _f, msg_seq, _p = NLMSGHDR.unpack_from(self._buf, 0)
                if msg_type == NLMSG_ERROR and msg_seq == seq:
                    return None
        except (OSError, struct.error):
            return None
        return None

    def close(self) -> None:
        self._events.close()
        self._get.close()


class OffloadedVolumes:
    """The worker's part: FlowEnds of offloaded flows go through `filter` on their way to the
    sinks (held, with their entry's counts read now), DESTROY events are read when the watch's
    fd is readable (`read`), and the records whose wait is over go out at each tick (`tick`)
    and at stop (`close`), all through `deliver` (the sinks)."""

    def __init__(
        self,
        deliver: Callable[[list[Any]], None],
        watch: ConntrackWatch,
        volumes: ConntrackVolumes | None = None,
    ) -> None:
        self.deliver = deliver
        self.watch = watch
        self.volumes = volumes or ConntrackVolumes()

    def fileno(self) -> int:
        return self.watch.fileno()

    def filter(self, events: list[Any], now: float) -> list[Any]:
        out: list[Any] = []
        for event in events:
            if isinstance(event, FlowEnd) and getattr(event.flow, "offloaded", False):
                key = ConntrackVolumes.key(event)
                # A DESTROY already read completes the record at once (hold): the entry's
                # counts now would not be used, and asking for them is a netlink round trip
                # (most of an offloaded flow's end when its tuple was reused).
                known = self.volumes.destroy_known(key)
                counts = None if known else self.watch.get(key)
                out.extend(self.volumes.hold(event, now, counts))
            else:
                out.append(event)
        return out

    def read(self) -> None:
        done: list[Any] = []
        try:
            entries = self.watch.read_events(self._malformed)
        except OSError:
            self.volumes.errors += 1
            return
        for counts in entries:
            done.extend(self.volumes.destroyed(counts))
        if done:
            self.deliver(done)

    def _malformed(self, n: int) -> None:
        self.volumes.malformed += n

    def tick(self, now: float) -> None:
        done: list[Any] = list(self.volumes.due(now))
        if done:
            self.deliver(done)

    def stats(self) -> dict[str, object]:
        return {
            **self.volumes.stats(),
            "enobufs": self.watch.enobufs,
            "filtered": self.watch.filtered,
        }

    def close(self) -> None:
        """At stop: a last look at the events, then every held record with what it has."""
        self.read()
        done: list[Any] = list(self.volumes.drain())
        if done:
            self.deliver(done)
        self.watch.close()
