"""NFQUEUE adapter: packets from the kernel into the engine, verdicts back.

One `QueueWorker` owns one queue. Its loop is single-threaded: `select` over the queue's
netlink socket and a control pipe, so it can also run timers (flow expiry) and answer the
daemon (reload, stats) without a lock. It runs in its own process (see ips/daemon.py) so a
hung worker can be killed and replaced.

What the kernel is told, per packet:
  accept   -> NF_ACCEPT
  drop     -> NF_DROP
  reject   -> NF_DROP, and the engine's TCP reset / ICMP error is sent from a raw socket
  rewrite  -> NF_ACCEPT with the new bytes (checksums already fixed by the engine)

Block effects (a detector crossed its threshold) go to `blocks` (ips/kernel/blocks.py), which
writes them to the kernel's block sets in one nft transaction at the end of the burst being
read — or from inside the burst once one has waited FLUSH_AFTER — so the attacker's next
packets are dropped by the kernel, before the queue.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ips.core.addr import format_addr
from ips.engine import Engine, Meta
from ips.io.adapter import EngineAdapter
from ips.kernel.ruleset import OFFLOAD_MARK

if TYPE_CHECKING:
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
        "=IHHII", 16 + len(body), (_NFNL_SUBSYS_QUEUE << 8) | _NFQNL_MSG_CONFIG,
        _NLM_F_REQUEST, seq, 0,
    )  # fmt: skip
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

    def __init__(
        self,
        queue_num: int,
        engine: Engine,
        *,
        fail_open: bool = True,
        max_len: int = DEFAULT_MAX_LEN,
        on_events: Callable[[list[object]], None] | None = None,
        clock: Callable[[], float] = time.time,
        blocks: KernelBlocks | None = None,
        on_busy: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(engine, on_events=on_events, clock=clock, blocks=blocks,
                         on_busy=on_busy)  # fmt: skip
        self.queue_num = queue_num
        self.fail_open = fail_open
        self.max_len = max_len
        self.replies = ReplySender()
        self.ifnames = InterfaceNames()
        self._metas: dict[tuple[int, int], Meta] = {}
        self._nfq = None

    # ---- queue set-up -------------------------------------------------------------------------

    def bind(self) -> int:
        """Bind the queue; return its netlink fd (for select)."""
        from netfilterqueue import NetfilterQueue  # imported here: only the daemon needs it

        nfq = NetfilterQueue()
        nfq.bind(self.queue_num, self._on_packet, max_len=self.max_len)
        fd = nfq.get_fd()
        flags = NFQA_CFG_F_FAIL_OPEN if self.fail_open else 0
        os.write(fd, queue_config_message(self.queue_num, flags, NFQA_CFG_F_FAIL_OPEN))
        os.set_blocking(fd, False)
        self._nfq = nfq
        return fd

    def unbind(self) -> None:
        if self._nfq is not None:
            self._nfq.unbind()
            self._nfq = None
        self.replies.close()

    def process_pending(self) -> None:
        """Handle every packet waiting on the socket, then write the blocks they made."""
        try:
            self._nfq.run(block=False)  # type: ignore[union-attr]
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ENOBUFS, errno.EINTR):
                raise
        finally:
            if self.blocks is not None and self.blocks.pending:
                self.blocks.flush()

    # ---- per packet -----------------------------------------------------------------------

    def _meta(self, indev: int, outdev: int) -> Meta:
        key = (indev, outdev)
        meta = self._metas.get(key)
        if meta is None:
            meta = Meta(iif=self.ifnames(indev), oif=self.ifnames(outdev))
            if len(self._metas) < 4096:
                self._metas[key] = meta
        return meta

    def _on_packet(self, pkt: object) -> None:
        try:
            decision = self.engine.handle(
                pkt.get_payload(),  # type: ignore[attr-defined]
                self._meta(pkt.indev, pkt.outdev),  # type: ignore[attr-defined]
                self.clock(),
            )
            verdict = decision.verdict
            if verdict == "drop":
                pkt.drop()  # type: ignore[attr-defined]
            elif verdict == "reject":
                pkt.drop()  # type: ignore[attr-defined]
                if decision.reply is not None:
                    self.replies.send(decision.reply)
            else:
                if decision.data is not None:
                    pkt.set_payload(decision.data)  # type: ignore[attr-defined]
                elif decision.offload:  # the kernel passes the flow's later packets itself
                    pkt.set_mark(pkt.get_mark() | OFFLOAD_MARK)  # type: ignore[attr-defined]
                pkt.accept()  # type: ignore[attr-defined]
            if decision.effects:
                self._packet_effects(decision.effects)
        except Exception:  # a verdict must always be given
            self.verdict_errors += 1
            try:
                if self.engine.policy.on_error == "drop":
                    pkt.drop()  # type: ignore[attr-defined]
                else:
                    pkt.accept()  # type: ignore[attr-defined]
            except RuntimeError:
                pass  # the verdict was already given
        # Inside a burst that goes on (run() returns only when the socket is empty): write
        # blocks that have waited long enough, and show we are alive.
        self._counted()


def wait_readable(fds: list[int], timeout: float) -> list[int]:
    """select() on fds, retrying on EINTR."""
    while True:
        try:
            ready, _, _ = select.select(fds, [], [], timeout)
            return ready
        except InterruptedError:
            continue
