"""Bidirectional flow table: which connection a packet belongs to, and which way it goes.

Pure: no I/O and no clock; `now` (float seconds) is an argument everywhere.

Keys. Every flow is stored under both directional 5-tuples ``(proto, src, sport, dst, dport)``
as they appear on the wire, so a lookup is one ``dict.get`` on a tuple built straight from the
`Packet`, with no canonical ordering of the endpoints. Addresses are 4 or 16 bytes long, so IPv4
and IPv6 keys never collide. Direction is found by comparing the packet's source with the
flow's initiator (stored value is the flow itself, not a (flow, direction) pair: that saves two
tuples, ~110 bytes, per flow for one extra comparison). When both directional keys are equal
(same address and port on both ends) there is one entry and every packet counts as forward.

ICMP/ICMPv6 echo packets carry the echo identifier in both port fields (see `Packet`), so a
ping and its reply share one flow. Other ICMP messages and other protocols use ports 0: all of
them between two hosts share one flow per protocol.

Non-first fragments (``pkt.frag == FRAG_LATER``) carry no transport header, so their ports are
0 and they map to the ``(proto, src, 0, dst, 0)`` flow, not to the connection they belong to.
Reassembly is not this table's job; the engine decides what fragments may do.

Expiry. Each flow sits in one bucket of a timer wheel (1 s slots, in a dict, with a heap of the
slot numbers) filed under the deadline it had when filed. The per-packet path only stores
`last_seen`; the deadline is checked lazily when the bucket comes due, and a flow that saw
traffic meanwhile is re-filed under its real deadline. So an active flow costs one re-filing per
timeout period, and `expire()` touches only flows that are due (or were due), never the whole
table. Only the rare state changes that *shorten* the timeout (FIN, RST) move a flow early.

Capacity. At `max_flows`, a new flow first reclaims a few expired flows, then evicts the oldest
flow that never got a reply (as conntrack's early_drop does, so a SYN flood or a spoofed-source
flood only displaces its own kind), and only then the flow nearest to its timeout. Work per
insertion is bounded. Flows removed inside `track()` (reclaimed, evicted, or ended because
their tuple was reused by a new TCP connection) are kept for the engine in `pop_evicted()`, so
no flow-end event is lost; `Flow.end_reason` says why each one ended.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from ips.core.app_fields import APP_NOT_STARTED, AppFields
from ips.core.packet import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    PROTO_UDPLITE,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    Packet,
)

__all__ = [
    "END_DISCARDED",
    "END_EVICTED",
    "END_REUSED",
    "END_SHUTDOWN",
    "END_TIMEOUT",
    "TCP_CLOSED",
    "TCP_CLOSING",
    "TCP_ESTABLISHED",
    "TCP_FIN_WAIT",
    "TCP_NONE",
    "TCP_STATE_NAMES",
    "TCP_SYN_RECV",
    "TCP_SYN_SENT",
    "TCP_TIME_WAIT",
    "Flow",
    "FlowStats",
    "FlowTable",
    "FlowTimeouts",
]

HANDSHAKE_MEMORY = 65_536  # sources whose completed handshake (and its TTL) is remembered

# TCP states, ordered so that "closing or later" is `state >= TCP_CLOSING`.
TCP_NONE = 0  # no SYN seen (mid-stream pickup not yet confirmed, or not TCP)
TCP_SYN_SENT = 1  # initiator sent SYN
TCP_SYN_RECV = 2  # responder answered SYN+ACK
TCP_ESTABLISHED = 3  # handshake completed, or traffic seen both ways without a SYN
TCP_FIN_WAIT = 4  # one side sent FIN
TCP_CLOSING = 5  # both sides sent FIN
TCP_TIME_WAIT = TCP_CLOSING  # same thing here: we keep no separate last-ACK state
TCP_CLOSED = 6  # RST seen
TCP_STATE_NAMES = (
    "none",
    "syn_sent",
    "syn_recv",
    "established",
    "fin_wait",
    "closing",
    "closed",
)

# Flow.end_reason values.
END_TIMEOUT = "timeout"
END_EVICTED = "evicted"  # table full
END_REUSED = "reused"  # a new TCP SYN on the tuple of a closed/closing connection
END_SHUTDOWN = "shutdown"  # drain()
END_DISCARDED = "discarded"  # discard(): its first packet was refused

_SLOT = 1.0  # timer wheel granularity, seconds: expiry is at most this late
_GONE = -1  # Flow._slot of a flow no longer in a table
_EVICT_SCAN = 64  # bound on entries looked at per eviction
_RECLAIM_BUDGET = 32  # bound on expired flows reclaimed per insertion at capacity
_ID_MASK = (1 << 53) - 1  # ids stay exact in JSON consumers that use doubles
_ID_MULT = 0x9E3779B97F4A7C15 & _ID_MASK | 1  # odd, so counter -> id is a bijection

_NEVER = float("-inf")  # Flow.back_since of a flow never back from the kernel

# Flags whose presence on an established flow needs the state machine.
_STATE_FLAGS = TCP_SYN | TCP_FIN | TCP_RST


@dataclass(frozen=True, slots=True)
class FlowTimeouts:
    """Idle timeouts in seconds: a flow ends when it has seen no packet for this long.

    Compared with Linux conntrack (nf_conntrack_tcp_timeout_* etc.) and Suricata's
    flow-timeouts; a userspace table holds Python objects, so idle state is let go sooner.

    tcp_new          30   no handshake yet (SYN_SENT/SYN_RECV, or unreplied). conntrack: 120/60,
                          Suricata: 60. Short so SYN floods and scans do not pin memory; real
                          handshakes finish in well under a second, retransmits within ~30 s.
    tcp_established  3600 conntrack's 5 days is meant for a kernel table with a few hundred
                          bytes per entry; Suricata uses 600. An hour keeps idle SSH sessions
                          without keepalives, while dead peers are forgotten the same day.
    tcp_half_closed  120  one FIN seen (conntrack FIN_WAIT 120, CLOSE_WAIT 60): the other side
                          may legitimately keep sending for a while after a shutdown(SHUT_WR).
    tcp_closing      30   FIN both ways (conntrack LAST_ACK 30, TIME_WAIT 120): only the last
                          ACK and retransmitted FINs are still to come.
    tcp_closed       10   RST seen (conntrack CLOSE 10): absorbs stray segments in flight.
    udp_new          30   unreplied UDP (conntrack 30, Suricata 30).
    udp_replied      180  UDP with a reply (conntrack "stream" 120-180): DNS, QUIC, VPNs.
    icmp             30   conntrack 30; pings are answered within seconds.
    other            60   GRE, ESP, SCTP and the rest (conntrack generic: 600; shorter here
                          because we track no state for them at all).
    """

    tcp_new: float = 30.0
    tcp_established: float = 3600.0
    tcp_half_closed: float = 120.0
    tcp_closing: float = 30.0
    tcp_closed: float = 10.0
    udp_new: float = 30.0
    udp_replied: float = 180.0
    icmp: float = 30.0
    other: float = 60.0

    def tcp_by_state(self) -> tuple[float, ...]:
        """Timeouts indexed by TCP_* state."""
        return (
            self.tcp_new,  # NONE
            self.tcp_new,  # SYN_SENT
            self.tcp_new,  # SYN_RECV
            self.tcp_established,
            self.tcp_half_closed,
            self.tcp_closing,
            self.tcp_closed,
        )


@dataclass(frozen=True, slots=True)
class FlowStats:
    """Counters since the table was made. created == expired + evicted + reused + drained +
    discarded + active always holds."""

    created: int
    expired: int
    evicted: int
    reused: int
    drained: int
    active: int
    discarded: int = 0


class Flow:
    """One bidirectional flow. The initiator's view (family, proto, src, sport, dst, dport) is
    that of the first packet seen. `replied` is conntrack's "seen reply": what policy calls
    state established. cache_fwd, cache_rev, nat, user, mac, iif, oif and the app_* and
    dst_name fields belong to the engine; the table never reads them. end_reason is set when
    the flow leaves the table (END_*)."""

    __slots__ = (
        "_slot",
        "app",
        "app_proto",
        "app_state",
        "back_since",
        "bytes_fwd",
        "bytes_rev",
        "cache_fwd",
        "cache_rev",
        "dport",
        "dst",
        "dst_name",
        "end_reason",
        "family",
        "first_seen",
        "flags_fwd",
        "flags_rev",
        "flow_id",
        "icmp",
        "iif",
        "last_seen",
        "mac",
        "nat",
        "offloaded",
        "oif",
        "payload_fwd",
        "payload_rev",
        "pkts_fwd",
        "pkts_rev",
        "proto",
        "replied",
        "sport",
        "src",
        "tcp_state",
        "ttl",
        "user",
    )

    def __init__(self, pkt: Packet, flow_id: int, now: float) -> None:
        self.family = pkt.family
        self.proto = pkt.proto
        self.src = pkt.src
        self.sport = pkt.sport
        self.dst = pkt.dst
        self.dport = pkt.dport
        self.flow_id = flow_id
        self.first_seen = now
        self.last_seen = now
        self.pkts_fwd = 1
        self.pkts_rev = 0
        self.bytes_fwd = pkt.length
        self.bytes_rev = 0
        # Transport payload bytes seen each way (retransmissions too): how far into each
        # direction a flow is, for the policy's inspection depth (`payload contains`).
        self.payload_fwd = pkt.length - pkt.payload_offset
        self.payload_rev = 0
        self.flags_fwd = pkt.flags
        self.flags_rev = 0
        self.replied = False
        self.tcp_state = TCP_NONE
        # The engine's cached candidate rules per direction: (policy, iif, oif, rules,
        # offload_safe). Typed where the engine reads them: core cannot name the policy's types.
        self.cache_fwd: Any = None
        self.cache_rev: Any = None
        self.nat: tuple[bytes, int, bytes, int] | None = None  # (orig dst, dport, new dst, dport)
        self.offloaded = False  # its later packets go on in the kernel (the engine sees none)
        self.back_since = _NEVER  # an offloaded flow back under a new policy: since when
        self.user = None
        self.end_reason: str | None = None
        # What the first packet says of its sender, for the evidence behind a block
        # (ips/engine/evidence.py): its TTL (hop limit), and the sender's MAC address when the
        # adapter knows it (the engine sets it from Meta.mac).
        self.ttl = pkt.ttl
        self.mac: bytes | None = None
        # ICMP and ICMPv6: the first packet's type << 8 | code (-1 otherwise). A flow's
        # Community ID hashes them in place of ports, as Suricata hashes its flow's first.
        self.icmp = pkt.icmp_type << 8 | pkt.icmp_code if pkt.icmp_type >= 0 else -1
        # The application protocol found in the payload by the engine (ips/app/detect.py's
        # words: tls, http, dns, ssh, quic, or unknown when detection gave up); None while
        # not known yet, "" for protocols that carry none (not TCP or UDP).
        self.app_proto: str | None = None
        # What the application layer learned (ips/core/app_fields.py), None until the
        # inspector (ips/app/inspect.py) starts on the flow; app_state is the inspector's own
        # per-flow state (reassembly, partial parses): APP_NOT_STARTED until the inspector has
        # seen the flow, None once it has nothing left to read, so a flow past its decision
        # pays one attribute check.
        self.app: AppFields | None = None
        self.app_state: Any = APP_NOT_STARTED
        # The name passive DNS gave the responder's address when the flow began (or None).
        self.dst_name: str | None = None
        # The interfaces the flow's first decided packet came in on and would go out on
        # (inline: NFQUEUE's names; tap: the interface read), set by the engine; None when
        # not known (no packet of it reached the rules, or the adapter gives none).
        self.iif: str | None = None
        self.oif: str | None = None
        self._slot = _GONE

    @property
    def key(self) -> tuple[int, bytes, int, bytes, int]:
        """The initiator-direction key (proto, src, sport, dst, dport)."""
        return (self.proto, self.src, self.sport, self.dst, self.dport)

    @property
    def tcp_state_name(self) -> str:
        return TCP_STATE_NAMES[self.tcp_state]

    def __repr__(self) -> str:
        from ips.core.addr import format_addr

        return (
            f"Flow(#{self.flow_id} v{self.family} proto={self.proto} "
            f"{format_addr(self.src)}:{self.sport} > {format_addr(self.dst)}:{self.dport} "
            f"pkts={self.pkts_fwd}/{self.pkts_rev} replied={self.replied} "
            f"tcp={TCP_STATE_NAMES[self.tcp_state]})"
        )


class FlowTable:
    """Flows by 5-tuple, bounded to `max_flows`, with incremental expiry.

    A flow costs ~700 bytes (Flow object, two key tuples, dict and timer entries, its address
    bytes and timestamps; measured with tracemalloc), so the default 262,144 flows is ~180 MB.

    id_seed mixes into flow ids so they differ between runs (the caller picks it, e.g. from
    the start time); with the default 0 ids are 1, 2, 3, ... Ids are unique within a table.
    """

    def __init__(
        self,
        max_flows: int = 262_144,
        timeouts: FlowTimeouts | None = None,
        id_seed: int = 0,
    ) -> None:
        if max_flows < 1:
            raise ValueError("max_flows must be at least 1")
        self.max_flows = max_flows
        self.timeouts = timeouts or FlowTimeouts()
        self._tcp_timeouts = self.timeouts.tcp_by_state()
        self._id_seed = id_seed & _ID_MASK
        self._id_mult = _ID_MULT if id_seed else 1
        self._next_id = 0
        self._flows: dict[tuple[int, bytes, int, bytes, int], Flow] = {}
        self._wheel: dict[int, set[Flow]] = {}
        self._slots: list[int] = []  # heap of the keys of _wheel (lazily pruned)
        # Eviction candidates in creation order; entries that were replied or removed since
        # are skipped when met, and the deque is compacted when it grows past twice the table.
        self._unreplied: deque[Flow] = deque()
        self._ended: list[Flow] = []
        self._opened: Flow | None = None  # created by `open`, not filed yet (see there)
        self._active = 0
        self._created = 0
        self._expired = 0
        self._evicted = 0
        self._reused = 0
        self._drained = 0
        self._discarded = 0
        # Sources that completed a TCP handshake (their final ACK followed our view of the
        # responder's SYN+ACK, which a forger elsewhere never sees): address -> (the TTL of
        # their SYN, the MAC it came from or None). The evidence behind blocks
        # (ips/engine/evidence.py) reads it; most recent last, the oldest forgotten first
        # beyond HANDSHAKE_MEMORY. An OrderedDict, whose oldest key is found at once: a dict
        # finds its first key by skipping the holes its deletions left at its front, until
        # its next resize, and with the memory full (a site whose clients exceed it) every
        # new source's handshake evicted one that way: 2-9 µs a handshake, growing.
        self.handshakes: OrderedDict[bytes, tuple[int, bytes | None]] = OrderedDict()

    # -- per packet ---------------------------------------------------------------------

    def track(self, pkt: Packet, now: float) -> tuple[Flow, bool]:
        """Find or create the flow of `pkt`, count the packet, and return (flow, forward),
        forward being True when the packet goes initiator -> responder."""
        found = self.open(pkt, now)
        if self._opened is not None:
            self.settle()
        return found

    def open(self, pkt: Packet, now: float) -> tuple[Flow, bool]:
        """`track`, except that a flow it creates is not filed yet: `settle` files it, once
        the packet is decided (the engine). A first packet refused meanwhile is `discard`ed
        before it was ever filed, which spares the table's two keys, its timer entry and
        their removal — the work of most packets of a scan or of a capture from elsewhere.
        Nothing reads the table between the two calls, and `settle` files the flow exactly
        as `track` would have (its deadline, its place among the unreplied), and `discard`
        leaves the table exactly as filing then removing it would have (see there)."""
        if self._opened is not None:
            self.settle()  # a caller that did not settle the last packet's flow
        src = pkt.src
        sport = pkt.sport
        flow = self._flows.get((pkt.proto, src, sport, pkt.dst, pkt.dport))
        if flow is None:
            return self._open(pkt, now), True
        flags = pkt.flags
        # SYN without ACK on a closing/closed TCP flow (tcp_state is NONE for other protocols),
        # or on an offloaded one: the engine saw none of its end, but the kernel sends it
        # to us, so conntrack took the SYN for a new connection (the client reused the port).
        if flags & (TCP_SYN | TCP_ACK) == TCP_SYN and (
            flow.tcp_state >= TCP_CLOSING or flow.offloaded
        ):
            self._reuse(flow)
            return self._open(pkt, now), True
        if sport == flow.sport and src == flow.src:
            fwd = True
            flow.pkts_fwd += 1
            flow.bytes_fwd += pkt.length
            flow.payload_fwd += pkt.length - pkt.payload_offset
            flow.flags_fwd |= flags
        else:
            fwd = False
            flow.pkts_rev += 1
            flow.bytes_rev += pkt.length
            flow.payload_rev += pkt.length - pkt.payload_offset
            flow.flags_rev |= flags
            flow.replied = True
        if now > flow.last_seen:  # a clock that steps back must not make a flow younger
            flow.last_seen = now
        # Established TCP without SYN/FIN/RST is nearly every TCP packet: skip the machine.
        if flow.proto == PROTO_TCP and (flags & _STATE_FLAGS or flow.tcp_state != TCP_ESTABLISHED):
            self._tcp_update(flow, fwd, flags)
        return flow, fwd

    def peek(self, pkt: Packet) -> tuple[Flow, bool] | None:
        """The flow of `pkt` and its direction, without creating or counting anything."""
        flow = self._flows.get((pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport))
        if flow is None:
            return None
        return flow, (pkt.sport == flow.sport and pkt.src == flow.src)

    def _open(self, pkt: Packet, now: float) -> Flow:
        """A new flow, counted (its id, `created`, `active`) but not filed: `settle` files
        it, or `discard` forgets it."""
        if self._active >= self.max_flows:
            self._make_room(now)
        self._next_id += 1
        flow = Flow(pkt, (self._next_id * self._id_mult + self._id_seed) & _ID_MASK, now)
        self._active += 1
        self._created += 1
        if pkt.proto == PROTO_TCP:
            self._tcp_update(flow, True, pkt.flags)  # (not filed: nothing to move)
        self._opened = flow
        return flow

    def settle(self) -> None:
        """File the flow the last `open` created, unless it was discarded: its two keys, its
        timer slot (the deadline it had when created: nothing but a packet changes its state
        or its replied flag), its place at the end of the unreplied."""
        flow = self._opened
        if flow is None:
            return
        self._opened = None
        proto, src, sport, dst, dport = flow.proto, flow.src, flow.sport, flow.dst, flow.dport
        flows = self._flows
        flows[(proto, src, sport, dst, dport)] = flow
        flows[(proto, dst, dport, src, sport)] = flow
        self._file(flow, int((flow.first_seen + self._timeout(flow)) // _SLOT) + 1)
        unreplied = self._unreplied
        unreplied.append(flow)
        if len(unreplied) > 2 * self._active + 1024:
            self._unreplied = deque(f for f in unreplied if f._slot != _GONE and not f.replied)

    def _discard_opened(self, flow: Flow) -> None:
        """Discard the flow `open` created and nobody filed: the table left as filing it
        and then removing it would have left it. That is: the timer slot it would have had
        exists (possibly empty: an eviction's scan counts such slots), and the unreplied
        queue holds, in its place, an entry that is gone (an eviction's scan counts those
        too; a shared stand-in, so that the refused flow itself is not kept)."""
        self._opened = None
        timeout = (
            self._tcp_timeouts[flow.tcp_state] if flow.proto == PROTO_TCP else self._timeout(flow)
        )
        slot = int((flow.first_seen + timeout) // _SLOT) + 1
        wheel = self._wheel
        if slot not in wheel:
            wheel[slot] = set()
            heapq.heappush(self._slots, slot)
        unreplied = self._unreplied
        if len(unreplied) + 1 > 2 * self._active + 1024:
            # filing it would have compacted the queue, the flow itself kept at its end
            unreplied = self._unreplied = deque(
                f for f in unreplied if f._slot != _GONE and not f.replied
            )
        unreplied.append(_GONE_STAND_IN)
        flow._slot = _GONE
        self._active -= 1
        flow.end_reason = END_DISCARDED
        self._discarded += 1

    # -- TCP ----------------------------------------------------------------------------

    def _tcp_update(self, flow: Flow, fwd: bool, flags: int) -> None:
        # No sequence-number checks: we see flags only. A spoofed RST can therefore move a
        # flow to CLOSED (shorter timeout, and a later SYN starts a new flow); it cannot make
        # an unreplied flow "replied".
        old = state = flow.tcp_state
        if flags & TCP_RST:
            state = TCP_CLOSED
        elif state < TCP_CLOSING:
            if state == TCP_NONE:
                if fwd and flags & (TCP_SYN | TCP_ACK) == TCP_SYN and flow.pkts_rev == 0:
                    state = TCP_SYN_SENT
                elif not fwd:
                    state = TCP_ESTABLISHED  # mid-stream pickup (conntrack's tcp_loose)
            elif state == TCP_SYN_SENT:
                if not fwd and flags & TCP_SYN:
                    state = TCP_SYN_RECV  # SYN+ACK, or a simultaneous open
            elif state == TCP_SYN_RECV and flags & (TCP_SYN | TCP_ACK) == TCP_ACK:
                # Normally the initiator's final ACK; the responder's data (ACK, no SYN) also
                # proves it, for when we see only part of the handshake.
                state = TCP_ESTABLISHED
                if fwd:
                    self._handshake(flow)
            if flags & TCP_FIN and state >= TCP_ESTABLISHED:
                # A FIN before the handshake completes (SYN+FIN scans) does not count.
                both = flow.flags_fwd & flow.flags_rev & TCP_FIN  # already include `flags`
                state = TCP_CLOSING if both else TCP_FIN_WAIT
        if state != old:
            flow.tcp_state = state
            if flow._slot != _GONE:
                self._refile_if_sooner(flow)

    def _handshake(self, flow: Flow) -> None:
        """The initiator completed a handshake: its address is its own (once per connection)."""
        handshakes = self.handshakes
        src = flow.src
        if handshakes.pop(src, None) is None and len(handshakes) >= HANDSHAKE_MEMORY:
            handshakes.popitem(last=False)
        handshakes[src] = (flow.ttl, flow.mac)

    def _reuse(self, old: Flow) -> None:
        # A fresh SYN on the tuple of a closed or closing connection is a new connection (port
        # reuse, as conntrack does in TIME_WAIT). Starting a new flow matters for policy: the
        # old flow is "replied", and the new SYN may even come from the old responder.
        self._remove(old)
        old.end_reason = END_REUSED
        self._reused += 1
        self._ended.append(old)

    # -- timers -------------------------------------------------------------------------

    def _timeout(self, flow: Flow) -> float:
        proto = flow.proto
        t = self.timeouts
        if proto == PROTO_TCP:
            return self._tcp_timeouts[flow.tcp_state]
        if proto in (PROTO_UDP, PROTO_UDPLITE):
            return t.udp_replied if flow.replied else t.udp_new
        if proto in (PROTO_ICMP, PROTO_ICMPV6):
            return t.icmp
        return t.other

    def _file(self, flow: Flow, slot: int) -> None:
        bucket = self._wheel.get(slot)
        if bucket is None:
            bucket = self._wheel[slot] = set()
            heapq.heappush(self._slots, slot)
        bucket.add(flow)
        flow._slot = slot

    def _unfile(self, flow: Flow) -> None:
        bucket = self._wheel.get(flow._slot)
        if bucket is not None:
            bucket.discard(flow)
        flow._slot = _GONE

    def _refile_if_sooner(self, flow: Flow) -> None:
        slot = int((flow.last_seen + self._timeout(flow)) // _SLOT) + 1
        if slot < flow._slot:
            self._unfile(flow)
            self._file(flow, slot)

    def _remove(self, flow: Flow) -> None:
        self._unfile(flow)
        flows = self._flows
        flows.pop((flow.proto, flow.src, flow.sport, flow.dst, flow.dport), None)
        flows.pop((flow.proto, flow.dst, flow.dport, flow.src, flow.sport), None)
        self._active -= 1

    def discard(self, flow: Flow) -> None:
        """Forget a flow without an end event: its first packet was refused by the policy, so
        it never existed on the wire (conntrack likewise drops an unconfirmed entry when its
        packet is dropped). A reply seen later (in a capture) starts a flow of its own."""
        if flow is self._opened:
            self._discard_opened(flow)
            return
        if flow._slot == _GONE or self._flows.get(flow.key) is not flow:
            return
        self._remove(flow)
        flow.end_reason = END_DISCARDED
        self._discarded += 1

    def due(self, now: float) -> bool:
        """Whether pop_evicted() or expire(now) has anything to give: flows ended by track(),
        or a wheel slot due (expire's test of the first slot). The engine's tick asks first."""
        if self._ended:
            return True
        slots = self._slots
        return bool(slots) and slots[0] <= int(now // _SLOT)

    def expire(self, now: float, budget: int = 10_000) -> list[Flow]:
        """Remove and return flows idle past their timeout (end_reason END_TIMEOUT).

        Looks at no more than `budget` flows, so a call costs at most a few ms; what is left
        is picked up by the next call. Flows are at most one wheel slot (1 s) late."""
        out: list[Flow] = []
        self._expire_into(now, budget, out)
        return out

    def _expire_into(self, now: float, budget: int, out: list[Flow]) -> None:
        due = int(now // _SLOT)
        slots = self._slots
        wheel = self._wheel
        while slots and slots[0] <= due and budget > 0:
            slot = slots[0]
            bucket = wheel.get(slot)
            if bucket is not None:
                while bucket and budget > 0:
                    flow = bucket.pop()
                    budget -= 1
                    deadline = flow.last_seen + self._timeout(flow)
                    if deadline <= now:
                        flow._slot = _GONE
                        self._remove(flow)
                        flow.end_reason = END_TIMEOUT
                        self._expired += 1
                        out.append(flow)
                    else:
                        # Saw traffic since filing. The new slot is > due >= slot.
                        self._file(flow, int(deadline // _SLOT) + 1)
                if bucket:
                    return
                del wheel[slot]
            heapq.heappop(slots)

    # -- capacity -----------------------------------------------------------------------

    def _make_room(self, now: float) -> None:
        self._expire_into(now, _RECLAIM_BUDGET, self._ended)
        if self._active < self.max_flows:
            return
        victim = self._oldest_unreplied() or self._nearest_deadline()
        self._remove(victim)
        victim.end_reason = END_EVICTED
        self._evicted += 1
        self._ended.append(victim)

    def _oldest_unreplied(self) -> Flow | None:
        unreplied = self._unreplied
        for _ in range(_EVICT_SCAN):
            if not unreplied:
                return None
            flow = unreplied.popleft()
            if flow._slot != _GONE and not flow.replied:
                return flow
        return None

    def _nearest_deadline(self) -> Flow:
        # All flows were replied: take the one closest to its timeout, i.e. the most idle
        # relative to what its state allows. Flows met in the earliest bucket that saw traffic
        # since filing are re-filed (as expire() would), which also keeps this amortised.
        slots = self._slots
        wheel = self._wheel
        best: Flow | None = None
        best_deadline = 0.0
        for _ in range(_EVICT_SCAN):
            if not slots:
                break
            bucket = wheel.get(slots[0])
            if not bucket:
                if bucket is not None:
                    del wheel[slots[0]]
                heapq.heappop(slots)
                continue
            flow = bucket.pop()
            flow._slot = _GONE
            deadline = flow.last_seen + self._timeout(flow)
            slot = int(deadline // _SLOT) + 1
            if best is None or deadline < best_deadline:
                if best is not None:
                    self._file(best, int(best_deadline // _SLOT) + 1)
                best, best_deadline = flow, deadline
                if slot <= slots[0]:
                    break  # filed where it belongs: nothing later can be sooner
            else:
                self._file(flow, slot)
        assert best is not None  # the table is full, so the wheel is not empty
        return best

    def pop_evicted(self) -> list[Flow]:
        """Flows removed during track(): reclaimed because expired (END_TIMEOUT), evicted for
        room (END_EVICTED), or ended by reuse of their tuple (END_REUSED). The engine turns
        them into flow-end events, like those from expire()."""
        ended = self._ended
        self._ended = []
        return ended

    def drain(self) -> list[Flow]:
        """Remove and return every flow (end_reason END_SHUTDOWN), oldest first; for the end
        of a pcap replay or a shutdown. Flows pending in pop_evicted() stay there."""
        out: list[Flow] = []
        for flow in self._flows.values():
            if flow._slot != _GONE:
                flow._slot = _GONE
                flow.end_reason = END_SHUTDOWN
                out.append(flow)
        out.sort(key=_first_seen)
        self._flows.clear()
        self._wheel.clear()
        self._slots.clear()
        self._unreplied.clear()
        self._drained += len(out)
        self._active = 0
        return out

    expire_all = drain

    # -- inspection ---------------------------------------------------------------------

    def __len__(self) -> int:
        return self._active

    def flows(self) -> list[Flow]:
        """A snapshot of the flows in the table (each once)."""
        return list({id(f): f for f in self._flows.values()}.values())

    @property
    def stats(self) -> FlowStats:
        return FlowStats(
            created=self._created,
            expired=self._expired,
            evicted=self._evicted,
            reused=self._reused,
            drained=self._drained,
            active=self._active,
            discarded=self._discarded,
        )


# What FlowTable's unreplied queue holds in place of a flow discarded before it was filed:
# an entry whose flow is gone, as a filed flow is once removed (only _slot and replied are
# read there).
_GONE_STAND_IN = Flow.__new__(Flow)
_GONE_STAND_IN._slot = _GONE
_GONE_STAND_IN.replied = False


def _first_seen(flow: Flow) -> float:
    return flow.first_seen
