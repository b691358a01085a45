"""Stealth scans: TCP flag combinations no real stack sends (nmap -sN, -sX, -sF, and the
SYN+FIN / SYN+RST tricks of older scanners and firewall-evasion tools).

Invalid, after Linux conntrack's tcp_valid_flags table (PSH, ECE and CWR ignored), keeping
only combinations that are scans, never quirks of a real stack:
  NULL       no flags at all                                  (nmap -sN)
  XMAS       FIN+PSH+URG without ACK                          (nmap -sX)
  FIN        a bare FIN on a flow that never had a SYN        (nmap -sF)
  SYN+FIN    with any other flags (also "all flags set")
  SYN+RST    with any other flags
  other      any other packet without SYN, RST and ACK (PSH alone, URG alone, FIN+URG, …)
FIN+RST(+ACK) is left alone: conntrack calls it invalid but some middleboxes send it.

Every such packet is a detection: an alert, paced to one per source per second (the alert
counts the packets it stands for), and on the `count`-th packet from a source within
`within` seconds, the response (block by default). Later fragments have no TCP header and
are never looked at.
"""

from __future__ import annotations

from collections import OrderedDict

from ips.core.addr import format_addr
from ips.core.events import DetectorEffect
from ips.core.flow import Flow
from ips.core.packet import TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, TCP_URG, Packet
from ips.detect.common import ALERT_EVERY, Detector
from ips.policy.model import DetectSpec

NULL, XMAS, FIN, SYN_FIN, SYN_RST, OTHER = 1, 2, 3, 4, 5, 6
KIND_NAMES = {
    NULL: "null",
    XMAS: "xmas",
    FIN: "fin",
    SYN_FIN: "syn-fin",
    SYN_RST: "syn-rst",
    OTHER: "invalid",
}
SIGNATURES = {
    NULL: "ipsctl stealth: NULL scan (TCP without flags)",
    XMAS: "ipsctl stealth: XMAS scan (FIN+PSH+URG)",
    FIN: "ipsctl stealth: FIN scan (FIN without a connection)",
    SYN_FIN: "ipsctl stealth: SYN+FIN",
    SYN_RST: "ipsctl stealth: SYN+RST",
    OTHER: "ipsctl stealth: invalid TCP flags",
}


def _kind(flags: int) -> int:
    f = flags & (TCP_FIN | TCP_SYN | TCP_RST | TCP_PSH | TCP_ACK | TCP_URG)
    if f & TCP_SYN and f & TCP_FIN:
        return SYN_FIN
    if f & TCP_SYN and f & TCP_RST:
        return SYN_RST
    if f & (TCP_SYN | TCP_RST | TCP_ACK):
        return 0
    rest = f & (TCP_FIN | TCP_PSH | TCP_URG)
    if rest == 0:
        return NULL
    if rest == TCP_FIN | TCP_PSH | TCP_URG:
        return XMAS
    if rest == TCP_FIN:
        return FIN
    return OTHER


# The kind of every flags byte: one tuple index per TCP packet.
KIND_OF_FLAGS: tuple[int, ...] = tuple(_kind(f) for f in range(256))


class StealthEntry:
    __slots__ = ("count", "fired", "last_alert", "start", "unreported")

    def __init__(self, start: float) -> None:
        self.start = start
        self.count = 0
        self.unreported = 0
        self.last_alert = float("-inf")
        self.fired = False


class Stealth(Detector):
    name = "stealth"

    def __init__(self, spec: DetectSpec, memory: int) -> None:
        super().__init__(spec, memory)
        self.count = int(spec.number("count"))
        self.within = spec.number("within")
        # By source, in order of window start, the oldest evicted first: an OrderedDict,
        # whose first item is found at once (a dict's is found by skipping the holes its
        # deletions left at its front: 3-4 us an eviction under a flood of new sources).
        self.entries: OrderedDict[bytes, StealthEntry] = OrderedDict()

    def tracked(self) -> int:
        return len(self.entries)

    def observe(
        self, pkt: Packet, flow: Flow, kind: int, now: float, out: list[DetectorEffect]
    ) -> None:
        if kind == FIN and (flow.flags_fwd | flow.flags_rev) & TCP_SYN:
            return  # a bare FIN inside a connection: odd, but not a scan
        src = pkt.src
        if self.ignored(src):
            return
        entries = self.entries
        entry = entries.get(src)
        if entry is None or now - entry.start > self.within:
            if entry is not None:
                del entries[src]
            elif len(entries) >= self.memory:
                entries.popitem(last=False)
                self.evicted += 1
            entry = entries[src] = StealthEntry(now)
        entry.count += 1
        entry.unreported += 1
        repeated = not entry.fired and entry.count >= self.count
        if not repeated and now - entry.last_alert < ALERT_EVERY:
            return  # folded into this source's next alert
        if repeated:
            entry.fired = True
        extra: dict[str, object] = {
            "source": format_addr(src),
            "kind": KIND_NAMES[kind],
            "tcp_flags": f"{pkt.flags:02x}",
            "packets": entry.unreported,
            "count": entry.count,
            "threshold": self.count,
            "window": self.within,
        }
        entry.unreported = 0
        entry.last_alert = now
        self.emit(
            out,
            now,
            flow_id=flow.flow_id,
            proto=pkt.proto,
            src=src,
            sport=pkt.sport,
            dst=pkt.dst,
            dport=pkt.dport,
            sid=kind,
            signature=SIGNATURES[kind],
            extra=extra,
            offender=src if repeated else None,
            flow=flow,
            reason=f"stealth: {entry.count} {KIND_NAMES[kind]} packets within {self.within:g}s",
        )

    def due(self, now: float) -> bool:
        return self.window_over(self.entries, now)

    def tick(self, now: float, out: list[DetectorEffect]) -> None:
        self.drop_finished_windows(self.entries, now)
