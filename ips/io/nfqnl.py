"""A small NFQUEUE client of our own: nfnetlink_queue spoken directly over a netlink socket.

Why it exists: netfilterqueue (the binding ips/io/nfqueue.py uses) gives one verdict per
packet and has no API for queue flags or batched verdicts. The kernel has both:
NFQNL_MSG_VERDICT_BATCH sets the verdict of every queued packet with an id <= N in one
message, so a run of accepted packets costs one send instead of one per packet. bench/
nfq_client.py measures whether that is worth owning this module (see its report).

Wire format (linux/netfilter/nfnetlink_queue.h, linux/netlink.h). Every message is
    nlmsghdr   u32 len, u16 type = (NFNL_SUBSYS_QUEUE << 8) | msg, u16 flags, u32 seq, u32 pid
    nfgenmsg   u8 family, u8 version (0), be16 res_id = queue number
    attributes u16 nla_len (header included, unpadded), u16 nla_type, value, padded to 4
in host byte order for the netlink headers and network byte order inside nfnetlink's
attribute values. A queued packet (NFQNL_MSG_PACKET) carries NFQA_PACKET_HDR (be32 id,
be16 hw_protocol, u8 hook), NFQA_MARK, NFQA_IFINDEX_INDEV/OUTDEV (be32), NFQA_PAYLOAD (the
L3 packet) and others we skip. The kernel sends each packet in its own datagram, so one
recv is one packet: what batching saves is the verdict side.

Only the socket is I/O here; the message builders and the parser are pure functions, tested
byte for byte in tests/pure/test_nfqnl.py.
`NfqClient.drain` is the reference loop: ips/io/_nfqdrain.pyx is the same loop compiled
(the queue worker uses it when built), held to this one by tests/pure/
test_nfqdrain_differential.py.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

from ips.io.netlink import (
    BE32,
    HEADERS,
    NLA,
    NLA_TYPE_MASK,
    NLM_F_ACK,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    NLMSGHDR,
    MalformedMessage,
    NetfilterClient,
    attr,
    nfnl_message,
)

# linux/netfilter/nfnetlink_queue.h
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQNL_MSG_VERDICT_BATCH = 3

NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_MARK = 3
NFQA_TIMESTAMP = 4
NFQA_IFINDEX_INDEV = 5
NFQA_IFINDEX_OUTDEV = 6
NFQA_HWADDR = 9  # struct nfqnl_msg_packet_hw: be16 hw_addrlen, u16 pad, u8 hw_addr[8]
NFQA_PAYLOAD = 10
NFQA_CAP_LEN = 13  # be32: the packet's length, present when the copy range cut it
NFQA_SKB_INFO = 14  # be32 flags: NFQA_SKB_CSUMNOTREADY, NFQA_SKB_GSO, ...
NFQA_SKB_CSUMNOTREADY = 0x01  # the transport checksum is not filled in yet (GSO flag)
NFQA_SKB_GSO = 0x02  # a GSO/GRO super-packet, queued whole (needs NFQA_CFG_F_GSO)

NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_COPY_PACKET = 2

NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQA_CFG_F_FAIL_OPEN = 0x01
NFQA_CFG_F_CONNTRACK = 0x02
NFQA_CFG_F_GSO = 0x04

# linux/netfilter.h
NF_DROP = 0
NF_ACCEPT = 1

_PACKET_TYPE = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET

DEFAULT_COPY_RANGE = 0xFFFF - 4  # whole packets: the kernel caps the range at 65535 - NLA_HDRLEN
DEFAULT_MAX_LEN = 4096  # as ips/io/nfqueue.py
BATCH_MAX = 128  # accepts that may wait for one batch verdict inside a burst that goes on
# The first packets of each drain get their accept at once, as with per-packet verdicts: a lone
# packet (a ping, a handshake) would otherwise wait for the empty read that ends the burst, and
# what its verdict sets off (the answer, forwarded back through us) for the next wakeup.
# Batching pays from the packets after these on: a burst that goes on (measured, bench/lab.py).
BATCH_AFTER = 4
RECV_BUFFER = 256 * 1024  # one datagram: a packet up to 64 KiB (GSO) and its attributes


class NfqError(OSError):
    """The kernel refused a request (the errno is the kernel's)."""


@dataclass(slots=True)
class QueuedPacket:
    """One packet the kernel queued to us."""

    id: int
    payload: bytes
    indev: int = 0
    outdev: int = 0
    mark: int = 0
    hw_protocol: int = 0
    hook: int = 0
    # The sender's link-layer address (NFQA_HWADDR: the source MAC of an Ethernet frame that
    # came in; None on output, or on an interface without one): evidence behind blocks.
    hwaddr: bytes | None = None
    # The packet's real length when the copy range cut the copy (NFQA_CAP_LEN), else 0. Only
    # a GSO super-packet can be longer than the largest range netlink allows (65,531 bytes).
    cap_len: int = 0
    gso: bool = False  # NFQA_SKB_GSO: several segments judged as one packet
    csum_partial: bool = False  # NFQA_SKB_CSUMNOTREADY: the L4 checksum holds a seed only


# ---- messages (pure) ---------------------------------------------------------------------------


def _message(
    msg: int, queue_num: int, attrs: bytes, flags: int = NLM_F_REQUEST, seq: int = 0
) -> bytes:
    return nfnl_message(NFNL_SUBSYS_QUEUE, msg, queue_num, attrs, flags, seq)


def config_message(
    queue_num: int,
    *,
    command: int | None = None,
    copy_range: int | None = None,
    max_len: int | None = None,
    flags: int | None = None,
    mask: int | None = None,
    seq: int = 0,
    ack: bool = True,
) -> bytes:
    """NFQNL_MSG_CONFIG: bind/unbind, copy mode and range, queue length and flags in one
    message (the kernel applies the command first, then the rest, atomically)."""
    attrs = b""
    if command is not None:
        attrs += attr(NFQA_CFG_CMD, struct.pack("!BxH", command, 0))
    if copy_range is not None:
        attrs += attr(NFQA_CFG_PARAMS, struct.pack("!IB", copy_range, NFQNL_COPY_PACKET))
    if max_len is not None:
        attrs += attr(NFQA_CFG_QUEUE_MAXLEN, BE32.pack(max_len))
    if flags is not None:
        if mask is None:
            raise ValueError("queue flags need a mask (which flags to change)")
        attrs += attr(NFQA_CFG_FLAGS, BE32.pack(flags)) + attr(NFQA_CFG_MASK, BE32.pack(mask))
    msg_flags = NLM_F_REQUEST | (NLM_F_ACK if ack else 0)
    return _message(NFQNL_MSG_CONFIG, queue_num, attrs, msg_flags, seq)


def verdict_message(
    queue_num: int,
    packet_id: int,
    verdict: int,
    *,
    mark: int | None = None,
    payload: bytes | None = None,
) -> bytes:
    """NFQNL_MSG_VERDICT for one packet, optionally with a new mark and new bytes (rewrite)."""
    attrs = attr(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id))
    if mark is not None:
        attrs += attr(NFQA_MARK, BE32.pack(mark))
    if payload is not None:
        attrs += attr(NFQA_PAYLOAD, payload)
    return _message(NFQNL_MSG_VERDICT, queue_num, attrs)


def batch_verdict_message(
    queue_num: int, packet_id: int, verdict: int, *, mark: int | None = None
) -> bytes:
    """NFQNL_MSG_VERDICT_BATCH: `verdict` for every packet still queued with id <= packet_id
    (the kernel compares ids wrap-safely). Packets already given a verdict are gone from the
    queue, so a batch after single drops accepts only what is left."""
    attrs = attr(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id))
    if mark is not None:
        attrs += attr(NFQA_MARK, BE32.pack(mark))
    return _message(NFQNL_MSG_VERDICT_BATCH, queue_num, attrs)


def packet_message(
    queue_num: int,
    pkt: QueuedPacket,
    *,
    timestamp: tuple[int, int] | None = None,
    hwaddr: bytes | None = None,
) -> bytes:
    """NFQNL_MSG_PACKET as the kernel builds it (nfqnl_build_packet_message: the attributes
    in its order). For tests and the benchmark's self-check: we never send this."""
    attrs = attr(NFQA_PACKET_HDR, struct.pack("!IHB", pkt.id, pkt.hw_protocol, pkt.hook))
    if pkt.indev:
        attrs += attr(NFQA_IFINDEX_INDEV, BE32.pack(pkt.indev))
    if pkt.outdev:
        attrs += attr(NFQA_IFINDEX_OUTDEV, BE32.pack(pkt.outdev))
    if pkt.mark:
        attrs += attr(NFQA_MARK, BE32.pack(pkt.mark))
    if hwaddr is not None:
        attrs += attr(NFQA_HWADDR, struct.pack("!HH", len(hwaddr), 0) + hwaddr.ljust(8, b"\0"))
    if timestamp is not None:
        attrs += attr(NFQA_TIMESTAMP, struct.pack("!QQ", *timestamp))
    if pkt.cap_len:
        attrs += attr(NFQA_CAP_LEN, BE32.pack(pkt.cap_len))
    info = (NFQA_SKB_GSO if pkt.gso else 0) | (NFQA_SKB_CSUMNOTREADY if pkt.csum_partial else 0)
    if info:
        attrs += attr(NFQA_SKB_INFO, BE32.pack(info))
    attrs += attr(NFQA_PAYLOAD, pkt.payload)
    return _message(NFQNL_MSG_PACKET, queue_num, attrs, flags=0)


_nla_unpack = NLA.unpack_from
_hdr_unpack = struct.Struct("!IHB").unpack_from
_be32_unpack = BE32.unpack_from
_hwlen_unpack = struct.Struct("!H").unpack_from


# The kernel's first attributes of a forwarded packet (nfqnl_build_packet_message's order):
# NFQA_PACKET_HDR, NFQA_IFINDEX_INDEV, NFQA_IFINDEX_OUTDEV. One unpack reads all three; each
# attribute header is read as a big-endian word and compared with the host-order header it
# must be, so the same code is right on either endianness. Anything else: the general loop.
_PREFIX = struct.Struct("!IIHBxIIII")
_PREFIX_LEN = _PREFIX.size  # 28
_WORD = struct.Struct("!I")
_HDR_WORD = _WORD.unpack(NLA.pack(11, NFQA_PACKET_HDR))[0]
_INDEV_WORD = _WORD.unpack(NLA.pack(8, NFQA_IFINDEX_INDEV))[0]
_OUTDEV_WORD = _WORD.unpack(NLA.pack(8, NFQA_IFINDEX_OUTDEV))[0]
_prefix_unpack = _PREFIX.unpack_from


def parse_packet(buf: bytes | bytearray | memoryview, offset: int, end: int) -> QueuedPacket:
    """The attributes of one NFQNL_MSG_PACKET whose body (after nfgenmsg) is buf[offset:end].
    Unknown attributes are skipped; no packet header or no payload is MalformedMessage.
    (The hot path: precompiled structs, the kernel's usual first three attributes at once.)"""
    if offset + _PREFIX_LEN <= end:
        hdr_word, pid, hw_protocol, hook, in_word, indev, out_word, outdev = _prefix_unpack(
            buf, offset
        )
        if hdr_word == _HDR_WORD and in_word == _INDEV_WORD and out_word == _OUTDEV_WORD:
            return _parse_rest(
                buf, offset + _PREFIX_LEN, end, pid, hw_protocol, hook, indev, outdev
            )
    return _parse_rest(buf, offset, end, -1, 0, 0, 0, 0)


def _parse_rest(
    buf: bytes | bytearray | memoryview,
    offset: int,
    end: int,
    packet_id: int,
    hw_protocol: int,
    hook: int,
    indev: int,
    outdev: int,
) -> QueuedPacket:
    payload = None
    mark = 0
    hwaddr = None
    cap_len = 0
    skb_info = 0
    while offset + 4 <= end:
        length, attr_type = _nla_unpack(buf, offset)
        if length < 4 or offset + length > end:
            raise MalformedMessage(f"attribute length {length} at offset {offset}")
        attr_type &= NLA_TYPE_MASK
        if attr_type == NFQA_PAYLOAD:
            payload = bytes(buf[offset + 4 : offset + length])
        elif attr_type == NFQA_PACKET_HDR:
            if length < 11:
                raise MalformedMessage("short NFQA_PACKET_HDR")
            packet_id, hw_protocol, hook = _hdr_unpack(buf, offset + 4)
        elif length >= 8:
            if attr_type == NFQA_IFINDEX_INDEV:
                indev = _be32_unpack(buf, offset + 4)[0]
            elif attr_type == NFQA_IFINDEX_OUTDEV:
                outdev = _be32_unpack(buf, offset + 4)[0]
            elif attr_type == NFQA_MARK:
                mark = _be32_unpack(buf, offset + 4)[0]
            elif attr_type == NFQA_CAP_LEN:
                cap_len = _be32_unpack(buf, offset + 4)[0]
            elif attr_type == NFQA_SKB_INFO:
                skb_info = _be32_unpack(buf, offset + 4)[0]
            elif attr_type == NFQA_HWADDR and length >= 14:
                # the address's bytes as they are in the message (one copy: the buffer is
                # reused by the next read); 6 for Ethernet, up to 8
                hwlen = _hwlen_unpack(buf, offset + 4)[0]
                if 0 < hwlen <= 8 and offset + 8 + hwlen <= end:
                    hwaddr = bytes(buf[offset + 8 : offset + 8 + hwlen])
        offset += (length + 3) & ~3
    if packet_id < 0:
        raise MalformedMessage("packet message without NFQA_PACKET_HDR")
    if payload is None:
        raise MalformedMessage(f"packet {packet_id} without NFQA_PAYLOAD")
    return QueuedPacket(
        packet_id,
        payload,
        indev,
        outdev,
        mark,
        hw_protocol,
        hook,
        hwaddr,
        cap_len,
        bool(skb_info & NFQA_SKB_GSO),
        bool(skb_info & NFQA_SKB_CSUMNOTREADY),
    )


# ---- the client ----------------------------------------------------------------------------

# A handler returns None for "accept as is" (which may then be batched with its neighbours);
# for anything else either a Verdict, which drain sends (in order, see drain), or it gives
# the verdict itself with client.verdict(...) and returns True.
Handler = Callable[[QueuedPacket], "Verdict | Literal[True] | None"]


class Verdict(NamedTuple):
    """A verdict for drain to send for the packet just handled: NF_ACCEPT or NF_DROP, a new
    mark (NFQA_MARK) or None to keep the packet's, new bytes (NFQA_PAYLOAD) or None."""

    verdict: int
    mark: int | None = None
    payload: bytes | None = None


class NfqClient(NetfilterClient):
    """One bound queue on our own netlink socket.

    `drain(handler)` reads every packet waiting (non-blocking), calls handler on each, and
    gives plain accepts either one by one or (batch=True) as one NFQNL_MSG_VERDICT_BATCH per
    run of up to BATCH_MAX packets and at the end of the burst."""

    UNBIND = NFQNL_CFG_CMD_UNBIND
    Error = NfqError
    KERNEL = "nfnetlink_queue"

    def __init__(
        self,
        queue_num: int,
        *,
        max_len: int = DEFAULT_MAX_LEN,
        copy_range: int = DEFAULT_COPY_RANGE,
        fail_open: bool = True,
        gso: bool = False,
        batch: bool = True,
        rcvbuf: int | None = None,
        on_error: int = NF_ACCEPT,
        recv_many: int = 0,
        batch_after: int = BATCH_AFTER,
    ) -> None:
        if not 0 <= queue_num <= 0xFFFF:
            raise ValueError(f"queue number {queue_num} is not 0-65535")
        if not 1 <= max_len <= 0xFFFFFFFF or not 0 < copy_range <= 0xFFFF:
            raise ValueError("max_len must be >= 1 and copy_range 1-65535")
        # As netfilterqueue sizes its socket: half the queue's worth of full copies.
        super().__init__(
            f"queue {queue_num}",
            rcvbuf or max_len * (min(copy_range, 4016) + 760) // 2,
            RECV_BUFFER,
        )
        self.queue_num = queue_num
        self.max_len = max_len
        self.copy_range = copy_range
        self.flags = (NFQA_CFG_F_FAIL_OPEN if fail_open else 0) | (NFQA_CFG_F_GSO if gso else 0)
        self.batch = batch
        self.batch_after = batch_after  # packets of a drain accepted one by one first
        # recv_many > 0: recvmmsg(2) for up to that many packets per system call (ctypes)
        self._many = _MultiReceiver(recv_many, copy_range + 1024) if recv_many > 0 else None
        self._accept_prefix = verdict_message(queue_num, 0, NF_ACCEPT)[:-4]
        self._batch_prefix = batch_verdict_message(queue_num, 0, NF_ACCEPT)[:-4]
        self.on_error = on_error
        # What went wrong, counted (a loop never stops for these; enobufs: packets lost).
        self.received = 0
        self.malformed = 0
        self.handler_errors = 0  # the handler raised: the packet got on_error as verdict
        self.kernel_errors = 0  # NLMSG_ERROR for a verdict (e.g. ENOENT: unknown id)
        self.last_error = 0
        self.verdicts_sent = 0
        self.recv_calls = 0  # system calls that returned packets (the kernel sends one each)

    # ---- set-up -----------------------------------------------------------------------------

    def bind(self) -> int:
        """Open the socket, bind the queue with its settings; return the fd (for select).
        NfqError with the kernel's errno if refused (EBUSY: bound by someone else, EPERM)."""
        return self._bind(
            command=NFQNL_CFG_CMD_BIND,
            copy_range=self.copy_range,
            max_len=self.max_len,
            flags=self.flags,
            mask=NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO,
        )

    def _config(self, seq: int, **config: int) -> bytes:
        # config holds config_message's int fields, never its bool `ack`.
        return config_message(self.queue_num, seq=seq, **config)  # type: ignore[arg-type]

    def _keep(self, n: int) -> None:
        """What a request read meanwhile: its packets, parsed, for the next drain."""
        offset = 0
        while offset + 20 <= n:
            length, msg_type = NLMSGHDR.unpack_from(self._buf, offset)[:2]
            if length < 16 or offset + length > n:
                self.malformed += 1
                return
            if msg_type == _PACKET_TYPE:
                try:
                    self._backlog.append(
                        parse_packet(self._view, offset + HEADERS, offset + length)
                    )
                except MalformedMessage:
                    self.malformed += 1
            offset += (length + 3) & ~3

    # ---- verdicts ---------------------------------------------------------------------------

    def _send(self, msg: bytes) -> None:
        assert self._sock is not None
        while True:
            try:
                self._sock.send(msg)
                self.verdicts_sent += 1
                return
            except InterruptedError:
                continue
            except BlockingIOError:  # netlink to the kernel does not block; be safe
                self._sock.setblocking(True)
                try:
                    self._sock.send(msg)
                finally:
                    self._sock.setblocking(False)
                self.verdicts_sent += 1
                return

    def verdict(
        self,
        packet_id: int,
        verdict: int = NF_ACCEPT,
        *,
        mark: int | None = None,
        payload: bytes | None = None,
    ) -> None:
        self._send(verdict_message(self.queue_num, packet_id, verdict, mark=mark, payload=payload))

    def accept(self, packet_id: int) -> None:
        self._send(verdict_message(self.queue_num, packet_id, NF_ACCEPT))

    def drop(self, packet_id: int) -> None:
        self._send(verdict_message(self.queue_num, packet_id, NF_DROP))

    def batch_verdict(self, packet_id: int, verdict: int = NF_ACCEPT) -> None:
        self._send(batch_verdict_message(self.queue_num, packet_id, verdict))

    # ---- receiving --------------------------------------------------------------------------

    def _handler_failed(self, pkt: QueuedPacket) -> Verdict | Literal[True] | None:
        """A verdict must always be given, and the loop go on: on_error (accept: batched)."""
        self.handler_errors += 1
        if self.on_error == NF_ACCEPT:
            return None
        self._send(verdict_message(self.queue_num, pkt.id, self.on_error))
        return True

    def _malformed(self, buf: memoryview, offset: int, end: int) -> None:
        """A packet message that does not parse still gets a verdict (on_error) if its id
        can be read: a later batch verdict would otherwise accept it uninspected."""
        self.malformed += 1
        if offset + 12 <= end:
            length, attr_type = _nla_unpack(buf, offset)
            if attr_type & NLA_TYPE_MASK == NFQA_PACKET_HDR and length >= 8:
                packet_id = _be32_unpack(buf, offset + 4)[0]
                self._send(verdict_message(self.queue_num, packet_id, self.on_error))

    def _receive(self) -> list[tuple[int, int]]:
        """One system call: (start, end) of each datagram now in the buffer; [] if none."""
        assert self._sock is not None
        while True:
            try:
                if self._many is not None:
                    return self._many.receive(self._sock.fileno())
                return [(0, self._sock.recv_into(self._buf))]
            except BlockingIOError:
                return []
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # the kernel counted them (user_dropped)
                    self.enobufs += 1
                    continue
                raise

    def drain(self, handler: Handler, limit: int = 1 << 30) -> int:
        """Handle every packet waiting (up to limit); return how many. Every packet gets a
        verdict before this returns: pending batched accepts are flushed at the end.

        Order: the first batch_after packets' plain accepts go at once; later plain accepts
        wait for a batch verdict (every BATCH_MAX, and when the socket is empty — then drain
        reads once more, for what that verdict set off); a
        Verdict the handler returns is sent at once — after the pending batch if it is an
        accept (it lets a packet out), before it if it is a drop (the batch, covering ids up
        to its own, skips packets no longer queued). A handler that sends a verdict itself
        and returns True does so before the pending batch, whatever the verdict."""
        assert self._sock is not None, "not bound"
        buf: bytearray | memoryview
        if self._many is not None:
            buf, view = self._many.buf, self._many.view
        else:
            buf, view = self._buf, self._view
        send = self._sock.send
        unpack_from = NLMSGHDR.unpack_from
        pack_id = BE32.pack
        accept_prefix, batch_prefix = self._accept_prefix, self._batch_prefix
        batch = self.batch
        batch_after = self.batch_after
        pending = -1  # id of the last packet whose accept waits for a batch verdict
        waiting = 0
        handled = 0
        sent = 0
        if self._backlog:
            backlog, self._backlog = self._backlog, []
            for pkt in backlog:  # rare (read during a config request): one by one
                handled += 1
                try:
                    given = handler(pkt)
                except Exception:
                    given = self._handler_failed(pkt)
                if given is None:
                    self.accept(pkt.id)
                elif given is not True:
                    self.verdict(pkt.id, given.verdict, mark=given.mark, payload=given.payload)
        try:
            while handled < limit:
                segments = self._receive()
                if not segments:
                    if pending >= 0:
                        # The burst ended: its accepts go, then one more look — what they set
                        # off (an answer forwarded back through us) is queued already.
                        send(batch_prefix + pack_id(pending))
                        sent += 1
                        pending, waiting = -1, 0
                        continue
                    break
                self.recv_calls += 1
                for offset, n in segments:
                    while offset + 20 <= n:
                        length, msg_type, _f, _seq, _pid = unpack_from(buf, offset)
                        if length < 16 or offset + length > n:
                            if msg_type == _PACKET_TYPE:  # truncated: give it a verdict
                                self._malformed(view, offset + HEADERS, n)
                            else:
                                self.malformed += 1
                            break
                        if msg_type == _PACKET_TYPE:
                            try:
                                pkt = parse_packet(view, offset + HEADERS, offset + length)
                            except MalformedMessage:
                                self._malformed(view, offset + HEADERS, offset + length)
                                offset += (length + 3) & ~3
                                continue
                            handled += 1
                            try:
                                verdict_given = handler(pkt)
                            except Exception:
                                verdict_given = self._handler_failed(pkt)
                            if verdict_given is None:
                                if batch and handled > batch_after:
                                    pending = pkt.id
                                    waiting += 1
                                    if waiting >= BATCH_MAX:
                                        send(batch_prefix + pack_id(pending))
                                        sent += 1
                                        pending, waiting = -1, 0
                                else:
                                    send(accept_prefix + pack_id(pkt.id))
                                    sent += 1
                            elif verdict_given is not True:
                                # An accept with new bytes or a new mark leaves after the
                                # accepts pending before it, so packets leave in the order
                                # they came (as with per-packet verdicts). A drop needn't
                                # wait: it is dequeued now, and the later batch verdict only
                                # covers packets still queued (nfqnl_recv_verdict_batch).
                                v, mark, payload = verdict_given
                                if pending >= 0 and v != NF_DROP:
                                    send(batch_prefix + pack_id(pending))
                                    sent += 1
                                    pending, waiting = -1, 0
                                send(
                                    verdict_message(
                                        self.queue_num, pkt.id, v, mark=mark, payload=payload
                                    )
                                )
                                sent += 1
                        elif msg_type == NLMSG_ERROR:
                            code = -struct.unpack_from("=i", buf, offset + 16)[0]
                            if code:
                                self.kernel_errors += 1
                                self.last_error = code
                        offset += (length + 3) & ~3
        finally:
            if pending >= 0:
                send(batch_prefix + pack_id(pending))
                sent += 1
            self.verdicts_sent += sent
        self.received += handled
        return handled


class _MultiReceiver:
    """recvmmsg(2) through ctypes (Python's socket module has no binding for it): up to
    `count` datagrams per system call, each into its own `slot`-byte part of one buffer."""

    def __init__(self, count: int, slot: int) -> None:
        import ctypes

        class Iovec(ctypes.Structure):
            _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]

        class Msghdr(ctypes.Structure):
            _fields_ = [
                ("msg_name", ctypes.c_void_p),
                ("msg_namelen", ctypes.c_uint),
                ("msg_iov", ctypes.c_void_p),
                ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p),
                ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int),
            ]

        class Mmsghdr(ctypes.Structure):
            _fields_ = [("msg_hdr", Msghdr), ("msg_len", ctypes.c_uint)]

        libc = ctypes.CDLL(None, use_errno=True)
        self._call = libc.recvmmsg
        self._call.argtypes = [
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_void_p,
        ]
        self._call.restype = ctypes.c_int
        self._get_errno = ctypes.get_errno
        self.count = count
        self.slot = slot
        self._mem = (ctypes.c_char * (count * slot))()
        self.buf = memoryview(self._mem).cast("B")
        self.view = self.buf
        self._iovs = (Iovec * count)()
        self._msgs = (Mmsghdr * count)()
        base = ctypes.addressof(self._mem)
        for i in range(count):
            self._iovs[i].iov_base = base + i * slot
            self._iovs[i].iov_len = slot
            self._msgs[i].msg_hdr.msg_iov = ctypes.addressof(self._iovs[i])
            self._msgs[i].msg_hdr.msg_iovlen = 1
        self._msgs_addr = ctypes.addressof(self._msgs)
        size = ctypes.sizeof(Mmsghdr)
        raw = (ctypes.c_char * (count * size)).from_address(self._msgs_addr)
        self._lens = memoryview(raw).cast("B")
        self._len_at = [i * size + Mmsghdr.msg_len.offset for i in range(count)]
        self._flags_at = [
            i * size + Mmsghdr.msg_hdr.offset + Msghdr.msg_flags.offset for i in range(count)
        ]

    def receive(self, fd: int) -> list[tuple[int, int]]:
        n = self._call(fd, self._msgs_addr, self.count, 0x40, None)  # MSG_DONTWAIT
        if n < 0:
            code = self._get_errno()
            if code == errno.EAGAIN:
                raise BlockingIOError(code, os.strerror(code))
            raise OSError(code, os.strerror(code))
        lens, slot, len_at = self._lens, self.slot, self._len_at
        out = []
        for i in range(n):
            length = struct.unpack_from("=I", lens, len_at[i])[0]
            if struct.unpack_from("=i", lens, self._flags_at[i])[0] & 0x20:  # MSG_TRUNC
                length = min(length, slot)  # the parser then counts it as malformed
            out.append((i * slot, i * slot + length))
        return out
