"""Which flows go where in a mix, and the addresses they get: the planning, pure.

Flows in, placements out. No clock, no file, and no module-level random state: every random
choice comes from the generator passed in (`random.Random(seed)` in the CLI), so one seed gives
one plan. Time is integer microseconds from the start of the output.

How a class fills its share of a window (``packets`` of them):

- ``spread`` (the default for benign traffic): whole flows drawn at random from the class's
  inputs, each placed at a random start inside the window, so that it ends inside it too. A
  flow that would overshoot the target by more than it would leave short is set aside for a
  later draw; so a class ends within half a flow of its target.
- ``keep`` (the default for attacks): consecutive flows of the input, in their original order,
  keep their original spacing: a stretch of the attack is placed as one block at a random
  start inside the window. A scan stays a scan (its probes as close together as they were)
  and a flood keeps its rate. When a block reaches the window's end a new block starts, placed
  anew.

When a class's inputs run out, they are used again: another *round*, whose flows get new
addresses (each round of an input is a new set of hosts), so a copy is a different flow. A
flow longer than its window is never split: it is left out and counted (`too_long`).

Addresses: every address of an input round maps to one new address (`AddressBook`), drawn from
the network of its role -- the initiator of a benign flow is a client and its peer a server;
an attack's initiator is an attacker, its peer a victim. One host of the input keeps one new
address in all its flows, both directions, so a scanner is still one scanner.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ips.mix.spec import BENIGN, Network, SpecError, Window

__all__ = [
    "DEFAULT_NETWORKS",
    "AddressBook",
    "ClassResult",
    "FlowSummary",
    "MixPlan",
    "Placement",
    "Rng",
    "plan_mix",
]

SPREAD = "spread"
KEEP = "keep"
TIMINGS = (SPREAD, KEEP)

# Networks when the user names none: private ranges, one per role and family. Victims default
# to the servers' network, so attacks land in the network benign clients use (one pool: a
# victim and a server never share an address by chance).
DEFAULT_NETWORKS: dict[str, tuple[str, ...]] = {
    "clients": ("10.50.0.0/16", "fd00:50::/64"),
    "servers": ("10.60.0.0/16", "fd00:60::/64"),
    "attackers": ("10.90.0.0/16", "fd00:90::/64"),
    "victims": ("10.60.0.0/16", "fd00:60::/64"),
}
# How many flows in a row may be passed over (too long, or too big for what is left) before a
# class gives up on a window: bounds the work when no flow fits.
_MAX_MISSES = 4096
# Spread: flows too big for what is left of a target, passed over in a row before the class is
# done with a window; and how many of them are kept for the next windows.
_MAX_BIG_MISSES = 256
_MAX_SET_ASIDE = 4096


class Rng(Protocol):
    """What the plan asks of its random generator (`random.Random` has it)."""

    def randrange(self, start: int, stop: int) -> int: ...

    def shuffle(self, x: list[int]) -> None: ...


@dataclass(frozen=True, slots=True)
class FlowSummary:
    """One flow of an input, as the index saw it (the small record kept per flow)."""

    flow: int  # index among all flows of all inputs
    input: int  # index of its input
    cls: str
    proto: int
    family: int
    initiator: bytes  # the sender of its first packet
    sport: int
    responder: bytes
    dport: int
    start_us: int  # its first packet's time (absolute, microseconds)
    duration_us: int  # last packet's time minus the first's (never negative)
    packets: int


@dataclass(frozen=True, slots=True)
class Placement:
    """A flow put into the output: at `start_us` (from the output's start), with its new
    addresses. `round` counts how many times its input had been used up before it."""

    placement: int
    flow: int
    cls: str
    window: int
    round: int
    start_us: int
    initiator: bytes
    responder: bytes


@dataclass
class ClassResult:
    target: int = 0
    packets: int = 0
    flows: int = 0


@dataclass
class MixPlan:
    placements: list[Placement]
    windows: list[Window]
    results: list[dict[str, ClassResult]]  # per window, per class
    too_long: int = 0  # flows passed over because they do not fit their window
    reused: int = 0  # placements of a round after the first (copies with new addresses)
    address_collisions: int = 0  # hosts that had to share an address: a network too small
    notes: list[str] = field(default_factory=list)


class AddressBook:
    """Original address (per input and round) -> new address in the network of its role.

    Memory: one entry per host of each input round used.
    """

    def __init__(
        self, networks: dict[str, list[Network]], rng: Rng, keep_first_round: bool = False
    ) -> None:
        self._rng = rng
        # The first round of each input keeps its own addresses (for policies that name real
        # ones: reputation lists, geo); later rounds are copies and get new ones.
        self._keep = keep_first_round
        self._pools: dict[tuple[str, int], _Pool] = {}
        # Roles given the same network draw from one pool: a victim never gets a server's
        # address by chance (they share one only when the network is full).
        by_network: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, _Pool] = {}
        for role, nets in networks.items():
            for n in nets:
                pool = by_network.setdefault(n.net, _Pool(n.net))
                self._pools[(role, n.family)] = pool
        self._map: dict[tuple[int, int, bytes], bytes] = {}
        self.collisions = 0

    def map(self, input_id: int, round_: int, address: bytes, role: str) -> bytes:
        if self._keep and round_ == 0:
            return address
        key = (input_id, round_, address)
        new = self._map.get(key)
        if new is None:
            family = 4 if len(address) == 4 else 6
            pool = self._pools.get((role, family))
            if pool is None:
                raise SpecError(f"no IPv{family} network for the {role}")
            new, collided = pool.draw(self._rng)
            self.collisions += collided
            self._map[key] = new
        return new


class _Pool:
    """Host addresses of one network, handed out at random without repeats while it lasts."""

    def __init__(self, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
        size = net.num_addresses
        base = int(net.network_address)
        # IPv4: neither the network's nor its broadcast address; IPv6: not the subnet-router
        # anycast address (host part 0).
        self.low = base + 1
        self.high = base + size - (2 if net.version == 4 else 1)  # inclusive
        self.width = 4 if net.version == 4 else 16
        self.used: set[int] = set()

    def draw(self, rng: Rng) -> tuple[bytes, int]:
        count = self.high - self.low + 1
        if len(self.used) >= count:
            # Every address is taken: hosts must share (counted, and said in the summary).
            value = rng.randrange(self.low, self.high + 1)
            return value.to_bytes(self.width, "big"), 1
        value = rng.randrange(self.low, self.high + 1)
        if value in self.used:
            if len(self.used) * 2 < count:
                while value in self.used:
                    value = rng.randrange(self.low, self.high + 1)
            else:
                # A crowded network: walk to the next free address rather than draw forever.
                while value in self.used:
                    value = value + 1 if value < self.high else self.low
        self.used.add(value)
        return value.to_bytes(self.width, "big"), 0


class _Cursor:
    """Where a class stands in its flows: the order of the current round, and what is left.

    `spread` draws a fresh shuffle each round; `keep` walks the flows in original order.
    Memory: the indexes of one round, and the flows set aside (at most `_MAX_SET_ASIDE`).
    """

    def __init__(self, flows: Sequence[FlowSummary], timing: str, rng: Rng) -> None:
        self.flows = flows
        self.timing = timing
        self.rng = rng
        self.round = -1
        self.queue: deque[int] = deque()
        self.front: tuple[int, int] | None = None  # (round, index): given back, next out
        self.set_aside: deque[tuple[int, int]] = deque()  # spread: too big just now

    def next(self) -> tuple[int, int]:
        """The next flow's (round, index); a new round when this one is used up."""
        if self.front is not None:
            item, self.front = self.front, None
            return item
        if not self.queue:
            self.round += 1
            order = list(range(len(self.flows)))
            if self.timing == SPREAD:
                self.rng.shuffle(order)
            self.queue.extend(order)
        return self.round, self.queue.popleft()


def plan_mix(
    windows: list[Window],
    window_packets: list[int],
    flows_by_class: dict[str, list[FlowSummary]],
    timing: dict[str, str],
    networks: dict[str, list[Network]],
    rng: Rng,
    keep_addresses: bool = False,
) -> MixPlan:
    """Place flows so that each window holds `window_packets[i]` packets shared by its classes.

    `flows_by_class`: each class's flows by input, then by first packet's time;
    `timing`: `spread` or `keep` per class; `keep_addresses`: the first round of each input
    keeps its original addresses.
    """
    if len(window_packets) != len(windows):
        raise ValueError("one packet count per window")
    for cls, flows in flows_by_class.items():
        if not flows:
            raise SpecError(f"the inputs of class {cls!r} hold no flow")
    book = AddressBook(networks, rng, keep_addresses)
    cursors = {
        c: _Cursor(f, timing.get(c, _default_timing(c)), rng) for c, f in flows_by_class.items()
    }
    plan = MixPlan([], windows, [])
    for w_index, (window, total) in enumerate(zip(windows, window_packets, strict=True)):
        results: dict[str, ClassResult] = {}
        for cls, share in window.shares():
            if cls not in cursors:
                raise SpecError(f"no input of class {cls!r}")
            result = ClassResult(target=round(share * total))
            results[cls] = result
            cursor = cursors[cls]
            if cursor.timing == KEEP:
                _fill_keep(plan, book, cursor, w_index, window, result)
            else:
                _fill_spread(plan, book, cursor, w_index, window, result)
        plan.results.append(results)
    plan.address_collisions = book.collisions
    plan.placements.sort(key=lambda p: (p.start_us, p.placement))
    return plan


def _default_timing(cls: str) -> str:
    return SPREAD if cls == BENIGN else KEEP


def _place(
    plan: MixPlan,
    book: AddressBook,
    flow: FlowSummary,
    round_: int,
    w_index: int,
    start_us: int,
    result: ClassResult,
) -> None:
    is_benign = flow.cls == BENIGN
    initiator = book.map(
        flow.input, round_, flow.initiator, "clients" if is_benign else "attackers"
    )
    responder = book.map(flow.input, round_, flow.responder, "servers" if is_benign else "victims")
    plan.placements.append(
        Placement(
            len(plan.placements),
            flow.flow,
            flow.cls,
            w_index,
            round_,
            start_us,
            initiator,
            responder,
        )
    )
    plan.reused += round_ > 0
    result.packets += flow.packets
    result.flows += 1


def _fill_spread(
    plan: MixPlan,
    book: AddressBook,
    cursor: _Cursor,
    w_index: int,
    window: Window,
    result: ClassResult,
) -> None:
    length = window.end_us - window.start_us

    def fits(flow: FlowSummary) -> bool:
        missing = result.target - result.packets
        # Taking it must not overshoot by more than leaving it would undershoot.
        return flow.duration_us < length and flow.packets - missing <= missing

    def place(round_: int, flow: FlowSummary) -> None:
        start = window.start_us + cursor.rng.randrange(0, length - flow.duration_us)
        _place(plan, book, flow, round_, w_index, start, result)

    # The flows set aside by earlier windows first, while they fit.
    for _ in range(len(cursor.set_aside)):
        if result.packets >= result.target:
            return
        round_, i = cursor.set_aside.popleft()
        if fits(cursor.flows[i]):
            place(round_, cursor.flows[i])
        else:
            cursor.set_aside.append((round_, i))
    misses = 0
    while result.packets < result.target and misses < _MAX_MISSES:
        round_, i = cursor.next()
        flow = cursor.flows[i]
        if flow.duration_us >= length:
            plan.too_long += round_ == 0
            misses += 1
            continue
        if not fits(flow):
            if len(cursor.set_aside) < _MAX_SET_ASIDE:
                cursor.set_aside.append((round_, i))
            misses += 1
            if misses > min(len(cursor.flows), _MAX_BIG_MISSES):
                break
            continue
        misses = 0
        place(round_, flow)


def _fill_keep(
    plan: MixPlan,
    book: AddressBook,
    cursor: _Cursor,
    w_index: int,
    window: Window,
    result: ClassResult,
) -> None:
    length = window.end_us - window.start_us
    misses = 0
    while result.packets < result.target and misses < _MAX_MISSES:
        # One block: consecutive flows from the cursor, their spacing kept.
        block: list[tuple[int, FlowSummary, int]] = []  # (round, flow, offset from origin)
        origin = block_round = span = taken = 0
        while result.packets + taken < result.target:
            round_, i = cursor.next()
            flow = cursor.flows[i]
            missing = result.target - result.packets - taken
            if not block:
                if flow.duration_us >= length:
                    plan.too_long += round_ == 0
                    misses += 1
                    if misses >= _MAX_MISSES:
                        break
                    continue
                origin, block_round = flow.start_us, round_
            offset = flow.start_us - origin
            other_stretch = bool(block) and (
                round_ != block_round or flow.input != block[0][1].input
            )
            if (
                other_stretch
                or offset < 0
                or offset + flow.duration_us >= length
                or flow.packets - missing > missing
            ):
                # A new round or input, out of time order, the window's end, or too big for
                # what is left: the block ends here; this flow comes first next time.
                cursor.front = (round_, i)
                break
            block.append((round_, flow, offset))
            span = max(span, offset + flow.duration_us)
            taken += flow.packets
        if not block:
            if cursor.front is not None:
                flow = cursor.flows[cursor.front[1]]
                missing = result.target - result.packets
                if flow.packets - missing > missing:
                    break  # what is left is less than half the next flow: the class is done
            misses += 1
            continue
        misses = 0
        base = window.start_us + cursor.rng.randrange(0, length - span)
        for round_, flow, offset in block:
            _place(plan, book, flow, round_, w_index, base + offset, result)
