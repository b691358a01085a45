"""`ipsctl replay --to IFACE CAPTURE`: a capture's packets sent onto a lab wire, at their
recorded pace (`--speed X`: X times faster) or at a fixed rate (`--pps N`), through an
AF_PACKET socket — for tap-mode and lab tests (`ipsctl eval --eve` scores what a tap made of
it).

Only into a lab interface. IFACE is one when all of these hold (`lab_interface_refusal`):

1. the process runs in a named network namespace (/proc/self/ns/net is the namespace bound
   at /run/netns/NAME, as `ip netns exec` and `ipsctl lab exec` run things), and — where
   /proc/1/ns/net can be read — not in the initial one (the host's own);
2. that namespace is an ipsctl lab's: its loopback carries the lab's mark (the alias
   `ipsctl-lab:PREFIX`, set by `ipsctl lab up` the moment it makes the namespace,
   ips/lab/netns.py) and NAME starts with that PREFIX — a container's namespace, or one
   made by hand, is not a lab's;
3. IFACE is a veth (rtnetlink's link kind `veth`): its other end is in the lab's switch
   namespace (the lab makes every pair there), so the frames stay between the lab's
   namespaces. A physical NIC, a bridge, a tunnel or a macvlan is refused.

There is no override: to replay onto another interface, build a lab (`ipsctl lab up`).

Frames: a capture of Ethernet frames is sent as it is; one of raw IP packets (LINKTYPE_RAW,
what the engine's tests and `ipsctl mix` may write) gets an Ethernet header — the interface's
own MAC as the source, `dst_mac` (by default 02:00:00:00:00:01, a locally administered
address no lab host has) as the destination: a bridge floods such a frame to every port, so a
tap anywhere on the segment reads it, and every host's IP stack ignores it (not addressed to
it), so the replayed connections get no answers. Other link types are skipped and counted,
as are frames longer than the interface's MTU allows (the kernel would refuse them).

Bounded: at most `limit` packets; pacing sleeps, never spins (a pace the machine cannot keep
sends as fast as it can and says how late it ended).
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from ips.core.packet import LINKTYPE_ETHERNET, LINKTYPE_RAW
from ips.io.pcap import read_capture
from ips.lab.netns import MARK

DEFAULT_DST_MAC = "02:00:00:00:00:01"
ETH_HEADER = 14
# ENOBUFS: the interface's queue is full; wait a little and try again, a bounded number of
# times, then count the frame as not sent.
RETRIES = 50
RETRY_PAUSE = 0.001
SLEEP_AHEAD = 0.0005  # sleep when the schedule is this far ahead; send at once otherwise


class WireError(Exception):
    """The replay cannot start: not a lab interface, no such interface, no permission."""


@dataclass(frozen=True)
class LinkFacts:
    """What decides whether an interface is a lab's (gathered by `link_facts`)."""

    iface: str
    exists: bool
    namespace: str | None  # the /run/netns name of this process's namespace, if it has one
    initial_namespace: bool | None  # None: cannot be told (/proc/1/ns/net unreadable)
    loopback_alias: str
    kind: str  # rtnetlink's IFLA_INFO_KIND: "veth", "bridge", "" for a physical NIC
    mac: bytes = b""
    mtu: int = 1500


def lab_interface_refusal(facts: LinkFacts) -> str | None:
    """None when the interface is a lab interface (see the module's doc); else why not."""
    hint = "run it inside one: ipsctl lab exec NODE -- ipsctl replay --to IFACE …"
    if facts.initial_namespace:
        return (
            f"this is the host's own network namespace; replay --to sends only into a lab ({hint})"
        )
    if facts.namespace is None:
        return f"this process is not in a named network namespace (/run/netns); {hint}"
    mark = facts.loopback_alias
    if not mark.startswith(MARK) or not facts.namespace.startswith(mark[len(MARK) :]):
        return (
            f"network namespace {facts.namespace!r} is not an ipsctl lab's (its loopback has "
            f"no '{MARK}PREFIX' mark of its name's prefix): build one with ipsctl lab up"
        )
    if not facts.exists:
        return f"no interface {facts.iface!r} in this lab namespace"
    if facts.kind != "veth":
        what = (
            f"link kind {facts.kind}" if facts.kind else "a device of no link kind: NIC, loopback"
        )
        return f"{facts.iface!r} is not a veth ({what}): only a lab's veth interfaces"
    return None


NETNS_DIR = "/run/netns"


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _initial_namespace() -> bool | None:
    try:
        return _same_file(os.stat("/proc/self/ns/net"), os.stat("/proc/1/ns/net"))
    except OSError:  # not readable in some sandboxes, even to root
        return None


def _namespace_name() -> str | None:
    """The name under /run/netns this process's network namespace is bound at, if any."""
    try:
        own = os.stat("/proc/self/ns/net")
        names = sorted(os.listdir(NETNS_DIR))
    except OSError:
        return None
    for name in names:
        try:
            if _same_file(os.stat(os.path.join(NETNS_DIR, name)), own):
                return name
        except OSError:
            continue
    return None


def link_facts(iface: str) -> LinkFacts:
    """The facts of IFACE in the current network namespace (rtnetlink, not /sys: a namespace
    entered without `ip netns exec` still shows the host's /sys)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        alias = ""
        lo = ipr.link_lookup(ifname="lo")
        if lo:
            alias = ipr.get_links(lo[0])[0].get_attr("IFLA_IFALIAS") or ""
        found = ipr.link_lookup(ifname=iface)
        if not found:
            return LinkFacts(
                iface,
                exists=False,
                namespace=_namespace_name(),
                initial_namespace=_initial_namespace(),
                loopback_alias=alias,
                kind="",
            )
        link = ipr.get_links(found[0])[0]
        info = link.get_attr("IFLA_LINKINFO")
        kind = (info.get_attr("IFLA_INFO_KIND") if info is not None else None) or ""
        mac_text = link.get_attr("IFLA_ADDRESS") or "00:00:00:00:00:00"
        mtu = link.get_attr("IFLA_MTU") or 1500
    return LinkFacts(
        iface,
        exists=True,
        namespace=_namespace_name(),
        initial_namespace=_initial_namespace(),
        loopback_alias=alias,
        kind=kind,
        mac=bytes.fromhex(mac_text.replace(":", "")),
        mtu=mtu,
    )


def parse_mac(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise WireError(f"bad MAC address {text!r} (six hex bytes, colon-separated)")
    try:
        return bytes.fromhex("".join(parts))
    except ValueError as exc:
        raise WireError(f"bad MAC address {text!r}") from exc


@dataclass
class WireResult:
    iface: str
    capture: str
    sent: int = 0
    bytes: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    send_errors: Counter[str] = field(default_factory=Counter)
    started: float = 0.0  # wall clock of the first frame sent (seconds since the epoch)
    first_timestamp: float = 0.0  # the capture's time of that frame
    duration: float = 0.0  # seconds from the first frame to the last
    planned: float = 0.0  # what the pace asked for
    pace: str = ""

    def as_dict(self) -> dict[str, object]:
        return {
            "iface": self.iface,
            "capture": self.capture,
            "pace": self.pace,
            "sent": self.sent,
            "bytes": self.bytes,
            "skipped": dict(self.skipped),
            "send_errors": dict(self.send_errors),
            "started": self.started,
            "first_timestamp": self.first_timestamp,
            "clock_offset": self.started - self.first_timestamp if self.sent else None,
            "duration": self.duration,
            "planned": self.planned,
        }

    def text(self) -> str:
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())) or "none"
        errors = ", ".join(f"{n} {why}" for why, n in sorted(self.send_errors.items())) or "none"
        return (
            f"replayed {self.capture} onto {self.iface} ({self.pace}): {self.sent} frames, "
            f"{self.bytes} bytes in {self.duration:.3f}s (planned {self.planned:.3f}s)\n"
            f"skipped {skipped}; send errors {errors}"
        )


def replay_to(
    capture: str,
    iface: str,
    *,
    speed: float = 1.0,
    pps: float | None = None,
    limit: int | None = None,
    dst_mac: str = DEFAULT_DST_MAC,
    facts: LinkFacts | None = None,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> WireResult:
    """Send CAPTURE's packets into IFACE (a lab interface, else WireError). See the module."""
    facts = facts if facts is not None else link_facts(iface)
    refusal = lab_interface_refusal(facts)
    if refusal is not None:
        raise WireError(refusal)
    if speed <= 0 or (pps is not None and pps <= 0):
        raise WireError("--speed and --pps must be above 0")
    destination = parse_mac(dst_mac)
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    except OSError as exc:
        raise WireError(f"cannot open a packet socket: {exc} (needs CAP_NET_RAW)") from exc
    result = WireResult(iface, capture, pace=f"{pps:g} packets/s" if pps else f"speed {speed:g}")
    largest = facts.mtu + ETH_HEADER
    try:
        sock.bind((iface, 0))
        with read_capture(capture) as reader:
            first_ts: float | None = None
            started = 0.0
            last_sent = 0.0
            for rec in reader:
                if limit is not None and result.sent >= limit:
                    break
                if rec.linktype == LINKTYPE_ETHERNET:
                    frame = rec.data
                elif rec.linktype == LINKTYPE_RAW and rec.data:
                    version = rec.data[0] >> 4
                    ethertype = b"\x86\xdd" if version == 6 else b"\x08\x00"
                    frame = destination + facts.mac + ethertype + rec.data
                else:
                    result.skipped[f"link type {rec.linktype}"] += 1
                    continue
                if len(frame) > largest:
                    result.skipped["longer than the MTU"] += 1
                    continue
                if first_ts is None:
                    first_ts = rec.timestamp
                    started = clock()
                    result.started = wall()
                    result.first_timestamp = rec.timestamp
                if pps:
                    due = result.sent / pps
                else:
                    due = max(0.0, rec.timestamp - first_ts) / speed
                result.planned = due
                ahead = started + due - clock()
                if ahead > SLEEP_AHEAD:
                    sleep(ahead)
                if _send(sock, frame, result, sleep):
                    result.sent += 1
                    result.bytes += len(frame)
                    last_sent = clock()
            result.duration = max(0.0, last_sent - started) if result.sent else 0.0
    except OSError as exc:
        raise WireError(f"cannot send on {iface!r}: {exc}") from exc
    finally:
        sock.close()
    return result


def _send(
    sock: socket.socket, frame: bytes, result: WireResult, sleep: Callable[[float], None]
) -> bool:
    for _ in range(RETRIES):
        try:
            sock.send(frame)
            return True
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                result.send_errors[errno.errorcode.get(exc.errno or 0, str(exc.errno))] += 1
                return False
            sleep(RETRY_PAUSE)
    result.send_errors["ENOBUFS"] += 1
    return False
