# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The NFQUEUE receive/verdict loop in compiled code: `NfqClient.drain` (ips/io/nfqnl.py)
with the queue worker's handler (ips/io/nfqueue.py `QueueWorker._on_queued`) folded in.

`CompiledDrain(client, worker).drain()` reads the queue's socket with recvmmsg(2), parses
the netlink messages in C and, for each queued packet the copy range did not cut (a GSO
super-packet included, counted in the worker's gso_packets), calls the engine's compiled fast
path (`FastPath.handle`) itself:

  * a plain accept joins the pending batch verdict, built and sent here;
  * a drop, or an accept with an offload mark, becomes its verdict message here, through
    the same mapping as `kernel_verdict` (the packet's mark | OFFLOAD_MARK,
    HANDSHAKE_ACK_MARK or BARE_ACK_MARK);
  * any other Decision (effects, new bytes, a reject: none comes from the fast path today)
    goes to `worker._verdict_for`, the tail of the Python handler;
  * a packet the fast path did not decide goes to `worker._judge_decoded` with what the fast
    path made of it (the decoded `Packet`, so it is not decoded twice, or None);
  * a cut packet (only a GSO super-packet longer than 65,531 bytes can be) goes to
    `worker._judge_queued` as a `QueuedPacket`, as in Python.

Everything observable is as the Python drain does it: the verdict messages and their order
(batch_after, BATCH_MAX, the end-of-burst batch and one more read, accepts with changes after
the pending batch, drops before it), NLMSG_ERROR counted, ENOBUFS counted and the loop goes
on, a malformed or truncated packet message given the on_error verdict when its id can be
read, an exception of the worker's side counted in its verdict_errors and given on_error. The
worker's bookkeeping is done here for every packet, in the order `_on_queued` does it: the
judged count (published to the worker's JudgedCell before any verdict that covers it goes
out), overdue blocks flushed, the heartbeat every BUSY_EVERY packets, the Meta cache.

One difference, documented in docs/architecture.md: the worker's clock is read once per
receive call (one recvmmsg: up to `recv_many` packets that were already waiting), not once
per packet. The meter (ips/sinks/meter.py) is kept as the daemon's wrapper of
`engine.handle` keeps it: the bytes of every packet, the latency of one packet in `every`.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.pystate cimport (PyInterpreterState, PyInterpreterState_ThreadHead, PyThreadState,
                              PyThreadState_Get, PyThreadState_Next)
from libc.errno cimport EAGAIN, EINTR, ENOBUFS, errno
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy, memset

import ctypes
import os
import time

from ips.core.decision import OFFLOAD_BARE_ACKS, OFFLOAD_FLOW, OFFLOAD_HANDSHAKE_ACK, Decision
from ips.io.adapter import BUSY_EVERY
from ips.io.nfqnl import BATCH_MAX, QueuedPacket, Verdict
from ips.translate.nft import BARE_ACK_MARK, HANDSHAKE_ACK_MARK, OFFLOAD_MARK

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct iovec:
        void *iov_base
        size_t iov_len
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    int recvmmsg(int sockfd, mmsghdr *msgvec, unsigned int vlen, int flags, void *timeout)
    ssize_t send(int sockfd, const void *buf, size_t len, int flags)
    enum:
        MSG_DONTWAIT
        MSG_TRUNC

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    enum:
        POLLIN
        POLLOUT

cdef extern from "Python.h":
    PyInterpreterState *PyThreadState_GetInterpreter(PyThreadState *tstate)

cdef extern from "<time.h>" nogil:
    struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(int clk_id, timespec *tp)
    enum:
        CLOCK_MONOTONIC
        CLOCK_REALTIME

cdef enum:
    NLMSG_ERROR = 2
    HEADERS = 20                 # nlmsghdr + nfgenmsg
    PACKET_TYPE = (3 << 8) | 0   # NFNL_SUBSYS_QUEUE, NFQNL_MSG_PACKET
    VERDICT_TYPE = (3 << 8) | 1  # NFQNL_MSG_VERDICT
    BATCH_TYPE = (3 << 8) | 3    # NFQNL_MSG_VERDICT_BATCH
    NLM_F_REQUEST = 1
    NLA_TYPE_MASK = 0x3FFF
    NFQA_PACKET_HDR = 1
    NFQA_VERDICT_HDR = 2
    NFQA_MARK = 3
    NFQA_IFINDEX_INDEV = 5
    NFQA_IFINDEX_OUTDEV = 6
    NFQA_HWADDR = 9
    NFQA_PAYLOAD = 10
    NFQA_CAP_LEN = 13
    NFQA_SKB_INFO = 14
    NFQA_SKB_CSUMNOTREADY = 0x01
    NFQA_SKB_GSO = 0x02
    NF_DROP = 0
    NF_ACCEPT = 1
    DEFAULT_RECV_MANY = 32       # packets one recvmmsg may return
    MSG_SMALL = 64               # a verdict without new bytes fits here
    # Metas kept in C, one per (interfaces, sender's MAC): a ping's request and reply, or
    # any two-way flow, alternate between two keys on every packet, and each key asked of
    # the worker's Python cache cost a Python call on cold caches (~12 µs a packet).
    META_SLOTS = 8

cdef object DECISION = Decision
cdef object QUEUED = QueuedPacket
cdef object VERDICT = Verdict
cdef int _BATCH_MAX = BATCH_MAX
cdef long long _BUSY_EVERY = BUSY_EVERY
cdef uint32_t _OFFLOAD_MARK = OFFLOAD_MARK
cdef uint32_t _HANDSHAKE_ACK_MARK = HANDSHAKE_ACK_MARK
cdef uint32_t _BARE_ACK_MARK = BARE_ACK_MARK
cdef int _OFFLOAD_FLOW = OFFLOAD_FLOW
cdef int _OFFLOAD_HANDSHAKE_ACK = OFFLOAD_HANDSHAKE_ACK
cdef int _OFFLOAD_BARE_ACKS = OFFLOAD_BARE_ACKS
cdef object TIME_TIME = time.time
cdef str ACCEPT = "accept"
cdef str DROP = "drop"


cdef inline uint32_t _be32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline uint16_t _be16(const uint8_t *p) noexcept nogil:
    return <uint16_t>((p[0] << 8) | p[1])


cdef inline uint16_t _h16(const uint8_t *p) noexcept nogil:
    cdef uint16_t v
    memcpy(&v, p, 2)
    return v


cdef inline uint32_t _h32(const uint8_t *p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v


cdef inline void _put_h16(uint8_t *p, uint16_t v) noexcept nogil:
    memcpy(p, &v, 2)


cdef inline void _put_h32(uint8_t *p, uint32_t v) noexcept nogil:
    memcpy(p, &v, 4)


cdef inline void _put_be32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = (v >> 24) & 0xFF
    p[1] = (v >> 16) & 0xFF
    p[2] = (v >> 8) & 0xFF
    p[3] = v & 0xFF


cdef struct Parsed:
    # One NFQNL_MSG_PACKET as parse_packet reads it (offsets into the receive buffer).
    int64_t packet_id          # -1: no NFQA_PACKET_HDR
    uint32_t hw_protocol, hook, indev, outdev, mark, cap_len, skb_info
    Py_ssize_t payload_at      # -1: no NFQA_PAYLOAD
    Py_ssize_t payload_len
    Py_ssize_t hw_at
    Py_ssize_t hw_len          # 0: no sender's address


cdef bint _parse(const uint8_t *buf, Py_ssize_t offset, Py_ssize_t end, Parsed *out) noexcept nogil:
    """ips/io/nfqnl.py `parse_packet` over buf[offset:end]: False where it raises
    MalformedMessage (an attribute that overruns, a short header, no header, no payload)."""
    cdef uint16_t length, attr_type, hwlen
    memset(out, 0, sizeof(Parsed))
    out.packet_id = -1
    out.payload_at = -1
    while offset + 4 <= end:
        length = _h16(buf + offset)
        attr_type = _h16(buf + offset + 2)
        if length < 4 or offset + length > end:
            return False
        attr_type &= NLA_TYPE_MASK
        if attr_type == NFQA_PAYLOAD:
            out.payload_at = offset + 4
            out.payload_len = length - 4
        elif attr_type == NFQA_PACKET_HDR:
            if length < 11:
                return False
            out.packet_id = _be32(buf + offset + 4)
            out.hw_protocol = _be16(buf + offset + 8)
            out.hook = buf[offset + 10]
        elif length >= 8:
            if attr_type == NFQA_IFINDEX_INDEV:
                out.indev = _be32(buf + offset + 4)
            elif attr_type == NFQA_IFINDEX_OUTDEV:
                out.outdev = _be32(buf + offset + 4)
            elif attr_type == NFQA_MARK:
                out.mark = _be32(buf + offset + 4)
            elif attr_type == NFQA_CAP_LEN:
                out.cap_len = _be32(buf + offset + 4)
            elif attr_type == NFQA_SKB_INFO:
                out.skb_info = _be32(buf + offset + 4)
            elif attr_type == NFQA_HWADDR and length >= 14:
                hwlen = _be16(buf + offset + 4)
                if 0 < hwlen <= 8 and offset + 8 + hwlen <= end:
                    out.hw_at = offset + 8
                    out.hw_len = hwlen
        offset += (length + 3) & ~3
    return out.packet_id >= 0 and out.payload_at >= 0


cdef bint _only_thread() noexcept:
    """The calling thread is the interpreter's only thread (the GIL is held)."""
    cdef PyThreadState *me = PyThreadState_Get()
    cdef PyThreadState *head = PyInterpreterState_ThreadHead(PyThreadState_GetInterpreter(me))
    return head == me and PyThreadState_Next(head) is NULL


cdef class CompiledDrain:
    """The compiled drain of one bound NfqClient and its QueueWorker (made at bind)."""

    cdef object client
    cdef object worker
    cdef object meter            # the daemon's PacketMeter, or None
    cdef int count               # recvmmsg slots
    cdef Py_ssize_t slot         # bytes per slot
    cdef uint8_t *mem
    cdef mmsghdr *msgs
    cdef iovec *iovs
    cdef uint8_t small[MSG_SMALL]
    # the last META_SLOTS Metas and the keys they were looked up with (None: slot empty)
    cdef list metas
    cdef uint32_t meta_indev[META_SLOTS]
    cdef uint32_t meta_outdev[META_SLOTS]
    cdef Py_ssize_t meta_hw_len[META_SLOTS]
    cdef uint8_t meta_hw[META_SLOTS][8]
    cdef int meta_last           # the slot that matched last: looked at first
    cdef int meta_next           # the slot the next new key replaces (round robin)
    cdef int sample_left         # packets until the meter's next latency sample
    # per drain (set by drain(), read by the helpers)
    cdef int fd
    cdef uint16_t queue_be
    # What the drains of one wait count, kept here and written to the worker, the client and
    # the meter once, when the wait returns (`_settle`; a drain called alone settles at its
    # end): a wait's drains run no Python of the worker's that reads them (the callbacks
    # they call saw them lag within one drain before), and on cold caches each read and
    # write of an attribute by name cost a few cache misses of every wake-up. `carrying`:
    # judged and busy_count hold the worker's counts (read when a drain starts with nothing
    # carried).
    cdef bint carrying
    cdef long long sent           # client.verdicts_sent owed
    cdef long long recv_owed      # client.recv_calls owed
    cdef long long received_owed  # client.received owed
    cdef long long meter_owed     # the meter's bytes owed
    cdef long long busy_count     # worker._count
    cdef long long judged         # worker.judged
    cdef long long published
    cdef object cell
    # The cell's memory, when it is what the daemon gives (multiprocessing.Value("Q",
    # lock=False): a ctypes unsigned 64-bit integer in shared memory), written directly: its
    # Python setter cost a few µs per publication on cold caches. NULL: the setter.
    cdef uint64_t *cell_at
    cdef uint32_t offload_bits   # the mark bit of the offload _decided saw last
    # The fast path returns the policy's prebuilt Decisions, the same few objects again and
    # again: the last one seen and what _decided made of it (held, so never another's id).
    cdef object last_decision
    cdef int last_kind
    cdef uint32_t last_bits
    cdef public long long compiled_packets  # decided by the fast path inside this loop
    # What a drain reads of the client and the worker, bound once per wait (or per drain
    # called alone): a wait's drains run with no Python of the worker's in between, so none
    # of it can change, and on cold caches each attribute read by name cost a few cache
    # misses of every wake-up.
    cdef object b_engine, b_fast, b_clock, b_judge_decoded, b_judge_queued, b_verdict_for
    cdef object b_blocks, b_on_busy
    cdef bint b_batch
    cdef long long b_batch_after
    cdef uint32_t b_on_error
    cdef int b_meter_every
    cdef bint b_clock_realtime    # the worker's clock is time.time: read here, not called
    # The blocks had effects queued when the last drain ended (`blocks.pending`): its packets
    # read `pending_since` again only after Python ran (a Decision's effects are noted
    # there), not per packet, a cold attribute read of every wake-up.
    cdef bint blocks_pending

    def __cinit__(self):
        self.mem = NULL
        self.msgs = NULL
        self.iovs = NULL

    def __init__(self, client, worker, meter=None, int recv_many=0):
        self.client = client
        self.worker = worker
        self.meter = meter
        self.count = recv_many if recv_many > 0 else DEFAULT_RECV_MANY
        # a datagram holds one packet of up to copy_range bytes and its attributes
        self.slot = client.copy_range + 1024
        self.mem = <uint8_t *>malloc(self.count * self.slot)
        self.msgs = <mmsghdr *>malloc(self.count * sizeof(mmsghdr))
        self.iovs = <iovec *>malloc(self.count * sizeof(iovec))
        if self.mem is NULL or self.msgs is NULL or self.iovs is NULL:
            raise MemoryError()
        memset(self.msgs, 0, self.count * sizeof(mmsghdr))
        cdef int i
        for i in range(self.count):
            self.iovs[i].iov_base = self.mem + i * self.slot
            self.iovs[i].iov_len = self.slot
            self.msgs[i].msg_hdr.msg_iov = &self.iovs[i]
            self.msgs[i].msg_hdr.msg_iovlen = 1
        self.metas = [None] * META_SLOTS
        self.meta_last = 0
        self.meta_next = 0
        self.sample_left = 1  # as the meter: the first packet is timed
        self.compiled_packets = 0

    def __dealloc__(self):
        free(self.mem)
        free(self.msgs)
        free(self.iovs)

    # ---- sending ---------------------------------------------------------------------------

    cdef int _publish(self) except -1:
        """The judged count to the supervisor's cell."""
        if self.cell_at is not NULL:
            self.cell_at[0] = <uint64_t>self.judged
        elif self.cell is not None:
            self.cell.value = self.judged
        return 0

    cdef int _send(self, const uint8_t *msg, Py_ssize_t n) except -1:
        """One verdict message; the judged count is published first (the supervisor must
        never count a packet that left the queue as unjudged)."""
        cdef ssize_t r
        cdef pollfd pfd
        if self.judged != self.published:
            # (worker.judged is written back when the wait ends: no Python reads it before)
            self.published = self.judged
            self._publish()
        while True:
            r = send(self.fd, msg, n, 0)
            if r >= 0:
                self.sent += 1
                return 0
            if errno == EINTR:
                continue
            if errno == EAGAIN:
                # netlink to the kernel does not block; be safe, as the Python client is
                pfd.fd = self.fd
                pfd.events = POLLOUT
                pfd.revents = 0
                poll(&pfd, 1, -1)
                continue
            raise OSError(errno, os.strerror(errno))

    cdef int _verdict(self, uint32_t packet_id, uint32_t verdict, int64_t mark,
                      object payload) except -1:
        """verdict_message(queue, packet_id, verdict, mark=…, payload=…), byte for byte;
        mark < 0: none."""
        cdef Py_ssize_t plen = 0
        cdef Py_ssize_t n = HEADERS + 12
        cdef uint8_t *m
        cdef bytes big = None
        if mark >= 0:
            n += 8
        if payload is not None:
            plen = PyBytes_GET_SIZE(payload)
            n += (4 + plen + 3) & ~3
        if n <= MSG_SMALL:
            m = self.small
        else:
            big = PyBytes_FromStringAndSize(NULL, n)
            m = <uint8_t *>PyBytes_AS_STRING(big)
        self._header(m, n, VERDICT_TYPE, packet_id, verdict)
        cdef Py_ssize_t at = HEADERS + 12
        if mark >= 0:
            _put_h16(m + at, 8)
            _put_h16(m + at + 2, NFQA_MARK)
            _put_be32(m + at + 4, <uint32_t>mark)
            at += 8
        if payload is not None:
            _put_h16(m + at, <uint16_t>(4 + plen))
            _put_h16(m + at + 2, NFQA_PAYLOAD)
            memcpy(m + at + 4, PyBytes_AS_STRING(payload), plen)
            memset(m + at + 4 + plen, 0, n - (at + 4 + plen))
        return self._send(m, n)

    cdef int _batch(self, uint32_t packet_id) except -1:
        """batch_verdict_message(queue, packet_id, NF_ACCEPT)."""
        self._header(self.small, HEADERS + 12, BATCH_TYPE, packet_id, NF_ACCEPT)
        return self._send(self.small, HEADERS + 12)

    cdef void _header(self, uint8_t *m, Py_ssize_t n, uint16_t msg_type, uint32_t packet_id,
                      uint32_t verdict) noexcept:
        _put_h32(m, <uint32_t>n)
        _put_h16(m + 4, msg_type)
        _put_h16(m + 6, NLM_F_REQUEST)
        _put_h32(m + 8, 0)
        _put_h32(m + 12, 0)
        m[16] = 0  # AF_UNSPEC
        m[17] = 0  # NFNETLINK_V0
        memcpy(m + 18, &self.queue_be, 2)
        _put_h16(m + 20, 12)
        _put_h16(m + 22, NFQA_VERDICT_HDR)
        _put_be32(m + 24, verdict)
        _put_be32(m + 28, packet_id)

    cdef int _malformed(self, const uint8_t *buf, Py_ssize_t offset, Py_ssize_t end,
                        uint32_t on_error) except -1:
        """NfqClient._malformed: counted; its on_error verdict at once if its id is read."""
        self.client.malformed += 1
        if offset + 12 <= end:
            if (_h16(buf + offset + 2) & NLA_TYPE_MASK) == NFQA_PACKET_HDR and _h16(buf + offset) >= 8:
                self._verdict(_be32(buf + offset + 4), on_error, -1, None)
        return 0

    # ---- the loop --------------------------------------------------------------------------

    cdef inline bint _meta_is(self, int i, const uint8_t *buf, Parsed *pkt):
        return (pkt.indev == self.meta_indev[i] and pkt.outdev == self.meta_outdev[i]
                and pkt.hw_len == self.meta_hw_len[i]
                and (pkt.hw_len == 0 or memcmp(buf + pkt.hw_at, self.meta_hw[i], pkt.hw_len) == 0)
                and self.metas[i] is not None)

    cdef object _meta(self, const uint8_t *buf, Parsed *pkt):
        """worker._meta(indev, outdev, hwaddr), asked only for a key none of the last
        META_SLOTS packets' keys is (a gateway's packets come from few senders; the worker's
        own cache gives the same Meta for the same key)."""
        cdef int i
        if self._meta_is(self.meta_last, buf, pkt):
            return self.metas[self.meta_last]
        for i in range(META_SLOTS):
            if self._meta_is(i, buf, pkt):
                self.meta_last = i
                return self.metas[i]
        hw = (PyBytes_FromStringAndSize(<const char *>buf + pkt.hw_at, pkt.hw_len)
              if pkt.hw_len else None)
        meta = self.worker._meta(pkt.indev, pkt.outdev, hw)
        i = self.meta_next
        self.meta_next = (i + 1) % META_SLOTS
        self.metas[i] = meta
        self.meta_indev[i] = pkt.indev
        self.meta_outdev[i] = pkt.outdev
        self.meta_hw_len[i] = pkt.hw_len
        if pkt.hw_len:
            memcpy(self.meta_hw[i], buf + pkt.hw_at, pkt.hw_len)
        self.meta_last = i
        return meta

    def wait(self, list fds, double timeout, bint linger=False):
        """poll(2) on the queue's socket and on `fds` for up to `timeout` seconds; if the
        queue's socket is readable, drain it at once: no Python runs between the wake-up and
        the first read of the queue (a packet after an idle gap otherwise waits for the
        worker's select loop to run, on cold caches). Returns the fds of `fds` that are
        readable (the queue's own is never among them); [] when interrupted by a signal.

        With `linger`, a drain does not end the wait: it polls again for what is left of
        `timeout`, and returns only when one of `fds` is readable, the time is up, a signal
        interrupted it, or the packets made blocks to write (`blocks.pending`: the caller
        writes them at once). So the worker's loop runs its Python (heartbeat, ticks, the
        other fds) once per `timeout` rather than once per wake-up: on cold caches that
        Python was about a sixth of a ping's time in the worker."""
        sock = self.client._sock
        assert sock is not None, "not bound"
        blocks = self.worker.blocks
        cdef bint bound = False
        # Packets read while a config request waited (rare): the Python drain gives them
        # first. Nothing fills that backlog during a wait (requests are the loop's, after it).
        cdef bint backlog = bool(self.client._backlog)
        cdef int count = len(fds) + 1
        cdef pollfd *pfds = <pollfd *>malloc(count * sizeof(pollfd))
        if pfds is NULL:
            raise MemoryError()
        cdef int i, rc, ms, others
        cdef bint backlog_drained = False
        cdef timespec now
        cdef double deadline = 0.0, left = timeout
        if linger:
            clock_gettime(CLOCK_MONOTONIC, &now)
            deadline = now.tv_sec + now.tv_nsec * 1e-9 + timeout
        try:
            pfds[0].fd = sock.fileno()
            pfds[0].events = POLLIN
            for i in range(1, count):
                pfds[i].fd = fds[i - 1]
                pfds[i].events = POLLIN
            while True:
                for i in range(count):
                    pfds[i].revents = 0
                # rounded up, so that a lingering wait never spins on a 0 ms poll
                ms = <int>(left * 1000.0 + 0.999) if left > 0.0 else 0
                # The only thread of the interpreter polls holding the GIL: no other thread
                # waits for it, and giving it up and taking it back cost a few µs of every
                # wake-up on cold caches. Looked at before each poll: a drain's Python may
                # start a thread (the store's hand-over); none can start during a poll (no
                # Python runs), and a C library's thread that asks for the GIL waits for the
                # poll's end (at most the wait's timeout).
                if _only_thread():
                    rc = poll(pfds, count, ms)
                else:
                    with nogil:
                        rc = poll(pfds, count, ms)
                if rc < 0:
                    if errno == EINTR:
                        return []
                    raise OSError(errno, os.strerror(errno))
                others = 0
                for i in range(1, count):
                    if pfds[i].revents:
                        others += 1
                if pfds[0].revents:
                    backlog_drained = backlog
                    if backlog:
                        self.drain()
                        backlog = bool(self.client._backlog)
                    else:
                        if not bound:
                            self._bind()
                            bound = True
                        self._drain_bound(1 << 30)
                if not linger or others or rc == 0:
                    break
                if backlog_drained:
                    # (the Python drain ran: blocks.pending as it reads it)
                    if blocks is not None and blocks.pending_since is not None:
                        break
                elif self.blocks_pending:
                    break
                clock_gettime(CLOCK_MONOTONIC, &now)
                left = deadline - (now.tv_sec + now.tv_nsec * 1e-9)
                if left <= 0.0:
                    break
            return [fds[i - 1] for i in range(1, count) if pfds[i].revents] if others else []
        finally:
            free(pfds)
            self._settle()

    def drain(self, long long limit=1 << 30):
        """NfqClient.drain(worker._on_queued, limit), compiled (see the module's docstring);
        returns the packets handled."""
        client = self.client
        self._settle()  # (a wait's drains settled: the Python drain reads the counts)
        if client._backlog:
            # Rare (packets read while a config request waited for its answer): the Python
            # drain, which gives those one by one and then reads the socket as this would.
            return client.drain(self.worker._on_queued, limit)
        self._bind()
        try:
            return self._drain_bound(limit)
        finally:
            self._settle()

    cdef int _settle(self) except -1:
        """Write what the drains counted in C (see `carrying`) to the worker and the client."""
        cdef long long n
        if self.carrying:
            self.carrying = False
            worker = self.worker
            worker.judged = self.judged
            worker._count = self.busy_count
        if self.meter_owed:
            n = self.meter_owed
            self.meter_owed = 0
            self.meter.bytes += n
        if self.sent or self.recv_owed or self.received_owed:
            client = self.client
            if self.sent:
                n = self.sent
                self.sent = 0
                client.verdicts_sent += n
            if self.recv_owed:
                n = self.recv_owed
                self.recv_owed = 0
                client.recv_calls += n
            if self.received_owed:
                n = self.received_owed
                self.received_owed = 0
                client.received += n
        return 0

    cdef int _bind(self) except -1:
        """Read what the drains of one wait use (see b_engine's comment)."""
        client = self.client
        worker = self.worker
        sock = client._sock
        assert sock is not None, "not bound"
        self.fd = sock.fileno()
        cdef uint16_t queue_num = client.queue_num
        self.queue_be = ((queue_num & 0xFF) << 8) | (queue_num >> 8)
        self.b_batch = client.batch
        self.b_batch_after = client.batch_after
        self.b_on_error = client.on_error
        self.b_engine = worker.engine
        self.b_fast = self.b_engine._fast
        self.b_clock = worker.clock
        self.b_clock_realtime = self.b_clock is TIME_TIME
        self.b_judge_decoded = worker._judge_decoded
        self.b_judge_queued = worker._judge_queued
        self.b_verdict_for = worker._verdict_for
        self.b_blocks = worker.blocks
        self.b_on_busy = worker.on_busy
        self.b_meter_every = self.meter.every if self.meter is not None else 0
        cell = worker.judged_cell
        if cell is not self.cell:
            self.cell = cell
            self.cell_at = NULL
            if (isinstance(cell, ctypes._SimpleCData) and getattr(cell, "_type_", "") in ("Q", "L")
                    and ctypes.sizeof(cell) == 8):
                self.cell_at = <uint64_t *><uintptr_t>ctypes.addressof(cell)
        return 0

    cdef long long _drain_bound(self, long long limit) except -1:
        """drain's loop, with what _bind read."""
        client = self.client
        worker = self.worker
        cdef bint batch = self.b_batch
        cdef long long batch_after = self.b_batch_after
        cdef uint32_t on_error = self.b_on_error
        engine = self.b_engine
        fast = self.b_fast
        clock = self.b_clock
        judge_decoded = self.b_judge_decoded
        judge_queued = self.b_judge_queued
        verdict_for = self.b_verdict_for
        blocks = self.b_blocks
        on_busy = self.b_on_busy
        meter = self.meter
        if not self.carrying:
            self.judged = worker.judged
            self.published = self.judged
            self.busy_count = worker._count
            self.carrying = True
        cdef long long busy_count = self.busy_count
        cdef timespec wall
        cdef long long meter_bytes = 0
        cdef int meter_every = self.b_meter_every
        cdef timespec t0, t1
        cdef bint timing
        cdef int64_t pending = -1
        cdef long long waiting = 0
        cdef long long handled = 0
        cdef long long recv_calls = 0
        cdef int got, i
        cdef Py_ssize_t offset, n, length, end
        cdef uint16_t msg_type
        cdef int32_t code
        cdef const uint8_t *buf
        cdef Parsed pkt
        cdef int plain  # 1 plain accept, 0 `given` is the Verdict, 2 drop, 3 offload, 4 on_error
        cdef long long compiled = 0
        cdef bint cut
        cdef bint python_ran
        cdef bint blocks_pending = blocks is not None and blocks.pending_since is not None
        try:
            while handled < limit:
                got = recvmmsg(self.fd, self.msgs, self.count, MSG_DONTWAIT, NULL)
                if got <= 0:
                    if got == 0 or errno == EAGAIN:
                        if pending >= 0:
                            # The burst ended: its accepts go, then one more look — what
                            # they set off (an answer forwarded back through us) is queued.
                            self._batch(<uint32_t>pending)
                            pending = -1
                            waiting = 0
                            continue
                        break
                    if errno == EINTR:
                        continue
                    if errno == ENOBUFS:  # the kernel counted them (user_dropped)
                        client.enobufs += 1
                        continue
                    raise OSError(errno, os.strerror(errno))
                recv_calls += 1
                # once per receive call (the module's docstring)
                if self.b_clock_realtime:
                    # time.time() without the call: its conversion of the same clock
                    clock_gettime(CLOCK_REALTIME, &wall)
                    now = (<double>wall.tv_sec if wall.tv_nsec == 0 else
                           <double>(wall.tv_sec * 1000000000 + wall.tv_nsec) / 1e9)
                else:
                    now = clock()
                for i in range(got):
                    buf = self.mem + i * self.slot
                    n = self.msgs[i].msg_len
                    if n > self.slot:
                        n = self.slot
                    offset = 0
                    while offset + 20 <= n:
                        length = _h32(buf + offset)
                        msg_type = _h16(buf + offset + 4)
                        if length < 16 or offset + length > n:
                            if msg_type == PACKET_TYPE:  # truncated: give it a verdict
                                self._malformed(buf, offset + HEADERS, n, on_error)
                            else:
                                client.malformed += 1
                            break
                        if msg_type == NLMSG_ERROR:
                            memcpy(&code, buf + offset + 16, 4)
                            if code:
                                client.kernel_errors += 1
                                client.last_error = -code
                            offset += (length + 3) & ~3
                            continue
                        if msg_type != PACKET_TYPE:
                            offset += (length + 3) & ~3
                            continue
                        end = offset + length
                        if not _parse(buf, offset + HEADERS, end, &pkt):
                            self._malformed(buf, offset + HEADERS, end, on_error)
                            offset += (length + 3) & ~3
                            continue
                        offset += (length + 3) & ~3
                        handled += 1
                        plain = 1
                        given = None
                        payload = PyBytes_FromStringAndSize(
                            <const char *>buf + pkt.payload_at, pkt.payload_len)
                        cut = pkt.cap_len > <uint32_t>pkt.payload_len
                        timing = False
                        python_ran = True
                        try:
                            if cut:
                                # as in Python, with the worker's handler (engine.handle)
                                hw = (PyBytes_FromStringAndSize(
                                    <const char *>buf + pkt.hw_at, pkt.hw_len)
                                    if pkt.hw_len else None)
                                given = judge_queued(QUEUED(
                                    pkt.packet_id, payload, pkt.indev, pkt.outdev, pkt.mark,
                                    pkt.hw_protocol, pkt.hook, hw, pkt.cap_len,
                                    bool(pkt.skb_info & NFQA_SKB_GSO),
                                    bool(pkt.skb_info & NFQA_SKB_CSUMNOTREADY)))
                                if given is not None:
                                    plain = 0
                            else:
                                if pkt.skb_info & NFQA_SKB_GSO:  # a super-packet, judged once
                                    worker.gso_packets += 1
                                meta = self._meta(buf, &pkt)
                                if meter is not None:
                                    meter_bytes += pkt.payload_len
                                    self.sample_left -= 1
                                    if self.sample_left <= 0:
                                        self.sample_left = meter_every
                                        timing = True
                                        clock_gettime(CLOCK_MONOTONIC, &t0)
                                result = None
                                if fast is not None:
                                    try:
                                        result = fast(payload, meta, now)
                                    except Exception:  # a bug of the fast path: as Engine.handle
                                        engine.fast_failures += 1
                                        result = None
                                if type(result) is DECISION:
                                    plain = self._decided(result, pkt.mark)
                                    if plain < 0:
                                        given = verdict_for(result, pkt.mark, False,
                                                            bool(pkt.skb_info & NFQA_SKB_CSUMNOTREADY))
                                        plain = 0 if given is not None else 1
                                    else:
                                        compiled += 1
                                        python_ran = False
                                else:
                                    given = judge_decoded(
                                        result, payload, meta, now, pkt.mark,
                                        bool(pkt.skb_info & NFQA_SKB_CSUMNOTREADY))
                                    if given is not None:
                                        plain = 0
                                if timing:
                                    clock_gettime(CLOCK_MONOTONIC, &t1)
                                    meter.observe((t1.tv_sec - t0.tv_sec)
                                                  + (t1.tv_nsec - t0.tv_nsec) * 1e-9)
                        except Exception:
                            # As QueueWorker._on_queued: counted, the on-error verdict (an
                            # accept is batched, a drop goes at once), and the loop goes on
                            worker.verdict_errors += 1
                            plain = 1 if on_error == NF_ACCEPT else 4
                        # the worker's bookkeeping (_judged, then _counted)
                        self.judged += 1
                        try:
                            if python_ran:
                                blocks_pending = (blocks is not None
                                                  and blocks.pending_since is not None)
                            if blocks_pending and blocks.overdue():
                                blocks.flush()
                                blocks_pending = blocks.pending_since is not None
                            busy_count += 1
                            if busy_count >= _BUSY_EVERY:
                                busy_count = 0
                                if on_busy is not None:
                                    on_busy()
                                    blocks_pending = (blocks is not None
                                                      and blocks.pending_since is not None)
                        except Exception:
                            # Out of _on_queued in Python: the drain's handler error, on_error
                            client.handler_errors += 1
                            plain = 1 if on_error == NF_ACCEPT else 4
                        # the verdict, in the Python drain's order
                        if plain == 1:
                            if batch and handled > batch_after:
                                pending = pkt.packet_id
                                waiting += 1
                                if waiting >= _BATCH_MAX:
                                    self._batch(<uint32_t>pending)
                                    pending = -1
                                    waiting = 0
                            else:
                                self._verdict(<uint32_t>pkt.packet_id, NF_ACCEPT, -1, None)
                        elif plain == 0:
                            if type(given) is VERDICT:
                                v = given[0]
                                vmark = given[1]
                                vpayload = given[2]
                            else:  # a handler's Verdict-like tuple
                                v, vmark, vpayload = given
                            if pending >= 0 and v != NF_DROP:
                                self._batch(<uint32_t>pending)
                                pending = -1
                                waiting = 0
                            self._verdict(<uint32_t>pkt.packet_id, v,
                                          -1 if vmark is None else <int64_t>vmark, vpayload)
                        elif plain == 2:  # a drop decided here: before the pending batch
                            self._verdict(<uint32_t>pkt.packet_id, NF_DROP, -1, None)
                        elif plain == 4:  # on_error for a handler that raised: at once
                            self._verdict(<uint32_t>pkt.packet_id, on_error, -1, None)
                        elif plain == 3:  # an offload: after the pending batch
                            if pending >= 0:
                                self._batch(<uint32_t>pending)
                                pending = -1
                                waiting = 0
                            self._verdict(<uint32_t>pkt.packet_id, NF_ACCEPT,
                                          <int64_t>(pkt.mark | self.offload_bits), None)
        finally:
            try:
                if pending >= 0:
                    self._batch(<uint32_t>pending)
            finally:
                self._publish()
                self.blocks_pending = blocks_pending
                self.busy_count = busy_count
                self.recv_owed += recv_calls
                self.compiled_packets += compiled
                self.meter_owed += meter_bytes
        self.received_owed += handled
        return handled

    cdef int _decided(self, object decision, uint32_t mark) except -2:
        """What `kernel_verdict` gives for a Decision of the fast path, when it is one of the
        three this loop sends itself: 1 plain accept, 2 drop, 3 accept with the offload mark
        (offload_bits). -1: anything else (effects, new bytes, a reject): Python."""
        if decision is self.last_decision:
            # its effects looked at each time: a Decision reused with effects set must not
            # pass as the plain one it was
            if decision.effects:
                return -1
            self.offload_bits = self.last_bits
            return self.last_kind
        kind = self._kind(decision)
        self.last_decision = decision
        self.last_kind = kind
        self.last_bits = self.offload_bits
        return kind

    cdef int _kind(self, object decision) except -2:
        effects = decision.effects
        if effects:
            return -1
        if decision.data is not None:
            return -1
        verdict = decision.verdict
        if verdict == DROP:
            return 2
        if verdict != ACCEPT:
            return -1
        offload = decision.offload
        if not offload:
            return 1
        if offload == _OFFLOAD_FLOW:
            self.offload_bits = _OFFLOAD_MARK
        elif offload == _OFFLOAD_HANDSHAKE_ACK:
            self.offload_bits = _HANDSHAKE_ACK_MARK
        elif offload == _OFFLOAD_BARE_ACKS:
            self.offload_bits = _BARE_ACK_MARK
        else:
            return -1
        return 3
