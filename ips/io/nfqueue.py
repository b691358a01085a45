"""NFQUEUE adapter: packets from the kernel into the engine, verdicts back.

One `QueueWorker` owns one queue. Its loop is single-threaded: `select` over the queue's
netlink socket and a control pipe, so it can also run timers (flow expiry) and answer the
daemon (reload, stats) without a lock. It runs in its own process (see
ips/daemon/worker.py) so a hung worker can be killed and replaced.

Two clients of the queue: our own (ips/io/nfqnl.py, the default), which sends the verdicts
of plain accepts as NFQNL_MSG_VERDICT_BATCH runs, and the netfilterqueue binding (one verdict
per packet; `ipsctl run --nfq-client netfilterqueue`). Our own client's loop runs compiled
when the extension is built (ips/io/_nfqdrain.pyx: the same verdicts and bookkeeping, the
engine's fast path called from C; `_judge_decoded`, `_judge_queued` and `_verdict_for` are
its ways back into Python), else in Python (`NfqClient.drain` with `_on_queued`). Both
clients tell the kernel, per packet, what `kernel_verdict` maps the engine's decision to:
  accept   -> NF_ACCEPT (own client: batched with its neighbours)
  offload  -> NF_ACCEPT with the packet's mark | OFFLOAD_MARK (the kernel passes the flow on),
              or | HANDSHAKE_ACK_MARK (a SYN+ACK: the kernel passes the bare ACK that follows),
              or | BARE_ACK_MARK (the same, and the packet after it comes to the queue)
  drop     -> NF_DROP
  reject   -> NF_DROP, and the engine's TCP reset / ICMP error is sent from a raw socket
  rewrite  -> NF_ACCEPT with the new bytes (checksums already fixed by the engine)

With offload, the kernel passes the first packet after a handshake it was allowed to
complete (its data, a FIN or a reset) and sends the worker a copy over NFLOG
(ips/io/nflog.py, group copy_group(queue) of ips/translate/nft/): `process_copies` runs
the engine over the copies as over queued packets, with no verdict to give.

Block effects (a detector crossed its threshold) go to `blocks` (ips/kernel/blocks.py), which
writes them to the kernel's block sets in one nft transaction at the end of the burst being
read — or from inside the burst once one has waited FLUSH_AFTER — so the attacker's next
packets are dropped by the kernel, before the queue.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ips.core.addr import format_addr
from ips.core.craft import complete_l4_checksum
from ips.core.decision import OFFLOAD_BARE_ACKS, OFFLOAD_FLOW, OFFLOAD_HANDSHAKE_ACK
from ips.core.decode import decode_l3
from ips.core.events import Effect
from ips.core.packet import Packet
from ips.engine import Engine, Meta
from ips.io.adapter import EngineAdapter
from ips.io.nflog import LoggedPacket, NflogClient, NflogError
from ips.io.nfqnl import NF_ACCEPT, NF_DROP, NfqClient, QueuedPacket, Verdict
from ips.translate.nft import BARE_ACK_MARK, HANDSHAKE_ACK_MARK, OFFLOAD_MARK, copy_group

if TYPE_CHECKING:
    from netfilterqueue import NetfilterQueue
    from netfilterqueue import Packet as NfqPacket

    from ips.core.decision import Decision
    from ips.io._nfqdrain import CompiledDrain
    from ips.io.adapter import JudgedCell
    from ips.kernel.blocks import KernelBlocks

# Netlink / nfnetlink_queue constants (linux/netfilter/nfnetlink_queue.h)
_NLM_F_REQUEST = 0x01
_NFNL_SUBSYS_QUEUE = 3
_NFQNL_MSG_CONFIG = 2
_NFQA_CFG_MASK = 4
_NFQA_CFG_FLAGS = 5
NFQA_CFG_F_FAIL_OPEN = 0x01
NFQA_CFG_F_CONNTRACK = 0x02
NFQA_CFG_F_GSO = 0x04

DEFAULT_MAX_LEN = 4096  # packets the kernel may hold for us before the fail-open flag acts
CLIENTS = ("own", "netfilterqueue")  # ipsctl run --nfq-client

_ACCEPT = Verdict(NF_ACCEPT)
_PLAIN = (_ACCEPT, None)
_DROPPED = (Verdict(NF_DROP), None)
# Decision.offload -> the verdict's mark bit
_OFFLOAD_MARKS = {
    OFFLOAD_FLOW: OFFLOAD_MARK,
    OFFLOAD_HANDSHAKE_ACK: HANDSHAKE_ACK_MARK,
    OFFLOAD_BARE_ACKS: BARE_ACK_MARK,
}

# The compiled receive/verdict loop (ips/io/_nfqdrain.pyx; docs/architecture.md, "The
# compiled path"): used by our own client when built, unless IPSCTL_PURE=1 (the pure-Python
# engine alone, as ips/fast's loader reads it) or IPSCTL_PY_DRAIN=1 (this loop in Python,
# the compiled fast path kept: what bench/lab.py compares it with). Read once, at import.
_drain_module: Any = None
if all(os.environ.get(name, "") in ("", "0") for name in ("IPSCTL_PURE", "IPSCTL_PY_DRAIN")):
    try:
        from ips.io import _nfqdrain as _drain_module
    except ImportError:  # not built: ips/fast's loader says so, once
        _drain_module = None


class EngineMeter(Protocol):
    """The daemon's meter around engine.handle (ips/sinks/meter.py's PacketMeter), as the
    compiled drain keeps it: bytes of every packet, one in `every` timed."""

    bytes: int
    every: int

    def observe(self, seconds: float) -> None: ...


def kernel_verdict(decision: Decision, mark: int = 0) -> tuple[Verdict, bytes | None]:
    """What the kernel is told for one decision, by either client: the verdict (with the
    rewritten bytes, or `mark` | OFFLOAD_MARK for a flow handed to the kernel), and the reply
    a reject sends (None otherwise). `mark` is the packet's own mark (NFQA_MARK; 0 if none)."""
    verdict = decision.verdict
    if verdict == "drop":
        return _DROPPED
    if verdict == "reject":
        return _DROPPED[0], decision.reply
    if decision.data is not None:  # rewrite, or a reply of a translated flow
        return Verdict(NF_ACCEPT, None, decision.data), None
    if decision.offload:  # the kernel passes the flow's later packets (or its bare ACK) itself
        return Verdict(NF_ACCEPT, mark | _OFFLOAD_MARKS[decision.offload]), None
    return _PLAIN


def queue_config_message(queue_num: int, flags: int, mask: int, seq: int = 1) -> bytes:
    """An NFQNL_MSG_CONFIG netlink message setting queue flags (fail-open, GSO, …).

    netfilterqueue has no API for queue flags, so we write this on its netlink socket
    ourselves (see DESIGN.md, NFQUEUE traps). No ACK is asked for: the reply would land in
    netfilterqueue's receive loop."""
    attrs = b""
    for attr_type, value in ((_NFQA_CFG_FLAGS, flags), (_NFQA_CFG_MASK, mask)):
        attrs += struct.pack("=HH", 8, attr_type) + struct.pack("!I", value)
    nfgen = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue_num))
    body = nfgen + attrs
    header = struct.pack(
        "=IHHII",
        16 + len(body),
        (_NFNL_SUBSYS_QUEUE << 8) | _NFQNL_MSG_CONFIG,
        _NLM_F_REQUEST,
        seq,
        0,
    )
    return header + body


class ReplySender:
    """Sends the engine's reject replies (complete IP packets) through raw sockets."""

    def __init__(self) -> None:
        self._v4: socket.socket | None = None
        self._v6: socket.socket | None = None
        self.sent = 0
        self.failed = 0

    def send(self, packet: bytes) -> None:
        try:
            if packet[0] >> 4 == 4:
                if self._v4 is None:
                    self._v4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
                self._v4.sendto(packet, (format_addr(packet[16:20]), 0))
            else:
                if self._v6 is None:
                    # IPPROTO_RAW on an AF_INET6 socket means "header included" on Linux.
                    self._v6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
                self._v6.sendto(packet, (format_addr(packet[24:40]), 0))
            self.sent += 1
        except OSError:
            self.failed += 1

    def close(self) -> None:
        for s in (self._v4, self._v6):
            if s is not None:
                s.close()


class InterfaceNames:
    """ifindex -> name, cached (the names of a gateway rarely change; a miss re-reads)."""

    def __init__(self) -> None:
        self._names: dict[int, str | None] = {0: None}

    def __call__(self, index: int) -> str | None:
        name = self._names.get(index, "")
        if name == "":
            try:
                name = socket.if_indextoname(index)
            except OSError:
                name = None
            self._names[index] = name
        return name


class QueueWorker(EngineAdapter):
    """Binds one NFQUEUE queue and runs the engine over its packets."""

    replies: ReplySender

    def __init__(
        self,
        queue_num: int,
        engine: Engine,
        *,
        fail_open: bool = True,
        max_len: int = DEFAULT_MAX_LEN,
        on_events: Callable[[list[Effect]], None] | None = None,
        clock: Callable[[], float] = time.time,
        blocks: KernelBlocks | None = None,
        on_busy: Callable[[], None] | None = None,
        client: str = "own",
        read_copies: bool = True,
        judged_cell: JudgedCell | None = None,
        gso: bool = False,
        meter: EngineMeter | None = None,
    ) -> None:
        super().__init__(engine, on_events=on_events, clock=clock, blocks=blocks, on_busy=on_busy)
        if client not in CLIENTS:
            raise ValueError(f"unknown NFQUEUE client {client!r}: one of {', '.join(CLIENTS)}")
        self.queue_num = queue_num
        self.fail_open = fail_open
        self.max_len = max_len
        self.client_name = client
        self.replies = ReplySender()
        self.ifnames = InterfaceNames()
        self._metas: dict[tuple[int, int, bytes | None], Meta] = {}
        self._client: NfqClient | None = None  # our own client, once bound
        self._nfq: NetfilterQueue | None = None  # or netfilterqueue's
        self.read_copies = read_copies  # offload's NFLOG copies (False: the kernel has none)
        self._copies: NflogClient | None = None
        self.copy_fd: int | None = None  # the copies' socket, once bound (select on it too)
        # Packets given a verdict, in a cell the supervisor reads (ips/daemon/unjudged.py):
        # it holds the count of every worker of this queue so far, so this one adds to it.
        self.judged_cell = judged_cell
        self.judged = judged_cell.value if judged_cell is not None else 0
        # GSO (our client only): the kernel queues a TCP super-packet (up to 64 KB, many
        # segments) whole instead of segmenting it first, and the engine judges it once.
        self.gso = gso and client == "own"
        self.gso_packets = 0  # super-packets judged (NFQA_SKB_GSO)
        self.cut = 0  # packets longer than the copy range, judged on the part copied
        self.cut_rewrites_dropped = 0  # of those, rewritten ones: the rest of them is not ours
        # The daemon's meter around engine.handle (ips/sinks/meter.py): the compiled drain,
        # which calls the engine's parts itself, keeps its counts.
        self.meter = meter
        self._compiled: CompiledDrain | None = None  # the compiled drain, once bound

    # ---- queue set-up -------------------------------------------------------------------------

    def bind(self) -> int:
        """Bind the queue and the copies' NFLOG group; return the queue's netlink fd (for
        select; the copies' is copy_fd)."""
        if self.read_copies:
            self._bind_copies()
        if self.client_name == "own":
            # GSO on (`--gso on`): a bulk TCP stream reaches the queue as super-packets of up
            # to 64 KB, judged once each, instead of 45 segments judged one by one (the
            # kernel segments them after the verdict). Checksums of such packets may not be
            # filled in yet (NFQA_SKB_CSUMNOTREADY): the engine never checks them. With
            # netfilterqueue GSO stays off: its 4 KB receive buffer would cut super-packets
            # and stall TCP (DESIGN.md, NFQUEUE traps).
            client = NfqClient(
                self.queue_num,
                max_len=self.max_len,
                fail_open=self.fail_open,
                batch=True,
                gso=self.gso,
            )
            fd = client.bind()
            self._client = client
            if self._compiled_drain_allowed():
                self._compiled = _drain_module.CompiledDrain(client, self, self.meter)
            return fd
        from netfilterqueue import NetfilterQueue  # imported here: only the daemon needs it

        nfq = NetfilterQueue()
        nfq.bind(self.queue_num, self._on_packet, max_len=self.max_len)
        fd = nfq.get_fd()
        flags = NFQA_CFG_F_FAIL_OPEN if self.fail_open else 0
        os.write(fd, queue_config_message(self.queue_num, flags, NFQA_CFG_F_FAIL_OPEN))
        os.set_blocking(fd, False)
        self._nfq = nfq
        return fd

    def _compiled_drain_allowed(self) -> bool:
        """Whether our client's queue is read by the compiled drain: built (and not
        IPSCTL_PURE or IPSCTL_PY_DRAIN), and engine.handle not wrapped by anything but the
        meter this worker was given (the compiled drain calls the engine's parts itself:
        another wrapper would be skipped)."""
        return _drain_module is not None and (
            "handle" not in vars(self.engine) or self.meter is not None
        )

    def _bind_copies(self) -> None:
        group = copy_group(self.queue_num)
        copies = NflogClient(group)
        try:
            self.copy_fd = copies.bind()
        except NflogError as exc:
            raise NflogError(
                exc.errno,
                f"NFLOG group {group} (the copies of offloaded "
                f"connections' first packets): {os.strerror(exc.errno)}"
                + (
                    " — another program (ulogd?) listens there"
                    if exc.errno in (errno.EPERM, errno.EBUSY)
                    else ""
                ),
            ) from None
        self._copies = copies

    def unbind(self) -> None:
        if self._copies is not None:
            self._copies.close()
            self._copies = None
            self.copy_fd = None
        self._compiled = None
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._nfq is not None:
            self._nfq.unbind()
            self._nfq = None
        self.replies.close()

    def stats_sections(self) -> dict[str, object]:
        return {"nfq_client": self.client_stats()}

    def client_stats(self) -> dict[str, object]:
        """Which client reads the queue and, for ours, what it counted going wrong."""
        stats: dict[str, object] = {"client": self.client_name}
        c = self._client
        if c is not None:
            stats.update(
                drain="compiled" if self._compiled is not None else "python",
                gso=self.gso,
                gso_packets=self.gso_packets,
                cut=self.cut,
                cut_rewrites_dropped=self.cut_rewrites_dropped,
                verdict_messages=c.verdicts_sent,
                enobufs=c.enobufs,
                malformed=c.malformed,
                kernel_errors=c.kernel_errors,
                handler_errors=c.handler_errors,
            )
        copies = self._copies
        if copies is not None:
            # copies read, and the times the kernel had more than the socket held (lost)
            stats["copies"] = {
                "received": copies.received,
                "enobufs": copies.enobufs,
                "malformed": copies.malformed,
            }
        return stats

    def process_pending(self) -> None:
        """Handle every packet waiting on the socket, then write the blocks they made."""
        try:
            if self._client is not None:
                # what a message that does not parse gets (the policy may have changed)
                self._client.on_error = self._error_verdict().verdict
                compiled = self._compiled
                if compiled is not None and self.engine._fast is not None:
                    compiled.drain()
                else:
                    self._client.drain(self._on_queued)
            else:
                # bound: without our own client, netfilterqueue's is
                self._nfq.run(block=False)  # type: ignore[union-attr]
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ENOBUFS, errno.EINTR):
                raise
        finally:
            if self.blocks is not None and self.blocks.pending:
                self.blocks.flush()

    def wait_and_process(
        self, fd: int, others: list[int], timeout: float, linger: bool = False
    ) -> list[int]:
        """Wait for the queue (fd) or others; with the compiled loop, the queue's packets are
        drained as soon as poll(2) returns, in compiled code (CompiledDrain.wait: no Python
        between a wake-up and the first read, which on cold caches was most of what a packet
        after an idle gap waited for); otherwise select and process_pending."""
        compiled = self._compiled
        client = self._client
        if compiled is None or client is None or self.engine._fast is None or client._backlog:
            return super().wait_and_process(fd, others, timeout, linger)
        # What a message that does not parse gets: set before the wait (a policy changes
        # only between two waits, in this worker's own loop).
        client.on_error = self._error_verdict().verdict
        try:
            return compiled.wait(others, timeout, linger)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ENOBUFS, errno.EINTR):
                raise
            return []  # the others, if readable, are found by the next wait
        finally:
            if self.blocks is not None and self.blocks.pending:
                self.blocks.flush()

    def process_copies(self) -> None:
        """The copies waiting: each goes through the engine, then the blocks they made are
        written."""
        try:
            if self._copies is not None:
                self._copies.drain(self._on_copied)
        finally:
            if self.blocks is not None and self.blocks.pending:
                self.blocks.flush()

    # ---- per packet -----------------------------------------------------------------------

    def _meta(self, indev: int, outdev: int, mac: bytes | None = None) -> Meta:
        """The packet's Meta, one per (interfaces, sender's MAC) seen: made once, then
        shared (a gateway's segments have few senders)."""
        key = (indev, outdev, mac)
        meta = self._metas.get(key)
        if meta is None:
            meta = Meta(iif=self.ifnames(indev), oif=self.ifnames(outdev), mac=mac)
            if len(self._metas) < 4096:
                self._metas[key] = meta
        return meta

    def _error_verdict(self) -> Verdict:
        """An engine exception: the policy's on-error verdict."""
        return _DROPPED[0] if self.engine.policy.on_error == "drop" else _ACCEPT

    def _on_queued(self, pkt: QueuedPacket) -> Verdict | None:
        """Our client's handler: None for a plain accept (the client batches it), else the
        Verdict the client sends (see NfqClient.drain for the order)."""
        given = self._judge_queued(pkt)
        self._judged()
        # Inside a burst that goes on (drain returns only when the socket is empty): write
        # blocks that have waited long enough, and show we are alive.
        self._counted()
        return given

    def _judge_queued(self, pkt: QueuedPacket) -> Verdict | None:
        """The verdict of one queued packet (None: a plain accept), its reply sent and its
        effects handed on; the bookkeeping (_judged, _counted) is the caller's. The compiled
        drain calls this for packets the copy range cut."""
        try:
            payload = pkt.payload
            if pkt.gso:
                self.gso_packets += 1
            cut = pkt.cap_len > len(payload)
            if cut:
                self.cut += 1
                payload = as_copied(payload)
            decision = self.engine.handle(
                payload, self._meta(pkt.indev, pkt.outdev, pkt.hwaddr), self.clock()
            )
        except Exception:  # a verdict must always be given
            self.verdict_errors += 1
            return self._error_given()
        return self._verdict_for(decision, pkt.mark, cut, pkt.csum_partial)

    def _judge_decoded(
        self,
        decoded: Packet | None,
        payload: bytes,
        meta: Meta,
        now: float,
        mark: int,
        csum_partial: bool,
    ) -> Verdict | None:
        """The compiled drain's packets the fast path did not decide: the rest of
        Engine.handle (the packet it decoded, or None: not decoded), then _verdict_for."""
        try:
            if decoded is not None:
                decision = self.engine.handle_packet(decoded, meta, now)
            else:
                decision = self.engine.handle_python(payload, meta, now)
        except Exception:  # a verdict must always be given
            self.verdict_errors += 1
            return self._error_given()
        return self._verdict_for(decision, mark, False, csum_partial)

    def _verdict_for(
        self, decision: Decision, mark: int, cut: bool, csum_partial: bool
    ) -> Verdict | None:
        """What the client sends for a decision (None: a plain accept, batched): the
        kernel's verdict, the reject's replies sent, the effects handed on."""
        given = None
        try:
            given, reply = kernel_verdict(decision, mark)
            new_bytes = given.payload
            if new_bytes is not None:
                if cut:
                    # New bytes would replace the whole packet; only its first part is here.
                    self.cut_rewrites_dropped += 1
                    given = _DROPPED[0]
                elif csum_partial:
                    given = given._replace(payload=_with_full_checksum(new_bytes))
            if reply is not None:
                self.replies.send(reply)
                if decision.peer_reply is not None:  # the server's end of a rejected flow
                    self.replies.send(decision.peer_reply)
            if decision.effects:
                self._packet_effects(decision.effects)
        except Exception:  # a verdict must always be given
            self.verdict_errors += 1
            if given is None:
                given = self._error_verdict()
        return None if given is _ACCEPT else given

    def _error_given(self) -> Verdict | None:
        """The on-error verdict as a handler returns it (None: accept)."""
        given = self._error_verdict()
        return None if given is _ACCEPT else given

    def _on_copied(self, pkt: LoggedPacket) -> None:
        """A copy of a packet the kernel passed: the engine sees it (flow state, detectors,
        counters); its decision is not a verdict any more — the flow was decided, and a
        block it makes stops the rest in the kernel."""
        decision = self.engine.handle(pkt.payload, self._meta(pkt.indev, pkt.outdev), self.clock())
        if decision.effects:
            self._packet_effects(decision.effects)
        self._counted()

    def _on_packet(self, pkt: NfqPacket) -> None:
        """netfilterqueue's callback: the same verdicts, one per packet."""
        try:
            # netfilterqueue gives the 8 bytes of the kernel's field: an Ethernet MAC is 6
            get_hw = getattr(pkt, "get_hw", None)
            hw = get_hw() if get_hw is not None else None
            decision = self.engine.handle(
                pkt.get_payload(),
                self._meta(pkt.indev, pkt.outdev, hw[:6] if hw else None),
                self.clock(),
            )
            # netfilterqueue reads the mark through a call: only an offload needs it
            mark = pkt.get_mark() if decision.offload else 0
            given, reply = kernel_verdict(decision, mark)
            _give(pkt, given)
            if reply is not None:
                self.replies.send(reply)
                if decision.peer_reply is not None:  # the server's end of a rejected flow
                    self.replies.send(decision.peer_reply)
            if decision.effects:
                self._packet_effects(decision.effects)
        except Exception:  # a verdict must always be given
            self.verdict_errors += 1
            with contextlib.suppress(RuntimeError):  # the verdict was already given
                _give(pkt, self._error_verdict())
        self._judged()
        self._counted()

    def _judged(self) -> None:
        """One more packet judged; published at once, so that the supervisor's count of
        packets passed unjudged is never ahead of the truth."""
        self.judged += 1
        cell = self.judged_cell
        if cell is not None:
            cell.value = self.judged


def _with_full_checksum(data: bytes) -> bytes:
    """New bytes for a packet queued with its checksum not filled in (ips.core.craft.
    complete_l4_checksum says why)."""
    pkt = decode_l3(data)
    return complete_l4_checksum(data, pkt) if isinstance(pkt, Packet) else data


def as_copied(data: bytes) -> bytes:
    """A packet the copy range cut (a GSO super-packet longer than 65,531 bytes), with its IP
    length saying what was copied, so that the engine judges its headers and the payload it
    has instead of calling it truncated. Only the engine's copy changes: the kernel keeps
    the packet (the verdict carries no bytes). The IPv4 header checksum is left stale: the
    engine does not read it."""
    if len(data) >= 20 and data[0] >> 4 == 4:
        return data[:2] + len(data).to_bytes(2, "big") + data[4:]
    if len(data) >= 40 and data[0] >> 4 == 6:
        return data[:4] + min(len(data) - 40, 0xFFFF).to_bytes(2, "big") + data[6:]
    return data


def _give(pkt: NfqPacket, given: Verdict) -> None:
    """A Verdict through netfilterqueue's Packet."""
    if given.verdict == NF_DROP:
        pkt.drop()
        return
    if given.payload is not None:
        pkt.set_payload(given.payload)
    if given.mark is not None:
        pkt.set_mark(given.mark)
    pkt.accept()
