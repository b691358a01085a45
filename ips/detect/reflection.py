"""`reflection`: unsolicited answers converging on one destination — reflection and
amplification floods, and the backscatter of a SYN flood that forged our address.

An attacker sends small requests to many servers with the victim's address as their source;
the servers (amplifiers: DNS, NTP, SSDP, memcached … or any TCP server for SYN/ACKs) answer
the victim, which never asked. What counts, per destination (the victim):

  what arrives (the first packets of a flow, from the     sid
  flow's initiator, the flow never answered by the victim)
  a TCP SYN/ACK, or a RST, with no SYN of ours seen        9000801
  UDP from an amplifier port (`port`, by default the       9000802
    US-CERT TA14-017A list) to another port, with no
    request seen
  an ICMP echo (timestamp, mask) reply with no request     9000803

An answer is solicited, and not counted, when its request was seen: then the flow table holds
it as the request's reverse direction (the victim initiated the flow). Two more cases are
recognised: the answer to a probe a scan detector still waits for (a capture, or a tap, in
which the request's flow was refused), and the unicast answers to a multicast or broadcast
request (an SSDP M-SEARCH or a WS-Discovery probe is answered by each device of the segment,
from its own address, as a ping of ff02::1 is by each node: `ASK_WINDOW` seconds after the
request). UDP between two equal ports
(NTP peers 123↔123, IKE 500↔500, NetBIOS 137↔137) is a conversation, not an answer.

A destination is under attack when, within a tumbling window of `within` seconds, its
unsolicited answers came from at least `sources` distinct senders, and they arrive over `rate`
packets a second (a token bucket with one second's worth of burst). Both, because each alone
is ordinary: a resolver's answers lost to asymmetric routing come fast from one or two
servers; a few unsolicited resets from many hosts trickle in all day (the Internet's
background of backscatter). Then, for each packet over the rate:

  limit   the packet is dropped (nothing asked for it); nobody is banned. The default.
  alert   an alert only.
  block   its sender is asked to be banned — a warning says why not to: the senders are
          real amplifiers answering a forged address, and banning them is the attack's goal.

Alerts are paced to one per destination per second and say how many packets they stand for.

Memory: at most `detect-memory` destinations (the oldest first out, counted in `evicted`),
each with at most `sources` senders (packed: about 200 bytes a destination at the default
20); at most ASKS multicast requests remembered.
"""

from __future__ import annotations

from ips.core.addr import format_addr
from ips.core.events import DetectorEffect
from ips.core.flow import Flow
from ips.core.packet import Packet
from ips.detect.common import ALERT_EVERY, Detector, addr_list
from ips.policy.model import DetectSpec

TCP_ANSWER, UDP_ANSWER, ICMP_ANSWER = 1, 2, 3  # the sids, and the kinds of answer
KINDS = {TCP_ANSWER: "tcp", UDP_ANSWER: "udp", ICMP_ANSWER: "icmp"}
ASK_WINDOW = 10.0  # seconds a multicast request's answers may take (SSDP's MX is up to 5 s)
ASKS = 4096  # multicast/broadcast requests remembered (the oldest first out)
TICK_BUDGET = 4096  # destinations looked at per tick for expiry


class Victim:
    """One destination's window: who answered it unasked, and its token bucket."""

    __slots__ = ("alerted", "last", "over", "packets", "sources", "start", "tokens")

    def __init__(self, now: float, tokens: float) -> None:
        self.start = now
        # The distinct senders, at most `sources` of them, one after the other (4 or 16 bytes
        # each, as the victim's address): a tenth of what a set of them would take.
        self.sources = bytearray()
        self.packets = 0  # unsolicited answers in this window
        self.tokens = tokens
        self.last = now
        self.alerted = float("-inf")
        self.over = 0  # packets over the rate since the last alert


def _holds(senders: bytearray, src: bytes, width: int) -> bool:
    """Whether `src` is one of the senders (a match at a multiple of the width)."""
    at = senders.find(src)
    while at != -1:
        if at % width == 0:
            return True
        at = senders.find(src, at + 1)
    return False


class Reflection(Detector):
    name = "reflection"

    def __init__(self, spec: DetectSpec, memory: int) -> None:
        super().__init__(spec, memory)
        self.rate = spec.number("rate")
        self.sources = int(spec.number("sources"))
        self.within = spec.number("within")
        self.burst = max(self.rate, 1.0)
        table = bytearray(65536)
        for lo, hi in spec.params.get("port") or ():  # type: ignore[attr-defined]
            table[lo : hi + 1] = b"\x01" * (hi - lo + 1)
        self.ports = bytes(table)  # amplifier ports: a byte per port
        self.victims: dict[bytes, Victim] = {}  # in order of first answer
        self.asks: dict[tuple[bytes, int, int], float] = {}  # (asker, its port, service) -> when
        self.counted = 0  # unsolicited answers seen
        self.solicited = 0  # answers to a multicast request, not counted

    def tracked(self) -> int:
        return len(self.victims)

    def stats(self) -> dict[str, int]:
        out = super().stats()
        out["counted"] = self.counted
        out["solicited"] = self.solicited
        out["asks"] = len(self.asks)
        return out

    # ---- per packet ----------------------------------------------------------------------------

    def asked(self, pkt: Packet, now: float) -> None:
        """A request to a multicast or broadcast address — UDP on an amplifier port, or an
        ICMP echo (its identifier in both port fields): its answers come from each device's
        own address, and are solicited."""
        asks = self.asks
        key = (pkt.src, pkt.sport, pkt.dport)
        if key not in asks and len(asks) >= ASKS:
            del asks[next(iter(asks))]
        asks.pop(key, None)
        asks[key] = now  # at the end: the dict stays in order of time

    def udp_answer(self, pkt: Packet) -> bool:
        """Whether a UDP packet of a flow nobody answered comes from an amplifier port."""
        sport = pkt.sport
        return self.ports[sport] == 1 and sport != pkt.dport

    def count(
        self, pkt: Packet, flow: Flow, kind: int, now: float, out: list[DetectorEffect]
    ) -> bool:
        """One unsolicited answer; True when the packet is to be dropped (`limit`)."""
        victim_addr = pkt.dst
        src = pkt.src
        if self.ignore is not None and (src in self.ignore or victim_addr in self.ignore):
            return False
        if kind != TCP_ANSWER and self.asks:
            asked = self.asks.get((victim_addr, pkt.dport, pkt.sport))
            if asked is not None and now - asked <= ASK_WINDOW:
                self.solicited += 1
                return False
        self.counted += 1
        victims = self.victims
        v = victims.get(victim_addr)
        if v is None:
            if len(victims) >= self.memory:
                del victims[next(iter(victims))]
                self.evicted += 1
            v = victims[victim_addr] = Victim(now, self.burst)
        elif now - v.start > self.within:
            v.start = now  # a new window: its senders are counted again
            v.sources = bytearray()
            v.packets = 0
        v.packets += 1
        width = len(src)
        full = self.sources * width
        senders = v.sources
        if len(senders) < full and not _holds(senders, src, width):
            senders += src
        elapsed = now - v.last
        if elapsed > 0.0:
            tokens = v.tokens + elapsed * self.rate
            v.tokens = tokens if tokens < self.burst else self.burst
            v.last = now
        if v.tokens >= 1.0:
            v.tokens -= 1.0
            return False
        if len(senders) < full:
            return False  # fast, but from few senders: not a reflection (see the notes)
        v.over += 1
        limit = self.response == "limit"
        if limit:
            self.drops += 1
        if now - v.alerted >= ALERT_EVERY:
            self._report(pkt, flow, kind, now, v, limit, out)
        return limit

    def _report(
        self,
        pkt: Packet,
        flow: Flow,
        kind: int,
        now: float,
        v: Victim,
        dropped: bool,
        out: list[DetectorEffect],
    ) -> None:
        v.alerted = now
        over, v.over = v.over, 0
        width = len(pkt.src)
        senders = [bytes(v.sources[i : i + width]) for i in range(0, len(v.sources), width)]
        extra: dict[str, object] = {
            "source": format_addr(pkt.src),
            "target": format_addr(pkt.dst),
            "answers": KINDS[kind],
            "count": over,
            "threshold": self.rate,
            "sources": len(senders),
            "sources_threshold": self.sources,
            "window": self.within,
            "unsolicited": v.packets,
            "reflectors": addr_list(senders),
        }
        if kind == UDP_ANSWER:
            extra["service_port"] = pkt.sport
        self.emit_packet(
            out,
            now,
            pkt,
            flow,
            sid=kind,
            signature=f"ipsctl reflection: unsolicited {KINDS[kind]} answers from many sources",
            extra=extra,
            reason=f"reflection: unsolicited answers to {extra['target']} from "
            f"{len(senders)}+ sources",
            dropped=dropped,
        )

    # ---- time ----------------------------------------------------------------------------------

    def due(self, now: float) -> bool:
        """Victims are looked at whenever there are some (the tick moves those it keeps to
        the back); requests when the oldest is old enough to go (the tick's test)."""
        if self.victims:
            return True
        for asked in self.asks.values():
            return not now - asked <= ASK_WINDOW
        return False

    def tick(self, now: float, out: list[DetectorEffect]) -> None:
        """Forget destinations whose window is over and whose bucket is full again (a new
        one starts so: nothing is lost), a bounded number per tick, and old requests."""
        victims = self.victims
        idle = self.burst / self.rate
        for _ in range(min(TICK_BUDGET, len(victims))):
            key = next(iter(victims))
            v = victims.pop(key)
            if now - v.start <= self.within or now - v.last < idle:
                victims[key] = v
        asks = self.asks
        while asks:
            ask = next(iter(asks))
            if now - asks[ask] <= ASK_WINDOW:
                break
            del asks[ask]
