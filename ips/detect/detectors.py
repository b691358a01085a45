"""The detectors of a policy, behind one call per packet: `Detectors.observe`.

Most packets need nothing from any detector, and are let go after a tuple index and a few
attribute reads: a TCP packet with ordinary flags in a flow past its first packet, a UDP
packet of an answered flow. What reaches a detector:

  * the first packet of a flow                  portscan, sweep (probes, or answers to them)
  * TCP with invalid flags                      stealth
  * a TCP SYN (also retransmitted)              synflood
  * the first answer of a flow, if a RST        portscan, sweep (rejected probes)
  * ICMP/ICMPv6 destination unreachable         portscan, sweep (rejected probes)
  * ICMP/ICMPv6 echo request                    icmpflood; sweep if first
  * UDP of a flow not answered (yet)            udpflood; portscan, sweep if first;
                                                reflection, from an amplifier port
  * a SYN/ACK or RST of a flow nobody answered  reflection (no SYN of ours seen)
  * an ICMP echo reply opening a flow           reflection
  * a bare ACK opening a flow                   ackscan (and portscan, sweep)
  * every packet, with `detect volume`          volume
and, from the engine, a first packet the policy rejects (our own reset or ICMP error is a
failed probe too: `rejected`).

Several workers (`--queue-balance` hashes source, destination and protocol): a destination's
senders are spread over the workers, so each counts its share of what is counted per
destination (or per destination port): those rates and reflection's `sources` are divided by
the number of workers. What is counted per source stays whole (a source's packets to one
destination reach one worker); a source's targets on several hosts (sweep, ackscan, volume
per src) are split among them: see docs/language.md, "Several workers".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, TypeVar

from ips.core.events import Block, BlockRequest, DetectorEffect, Effect
from ips.core.flow import Flow
from ips.core.packet import (
    FRAG_LATER,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    PROTO_UDPLITE,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    Packet,
)
from ips.detect.ackscan import AckScan, target_of
from ips.detect.common import NOT_A_HOST_V4, Detector, not_a_host
from ips.detect.flood import Flood, IcmpFlood, SynFlood, UdpFlood
from ips.detect.reflection import ICMP_ANSWER, TCP_ANSWER, UDP_ANSWER, Reflection
from ips.detect.scan import (
    ACK,
    DATAGRAM,
    ECHO,
    GRACE,
    RESOLVE_PER_PACKET,
    SYN,
    TRACEROUTE_PORTS,
    PortScan,
    Probe,
    ScanDetector,
    Sweep,
    Tuple5,
    answer_tuple,
    quoted_answer,
)
from ips.detect.slowscan import SlowScan
from ips.detect.stealth import KIND_OF_FLAGS, Stealth
from ips.detect.volume import Volume
from ips.policy.model import Policy

CLASSES: dict[str, Callable[..., Detector]] = {
    "portscan": PortScan,
    "sweep": Sweep,
    "stealth": Stealth,
    "icmpflood": IcmpFlood,
    "synflood": SynFlood,
    "udpflood": UdpFlood,
    "slowscan": SlowScan,
    "reflection": Reflection,
    "ackscan": AckScan,
    "volume": Volume,
}

_SFRA = TCP_SYN | TCP_FIN | TCP_RST | TCP_ACK
_ICMP4_SWEEP = frozenset((8, 13, 17))  # echo, timestamp, address mask requests (nmap -PE/PP/PM)
_ICMP6_SWEEP = frozenset((128,))
_ICMP4_ANSWERS = frozenset((0, 14, 18))  # their replies
_ICMP6_ANSWERS = frozenset((129,))
_UDPS = (PROTO_UDP, PROTO_UDPLITE)
# A TCP packet that only answers: SYN+ACK, or a reset (with ACK or without).
_ANSWER_FLAGS = frozenset((TCP_SYN | TCP_ACK, TCP_RST, TCP_RST | TCP_ACK))
_ICMPS = (PROTO_ICMP, PROTO_ICMPV6)

Result = tuple[list[DetectorEffect] | None, str | None]


class PacketInterest(NamedTuple):
    """What `observe` does with the packets of a flow past its first packet, declared for
    the compiled fast path (ips/fast/_fastpath.pyx), which decides some of them without
    calling it. `observe` returns None, touching nothing, for TCP packets whose flags byte
    is quiet (tcp_quiet[flags]) and for UDP of an answered flow. For the others:

      UDP of a flow not answered (forward)   nothing unless udp_unreplied; then each flood
        of udp_floods counts it (Flood.count), and reflection counts it when it comes from
        one of amplifier_ports (a byte per port, None: no reflection) to another port
        (Reflection.udp_answer, .count); past the first packet, nothing else (`_udp`)
      ICMP/ICMPv6 echo request               each flood of echo_floods counts it (`_icmp`)
      echo reply, forward, flow not answered reflection counts it if echo_reply_unanswered
      echo reply otherwise                   nothing
      TCP of the reverse direction           nothing when reverse_tcp_quiet[flags] (None:
        (responder to initiator)             anything): `_tcp` looks at a reverse packet only
                                             for stealth's flag combinations, a reset that
                                             may answer a probe, and synflood's SYNs
      every other packet                     anything: the fast path leaves it to Python

    And for the first packet of a flow not in the table (a flowless packet, forward):

      TCP          by first_tcp[flags] (None: anything, for every flags byte):
        FIRST_NOTHING              nothing
        FIRST_ANSWER               whether its 5-tuple is in one of answer_indexes (the
                                   scans' pending probes); if so, `_answer` notes it: with
                                   RST a failure (weighed at once: anything), else what
                                   Detectors.note_answer does, which reports nothing
        FIRST_ANSWER_ELSE_PROBE    FIRST_ANSWER; not an answer, a probe (anything), which
                                   does nothing when one of its addresses is no host
                                   (not_a_host: `_probe` returns first), or when it
                                   repeats a probe still pending: the
                                   5-tuple of its answer (its own turned around) in every
                                   one of answer_indexes, and no scan's first pending probe
                                   due (pending_probes, in the same order: `_probe` weighs
                                   those first; ScanDetector.probe takes a probe whose answer
                                   is indexed for a retransmission of it)
        FIRST_ANSWER_ELSE_PROBE_IF_EMPTY  the same, a probe only without payload
        FIRST_BUSY                 anything
                   and besides, a packet whose SYN, FIN, RST and ACK bits are SYN alone is
                   counted by each flood of first_syn_floods (synflood, after the scans)
      UDP          nothing when first_udp_quiet (no detector looks at unanswered UDP);
                   else each flood of udp_floods counts it, and besides, by first_udp:
        FIRST_NOTHING              nothing
        FIRST_ANSWER_ELSE_PROBE    as for TCP (no failure: UDP has no reset), except that
                                   a packet to a traceroute port (TRACEROUTE_PORTS) is
                                   neither an answer nor a probe: nothing
        FIRST_BUSY                 anything
      every other  anything

    A probe that is no repeat (its answer not in a scan's index) is filed by
    ScanDetector.probe in portscan (key: source and target host, target: its port) and
    sweep (key: its source, target: its host), in that order, each unless its `ignore`
    holds the source; probe_scans names those two (None when absent) when that is all a
    probe's bookkeeping is (their classes' `probe`, `_new_window` and `answer` are
    ScanDetector's, no ackscan): the compiled path may then file a probe itself, the same
    objects in the same tables (a queue of pending probes that is full makes room first,
    which weighs: Python). None: a probe that is no repeat goes to Python.

    The fast path may count a flood's packet itself, with Flood.count's arithmetic, when
    its bucket exists and has a token, and make a new key's bucket when the table has room
    (a full table, or a packet over the rate: Python).
    Whoever changes what `_udp` or `_icmp` does past a flow's first packet changes this
    too; tests/pure/test_fastpath_differential.py holds them together."""

    tcp_quiet: tuple[bool, ...]
    udp_unreplied: bool
    udp_floods: tuple[Flood, ...] = ()
    amplifier_ports: bytes | None = None
    echo_floods: tuple[Flood, ...] = ()
    echo_reply_unanswered: bool = False
    first_tcp: bytes | None = None
    answer_indexes: tuple[Mapping[Tuple5, object], ...] = ()
    pending_probes: tuple[Sequence[Probe], ...] = ()
    first_udp_quiet: bool = False
    # What `note_answer` does, when every scan detector answers as ScanDetector.answer: set
    # each found Probe's outcome from UNKNOWN to ANSWERED, nothing else (no failure, no
    # effect). The compiled path may then do it itself.
    answers_note_outcome: bool = False
    first_udp: int = 4  # FIRST_BUSY (defined below)
    # By TCP flags byte: 1 when `observe` does nothing with a TCP packet of the reverse
    # direction (a responder's SYN+ACK, say), whatever the flow's state; the compiled path
    # decides a handshake's answer without calling it (ips/fast/_fastpath.pyx `_syn_ack`).
    reverse_tcp_quiet: bytes | None = None
    # The floods that count a flow's first TCP packet whose SYN, FIN, RST and ACK bits are
    # SYN alone (synflood), besides what first_tcp says of it; and the scans whose probes
    # the compiled path may file itself (see above).
    first_syn_floods: tuple[Flood, ...] = ()
    probe_scans: tuple[ScanDetector | None, ScanDetector | None] | None = None


# PacketInterest.first_tcp: what `_tcp` does with a flow's first packet, by its flags byte.
FIRST_NOTHING = 0
FIRST_ANSWER = 1
FIRST_ANSWER_ELSE_PROBE = 2
FIRST_ANSWER_ELSE_PROBE_IF_EMPTY = 3
FIRST_BUSY = 4


# The detector classes whose packets `observe` routes by the tests PacketInterest declares.
_DECLARED = (
    PortScan, Sweep, Stealth, IcmpFlood, SynFlood, UdpFlood, SlowScan, Reflection, AckScan
)  # fmt: skip


class Detectors:
    """All detectors of one policy. `observe` returns None (nothing to report: the common
    case) or (effects or None, name of the detector whose `limit` drops the packet or None).
    Effects are Alerts and BlockRequests; the engine hands each request to its block manager
    and its answer to `answered`, in the order they were made, before anything else happens
    (so a detection sees the blocks of the detections before it, as if it had made them)."""

    def __init__(
        self,
        policy: Policy,
        previous: Detectors | None = None,
        shards: int = 1,
    ) -> None:
        memory = policy.detect_memory
        self.by_name: dict[str, Detector] = {}  # by the policy's key (a name, NAME-dst …)
        for key, spec in policy.detectors.items():
            old = previous.by_name.get(key) if previous is not None else None
            if old is not None and old.same_config(spec, memory):
                det = old  # same settings: keep what it has learned (an `apply` is no reset)
                det.spec = spec
                det.rule_name = f"{spec.span.file}:{spec.span.line}"
            else:
                det = CLASSES[spec.name](spec, memory)
            _share(det, spec.params, shards)
            if isinstance(det, ScanDetector):
                det.probes = policy.detect_probes
            self.by_name[key] = det
        dets = self.by_name.values()
        get = self.by_name.get
        self.portscan = _of(PortScan, get("portscan"))
        self.sweep = _of(Sweep, get("sweep"))
        self.stealth = _of(Stealth, get("stealth"))
        # A flood may be measured per source and per destination: two detectors of a name.
        self.icmpfloods = tuple(d for d in dets if isinstance(d, IcmpFlood))
        self.synfloods = tuple(d for d in dets if isinstance(d, SynFlood))
        self.udpfloods = tuple(d for d in dets if isinstance(d, UdpFlood))
        self.reflection = _of(Reflection, get("reflection"))
        self.ackscan = _of(AckScan, get("ackscan"))
        self.volumes = tuple(d for d in dets if isinstance(d, Volume))
        self.scans: tuple[ScanDetector, ...] = tuple(
            d for d in (self.portscan, self.sweep, self.ackscan) if d is not None
        )
        # The long window hears every weight portscan and sweep give (also when a kept scan
        # detector outlives a policy without `detect slowscan`: then it hears nothing).
        self.slowscan = _of(SlowScan, get("slowscan"))
        for scan in (self.portscan, self.sweep):
            if scan is not None:
                scan.slow = self.slowscan
        self._scratch: list[DetectorEffect] = []
        if self.volumes:
            self.observe = self._observe_with_volume  # type: ignore[method-assign]
        # TCP flags that need no detector on a flow's later packets
        quiet = []
        for flags in range(256):
            busy = (
                (self.stealth is not None and KIND_OF_FLAGS[flags] != 0)
                or (bool(self.synfloods) and flags & _SFRA == TCP_SYN)
                or (bool(self.scans) and flags & TCP_RST != 0)
                or (self.reflection is not None and flags & _SFRA in _ANSWER_FLAGS)
            )
            quiet.append(not busy)
        self._tcp_quiet: tuple[bool, ...] = tuple(quiet)
        self._tcp_first = bool(self.scans)  # (synflood's SYNs are not quiet anyway)
        self._udp_busy = bool(self.udpfloods) or bool(self.scans) or self.reflection is not None
        # What `observe` lets go on a flow already under way, declared for the compiled fast
        # path (ips/fast/), which skips the call for those packets. Only the classes whose
        # packets `observe` routes by the two tables above declare it: with any other
        # detector (`volume` sees every packet), None, and every packet comes here. Whoever
        # changes what `observe` lets go changes this too (the differential test,
        # tests/pure/test_fastpath_differential.py, holds them together).
        self.interest: PacketInterest | None = None
        if all(type(d) in _DECLARED for d in dets):
            reflection = self.reflection
            self.interest = PacketInterest(
                self._tcp_quiet,
                bool(self.udpfloods) or reflection is not None,  # (the scans: first only)
                self.udpfloods,
                reflection.ports if reflection is not None else None,
                self.icmpfloods,
                reflection is not None,
                self._first_tcp(),
                tuple(det.index for det in self.scans),
                tuple(det.pending for det in self.scans),
                not self._udp_busy,
                all(type(det).answer is ScanDetector.answer for det in self.scans),
                self._first_udp(),
                self._reverse_tcp_quiet(),
                self.synfloods,
                self._probe_scans(),
            )

    def _probe_scans(self) -> tuple[ScanDetector | None, ScanDetector | None] | None:
        """PacketInterest.probe_scans: (portscan, sweep) when filing a probe is `_probe`'s
        loop below and ScanDetector.probe in each (no ackscan, whose probes are its own)."""
        if self.ackscan is not None:
            return None
        for det in self.scans:
            cls = type(det)
            if (
                cls.probe is not ScanDetector.probe
                or cls._new_window is not ScanDetector._new_window
                or cls.answer is not ScanDetector.answer
            ):
                return None
        return (self.portscan, self.sweep)

    def _reverse_tcp_quiet(self) -> bytes:
        """PacketInterest.reverse_tcp_quiet: the flags bytes of a reverse TCP packet that
        `observe` lets go untouched. Going backward, `_tcp` calls stealth for a flag
        combination of its kinds, the scans for a reset (the first answer of a flow may
        reset a probe) and synflood for a SYN without ACK (a simultaneous open); reflection
        looks at forward packets only, and a packet with quiet flags never reaches `_tcp`."""
        quiet = bytearray(256)
        for flags in range(256):
            busy = (
                (self.stealth is not None and KIND_OF_FLAGS[flags] != 0)
                or (bool(self.scans) and flags & TCP_RST != 0)
                or (bool(self.synfloods) and flags & _SFRA == TCP_SYN)
            )
            quiet[flags] = 1 if self._tcp_quiet[flags] or not busy else 0
        return bytes(quiet)

    def _first_tcp(self) -> bytes | None:
        """PacketInterest.first_tcp: what `_tcp` does with a TCP flow's first packet (forward,
        not replied), by its flags byte; None (all to Python) with `ackscan`, whose `again`
        looks at every first packet while it has pending probes."""
        if self.ackscan is not None:
            return None
        first = bytearray(256)
        for flags in range(256):
            kind = KIND_OF_FLAGS[flags]
            sfra = flags & _SFRA
            # (synflood's count of a SYN, after the scans, is PacketInterest.first_syn_floods)
            if (kind and self.stealth is not None) or (
                self.reflection is not None and sfra in _ANSWER_FLAGS
            ):
                first[flags] = FIRST_BUSY
            elif kind or not self.scans:
                first[flags] = FIRST_NOTHING  # (flags of a stealth kind skip the scans)
            elif sfra == TCP_SYN:
                first[flags] = FIRST_ANSWER_ELSE_PROBE
            elif sfra in (TCP_ACK, TCP_ACK | TCP_FIN):
                first[flags] = FIRST_ANSWER_ELSE_PROBE_IF_EMPTY
            else:
                first[flags] = FIRST_ANSWER
        return bytes(first)

    def _first_udp(self) -> int:
        """PacketInterest.first_udp: what `_udp` does with a UDP flow's first packet (forward,
        not replied) besides the floods' counting."""
        if self.reflection is not None:
            return FIRST_BUSY  # udp_answer, asked: not declared
        if self.scans:
            return FIRST_ANSWER_ELSE_PROBE
        return FIRST_NOTHING

    def note_answer(self, answer: Tuple5, now: float) -> bool:
        """`_answer` for a flow's first packet that answers a pending probe and is no failure
        (no RST), as `_tcp` calls it: the probe is noted as answered; nothing is reported
        (only a failure is weighed at once). Whether one answered. For the compiled fast
        path (ips/fast/_fastpath.pyx `_flowless`), which decides such a packet after this
        call."""
        return self._answer(answer, False, now, [])

    def __bool__(self) -> bool:
        return bool(self.by_name)

    # ---- per packet --------------------------------------------------------------------------

    def _observe_with_volume(self, pkt: Packet, flow: Flow, fwd: bool, now: float) -> Result | None:
        """`observe` when the policy has `detect volume` lines: they see every packet."""
        found = Detectors.observe(self, pkt, flow, fwd, now)
        out = self._scratch  # empty, and handed out only when something was reported
        drop = None
        for volume in self.volumes:
            if volume.count(pkt, flow, now, out) and drop is None:
                drop = volume.key
        if not out and drop is None:
            return found
        if out:
            self._scratch = []
        if found is None:
            return (out or None, drop)
        effects, dropped = found
        if out:
            effects = out if effects is None else effects + out
        return (effects, dropped if dropped is not None else drop)

    def observe(self, pkt: Packet, flow: Flow, fwd: bool, now: float) -> Result | None:
        """Look at one packet after the flow table counted it (before the rules)."""
        proto = pkt.proto
        if proto == PROTO_TCP:
            flags = pkt.flags
            if self._tcp_quiet[flags] and (
                not fwd or flow.pkts_fwd != 1 or flow.replied or not self._tcp_first
            ):
                return None
            return self._tcp(pkt, flow, fwd, flags, now)
        if proto in _UDPS:
            if flow.replied or not self._udp_busy:
                return None
            return self._udp(pkt, flow, fwd, now)
        if proto in _ICMPS:
            return self._icmp(pkt, flow, fwd, now)
        if proto == PROTO_SCTP and fwd and flow.pkts_fwd == 1 and not flow.replied:
            if pkt.frag == FRAG_LATER or not self.scans:
                return None
            out: list[DetectorEffect] = []
            if not self._answers(pkt, False, now, out):
                self._probe(pkt, flow, DATAGRAM, now, out, True)
            return (out, None) if out else None
        return None

    def _tcp(self, pkt: Packet, flow: Flow, fwd: bool, flags: int, now: float) -> Result | None:
        if pkt.frag == FRAG_LATER:
            return None  # no TCP header: its "flags" are not flags
        out: list[DetectorEffect] = []
        drop = None
        kind = KIND_OF_FLAGS[flags]
        sfra = flags & _SFRA
        answers_probe = False
        if kind:
            if self.stealth is not None:
                self.stealth.observe(pkt, flow, kind, now, out)
        elif fwd and flow.pkts_fwd == 1 and not flow.replied:
            if self.scans:
                if self.ackscan is not None and self.ackscan.index:
                    self.ackscan.again(pkt)  # a refused flow's source going on in a new one
                answers_probe = self._answers(pkt, flags & TCP_RST != 0, now, out)
                if answers_probe:
                    pass
                elif sfra == TCP_SYN:
                    self._probe(pkt, flow, SYN, now, out, True)
                elif (sfra == TCP_ACK or sfra == TCP_ACK | TCP_FIN) and (
                    pkt.payload_offset >= pkt.length
                ):
                    # nmap -sA / -sM, or a connection picked up mid-stream: its answer tells
                    self._probe(pkt, flow, ACK, now, out, True)
        elif flags & TCP_RST and not fwd and flow.pkts_rev == 1 and self.scans:
            self._answers(pkt, True, now, out)  # the target reset the probe
        if sfra == TCP_SYN:
            for synflood in self.synfloods:
                if synflood.count(pkt, flow, now, out) and drop is None:
                    drop = synflood.key
        elif (
            self.reflection is not None
            and fwd
            and not flow.replied
            and not answers_probe
            and sfra in _ANSWER_FLAGS
            and self.reflection.count(pkt, flow, TCP_ANSWER, now, out)
        ):
            drop = self.reflection.key  # a SYN/ACK or reset, and no SYN of ours seen
        if out or drop:
            return (out or None, drop)
        return None

    def _udp(self, pkt: Packet, flow: Flow, fwd: bool, now: float) -> Result | None:
        if pkt.frag == FRAG_LATER:
            return None
        out: list[DetectorEffect] = []
        drop = None
        first = fwd and flow.pkts_fwd == 1
        answers_probe = False
        if self.scans and first and pkt.dport not in TRACEROUTE_PORTS:
            answers_probe = self._answers(pkt, False, now, out)
            if not answers_probe:
                self._probe(pkt, flow, DATAGRAM, now, out, True)
        for udpflood in self.udpfloods:
            if udpflood.count(pkt, flow, now, out) and drop is None:
                drop = udpflood.key
        reflection = self.reflection
        if reflection is not None and fwd:
            if reflection.udp_answer(pkt):
                if (
                    not answers_probe
                    and reflection.count(pkt, flow, UDP_ANSWER, now, out)
                    and drop is None
                ):
                    drop = reflection.key
            elif first and not_a_host(pkt.dst) and reflection.ports[pkt.dport]:
                reflection.asked(pkt, now)  # SSDP M-SEARCH: answered by each device, unicast
        if out or drop:
            return (out or None, drop)
        return None

    def _icmp(self, pkt: Packet, flow: Flow, fwd: bool, now: float) -> Result | None:
        itype = pkt.icmp_type
        v4 = pkt.proto == PROTO_ICMP
        out: list[DetectorEffect] = []
        drop = None
        first = fwd and flow.pkts_fwd == 1 and not flow.replied
        if itype == (3 if v4 else 1):  # destination unreachable
            if self.scans:
                answer = quoted_answer(pkt)
                if answer is not None:
                    self._answer(answer, True, now, out)
        elif itype == (8 if v4 else 128):  # echo request
            if first and self.sweep is not None:
                self._probe(pkt, flow, ECHO, now, out, False)
            if first and self.reflection is not None and not_a_host(pkt.dst):
                self.reflection.asked(pkt, now)  # ping ff02::1: every node answers, unicast
            for icmpflood in self.icmpfloods:
                if icmpflood.count(pkt, flow, now, out) and drop is None:
                    drop = icmpflood.key
        elif itype in (_ICMP4_ANSWERS if v4 else _ICMP6_ANSWERS):
            # a reply whose request left no flow (refused), or that nobody sent (smurf)
            answers_probe = first and self.sweep is not None and self._answers(pkt, False, now, out)
            reflection = self.reflection
            if (
                reflection is not None
                and fwd
                and not flow.replied
                and not answers_probe
                and reflection.count(pkt, flow, ICMP_ANSWER, now, out)
            ):
                drop = reflection.key
        elif first and self.sweep is not None and itype in (_ICMP4_SWEEP if v4 else _ICMP6_SWEEP):
            self._probe(pkt, flow, ECHO, now, out, False)
        if out or drop:
            return (out or None, drop)
        return None

    # ---- scans -------------------------------------------------------------------------------

    def _probe(
        self, pkt: Packet, flow: Flow, kind: int, now: float, out: list[DetectorEffect], ports: bool
    ) -> None:
        src = pkt.src
        dst = pkt.dst
        if len(src) == 4 == len(dst):
            if NOT_A_HOST_V4[src[0]] or NOT_A_HOST_V4[dst[0]]:
                return
        elif not_a_host(dst) or not_a_host(src):
            return
        for det in self.scans:
            pending = det.pending
            if pending and pending[0].due <= now:
                det.resolve(now, RESOLVE_PER_PACKET, out)  # answers now due, before the probe
        # The 5-tuple of its answer (answer_tuple), made once for every scan detector. One
        # whose index awaits it already takes it for a retransmission (the first probe
        # stands for it): looked up first, before anything is built or called for it.
        dport = pkt.dport
        answer = (pkt.proto, dst, dport, src, pkt.sport)
        size = pkt.length
        portscan = self.portscan
        if ports and portscan is not None and answer not in portscan.index:
            ignore = portscan.ignore
            if ignore is None or src not in ignore:
                portscan.probe((src, dst), dport, flow, kind, now, out, answer, size)
        sweep = self.sweep
        if sweep is not None and answer not in sweep.index:
            ignore = sweep.ignore
            if ignore is None or src not in ignore:
                sweep.probe(src, dst, flow, kind, now, out, answer, size)
        ackscan = self.ackscan
        if kind == ACK and ackscan is not None and answer not in ackscan.index:
            ignore = ackscan.ignore
            if ignore is None or src not in ignore:
                ackscan.probe(src, target_of(dst, dport), flow, kind, now, out, answer, size)

    def _answers(self, pkt: Packet, failed: bool, now: float, out: list[DetectorEffect]) -> bool:
        """Whether `pkt` answers a pending probe (and note the answer): `_answer` for its
        own 5-tuple, written out (every flow's first packet asks)."""
        own = (pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport)
        found = False
        for det in self.scans:
            probe = det.index.get(own)
            if probe is not None:
                det.answer(probe, failed, now, out)
                found = True
        return found

    def _answer(self, answer: Tuple5, failed: bool, now: float, out: list[DetectorEffect]) -> bool:
        """Whether a packet with this 5-tuple answers a pending probe, noted in each scan
        detector that waits for it (in their order)."""
        found = False
        for det in self.scans:
            probe = det.index.get(answer)
            if probe is not None:
                det.answer(probe, failed, now, out)
                found = True
        return found

    def rejected(self, pkt: Packet, now: float) -> list[DetectorEffect] | None:
        """The policy rejected a flow's first packet: our own reset or ICMP error is the
        answer, and a failure. Returns the effects (a scan may be complete)."""
        if not self.scans:
            return None
        out: list[DetectorEffect] = []
        self._answer(answer_tuple(pkt), True, now, out)
        return out or None

    def answered(self, request: BlockRequest, block: Block | None, status: str) -> list[Effect]:
        """The block manager's answer to a request: what goes out in its place (the
        detection's alert, and the Block when one was made; see Detector.answered)."""
        return self.by_name[request.detector].answered(request, block, status)

    # ---- time --------------------------------------------------------------------------------

    def tick(self, now: float) -> list[DetectorEffect]:
        """Weigh the probes whose answer is overdue (they may complete a scan: Alert, Block),
        and let go of expired state."""
        out: list[DetectorEffect] = []
        for det in self.by_name.values():
            if det.due(now):  # asked in turn: an earlier one's tick may give it work
                det.tick(now, out)
        return out

    def stats(self) -> dict[str, dict[str, int]]:
        """Per detector: tracked keys, memory cap, evictions, alerts, suppressed, blocks,
        drops (and pending probes for the scans)."""
        return {name: det.stats() for name, det in self.by_name.items()}


__all__ = [
    "FIRST_ANSWER",
    "FIRST_ANSWER_ELSE_PROBE",
    "FIRST_ANSWER_ELSE_PROBE_IF_EMPTY",
    "FIRST_BUSY",
    "FIRST_NOTHING",
    "GRACE",
    "Detectors",
    "PacketInterest",
    "Result",
]


DetectorT = TypeVar("DetectorT", bound=Detector)


def _of(kind: type[DetectorT], detector: Detector | None) -> DetectorT | None:
    """The detector of a policy line, as its class (None when the policy has no such line)."""
    if detector is None:
        return None
    assert isinstance(detector, kind), (detector, kind)  # CLASSES maps each name to its class
    return detector


def _share(det: Detector, params: dict[str, object], shards: int) -> None:
    """With several workers, a destination's (or a destination port's) senders are spread
    over them (the queue is chosen by source, destination and protocol): each counts its
    share of what is counted per destination."""
    if shards <= 1:
        return
    per = params.get("per")
    if isinstance(det, Flood) and per == "dst":
        det.rate = float(params["rate"]) / shards  # type: ignore[arg-type]
        det.burst = max(det.rate, 1.0)
        det.idle = det.burst / det.rate
    elif isinstance(det, Volume) and per in ("dst", "port"):
        det.configure_rate(float(params["rate"]) / shards)  # type: ignore[arg-type]
    elif isinstance(det, Reflection):
        det.rate = float(params["rate"]) / shards  # type: ignore[arg-type]
        det.burst = max(det.rate, 1.0)
        det.sources = max(1, -(-int(params["sources"]) // shards))  # type: ignore[call-overload]
