"""Who may be banned, for how long, and how many: the BlockManager. Pure (`now` is an argument).

A detector that wants a source banned returns a BlockRequest; the engine hands it to
`request()`. The answer is a `Block` (the address
went into the dynamic table `banned`, which the inline daemon mirrors into the nftables set of
that name) or a refusal with its reason:

  already      the address is banned now (nothing new to do)
  reserved     unspecified, loopback, multicast or broadcast: never a real attacker
  never-block  in the engine's never_block networks (the gateway's own addresses and its
               management networks, given by the daemon)
  trusted      in the policy's table `trusted`
  budget       the ban budget is spent: at most `set ban-budget N` (30) new detector blocks
               in any 60 s, so a spoofed-source attack cannot make us ban half the Internet
  table-full   the table `banned` is at its `size`
  no-table     the policy has no dynamic table `banned` (the resolver refuses detectors that
               block without one; manual blocks can still meet this)

A detector's `ignore` list is checked earlier: an ignored source is not even watched.

Before any of this, the engine weighs the evidence that the address sent the packets
(ips/engine/evidence.py): a forged address is never requested. When the forger is a host of
the segment, `request_mac` bans its MAC instead (a MacBlock, for the nft set banned_ether),
refused as "protected" when that MAC owns a never-block or trusted address or is a router,
and counted in the same ban budget. MAC blocks are not escalated; their time is capped by
ban-max.

Escalation: an address blocked again gets `set ban-escalation F` (2) times its previous
duration — block × F^(offense-1) — capped at `set ban-max D` (24h) (a `block` duration
longer than ban-max is used as written, never escalated further). Offenses are remembered
until ban-max after the last block ended, for at most `set detect-memory` addresses.

Manual blocks (`ipsctl blocks add`, `engine.block`) are the operator's decision: trusted,
never_block and the budget do not apply, they are not offenses (no escalation), and their
TTL is used as given. A manual unblock also forgets the address's offenses (it was a
mistake: the next block starts again at the first offense). Blocks found in the kernel at
start (`adopt`) count as one offense.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable

from ips.core.events import Block, MacBlock, Unblock
from ips.core.tables import DynamicTable, NetMatcher
from ips.detect.common import not_a_host, parse_networks
from ips.policy.model import BAN_TABLE, ETHER_BAN_TABLE, OPTIONS, TRUSTED_TABLE, Policy

BUDGET_WINDOW = 60.0  # seconds: the ban budget is per minute
MAX_DOUBLINGS = 64  # bound on the escalation exponent (the ttl is capped by ban-max anyway)


class BlockManager:
    """Decides and records blocks in the policy's dynamic table `banned`."""

    def __init__(self, never_block: Iterable[str] = ()) -> None:
        self.never_block_text = tuple(never_block)
        self.never_block: NetMatcher = parse_networks(self.never_block_text)
        self.table: DynamicTable | None = None
        self.trusted: NetMatcher | None = None
        self.trusted_dynamic: DynamicTable | None = None
        self.budget = int(OPTIONS["ban-budget"].default)
        self.escalation = int(OPTIONS["ban-escalation"].default)
        self.max_ttl = float(OPTIONS["ban-max"].default)
        self.memory = int(OPTIONS["detect-memory"].default)
        self._recent: deque[float] = deque()  # times of detector blocks in the last minute
        # address -> [offenses, forget_at]; insertion order is the order of last offense
        self._history: dict[bytes, list[float]] = {}
        self.refused: Counter[str] = Counter()
        # MAC -> expiry of its block; the kernel's set (banned_ether) has the same members
        # and drops them by itself. Bounded by the table `banned`'s size.
        self.macs: dict[bytes, float] = {}
        self.macs_added = 0
        self.added = 0
        self.manual = 0
        self.expired = 0

    def configure(self, policy: Policy, tables: dict[str, DynamicTable]) -> None:
        """Take the options and tables of a (re)loaded policy. History and budget are kept."""
        table = tables.get(BAN_TABLE)
        self.table = table
        spec = policy.tables.get(TRUSTED_TABLE)
        self.trusted = None
        self.trusted_dynamic = None
        if spec is not None and spec.kind == "dynamic":
            self.trusted_dynamic = tables.get(TRUSTED_TABLE)
        elif spec is not None:
            self.trusted = NetMatcher(spec.nets4, spec.nets6)
        self.budget = policy.ban_budget
        self.escalation = policy.ban_escalation
        self.max_ttl = policy.ban_max
        self.memory = policy.detect_memory

    # ---- checks ------------------------------------------------------------------------------

    def protected(self, addr: bytes, now: float) -> str | None:
        """Why `addr` may never be banned by a detector, or None."""
        if not_a_host(addr):
            return "reserved"
        if self.never_block.contains(addr):
            return "never-block"
        if self.trusted is not None and self.trusted.contains(addr):
            return "trusted"
        if self.trusted_dynamic is not None and self.trusted_dynamic.contains(addr, now):
            return "trusted"
        return None

    def is_blocked(self, addr: bytes, now: float) -> bool:
        return self.table is not None and self.table.contains(addr, now)

    def offenses(self, addr: bytes, now: float) -> int:
        """Detector blocks of `addr` still remembered."""
        entry = self._history.get(addr)
        if entry is None or entry[1] <= now:
            return 0
        return int(entry[0])

    def budget_left(self, now: float) -> int:
        self._prune(now)
        return max(0, self.budget - len(self._recent))

    def _prune(self, now: float) -> None:
        recent = self._recent
        while recent and recent[0] <= now - BUDGET_WINDOW:
            recent.popleft()

    # ---- blocks ------------------------------------------------------------------------------

    def request(
        self, addr: bytes, now: float, ttl: float, detector: str, reason: str = ""
    ) -> tuple[Block | None, str]:
        """A detector wants `addr` banned for `ttl` seconds (before escalation).
        Returns (Block, "added") or (None, why not)."""
        table = self.table
        if table is None:
            return self._refuse("no-table")
        if table.contains(addr, now):
            return None, "already"
        why = self.protected(addr, now)
        if why is not None:
            return self._refuse(why)
        self._prune(now)
        if len(self._recent) >= self.budget:
            return self._refuse("budget")
        offense = self.offenses(addr, now) + 1
        if ttl >= self.max_ttl:
            life = ttl
        else:
            factor = float(self.escalation) ** min(offense - 1, MAX_DOUBLINGS)
            life = min(ttl * factor, self.max_ttl)
        if not table.add(addr, now, life):
            return self._refuse("table-full")
        self._recent.append(now)
        self._remember(addr, offense, now + life + self.max_ttl)
        self.added += 1
        block = Block(
            addr,
            table=table.name,
            ttl=life,
            detector=detector,
            offense=offense,
            reason=reason,
            time=now,
        )
        return block, "added"

    def request_mac(
        self, mac: bytes, claimed: bytes, now: float, ttl: float, detector: str,
        evidence: str, routers: frozenset[bytes], owners: list[bytes], reason: str = "",
    ) -> tuple[MacBlock | None, str]:  # fmt: skip
        """Ban the MAC of the real sender of forged packets (see the module's docstring).
        `routers`: the MACs of our routes' next hops; `owners`: the addresses the neighbour
        table gives this MAC. Returns (MacBlock, "added") or (None, why not)."""
        macs = self.macs
        expiry = macs.get(mac)
        if expiry is not None and expiry > now:
            return None, "already"
        if mac in routers or any(self.protected(a, now) for a in owners):
            return self._refuse("protected-mac")
        self._prune(now)
        if len(self._recent) >= self.budget:
            return self._refuse("budget")
        size = self.table.size if self.table is not None else 0
        if expiry is None and len(macs) >= max(size, 1):
            self.expire_macs(now)
            if len(macs) >= max(size, 1):
                return self._refuse("table-full")
        life = min(ttl, self.max_ttl)
        macs[mac] = now + life
        self._recent.append(now)
        self.macs_added += 1
        return MacBlock(
            mac, claimed=claimed, table=ETHER_BAN_TABLE, ttl=life, detector=detector,
            evidence=evidence, reason=reason, time=now,
        ), "added"  # fmt: skip

    def adopt_mac(self, mac: bytes, expires_at: float) -> bool:
        """Take over a MAC ban that is already in the kernel's set (found at start), so that
        the MAC's next forged packet finds it banned ("already"). False when there is no
        table `banned` (whose size bounds the bans) or the bans are that many already."""
        size = self.table.size if self.table is not None else 0
        if mac not in self.macs and len(self.macs) >= size:
            return False
        self.macs[mac] = expires_at
        return True

    def forget_mac(self, mac: bytes) -> bool:
        """An operator lifted the ban of `mac` (`ipsctl blocks del`): forgotten, so that its
        next forged packet bans it again. False when it was not banned."""
        return self.macs.pop(mac, None) is not None

    def forget_macs(self) -> int:
        """Every MAC ban lifted (`ipsctl blocks flush`); returns how many there were."""
        n = len(self.macs)
        self.macs.clear()
        return n

    def expire_macs(self, now: float) -> None:
        """Forget MAC blocks whose time is up (the kernel's set expires them by itself)."""
        macs = self.macs
        if macs:
            for mac in [m for m, expiry in macs.items() if expiry <= now]:
                del macs[mac]

    def _refuse(self, why: str) -> tuple[None, str]:
        self.refused[why] += 1
        return None, why

    def _remember(self, addr: bytes, offense: float, forget_at: float) -> None:
        history = self._history
        history.pop(addr, None)
        while len(history) >= self.memory:
            del history[next(iter(history))]  # the oldest offender goes first
        history[addr] = [offense, forget_at]

    def block(self, addr: bytes, now: float, ttl: float, reason: str = "manual") -> Block | None:
        """An operator's block: no trust, never_block or budget check, not an offense.
        None when there is no table `banned` or it is full."""
        table = self.table
        if table is None or not table.add(addr, now, ttl):
            return None
        self.manual += 1
        return Block(
            addr,
            table=table.name,
            ttl=ttl,
            detector="manual",
            offense=1,
            reason=reason,
            time=now,
        )

    def unblock(self, addr: bytes, now: float, reason: str = "manual") -> Unblock | None:
        """Remove a block; None when the address was not blocked. A manual unblock also
        forgets the address's offenses."""
        if reason == "manual":
            self._history.pop(addr, None)
        table = self.table
        if table is None or not table.remove(addr):
            return None
        return Unblock(addr, table=table.name, reason=reason, time=now)

    def adopt(self, addr: bytes, expires_at: float) -> bool:
        """Take over a block that is already in the kernel's set (found at start), so that
        its expiry gives an Unblock and a repeat offence escalates. False when there is no
        table `banned` or it is full."""
        table = self.table
        if table is None:
            return False
        if addr not in table.members and len(table.members) >= table.size:
            return False
        table.members[addr] = expires_at
        known = self._history.get(addr)
        offenses = known[0] if known is not None else 1
        self._remember(addr, offenses, expires_at + self.max_ttl)
        return True

    def due(self, now: float) -> bool:
        """Whether expire(now) or expire_macs(now) may have anything to do: a block (of
        an address or a MAC) held. (The engine's tick asks first.)"""
        table = self.table
        return bool(self.macs) or (table is not None and bool(table.members))

    def expire(self, now: float) -> list[Unblock]:
        """Blocks whose time is up: out of the table, each an Unblock("expired")."""
        table = self.table
        if table is None:
            return []
        gone = table.expire(now)
        self.expired += len(gone)
        return [Unblock(a, table=table.name, reason="expired", time=now) for a in gone]

    def stats(self) -> dict[str, object]:
        return {
            "blocked": len(self.table.members) if self.table is not None else 0,
            "added": self.added,
            "manual": self.manual,
            "expired": self.expired,
            "refused": dict(self.refused),
            "budget": self.budget,
            "remembered": len(self._history),
            "macs": len(self.macs),
            "macs_added": self.macs_added,
        }
