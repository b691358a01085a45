"""Run-time tables the engine's rules and detectors consult: dynamic address tables (blocks),
per-key token buckets (`limit`), and network membership.

They live in the core, not in the policy compiler: the compiler only creates them; the
engine, the detectors and the block manager fill and read them, packet by packet.
"""

from __future__ import annotations


class DynamicTable:
    """A table whose members change at run time (blocks): address bytes -> expiry time.

    Mirrors the nftables set of the same name; entries expire by `now`, in the engine's tick."""

    __slots__ = ("members", "name", "size", "timeout")

    def __init__(self, name: str, timeout: float | None, size: int) -> None:
        self.name = name
        self.timeout = timeout
        self.size = size
        self.members: dict[bytes, float] = {}

    def add(self, addr: bytes, now: float, ttl: float | None = None) -> bool:
        """Add or refresh; False when the table is full (the caller counts it)."""
        if addr not in self.members and len(self.members) >= self.size:
            return False
        life = ttl if ttl is not None else self.timeout
        self.members[addr] = now + life if life else float("inf")
        return True

    def remove(self, addr: bytes) -> bool:
        return self.members.pop(addr, None) is not None

    def contains(self, addr: bytes, now: float) -> bool:
        expiry = self.members.get(addr)
        return expiry is not None and expiry > now

    def expire(self, now: float) -> list[bytes]:
        gone = [a for a, t in self.members.items() if t <= now]
        for a in gone:
            del self.members[a]
        return gone


class TokenBuckets:
    """Per-key token buckets for `limit RATE [per src|dst|flow]`. Bounded: when full, idle
    buckets (which would be full again anyway) are dropped first."""

    __slots__ = ("buckets", "burst", "max_keys", "rate")

    def __init__(self, rate: float, burst: int, max_keys: int = 65536) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_keys = max_keys
        self.buckets: dict[object, list[float]] = {}

    def take(self, key: object, now: float) -> bool:
        # ips/fast/_fastpath.pyx (`_limit_take`) does this for the packets it decides, when
        # the bucket exists and has a token, with the same double operations in the same
        # order: whoever changes one changes the other (the differential test compares them).
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= self.max_keys:
                self._shrink(now)
            self.buckets[key] = [self.burst - 1.0, now]
            return True
        tokens = bucket[0] + (now - bucket[1]) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return True
        bucket[0] = tokens
        return False

    def _shrink(self, now: float) -> None:
        refill = self.burst / self.rate
        idle = [k for k, (_, last) in self.buckets.items() if now - last >= refill]
        for k in idle:
            del self.buckets[k]
        if len(self.buckets) >= self.max_keys:  # all busy: drop the oldest half
            for k in list(self.buckets)[: self.max_keys // 2]:
                del self.buckets[k]


class NetMatcher:
    """Membership of an address in a list of networks (slow path: tables, explain)."""

    __slots__ = ("by_family",)

    def __init__(self, nets4: tuple[tuple[int, int], ...], nets6: tuple[tuple[int, int], ...]):
        self.by_family: dict[int, dict[int, set[int]]] = {4: {}, 6: {}}
        for fam, nets, width in ((4, nets4, 32), (6, nets6, 128)):
            for net, plen in nets:
                self.by_family[fam].setdefault(plen, set()).add(net >> (width - plen))

    def __bool__(self) -> bool:
        return bool(self.by_family[4] or self.by_family[6])

    def contains(self, addr: bytes) -> bool:
        width = len(addr) * 8
        plens = self.by_family[4 if width == 32 else 6]
        value = int.from_bytes(addr, "big")
        return any((value >> (width - plen)) in nets for plen, nets in plens.items())
