"""The passive adapter: `ipsctl run --mode tap --iface IFACE`.

Reads copies of the frames on an interface (a mirror/SPAN port, or any interface) from an
AF_PACKET socket and runs the same engine over them. Nothing is enforced: the verdicts are
counted as would_drop / would_reject / would_rewrite, and the packet has already gone on its
way. (Blocks of the detectors go into the kernel only when the policy says
`set tap-blocks enforce`; the daemon arranges that, not this adapter.)

What the kernel could not hand us (socket buffer full) is counted by the kernel itself:
PACKET_STATISTICS, read (and reset by the kernel) at every stats call and summed here.

An optional classic BPF filter (`--bpf "not port 22"`, tcpdump's syntax, compiled by tcpdump
itself) runs in the kernel, so what it rejects costs nothing here.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import socket
import struct
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from ips.core.events import Alert, Effect
from ips.core.packet import LINKTYPE_ETHERNET, LINKTYPE_RAW
from ips.engine import Engine, Meta
from ips.io.adapter import EngineAdapter
from ips.kernel.blocks import KernelBlocks

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4  # sll_pkttype of a frame this host sent
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33

RECV_BUFFER = 16 * 1024 * 1024  # socket buffer: bursts wait here instead of being dropped
MAX_FRAME = 65_535 + 64
BATCH = 512  # frames per process_pending call, so the loop still beats and answers control

# ARPHRD_* (the interface's hardware type) -> the link type our decoder reads.
ARPHRD_LINKTYPES = {
    1: LINKTYPE_ETHERNET,  # ARPHRD_ETHER (veth, bridges, real NICs)
    772: LINKTYPE_ETHERNET,  # ARPHRD_LOOPBACK: frames with an all-zero Ethernet header
    0xFFFE: LINKTYPE_RAW,  # ARPHRD_NONE: tun devices, WireGuard (raw IP)
}


class TapError(Exception):
    """The tap cannot be set up (no such interface, a BPF expression tcpdump refuses, …)."""


def compile_bpf(expression: str, iface: str) -> list[tuple[int, int, int, int]]:
    """Classic BPF instructions for a tcpdump filter expression, compiled by tcpdump for the
    interface's link type (`tcpdump -ddd`). TapError with tcpdump's own message if refused."""
    try:
        out = subprocess.run(
            ["tcpdump", "-i", iface, "-ddd", expression],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except FileNotFoundError as exc:
        raise TapError("--bpf needs tcpdump (apt-get install tcpdump) to compile it") from exc
    if out.returncode != 0:
        message = (out.stderr.strip().splitlines() or ["tcpdump failed"])[-1]
        raise TapError(f"bad --bpf expression {expression!r}: {message}")
    return parse_bpf_program(out.stdout)


def parse_bpf_program(text: str) -> list[tuple[int, int, int, int]]:
    """`tcpdump -ddd` output: a count line, then `code jt jf k` per instruction."""
    lines = [line.split() for line in text.strip().splitlines()]
    if not lines or len(lines[0]) != 1:
        raise TapError("unexpected tcpdump -ddd output")
    count = int(lines[0][0])
    program = [tuple(int(v) for v in parts) for parts in lines[1:]]
    if count != len(program) or any(len(ins) != 4 for ins in program):
        raise TapError("unexpected tcpdump -ddd output")
    return program  # type: ignore[return-value]


def attach_bpf(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    """SO_ATTACH_FILTER: struct sock_fprog { u16 len; struct sock_filter *filter; }."""
    filters = b"".join(struct.pack("HBBI", *ins) for ins in program)
    buf = ctypes.create_string_buffer(filters)
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def interface_linktype(iface: str) -> int:
    try:
        arphrd = int(Path(f"/sys/class/net/{iface}/type").read_text())
    except (OSError, ValueError) as exc:
        raise TapError(f"no interface {iface!r} here") from exc
    linktype = ARPHRD_LINKTYPES.get(arphrd)
    if linktype is None:
        raise TapError(f"interface {iface!r} has a link type ipsctl cannot read ({arphrd})")
    return linktype


def _not_enforced(effects: Iterable[Effect]) -> list[Effect]:
    """A tap enforces nothing: an alert the engine calls `blocked` is `would_drop` for every
    sink (EVE, the recent alerts of `ipsctl top`, the webhook)."""
    out = list(effects)
    for ev in out:
        if ev.__class__ is Alert and ev.action == "blocked":
            ev.action = "would_drop"
    return out


class _NoReplies:
    """A tap sends nothing: no reject replies."""

    sent = 0
    failed = 0

    def close(self) -> None:
        pass


class TapWorker(EngineAdapter):
    """Reads one interface's frames (AF_PACKET) and runs the engine over them, passively."""

    mode = "tap"

    def __init__(
        self,
        iface: str,
        engine: Engine,
        *,
        bpf: list[tuple[int, int, int, int]] | None = None,
        bpf_text: str | None = None,
        promisc: bool = False,
        on_events: Callable[[list[Effect]], None] | None = None,
        clock: Callable[[], float] = time.time,
        blocks: KernelBlocks | None = None,
        on_busy: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(engine, on_events=on_events, clock=clock, blocks=blocks, on_busy=on_busy)
        self.iface = iface
        self.bpf = bpf
        self.bpf_text = bpf_text
        self.promisc = promisc
        self.replies = _NoReplies()
        self.would: Counter[str] = Counter()  # verdicts that were not enforced
        self.frames = 0
        self.bytes = 0
        self.kernel_packets = 0  # PACKET_STATISTICS tp_packets, summed
        self.kernel_drops = 0  # tp_drops: frames lost before we could read them
        self._sock: socket.socket | None = None
        self._meta_in = Meta()
        self._meta_out = Meta()

    def bind(self) -> int:
        linktype = interface_linktype(self.iface)
        self._meta_in = Meta(iif=self.iface, linktype=linktype)
        self._meta_out = Meta(oif=self.iface, linktype=linktype)
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECV_BUFFER)
            except OSError:  # without CAP_NET_ADMIN: what rmem_max allows
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
            if self.bpf:
                attach_bpf(sock, self.bpf)
            sock.bind((self.iface, ETH_P_ALL))
            if self.promisc:
                index = socket.if_nametoindex(self.iface)
                mreq = struct.pack("iHH8s", index, PACKET_MR_PROMISC, 0, b"")
                sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)  # undone on close
            sock.setblocking(False)
            # Frames of other interfaces queued between socket() and bind(): not ours.
            while True:
                try:
                    sock.recv(MAX_FRAME)
                except BlockingIOError:
                    break
            self._read_kernel_stats(sock)  # and reset the kernel's counts to this moment
            self.kernel_packets = self.kernel_drops = 0
        except OSError as exc:
            sock.close()
            raise TapError(f"cannot read interface {self.iface!r}: {exc}") from exc
        self._sock = sock
        return sock.fileno()

    def unbind(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def process_pending(self) -> None:
        """Read and judge what is waiting (at most BATCH frames), then write pending blocks."""
        sock = self._sock
        assert sock is not None
        handle = self.engine.handle
        clock = self.clock
        meta_in, meta_out = self._meta_in, self._meta_out
        try:
            for _ in range(BATCH):
                try:
                    data, addr = sock.recvfrom(MAX_FRAME)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno in (errno.EINTR, errno.ENETDOWN):
                        break
                    raise
                self.frames += 1
                self.bytes += len(data)
                meta = meta_out if addr[2] == PACKET_OUTGOING else meta_in
                try:
                    decision = handle(data, meta, clock())
                    verdict = decision.verdict
                    if verdict != "accept":
                        self.would[verdict] += 1
                    if decision.effects:
                        self._packet_effects(decision.effects)
                except Exception:  # never die of one frame (handle itself never raises)
                    self.verdict_errors += 1
                self._counted()
        finally:
            if self.blocks is not None and self.blocks.pending:
                self.blocks.flush()

    def _packet_effects(self, decision_effects: Iterable[Effect]) -> None:
        super()._packet_effects(_not_enforced(decision_effects))

    def effects(self, effects: list[Effect]) -> None:
        super().effects(_not_enforced(effects))

    def _read_kernel_stats(self, sock: socket.socket) -> None:
        raw = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        packets, drops = struct.unpack("II", raw)
        self.kernel_packets += packets
        self.kernel_drops += drops

    def stats_sections(self) -> dict[str, object]:
        return {"tap": self.stats()}

    def stats(self) -> dict[str, object]:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._read_kernel_stats(self._sock)
        return {
            "iface": self.iface,
            "promisc": self.promisc,
            "bpf": self.bpf_text,
            "frames": self.frames,
            "bytes": self.bytes,
            "kernel_packets": self.kernel_packets,
            "kernel_drops": self.kernel_drops,
            "would": {f"would_{v}": n for v, n in sorted(self.would.items())},
        }
