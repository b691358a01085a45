"""What our two nfnetlink clients share: ips/io/nfqnl.py (NFQUEUE: the queue's packets and
verdicts) and ips/io/nflog.py (NFLOG: the offload's copies) speak the same netlink framing.

    nlmsghdr   u32 len, u16 type = (subsystem << 8) | msg, u16 flags, u32 seq, u32 pid
    nfgenmsg   u8 family, u8 version (0), be16 res_id (the queue or the group)
    attributes u16 nla_len (header included, unpadded), u16 nla_type, value, padded to 4

in host byte order for the netlink headers and network byte order inside nfnetlink's
attribute values (linux/netlink.h, linux/netfilter/nfnetlink.h). Pure, except
open_netfilter_socket, request and NetfilterClient (the socket's life, both clients').
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

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
ACK_TIMEOUT = 5.0  # seconds a config request waits for the kernel's answer, in all
_ERRNO = struct.Struct("=i")


class MalformedMessage(ValueError):
    """A netlink message that does not parse (counted by the clients, never raised out)."""


def attr(attr_type: int, value: bytes) -> bytes:
    """One attribute: its length counts the value unpadded, the bytes are padded to 4."""
    length = 4 + len(value)
    return NLA.pack(length, attr_type) + value + b"\0" * (-length % 4)


def nfnl_message(
    subsys: int,
    msg: int,
    res_id: int,
    attrs: bytes,
    flags: int,
    seq: int = 0,
    family: int = socket.AF_UNSPEC,
) -> bytes:
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


def request(
    sock: socket.socket,
    msg: bytes,
    seq: int,
    buf: bytearray,
    timeout: float,
    keep: Callable[[int], None],
    lost: Callable[[], None],
) -> int:
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


class NetfilterClient:
    """The socket's life, which our NFQUEUE and NFLOG clients share: opened and bound with
    one config request, more requests (each ACK waited for, bounded: `request`), unbound and
    closed. A subclass builds its config messages (_config), keeps what arrives while a
    request waits (_keep: into _backlog, for its next drain) and names its unbind command,
    its error class and the kernel module that answers."""

    UNBIND = 0
    Error: type[OSError] = OSError  # raised with the kernel's errno, or ETIMEDOUT
    KERNEL = "nfnetlink"

    def __init__(self, label: str, rcvbuf: int, buffer_size: int) -> None:
        self.label = label  # what the requests are about, for errors: "queue 3"
        self.rcvbuf = rcvbuf
        self._buf = bytearray(buffer_size)
        self._view = memoryview(self._buf)
        self._sock: socket.socket | None = None
        self._seq = 0
        self._backlog: list[Any] = []  # read while a request waited for its answer
        self.enobufs = 0  # the kernel had more for us than the socket held: lost

    def _config(self, seq: int, **config: int) -> bytes:
        raise NotImplementedError

    def _keep(self, n: int) -> None:
        raise NotImplementedError

    def _bind(self, **config: int) -> int:
        """Open the socket and send the bind request `config`; return the fd (for select).
        A client already bound returns its fd: a second socket would orphan the first."""
        if self._sock is not None:
            return self._sock.fileno()
        sock = open_netfilter_socket(self.rcvbuf)
        try:
            self._sock = sock
            self._request(**config)
        except BaseException:
            self._sock = None
            self._backlog.clear()
            sock.close()
            raise
        sock.setblocking(False)
        return sock.fileno()

    def _request(self, **config: int) -> None:
        """A config message with an ACK asked for, waited for (bounded in all; what arrives
        meanwhile is kept for the next drain). Error with the kernel's errno if refused."""
        assert self._sock is not None
        self._seq += 1
        try:
            code = request(
                self._sock,
                self._config(self._seq, **config),
                self._seq,
                self._buf,
                ACK_TIMEOUT,
                self._keep,
                self._lost,
            )
        except TimeoutError:
            raise self.Error(errno.ETIMEDOUT, f"no answer from {self.KERNEL}") from None
        if code:
            raise self.Error(code, f"{self.label}: {os.strerror(code)}")

    def _lost(self) -> None:
        self.enobufs += 1

    def fileno(self) -> int:
        assert self._sock is not None, "not bound"
        return self._sock.fileno()

    def close(self) -> None:
        """Unbind (closing alone would too: the kernel unbinds a closed socket's queue or
        groups) and close. Idempotent; errors are ignored."""
        if self._sock is None:
            return
        try:
            self._request(command=self.UNBIND)
        except OSError:
            pass
        finally:
            self._sock.close()
            self._sock = None
            self._backlog.clear()
