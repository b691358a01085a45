"""The own NFQUEUE client's verdicts and the queue worker's handler, against a datagram pair
that plays the kernel."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest
from test_nfqnl import _sent  # the datagram pair that plays the kernel: what it was sent

from ips.core.decision import Decision
from ips.io import nfqnl
from ips.io.nfqnl import NfqClient, QueuedPacket, Verdict, packet_message, verdict_message
from ips.io.nfqueue import QueueWorker, kernel_verdict
from ips.translate.nft import OFFLOAD_MARK

GATEWAY = str(Path(__file__).resolve().parents[2] / "policies" / "gateway.rules")
UDP = bytes.fromhex("450000210001000040117a6a0a0a01140a0a020a9c4000350009f3a078")


def test_kernel_verdict_maps_every_decision() -> None:
    assert kernel_verdict(Decision("accept")) == (Verdict(nfqnl.NF_ACCEPT), None)
    assert kernel_verdict(Decision("drop")) == (Verdict(nfqnl.NF_DROP), None)
    assert kernel_verdict(Decision("reject", reply=b"rst")) == (Verdict(nfqnl.NF_DROP), b"rst")
    assert kernel_verdict(Decision("rewrite", data=b"new")) == (
        Verdict(nfqnl.NF_ACCEPT, None, b"new"),
        None,
    )
    # offload: the packet's own mark keeps its bits; no mark attribute on the packet is 0
    assert kernel_verdict(Decision("accept", offload=True), 0x7) == (
        Verdict(nfqnl.NF_ACCEPT, 0x7 | OFFLOAD_MARK),
        None,
    )
    assert kernel_verdict(Decision("accept", offload=True))[0].mark == OFFLOAD_MARK


def test_an_offload_verdict_carries_nfqa_mark_as_be32() -> None:
    given = kernel_verdict(Decision("accept", offload=True), 0x10)[0]
    msg = verdict_message(2, 41, given.verdict, mark=given.mark, payload=given.payload)
    attrs = msg[20:]
    assert attrs[:12] == struct.pack("=HH", 12, nfqnl.NFQA_VERDICT_HDR) + struct.pack("!II", 1, 41)
    assert attrs[12:] == struct.pack("=HH", 8, nfqnl.NFQA_MARK) + struct.pack(
        "!I", OFFLOAD_MARK | 0x10
    )


def test_an_accept_with_changes_waits_for_the_pending_batch_a_drop_does_not() -> None:
    client = NfqClient(4, batch_after=0)
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    kernel.setblocking(False)
    client._sock = ours
    # 1 accept, 2 drop, 3 accept, 4 rewrite, 5 accept, 6 offload, 7 accept
    plan = {
        2: Verdict(nfqnl.NF_DROP),
        4: Verdict(nfqnl.NF_ACCEPT, None, b"new"),
        6: Verdict(nfqnl.NF_ACCEPT, OFFLOAD_MARK),
    }
    try:
        for i in range(1, 8):
            kernel.send(packet_message(4, QueuedPacket(i, UDP)))
        assert client.drain(lambda pkt: plan.get(pkt.id)) == 7
        assert _sent(kernel) == [
            verdict_message(4, 2, nfqnl.NF_DROP),  # at once: the batch after it skips it
            nfqnl.batch_verdict_message(4, 3, nfqnl.NF_ACCEPT),  # 1 and 3 leave before 4
            verdict_message(4, 4, nfqnl.NF_ACCEPT, payload=b"new"),
            nfqnl.batch_verdict_message(4, 5, nfqnl.NF_ACCEPT),
            verdict_message(4, 6, nfqnl.NF_ACCEPT, mark=OFFLOAD_MARK),
            nfqnl.batch_verdict_message(4, 7, nfqnl.NF_ACCEPT),
        ]
    finally:
        kernel.close()
        ours.close()


def test_the_worker_handler_batches_accepts_and_counts_engine_errors() -> None:
    class Engine:
        class policy:
            on_error = "drop"

        def handle(self, data: bytes, meta: object, now: float) -> Decision:
            if data == b"boom":
                raise RuntimeError("engine bug")
            return Decision("drop" if data == b"bad" else "accept", offload=data == b"off")

    worker = QueueWorker(0, Engine())  # type: ignore[arg-type]
    assert worker._on_queued(QueuedPacket(1, b"ok")) is None  # batched by the client
    assert worker._on_queued(QueuedPacket(2, b"bad")) == Verdict(nfqnl.NF_DROP)
    assert worker._on_queued(QueuedPacket(3, b"off", mark=0x3)) == Verdict(
        nfqnl.NF_ACCEPT, 0x3 | OFFLOAD_MARK
    )
    assert worker._on_queued(QueuedPacket(4, b"boom")) == Verdict(nfqnl.NF_DROP)  # on-error
    assert worker.verdict_errors == 1
    with pytest.raises(ValueError, match="one of own, netfilterqueue"):
        QueueWorker(0, Engine(), client="libnfq")  # type: ignore[arg-type]


def _tcp_super_packet(size: int) -> bytes:
    """An IPv4 TCP packet of `size` bytes as a GSO super-packet looks: one header, many
    segments' payload."""
    from ips.core.build import build_packet

    return build_packet(6, "10.10.1.20", "10.10.2.10", 40000, 443, flags=0x10,
                        payload=b"z" * (size - 40))  # fmt: skip


def test_a_super_packet_is_judged_once_and_one_cut_by_the_copy_range_on_its_copy() -> None:
    from ips.engine import Engine
    from ips.policy.resolve import load_policy_text

    policy = load_policy_text(
        'set default accept\nset app-layer off\ndrop proto tcp payload contains "EVIL"\n'
    )
    engine = Engine(policy)
    worker = QueueWorker(0, engine, gso=True)
    whole = _tcp_super_packet(60_000)
    assert worker._on_queued(QueuedPacket(1, whole, gso=True)) is None  # accepted, batched
    # the kernel could copy only 65,531 of 65,535 bytes: the IP length says more than came;
    # judged on what came (not "truncated"), and the verdict carries no bytes
    cut = _tcp_super_packet(65_535)[:65_531]
    assert worker._on_queued(QueuedPacket(2, cut, cap_len=65_535, gso=True)) is None
    evil = bytearray(_tcp_super_packet(65_535)[:65_531])
    evil[30_000:30_004] = b"EVIL"
    assert worker._on_queued(QueuedPacket(3, bytes(evil), cap_len=65_535, gso=True)) == Verdict(
        nfqnl.NF_DROP
    )
    assert engine.stats.packets == 3 and not engine.stats.malformed
    assert (worker.gso_packets, worker.cut, worker.cut_rewrites_dropped) == (3, 2, 0)


def test_a_rewrite_of_a_cut_packet_is_dropped_and_counted() -> None:
    class Engine:
        class policy:
            on_error = "accept"

        def handle(self, data: bytes, meta: object, now: float) -> Decision:
            return Decision("rewrite", data=b"new bytes")

    worker = QueueWorker(0, Engine())  # type: ignore[arg-type]
    assert worker._on_queued(QueuedPacket(1, UDP)) == Verdict(nfqnl.NF_ACCEPT, None, b"new bytes")
    # a packet only partly copied cannot be given back whole
    assert worker._on_queued(QueuedPacket(2, UDP, cap_len=70_000)) == Verdict(nfqnl.NF_DROP)
    assert worker.cut_rewrites_dropped == 1


def test_gso_is_on_by_default_with_our_client_and_refused_with_netfilterqueue(
    tmp_path: Path,
) -> None:
    from ips.daemon.config import ConfigError, DaemonConfig, RunOptions

    def config(**options: object) -> DaemonConfig:
        opts = {"policy_path": GATEWAY, "socket_path": str(tmp_path / "s.sock"), **options}
        return DaemonConfig.from_options(RunOptions(**opts), check_policy=lambda _p: None)  # type: ignore[arg-type]

    assert config().nfq_gso is True  # the default with our client (docs/backends.md)
    assert config(nfq_client="netfilterqueue").nfq_gso is False  # its buffer cuts them
    assert config(nfq_gso="on").nfq_gso is True
    assert config(nfq_gso="off").nfq_gso is False
    with pytest.raises(ConfigError, match="netfilterqueue's 4 KB buffer"):
        config(nfq_gso="on", nfq_client="netfilterqueue")
    with pytest.raises(ConfigError, match="--gso is for the NFQUEUE backend inline"):
        config(nfq_gso="on", mode="tap", iface="lo")
    # the netfilterqueue client never asks for GSO, whatever the default says
    assert QueueWorker(0, object(), client="netfilterqueue").gso is False  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "proto, src, dst",
    [(6, "10.10.1.20", "10.10.2.10"), (17, "10.10.1.20", "10.10.2.10"), (6, "fd00::1", "fd00::2")],
)
def test_a_rewrite_of_a_packet_queued_with_a_partial_checksum_gets_a_full_one(
    proto: int, src: str, dst: str
) -> None:
    # With the GSO flag the kernel queues a packet whose checksum is not filled in yet: the
    # field holds the pseudo-header's sum only. The rewrite's incremental update keeps it
    # partial; the worker computes the whole checksum of the bytes it gives back.
    from ips.core import craft
    from ips.core.build import build_packet
    from ips.core.decode import decode_l3
    from ips.core.packet import Packet

    wire = build_packet(proto, src, dst, 40000, 8081, payload=b"GET / HTTP/1.1\r\n\r\n")
    rewritten_on_wire = build_packet(
        proto, src, dst, 40000, 8080, payload=b"GET / HTTP/1.1\r\n\r\n"
    )
    pkt = decode_l3(wire)
    assert isinstance(pkt, Packet)
    at = pkt.l4_offset + (16 if proto == 6 else 6)
    seed = craft._fold(craft._pseudo_sum(pkt.src, pkt.dst, proto, len(wire) - pkt.l4_offset))
    queued = wire[:at] + (0xFFFF - seed).to_bytes(2, "big") + wire[at + 2 :]

    class Engine:
        class policy:
            on_error = "accept"

        def handle(self, data: bytes, meta: object, now: float) -> Decision:
            got = decode_l3(data)
            assert isinstance(got, Packet)
            return Decision("rewrite", data=craft.set_dport(data, got, 8080))

    worker = QueueWorker(0, Engine())  # type: ignore[arg-type]
    given = worker._on_queued(QueuedPacket(1, queued, csum_partial=True))
    assert given == Verdict(nfqnl.NF_ACCEPT, None, rewritten_on_wire)
    # a packet whose checksum was complete keeps the incremental update (the same result)
    given = worker._on_queued(QueuedPacket(2, wire))
    assert given == Verdict(nfqnl.NF_ACCEPT, None, rewritten_on_wire)
