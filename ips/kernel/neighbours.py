"""The kernel's view of the attached segments, read for the engine's evidence behind blocks
(ips/engine/evidence.py): which MAC owns which address (the neighbour table), which prefixes
are on a segment (connected routes), and which neighbours are routers (next hops of routes).

Read with pyroute2 (two netlink dumps, a few milliseconds for a gateway's tables) by the
daemon's worker, in its network namespace, at start and then when the kernel says they
changed (TableWatch: rtnetlink's neighbour and route groups), at most every REFRESH_EVERY
seconds, and every WATCHED_REFRESH_EVERY seconds in any case; without the watch, every
REFRESH_EVERY seconds. The engine gets the result as data (Engine.set_link_view) and never
reads the system itself.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Iterable
from typing import Any

from ips.core.link import LinkView, link_view

REFRESH_EVERY = 1.0  # fewest seconds between two reads of the tables (a held request waits)
# Seconds between two reads when nothing was announced: a read costs a gateway's worker a few
# milliseconds of CPU, during which its packets wait, so the tables are read when they change,
# and this only covers what a watch could miss.
WATCHED_REFRESH_EVERY = 30.0
# linux/rtnetlink.h: the multicast groups of neighbour and route changes
RTMGRP_NEIGH = 0x4
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_ROUTE = 0x400
WATCH_RCVBUF = 1 << 20
# linux/rtnetlink.h, linux/neighbour.h: what the watch reads of an announcement
RTM_NEWROUTE, RTM_DELROUTE, RTM_NEWNEIGH, RTM_DELNEIGH = 24, 25, 28, 29
NDA_DST, NDA_LLADDR = 1, 2
NLMSG_HEADER = struct.Struct("=IHHII")
NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
RTATTR = struct.Struct("=HH")
MAX_NEIGHBOURS = 262_144  # entries taken from one dump; more are left out (and never proven)
# linux/neighbour.h: entries whose MAC the kernel has (resolved, or being re-checked)
NUD_REACHABLE = 0x02
NUD_STALE = 0x04
NUD_DELAY = 0x08
NUD_PROBE = 0x10
NUD_PERMANENT = 0x80
RESOLVED = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT
MAIN_TABLE = 254
RTN_UNICAST = 1


def _packed(text: str | None) -> bytes | None:
    if not text:
        return None
    try:
        return ipaddress.ip_address(text).packed
    except ValueError:
        return None


def _mac(text: str | None) -> bytes | None:
    if not text:
        return None
    try:
        raw = bytes.fromhex(text.replace(":", ""))
    except ValueError:
        return None
    return raw if len(raw) == 6 and raw != bytes(6) else None


def view_from_messages(neighbours: Iterable[Any], routes: Iterable[Any]) -> LinkView:
    """A LinkView from pyroute2's neighbour and route messages (anything with .get for
    their fields and attributes, as pyroute2's messages and plain dicts have)."""
    pairs: list[tuple[bytes, bytes]] = []
    for msg in neighbours:
        if not msg.get("state", 0) & RESOLVED:
            continue
        addr = _packed(msg.get("NDA_DST"))
        mac = _mac(msg.get("NDA_LLADDR"))
        if addr is not None and mac is not None:
            pairs.append((addr, mac))
            if len(pairs) >= MAX_NEIGHBOURS:
                break
    onlink: list[tuple[bytes, int]] = []
    gateways: list[bytes] = []
    for msg in routes:
        if msg.get("type", RTN_UNICAST) != RTN_UNICAST:
            continue
        hops = [msg.get("RTA_GATEWAY")]
        for nexthop in msg.get("RTA_MULTIPATH") or ():
            hops.append(nexthop.get("RTA_GATEWAY"))
        found = [g for g in (_packed(h) for h in hops) if g is not None]
        if found:
            gateways += found
            continue
        dst = _packed(msg.get("RTA_DST"))
        plen = int(msg.get("dst_len", 0))
        if dst is not None and plen > 0:
            onlink.append((dst, plen))
    return link_view(pairs, onlink, gateways)


def read_link_view() -> LinkView:
    """The tables of this network namespace, now."""
    from pyroute2 import IPRoute  # only the inline worker needs it

    with IPRoute() as ipr:
        neighbours = list(ipr.get_neighbours())
        routes = []
        for family in (socket.AF_INET, socket.AF_INET6):
            routes += list(ipr.get_routes(family=family, table=MAIN_TABLE))
    return view_from_messages(neighbours, routes)


class TableWatch:
    """A NETLINK_ROUTE socket subscribed to the neighbour and route groups: readable when the
    kernel changed an entry of the tables read_link_view reads.

    A neighbour's announcements are mostly its state cycling (reachable, stale, delay, probe
    and back: every half minute or so for each host that talks), which changes nothing the
    view holds; so a neighbour announcement counts as a change only when it makes an address
    resolved with another MAC than the view's, or unresolved (or deleted) while the view has
    it. A route announcement always counts (the tables are read again whole)."""

    def __init__(self) -> None:
        flags = socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
        self.sock = socket.socket(socket.AF_NETLINK, flags, socket.NETLINK_ROUTE)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, WATCH_RCVBUF)
            self.sock.bind((0, RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE))
        except OSError:
            self.sock.close()
            raise
        self.messages = 0  # datagrams read
        self.overruns = 0  # ENOBUFS: announcements lost (the tables are read again anyway)

    def fileno(self) -> int:
        return self.sock.fileno()

    def changed(self, neighbours: dict[bytes, bytes] | None) -> bool:
        """Read what is waiting; True if anything changed the view whose neighbours are
        `neighbours` (None: no view yet, any announcement counts), or may have (lost)."""
        seen = False
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return seen
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.overruns += 1
                seen = True
                continue
            if not data:
                return seen
            self.messages += 1
            if not seen:
                seen = neighbours is None or announces_change(data, neighbours)

    def close(self) -> None:
        self.sock.close()


def announces_change(data: bytes, neighbours: dict[bytes, bytes]) -> bool:
    """Whether a datagram of rtnetlink announcements changes a view with these neighbours
    (see TableWatch). Anything it cannot read counts as a change."""
    offset = 0
    while offset + NLMSG_HEADER.size <= len(data):
        length, msg_type, _flags, _seq, _pid = NLMSG_HEADER.unpack_from(data, offset)
        if length < NLMSG_HEADER.size or offset + length > len(data):
            return True
        body = offset + NLMSG_HEADER.size
        end = offset + length
        offset += (length + 3) & ~3
        if msg_type in (RTM_NEWROUTE, RTM_DELROUTE):
            return True
        if msg_type not in (RTM_NEWNEIGH, RTM_DELNEIGH):
            continue
        if body + NDMSG.size > end:
            return True
        state = NDMSG.unpack_from(data, body)[2]
        addr = mac = None
        at = body + NDMSG.size
        while at + RTATTR.size <= end:
            attr_len, attr_type = RTATTR.unpack_from(data, at)
            if attr_len < RTATTR.size or at + attr_len > end:
                return True
            value = data[at + RTATTR.size : at + attr_len]
            if attr_type == NDA_DST:
                addr = value
            elif attr_type == NDA_LLADDR:
                mac = value
            at += (attr_len + 3) & ~3
        if addr is None:
            return True
        known = neighbours.get(addr)
        resolved = msg_type == RTM_NEWNEIGH and state & RESOLVED
        if resolved and len(mac or b"") == 6 and mac != bytes(6):
            if known != mac:
                return True
        elif known is not None:
            return True
    return False
