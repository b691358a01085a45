"""What the kernel knows of the attached segments, as data: the neighbour table (which MAC
owns which address), the prefixes of the segments, and the MACs of the routers.

The daemon's worker reads it from the kernel (ips/kernel/neighbours.py) and gives it to the
engine, whose evidence behind blocks weighs a packet's sender against it
(ips/engine/evidence.py). Pure data: nothing here reads the system.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ips.core.tables import NetMatcher


@dataclass(frozen=True)
class LinkView:
    """What the kernel knows of the attached segments, as data.

    neighbours  address (4 or 16 bytes) -> MAC (6 bytes): the neighbour table's resolved
                entries (reachable, stale, delay, probe, permanent)
    onlink      the prefixes of the segments (connected routes): an address in them is
                expected to have a neighbour entry once it talks
    routers     the MACs of our routes' next hops: they forward packets of other sources"""

    neighbours: dict[bytes, bytes] = field(default_factory=dict)
    onlink: NetMatcher = field(default_factory=lambda: NetMatcher((), ()))
    routers: frozenset[bytes] = frozenset()

    def owners(self, mac: bytes) -> list[bytes]:
        """The addresses the neighbour table gives to `mac` (only for a MAC block: rare)."""
        return [addr for addr, owner in self.neighbours.items() if owner == mac]


def link_view(
    neighbours: Iterable[tuple[bytes, bytes]],
    onlink: Iterable[tuple[bytes, int]] = (),
    router_addrs: Iterable[bytes] = (),
    router_macs: Iterable[bytes] = (),
) -> LinkView:
    """A LinkView from neighbour entries (address, MAC), on-link prefixes (network address,
    prefix length), the next hops of routes (their MACs are looked up in the neighbours) and
    MACs known to be routers."""
    table = dict(neighbours)
    nets4: list[tuple[int, int]] = []
    nets6: list[tuple[int, int]] = []
    for net, plen in onlink:
        (nets4 if len(net) == 4 else nets6).append((int.from_bytes(net, "big"), plen))
    routers = set(router_macs)
    for addr in router_addrs:
        mac = table.get(addr)
        if mac is not None:
            routers.add(mac)
    return LinkView(table, NetMatcher(tuple(nets4), tuple(nets6)), frozenset(routers))
