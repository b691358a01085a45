"""ips/io/nflog.py: our own nfnetlink_log (NFLOG) client, which reads the kernel's copies of
the first packet after an offloaded handshake.

Unprivileged: the config messages byte for byte against the uapi layout
(linux/netfilter/nfnetlink_log.h), packet messages as the kernel's __build_packet_message lays
them out (and one as kernel 6.18 sent it), and the client's own code over a datagram socket
pair playing the kernel: several messages in one datagram, malformed ones counted, the wait for
a config ACK. As root: a namespace of the test's own, an nft rule `log group ... snaplen` on
its loopback output, the client bound there reads the copies; a taken group is refused.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

import pytest

from ips.io import netlink, nflog
from ips.io.nflog import (
    LoggedPacket,
    MalformedMessage,
    NflogClient,
    NflogError,
    config_message,
    packet_message,
    parse_packet,
)

UDP = bytes.fromhex("450000210001000040117a6a0a0a01140a0a020a9c4000350009f3a078")


def _nlmsghdr(length: int, msg: int, flags: int, seq: int = 0) -> bytes:
    # host byte order: this machine's (the tests run where the kernel runs)
    return struct.pack("=IHHII", length, (4 << 8) | msg, flags, seq, 0)  # NFNL_SUBSYS_ULOG


def _ack(seq: int, code: int = 0) -> bytes:
    """NLMSG_ERROR answering request `seq` (code 0: the ACK), with the request's header."""
    return struct.pack("=IHHII", 36, 2, 0, seq, 0) + struct.pack("=i", -code) + b"\0" * 16


# ---- config messages, byte for byte ---------------------------------------------------------


def test_the_bind_request_copies_whole_packets_sent_one_by_one() -> None:
    # what bind() sends: BIND, MODE (copy packet, range), QTHRESH 1, in one request
    msg = config_message(
        0x8001,
        command=nflog.NFULNL_CFG_CMD_BIND,
        copy_mode=nflog.NFULNL_COPY_PACKET,
        copy_range=0xFFFF,
        qthresh=1,
        seq=7,
    )
    body = (
        b"\x00\x00\x80\x01"  # nfgenmsg: AF_UNSPEC, v0, res_id = group (big endian)
        + struct.pack("=HH", 5, 1)
        + b"\x01\0\0\0"  # NFULA_CFG_CMD: u8 BIND, padded to 4
        # NFULA_CFG_MODE: packed be32 copy_range, u8 copy_mode (PACKET), u8 pad: 6 bytes
        + struct.pack("=HH", 10, 2)
        + b"\x00\x00\xff\xff"
        + b"\x02\x00"
        + b"\0\0"
        + struct.pack("=HH", 8, 5)
        + b"\x00\x00\x00\x01"  # NFULA_CFG_QTHRESH (be32)
    )
    assert msg == _nlmsghdr(16 + len(body), 1, 0x01 | 0x04, seq=7) + body  # REQUEST | ACK


def test_config_message_other_settings() -> None:
    msg = config_message(
        3,
        nlbufsiz=65536,
        timeout=10,
        flags=nflog.NFULNL_CFG_F_SEQ,
        family=socket.AF_INET,
        ack=False,
    )
    body = (
        b"\x02\x00\x00\x03"  # nfgenmsg: AF_INET, v0, group 3
        + struct.pack("=HH", 8, 3)
        + b"\x00\x01\x00\x00"  # NFULA_CFG_NLBUFSIZ
        + struct.pack("=HH", 8, 4)
        + b"\x00\x00\x00\x0a"  # NFULA_CFG_TIMEOUT (1/100 s)
        + struct.pack("=HH", 6, 6)
        + b"\x00\x01"
        + b"\0\0"  # NFULA_CFG_FLAGS (be16, padded)
    )
    assert msg == _nlmsghdr(16 + len(body), 1, 0x01) + body  # NFULNL_MSG_CONFIG, REQUEST


def test_unbind_and_the_copy_mode_defaults() -> None:
    unbind = config_message(0x0102, command=nflog.NFULNL_CFG_CMD_UNBIND, seq=2)
    assert unbind == (
        _nlmsghdr(28, 1, 0x05, seq=2)
        + b"\x00\x00\x01\x02"
        + struct.pack("=HH", 5, 1)
        + b"\x02\0\0\0"
    )
    # a range alone copies packets; a mode alone sends range 0 (the kernel's maximum)
    assert config_message(1, copy_range=256)[20:] == (
        struct.pack("=HH", 10, 2) + b"\x00\x00\x01\x00\x02\x00\0\0"
    )
    assert config_message(1, copy_mode=nflog.NFULNL_COPY_META)[20:] == (
        struct.pack("=HH", 10, 2) + b"\x00\x00\x00\x00\x01\x00\0\0"
    )


# ---- packet messages ----------------------------------------------------------------------------


def test_packet_message_is_the_kernels_layout_and_parses_back() -> None:
    pkt = LoggedPacket(
        b"\x45abc", indev=2, outdev=3, mark=0x2A, hw_protocol=0x0800, hook=1, prefix="ab"
    )
    msg = packet_message(0x1092, pkt)
    body = (
        b"\x00\x00\x10\x92"
        + struct.pack("=HH", 8, 1)
        + b"\x08\x00\x01\x00"  # NFULA_PACKET_HDR: be16, u8, pad
        + struct.pack("=HH", 7, 10)
        + b"ab\0"
        + b"\0"  # NFULA_PREFIX, NUL-terminated
        + struct.pack("=HH", 8, 4)
        + b"\x00\x00\x00\x02"  # NFULA_IFINDEX_INDEV
        + struct.pack("=HH", 8, 5)
        + b"\x00\x00\x00\x03"  # NFULA_IFINDEX_OUTDEV
        + struct.pack("=HH", 8, 2)
        + b"\x00\x00\x00\x2a"  # NFULA_MARK
        + struct.pack("=HH", 8, 9)
        + b"\x45abc"  # NFULA_PAYLOAD, last
    )
    assert msg == _nlmsghdr(16 + len(body), 0, 0) + body  # NFULNL_MSG_PACKET, no flags
    assert parse_packet(msg, 20, len(msg)) == pkt


@pytest.mark.parametrize(
    "pkt",
    [
        LoggedPacket(UDP),
        LoggedPacket(UDP, indev=7, hook=1),
        LoggedPacket(UDP[:20], outdev=1, mark=0xFFFFFFFF, hw_protocol=0x86DD, hook=3, prefix="x"),
    ],
)
def test_packet_message_round_trip(pkt: LoggedPacket) -> None:
    msg = packet_message(32768, pkt)
    assert parse_packet(msg, 20, len(msg)) == pkt


def test_a_copy_as_kernel_6_18_sent_it_for_an_nft_log_rule_on_output() -> None:
    # captured from `udp dport 9999 log group 4242` (no prefix): an empty NFULA_PREFIX all
    # the same, the family of the packet, no INDEV on output, the socket's UID and GID
    body = (
        b"\x02\x00\x10\x92"  # NFPROTO_IPV4, v0, group 4242
        + struct.pack("=HH", 8, 1)
        + b"\x08\x00\x03\x00"  # IPv4, NF_INET_LOCAL_OUT
        + struct.pack("=HH", 5, 10)
        + b"\0"
        + b"\0\0\0"  # NFULA_PREFIX ""
        + struct.pack("=HH", 8, 5)
        + b"\x00\x00\x00\x01"  # outdev lo
        + struct.pack("=HH", 8, 11)
        + b"\0\0\0\0"  # NFULA_UID
        + struct.pack("=HH", 8, 14)
        + b"\0\0\0\0"  # NFULA_GID
        + struct.pack("=HH", 4 + len(UDP), 9)
        + UDP
        + b"\0" * (-len(UDP) % 4)
    )
    msg = _nlmsghdr(16 + len(body), 0, 0) + body
    assert parse_packet(msg, 20, len(msg)) == LoggedPacket(
        UDP, outdev=1, hw_protocol=0x0800, hook=3
    )


def test_unknown_nested_and_flagged_attributes_are_skipped_or_masked() -> None:
    msg = packet_message(1, LoggedPacket(UDP, indev=5))
    body = (
        struct.pack("=HH", 8, 11)
        + b"\0\0\0\1"  # NFULA_UID
        + struct.pack("=HH", 4, 18 | 0x8000)  # NFULA_CT, NLA_F_NESTED, empty
        + struct.pack("=HH", 8, 99)
        + b"\0\0\0\0"  # a type this client does not know
        + struct.pack("=HH", 8, 2 | 0x4000)
        + b"\0\0\0\x09"  # NFULA_MARK, NET_BYTEORDER bit
        + msg[20:]
    )
    assert parse_packet(body, 0, len(body)) == LoggedPacket(UDP, indev=5, mark=9)


@pytest.mark.parametrize(
    "body, reason",
    [
        (struct.pack("=HH", 24, 9) + b"x" * 4, "attribute length 24"),  # runs past the end
        (struct.pack("=HH", 2, 9) + b"xx", "attribute length 2"),  # shorter than its header
        (struct.pack("=HH", 8, 1) + b"\x08\x00\x03\x00", "without NFULA_PAYLOAD"),
        (
            struct.pack("=HH", 6, 1) + b"\x08\x00\0\0" + struct.pack("=HH", 4, 9),
            "NFULA_PACKET_HDR of length 6",
        ),
        (
            struct.pack("=HH", 6, 4) + b"\0\1\0\0" + struct.pack("=HH", 4, 9),
            "attribute 4 of length 6",
        ),
    ],
)
def test_malformed_packet_messages_are_a_clear_error(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        parse_packet(body, 0, len(body))


def test_bad_settings_are_refused_before_any_socket() -> None:
    with pytest.raises(ValueError, match="group"):
        NflogClient(70000)
    with pytest.raises(ValueError, match="copy_range"):
        NflogClient(1, copy_range=70000)


# ---- the client's loop over a datagram socket pair (no root: the same recv calls) ----------


def _client_on_socketpair(group: int = 9) -> tuple[NflogClient, socket.socket]:
    """A client whose 'netlink socket' is one end of an AF_UNIX datagram pair: like netlink,
    one datagram per send; the test plays the kernel on the other end."""
    client = NflogClient(group)
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    client._sock = ours
    return client, kernel


def _copy(i: int, **kw: object) -> bytes:
    return packet_message(9, LoggedPacket(UDP[:-1] + bytes([i]), **kw))  # type: ignore[arg-type]


def _with_flags(msg: bytes, flags: int) -> bytes:
    return msg[:6] + struct.pack("=H", flags) + msg[8:]


NOOP = struct.pack("=IHHII", 16, 1, 0, 0, 0)


@pytest.mark.parametrize("flags", [0x02, 0x00])  # NLM_F_MULTI as documented; 6.x sets none
def test_drain_handles_every_packet_of_a_batched_datagram(flags: int) -> None:
    client, kernel = _client_on_socketpair()
    try:
        # the kernel leaves NLMSG_DONE's 4-byte body uninitialised: it must not matter
        done = struct.pack("=IHHII", 20, 3, flags, 0, 0) + b"\x00\x00\x10\x92"
        kernel.send(b"".join(_with_flags(_copy(i), flags) for i in range(3)) + done)
        kernel.send(NOOP + _ack(5, errno.ENOENT) + _copy(3))  # skipped around the copy
        seen: list[LoggedPacket] = []
        assert client.drain(seen.append) == 4
        assert [p.payload for p in seen] == [UDP[:-1] + bytes([i]) for i in range(4)]
        assert (client.received, client.malformed, client.handler_errors) == (4, 0, 0)
        assert client.drain(seen.append) == 0  # nothing left: EAGAIN ends the drain
    finally:
        kernel.close()
        client._sock.close()  # type: ignore[union-attr]


def test_drain_counts_what_is_wrong_and_goes_on() -> None:
    client, kernel = _client_on_socketpair()
    try:
        no_payload = _copy(0)[:28]  # the packet header only
        no_payload = struct.pack("=I", 28) + no_payload[4:]
        truncated = bytearray(_copy(1))
        struct.pack_into("=H", truncated, 28, 200)  # the PAYLOAD attribute runs past the end
        # malformed messages in the middle of a datagram: the next message is still read
        kernel.send(no_payload + _copy(2) + bytes(truncated) + _copy(3, mark=5))
        # a message longer than its datagram: the rest of it is lost, the next datagram read
        kernel.send(_copy(4) + struct.pack("=IHHII", 400, 0x400, 0, 0, 0) + b"\0" * 8)
        kernel.send(b"\x01\x00\x00")  # not even a netlink header
        kernel.send(_copy(6))
        seen: list[LoggedPacket] = []

        def handler(pkt: LoggedPacket) -> None:
            seen.append(pkt)
            if pkt.mark == 5:
                raise RuntimeError("a handler that fails does not stop the loop")

        assert client.drain(handler) == 4
        assert [p.payload[-1] for p in seen] == [2, 3, 4, 6]
        assert (client.malformed, client.handler_errors) == (4, 1)
    finally:
        kernel.close()
        client._sock.close()  # type: ignore[union-attr]


class _ScriptedSocket:
    """Stands in for the netlink socket: recv_into plays a script of datagrams and errors
    (for what a socket pair cannot produce: the kernel's ENOBUFS)."""

    def __init__(self, *steps: bytes | OSError) -> None:
        self.steps = list(steps)

    def recv_into(self, buf: bytearray) -> int:
        if not self.steps:
            raise BlockingIOError(errno.EAGAIN, "no more")
        step = self.steps.pop(0)
        if isinstance(step, OSError):
            raise step
        buf[: len(step)] = step
        return len(step)


def test_enobufs_is_counted_and_the_drain_goes_on() -> None:
    client = NflogClient(9)
    nobufs = OSError(errno.ENOBUFS, os.strerror(errno.ENOBUFS))
    script = _ScriptedSocket(_copy(0), nobufs, _copy(1), nobufs, nobufs, _copy(2))
    client._sock = script  # type: ignore[assignment]
    seen: list[LoggedPacket] = []
    assert client.drain(seen.append) == 3
    assert (client.enobufs, client.received) == (3, 3)


def test_drain_stops_at_the_limit_after_a_whole_datagram() -> None:
    client = NflogClient(9)
    client._sock = _ScriptedSocket(_copy(0) + _copy(1), _copy(2))  # type: ignore[assignment]
    assert client.drain(lambda _pkt: None, limit=1) == 2  # the datagram is not split
    assert client.drain(lambda _pkt: None, limit=1) == 1


def test_copies_arriving_before_the_ack_are_kept_for_the_next_drain() -> None:
    client, kernel = _client_on_socketpair()
    try:
        # the kernel's side, queued before the request: a copy, a stale ACK, then the answer
        kernel.send(_copy(0))
        kernel.send(_ack(0))
        kernel.send(_ack(1))
        client._request(command=nflog.NFULNL_CFG_CMD_BIND, copy_range=0xFFFF, qthresh=1)
        assert kernel.recv(4096) == config_message(
            9, command=1, copy_range=0xFFFF, qthresh=1, seq=1
        )
        assert client._sock is not None and client._sock.gettimeout() == 0.0  # non-blocking
        seen: list[LoggedPacket] = []
        assert client.drain(seen.append) == 1 and seen[0].payload[-1] == 0
        # a refusal is the kernel's errno
        kernel.send(_ack(2, errno.EPERM))
        with pytest.raises(NflogError) as refused:
            client._request(command=nflog.NFULNL_CFG_CMD_BIND)
        assert refused.value.errno == errno.EPERM and "group 9" in str(refused.value)
        # close: UNBIND (answered here), then the socket is gone; twice is fine
        kernel.send(_ack(3))
        client.close()
        client.close()
        assert client._sock is None
        assert kernel.recv(4096) == config_message(9, command=1, seq=2)  # the refused one
        assert kernel.recv(4096) == config_message(9, command=nflog.NFULNL_CFG_CMD_UNBIND, seq=3)
    finally:
        kernel.close()


def test_the_wait_for_an_ack_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netlink, "ACK_TIMEOUT", 0.2)
    client, kernel = _client_on_socketpair()
    try:
        with pytest.raises(NflogError) as silent:
            client._request(command=nflog.NFULNL_CFG_CMD_BIND)
        assert silent.value.errno == errno.ETIMEDOUT
    finally:
        kernel.close()
        client._sock.close()  # type: ignore[union-attr]


# ---- the real kernel ---------------------------------------------------------------------------
