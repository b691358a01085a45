"""`volume`: traffic over a rate — bytes or packets a second — per destination, source or
destination port ("more than 10 MB/s to port 443", as PacketSleuth asks):

    detect volume bytes 10MB/s per dst port 443 alert
    detect volume packets 20000/s per port limit

Every packet the engine sees is counted (both directions of every flow), when `port` is
given only those sent to one of those destination ports. A token bucket per key (the
packet's destination, its source, or its destination port) with `rate` per second and one
second's worth of burst (at least one full-sized packet); a packet over the rate is a
detection:

  alert   an alert, paced to one per key per second, with the bytes (or packets) over the
          rate it stands for. The default: a volume is a fact about traffic, not an offense.
  limit   the packet is dropped (a rate cap at the key).
  block   the packet's source is asked to be banned (`per dst`/`per port`: every source that
          sends while the key is over the rate; the resolver warns about it).

What the engine does not see is not counted: packets of flows offloaded to the kernel
(docs/offload.md) and of flows the kernel dropped or passed before the queue. Memory: at
most `detect-memory` keys; a full table evicts an idle key first (it would be full again,
nothing is lost), else the oldest (counted in `evicted`).
"""

from __future__ import annotations

from ips.core.addr import format_addr
from ips.core.events import Block, BlockRequest, DetectorEffect, Effect
from ips.core.flow import Flow
from ips.core.packet import Packet
from ips.detect.common import ALERT_EVERY, BucketDetector
from ips.policy.model import DetectSpec

FULL_PACKET = 65535.0  # the smallest byte burst: one packet of any size fits


class Volume(BucketDetector):
    name = "volume"

    def __init__(self, spec: DetectSpec, memory: int) -> None:
        super().__init__(spec, memory)
        params = spec.params
        self.metric = str(params["metric"])
        self.by_bytes = self.metric == "bytes"
        self.per = str(params["per"])
        self.configure_rate(spec.number("rate"))
        ports = params.get("port")
        self.ports: bytes | None = None
        if ports:
            table = bytearray(65536)
            for lo, hi in ports:  # type: ignore[attr-defined]
                table[lo : hi + 1] = b"\x01" * (hi - lo + 1)
            self.ports = bytes(table)
        # key -> [tokens, last update, last alert, amount over the rate since that alert]
        self.buckets: dict[bytes | int, list[float]] = {}

    def configure_rate(self, rate: float) -> None:
        """The rate (per second) and the burst and idle time that follow from it."""
        self.rate = rate
        self.burst = max(rate, FULL_PACKET if self.by_bytes else 1.0)
        self.idle = self.burst / rate

    def tracked(self) -> int:
        return len(self.buckets)

    def count(self, pkt: Packet, flow: Flow, now: float, out: list[DetectorEffect]) -> bool:
        """Count one packet; True when it is over the rate and the response is `limit`."""
        ports = self.ports
        if ports is not None and ports[pkt.dport] == 0:
            return False
        if self.ignore is not None and (pkt.src in self.ignore or pkt.dst in self.ignore):
            return False
        per = self.per
        key: bytes | int = pkt.dst if per == "dst" else pkt.src if per == "src" else pkt.dport
        amount = float(pkt.length) if self.by_bytes else 1.0
        b = self.take(key, amount, now)
        if b is None:
            return False
        limit = self.response == "limit"
        if limit:
            self.drops += 1
        if now - b[2] >= ALERT_EVERY:
            self._report(pkt, flow, key, now, b, limit, out)
        return limit

    def _report(
        self,
        pkt: Packet,
        flow: Flow,
        key: bytes | int,
        now: float,
        bucket: list[float],
        dropped: bool,
        out: list[DetectorEffect],
    ) -> None:
        over = int(bucket[3])
        bucket[2] = now
        bucket[3] = 0.0
        shown = str(key) if isinstance(key, int) else format_addr(key)
        extra: dict[str, object] = {
            "source": format_addr(pkt.src),
            "target": format_addr(pkt.dst),
            "per": self.per,
            "key": shown,
            "metric": self.metric,
            "count": over,
            "threshold": self.rate,
            "window": 1.0,
        }
        unit = "B/s" if self.by_bytes else "packets/s"
        self.emit_packet(
            out,
            now,
            pkt,
            flow,
            sid=1 if self.by_bytes else 2,
            signature=f"ipsctl volume: {self.metric} over the rate (per {self.per})",
            extra=extra,
            reason=f"volume: over {self.rate:g} {unit} per {self.per} {shown}",
            dropped=dropped,
        )

    def answered(self, request: BlockRequest, block: Block | None, status: str) -> list[Effect]:
        """A source banned already is left alone (the kernel drops the rest)."""
        if status == "already":
            return []
        return super().answered(request, block, status)
