"""ips/io/nflog.py: our own nfnetlink_log (NFLOG) client, which reads the kernel's copies of
the first packet after an offloaded handshake.

Unprivileged: the config message byte for byte against the uapi layout
(linux/netfilter/nfnetlink_log.h), packet messages as the kernel's __build_packet_message lays
them out, and the client's drain over a datagram socket pair (several messages in one
datagram, malformed ones counted). As root: a namespace of the test's own, an nft rule
`log group` on its loopback output, the client bound there reads the copies.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys

import pytest

from ips.io import nflog
from ips.io.nflog import (
    LoggedPacket,
    MalformedMessage,
    NflogClient,
    config_message,
    packet_message,
    parse_packet,
)
from tests.labkit import ROOT, need_root, unique_prefix

UDP = bytes.fromhex("450000210001000040117a6a0a0a01140a0a020a9c4000350009f3a078")


def _nlmsghdr(length: int, msg: int, flags: int, seq: int = 0) -> bytes:
    return struct.pack("=IHHII", length, (4 << 8) | msg, flags, seq, 0)  # NFNL_SUBSYS_ULOG


def test_config_message_binds_copying_whole_packets_sent_one_by_one() -> None:
    msg = config_message(0x8001, command=nflog.NFULNL_CFG_CMD_BIND, copy_range=0xFFFF,
                         qthresh=1, seq=7)  # fmt: skip
    body = (
        b"\x00\x00\x80\x01"  # nfgenmsg: AF_UNSPEC, v0, res_id = group (big endian)
        + struct.pack("=HH", 5, 1) + b"\x01\0\0\0"  # NFULA_CFG_CMD: BIND (u8, padded)
        # NFULA_CFG_MODE: be32 copy_range, u8 copy_mode (PACKET), u8 pad
        + struct.pack("=HH", 10, 2) + b"\x00\x00\xff\xff" + b"\x02\x00" + b"\0\0"
        + struct.pack("=HH", 8, 5) + b"\x00\x00\x00\x01"  # NFULA_CFG_QTHRESH
    )  # fmt: skip
    assert msg == _nlmsghdr(16 + len(body), 1, 0x01 | 0x04, seq=7) + body  # REQUEST | ACK


def test_config_message_other_settings() -> None:
    msg = config_message(3, nlbufsiz=65536, timeout=10, flags=0x1, ack=False)
    assert msg[4:8] == struct.pack("=HH", (4 << 8) | 1, 0x01)  # NFULNL_MSG_CONFIG, REQUEST
    assert msg[20:] == (
        struct.pack("=HH", 8, 3) + b"\x00\x01\x00\x00"  # NFULA_CFG_NLBUFSIZ
        + struct.pack("=HH", 8, 4) + b"\x00\x00\x00\x0a"  # NFULA_CFG_TIMEOUT (1/100 s)
        + struct.pack("=HH", 6, 6) + b"\x00\x01" + b"\0\0"  # NFULA_CFG_FLAGS (be16)
    )  # fmt: skip


def test_a_packet_message_as_the_kernel_builds_it_parses_back() -> None:
    pkt = LoggedPacket(UDP, indev=3, outdev=4, mark=0x2A, hw_protocol=0x0800, hook=2,
                       prefix="ipsctl")  # fmt: skip
    msg = packet_message(32768, pkt)
    assert struct.unpack_from("=HH", msg, 4)[0] == 0x400  # NFNL_SUBSYS_ULOG, MSG_PACKET
    assert parse_packet(msg, 20, len(msg)) == pkt


def test_unknown_attributes_are_skipped_and_bad_ones_refused() -> None:
    msg = packet_message(1, LoggedPacket(UDP, indev=5))
    # NFULA_UID (11) and a nested attribute before the rest
    body = (struct.pack("=HH", 8, 11) + b"\0\0\0\1" + struct.pack("=HH", 4, 18 | 0x8000)
            + msg[20:])  # fmt: skip
    assert parse_packet(body, 0, len(body)) == LoggedPacket(UDP, indev=5)
    no_payload = packet_message(1, LoggedPacket(b""))[20:28]  # the packet header only
    with pytest.raises(MalformedMessage, match="NFULA_PAYLOAD"):
        parse_packet(no_payload, 0, len(no_payload))
    truncated = msg[20:-8]
    with pytest.raises(MalformedMessage, match="attribute length"):
        parse_packet(truncated, 0, len(truncated))


def _client_on_socketpair() -> tuple[NflogClient, socket.socket]:
    """A client whose 'netlink socket' is one end of an AF_UNIX datagram pair; the test plays
    the kernel on the other end."""
    client = NflogClient(9)
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    client._sock = ours
    return client, kernel


def test_drain_reads_every_packet_of_a_multipart_datagram_and_counts_what_is_wrong() -> None:
    client, kernel = _client_on_socketpair()
    try:
        multi = b"".join(packet_message(9, LoggedPacket(UDP[:-1] + bytes([i])), flags=0x02)
                         for i in range(3))  # NLM_F_MULTI  # fmt: skip
        done = struct.pack("=IHHII", 20, 3, 0x02, 0, 0) + b"\0\0\0\0"  # NLMSG_DONE
        kernel.send(multi + done)
        # a packet message without payload, then a good one, in one datagram
        bad = packet_message(9, LoggedPacket(b""))
        bad = struct.pack("=I", 28) + bad[4:28]  # cut after the packet header
        kernel.send(bad + packet_message(9, LoggedPacket(UDP, mark=5)))
        seen: list[LoggedPacket] = []

        def handler(pkt: LoggedPacket) -> None:
            seen.append(pkt)
            if pkt.mark == 5:
                raise RuntimeError("a handler that fails does not stop the loop")

        assert client.drain(handler) == 4
        assert [p.payload[-1] for p in seen[:3]] == [0, 1, 2] and seen[3].payload == UDP
        assert client.received == 4 and client.malformed == 1 and client.handler_errors == 1
        assert client.drain(handler) == 0  # nothing left: the socket's EAGAIN ends it
    finally:
        kernel.close()
        client._sock.close()  # type: ignore[union-attr]


def test_bad_group_is_refused_before_any_socket() -> None:
    with pytest.raises(ValueError):
        NflogClient(70000)


# ---- the real kernel ---------------------------------------------------------------------------

IN_NAMESPACE = r"""
import errno, json, socket, time
from ips.io.nflog import NflogClient, NflogError
client = NflogClient(4242)
client.bind()
try:
    NflogClient(4242).bind()
    second = "bound"
except NflogError as exc:
    second = errno.errorcode[exc.errno]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(3):
    s.sendto(b"copy %d" % i, ("127.0.0.1", 9999))
s.sendto(b"not logged", ("127.0.0.1", 9998))
got = []
deadline = time.monotonic() + 3
while len(got) < 3 and time.monotonic() < deadline:
    client.drain(got.append)
    time.sleep(0.01)
client.close()
print(json.dumps({"second": second, "payloads": [p.payload.hex() for p in got],
                  "outdev": [p.outdev for p in got], "malformed": client.malformed}))
"""

RULES = """
table inet nflogtest {
    chain out {
        type filter hook output priority 0; policy accept;
        udp dport 9999 log group 4242
    }
}
"""


def test_the_client_reads_the_copies_an_nft_log_rule_sends() -> None:
    need_root()
    ns = unique_prefix("nfl") + "ns"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=RULES, text=True,
                       check=True)  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        res = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", IN_NAMESPACE],
                             capture_output=True, text=True, timeout=20, env=env,
                             cwd=ROOT)  # fmt: skip
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    # another socket on a bound group: the kernel checks the owner first (EPERM)
    assert out["second"] in ("EPERM", "EBUSY")
    payloads = [bytes.fromhex(p) for p in out["payloads"]]
    assert len(payloads) == 3 and out["malformed"] == 0
    for i, p in enumerate(payloads):
        assert p[0] >> 4 == 4 and p[9] == 17  # IPv4, UDP
        assert struct.unpack_from("!H", p, 22)[0] == 9999
        assert p.endswith(b"copy %d" % i)  # the whole packet (copy range 0xFFFF)
    assert all(o > 0 for o in out["outdev"])  # output hook: lo
