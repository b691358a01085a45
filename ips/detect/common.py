"""What the detectors share: address lists, the report path (alert + block request), alert
pacing.

Pure, like the rest of the core: no I/O, no clock; `now` is an argument. A detector asks for
blocks but never makes one: its request goes back to the engine among its effects, and the
engine's block manager answers (see `Detector.emit` and `Detector.answered`).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable
from typing import Any, TypeVar

from ips.core.addr import format_addr
from ips.core.events import Alert, Block, BlockRequest, DetectorEffect, Effect
from ips.core.flow import Flow
from ips.core.packet import PROTO_ICMP, PROTO_ICMPV6, Packet
from ips.core.tables import NetMatcher
from ips.policy.model import DETECTOR_SID_BASE, AddrSpec, DetectSpec

# At most one alert per second per detector and key (a source, or a flood's victim): a scan
# or a flood is one story, not a million lines. What was folded is counted in the next alert.
ALERT_EVERY = 1.0
# And at most this many alerts per second per detector, all keys together (100,000 spoofed
# sources are 100,000 keys). Alerts that come with a block are never held back: blocks are
# already bounded by the ban budget.
ALERTS_PER_SECOND = 100.0
# How many targets (ports or hosts) an alert lists; `count` says how many there were.
TARGETS_SHOWN = 32
SEVERITY = 2  # Suricata's scale: 1 high, 2 medium, 3 low

_Key = TypeVar("_Key")  # a window's key, of whatever type a detector keys its windows by


def parse_networks(cidrs: Iterable[str]) -> NetMatcher:
    """CIDR strings ("10.0.0.0/8", "2001:db8::1") -> a matcher. ValueError on a bad one."""
    nets4: list[tuple[int, int]] = []
    nets6: list[tuple[int, int]] = []
    for text in cidrs:
        net = ipaddress.ip_network(str(text).strip(), strict=False)
        target = nets4 if net.version == 4 else nets6
        target.append((int(net.network_address), net.prefixlen))
    return NetMatcher(tuple(nets4), tuple(nets6))


class AddrList:
    """Membership in an `ignore` list (an AddrSpec, possibly negated)."""

    __slots__ = ("matcher", "negated")

    def __init__(self, spec: AddrSpec) -> None:
        self.matcher = NetMatcher(spec.nets4, spec.nets6)
        self.negated = spec.negated

    def __contains__(self, addr: bytes) -> bool:
        return self.matcher.contains(addr) != self.negated


_V6_LOOPBACK = bytes(15) + b"\x01"
_V6_UNSPECIFIED = bytes(16)


def not_a_host(addr: bytes) -> bool:
    """Unspecified (0/8, ::), loopback (127/8, ::1), multicast or broadcast (224/3, which
    also holds class E and 255.255.255.255; ff00::/8): never a real scanner or scan target
    (traffic to them is discovery: mDNS, SSDP, NetBIOS), and never worth a block."""
    first = addr[0]
    if len(addr) == 4:
        return first >= 224 or first in (0, 127)
    return first == 0xFF or addr in (_V6_LOOPBACK, _V6_UNSPECIFIED)


# not_a_host of an IPv4 address, by its first byte (1: not a host): for the scan detectors,
# which ask it of both addresses of every probe.
NOT_A_HOST_V4 = bytes(not_a_host(bytes((first, 0, 0, 0))) for first in range(256))


class Detector:
    """The part every detector shares: its configuration, counters, `emit`, which makes the
    alert of a detection (and the block request its response wants), and `answered`, which
    completes that alert once the engine's BlockManager has answered the request."""

    name = ""

    def __init__(self, spec: DetectSpec, memory: int) -> None:
        params = spec.params
        self.spec = spec
        self.memory = memory
        self.response = str(params["response"])
        self.ttl = float(params.get("block") or 600.0)  # type: ignore[arg-type]
        ignore = params.get("ignore")
        self.ignore: AddrList | None = AddrList(ignore) if isinstance(ignore, AddrSpec) else None
        self.sid_base = DETECTOR_SID_BASE[self.name]
        # The policy's key for this detector: its name, or NAME-dst, volume-2 … for a
        # detector given more than once (ips/policy/model.py, DetectSpec.key).
        self.key = spec.key
        self.rule_name = f"{spec.span.file}:{spec.span.line}"
        self.alerts = 0
        self.suppressed = 0
        self.blocked = 0
        self.drops = 0
        self.evicted = 0
        self._tokens = ALERTS_PER_SECOND
        self._tokens_at = 0.0

    def same_config(self, spec: DetectSpec, memory: int) -> bool:
        """True when a reloaded policy configures this detector the same way (its state is
        then kept across `apply`)."""
        return spec.params == self.spec.params and memory == self.memory

    def window_over(self, entries: dict[_Key, Any], now: float) -> bool:
        """Whether drop_finished_windows(entries, now) would drop anything: the test it makes
        of the first entry, alone (its `due` check)."""
        for entry in entries.values():
            return not entry.start >= now - self.within  # type: ignore[attr-defined]
        return False

    def drop_finished_windows(self, entries: dict[_Key, Any], now: float) -> None:
        """Forget entries whose window (`within`, from their `start`) is over. Entries are
        kept in insertion order, which is start order, so this stops at the first live one.
        One pass finds them, then they go: a dict finds its first key by skipping the holes
        its deletions left at its front, so taking the first key again after each deletion
        cost the square of their number (60,000 windows ending: half a second)."""
        horizon = now - self.within  # type: ignore[attr-defined]
        finished = []
        for key, entry in entries.items():
            if entry.start >= horizon:
                break
            finished.append(key)
        for key in finished:
            del entries[key]

    def ignored(self, addr: bytes) -> bool:
        return self.ignore is not None and addr in self.ignore

    def tracked(self) -> int:
        """How many keys (sources, source+target pairs, victims) the detector holds now."""
        raise NotImplementedError

    def stats(self) -> dict[str, int]:
        return {
            "tracked": self.tracked(),
            "memory": self.memory,
            "evicted": self.evicted,
            "alerts": self.alerts,
            "suppressed": self.suppressed,
            "blocks": self.blocked,
            "drops": self.drops,
        }

    def due(self, now: float) -> bool:
        """Whether tick(now) would change anything. Detectors.tick calls `tick` only when
        this says so: most ticks have nothing due, and then cost this check alone. It may
        say True for nothing (a tick then runs for nothing), never False when tick would
        drop, weigh or move anything (tests/pure/test_tick_due.py compares an engine whose
        ticks skip with one whose ticks never do). A detector that does not say ticks
        always."""
        return True

    def tick(self, now: float, out: list[DetectorEffect]) -> None:
        """Expiry of old state (and, for scans, probes whose answer is overdue)."""

    def _paced(self, now: float) -> bool:
        """One token of the detector-wide alert budget."""
        tokens = self._tokens + (now - self._tokens_at) * ALERTS_PER_SECOND
        if tokens > ALERTS_PER_SECOND:
            tokens = ALERTS_PER_SECOND
        self._tokens_at = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return True
        self._tokens = tokens if tokens > 0.0 else 0.0
        return False

    def emit_packet(
        self,
        out: list[DetectorEffect],
        now: float,
        pkt: Packet,
        flow: Flow,
        *,
        sid: int,
        signature: str,
        extra: dict[str, object],
        reason: str,
        dropped: bool,
    ) -> None:
        """Report a detection made by this packet of this flow (floods, reflection, volume):
        the alert names the packet's addresses and ports, its sender is the offender, and the
        flow is the evidence behind a block (see emit)."""
        self.emit(
            out,
            now,
            flow_id=flow.flow_id,
            proto=pkt.proto,
            src=pkt.src,
            sport=pkt.sport,
            dst=pkt.dst,
            dport=pkt.dport,
            sid=sid,
            signature=signature,
            extra=extra,
            offender=pkt.src,
            reason=reason,
            dropped=dropped,
            flow=flow,
        )

    def emit(
        self,
        out: list[DetectorEffect],
        now: float,
        *,
        flow_id: int,
        proto: int,
        src: bytes,
        sport: int,
        dst: bytes,
        dport: int,
        sid: int,
        signature: str,
        extra: dict[str, object],
        offender: bytes | None = None,
        reason: str = "",
        dropped: bool = False,
        flow: Flow | None = None,
    ) -> None:
        """Report one detection. With response `block`, the alert waits in a BlockRequest
        for `offender` (the engine settles it: see `answered`); else it goes out at once,
        unless the detector-wide alert budget is spent. `flow` is the offender's flow whose
        packets made the detection: what its first packet said of its sender (MAC, TTL) is
        the evidence the engine weighs before it blocks (ips/engine/evidence.py). The
        alert says "blocked" when the packet was dropped (or, see `answered`, the offender
        is banned)."""
        to_ban = offender if self.response == "block" else None
        if to_ban is None and not self._paced(now):
            self.suppressed += 1
            return
        alert = Alert(
            now,
            flow_id,
            4 if len(src) == 4 else 6,
            proto,
            src,
            sport,
            dst,
            dport,
            action="blocked" if dropped else "allowed",
            signature_id=self.sid_base + sid,
            signature=signature,
            severity=SEVERITY,
            category=self.name,
            rule_name=self.rule_name,
            extra=extra,
        )
        if flow is not None:
            # As a rule's alert has them: the flow's application protocol and responder's
            # passive DNS name, and for ICMP the type and code its Community ID hashes.
            alert.app_proto = flow.app_proto
            alert.dst_name = flow.dst_name
            if proto in (PROTO_ICMP, PROTO_ICMPV6):
                alert.icmp = flow.icmp
        if to_ban is not None:
            out.append(
                BlockRequest(
                    to_ban,
                    ttl=self.ttl,
                    detector=self.key,
                    reason=reason,
                    time=now,
                    alert=alert,
                    flow=flow,
                )
            )
            return
        self.alerts += 1
        out.append(alert)

    def answered(self, request: BlockRequest, block: Block | None, status: str) -> list[Effect]:
        """The BlockManager's answer to this detector's request: (Block, "added") or (None,
        why not: "already", "trusted", "budget", …; see ips/engine/blocks.py). Returns what
        goes out in the request's place: the alert — with the answer in its details, and
        "blocked" when the offender is banned (now or already) — then the Block. A refused
        request's alert is subject to the alert budget, as any alert without a block."""
        alert = request.alert
        extra = alert.extra
        assert extra is not None  # emit gives every detector alert its details
        extra["block"] = status
        if block is not None:
            self.blocked += 1
            extra["ttl"] = block.ttl
            extra["offense"] = block.offense
        if status in ("added", "already"):
            alert.action = "blocked"
        if block is None and not self._paced(request.time):
            self.suppressed += 1
            return []
        self.alerts += 1
        if block is None:
            return [alert]
        return [alert, block]


def addr_list(addrs: Iterable[bytes]) -> list[str]:
    """Addresses as text for an alert's details, at most TARGETS_SHOWN of them."""
    out: list[str] = []
    for a in addrs:
        if len(out) >= TARGETS_SHOWN:
            break
        out.append(format_addr(a))
    return out


SCAN_BUDGET = 8  # buckets looked at per eviction (a full table): bounded work per packet
TICK_BUDGET = 4096  # buckets looked at per tick for expiry


class BucketDetector(Detector):
    """A detector with one token bucket per key (floods, volume): each bucket is [tokens,
    last refill, last alert, count over the rate], refilled at `rate` up to one second's
    worth, so a bucket idle for `idle` seconds is full again and can be forgotten. What they
    share is how their table stays bounded."""

    buckets: dict[Any, list[float]]
    rate: float
    burst: float
    idle: float

    def __init__(self, spec: DetectSpec, memory: int) -> None:
        super().__init__(spec, memory)
        # At most the last use (bucket[1]) of every bucket: a bucket is dropped only once
        # idle, so no tick has anything to drop while this is recent (`due`). A bucket's last
        # use only grows (here and in ips/fast/_fastpath.pyx `_floods_take`); a new one
        # lowers this to its time; a tick that looks at every bucket sets it exactly.
        self.oldest_use = math.inf

    def take(self, key: Any, amount: float, now: float) -> list[float] | None:
        """Take `amount` from key's bucket (a new one starts full, less the amount): None
        when it had enough, else the bucket, its count over the rate raised by `amount`.

        ips/fast/_fastpath.pyx (`_floods_take`) does this for the flood packets it decides,
        when the bucket exists and has a token: the same double operations in the same
        order. Whoever changes one changes the other (tests/pure/
        test_fastpath_differential.py compares the buckets to the bit)."""
        buckets = self.buckets
        b = buckets.get(key)
        if b is None:
            if len(buckets) >= self.memory:
                self._make_room(now)
            buckets[key] = [self.burst - amount, now, float("-inf"), 0.0]
            if now < self.oldest_use:
                self.oldest_use = now
            return None
        elapsed = now - b[1]
        if elapsed > 0.0:
            tokens = b[0] + elapsed * self.rate
            b[0] = tokens if tokens < self.burst else self.burst
            b[1] = now
        if b[0] >= amount:
            b[0] -= amount
            return None
        b[3] += amount
        return b

    def _make_room(self, now: float) -> None:
        """Evict one bucket: the first idle one (it would be full again, so nothing is lost)
        among the oldest few; buckets still in use go to the back. Else the oldest."""
        buckets = self.buckets
        for _ in range(SCAN_BUDGET):
            key = next(iter(buckets))
            b = buckets.pop(key)
            if now - b[1] >= self.idle:
                self.evicted += 1
                return
            buckets[key] = b
        del buckets[next(iter(buckets))]
        self.evicted += 1

    def due(self, now: float) -> bool:
        """A bucket is kept while `now - its last use < idle`, so none goes while the oldest
        use is that recent; and a tick that looks at every bucket puts each kept one back in
        the order it had. Past TICK_BUDGET buckets a tick moves those it looks at behind the
        others (an order `_make_room` reads): it always runs."""
        buckets = self.buckets
        if not buckets:
            return False
        return len(buckets) > TICK_BUDGET or not now - self.oldest_use < self.idle

    def tick(self, now: float, out: list[DetectorEffect]) -> None:
        """Drop idle buckets (a new one starts full: nothing is lost), a bounded number per
        tick; buckets in use, or whose alert is recent, go to the back."""
        buckets = self.buckets
        idle = self.idle
        if len(buckets) > TICK_BUDGET:
            for _ in range(TICK_BUDGET):
                key = next(iter(buckets))
                b = buckets.pop(key)
                if now - b[1] < idle or now - b[2] < ALERT_EVERY:
                    buckets[key] = b
            return  # oldest_use stays what it was: still at most every last use
        # Every bucket looked at: the kept ones would all go to the back, in the order they
        # have, so the idle ones are deleted where they are (the same table, at less cost).
        oldest = math.inf
        gone = []
        for key, b in buckets.items():
            if now - b[1] < idle or now - b[2] < ALERT_EVERY:
                if b[1] < oldest:
                    oldest = b[1]
            else:
                gone.append(key)
        for key in gone:
            del buckets[key]
        self.oldest_use = oldest
