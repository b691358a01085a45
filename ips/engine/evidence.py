"""The evidence behind a block: is the address a detector wants banned really the sender?

A source address costs nothing to forge (`hping3 -a VICTIM`, `nmap -D DECOY,…`), so a detector
that bans the source of what it saw can be made to ban anyone: the client next door, the
DNS resolver, the boss. What a remote forger cannot forge:

  the MAC address   on a directly attached segment every packet carries its sender's MAC
                    (NFQUEUE gives it: Meta.mac), and the kernel's neighbour table says which
                    MAC owns which address (it learnt that by asking, ARP / NDP);
  the route         a packet whose source is not on the segment must come from a router: a
                    host of the segment (a MAC that is none of our routes' next hops) sending
                    it forged it;
  a handshake       a source that completed a TCP handshake saw our side's SYN+ACK, so it
                    owns the address (FlowTable.handshakes), and sent it from a MAC;
  the hop count     its packets then arrived with a TTL; forged ones sent from elsewhere come
                    with a different hop count (for a routed source: on the segment, a
                    forger next door has the same, so there only MACs count).

`judge` weighs a BlockRequest's flow (the MAC and TTL of its first packet) against that and
answers one of:

  proven        the MAC is the neighbour entry's (or that of the address's handshake, while
                the table has no entry), or a routed source's handshake came with the same
                hop count                                               -> the address
  spoofed       another MAC owns the address (or made its handshake), a host (no router)
                sent an off-segment source, or a routed source's hop count differs from its
                handshake's                                             -> never the
                address: a "spoofed source" alert, and the sender's MAC is blocked where it
                can be named (a host of the segment, not a router)
  unproven      an address of the segment with no neighbour entry (yet) and no handshake
                from a MAC: the proof was
                possible and is missing. The engine holds the request for EVIDENCE_WAIT
                seconds (the worker refreshes the neighbour table meanwhile) before it
                takes this answer.
  unverifiable  nothing to weigh: no link-layer view (tap, replay, WinDivert, tests), or a
                routed source without a handshake

and `set block-evidence` says what is blocked (docs/language.md, "Evidence"):

  strict (default)  proven and unverifiable: a forged or unproven address of the segment is
                    never blocked; a routed source without history is, as before (the ban
                    budget bounds the damage there)
  proof             proven only: blocks need evidence, whatever the source
  loose             everything but spoofed

Pure: the neighbour table is given as data (LinkView, read by the daemon's worker with
pyroute2, ips/kernel/neighbours.py); nothing here reads the system. The judgement runs only
when a detector asks for a block, never per packet.
"""

from __future__ import annotations

from dataclasses import dataclass

from ips.core.events import BlockRequest
from ips.core.flow import Flow
from ips.core.link import LinkView

PROVEN = "proven"
SPOOFED = "spoofed"
UNPROVEN = "unproven"
UNVERIFIABLE = "unverifiable"

MODES = ("strict", "proof", "loose")
# What each mode blocks (spoofed: never).
BLOCKED_BY_MODE = {
    "strict": frozenset({PROVEN, UNVERIFIABLE}),
    "proof": frozenset({PROVEN}),
    "loose": frozenset({PROVEN, UNVERIFIABLE, UNPROVEN}),
}
# Nothing was there to weigh (no link view, no flow, no handshake): a detector's alert then
# says nothing of evidence, as before there was any.
NO_EVIDENCE = frozenset({"no-link-view", "no-flow"})
HOP_SLACK = 2  # hops a route may change by before the hop count is called different
EVIDENCE_WAIT = 3.0  # seconds an unproven request waits for the neighbour table
HELD_MAX = 1024  # unproven requests held at once; beyond, they are answered at once
SPOOF_ALERTS_PER_SECOND = 20.0  # "spoofed source" alerts without a new MAC block
_INITIAL_TTLS = (32, 64, 128, 255)  # what stacks start with: the hop count is the difference


def hops(ttl: int) -> int:
    """Hops a packet travelled, from its TTL and the nearest initial TTL above it."""
    for start in _INITIAL_TTLS:
        if ttl <= start:
            return start - ttl
    return 0


@dataclass(frozen=True, slots=True)
class Judgement:
    """verdict: PROVEN, SPOOFED, UNPROVEN or UNVERIFIABLE; why: the evidence ("mac",
    "handshake", "mac-mismatch", "not-a-router", "hop-count", "no-neighbour", "routed",
    "no-link-view", "no-flow"); sender: the MAC the packets came from (None: unknown);
    owner: the MAC the neighbour table gives the address (None: none); nameable: the sender
    is a host of the segment that may be blocked by its MAC (spoofed only)."""

    verdict: str
    why: str
    sender: bytes | None = None
    owner: bytes | None = None
    nameable: bool = False


def judge(
    addr: bytes, flow: Flow | None, view: LinkView | None,
    handshakes: dict[bytes, tuple[int, bytes | None]],
) -> Judgement:  # fmt: skip
    """Whether `addr` sent the packets of `flow` (see the module's docstring)."""
    if flow is None or flow.src != addr:  # the flow says nothing of this address's packets
        return _by_handshake(addr, None, None, handshakes, "no-flow", None)
    mac = flow.mac
    if view is None or mac is None:
        return _by_handshake(addr, flow.ttl, mac, handshakes, "no-link-view", None)
    owner = view.neighbours.get(addr)
    if owner is not None:
        if owner == mac:
            return Judgement(PROVEN, "mac", mac, owner)
        # Another MAC owns the address. A router's MAC relays what others sent: the forger
        # is behind it and cannot be named here.
        return Judgement(SPOOFED, "mac-mismatch", mac, owner, mac not in view.routers)
    if view.onlink.contains(addr):
        # An address of the segment is proven by its MAC alone (a forger next door has the
        # same hop count): the neighbour table's (none yet), or the one its handshake came
        # from.
        known = handshakes.get(addr)
        if known is None or known[1] is None:
            return Judgement(UNPROVEN, "no-neighbour", mac)
        if known[1] == mac:
            return Judgement(PROVEN, "handshake", mac, known[1])
        return Judgement(SPOOFED, "mac-mismatch", mac, known[1], mac not in view.routers)
    if mac not in view.routers:
        # An address from beyond the segment, sent by a host of the segment: only a router
        # may do that, and this MAC is none of ours.
        return Judgement(SPOOFED, "not-a-router", mac, None, True)
    return _by_handshake(addr, flow.ttl, mac, handshakes, "routed", view)


def _by_handshake(
    addr: bytes, ttl: int | None, mac: bytes | None,
    handshakes: dict[bytes, tuple[int, bytes | None]], otherwise: str, view: LinkView | None,
) -> Judgement:  # fmt: skip
    """A handshake from `addr` proves it; a packet that came from another MAC than the
    handshake, or with another hop count, is forged."""
    known = handshakes.get(addr)
    if known is None:
        return Judgement(UNVERIFIABLE, otherwise, mac)
    known_ttl, known_mac = known
    if mac is not None and known_mac is not None and mac != known_mac:
        nameable = view is not None and mac not in view.routers
        return Judgement(SPOOFED, "mac-mismatch", mac, known_mac, nameable)
    if ttl is None or abs(hops(known_ttl) - hops(ttl)) <= HOP_SLACK:
        return Judgement(PROVEN, "handshake", mac, known_mac)
    return Judgement(SPOOFED, "hop-count", mac, known_mac)


class BlockEvidence:
    """The engine's part of it: the link view the daemon gives, the mode, the requests held
    for a neighbour entry, the pacing of spoof alerts, and counters."""

    def __init__(self) -> None:
        self.view: LinkView | None = None
        self.mode = "strict"
        self.blocked = BLOCKED_BY_MODE["strict"]
        self.held: list[tuple[BlockRequest, float]] = []  # (BlockRequest, deadline)
        self.counts: dict[str, int] = {}  # "verdict:why" -> requests judged so
        self._tokens = SPOOF_ALERTS_PER_SECOND
        self._tokens_at = 0.0

    def configure(self, mode: str) -> None:
        self.mode = mode
        self.blocked = BLOCKED_BY_MODE[mode]

    def judge(
        self, addr: bytes, flow: Flow | None, handshakes: dict[bytes, tuple[int, bytes | None]]
    ) -> Judgement:
        return judge(addr, flow, self.view, handshakes)

    def count(self, found: Judgement) -> None:
        key = f"{found.verdict}:{found.why}"
        self.counts[key] = self.counts.get(key, 0) + 1

    def allows(self, verdict: str) -> bool:
        return verdict in self.blocked

    def may_wait(self, found: Judgement) -> bool:
        """An unproven request may wait for the neighbour table when the mode would refuse
        it and there is room."""
        return (
            found.verdict == UNPROVEN
            and not self.allows(UNPROVEN)
            and self.view is not None
            and len(self.held) < HELD_MAX
        )

    def paced(self, now: float) -> bool:
        """One token of the spoof alerts' budget."""
        tokens = min(
            SPOOF_ALERTS_PER_SECOND,
            self._tokens + (now - self._tokens_at) * SPOOF_ALERTS_PER_SECOND,
        )
        self._tokens_at = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return True
        self._tokens = max(tokens, 0.0)
        return False

    def stats(self) -> dict[str, object]:
        view = self.view
        return {
            "mode": self.mode,
            "link_view": view is not None,
            "neighbours": len(view.neighbours) if view is not None else 0,
            "routers": len(view.routers) if view is not None else 0,
            "held": len(self.held),
            "judged": dict(self.counts),
        }
