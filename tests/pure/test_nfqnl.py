"""ips/io/nfqnl.py: our own nfnetlink_queue client.

Unprivileged: the messages it builds, byte for byte against the uapi layout
(linux/netfilter/nfnetlink_queue.h), and the parser over packet messages laid out the way the
kernel's nfqnl_build_packet_message lays them out. In a lab (root): the client bound on the
gateway's queue, fail-closed, lets the client's traffic through and drops one chosen port.
"""

from __future__ import annotations

import errno
import socket
import struct

import pytest

from ips.io import netlink, nfqnl
from ips.io.netlink import parse_ack
from ips.io.nfqnl import (
    MalformedMessage,
    NfqClient,
    QueuedPacket,
    batch_verdict_message,
    config_message,
    packet_message,
    parse_packet,
    verdict_message,
)

UDP = bytes.fromhex("450000210001000040117a6a0a0a01140a0a020a9c4000350009f3a078")


def _nlmsghdr(length: int, msg: int, flags: int, seq: int = 0) -> bytes:
    # host byte order: this machine's (the tests run where the kernel runs)
    return struct.pack("=IHHII", length, (3 << 8) | msg, flags, seq, 0)


# ---- messages, byte for byte ----------------------------------------------------------------


def test_verdict_message_is_the_uapi_layout() -> None:
    msg = verdict_message(7, 0x01020304, nfqnl.NF_DROP)
    expected = (
        _nlmsghdr(32, 1, 0x01)  # NFQNL_MSG_VERDICT, NLM_F_REQUEST
        + bytes([0, 0])
        + b"\x00\x07"  # nfgenmsg: AF_UNSPEC, v0, res_id = queue (big endian)
        + struct.pack("=HH", 12, 2)  # NFQA_VERDICT_HDR
        + b"\x00\x00\x00\x00"
        + b"\x01\x02\x03\x04"  # be32 verdict, be32 id
    )
    assert msg == expected


def test_verdict_with_mark_and_payload_pads_the_payload_to_four_bytes() -> None:
    msg = verdict_message(1, 9, nfqnl.NF_ACCEPT, mark=0x10, payload=b"abcde")
    attrs = msg[20:]
    assert attrs[:12] == struct.pack("=HH", 12, 2) + struct.pack("!II", 1, 9)
    assert attrs[12:20] == struct.pack("=HH", 8, 3) + b"\x00\x00\x00\x10"  # NFQA_MARK
    # NFQA_PAYLOAD: nla_len counts the value unpadded (4 + 5), the message holds 3 pad bytes
    assert attrs[20:] == struct.pack("=HH", 9, 10) + b"abcde" + b"\0\0\0"
    assert struct.unpack_from("=I", msg)[0] == len(msg) == 20 + 12 + 8 + 12


def test_batch_verdict_message_is_the_uapi_layout() -> None:
    msg = batch_verdict_message(0x0102, 500, nfqnl.NF_ACCEPT)
    assert msg == (
        _nlmsghdr(32, 3, 0x01)  # NFQNL_MSG_VERDICT_BATCH
        + b"\x00\x00\x01\x02"
        + struct.pack("=HH", 12, 2)
        + struct.pack("!II", 1, 500)
    )


def test_config_message_binds_with_params_length_and_flags_in_one_request() -> None:
    msg = config_message(
        3,
        command=nfqnl.NFQNL_CFG_CMD_BIND,
        copy_range=1500,
        max_len=4096,
        flags=nfqnl.NFQA_CFG_F_FAIL_OPEN,
        mask=0x05,
        seq=42,
    )
    body = (
        b"\x00\x00\x00\x03"
        + struct.pack("=HH", 8, 1)
        + bytes([1, 0, 0, 0])  # NFQA_CFG_CMD: BIND, pad, pf 0
        # NFQA_CFG_PARAMS: packed be32 copy_range + u8 copy_mode (9 bytes, padded to 12)
        + struct.pack("=HH", 9, 2)
        + b"\x00\x00\x05\xdc"
        + b"\x02"
        + b"\0\0\0"
        + struct.pack("=HH", 8, 3)
        + b"\x00\x00\x10\x00"  # NFQA_CFG_QUEUE_MAXLEN
        + struct.pack("=HH", 8, 5)
        + b"\x00\x00\x00\x01"  # NFQA_CFG_FLAGS
        + struct.pack("=HH", 8, 4)
        + b"\x00\x00\x00\x05"  # NFQA_CFG_MASK
    )
    assert msg == _nlmsghdr(16 + len(body), 2, 0x01 | 0x04, seq=42) + body  # REQUEST | ACK


def test_config_flags_without_a_mask_are_refused() -> None:
    with pytest.raises(ValueError, match="mask"):
        config_message(0, flags=1)


def test_the_fail_open_config_agrees_with_the_one_nfqueue_py_writes() -> None:
    from ips.io.nfqueue import queue_config_message

    ours = config_message(5, flags=1, mask=1, seq=1, ack=False)
    theirs = queue_config_message(5, 1, 1, seq=1)
    # the same attributes (nfqueue.py writes FLAGS then MASK too) in the same header
    assert ours == theirs


# ---- parsing packet messages ------------------------------------------------------------------


def test_a_packet_message_as_the_kernel_builds_it_parses_back() -> None:
    # the sender's MAC (NFQA_HWADDR) is read too: the evidence behind blocks (issue 19, item 1)
    pkt = QueuedPacket(
        id=77,
        payload=UDP,
        indev=3,
        outdev=4,
        mark=0x2A,
        hw_protocol=0x0800,
        hook=2,
        hwaddr=b"\x02\x00\x00\x00\x00\x01",
    )
    msg = packet_message(0, pkt, timestamp=(1700000000, 5), hwaddr=pkt.hwaddr)
    assert struct.unpack_from("=HH", msg, 4)[0] == 0x300  # NFNL_SUBSYS_QUEUE, MSG_PACKET
    got = parse_packet(msg, 20, len(msg))
    assert got == pkt


@pytest.mark.parametrize("indev, outdev", [(3, 4), (3, 0), (0, 4), (0, 0)])
def test_the_one_unpack_prefix_and_the_general_loop_agree(indev: int, outdev: int) -> None:
    # FORWARD has both interfaces (the prefix path), INPUT only indev, OUTPUT only outdev
    pkt = QueuedPacket(id=9, payload=UDP, indev=indev, outdev=outdev, mark=7, hook=1,
                       hwaddr=b"\x02\x00\x00\x00\x00\x02")  # fmt: skip
    msg = packet_message(0, pkt, hwaddr=pkt.hwaddr)
    assert parse_packet(msg, 20, len(msg)) == pkt
    # an attribute the kernel may put before the interfaces (NFQA_PRIORITY = 21)
    body = msg[20:32] + struct.pack("=HH", 8, 21) + b"\0\0\0\1" + msg[32:]
    assert parse_packet(body, 0, len(body)) == pkt


def test_unknown_and_nested_attributes_are_skipped() -> None:
    pkt = QueuedPacket(id=1, payload=b"\x45" + b"\0" * 19)
    msg = bytearray(packet_message(0, pkt))
    # an NFQA_CT with NLA_F_NESTED (0x8000) and an NFQA_CAP_LEN before the payload
    extra = struct.pack("=HH", 8, 0x8000 | 11) + b"\0" * 4 + struct.pack("=HH", 8, 13) + b"\0" * 4
    body = bytes(msg[20:32]) + extra + bytes(msg[32:])
    got = parse_packet(body, 0, len(body))
    assert (got.id, got.payload) == (1, pkt.payload)


@pytest.mark.parametrize(
    "body, reason",
    [
        (struct.pack("=HH", 24, 10) + b"x" * 4, "attribute length"),  # runs past the end
        (struct.pack("=HH", 2, 10), "attribute length"),  # shorter than its own header
        (struct.pack("=HH", 8, 10) + b"abcd", "without NFQA_PACKET_HDR"),
        (struct.pack("=HH", 11, 1) + struct.pack("!IHB", 5, 0, 0) + b"\0", "without NFQA_PAYLOAD"),
        (struct.pack("=HH", 6, 1) + b"\0\0\0\0", "short NFQA_PACKET_HDR"),
    ],
)
def test_malformed_packet_messages_are_a_clear_error(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        parse_packet(body, 0, len(body))


def test_parse_ack_finds_the_answer_to_its_request() -> None:
    err = struct.pack("=IHHII", 36, 2, 0, 9, 0) + struct.pack("=i", -16) + b"\0" * 16
    ok = struct.pack("=IHHII", 36, 2, 0, 10, 0) + struct.pack("=i", 0) + b"\0" * 16
    buf = err + ok
    assert parse_ack(buf, len(buf), 9) == 16  # EBUSY
    assert parse_ack(buf, len(buf), 10) == 0
    assert parse_ack(buf, len(buf), 11) is None


def test_bad_queue_settings_are_refused_before_any_socket() -> None:
    with pytest.raises(ValueError, match="queue number"):
        NfqClient(70000)
    with pytest.raises(ValueError, match="copy_range"):
        NfqClient(0, copy_range=0)


# ---- the client's loop over a datagram socket pair (no root: the same recv/send calls) ----


def _client_on_socketpair(**kw: object) -> tuple[NfqClient, socket.socket]:
    """A client whose 'netlink socket' is one end of an AF_UNIX datagram pair: like netlink,
    one datagram per message; the test plays the kernel on the other end."""
    client = NfqClient(4, **kw)  # type: ignore[arg-type]
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    kernel.setblocking(False)
    client._sock = ours
    return client, kernel


def _sent(kernel: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(kernel.recv(65536))
        except BlockingIOError:
            return out


def _udp_to(port: int) -> bytes:
    return UDP[:22] + struct.pack("!H", port) + UDP[24:]


@pytest.mark.parametrize("recv_many", [0, 8])
def test_drain_batches_accepts_around_single_drops(recv_many: int) -> None:
    client, kernel = _client_on_socketpair(recv_many=recv_many, batch_after=0)
    try:
        for i in range(1, 7):
            kernel.send(packet_message(4, QueuedPacket(100 + i, _udp_to(53 if i != 3 else 99))))

        def handler(pkt: QueuedPacket) -> object:
            if struct.unpack_from("!H", pkt.payload, 22)[0] == 99:
                client.drop(pkt.id)
                return True
            return None

        assert client.drain(handler) == 6
        # the drop at once, then one batch accepting everything left up to the last id
        assert _sent(kernel) == [
            verdict_message(4, 103, nfqnl.NF_DROP),
            batch_verdict_message(4, 106, nfqnl.NF_ACCEPT),
        ]
        assert client.received == 6 and client.malformed == 0
        assert client.recv_calls == (6 if recv_many == 0 else 1)  # one datagram per recv
    finally:
        kernel.close()
        client._sock.close()  # type: ignore[union-attr]


def test_the_first_packets_of_a_drain_are_accepted_at_once_then_batched() -> None:
    """A lone packet must not wait for the empty read that ends a burst (latency): the first
    batch_after packets of a drain get their accept one by one, the rest in a batch."""
    client, kernel = _client_on_socketpair(batch_after=2)
    try:
        for i in range(1, 6):
            kernel.send(packet_message(4, QueuedPacket(i, UDP)))
        assert client.drain(lambda _pkt: None) == 5
        assert _sent(kernel) == [
            verdict_message(4, 1, 1),
            verdict_message(4, 2, 1),
            batch_verdict_message(4, 5, nfqnl.NF_ACCEPT),
        ]
        kernel.send(packet_message(4, QueuedPacket(6, UDP)))  # a new drain: at once again
        assert client.drain(lambda _pkt: None) == 1
        assert _sent(kernel) == [verdict_message(4, 6, 1)]
    finally:
        kernel.close()
        client._sock.close()  # type: ignore[union-attr]


class _ForwardingEnd:
    """The client's end of the pair, whose send plays the kernel's verdict: a batch verdict
    releases the burst, and what a released packet sets off (the server's answer, forwarded
    back through the gateway) is queued to us before that system call returns, as in the
    kernel, where the forward runs inside the verdict."""

    def __init__(self, ours: socket.socket, kernel: socket.socket, answer: bytes) -> None:
        self._ours, self._kernel, self._answer = ours, kernel, answer

    def send(self, msg: bytes) -> int:
        n = self._ours.send(msg)
        if msg[4:6] == struct.pack("=H", (3 << 8) | 3) and self._answer:  # VERDICT_BATCH
            self._kernel.send(self._answer)
            self._answer = b""
        return n

    def recv_into(self, buf: bytearray) -> int:
        return self._ours.recv_into(buf)

    def fileno(self) -> int:
        return self._ours.fileno()

    def close(self) -> None:
        self._ours.close()


def test_after_the_end_of_burst_batch_the_drain_reads_once_more() -> None:
    """The batch that ends a burst lets its packets out; their answers come back through us
    at once: the same drain reads them, instead of leaving them to the next wake-up."""
    client, kernel = _client_on_socketpair(batch_after=0)
    answer = packet_message(4, QueuedPacket(9, UDP))
    client._sock = _ForwardingEnd(client._sock, kernel, answer)  # type: ignore[assignment]
    try:
        for i in (1, 2, 3):
            kernel.send(packet_message(4, QueuedPacket(i, UDP)))
        seen: list[int] = []
        assert client.drain(lambda pkt: seen.append(pkt.id)) == 4
        assert seen == [1, 2, 3, 9]
        # the burst's batch, then the answer's own (it ended a burst of one)
        assert _sent(kernel) == [
            batch_verdict_message(4, 3, nfqnl.NF_ACCEPT),
            batch_verdict_message(4, 9, nfqnl.NF_ACCEPT),
        ]
    finally:
        kernel.close()
        client._sock.close()  # type: ignore[union-attr]


def _ack(seq: int, code: int = 0) -> bytes:
    return struct.pack("=IHHII", 36, 2, 0, seq, 0) + struct.pack("=i", -code) + b"\0" * 16


def test_a_config_request_keeps_packets_queued_meanwhile_and_its_wait_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, kernel = _client_on_socketpair()
    try:
        kernel.send(packet_message(4, QueuedPacket(5, UDP)))  # queued before the answer
        kernel.send(_ack(1))
        client._request(command=nfqnl.NFQNL_CFG_CMD_BIND)
        assert kernel.recv(4096) == config_message(4, command=nfqnl.NFQNL_CFG_CMD_BIND, seq=1)
        assert client._sock is not None and client._sock.gettimeout() == 0.0  # as before
        seen: list[int] = []
        assert client.drain(lambda pkt: seen.append(pkt.id)) == 1 and seen == [5]
        kernel.send(_ack(2, errno.EBUSY))
        with pytest.raises(nfqnl.NfqError) as refused:
            client._request(command=nfqnl.NFQNL_CFG_CMD_BIND)
        assert refused.value.errno == errno.EBUSY and "queue 4" in str(refused.value)
        # No answer, while packets keep coming: the wait still ends (in all, not per read).
        monkeypatch.setattr(netlink, "ACK_TIMEOUT", 0.3)
        for i in range(30):
            kernel.send(packet_message(4, QueuedPacket(10 + i, UDP)))
        with pytest.raises(nfqnl.NfqError) as silent:
            client._request(command=nfqnl.NFQNL_CFG_CMD_BIND)
        assert silent.value.errno == errno.ETIMEDOUT
        assert client.drain(lambda _pkt: None) == 30  # kept, not lost
    finally:
        kernel.close()
        client._sock.close()  # type: ignore[union-attr]


def test_without_batching_every_accept_is_its_own_verdict() -> None:
    client, kernel = _client_on_socketpair(batch=False)
    try:
        for i in (7, 8):
            kernel.send(packet_message(4, QueuedPacket(i, UDP)))
        assert client.drain(lambda _pkt: None) == 2
        assert _sent(kernel) == [verdict_message(4, 7, 1), verdict_message(4, 8, 1)]
    finally:
        kernel.close()
        client._sock.close()  # type: ignore[union-attr]


def test_a_malformed_message_or_a_failing_handler_gets_on_error_not_a_batch_accept() -> None:
    client, kernel = _client_on_socketpair(on_error=nfqnl.NF_DROP, batch_after=0)
    try:
        kernel.send(packet_message(4, QueuedPacket(1, UDP)))
        no_payload = packet_message(4, QueuedPacket(2, b""))[:-4]  # the NFQA_PAYLOAD cut off
        no_payload = struct.pack("=I", len(no_payload)) + no_payload[4:]
        kernel.send(no_payload)
        kernel.send(packet_message(4, QueuedPacket(3, b"boom")))
        kernel.send(b"\x01\x00\x00")  # not even a netlink header
        kernel.send(packet_message(4, QueuedPacket(4, UDP)))

        def handler(pkt: QueuedPacket) -> object:
            if pkt.payload == b"boom":
                raise RuntimeError("engine bug")
            return None

        assert client.drain(handler) == 3
        assert _sent(kernel) == [
            verdict_message(4, 2, nfqnl.NF_DROP),  # malformed: its id still read
            verdict_message(4, 3, nfqnl.NF_DROP),  # the handler raised
            batch_verdict_message(4, 4, nfqnl.NF_ACCEPT),
        ]
        assert (client.malformed, client.handler_errors) == (1, 1)
    finally:
        kernel.close()
        client._sock.close()  # type: ignore[union-attr]


# ---- in a lab -----------------------------------------------------------------------------


def test_the_senders_mac_is_read_and_absent_without_the_attribute() -> None:
    """NFQA_HWADDR (an Ethernet sender's 6 bytes in the kernel's 8-byte field) becomes
    QueuedPacket.hwaddr, the engine's Meta.mac; an outgoing packet has none."""
    mac = bytes.fromhex("020000000066")
    pkt = QueuedPacket(id=5, payload=UDP, indev=3, outdev=4, hw_protocol=0x0800, hook=2)
    with_mac = packet_message(0, pkt, hwaddr=mac)
    assert parse_packet(with_mac, 20, len(with_mac)).hwaddr == mac
    without = packet_message(0, pkt)
    assert parse_packet(without, 20, len(without)).hwaddr is None


def test_a_super_packet_cut_by_the_copy_range_says_so() -> None:
    # NFQA_CAP_LEN (the real length, when the copy was cut) and NFQA_SKB_INFO's GSO flag:
    # with the queue's GSO flag on, a TCP super-packet of up to 64 KB arrives whole
    pkt = QueuedPacket(id=5, payload=UDP, indev=3, outdev=4, cap_len=65_535, gso=True)
    msg = packet_message(0, pkt)
    got = parse_packet(msg, 20, len(msg))
    assert got == pkt
    assert (got.cap_len, got.gso) == (65_535, True)
    plain = packet_message(0, QueuedPacket(id=6, payload=UDP, indev=3, outdev=4))
    assert (
        parse_packet(plain, 20, len(plain)).cap_len,
        parse_packet(plain, 20, len(plain)).gso,
    ) == (0, False)
