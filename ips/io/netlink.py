"""What our two nfnetlink clients share: ips/io/nfqnl.py (NFQUEUE: the queue's packets and
verdicts) and ips/io/nflog.py (NFLOG: the offload's copies) speak the same netlink framing.

    nlmsghdr   u32 len, u16 type = (subsystem << 8) | msg, u16 flags, u32 seq, u32 pid
    nfgenmsg   u8 family, u8 version (0), be16 res_id (the queue or the group)
    attributes u16 nla_len (header included, unpadded), u16 nla_type, value, padded to 4

in host byte order for the netlink headers and network byte order inside nfnetlink's
attribute values (linux/netlink.h, linux/netfilter/nfnetlink.h). Pure, except
open_netfilter_socket and request.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from collections.abc import Callable

# linux/netlink.h (Python's socket module has no NETLINK_NETFILTER)
NETLINK_NETFILTER = 12
NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
NFNETLINK_V0 = 0
SO_RCVBUFFORCE = 33  # asm-generic/socket.h (not in Python's socket module)

NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
NLMSGHDR = struct.Struct("=IHHII")
NFGEN = struct.Struct("=BBH")
NLA = struct.Struct("=HH")
BE32 = struct.Struct("!I")
HEADERS = 16 + 4  # nlmsghdr + nfgenmsg
_ERRNO = struct.Struct("=i")


class MalformedMessage(ValueError):
    """A netlink message that does not parse (counted by the clients, never raised out)."""


def attr(attr_type: int, value: bytes) -> bytes:
    """One attribute: its length counts the value unpadded, the bytes are padded to 4."""
    length = 4 + len(value)
    return NLA.pack(length, attr_type) + value + b"\0" * (-length % 4)


def nfnl_message(subsys: int, msg: int, res_id: int, attrs: bytes, flags: int, seq: int = 0,
                 family: int = socket.AF_UNSPEC) -> bytes:  # fmt: skip
    """nlmsghdr + nfgenmsg + attrs, for nfnetlink subsystem `subsys`."""
    body = NFGEN.pack(family, NFNETLINK_V0, socket.htons(res_id)) + attrs
    return NLMSGHDR.pack(16 + len(body), (subsys << 8) | msg, flags, seq, 0) + body


def parse_ack(buf: bytes | bytearray | memoryview, n: int, seq: int) -> int | None:
    """The errno (0: success) of the NLMSG_ERROR answering `seq` in buf[:n], or None."""
    offset = 0
    while offset + 16 <= n:
        length, msg_type, _flags, msg_seq, _pid = NLMSGHDR.unpack_from(buf, offset)
        if length < 16 or offset + length > n:
            raise MalformedMessage(f"netlink message length {length} at offset {offset}")
        if msg_type == NLMSG_ERROR and msg_seq == seq and length >= 20:
            return -_ERRNO.unpack_from(buf, offset + 16)[0]
        offset += (length + 3) & ~3
    return None


def open_netfilter_socket(rcvbuf: int) -> socket.socket:
    """A bound NETLINK_NETFILTER socket with a receive buffer of rcvbuf bytes (root may exceed
    net.core.rmem_max, as libnfnetlink does; otherwise the ordinary limit applies)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        sock.bind((0, 0))
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    except BaseException:
        sock.close()
        raise
    return sock


def request(sock: socket.socket, msg: bytes, seq: int, buf: bytearray, timeout: float,
            keep: Callable[[int], None], lost: Callable[[], None]) -> int:  # fmt: skip
    """Send `msg` (a request asking for an ACK, sequence number `seq`) and wait for the
    kernel's answer: its errno (0: done). The wait is bounded in all (TimeoutError after
    `timeout` seconds), however much else arrives meanwhile: each other datagram, read into
    buf, goes to keep(n) (a queued packet or a copy, for the next drain); ENOBUFS (the kernel
    lost something for us, not our answer) to lost(). The socket's timeout is as before."""
    saved = sock.gettimeout()
    deadline = time.monotonic() + timeout
    try:
        sock.settimeout(timeout)
        sock.send(msg)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            sock.settimeout(left)
            try:
                n = sock.recv_into(buf)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                lost()
                continue
            try:
                code = parse_ack(buf, n, seq)
            except MalformedMessage:
                code = None  # the drain counts it, with whatever good messages it holds
            if code is None:
                keep(n)
                continue
            return code
    finally:
        sock.settimeout(saved)
