"""Floods: `icmpflood` (ICMP/ICMPv6 echo requests), `synflood` (SYNs that open connections:
SYN without ACK), `udpflood` (UDP datagrams of flows that have not been answered).

A token bucket per key — the source (`per src`) or the destination (`per dst`) — with `rate`
packets per second and a burst of one second's worth. A packet over the rate is a detection:

  limit   the packet gets a DROP verdict from the detector (before the rules). Nobody is
          banned: flood sources are spoofed at will, and a ban of a spoofed address hurts
          whoever really owns it. Per dst, this protects the victim's capacity.
  block   the packet's source is banned (`per dst`: every source that sends while the
          destination is over the rate — the resolver warns about it).
  alert   an alert only.

Alerts are paced to one per key per second and carry the number of packets over the rate
they stand for. udpflood counts only flows that got no answer: a flood is one-way, while
QUIC, VPN tunnels, RTP and DNS — the traffic that legitimately runs at thousands of packets
a second — are answered (a flood of new flows is counted: every first packet is unanswered).
`ignore` exempts sources, and for `per dst` also destinations.
"""

from __future__ import annotations

from ips.core.addr import format_addr
from ips.core.events import Block, BlockRequest, DetectorEffect, Effect
from ips.core.flow import Flow
from ips.core.packet import Packet
from ips.detect.common import ALERT_EVERY, BucketDetector
from ips.policy.model import DetectSpec


class Flood(BucketDetector):
    SIGNATURE = ""
    PACKETS = ""  # what is counted, for the alert's details

    def __init__(self, spec: DetectSpec, memory: int) -> None:
        super().__init__(spec, memory)
        self.rate = spec.number("rate")
        self.per = str(spec.params["per"])
        self.per_src = self.per == "src"
        self.burst = max(self.rate, 1.0)
        self.idle = self.burst / self.rate  # seconds after which a bucket is full again
        # key -> [tokens, last update, last alert, packets over the rate since that alert];
        # insertion order is roughly the order of last use (see _make_room)
        self.buckets: dict[bytes, list[float]] = {}

    def tracked(self) -> int:
        return len(self.buckets)

    def count(self, pkt: Packet, flow: Flow, now: float, out: list[DetectorEffect]) -> bool:
        """Count one packet; True when it is over the rate and the response is `limit`.

        ips/fast/_fastpath.pyx (`_floods_take`) does this for the packets it decides, when
        the bucket exists and has a token: the same ignore test, and `take`'s double
        operations in the same order. Whoever changes one changes the other (tests/pure/
        test_fastpath_differential.py compares the buckets to the bit)."""
        key = pkt.src if self.per_src else pkt.dst
        if self.ignore is not None and (
            pkt.src in self.ignore or (not self.per_src and key in self.ignore)
        ):
            return False
        b = self.take(key, 1.0, now)
        if b is None:
            return False
        if self.response == "limit":
            self.drops += 1
            if now - b[2] >= ALERT_EVERY:
                self._report(pkt, flow, now, b, True, out)
            return True
        if self.response == "block":
            # Per dst, every new source over the rate is asked for (the ban budget bounds
            # it); per src, a refused ban (trusted, budget) is asked for again once a second.
            # A source banned already is left alone (the kernel drops the rest), but only the
            # block manager knows that: see `answered`.
            if self.per_src and now - b[2] < ALERT_EVERY:
                return False
            self._report(pkt, flow, now, b, False, out)
        elif now - b[2] >= ALERT_EVERY:
            self._report(pkt, flow, now, b, False, out)
        return False

    def _report(
        self,
        pkt: Packet,
        flow: Flow,
        now: float,
        bucket: list[float],
        dropped: bool,
        out: list[DetectorEffect],
    ) -> None:
        over = int(bucket[3])
        if self.response != "block":
            bucket[2] = now
            bucket[3] = 0.0
        # else the bucket starts a new alert period once the block is answered (`answered`)
        extra: dict[str, object] = {
            "source": format_addr(pkt.src),
            "target": format_addr(pkt.dst),
            "per": self.per,
            "packets": self.PACKETS,
            "count": over,
            "threshold": self.rate,
            "window": 1.0,
        }
        reason = (
            f"{self.name}: over {self.rate:g}/s "
            f"{'from' if self.per_src else 'to'} {extra['source' if self.per_src else 'target']}"
        )
        self.emit_packet(
            out,
            now,
            pkt,
            flow,
            sid=1 if self.per_src else 2,
            signature=f"{self.SIGNATURE} ({'per source' if self.per_src else 'per destination'})",
            extra=extra,
            reason=reason,
            dropped=dropped,
        )

    def answered(self, request: BlockRequest, block: Block | None, status: str) -> list[Effect]:
        """A source banned already (by another detection of this packet) is left alone, as if
        never reported: the kernel drops the rest. Otherwise the bucket starts a new alert
        period and the alert goes out as any detector's."""
        if status == "already":
            return []
        alert = request.alert
        bucket = self.buckets[alert.src if self.per_src else alert.dst]
        bucket[2] = request.time
        bucket[3] = 0.0
        return super().answered(request, block, status)


class IcmpFlood(Flood):
    name = "icmpflood"
    SIGNATURE = "ipsctl icmpflood: ICMP echo requests over the rate"
    PACKETS = "icmp echo-request"


class SynFlood(Flood):
    name = "synflood"
    SIGNATURE = "ipsctl synflood: TCP SYNs over the rate"
    PACKETS = "tcp syn"


class UdpFlood(Flood):
    name = "udpflood"
    SIGNATURE = "ipsctl udpflood: unanswered UDP over the rate"
    PACKETS = "udp unanswered"
