"""The own NFQUEUE client's verdicts and the queue worker's handler, against a datagram pair
that plays the kernel."""

from __future__ import annotations

import socket
import struct

import pytest
from test_nfqnl import _sent  # the datagram pair that plays the kernel: what it was sent

from ips.core.decision import Decision
from ips.io import nfqnl
from ips.io.nfqnl import NfqClient, QueuedPacket, Verdict, packet_message, verdict_message
from ips.io.nfqueue import QueueWorker, kernel_verdict
from ips.translate.nft import OFFLOAD_MARK

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
