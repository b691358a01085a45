"""Scan detectors: `portscan` (vertical: many ports of one host) and `sweep` (horizontal: many
hosts), after Zeek's scan.zeek and Snort's port_scan: what counts is probes that FAILED.

A probe is the first packet of a flow: a TCP SYN (SYN and connect scans), a bare ACK or
FIN+ACK without payload (nmap -sA / -sM, or a connection picked up mid-stream), a UDP
datagram, an SCTP packet, and for the sweep an ICMP echo, timestamp or address-mask request.
Its outcome is known at once when it is a failure, else read from its flow GRACE seconds later:

  outcome                                     portscan weight   sweep weight
  reset (RST) by the target, or by our own    1                 1
    `reject`; ICMP destination unreachable
  no answer within GRACE                      1 (SYN, UDP,      1 (SYN, ICMP, SCTP)
                                                SCTP)
  answered, TCP handshake only (a SYN or      1/4               0
    connect scan of an open port)
  answered otherwise (data, a UDP reply: a    0                 0
    service being used)
  an ICMP echo, timestamp or mask request     -                 1, as it is sent,
                                                                answered or not

Not counted when unanswered: a bare ACK (an ACK scan that meets only silence looks exactly
like a connection picked up mid-stream: after a restart, or in a capture that starts late)
and, for the sweep, UDP (QUIC, peer-to-peer and VPN keepalives often go unanswered); both
count when reset or refused. UDP to 33434-33534 (traceroute) is no probe. Multicast and
broadcast destinations are not hosts (discovery protocols).

A source's weights are summed over distinct targets — ports of one host for portscan (the
key is source + target host), hosts for sweep (the key is the source) — within a tumbling
window of `within` seconds that starts at its first probe (as Zeek's SumStats epochs and
Snort's port_scan windows); reaching `ports`/`hosts` is a detection: one alert per window,
and the response. Why these weights: a browser or a DNS resolver talks to hundreds of hosts
and ports a minute and is answered; a scanner mostly is not (closed, filtered, absent). Pings
are the exception: no application pings 25 hosts a minute, and a ping sweep of live hosts is
answered (monitoring hosts that do ping that much belong in `ignore` or `trusted`).

Answers are matched to probes by an index of the 5-tuple an answer would have, so they are
recognised also when the probe's flow is gone — a first packet the policy refused leaves no
flow; in a capture or on a tap its answer may still be on the wire. A packet that answers a
probe is never a probe itself. An ICMP error counts only for a probe we saw, still waiting
for its answer, and only on its way back to the prober: a forged error cannot make an
innocent host look like a scanner without knowing its connection's ports.

Memory: a pending probe holds its flow (about 1 KB with it) until it is weighed, GRACE
seconds: a flood of forged sources makes one each. At most `set detect-probes` are held per
detector, and one key probes of at most PENDING_PER_THRESHOLD × its threshold targets (and,
past that many probes, none more of a target already waiting: `probes_skipped`); with the
queue full, its oldest probe goes — weighed early when its key has others waiting and it
waited EARLY seconds (`probes_early`), else forgotten, never guessed (`probes_dropped`).
Windows: at most `detect-memory` keys, the oldest evicted first (`evicted`).

Known limits: scanners slower than `ports` per `within` are not seen (every window detector
shares this; `detect slowscan` keeps a long window over the same weights: slowscan.py); with
asymmetric routing (we see no answers) everything looks unanswered — put such sources in
`ignore`.
"""

from __future__ import annotations

import struct
from collections import OrderedDict, deque
from typing import Protocol, cast

from ips.core.addr import format_addr
from ips.core.events import DetectorEffect
from ips.core.flow import Flow
from ips.core.packet import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    PROTO_UDPLITE,
    TCP_RST,
    Packet,
)
from ips.detect.common import TARGETS_SHOWN, Detector, addr_list
from ips.policy.model import DetectSpec


class LongWindow(Protocol):
    """What a scan detector tells a long window (`detect slowscan`, slowscan.py) about its
    probes: every weight it gives, and every target the source went on to use. Declared here
    so that the scan detectors need not import the long window (which imports them)."""

    def credit(
        self,
        scan: ScanDetector,
        probe: Probe,
        weight: float,
        now: float,
        out: list[DetectorEffect],
    ) -> None: ...

    def target_used(self, scan: ScanDetector, probe: Probe) -> None: ...


GRACE = 2.0  # seconds a probe waits for its answer; TCP's first SYN retransmit is at 1 s
# A key (a source, or a source and a host) holds at most this many times its threshold of
# probes waiting for their answer: enough for every one of them to weigh ¼ (an open port) and
# still reach the threshold, so a scan is judged on them; its further probes wait for room.
PENDING_PER_THRESHOLD = 4
# With the queue full, the oldest probe of a key with others waiting is weighed after this
# many seconds rather than forgotten: TCP's first SYN retransmit is at 1 s, a live target has
# answered by then.
EARLY = 1.0
DEFAULT_PROBES = 16_384  # `set detect-probes`: probes held per detector (ips/policy/model.py)
RESOLVE_PER_PACKET = 16  # overdue probes weighed per observed probe (the rest: tick)
RESOLVE_PER_TICK = 200_000
W_FAILED = 1.0
W_HANDSHAKE = 0.25  # an open TCP port that only completed the handshake
TRACEROUTE_PORTS = range(33434, 33535)

# What a probe was (its first packet).
SYN, ACK, DATAGRAM, ECHO = 1, 2, 3, 4  # DATAGRAM: UDP, SCTP; ECHO: ICMP echo/timestamp/mask
# What became of it, when an answer was matched through the index.
UNKNOWN, ANSWERED, FAILED = 0, 1, 2

Tuple5 = tuple[int, bytes, int, bytes, int]

_PORTS = struct.Struct("!HH")
_U16 = struct.Struct("!H")
_EPS = 1e-9


# A window's key: a source (sweep) or a (source, target host) pair (portscan); and the targets
# it weighs: hosts (sweep) or ports (portscan).
ScanKey = bytes | tuple[bytes, bytes]
Target = bytes | int


class ScanEntry:
    """One key's window (a source, or a source and a target host): weight per target, and
    how many of its probes wait for their answer, in all and per target."""

    __slots__ = ("fired", "pending", "score", "start", "waiting", "weights")

    def __init__(self, start: float) -> None:
        self.start = start
        self.weights: dict[Target, float] = {}
        self.score = 0.0
        self.fired = False
        self.pending = 0
        self.waiting: dict[Target, int] = {}  # probes waiting, per target


class Probe:
    """A probe waiting for its answer."""

    __slots__ = (
        "answer", "copies", "due", "entry", "flow", "key", "kind", "outcome", "size", "target",
    )  # fmt: skip

    def __init__(
        self,
        due: float,
        entry: ScanEntry,
        key: ScanKey,
        target: Target,
        flow: Flow,
        kind: int,
        answer: Tuple5,
        size: int = 0,
    ) -> None:
        self.due = due
        self.entry = entry
        self.key = key
        self.target = target
        self.flow = flow
        self.kind = kind
        self.answer = answer  # the 5-tuple of an answer, as it would be on the wire
        self.outcome = UNKNOWN
        self.size = size  # the probe's length (its retransmissions have the same)
        self.copies = 0  # first packets of later flows with its 5-tuple (ackscan.py)


def answer_tuple(pkt: Packet) -> Tuple5:
    """The 5-tuple an answer to `pkt` has."""
    return (pkt.proto, pkt.dst, pkt.dport, pkt.src, pkt.sport)


class ScanDetector(Detector):
    """What portscan and sweep share: windows per key, pending probes, the weighing."""

    threshold_param = ""

    def __init__(self, spec: DetectSpec, memory: int) -> None:
        super().__init__(spec, memory)
        self.threshold = spec.number(self.threshold_param)
        self.within = spec.number("within")
        # In order of window start, the oldest evicted first: an OrderedDict, whose first key
        # is found at once. (A dict finds its first key by skipping the holes its deletions
        # left at its front, until it is next resized: with the table full — a flood of
        # forged sources — each eviction skipped tens of thousands, 3-10 µs.)
        self.entries: OrderedDict[ScanKey, ScanEntry] = OrderedDict()
        self.pending: deque[Probe] = deque()  # in order of due
        self.index: dict[Tuple5, Probe] = {}  # answer 5-tuple -> pending probe
        self.slow: LongWindow | None = None  # `detect slowscan`, told every weight (Detectors)
        # Pending probes hold their flow until weighed: at most `probes` of them (Detectors
        # sets it from `set detect-probes`), at most per_key for one key.
        self.probes = DEFAULT_PROBES
        self.per_key = max(16, int(PENDING_PER_THRESHOLD * self.threshold))
        self.probes_dropped = 0  # the oldest pending probe forgotten to make room
        self.probes_early = 0  # the oldest pending probe weighed before GRACE to make room
        self.probes_skipped = 0  # a probe not held: its key had per_key waiting already
        # What a quiet resolve reported after all (resolve_quietly: never, while its weighing
        # is _credit's), held for the next tick rather than lost.
        self.unreported: list[DetectorEffect] = []

    def tracked(self) -> int:
        return len(self.entries)

    def stats(self) -> dict[str, int]:
        out = super().stats()
        out["pending"] = len(self.pending)
        out["probes"] = self.probes
        out["probes_dropped"] = self.probes_dropped
        out["probes_early"] = self.probes_early
        out["probes_skipped"] = self.probes_skipped
        return out

    # ---- per packet --------------------------------------------------------------------------

    def _new_window(self, key: ScanKey, entry: ScanEntry | None, now: float) -> ScanEntry:
        """A key's window when it has none, or its window is over (`probe` looks first)."""
        entries = self.entries
        if entry is not None:
            # A new window. The old entry lives on in its pending probes (a late answer to a
            # probe of that window still counts there) but no longer here.
            del entries[key]
        elif len(entries) >= self.memory:
            entries.popitem(last=False)  # the oldest window goes first
            self.evicted += 1
        entry = entries[key] = ScanEntry(now)
        return entry

    ECHO_COUNTS = False  # an ICMP echo counts as it is sent (the sweep), not by its answer

    def probe(
        self,
        key: ScanKey,
        target: Target,
        flow: Flow,
        kind: int,
        now: float,
        out: list[DetectorEffect],
        answer: Tuple5,
        size: int,
    ) -> None:
        """A first packet that is a probe: weighed when its answer comes, or is overdue.
        `answer` is the 5-tuple its answer would have (answer_tuple), `size` its length.

        The caller (Detectors._probe) has looked `answer` up in the index already: a probe
        whose answer is awaited is a retransmission (the first one stands for it) and is not
        passed on. That look-up comes first, before anything is built for the probe, and so
        every pending probe is the index's entry of its answer (see `_leave`)."""
        entry = self.entries.get(key)
        if entry is None or not now - entry.start <= self.within:
            entry = self._new_window(key, entry, now)
        if entry.fired:
            return  # detected in this window already: nothing more to learn
        echo = kind == ECHO and self.ECHO_COUNTS
        waiting = entry.waiting
        per_key = self.per_key
        if not echo and (
            (entry.pending >= per_key and target in waiting) or len(waiting) >= per_key
        ):
            # Enough of this key's probes wait to judge it (see PENDING_PER_THRESHOLD): one
            # source cannot take the room of the others, and a scan is still judged. What
            # the cap counts is targets: a key's score is one weight per target, so probes
            # of a target already waiting add nothing once the key is at its cap, while a
            # new target does (40 SYNs to one host must not hide the sweep that follows).
            self.probes_skipped += 1
            return
        pending = self.pending
        if len(pending) >= self.probes:
            self._make_room(now, out)
        probe = Probe(now + GRACE, entry, key, target, flow, kind, answer, size)
        if echo:
            probe.outcome = FAILED  # counted now, whatever the answer (see Sweep)
            self._credit(probe, W_FAILED, now, out)
            if entry.fired:
                return
        entry.pending += 1
        waiting[target] = waiting.get(target, 0) + 1
        pending.append(probe)
        self.index[answer] = probe

    def answer(self, probe: Probe, failed: bool, now: float, out: list[DetectorEffect]) -> None:
        """A packet answers this pending probe (the index's entry of its 5-tuple). A failure
        counts at once; anything else is weighed when the probe is due."""
        if failed:
            if probe.outcome != FAILED:
                probe.outcome = FAILED
                self._credit(probe, W_FAILED, now, out)
        elif probe.outcome == UNKNOWN:
            probe.outcome = ANSWERED

    def _leave(self, probe: Probe) -> None:
        """A probe stops waiting (weighed, or its room taken): out of the index, and its
        key's counts go down. It is its answer's entry in the index: `probe` files a probe
        only for an answer not awaited yet, and its entry goes only here."""
        self.index.pop(probe.answer, None)
        entry = probe.entry
        entry.pending -= 1
        waiting = entry.waiting
        target = probe.target
        left = waiting.get(target, 0) - 1
        if left > 0:
            waiting[target] = left
        else:
            waiting.pop(target, None)

    def resolve(self, now: float, budget: int, out: list[DetectorEffect]) -> None:
        """Weigh the probes whose answer is due. (Their work written out in this loop was
        measured slower than these two calls, in CPython 3.11.)"""
        pending = self.pending
        while pending and budget > 0 and pending[0].due <= now:
            probe = pending.popleft()
            budget -= 1
            self._leave(probe)
            self._judge(probe, now, out)

    def resolve_quietly(self, now: float, budget: int) -> bool:
        """`resolve(now, budget, …)` when it would report nothing and leave no probe due:
        then done, and True. False, nothing changed, when more than `budget` probes are due
        (a second `resolve` would weigh more), or one of them would complete a scan, or a
        long window (`slow`) hears the weights. For the compiled path (ips/fast/
        _fastpath.pyx `_probe_plan`), which resolves a probe's due probes before filing it,
        as Detectors._probe does first; whoever changes `_judge` or `_credit` changes this."""
        if self.slow is not None:
            return False
        due: list[Probe] = []
        for probe in self.pending:
            if not probe.due <= now:
                break
            if len(due) == budget:
                return False
            due.append(probe)
        # `_credit`'s arithmetic on copies of what it changes: a window's score and weights
        scores: dict[int, float] = {}
        weights: dict[tuple[int, Target], float] = {}
        threshold = self.threshold - _EPS
        for probe in due:
            if probe.outcome == FAILED:
                continue
            weight = self.weigh(probe)
            entry = probe.entry
            if weight <= 0.0 or entry.fired:
                continue
            at = (id(entry), probe.target)
            old = weights.get(at)
            if old is None:
                old = entry.weights.get(probe.target, 0.0)
            if weight <= old:
                continue
            weights[at] = weight
            score = scores.get(id(entry), entry.score) + (weight - old)
            scores[id(entry)] = score
            if score >= threshold:
                return False  # a detection: its alert and response are Python's to make
        out: list[DetectorEffect] = []
        self.resolve(now, budget, out)
        if out:
            # Never, while the weighing above is _credit's. Should they ever disagree, what
            # was reported goes out at the next tick, and the error is counted where the
            # compiled path counts its failures (Engine.fast_failures; the packet is then
            # Python's, whose `_probe` finds no probe due).
            self.unreported += out
            raise RuntimeError("a quiet resolve reported something: sent at the next tick")
        return True

    def _judge(self, probe: Probe, now: float, out: list[DetectorEffect]) -> None:
        if probe.outcome == FAILED:
            return  # counted when the failure came
        weight = self.weigh(probe)
        if weight > 0.0:
            self._credit(probe, weight, now, out)
        elif self.slow is not None and (probe.outcome == ANSWERED or probe.flow.replied):
            self.slow.target_used(self, probe)  # a target in use is no failure over hours

    def _make_room(self, now: float, out: list[DetectorEffect]) -> None:
        """The queue of pending probes is full: its oldest goes. When its key has other
        probes waiting (a scanner's look: a forged source sends one) and it has waited
        EARLY seconds, it is weighed now (a live target has answered a SYN by then);
        else it is forgotten, not guessed."""
        old = self.pending.popleft()
        entry = old.entry
        self._leave(old)
        if entry.pending > 0 and now - (old.due - GRACE) >= EARLY:
            self.probes_early += 1
            self._judge(old, now, out)
        else:
            self.probes_dropped += 1

    def _credit(self, probe: Probe, weight: float, now: float, out: list[DetectorEffect]) -> None:
        entry = probe.entry
        weights = entry.weights
        old = weights.get(probe.target, 0.0)
        if weight <= old or entry.fired:
            return
        weights[probe.target] = weight
        entry.score += weight - old
        if entry.score >= self.threshold - _EPS:
            entry.fired = True
            self.fire(entry, probe, now, out)
        if self.slow is not None:
            self.slow.credit(self, probe, weight, now, out)  # its long window (slowscan.py)

    def due(self, now: float) -> bool:
        """A probe due (resolve's test of the first), or a window over."""
        pending = self.pending
        if pending and pending[0].due <= now:
            return True
        return bool(self.unreported) or self.window_over(self.entries, now)

    def tick(self, now: float, out: list[DetectorEffect]) -> None:
        if self.unreported:
            out += self.unreported
            self.unreported.clear()
        self.resolve(now, RESOLVE_PER_TICK, out)
        # (pending probes keep what they need of an entry whose window is over)
        self.drop_finished_windows(self.entries, now)

    # ---- per detector ------------------------------------------------------------------------

    def weigh(self, probe: Probe) -> float:
        raise NotImplementedError

    def fire(self, entry: ScanEntry, probe: Probe, now: float, out: list[DetectorEffect]) -> None:
        raise NotImplementedError

    def _details(self, entry: ScanEntry, source: bytes) -> dict[str, object]:
        return {
            "source": format_addr(source),
            "count": sum(1 for w in entry.weights.values() if w > 0.0),
            "score": round(entry.score, 2),
            "threshold": int(self.threshold),
            "window": self.within,
            "failed": sum(1 for w in entry.weights.values() if w >= W_FAILED),
        }

    def _emit(
        self,
        probe: Probe,
        now: float,
        out: list[DetectorEffect],
        dst: bytes,
        extra: dict[str, object],
    ) -> None:
        flow = probe.flow
        source = flow.src
        self.emit(
            out,
            now,
            flow_id=flow.flow_id,
            proto=flow.proto,
            src=source,
            sport=flow.sport,
            dst=dst,
            dport=flow.dport,
            sid=1,
            signature=self.SIGNATURE,
            extra=extra,
            offender=source,
            reason=self.reason(extra),
            flow=flow,
        )

    SIGNATURE = ""

    def reason(self, extra: dict[str, object]) -> str:
        raise NotImplementedError


class PortScan(ScanDetector):
    """Distinct ports of one host probed by one source."""

    name = "portscan"
    threshold_param = "ports"
    SIGNATURE = "ipsctl portscan: many ports of one host probed"

    def weigh(self, probe: Probe) -> float:
        kind = probe.kind
        if probe.outcome == ANSWERED:  # answered, its flow gone: we cannot see more of it
            return W_HANDSHAKE if kind == SYN else 0.0
        flow = probe.flow
        if flow.proto == PROTO_TCP:
            if flow.flags_rev & TCP_RST:
                return W_FAILED
            if flow.offloaded:
                return 0.0  # it carried data (offload waits for that): a real connection,
                # whose later packets from the target the engine no longer sees
            if flow.replied:
                # SYN, SYN+ACK, and nothing more from the target: an open port that was only
                # knocked on (a SYN or connect scan). More from the target: a real connection.
                return W_HANDSHAKE if kind == SYN and flow.pkts_rev <= 1 else 0.0
            return W_FAILED if kind == SYN else 0.0
        return 0.0 if flow.replied else W_FAILED

    def fire(self, entry: ScanEntry, probe: Probe, now: float, out: list[DetectorEffect]) -> None:
        _, target = cast(tuple[bytes, bytes], probe.key)  # portscan's key: a pair
        ports = sorted(t for t, w in entry.weights.items() if w > 0.0)
        extra = self._details(entry, probe.flow.src)
        extra["target"] = format_addr(target)
        extra["targets"] = ports[:TARGETS_SHOWN]
        self._emit(probe, now, out, target, extra)

    def reason(self, extra: dict[str, object]) -> str:
        return (
            f"portscan: {extra['count']} ports of {extra['target']} probed "
            f"within {extra['window']:g}s"
        )


class Sweep(ScanDetector):
    """Distinct hosts probed by one source."""

    name = "sweep"
    threshold_param = "hosts"
    SIGNATURE = "ipsctl sweep: many hosts probed"
    # An echo request asks nothing but "are you there?": no application pings 25 hosts a
    # minute, a ping sweep does (nmap -sn), and most of its echoes are answered (live hosts).
    ECHO_COUNTS = True

    def weigh(self, probe: Probe) -> float:
        if probe.outcome == ANSWERED:
            return 0.0
        flow = probe.flow
        if flow.proto == PROTO_TCP:
            if flow.flags_rev & TCP_RST:
                return W_FAILED
            return 0.0 if flow.replied or probe.kind != SYN else W_FAILED
        if flow.proto in (PROTO_UDP, PROTO_UDPLITE):
            return 0.0  # only a reset or refusal counts (see the module's notes)
        return 0.0 if flow.replied else W_FAILED

    def fire(self, entry: ScanEntry, probe: Probe, now: float, out: list[DetectorEffect]) -> None:
        hosts = [t for t, w in entry.weights.items() if w > 0.0]
        extra = self._details(entry, probe.flow.src)
        extra["targets"] = addr_list(hosts)  # type: ignore[arg-type]
        self._emit(probe, now, out, probe.flow.dst, extra)

    def reason(self, extra: dict[str, object]) -> str:
        return f"sweep: {extra['count']} hosts probed within {extra['window']:g}s"


# ---- ICMP errors: which probe they answer ------------------------------------------------------


def quoted_answer(pkt: Packet) -> Tuple5 | None:
    """For an ICMP/ICMPv6 destination unreachable: the answer 5-tuple of the packet it quotes
    (ports: the echo identifier for an ICMP echo), or None when the quote is too short, a
    later fragment, behind IPv6 extension headers, or not from the error's addressee."""
    data = pkt.data
    off = pkt.l4_offset + 8
    if pkt.l4_offset < 0 or len(data) < off + 28:
        return None
    version = data[off] >> 4
    if version == 4:
        ihl = (data[off] & 0x0F) * 4
        if ihl < 20 or _U16.unpack_from(data, off + 6)[0] & 0x1FFF:
            return None
        proto = data[off + 9]
        src = data[off + 12 : off + 16]
        dst = data[off + 16 : off + 20]
        l4 = off + ihl
    elif version == 6:
        proto = data[off + 6]
        src = data[off + 8 : off + 24]
        dst = data[off + 24 : off + 40]
        l4 = off + 40
    else:
        return None
    if src != pkt.dst or len(data) < l4 + 8:
        return None  # an error goes back to the sender of what it quotes
    if proto in (PROTO_TCP, PROTO_UDP, PROTO_UDPLITE, PROTO_SCTP):
        sport, dport = _PORTS.unpack_from(data, l4)
        return (proto, dst, dport, src, sport)
    if (proto == PROTO_ICMP and data[l4] == 8) or (proto == PROTO_ICMPV6 and data[l4] == 128):
        ident = _U16.unpack_from(data, l4 + 4)[0]
        return (proto, dst, ident, src, ident)
    return None
