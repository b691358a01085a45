"""The compiled NFQUEUE loop (ips/io/_nfqdrain.pyx) against the Python one, its definition.

Two queue workers, each with its own engine (the same policy) and its own datagram socket
pair playing the kernel, are fed the same queue messages: fast packets (established flows
the compiled path decides), slow ones (new flows, drops, rejects, rewrites, alerts, offloads),
GSO and cut packets, malformed and truncated messages, NLMSG_ERROR messages, several
messages in one datagram, bursts longer than BATCH_MAX. One worker drains with the Python
client (NfqClient.drain + QueueWorker._on_queued), the other with the compiled drain. They
must send byte-identical verdict messages in the same order, and end with the same counters
(the client's, the worker's, the meter's bytes), the same engine state (EngineStats, rule
hits, the flow table, dynamic tables) and the same effects. The judged count each publishes
is checked against the verdicts the 'kernel' has already received, at every publication:
never behind them.

Without the extension (not built, or IPSCTL_PURE=1) the compiled drain does not exist: the
worker must fall back to the Python drain (tested here), and the comparison is skipped.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import socket
import struct
import threading
import time
from typing import Any

import pytest
from packets import ping, tcp, udp
from test_fastpath_differential import engine_state, plain

from ips import fast
from ips.engine import Engine
from ips.io import nfqnl, nfqueue
from ips.io.nfqnl import BATCH_MAX, NfqClient, QueuedPacket, packet_message
from ips.io.nfqueue import QueueWorker
from ips.policy.resolve import load_policy_text
from ips.sinks.meter import install_meter

QUEUE = 4
POLICY = """
define lan = 10.10.1.0/24
define dmz = 10.10.2.0/24
table banned dynamic timeout 1h
set default drop
set on-error accept
set malformed drop
set offload {offload}
drop    from @banned
drop    proto tcp to port 23 alert "telnet" sid 1
reject  proto tcp to $dmz port 135
drop    proto udp from $lan to $dmz port 7001 length > 50
accept  state established
rewrite proto udp to $dmz port 5353 set ttl 64
drop    proto udp to $dmz port 99
accept  proto {{ tcp, udp }} from $lan to $dmz port {{ 53, 80, 7000-7010 }}
accept  proto icmp type echo-request
detect  portscan ports 12 within 60s block 10m
"""
CLIENTS = [f"10.10.1.{i}" for i in range(10, 16)]
SERVERS = [f"10.10.2.{i}" for i in range(10, 13)]
PORTS = (53, 80, 7000, 7005, 99, 5353, 23, 135, 9999)
MACS = (None, bytes.fromhex("020000000001"), bytes.fromhex("020000000002"))


def need_compiled_drain() -> None:
    if nfqueue._drain_module is not None and fast.available():
        return
    if fast.FORCED_PURE:
        pytest.skip("IPSCTL_PURE=1: the pure-Python engine and drain alone")
    pytest.skip("the compiled drain (ips/io/_nfqdrain) is not built")


# ---- the kernel's end ------------------------------------------------------------------------


class Kernel:
    """One socket pair: the worker's end, and ours, which queues messages and reads the
    verdicts, tracking which packets are still queued (a batch verdict takes every queued
    id up to its own, as nfqnl_recv_verdict_batch does)."""

    def __init__(self) -> None:
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for s in (self.ours, self.theirs):
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.verdicts: list[bytes] = []
        self.queued: list[int] = []  # ids waiting for a verdict, judged ones only
        self.covered = 0  # judged packets whose verdict was received

    def send(self, datagram: bytes, judged_ids: list[int]) -> None:
        self.theirs.send(datagram)
        self.queued.extend(judged_ids)

    def collect(self) -> None:
        while True:
            try:
                msg = self.theirs.recv(1 << 17)
            except BlockingIOError:
                return
            self.verdicts.append(msg)
            msg_type = struct.unpack_from("=H", msg, 4)[0]
            packet_id = struct.unpack_from("!I", msg, 28)[0]
            if msg_type == (3 << 8) | 3:  # batch: every queued id up to its own
                left = [i for i in self.queued if i > packet_id]
            else:
                left = [i for i in self.queued if i != packet_id]
            self.covered += len(self.queued) - len(left)
            self.queued = left

    def close(self) -> None:
        self.ours.close()
        self.theirs.close()


class CheckedCell:
    """The JudgedCell: at each publication, the verdicts the kernel has received so far must
    all be covered by the count published before (the supervisor never sees a packet out of
    the queue and not judged)."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self._value = 0
        self.publications = 0

    @property
    def value(self) -> int:
        return self._value

    @value.setter
    def value(self, new: int) -> None:
        self.kernel.collect()
        assert self.kernel.covered <= self._value, "a verdict went out before its count"
        assert new >= self._value
        self._value = new
        self.publications += 1


class Blocks:
    """A BlockWriter that notes, and is overdue one second after its first note."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.pending_since: float | None = None
        self.noted = 0
        self.flushes: list[float] = []

    @property
    def pending(self) -> bool:
        return self.pending_since is not None

    def note(self, effects: Any) -> bool:
        self.noted += len(list(effects))
        if self.pending_since is None:
            self.pending_since = self.clock()
        return True

    def overdue(self) -> bool:
        return self.pending_since is not None and self.clock() >= self.pending_since + 1.0

    def flush(self) -> None:
        self.flushes.append(self.clock())
        self.pending_since = None

    def stats(self) -> dict[str, object]:
        return {}


class SteppingBlocks(Blocks):
    """Blocks whose clock moves a quarter second at each look (`overdue`): the effects a
    burst's packet noted are overdue four packets later, within the same drain."""

    def __init__(self) -> None:
        self.looked = 0.0
        super().__init__(lambda: self.looked)

    def overdue(self) -> bool:
        self.looked += 0.25
        return super().overdue()


class Replies:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.failed = 0

    def send(self, packet: bytes) -> None:
        self.sent.append(packet)

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class Side:
    """A worker, its engine, its kernel end."""

    def __init__(
        self, offload: str, compiled: bool, clock: Clock, stepping_blocks: bool = False
    ) -> None:
        self.kernel = Kernel()
        self.engine = Engine(load_policy_text(POLICY.format(offload=offload)))
        self.meter = install_meter(self.engine)
        self.events: list[Any] = []
        self.beats = 0
        self.cell = CheckedCell(self.kernel)
        self.blocks = SteppingBlocks() if stepping_blocks else Blocks(clock)
        worker = QueueWorker(
            QUEUE,
            self.engine,
            client="own",
            read_copies=False,
            on_events=self.events.extend,
            clock=clock,
            judged_cell=self.cell,
            on_busy=self._beat,
            meter=self.meter,
        )
        worker.blocks = self.blocks  # type: ignore[assignment]
        worker.replies = Replies()  # type: ignore[assignment]
        client = NfqClient(QUEUE)
        client._sock = self.kernel.ours
        worker._client = client
        if compiled:
            assert nfqueue._drain_module is not None
            worker._compiled = nfqueue._drain_module.CompiledDrain(client, worker, self.meter)
        self.worker = worker
        self.client = client

    def _beat(self) -> None:
        self.beats += 1

    def drain(self, via_wait: bool = False) -> None:
        if via_wait:  # as the daemon's loop runs it: the wait drains what came
            fd = self.kernel.ours.fileno()
            assert self.worker.wait_and_process(fd, [], 5.0) == []
        else:
            self.worker.process_pending()
        self.kernel.collect()
        assert self.kernel.covered <= self.cell.value

    def counters(self) -> dict[str, object]:
        c, w = self.client, self.worker
        return {
            "client": [c.received, c.malformed, c.handler_errors, c.kernel_errors],
            "client_more": [c.last_error, c.verdicts_sent, c.enobufs],
            "worker": [w.judged, self.cell.value, w._count, w.verdict_errors, self.beats],
            "worker_more": [w.gso_packets, w.cut, w.cut_rewrites_dropped],
            "blocks": (self.blocks.noted, self.blocks.flushes),
            "replies": w.replies.sent,  # type: ignore[attr-defined]
            "meter_bytes": self.meter.bytes,
            "events": [repr(plain(e)) for e in self.events],
            "engine": engine_state(self.engine),
            "metas": sorted(map(repr, w._metas)),
        }


# ---- the traffic -------------------------------------------------------------------------------


class Traffic:
    """Queue messages: flows that go on (so the compiled path has packets to decide), new
    ones, and every kind of damage the drain must count."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.next_id = 1
        self.tcp_steps: dict[tuple[str, str, int, int], int] = {}

    def _packet(self) -> bytes:
        rng = self.rng
        # few flows, so that most packets are of flows that go on
        client, server = rng.choice(CLIENTS[:2]), rng.choice(SERVERS[:2])
        sport = 40000 + rng.randrange(2)
        kind = rng.random()
        if kind < 0.45:  # UDP, both ways
            port = rng.choice(PORTS) if rng.random() < 0.2 else rng.choice((7000, 7001, 7002))
            payload = b"q" * rng.randrange(1, 40)
            if rng.random() < 0.5:
                return udp(server, client, port, sport, payload=payload)
            return udp(client, server, sport, port, payload=payload)
        if kind < 0.85:  # TCP: handshake, then data both ways, sometimes a FIN or RST
            port = rng.choice((80, 7005, 7005, 7005, 7006, 23, 135, 9999))
            key = (client, server, sport, port)
            step = self.tcp_steps.get(key, 0)
            self.tcp_steps[key] = step + 1
            if step == 0:
                return tcp(client, server, sport, port, flags="S")
            if step == 1:
                return tcp(server, client, port, sport, flags="SA")
            if step == 2:
                return tcp(client, server, sport, port, flags="A")
            if rng.random() < 0.03:
                self.tcp_steps[key] = 0
                return tcp(client, server, sport, port, flags=rng.choice(("FA", "R")))
            data = b"GET / HTTP/1.1\r\n" if port == 80 else b"x" * rng.randrange(1, 100)
            if rng.random() < 0.5:
                return tcp(server, client, port, sport, flags="PA", payload=data)
            return tcp(client, server, sport, port, flags="PA", payload=data)
        if kind < 0.9:  # a scanner: new ports (the portscan detector blocks it)
            return tcp("10.10.1.66", rng.choice(SERVERS), 50000, rng.randrange(1, 2000), flags="S")
        return ping(client, server, ident=rng.randrange(3))

    def _queued(self, packet_id: int) -> QueuedPacket:
        rng = self.rng
        data = self._packet()
        # the interfaces of the packet's direction (a flow's rule cache is made for them),
        # now and then others
        indev, outdev = (1, 2) if data[12:15] == bytes((10, 10, 1)) else (2, 1)
        if rng.random() < 0.03:
            indev, outdev = rng.choice(((1, 1), (2, 2)))
        pkt = QueuedPacket(packet_id, data, indev=indev, outdev=outdev)
        pkt.mark = rng.choice((0, 0, 0x10))
        roll = rng.random()
        if roll < 0.02:
            pkt.gso = True
            pkt.csum_partial = rng.random() < 0.5
        elif roll < 0.04:
            pkt.cap_len = len(pkt.payload) + rng.randrange(1, 9000)
        elif roll < 0.06:
            pkt.csum_partial = True
        return pkt

    def datagram(self) -> tuple[bytes, list[int]]:
        """One datagram, and the ids of the packets in it the worker will judge."""
        rng = self.rng
        roll = rng.random()
        packet_id = self.next_id
        self.next_id += 1
        msg = packet_message(QUEUE, self._queued(packet_id), hwaddr=rng.choice(MACS))
        if roll < 0.02:  # an attribute that overruns its message: malformed, id readable
            bad = bytearray(msg)
            struct.pack_into("=H", bad, len(msg) - len(self._last_payload(msg)) - 4, 0xFFF0)
            return bytes(bad), []
        if roll < 0.03:  # a message longer than its datagram: truncated
            return msg[: rng.randrange(20, len(msg))], []
        if roll < 0.04:  # no payload attribute at all
            body = msg[: msg.rfind(struct.pack("=H", nfqnl.NFQA_PAYLOAD)) - 2]
            return struct.pack("=I", len(body)) + body[4:], []
        if roll < 0.06:  # the kernel's answer to a verdict: an error, or an ACK
            code = rng.choice((0, 2, 22))
            err = struct.pack("=IHHII", 36, 2, 0, 0, 0) + struct.pack("=i", -code) + b"\0" * 16
            self.next_id -= 1
            return err, []
        if roll < 0.08:  # two packets in one datagram
            second_id = self.next_id
            self.next_id += 1
            pad = b"\0" * (-len(msg) % 4)
            two = msg + pad + packet_message(QUEUE, self._queued(second_id))
            return two, [packet_id, second_id]
        return msg, [packet_id]

    @staticmethod
    def _last_payload(msg: bytes) -> bytes:
        at = msg.rfind(struct.pack("=H", nfqnl.NFQA_PAYLOAD)) - 2
        length = struct.unpack_from("=H", msg, at)[0]
        return msg[at + 4 : at + length]


# ---- the comparison ------------------------------------------------------------------------------


def run_both(
    seed: int, offload: str, bursts: list[int], via_wait: bool = False, stepping: bool = False
) -> tuple[Side, Side]:
    clock = Clock()
    py, cc = Side(offload, False, clock, stepping), Side(offload, True, clock, stepping)
    traffic = Traffic(seed)
    try:
        for size in bursts:
            for _ in range(size):
                datagram, ids = traffic.datagram()
                py.kernel.send(datagram, ids)
                cc.kernel.send(datagram, ids)
            py.drain()
            cc.drain(via_wait)
            assert cc.kernel.verdicts == py.kernel.verdicts
            assert py.kernel.queued == [] and cc.kernel.queued == []
            clock.now += traffic.rng.choice((0.3, 0.7, 1.5, 30.0))
        assert cc.counters() == py.counters()
        return py, cc
    finally:
        py.kernel.close()
        cc.kernel.close()


@pytest.mark.parametrize("offload", ["off", "on"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_compiled_drain_sends_what_the_python_drain_sends(seed: int, offload: str) -> None:
    need_compiled_drain()
    bursts = [1, 3, 7, 40, 2, 3 * BATCH_MAX + 17, 1, 5, 300, 9, 1, 1, 64, 2 * BATCH_MAX]
    _, cc = run_both(seed, offload, bursts)
    # the traffic exercised what it is meant to
    assert cc.worker._compiled is not None and cc.worker._compiled.compiled_packets > 100
    stats = cc.engine.stats
    assert stats.packets - cc.worker._compiled.compiled_packets > 100  # Python decided some
    assert cc.client.malformed > 5 and cc.client.kernel_errors > 0
    assert cc.worker.gso_packets > 0 and cc.worker.cut > 0
    assert cc.blocks.noted > 0 and cc.worker.replies.sent  # type: ignore[attr-defined]
    # drops the compiled path decided, while accepts waited for a batch (ordering)
    assert sum(1 for m in cc.kernel.verdicts if m[24:28] == struct.pack("!I", 0)) > 30
    kinds = {struct.unpack_from("=H", m, 4)[0] for m in cc.kernel.verdicts}
    assert kinds == {(3 << 8) | 1, (3 << 8) | 3}
    assert any(len(m) > 40 for m in cc.kernel.verdicts)  # rewrites (and offload marks)
    assert cc.beats > 0  # a burst past BUSY_EVERY beat inside it


@pytest.mark.parametrize("via_wait", [False, True])
def test_blocks_a_burst_noted_are_written_once_overdue_within_it(via_wait: bool) -> None:
    """Both drains look whether the blocks are overdue after every packet while effects wait
    (the compiled one reads `pending_since` again only after Python ran): the same looks,
    so the same writes at the same packets."""
    need_compiled_drain()
    bursts = [40, 300, 3 * BATCH_MAX + 17, 64, 300]
    _, cc = run_both(7, "off", bursts, via_wait, stepping=True)
    assert cc.blocks.noted > 0 and len(cc.blocks.flushes) >= 2, cc.blocks.flushes


@pytest.mark.parametrize("offload", ["off", "on"])
def test_the_compiled_wait_drains_as_the_python_drain_does(offload: str) -> None:
    """The daemon's loop waits in compiled code (CompiledDrain.wait: poll, then the drain
    at once): the same verdicts as select and the Python drain."""
    need_compiled_drain()
    bursts = [1, 3, 40, 2, 3 * BATCH_MAX + 17, 1, 300, 1, 64]
    _, cc = run_both(5, offload, bursts, via_wait=True)
    assert cc.worker._compiled is not None and cc.worker._compiled.compiled_packets > 100


def test_the_wait_reports_the_other_fds_and_times_out() -> None:
    """wait_and_process with the compiled loop and without: a readable other fd is
    returned (the queue drained too when it has packets), an idle wait ends at its
    timeout with nothing."""
    need_compiled_drain()
    clock = Clock()
    sides = [Side("off", False, clock), Side("off", True, clock)]
    traffic = Traffic(6)
    other, writer = os.pipe()
    try:
        for side in sides:
            fd = side.kernel.ours.fileno()
            start = time.monotonic()
            assert side.worker.wait_and_process(fd, [other], 0.05) == []
            assert time.monotonic() - start >= 0.04  # it waited
        os.write(writer, b"x")
        for side in sides:
            assert side.worker.wait_and_process(side.kernel.ours.fileno(), [other], 5.0) == [other]
            side.kernel.collect()
            assert side.kernel.verdicts == []  # the queue had nothing
        for _ in range(50):
            datagram, ids = traffic.datagram()
            for side in sides:
                side.kernel.send(datagram, ids)
        for side in sides:
            assert side.worker.wait_and_process(side.kernel.ours.fileno(), [other], 5.0) == [other]
            side.kernel.collect()
        py, cc = sides
        assert py.kernel.verdicts and cc.kernel.verdicts == py.kernel.verdicts
        assert py.kernel.queued == [] and cc.kernel.queued == []
        assert cc.counters() == py.counters()
    finally:
        os.close(other)
        os.close(writer)
        for side in sides:
            side.kernel.close()


def test_a_long_flood_of_one_flow_is_decided_in_the_loop_and_batched() -> None:
    """The bench's case: one established UDP flow, thousands of packets in one drain."""
    need_compiled_drain()
    clock = Clock()
    sides = [Side("off", False, clock), Side("off", True, clock)]
    try:
        request = udp(CLIENTS[0], SERVERS[0], 40000, 7000, payload=b"x" * 18)
        answer = udp(SERVERS[0], CLIENTS[0], 7000, 40000, payload=b"y")
        for side in sides:
            side.kernel.send(packet_message(QUEUE, QueuedPacket(1, request, 1, 2)), [1])
            side.kernel.send(packet_message(QUEUE, QueuedPacket(2, answer, 2, 1)), [2])
            side.drain()
            for i in range(3, 3000):
                side.kernel.send(packet_message(QUEUE, QueuedPacket(i, request, 1, 2)), [i])
            side.drain()
        py, cc = sides
        assert cc.kernel.verdicts == py.kernel.verdicts
        assert cc.counters() == py.counters()
        assert cc.worker._compiled is not None
        assert cc.worker._compiled.compiled_packets == 2997
        # 3000 packets: 4 + 4 accepted one by one (two drains), the rest in batches
        assert len(cc.kernel.verdicts) < 3000 // BATCH_MAX + 12
    finally:
        for side in sides:
            side.kernel.close()


def test_a_worker_that_raises_gives_on_error_in_both_drains(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An exception out of the worker's side (here: its Meta lookup) is counted in the
    worker's verdict_errors and gets the on-error verdict, in both loops."""
    need_compiled_drain()
    clock = Clock()
    sides = [Side("off", False, clock), Side("off", True, clock)]
    try:
        for side in sides:
            side.client.on_error = nfqnl.NF_DROP
            monkeypatch.setattr(side.engine.policy, "on_error", "drop")

            def broken(*_args: object) -> object:
                raise RuntimeError("bug")

            side.worker._meta = broken  # type: ignore[method-assign]
            for i in range(1, 8):
                pkt = QueuedPacket(i, udp(CLIENTS[0], SERVERS[0], 40000, 53), 1, 2)
                side.kernel.send(packet_message(QUEUE, pkt), [i])
            side.drain()
        py, cc = sides
        assert cc.kernel.verdicts == py.kernel.verdicts
        assert py.worker.verdict_errors == cc.worker.verdict_errors == 7
    finally:
        for side in sides:
            side.kernel.close()


def test_the_worker_uses_the_compiled_drain_only_when_it_can() -> None:
    """Built: the compiled drain, unless engine.handle is wrapped by something that is not
    the meter the worker was given. IPSCTL_PURE=1 or not built: the Python drain."""
    clock = Clock()
    side = Side("off", False, clock)
    try:
        worker = side.worker
        assert worker.client_stats()["drain"] == "python"
        expected = nfqueue._drain_module is not None
        assert (nfqueue._drain_module is None) == (fast.FORCED_PURE or not expected)
        if fast.FORCED_PURE:
            assert nfqueue._drain_module is None
        # bind() without a netlink socket: the decision it makes, on its own
        worker._client = None
        worker.meter = None
        worker.engine.handle = lambda *a: None  # type: ignore[method-assign]
        assert not worker._compiled_drain_allowed()
        worker.meter = side.meter
        assert worker._compiled_drain_allowed() == expected
    finally:
        side.kernel.close()


def test_the_verdict_checks_here_can_fail() -> None:
    """The comparison is not vacuous: a compiled drain that batches one packet too many (a
    drop sent after the batch that covers it) is caught by the verdict comparison."""
    need_compiled_drain()
    clock = Clock()
    py, cc = Side("off", False, clock), Side("off", True, clock)
    try:
        cc.client.batch_after = 0  # one setting off: what a bug in the order would look like
        traffic = Traffic(7)
        for _ in range(30):
            datagram, ids = traffic.datagram()
            py.kernel.send(datagram, ids)
            cc.kernel.send(datagram, ids)
        py.drain()
        cc.drain()
        assert cc.kernel.verdicts != py.kernel.verdicts
    finally:
        py.kernel.close()
        cc.kernel.close()


def test_bookkeeping_that_raises_is_a_handler_error_in_both_drains(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An exception of the bookkeeping after the verdict was chosen (here: the block writer's
    flush) is, as in the Python drain, the client's handler error: the packet gets on_error."""
    need_compiled_drain()
    clock = Clock()
    sides = [Side("off", False, clock), Side("off", True, clock)]

    def failing_flush() -> None:
        raise RuntimeError("nft is gone")

    try:
        for side in sides:
            monkeypatch.setattr(side.engine.policy, "on_error", "drop")  # on_error: a drop each
            side.blocks.pending_since = clock.now - 5.0  # overdue: flushed after each packet
            side.blocks.flush = failing_flush  # type: ignore[method-assign]
            for i in range(1, 9):
                pkt = QueuedPacket(i, udp(CLIENTS[0], SERVERS[0], 40000, 7000), 1, 2)
                side.kernel.send(packet_message(QUEUE, pkt), [i])
            with pytest.raises(RuntimeError):  # process_pending's own flush, at the end
                side.worker.process_pending()
            side.kernel.collect()
        py, cc = sides
        assert cc.kernel.verdicts == py.kernel.verdicts
        assert len(cc.kernel.verdicts) == 8
        assert py.client.handler_errors == cc.client.handler_errors == 8
    finally:
        for side in sides:
            side.kernel.close()


def test_every_kind_of_fast_decision_maps_as_kernel_verdict_maps_it() -> None:
    """A stand-in fast path that decides every packet with Decisions from a small pool, the
    same objects again and again (one of them given effects now and then): plain accepts,
    drops, both offload kinds (with and without a packet mark), a reject with replies, a
    rewrite (its checksum completed for a CHECKSUM-not-ready packet), effects. The compiled
    loop's own mapping and its cache of the last Decision must give what kernel_verdict
    gives in the Python drain."""
    need_compiled_drain()
    from ips.core.decision import OFFLOAD_FLOW, OFFLOAD_HANDSHAKE_ACK, Decision

    rewritten = udp(CLIENTS[1], SERVERS[1], 40001, 7001, payload=b"new")
    shared_with_effects = Decision("accept")
    pool = [
        Decision("accept"),
        Decision("accept"),
        Decision("drop"),
        Decision("accept", offload=OFFLOAD_FLOW),
        Decision("accept", offload=OFFLOAD_HANDSHAKE_ACK),
        Decision("reject", reply=b"rst", peer_reply=b"peer"),
        Decision("rewrite", data=rewritten),
        Decision("accept", data=rewritten),
        shared_with_effects,
    ]
    clock = Clock()
    sides = [Side("off", False, clock), Side("off", True, clock)]
    try:
        for side in sides:
            rng = random.Random(5)

            def fast_path(
                data: bytes, meta: object, now: float, rng: random.Random = rng
            ) -> object:
                decision = rng.choice(pool + [pool[0]] * 6 + [shared_with_effects] * 6)
                if decision is shared_with_effects:
                    decision.effects = ("effect",) if rng.random() < 0.5 else ()
                return decision

            side.engine._fast = fast_path
            for i in range(1, 700):
                pkt = QueuedPacket(i, udp(CLIENTS[0], SERVERS[0], 40000, 7000), 1, 2)
                pkt.mark = (0, 0x10, 0x7)[i % 3]
                pkt.csum_partial = i % 5 == 0
                side.kernel.send(packet_message(QUEUE, pkt), [i])
                if i % 97 == 0:
                    side.drain()
            side.drain()
        py, cc = sides
        assert cc.kernel.verdicts == py.kernel.verdicts
        assert cc.worker.replies.sent == py.worker.replies.sent != []  # type: ignore[attr-defined]
        assert cc.events == py.events and py.events
        marks = {m[32:40] for m in cc.kernel.verdicts if len(m) == 40}
        assert len(marks) >= 4  # both offload marks, over several packet marks
    finally:
        for side in sides:
            side.kernel.close()


def _feed(side: Side, bursts: list[list[tuple[bytes, list[int]]]], then_write: int | None) -> None:
    """Queue the bursts 50 ms apart while the worker waits, then make `then_write` readable.
    Their ids are noted as queued before the thread starts (_feeding): the worker's judged
    cell reads the verdicts from its own thread, and must find every id it could judge."""
    for burst in bursts:
        time.sleep(0.05)
        for datagram, _ids in burst:
            side.kernel.theirs.send(datagram)
    if then_write is not None:
        time.sleep(0.05)
        os.write(then_write, b"x")


def _feeding(
    side: Side, bursts: list[list[tuple[bytes, list[int]]]], then_write: int | None
) -> threading.Thread:
    for burst in bursts:
        for _datagram, ids in burst:
            side.kernel.queued.extend(ids)
    return threading.Thread(target=_feed, args=(side, bursts, then_write))


def test_a_lingering_wait_judges_every_burst_until_another_fd_is_readable() -> None:
    """With linger, judged packets do not end the wait (the worker's loop runs its Python per
    due, not per wake-up): three bursts queued 50 ms apart are all judged within the one
    call, which returns when the other fd becomes readable. Compiled and Python alike. (No
    block writer: blocks to write end a lingering wait, the next test's case.)"""
    need_compiled_drain()
    clock = Clock()
    sides = [Side("off", False, clock), Side("off", True, clock)]
    for side in sides:
        side.worker.blocks = None
    traffic = Traffic(11)
    bursts = [[traffic.datagram() for _ in range(n)] for n in (5, 40, 3)]
    other, writer = os.pipe()
    try:
        for side in sides:
            feeder = _feeding(side, bursts, writer)
            feeder.start()
            try:
                ready = side.worker.wait_and_process(
                    side.kernel.ours.fileno(), [other], 5.0, linger=True
                )
            finally:
                feeder.join()
            assert ready == [other], side.worker._compiled
            os.read(other, 1)
            side.kernel.collect()
            # every burst was judged in that one wait
            assert side.kernel.queued == [], (side.worker._compiled, side.client.received)
        # (how the bursts were batched into verdict messages depends on the threads' timing)
        py, cc = sides
        assert engine_state(cc.engine) == engine_state(py.engine)
        assert cc.client.received == py.client.received > 40
        # the counts the compiled drains kept in C were written back when the wait returned
        assert cc.worker.judged == py.worker.judged == cc.cell.value == cc.client.received
        assert cc.worker._count == py.worker._count
        assert cc.client.verdicts_sent > 0 and cc.client.recv_calls > 0
    finally:
        os.close(other)
        os.close(writer)
        for side in sides:
            side.kernel.close()


def test_with_time_time_as_its_clock_the_drain_reads_the_wall_clock_itself() -> None:
    """The compiled drain reads CLOCK_REALTIME in place of calling time.time (its conversion):
    the flows it files are seen at a time between the reads before and after the drain,
    as with the Python loop."""
    need_compiled_drain()
    traffic = Traffic(13)
    burst = [traffic.datagram() for _ in range(20)]
    for compiled in (False, True):
        side = Side("off", compiled, time.time)
        try:
            before = time.time()
            for datagram, ids in burst:
                side.kernel.send(datagram, ids)
            side.drain()
            after = time.time()
            seen = {flow.last_seen for flow in side.engine.flows._flows.values()}
            assert seen and all(before <= t <= after for t in seen), (compiled, before, seen)
            assert side.worker.judged == side.client.received > 0
        finally:
            side.kernel.close()


def test_a_lingering_wait_ends_at_its_timeout_and_without_linger_at_the_first_drain() -> None:
    need_compiled_drain()
    clock = Clock()
    traffic = Traffic(12)
    bursts = [[traffic.datagram() for _ in range(n)] for n in (4, 4)]
    for compiled in (False, True):
        # lingering: the bursts queued while it waits are judged, and it waits to its end
        side = Side("off", compiled, clock)
        side.worker.blocks = None  # blocks to write would end the wait (the next test)
        try:
            feeder = _feeding(side, bursts, None)
            start = time.monotonic()
            feeder.start()
            try:
                ready = side.worker.wait_and_process(
                    side.kernel.ours.fileno(), [], 1.0, linger=True
                )
                waited = time.monotonic() - start
            finally:
                feeder.join()
            assert ready == []
            side.kernel.collect()
            assert side.kernel.queued == [] and waited >= 0.99, (compiled, waited)
        finally:
            side.kernel.close()
        # not lingering: the first drain ends it, long before its timeout
        side = Side("off", compiled, clock)
        side.worker.blocks = None
        try:
            for datagram, ids in bursts[0]:
                side.kernel.send(datagram, ids)
            start = time.monotonic()
            assert side.worker.wait_and_process(side.kernel.ours.fileno(), [], 5.0) == []
            assert time.monotonic() - start < 4.0, compiled
            side.kernel.collect()
            assert side.kernel.queued == []
        finally:
            side.kernel.close()


def test_a_lingering_wait_leaves_no_block_unwritten_until_its_timeout() -> None:
    """Blocks to write are written at the end of the burst, lingering or not: the compiled
    wait returns for the caller to write them, the Python one writes them in
    process_pending."""
    need_compiled_drain()
    clock = Clock()
    traffic = Traffic(13)
    burst = [traffic.datagram() for _ in range(6)]
    for compiled in (False, True):
        side = Side("off", compiled, clock)
        try:
            side.blocks.pending_since = clock()  # a block waits to be written
            for datagram, ids in burst:
                side.kernel.send(datagram, ids)
            # the compiled wait must not linger to its end with blocks to write: 5 s is the
            # bound it would reach; the Python one writes them inside and lingers on
            timeout = 5.0 if compiled else 0.2
            start = time.monotonic()
            side.worker.wait_and_process(side.kernel.ours.fileno(), [], timeout, linger=True)
            if compiled:
                assert time.monotonic() - start < 4.0
            assert side.blocks.flushes and not side.blocks.pending, compiled
            side.kernel.collect()
            assert side.kernel.queued == []
        finally:
            side.kernel.close()


def test_a_thread_a_drain_starts_runs_while_the_wait_lingers() -> None:
    """The compiled wait polls holding the GIL only while its thread is the interpreter's
    only one: a thread that a drain's Python starts (as the store's hand-over is started)
    runs during the next poll, here writing to the fd that ends the wait."""
    need_compiled_drain()
    clock = Clock()
    side = Side("off", True, clock)
    side.worker.blocks = None  # (blocks to write would end the wait by themselves)
    other, writer = os.pipe()
    started: list[threading.Thread] = []

    def on_events(effects: list[object]) -> None:
        if not started:
            thread = threading.Thread(target=lambda: (time.sleep(0.05), os.write(writer, b"x")))
            started.append(thread)
            thread.start()

    side.worker.on_events = on_events
    traffic = Traffic(14)
    try:
        for _ in range(400):
            datagram, ids = traffic.datagram()
            side.kernel.send(datagram, ids)
        start = time.monotonic()
        ready = side.worker.wait_and_process(side.kernel.ours.fileno(), [other], 5.0, linger=True)
        waited = time.monotonic() - start
        assert started, "the traffic made no events"
        assert ready == [other] and waited < 2.0, (ready, waited)
    finally:
        for thread in started:
            thread.join()
        os.close(other)
        os.close(writer)
        side.kernel.close()


def test_the_daemons_shared_cell_is_written_as_its_setter_would() -> None:
    """The daemon's JudgedCell is a multiprocessing.Value("Q", lock=False): the compiled loop
    writes its shared memory directly (CompiledDrain._publish). After each drain it holds
    what the Python loop's cell holds: every packet judged so far."""
    need_compiled_drain()
    clock = Clock()
    sides = [Side("off", False, clock), Side("off", True, clock)]
    cells = []
    for side in sides:
        cell = multiprocessing.get_context("fork").Value("Q", 0, lock=False)
        side.worker.judged_cell = cell
        cells.append(cell)
    traffic = Traffic(14)
    try:
        for burst in (3, 50, 1, 200):
            for _ in range(burst):
                datagram, ids = traffic.datagram()
                for side in sides:
                    side.kernel.send(datagram, ids)
            for side in sides:
                side.worker.process_pending()
                side.kernel.collect()
            py, cc = sides
            assert cells[1].value == cells[0].value == py.worker.judged == cc.worker.judged
            assert cc.kernel.covered == py.kernel.covered <= cells[1].value
        assert cells[1].value > 200
    finally:
        for side in sides:
            side.kernel.close()
